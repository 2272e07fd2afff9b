"""The ``miro`` command line: sub-commands come from the ``commands`` registry (plugins can add more)."""

from __future__ import annotations

__all__ = ["main", "build_parser", "run_cli"]

import argparse
import logging
import sys
import traceback
from collections.abc import Callable, Sequence

from .._errors import MiroError


def _configure_logging(verbose: int) -> None:
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, object]]:
    from .._plugins import registry

    parser = argparse.ArgumentParser(prog="miro", description="MIRO: multi-reward conditioned pretraining.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-v info, -vv debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    groups: dict[str, argparse._SubParsersAction] = {}
    commands: dict[str, object] = {}
    for reg in registry("commands"):
        cmd = reg.cls()
        parts = reg.name.split()
        target = sub
        for depth, part in enumerate(parts[:-1]):
            key = " ".join(parts[: depth + 1])
            if key not in groups:
                p = target.add_parser(part, help=f"{part} commands")
                g = p.add_subparsers(dest=f"command_{depth + 1}", metavar="COMMAND")
                g.required = True
                groups[key] = g
            target = groups[key]
        p = target.add_parser(parts[-1], help=cmd.help, description=cmd.help)
        cmd.add_arguments(p)
        p.set_defaults(_miro_command=cmd)
        commands[reg.name] = cmd
    return parser, commands


def run_cli(fn: Callable[[], int | None], debug: bool) -> int:
    """Run ``fn`` turning :class:`MiroError` into a one-paragraph message and exit status 2."""
    try:
        rc = fn()
        return int(rc or 0)
    except MiroError as exc:
        if debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    holder: dict[str, argparse.Namespace] = {}

    def _run() -> int | None:
        parser, _ = build_parser()
        args = parser.parse_args(argv)
        holder["args"] = args
        _configure_logging(args.verbose)
        return args._miro_command.run(args)

    return run_cli(_run, debug)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
