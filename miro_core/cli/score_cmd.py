"""``miro score``: score a dataset with reward models into a reward store (resumable)."""

from __future__ import annotations

__all__ = ["ScoreCommand", "parse_reward_list", "parse_reward_options"]

from typing import Any

from .. import hookimpl
from .._errors import ConfigError
from ..interfaces import Command


def parse_reward_list(text: str) -> list[str]:
    """``"a,b"`` -> ``["a", "b"]`` by the shared rules of :func:`miro_core._reward_list.parse_reward_list`
    (no keyword: ``miro score`` needs reward names)."""
    from .._reward_list import parse_reward_list as _parse

    return list(_parse(text))


def parse_reward_options(rewards: list[str], items: list[str]) -> dict[str, dict[str, Any]]:
    """``["aesthetic.model_path=/x"]`` -> ``{"aesthetic": {"model_path": "/x"}}`` for rewards in ``rewards``."""
    from .._config import _parse_scalar

    out: dict[str, dict[str, Any]] = {r: {} for r in rewards}
    for item in items:
        key, eq, value = item.partition("=")
        name, dot, opt = key.strip().partition(".")
        if not eq or not dot or not opt:
            raise ConfigError(f"--reward-option {item!r} is not of the form reward.key=value (e.g. aesthetic.batch=8).")
        if name not in out:
            raise ConfigError(f"--reward-option {item!r} names reward {name!r}, which is not in --rewards ({', '.join(rewards)}).")
        out[name][opt] = _parse_scalar(value.strip())
    return out


def _int_or_none(text) -> int | None:
    try:
        return int(str(text).strip())
    except ValueError:
        return None


class ScoreCommand(Command):
    """Score a dataset with reward models into a reward store (resumable)."""

    name = "score"
    help = "score a dataset with reward models into a reward store (resumable, adds only missing rewards)"

    def add_arguments(self, parser):
        parser.add_argument("--data", required=True, help="data spec: a source name[:k=v,...], a folder, shards .tar, or .jsonl")
        parser.add_argument("--rewards", required=True, help="comma-separated reward names")
        parser.add_argument("--store", required=True, help="reward store URL (local path or fsspec URL)")
        parser.add_argument("--limit", type=int, default=None, help="only the first N samples of the data")
        parser.add_argument("--batch-size", type=int, default=32)
        parser.add_argument("--device", default="cpu")
        parser.add_argument("--workers", default="auto", help="image decoding processes per rank (auto: see docs)")
        parser.add_argument("--chunk-rows", type=int, default=None, help="rows per store chunk (new stores only)")
        parser.add_argument("--reward-option", action="append", default=[], metavar="REWARD.KEY=VALUE",
                            help="option of one reward (repeatable)")
        parser.add_argument("--retry-failed", action="store_true",
                            help="also rescore the rows recorded as failed (after fixing their cause); "
                                 "scored rows are kept")
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")
        parser.add_argument("--json", action="store_true", help="print the summary as JSON")

    def run(self, args):
        import json
        import sys

        from .._plugins import registry
        from ..data import resolve_data
        from ..scoring import score_dataset

        rewards = parse_reward_list(args.rewards)
        reg = registry("rewards")
        for r in rewards:
            reg.get(r)  # unknown reward: did-you-mean + list, before touching data or store
        options = parse_reward_options(rewards, args.reward_option)
        for name, value in (("--limit", args.limit), ("--batch-size", args.batch_size), ("--chunk-rows", args.chunk_rows)):
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value}.")
        auto = str(args.workers).strip().lower() == "auto"
        workers = None if auto else _int_or_none(args.workers)
        if not auto and (workers is None or workers < 0):
            raise ConfigError(f"--workers must be 'auto' or an integer >= 0, got {args.workers!r}.")
        source = resolve_data(args.data)
        extra = {"chunk_rows": args.chunk_rows} if args.chunk_rows else {}
        summary = score_dataset(
            source, options, args.store, batch_size=args.batch_size, device=args.device, workers=workers,
            limit=args.limit, progress=not args.no_progress, data_spec=args.data, retry_failed=args.retry_failed,
            **extra,
        )
        if args.json:
            json.dump(summary, sys.stdout, indent=2)
            sys.stdout.write("\n")
        elif summary.get("rank", 0) == 0:
            print(f"store {summary['store']}: {summary['num_rows']} rows, scored {summary['rows_processed']} rows "
                  f"in {summary['seconds']:.1f}s")
            for r, c in summary["rewards"].items():
                print(f"  {r}: {c['scored']} scored, {c['failed']} failed, {c['missing']} missing, "
                      f"{c['truncated']} truncated captions")
            if summary.get("rejected"):
                print(f"  {summary['rejected']} samples got no row (duplicate or unusable ids): "
                      f"see `miro store info --store {summary['store']}`")
        return 0


@hookimpl
def miro_register_commands(register):
    register(ScoreCommand)
