"""``miro bin``: fit a binner on stored scores and write ``bins/<binner>/<reward>`` (never rescores)."""

from __future__ import annotations

__all__ = ["BinCommand"]

import json
import sys

from .. import hookimpl
from ..interfaces import Command


class BinCommand(Command):
    """Bin stored reward scores without rescoring."""

    name = "bin"
    help = "bin stored reward scores (quantile, uniform, ...) without rescoring"

    def add_arguments(self, parser):
        parser.add_argument("--store", required=True, help="reward store URL (local path or fsspec URL)")
        parser.add_argument("--binner", default="quantile", help="registered binner name (default: quantile)")
        parser.add_argument("--bins", type=int, default=None, help="number of bins (binner option num_bins; default 64)")
        parser.add_argument("--rewards", default=None, help="comma-separated rewards, or 'all' (default: all scored)")
        parser.add_argument("--calibration-size", type=int, default=100_000, help="rows to fit on (default 100000)")
        parser.add_argument("--seed", type=int, default=0, help="seed of the calibration subset")
        parser.add_argument("--binner-option", action="append", default=[], metavar="KEY=VALUE",
                            help="extra binner option (repeatable)")
        parser.add_argument("--json", action="store_true", help="print the fitted states as JSON")

    def run(self, args):
        from .._errors import ConfigError
        from .._plugins import registry
        from ..data import parse_options
        from ..store import RewardStore

        registry("binners").get(args.binner)  # unknown binner: did-you-mean + list
        options = parse_options(",".join(args.binner_option))
        if args.bins is not None:
            if args.bins < 2:
                raise ConfigError(f"--bins must be at least 2, got {args.bins}.")
            options["num_bins"] = args.bins
        elif "num_bins" in {f.name for f in __import__("attrs").fields(registry("binners").config_class(args.binner))}:
            options.setdefault("num_bins", 64)
        if args.calibration_size < 1:
            raise ConfigError(f"--calibration-size must be positive, got {args.calibration_size}.")
        from .._reward_list import parse_reward_list

        rewards = parse_reward_list(args.rewards, allow_all=True) if args.rewards is not None else None
        if rewards == ("all",):
            rewards = None
        store = RewardStore.open(args.store, "a")
        states = store.bin(args.binner, options, rewards=rewards, calibration_size=args.calibration_size, seed=args.seed)
        if args.json:
            json.dump(states, sys.stdout, indent=2)
            sys.stdout.write("\n")
        else:
            for r in states:
                counts = store.bins(args.binner, r)
                print(f"{r}: {int((counts >= 0).sum())} rows binned into {options.get('num_bins', '?')} bins "
                      f"({int((counts < 0).sum())} missing) -> bins/{args.binner}/{r}")
        return 0


@hookimpl
def miro_register_commands(register):
    register(BinCommand)
