"""The model-source options shared by ``miro sample``, ``miro demo`` and ``miro eval`` (read by ``load_pipeline``)."""

from __future__ import annotations

import argparse


def add_model_source(parser: argparse.ArgumentParser, *, required: bool = True):
    """Add ``--checkpoint`` | ``--pretrained`` (mutually exclusive) and ``--text-encoder`` / ``--vae``; returns
    the exclusive group so a command can offer another source beside them (``miro eval --images``)."""
    src = parser.add_mutually_exclusive_group(required=required)
    src.add_argument("--checkpoint", help="checkpoint dir, or a `miro train` --out dir (latest)")
    src.add_argument("--pretrained", help="pretrained dir (save_pretrained / `miro convert`), an official MIRO "
                                          "release dir, or a Hub repo id")
    parser.add_argument("--text-encoder", help="with --pretrained: local text-encoder directory to use instead")
    parser.add_argument("--vae", help="with --pretrained: local VAE directory to use instead")
    return src
