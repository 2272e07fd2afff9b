"""The streaming data path at growing sizes: peak RSS of ``miro encode`` and of a fixed-step streaming ``miro train``,
bytes read per rank with 2 ranks, and the streaming loader's throughput against the training step it feeds.

    python benchmarks/bench_data_scale.py --sizes 10000,100000 --work /tmp/dscale [--steps 50]

For each size N: ``miro world export`` (32 px, N / 1000 shards), ``miro encode`` (minilm text encoder, pixel
autoencoder), ``miro train --set data.encoded=...`` (unet, baseline, batch 32, STEPS steps) under
``/usr/bin/time -v``; then in-process: StreamingData for rank 0 of 2 (bytes of the shards it reads / all shard
bytes) and StreamBatcher batches per second with the model step replaced by nothing, against the measured
``unet`` and small ``rin`` training steps. Prints one JSON line per size.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
MIRO = [sys.executable, "-m", "miro_core.cli"]


def timed(cmd: list[str]) -> dict:
    t0 = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True,
                       env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if p.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}")
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr).group(1))
    return {"wall_s": round(time.perf_counter() - t0, 1), "peak_rss_MB": round(rss / 1024, 1)}


def loader_rate(enc: str, batch: int = 32, n_batches: int = 60) -> dict:
    from miro_core import structure
    from miro_core.training.config import TrainConfig
    from miro_core.training.distributed import DistInfo
    from miro_core.training.encoded import StreamingData, open_encoded
    from miro_core.training.loop import StreamBatcher

    header = open_encoded(enc)
    cfg = structure({"batch_size": batch, "data": {"encoded": enc}}, TrainConfig)
    stream = StreamingData(header, seed=0)
    b = StreamBatcher(stream, cfg, DistInfo(), torch.device("cpu"), uniforms=("self_cond",))
    g = torch.Generator().manual_seed(0)
    b(0, g)
    rates = {}
    threads = torch.get_num_threads()
    for nt in sorted({threads, 1}, reverse=True):  # small tensor ops: intra-op threads only add contention
        torch.set_num_threads(nt)
        t0 = time.perf_counter()
        for s in range(1, n_batches + 1):
            b(s, g)
        rates[nt] = n_batches * batch / (time.perf_counter() - t0)
    torch.set_num_threads(threads)
    rate = max(rates.values())
    half = StreamingData(header, seed=0, rank=0, world_size=2)
    sizes = {k: os.path.getsize(os.path.join(enc, header.shard_name(k))) for k in range(header.units)}
    return {"loader_samples_per_s": round(rate, 1),
            "loader_samples_per_s_by_threads": {str(k): round(v, 1) for k, v in rates.items()},
            "rank0_of_2_bytes_ratio": round(sum(sizes[k] for k in half.own) / sum(sizes.values()), 4)}


def step_rate(backbone: str, options: dict) -> float:
    from miro_core.model import build_model

    torch.manual_seed(0)
    m = build_model({"backbone": {"name": backbone, "options": options}}, (), 384, 3, 32).train()
    opt = torch.optim.AdamW(m.parameters(), 1e-3)
    x, t, tok, mk = torch.randn(32, 3, 32, 32), torch.rand(32), torch.randn(32, 12, 384), torch.ones(32, 12, dtype=torch.bool)
    kw = {n: torch.rand(32) for n in m.train_uniforms}
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        m(x, t, tok, mk, torch.zeros(32, 0), **kw).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
        best = min(best, time.perf_counter() - t0)
    return 32 / best


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--work", default="/tmp/dscale")
    ap.add_argument("--steps", type=int, default=50)
    args = ap.parse_args(argv)
    rin_small = {"interface_dim": 64, "latent_dim": 96, "num_latents": 16, "num_blocks": 1, "layers_per_block": 2,
                 "heads": 2, "interface_heads": 2, "patch_size": 4}
    consumers = {"unet": step_rate("unet", {}), "rin_small": step_rate("rin", rin_small)}
    for n in (int(x) for x in args.sizes.split(",")):
        work = Path(args.work) / str(n)
        shards = max(1, n // 1000)
        pattern = f"{work}/shards/{{{0:05d}..{shards - 1:05d}}}.tar"
        t0 = time.perf_counter()
        subprocess.run([*MIRO, "world", "export", "--num-samples", str(n), "--out", pattern, "--no-progress"], check=True)
        export_s = round(time.perf_counter() - t0, 1)
        enc = str(work / "enc")
        encode = timed([*MIRO, "encode", "--data", pattern, "--out", enc, "--no-progress",
                        "--set", "model.text_encoder.name=minilm", "--set", "data.image_size=32"])
        train = timed([*MIRO, "train", "--data", pattern, "--rewards", "none", "--backbone", "unet", "--steps",
                       str(args.steps), "--batch-size", "32", "--out", str(work / "run"), "--no-progress",
                       "--set", f"data.encoded={enc}", "--set", "model.text_encoder.name=minilm",
                       "--set", "data.image_size=32", "--set", "checkpoint_every=0", "--device", "cpu"])
        loader = loader_rate(enc)
        row = {"samples": n, "shards": shards, "export_s": export_s, "encode": encode, "train": train, **loader,
               "consumer_samples_per_s": {k: round(v, 1) for k, v in consumers.items()},
               "loader_over_consumer": {k: round(loader["loader_samples_per_s"] / v, 2) for k, v in consumers.items()}}
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
