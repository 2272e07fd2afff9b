"""``miro store info``: rows, per-reward scored/failed/missing counts and binnings of a reward store."""

from __future__ import annotations

__all__ = ["StoreInfoCommand"]

import json
import sys

from .. import hookimpl
from ..interfaces import Command


class StoreInfoCommand(Command):
    """Summarise a reward store: rows, per-reward counts, binnings."""

    name = "store info"
    help = "summarise a reward store (rows, rewards with scored/failed/missing counts, binnings)"

    def add_arguments(self, parser):
        parser.add_argument("url", help="reward store URL (local path or fsspec URL)")
        parser.add_argument("--json", action="store_true", help="machine-readable output")
        parser.add_argument("--failures", type=int, default=0, metavar="N", help="also list up to N failures per reward")

    def run(self, args):
        from ..store import RewardStore

        store = RewardStore.open(args.url, "r")
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
            print(f"  bins/{b}: {', '.join(rs)}")
        return 0


@hookimpl
def miro_register_commands(register):
    register(StoreInfoCommand)
