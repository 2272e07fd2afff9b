"""The ``miro`` command line: sub-commands come from the ``commands`` registry (plugins can add more)."""

from __future__ import annotations

__all__ = ["main", "build_parser", "run_cli"]

import argparse
import logging
import sys
import traceback
from collections.abc import Callable, Sequence

from .._errors import MiroError
from .._plugins import BUILTIN_DISTRIBUTION


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
        builtin = reg.distribution == BUILTIN_DISTRIBUTION
        try:
            cmd = reg.cls()
            if not builtin:  # a plugin's arguments are tried on a scratch parser first: a failure leaves no trace
                cmd.add_arguments(argparse.ArgumentParser(add_help=False))
        except Exception as exc:  # noqa: BLE001 - a third-party command must not take the CLI down
            if builtin:
                raise
            cmd = _broken_command(reg, exc)
            try:
                # no option prefix: whatever follows the command name is accepted, then run() says why it is broken
                p = target.add_parser(parts[-1], help=cmd.help, description=cmd.help, add_help=False,
                                      prefix_chars="\x00")
            except Exception:  # noqa: BLE001 - e.g. the name clashes with a built-in command: leave it out
                continue
            p.add_argument("rest", nargs="*")
        else:
            p = target.add_parser(parts[-1], help=cmd.help, description=cmd.help)
            cmd.add_arguments(p)
        p.set_defaults(_miro_command=cmd)
        commands[reg.name] = cmd
    return parser, commands


def _broken_command(reg, exc: BaseException):
    """A stand-in for a plugin command that failed to build: listed as broken, and says why when run."""
    from .._plugins import BrokenPlugin, get_plugin_host

    error = (f"Command {reg.name!r} of plugin {reg.plugin!r} (distribution {reg.distribution} {reg.version}) "
             f"failed to set up: {type(exc).__name__}: {exc}. Fix or uninstall that package, or skip it with "
             "MIRO_LOAD_PLUGINS.")
    host = get_plugin_host()
    if not any(b.error == error for b in host.broken):
        host.broken.append(BrokenPlugin(reg.plugin, reg.distribution, reg.version, "command",
                                        error, "".join(traceback.format_exception(exc))))
        logging.getLogger("miro_core._plugins").warning("%s (`miro plugins` lists it)", error)

    class Broken:
        help = f"(broken: {type(exc).__name__}; see `miro plugins`)"

        def run(self, args):
            raise MiroError(error)

    return Broken()


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
