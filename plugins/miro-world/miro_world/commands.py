"""``miro world ...`` sub-commands."""

from __future__ import annotations

__all__ = ["TrainAlignmentCommand", "ExportCommand"]

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


class ExportCommand(Command):
    name = "world export"
    help = "write the built-in world as webdataset tar shards (e.g. --out DIR/{00000..00099}.tar)"

    def add_arguments(self, parser):
        parser.add_argument("--num-samples", type=int, required=True, help="number of samples in all")
        parser.add_argument("--out", required=True, help="shard names with a brace range, local path or fsspec URL")
        parser.add_argument("--seed", type=int, default=0, help="world seed (ids are world-<seed>-<index>)")
        parser.add_argument("--image-size", type=int, default=32, help="image side in pixels (default 32)")
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")

    def run(self, args):
        from .export import export_world

        bar = None
        if not args.no_progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=args.num_samples, desc="export", unit="sample", dynamic_ncols=True)
        try:
            res = export_world(args.out, args.num_samples, seed=args.seed, image_size=args.image_size,
                               progress=bar.update if bar else None)
        finally:
            if bar is not None:
                bar.close()
        print(f"wrote {res['written']} shards ({res['skipped']} already complete) with {res['samples']} samples: {args.out}")
        return 0


@hookimpl
def miro_register_commands(register):
    register(TrainAlignmentCommand)
    register(ExportCommand)
