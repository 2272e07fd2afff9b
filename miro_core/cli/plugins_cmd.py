"""``miro plugins``: every registered component by kind, with its source distribution and version."""

from __future__ import annotations

__all__ = ["PluginsCommand"]

import json
import textwrap
import sys

from .. import hookimpl
from ..interfaces import Command


class PluginsCommand(Command):
    name = "plugins"
    help = "list registered components (rewards, binners, backbones, ...) and the plugins providing them"

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true", help="machine-readable output")
        parser.add_argument("--kind", help="only this kind (rewards, binners, ...)")

    def run(self, args):
        from .._plugins import get_plugin_host

        host = get_plugin_host()
        data = host.as_dict()
        if args.kind:
            host[args.kind]  # validates the kind with a helpful error
            data = {args.kind: data[args.kind]}
        broken = [dict(b.as_dict(), traceback=b.traceback) for b in host.broken]
        if args.json:
            json.dump({**data, "broken": broken}, sys.stdout, indent=2)
            sys.stdout.write("\n")
            return 0
        for kind, items in data.items():
            print(f"{kind} ({len(items)})")
            if not items:
                print("  (none)")
            width = max((len(i["name"]) for i in items), default=0)
            for item in items:
                src = f"{item['distribution']} {item['version']}".strip()
                summary = f"  {item['summary']}" if item["summary"] else ""
                print(f"  {item['name']:<{width}}  [{src}]{summary}")
        if broken:
            print(f"broken plugins ({len(broken)}): left out; every command that does not need them works")
            for b in broken:
                print(f"  {b['entry_point']}  [{b['distribution']} {b['version']}]  {b['stage']}")
                print(textwrap.indent(textwrap.fill(b["error"].splitlines()[0], 100), "      "))
        if host.skipped:
            print("not loaded (MIRO_LOAD_PLUGINS): " + ", ".join(f"{ep} [{d} {v}]" for ep, d, v in host.skipped))
        return 0


@hookimpl
def miro_register_commands(register):
    register(PluginsCommand)
