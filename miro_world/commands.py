"""``miro world ...`` sub-commands."""

from __future__ import annotations

__all__ = ["TrainAlignmentCommand"]

import json
import sys

from miro_core import Command, hookimpl


class TrainAlignmentCommand(Command):
    name = "world train-alignment"
    help = "train the world's contrastive image-text model (the world_alignment reward) from scratch"

    def add_arguments(self, parser):
        parser.add_argument("--out", required=True, help="output directory (alignment.safetensors + alignment.json)")
        parser.add_argument("--steps", type=int, default=None, help="optimisation steps (default 800)")
        parser.add_argument("--batch-size", type=int, default=None)
        parser.add_argument("--num-scenes", type=int, default=None, help="training images rendered up front")
        parser.add_argument("--seed", type=int, default=None)
        parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest on busy machines)")

    def run(self, args):
        import torch

        from .alignment_model import train_alignment

        torch.set_num_threads(max(1, args.threads))
        options = {k: v for k, v in {"steps": args.steps, "batch_size": args.batch_size,
                                     "num_scenes": args.num_scenes, "seed": args.seed}.items() if v is not None}
        _, metrics = train_alignment(options, args.out)
        json.dump(metrics, sys.stdout, indent=2)
        sys.stdout.write(f"\nsaved to {args.out}; use it with the reward option weights={args.out}\n")
        return 0


@hookimpl
def miro_register_commands(register):
    register(TrainAlignmentCommand)
