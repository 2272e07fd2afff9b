"""``miro demo``: a local web page with one positive and one negative dial per reward of the model, an
isolation grid and a two-reward interpolation strip (docs/demo.md). Standard library server, 127.0.0.1 by default."""

from __future__ import annotations

__all__ = ["DemoCommand"]

import ipaddress
import sys

from .. import hookimpl
from ._model_args import add_model_source
from .._errors import ConfigError
from ..interfaces import Command


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class DemoCommand(Command):
    name = "demo"
    help = "serve a local web page with reward dials, an isolation grid and an interpolation strip"

    def add_arguments(self, parser):
        add_model_source(parser)
        parser.add_argument("--host", default="127.0.0.1",
                            help="address to listen on (default 127.0.0.1: this machine only; the page has no login)")
        parser.add_argument("--port", type=int, default=7860, help="port (default 7860; 0 = any free port)")
        parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
        parser.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA weights")
        parser.add_argument("--max-images", type=int, default=64, help="most images one request may make (default 64)")

    def run(self, args):
        from ..demo import DemoApp, DemoServer
        from ..sampling import load_pipeline

        if not 0 <= args.port <= 65535:
            raise ConfigError(f"--port must be in [0, 65535] (got {args.port}).")
        if args.max_images < 1:
            raise ConfigError("--max-images must be >= 1.")
        if args.checkpoint is not None and (args.text_encoder or args.vae):
            raise ConfigError("--text-encoder / --vae go with --pretrained; a checkpoint uses its own.")
        source = str(args.checkpoint or args.pretrained)

        def load():
            return load_pipeline(checkpoint=args.checkpoint, pretrained=args.pretrained, text_encoder=args.text_encoder,
                                 vae=args.vae, device=args.device, use_ema=not args.no_ema)

        app = DemoApp(load, source=source, max_images=args.max_images)
        server = DemoServer(app, args.host, args.port)
        if not _is_loopback(args.host):
            print(f"warning: listening on {args.host}: anyone who can reach this address can use the model "
                  "(the page has no login)", file=sys.stderr)
        print(f"miro demo: {server.url} (model {source}; loading in the background, Ctrl-C stops)", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.close()
        return 0


@hookimpl
def miro_register_commands(register):
    register(DemoCommand)
