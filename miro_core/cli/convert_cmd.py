"""``miro convert official SRC --out DIR``: an official MIRO release (directory or Hub repo id) -> our
pretrained format, loadable with ``MiroPipeline.from_pretrained(DIR)``, ``miro sample --pretrained DIR`` and
``miro train --init-from DIR``."""

from __future__ import annotations

__all__ = ["ConvertOfficialCommand"]

from .. import hookimpl
from ..interfaces import Command


class ConvertOfficialCommand(Command):
    name = "convert official"
    help = "convert an official MIRO release (miro-t2i format) into MIRO's pretrained format"

    def add_arguments(self, parser):
        parser.add_argument("source", help="official release directory, or a Hub repo id (e.g. nicolas-dufour/miro)")
        parser.add_argument("--out", required=True, help="output directory (written atomically)")
        parser.add_argument("--revision", help="Hub revision (commit hash) when SOURCE is a repo id")

    def run(self, args):
        import json

        from ..pretrained import convert_official

        out = convert_official(args.source, args.out, revision=args.revision)
        cfg = json.loads((out / "config.json").read_text())
        print(f"wrote {out}: rin + CADConditioning, rewards {', '.join(cfg['reward_names'])}; "
              "sample with `miro sample --pretrained DIR` (text encoder / VAE from --text-encoder / --vae or the HF cache)")
        return 0


@hookimpl
def miro_register_commands(register):
    register(ConvertOfficialCommand)
