"""``miro store info``: rows, per-reward scored/failed/missing counts and binnings of a reward store."""

from __future__ import annotations

__all__ = ["StoreInfoCommand"]

import argparse
import json
import logging
import sys

from .. import hookimpl
from ..interfaces import Command

log = logging.getLogger(__name__)


class StoreInfoCommand(Command):
    """Summarise a reward store: rows, per-reward counts, binnings."""

    name = "store info"
    help = "summarise a reward store (rows, rewards with scored/failed/missing counts, binnings)"

    def add_arguments(self, parser):
        parser.add_argument("--store", help="reward store URL (local path or fsspec URL)")
        parser.add_argument("url", nargs="?", help=argparse.SUPPRESS)  # the old positional spelling (one release)
        parser.add_argument("--json", action="store_true", help="machine-readable output")
        parser.add_argument("--failures", type=int, default=0, metavar="N", help="also list up to N failures per reward")

    def run(self, args):
        from .._errors import ConfigError
        from ..store import RewardStore

        if args.url is not None:
            if args.store is not None and args.store != args.url:
                raise ConfigError(f"`miro store info` got two stores ({args.url!r} and --store {args.store!r}); "
                                  "pass one, as --store URL.")
            log.warning("`miro store info URL` is deprecated and goes away in the next release; use "
                        "`miro store info --store URL`")
        url = args.store if args.store is not None else args.url
        if url is None:
            raise ConfigError("`miro store info` needs the store: pass --store URL (a local path or fsspec URL).")
        store = RewardStore.open(url, "r")
        info = store.info()
        if args.failures:
            info["failures"] = {r: store.failures(r)[: args.failures] for r in store.rewards()}
        if args.json:
            json.dump(info, sys.stdout, indent=2)
            sys.stdout.write("\n")
            return 0
        print(f"store {info['url']}: {info['num_rows']} rows (chunk {info['chunk_rows']}, format v{info['format_version']})")
        if not info["rewards"]:
            print("  no rewards scored yet")
        for r, c in info["rewards"].items():
            extra = f", {c['truncated']} truncated captions" if c["truncated"] else ""
            print(f"  {r}: {c['scored']} scored, {c['failed']} failed, {c['missing']} missing{extra}")
            for fid, reason in info.get("failures", {}).get(r, []):
                print(f"      {fid}: {reason}")
        for b, rs in info["binners"].items():
            stale = info.get("stale_bins", {}).get(b, {})
            note = f" (stale: {', '.join(stale)}; rerun `miro bin --binner {b}`)" if stale else ""
            print(f"  bins/{b}: {', '.join(rs)}{note}")
        rej = info.get("rejected", {})
        if rej.get("count"):
            kinds = ", ".join(f"{k}: {v}" for k, v in sorted(rej["by_reason"].items()))
            print(f"  {rej['count']} samples got no row ({kinds})")
        return 0


@hookimpl
def miro_register_commands(register):
    register(StoreInfoCommand)
