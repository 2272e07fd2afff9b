"""``miro encode``: VAE latents and text-encoder outputs of a data source, written once as shards (any fsspec URL)
that ``miro train`` streams (``data.encoded``). Resumable after a kill; under ``torchrun`` each rank encodes its
own share of the source's units (no collective: ranks never wait on each other)."""

from __future__ import annotations

__all__ = ["EncodeCommand"]

from .. import hookimpl
from ..interfaces import Command


class EncodeCommand(Command):
    name = "encode"
    help = "encode a data source (latents + text tokens) into streamable shards for `miro train --set data.encoded=URL`"

    def add_arguments(self, parser):
        parser.add_argument("--data", required=True, help="data spec ('world:num_samples=100000', shards, ...)")
        parser.add_argument("--out", required=True, help="encoded dataset URL (local path or fsspec URL)")
        parser.add_argument("--recipe", help="take the text encoder / autoencoder / image size from a recipe")
        parser.add_argument("--config", help="TOML training config to take the encoders and image size from")
        parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                            help="override a training-config field, e.g. --set model.text_encoder.name=t5")
        parser.add_argument("--shard-rows", type=int, help="samples per shard for sources without shards (4096)")
        parser.add_argument("--dtype", choices=("float16", "bfloat16", "float32"), help="stored dtype (float16)")
        parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")

    def run(self, args):
        import argparse

        import torch

        from .._plugins import registry
        from ..training.encoded import encode_dataset, open_encoded
        from .train_cmd import config_from_args

        ns = argparse.Namespace(config=args.config, recipe=args.recipe, init_from=None, data=args.data, store=None,
                                rewards=None, binner=None, backbone=None, steps=None, batch_size=None, device=None,
                                set=list(args.set or []) + [f"data.encoded={args.out}"]
                                + ([f"data.shard_rows={args.shard_rows}"] if args.shard_rows else [])
                                + ([f"data.encode_dtype={args.dtype}"] if args.dtype else []))
        cfg = config_from_args(ns)
        device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                              ("cpu" if args.device == "auto" else args.device))
        from ..distributed import env_rank

        rank, world, local_rank = env_rank()  # no process group: the ranks never wait on each other
        if device.type == "cuda" and world > 1:
            device = torch.device("cuda", local_rank)
        te = registry("text_encoders").create(cfg.model.text_encoder.name, cfg.model.text_encoder.options)
        ae = registry("autoencoders").create(cfg.model.autoencoder.name, cfg.model.autoencoder.options)
        te.setup(device)
        ae.setup(device)
        from ..data import resolve_data

        source = resolve_data(cfg.data.spec)
        bar = None
        if not args.no_progress:
            from tqdm.auto import tqdm

            bar = tqdm(desc=f"encode (rank {rank})", unit="sample", dynamic_ncols=True)
        try:
            res = encode_dataset(source, cfg.data.encoded, te, ae, data_spec=cfg.data.spec,
                                 text_encoder_spec=cfg.model.text_encoder, autoencoder_spec=cfg.model.autoencoder,
                                 image_size=cfg.data.image_size, rank=rank, world_size=world,
                                 shard_rows=cfg.data.shard_rows, batch_size=cfg.data.encode_batch_size,
                                 dtype=cfg.data.encode_dtype, device=device, progress=bar.update if bar else None)
        finally:
            if bar is not None:
                bar.close()
        try:
            open_encoded(cfg.data.encoded)
            state = "complete"
        except Exception:  # noqa: BLE001 - other ranks may still be encoding
            state = "waiting for other ranks' shards"
        print(f"rank {rank}: encoded {res['encoded']} shards ({res['rows']} samples), {res['skipped']} already there, "
              f"{res['units']} in all; {cfg.data.encoded} is {state}. Train with --set data.encoded={cfg.data.encoded}")
        return 0


@hookimpl
def miro_register_commands(register):
    register(EncodeCommand)
