"""The streaming data path at growing sizes: peak RSS of ``miro encode`` and of a fixed-step streaming ``miro train``,
bytes read per rank with 2 ranks, and the streaming loader's throughput against the training step it feeds.

    python benchmarks/bench_data_scale.py --sizes 10000,100000 --work /tmp/dscale [--steps 50]

For each size N: ``miro world export`` (32 px, N / 1000 shards), ``miro encode`` (minilm text encoder, pixel
autoencoder), ``miro train --set data.encoded=...`` (unet, baseline, batch 32, STEPS steps) under
``/usr/bin/time -v``; then in-process: StreamingData for rank 0 of 2 (bytes of the shards it reads / all shard
bytes) and StreamBatcher batches per second with the model step replaced by nothing, against the measured
``unet`` and small ``rin`` training steps. Prints one JSON line per size.

    python benchmarks/bench_data_scale.py --scoring --sizes 10000,100000 --work /tmp/dscale

``--scoring``: on the same shards (exported if missing), ``miro score`` with the cheap ``world_sharpness`` reward
under ``/usr/bin/time -v`` (peak RSS, wall), its throughput against the bare reward forward on already decoded
batches, and a 2-rank ``torchrun`` ``miro score`` with every shard open counted (bytes each rank read / all shard
bytes, for the ids pass and the scoring pass). ``--overlap``: seconds per step of loader + real ``unet`` step with
the prefetch thread on and off (``--no-train`` skips encode / train).
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


def shallow_minilm(out: Path, layers: int) -> str:
    """A MiniLM-L6-shaped ``BertModel`` (same tokenizer, 384-d token states, so the same bytes per encoded sample)
    with only ``layers`` transformer layers and random weights, saved with ``save_pretrained``. The ``minilm`` text
    encoder loads it through ``model_path`` by the same code path as the real weights; it exists so that the 1M
    point measures the data path's memory without the ~6 h the six real layers take on 2 cores."""
    from transformers import AutoTokenizer, BertConfig, BertModel
    from miro_models.text_encoders.minilm import bundled_model_path

    if (out / "config.json").exists():
        return str(out)
    src = bundled_model_path()
    cfg = BertConfig.from_pretrained(src)
    cfg.num_hidden_layers = layers
    torch.manual_seed(0)
    tmp = out.with_name(out.name + ".tmp")
    BertModel(cfg).save_pretrained(tmp)
    AutoTokenizer.from_pretrained(src).save_pretrained(tmp)
    os.replace(tmp, out)
    return str(out)


def timed(cmd: list[str]) -> dict:
    t0 = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True,
                       env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if p.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}")
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr).group(1))
    return {"wall_s": round(time.perf_counter() - t0, 1), "peak_rss_MB": round(rss / 1024, 1)}


COUNT_DRIVER = """
import json, os, sys
from miro_core.data.sources import WebDatasetSource
real = WebDatasetSource._open
log = sys.argv[1]
class Counting:
    def __init__(self, f, url):
        self.f, self.url, self.n = f, url, 0
    def read(self, *a):
        b = self.f.read(*a)
        self.n += len(b)
        return b
    def close(self):
        import torch.utils.data as tud
        info = tud.get_worker_info()
        with open(log, "a") as out:
            out.write(f"{os.environ.get('RANK', '0')} {info.id if info else -1} {self.url} {self.n}\\n")
        self.f.close()
    def __getattr__(self, name):
        return getattr(self.f, name)
WebDatasetSource._open = lambda self, url: Counting(real(self, url), url)
from miro_core.cli import main
sys.exit(main(sys.argv[2:]))
"""


def scoring_point(pattern: str, work: Path, n: int, bare_n: int = 2000) -> dict:
    """Peak RSS / wall of ``miro score`` (world_sharpness), throughput vs the bare forward, bytes per rank."""
    import shutil

    from miro_core import registry
    from miro_core.data import resolve_data
    from miro_core.data._decode import decode_raw, stack_images
    from miro_core.scoring import score_dataset

    store = work / "score.zarr"
    shutil.rmtree(store, ignore_errors=True)
    cli = timed([*MIRO, "score", "--data", pattern, "--rewards", "world_sharpness", "--store", str(store),
                 "--batch-size", "64", "--workers", "1", "--no-progress"])
    # throughput: the streaming pipeline in process (workers 0 and 1) vs the bare forward on decoded batches
    torch.set_num_threads(1)
    reward = registry("rewards").create("world_sharpness", {})
    reward.setup("cpu")
    src = resolve_data(pattern)
    imgs = []
    for i, smp in enumerate(src):
        if i >= bare_n:
            break
        imgs.append(decode_raw(smp.image))
    batches = [stack_images(imgs[i:i + 64]) for i in range(0, len(imgs), 64)]
    bare = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        with torch.inference_mode():
            for b in batches:
                reward.score(b, [""] * b.shape[0])
        bare = min(bare, time.perf_counter() - t0)
    bare_per_img = bare / len(imgs)
    pipe = {}
    for w in (0, 1):
        shutil.rmtree(work / "tp.zarr", ignore_errors=True)
        t0 = time.perf_counter()
        score_dataset(pattern, ["world_sharpness"], str(work / "tp.zarr"), batch_size=64, workers=w,
                      limit=bare_n * 5, progress=False)
        pipe[w] = (time.perf_counter() - t0) / (bare_n * 5)
    torch.set_num_threads(os.cpu_count() or 1)
    # bytes per rank with 2 ranks
    log = work / "opens.log"
    log.unlink(missing_ok=True)
    driver = work / "count_driver.py"
    driver.write_text(COUNT_DRIVER)
    shutil.rmtree(work / "ddp.zarr", ignore_errors=True)
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        str(driver), str(log), "score", "--data", pattern, "--rewards", "world_sharpness", "--store",
                        str(work / "ddp.zarr"), "--batch-size", "64", "--workers", "1", "--no-progress"],
                       capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if p.returncode:
        raise SystemExit(p.stderr[-3000:])
    ddp_wall = time.perf_counter() - t0
    from miro_core.data.sources import expand_urls

    total = sum(os.path.getsize(u) for u in expand_urls(pattern))
    per = {}
    for line in log.read_text().splitlines():
        rank, worker, _url, k = line.split(" ")
        key = f"rank{rank}_{'ids_pass' if worker == '-1' else 'scoring'}"
        per[key] = per.get(key, 0) + int(k)
    return {"score_cli": cli, "bare_ms_per_img": round(bare_per_img * 1e3, 4),
            "pipeline_over_bare": {f"workers{w}": round(v / bare_per_img, 3) for w, v in pipe.items()},
            "torchrun2_wall_s": round(ddp_wall, 1), "data_bytes": total,
            "bytes_ratio": {k: round(v / total, 4) for k, v in sorted(per.items())}}


def overlap(enc: str, steps: int = 30) -> dict:
    """Seconds per step of loader + real unet step (batch 32) with and without the prefetch thread."""
    from miro_core import structure
    from miro_core.distributed import DistInfo
    from miro_core.model import build_model
    from miro_core.training.config import TrainConfig
    from miro_core.training.encoded import StreamingData, open_encoded
    from miro_core.training.loop import StreamBatcher

    header = open_encoded(enc)
    cfg = structure({"batch_size": 32, "data": {"encoded": enc}}, TrainConfig)
    torch.manual_seed(0)
    m = build_model({"backbone": {"name": "unet", "options": {}}}, (), header.text_dim, 3, 32).train()
    opt = torch.optim.AdamW(m.parameters(), 1e-3)
    out: dict = {}
    for rnd, pf in enumerate((2, 0, 2, 0, 2, 0)):  # alternating rounds, the first pair a warm-up; best of the rest
        b = StreamBatcher(StreamingData(header, seed=0), cfg, DistInfo(), torch.device("cpu"), prefetch=pf)
        g = torch.Generator().manual_seed(0)
        fetch_s = 0.0
        t0 = time.perf_counter()
        for s in range(steps if rnd >= 2 else 3):
            f0 = time.perf_counter()
            (batch,) = b(s, g)
            fetch_s += time.perf_counter() - f0
            kw = {k[2:]: v for k, v in batch.items() if k.startswith("u_")}
            m(batch["x"], batch["t"], batch["tokens"], batch["mask"], batch["levels"], **kw).pow(2).mean().backward()
            opt.step()
            opt.zero_grad()
        b.close()
        if rnd < 2:
            continue
        rec = {"s_per_step": round((time.perf_counter() - t0) / steps, 4),
               "waiting_for_data_s_per_step": round(fetch_s / steps, 4)}
        key = f"prefetch{pf}"
        if key not in out or rec["s_per_step"] < out[key]["s_per_step"]:
            out[key] = rec
    return out


def loader_rate(enc: str, batch: int = 32, n_batches: int = 400) -> dict:
    from miro_core import structure
    from miro_core.training.config import TrainConfig
    from miro_core.distributed import DistInfo
    from miro_core.training.encoded import StreamingData, open_encoded
    from miro_core.training.loop import StreamBatcher

    header = open_encoded(enc)
    cfg = structure({"batch_size": batch, "data": {"encoded": enc}}, TrainConfig)
    stream = StreamingData(header, seed=0)
    b = StreamBatcher(stream, cfg, DistInfo(), torch.device("cpu"), uniforms=("self_cond",))  # prefetch thread on
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
    ap.add_argument("--scoring", action="store_true", help="the scoring figures (see the module doc)")
    ap.add_argument("--overlap", action="store_true", help="loader + unet step with and without prefetch")
    ap.add_argument("--no-train", action="store_true", help="skip encode / train / loader figures")
    ap.add_argument("--text-encoder-layers", type=int, default=0,
                    help="encode with a MiniLM-shaped BERT of this many random layers (0 = the real 6-layer minilm)")
    ap.add_argument("--with-store", action="store_true",
                    help="also score world_sharpness into WORK/N/join.zarr, bin it and time a streaming train that "
                         "joins the reward levels from the store by id")
    ap.add_argument("--loader-only", action="store_true", help="only the loader rate (existing encoding) and the "
                    "consumers' step rates")
    args = ap.parse_args(argv)
    rin_small = {"interface_dim": 64, "latent_dim": 96, "num_latents": 16, "num_blocks": 1, "layers_per_block": 2,
                 "heads": 2, "interface_heads": 2, "patch_size": 4}
    text = ["--set", "model.text_encoder.name=minilm"]
    if args.text_encoder_layers:
        path = shallow_minilm(Path(args.work) / f"minilm-{args.text_encoder_layers}layer", args.text_encoder_layers)
        text += ["--set", f"model.text_encoder.options.model_path={path}"]
    consumers = {} if args.no_train else {"unet": step_rate("unet", {}), "rin_small": step_rate("rin", rin_small)}
    for n in (int(x) for x in args.sizes.split(",")):
        work = Path(args.work) / str(n)
        shards = max(1, n // 1000)
        pattern = f"{work}/shards/{{{0:05d}..{shards - 1:05d}}}.tar"
        t0 = time.perf_counter()
        subprocess.run([*MIRO, "world", "export", "--num-samples", str(n), "--out", pattern, "--no-progress"], check=True)
        export_s = round(time.perf_counter() - t0, 1)  # existing shards are kept: 0 s when they are there
        enc = str(work / "enc")
        row = {"samples": n, "shards": shards, "export_s": export_s,
               "text_encoder_layers": args.text_encoder_layers or 6}
        if args.loader_only:
            loader = loader_rate(enc)
            print(json.dumps({"samples": n, **loader, "consumer_samples_per_s": {k: round(v, 1) for k, v in consumers.items()},
                              "loader_over_consumer": {k: round(loader["loader_samples_per_s"] / v, 1)
                                                       for k, v in consumers.items()}}), flush=True)
            continue
        if args.scoring:
            row["scoring"] = scoring_point(pattern, work, n)
        if args.overlap:
            row["overlap"] = overlap(enc)
        if not args.no_train:
            encode = timed([*MIRO, "encode", "--data", pattern, "--out", enc, "--no-progress", *text,
                            "--set", "data.image_size=32"])

            def train_cmd(out: str, *rewards: str) -> list[str]:
                return [*MIRO, "train", "--data", pattern, *rewards, "--backbone", "unet", "--steps", str(args.steps),
                        "--batch-size", "32", "--out", str(work / out), "--no-progress", "--set",
                        f"data.encoded={enc}", *text, "--set", "data.image_size=32", "--set", "checkpoint_every=0",
                        "--device", "cpu"]

            train = timed(train_cmd("run", "--rewards", "none"))
            if args.with_store:
                store = str(work / "join.zarr")
                row["score_for_join"] = timed([*MIRO, "score", "--data", pattern, "--rewards", "world_sharpness",
                                               "--store", store, "--batch-size", "64", "--workers", "1",
                                               "--no-progress"])
                subprocess.run([*MIRO, "bin", "--store", store, "--bins", "16"], check=True, capture_output=True)
                row["train_join"] = timed(train_cmd("run_join", "--store", store, "--rewards", "world_sharpness"))
            loader = loader_rate(enc)
            row.update({"encode": encode, "train": train, **loader,
                        "consumer_samples_per_s": {k: round(v, 1) for k, v in consumers.items()},
                        "loader_over_consumer": {k: round(loader["loader_samples_per_s"] / v, 2)
                                                 for k, v in consumers.items()}})
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
