"""``miro train``: train a reward-conditioned (or baseline) flow-matching model.

Configuration precedence: defaults < ``--recipe NAME`` < ``--config FILE.toml`` < explicit flags (``--data``, ``--rewards``, ...)
< ``--set key.path=value`` (applied last, in order).
"""

from __future__ import annotations

__all__ = ["TrainCommand", "config_from_args"]

import argparse
import logging
from typing import Any

from .. import hookimpl
from .._config import apply_overrides, load_toml, structure
from .._errors import ConfigError
from ..interfaces import Command

log = logging.getLogger(__name__)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def config_from_args(args: argparse.Namespace):
    """Build the resolved :class:`~miro_core.training.TrainConfig` from parsed arguments."""
    from ..training.config import TrainConfig

    data: dict[str, Any] = {}
    if getattr(args, "init_from", None):
        # the architecture comes from the pretrained model (a recipe / config / --set may still override it)
        from ..pretrained import read_pretrained

        model_cfg, _, _ = read_pretrained(args.init_from)
        data = {"model": model_cfg, "init_from": str(args.init_from)}
    if getattr(args, "recipe", None):
        from ..training.recipes import load_recipe

        data = _merge(data, load_recipe(args.recipe))
    if args.config:
        data = _merge(data, load_toml(args.config))
    flags: dict[str, Any] = {}
    if args.data is not None:
        flags["data.spec"] = args.data
    if args.store is not None:
        flags["data.store"] = args.store
    if args.rewards is not None:
        from .._reward_list import parse_reward_list

        names = parse_reward_list(args.rewards, allow_all=True, allow_none=True)
        flags["data.rewards"] = list(names) or ["none"]
    if args.binner is not None:
        flags["data.binner"] = args.binner
    if args.backbone is not None:
        flags["model.backbone.name"] = args.backbone
    if args.steps is not None:
        flags["steps"] = args.steps
    if args.batch_size is not None:
        flags["batch_size"] = args.batch_size
    if args.device is not None:
        flags["device"] = args.device
    data = apply_overrides(data, flags)
    data = apply_overrides(data, list(args.set or []))
    cfg = structure(data, TrainConfig, path="train")
    if cfg.data.store and not cfg.data.rewards:
        raise ConfigError(
            f"A reward store is given (data.store = {cfg.data.store!r}) but no rewards to condition on, which "
            "would silently train the unconditioned baseline. Pass --rewards all (every reward binned in the "
            "store), --rewards a,b, or --rewards none to train the baseline on purpose."
        )
    return cfg


class TrainCommand(Command):
    name = "train"
    help = "train a MIRO (reward-conditioned) or baseline flow-matching model; writes checkpoints to --out"

    def add_arguments(self, parser):
        parser.add_argument("--data", help="data spec, e.g. 'world', 'world:n=2000', a folder, shards, a JSONL manifest")
        parser.add_argument("--store", help="reward store URL (needed unless --rewards none)")
        parser.add_argument("--rewards", help="comma-separated rewards from the store, 'all', or 'none' (baseline)")
        parser.add_argument("--binner", help="binning of the store to condition on (default quantile)")
        parser.add_argument("--backbone", help="registered backbone name (default rin)")
        parser.add_argument("--recipe", help="start from a named recipe (paper: the official MIRO recipe)")
        parser.add_argument("--config", help="TOML file mirroring TrainConfig ([model.backbone], [data], [optim], ...)")
        parser.add_argument("--init-from", metavar="DIR",
                            help="initialise the model from a pretrained directory (ours, official, or a checkpoint)")
        parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                            help="override one field, e.g. --set optim.lr=3e-4 (repeatable)")
        parser.add_argument("--out", required=True, help="output directory (checkpoints/, tb/, samples/)")
        parser.add_argument("--steps", type=int, help="number of optimizer steps")
        parser.add_argument("--batch-size", type=int, help="global batch size per optimizer step")
        parser.add_argument("--device", help="auto (CUDA when present), cpu or cuda")
        parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")
        parser.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")

    def run(self, args):
        import json
        import sys

        from .._config import unstructure
        from ..training import train

        cfg = config_from_args(args)
        if args.print_config:
            json.dump(unstructure(cfg), sys.stdout, indent=2, sort_keys=True)
            sys.stdout.write("\n")
            return 0
        result = train(cfg, args.out, progress=not args.no_progress, resume=args.resume)
        last = next((h for h in reversed(result.history) if "loss" in h), None)
        loss = f", final loss {last['loss']:.4f}" if last else ""
        if result.init_report:
            r = result.init_report
            print(f"initialised from {r['source']}: rewards kept {', '.join(r['kept']) or '-'}; new (fresh tokens) "
                  f"{', '.join(r['new']) or '-'}; not trained on {', '.join(r['dropped']) or '-'}")
        print(f"trained {result.step} steps{loss}; checkpoint: {result.checkpoint_dir}")
        return 0


@hookimpl
def miro_register_commands(register):
    register(TrainCommand)
