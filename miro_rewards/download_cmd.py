"""``miro rewards download NAME...`` and ``miro rewards info``: fetch and inspect reward weights.

A reward declares its files with a ``weight_sources() -> list[WeightSource]`` method (see
:mod:`miro_rewards._weights`); rewards without it need no downloadable weights (or manage their own).
``download`` is the only network path of the rewards; ``setup`` always resolves offline.
"""

from __future__ import annotations

__all__ = ["RewardsDownloadCommand", "RewardsInfoCommand", "reward_weight_status"]

import json
import sys
from typing import Any

from miro_core import Command, MiroError, apply_overrides, hookimpl, registry

from ._weights import WeightSource, download, is_present


def _create(name: str, overrides: list[str]) -> Any:
    options = apply_overrides({}, overrides) if overrides else {}
    return registry("rewards").create(name, options)


def _sources(reward: Any) -> list[WeightSource] | None:
    fn = getattr(reward, "weight_sources", None)
    return list(fn()) if callable(fn) else None


def reward_weight_status(reward: Any, cache_dir: str | None = None) -> list[dict[str, Any]] | None:
    """For each weight source of ``reward``: its description plus ``present`` and the local ``path``."""
    sources = _sources(reward)
    if sources is None:
        return None
    cache = cache_dir if cache_dir is not None else getattr(reward.config, "cache_dir", None)
    out = []
    for src in sources:
        path = is_present(src, cache_dir=cache)
        out.append({**src.as_dict(), "present": path is not None, "path": str(path) if path else None})
    return out


class RewardsDownloadCommand(Command):
    name = "rewards download"
    help = "download the weights of the named rewards into the Hugging Face cache (needs network)"

    def add_arguments(self, parser):
        parser.add_argument("names", nargs="+", metavar="NAME", help="reward names (see `miro rewards info`), or `all`")
        parser.add_argument("--cache-dir", help="Hugging Face hub cache to fill (default: $HF_HUB_CACHE)")
        parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                            help="reward option applied to every named reward (e.g. revision=<sha>, hps_version=v2.0)")

    def run(self, args):
        reg = registry("rewards")
        names = list(reg.names()) if args.names == ["all"] else list(dict.fromkeys(args.names))
        for name in names:
            reg.get(name)  # unknown names fail before any download, with "did you mean"
        failed: list[str] = []
        for name in names:
            reward = _create(name, args.overrides)
            sources = _sources(reward)
            if not sources:
                print(f"{name}: no downloadable weights declared; nothing to do")
                continue
            cache = args.cache_dir or getattr(reward.config, "cache_dir", None)
            for src in sources:
                if src.local_path:
                    print(f"{name}: {src.role} uses the local path {src.local_path}; skipped")
                    continue
                print(f"{name}: {src.role} {src.describe()} ...", flush=True)
                try:
                    path = download(src, cache_dir=cache, reward=name)
                except MiroError as exc:
                    print(f"{name}: FAILED: {exc}", file=sys.stderr)
                    failed.append(f"{name} ({src.role})")
                    continue
                print(f"{name}: {src.role} ready at {path} (license: {src.license})")
        if failed:
            raise MiroError(f"Downloading failed for {', '.join(failed)}; see the messages above, fix and rerun the command.")
        return 0


class RewardsInfoCommand(Command):
    name = "rewards info"
    help = "list rewards, the weights each needs, their licenses and whether they are present locally"

    def add_arguments(self, parser):
        parser.add_argument("names", nargs="*", metavar="NAME", help="only these rewards (default: all)")
        parser.add_argument("--cache-dir", help="Hugging Face hub cache to check (default: $HF_HUB_CACHE)")
        parser.add_argument("--json", action="store_true", help="machine-readable output")

    def run(self, args):
        reg = registry("rewards")
        names = args.names or reg.names()
        data: dict[str, Any] = {}
        for name in names:
            cls = reg.get(name).cls
            entry: dict[str, Any] = {
                "uses_text": bool(getattr(cls, "uses_text", True)),
                "evaluation_only": bool(getattr(cls, "evaluation_only", False)),
                "max_text_tokens": getattr(cls, "max_text_tokens", None),
                "summary": ((cls.__doc__ or "").strip().splitlines() or [""])[0],
            }
            try:
                entry["weights"] = reward_weight_status(reg.create(name), args.cache_dir)
            except MiroError as exc:  # a reward whose defaults cannot be built: report, keep listing
                entry["weights"] = None
                entry["error"] = str(exc)
            data[name] = entry
        if args.json:
            json.dump(data, sys.stdout, indent=2)
            sys.stdout.write("\n")
            return 0
        for name, entry in data.items():
            flags = [] if entry["uses_text"] else ["image only"]
            if entry["evaluation_only"]:
                flags.append("evaluation only")
            print(f"{name}{'  (' + ', '.join(flags) + ')' if flags else ''}  {entry['summary']}")
            if entry.get("error"):
                print(f"  error: {entry['error']}")
            elif entry["weights"] is None:
                print("  weights: none declared")
            else:
                for w in entry["weights"]:
                    where = w["local_path"] or f"{w['repo_id']}@{w['revision']}"
                    state = f"present ({w['path']})" if w["present"] else "MISSING"
                    print(f"  {w['role']}: {where} [{', '.join(w['required'])}] license: {w['license']}: {state}")
        return 0


@hookimpl
def miro_register_commands(register):
    register(RewardsDownloadCommand)
    register(RewardsInfoCommand)
