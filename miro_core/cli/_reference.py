"""Generate the CLI reference (docs/cli.md) from the live argument parsers, so the page cannot drift.

``python -m miro_core.cli._reference > docs/cli.md`` regenerates it; a test checks the page is current.
"""

from __future__ import annotations

__all__ = ["render_reference"]

import argparse
import os


def _walk(parser: argparse.ArgumentParser, prefix: str):
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield prefix, parser
        return
    for action in subs:
        for name, sub in sorted(action.choices.items()):
            yield from _walk(sub, f"{prefix} {name}")


def render_reference() -> str:
    from . import build_parser

    os.environ.setdefault("COLUMNS", "100")
    parser, _ = build_parser()
    out = [
        "# CLI reference",
        "",
        "Generated from the live parsers by `python -m miro_core.cli._reference > docs/cli.md` (a test keeps it",
        "current). Every command accepts the global options `--debug` (show tracebacks) and `-v` (more logging),",
        "given before the command name. User errors exit with status 2 and a one-paragraph message.",
        "",
        "`miro-run`, the end-to-end job, is described in [miro-run.md](miro-run.md).",
        "",
    ]
    for path, sub in _walk(parser, "miro"):
        if path == "miro":
            continue
        sub.prog = path
        out += [f"## `{path}`", "", (sub.description or "").strip(), "", "```text", sub.format_help().rstrip(), "```", ""]
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":  # pragma: no cover
    print(render_reference(), end="")
