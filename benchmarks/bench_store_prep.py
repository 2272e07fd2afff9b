"""Peak memory of creating a reward store's rows at growing sizes (issue 12: flat rank-0 memory).

    python benchmarks/bench_store_prep.py --sizes 100000,1000000 --work /tmp/sprep [--caption-len 100]

For each size N, in a fresh process: the ids pass of ``miro score`` (``_read_texts``: ids and captions to the
spool) and rank 0's store preparation (``_prepare_store``: id hashes, duplicates, rows copied block by block
into a new local store) on a synthetic indexable source of N samples with ``caption-len``-character captions and
no images (the world would spend ~2.7 ms a sample rendering images the ids pass does not need). Prints one JSON
line per size: wall seconds of each phase, peak RSS of the process (``ru_maxrss``) and the baseline RSS before
the ids pass (imports), so the growth per row can be read off two sizes in one run.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _child(n: int, cap: int, url: str) -> dict:
    from miro_core import DataSource, Sample, config
    from miro_core.data.parts import source_parts
    from miro_core.scoring import _prepare_store, _read_texts
    from miro_core.store import RewardStore

    class Synthetic(DataSource):
        name = "bench_synthetic"

        @config
        class Config:
            n: int = 1
            caption_len: int = 100

        def __getitem__(self, i):
            base = f"a caption for sample number {i} "
            return Sample(id=f"sample-{i:09d}", caption=(base * (cap // len(base) + 1))[:cap], image=None)

        def __len__(self):
            return self.config.n

        def __iter__(self):
            return (self[i] for i in range(len(self)))

    src = Synthetic(Synthetic.Config(n=n, caption_len=cap))
    parts = source_parts(src)
    shares = [parts.rank_pieces(0, 1, None)]
    base_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    texts = [_read_texts(parts, shares[0], None, url, "bench", 0)]
    t1 = time.perf_counter()
    _prepare_store(url, "bench", parts, shares, texts, {}, None, None, {"data": f"synthetic:{n}"})
    t2 = time.perf_counter()
    assert RewardStore.open(url).num_rows == n
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"rows": n, "caption_len": cap, "ids_pass_s": round(t1 - t0, 1), "prepare_s": round(t2 - t1, 1),
            "baseline_rss_mb": round(base_kb / 1024, 1), "peak_rss_mb": round(peak_kb / 1024, 1),
            "text_mb": round(n * (cap + 16) / 1e6, 1)}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--work", default="/tmp/sprep")
    ap.add_argument("--caption-len", type=int, default=100)
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(_child(int(args.child[0]), args.caption_len, args.child[1])), flush=True)
        return
    rows = []
    for n in (int(x) for x in args.sizes.split(",")):
        url = str(Path(args.work) / f"s{n}.zarr")
        subprocess.run(["rm", "-rf", url], check=True)
        out = subprocess.run([sys.executable, __file__, "--child", str(n), url, "--caption-len", str(args.caption_len)],
                             check=True, capture_output=True, text=True, cwd=ROOT)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
        subprocess.run(["rm", "-rf", url], check=True)
    if len(rows) > 1:
        a, b = rows[0], rows[-1]
        grow = (b["peak_rss_mb"] - b["baseline_rss_mb"]) - (a["peak_rss_mb"] - a["baseline_rss_mb"])
        print(json.dumps({"peak_ratio_last_over_first": round(b["peak_rss_mb"] / a["peak_rss_mb"], 3),
                          "bytes_per_row_growth": round(grow * 1024 * 1024 / (b["rows"] - a["rows"]), 1)}), flush=True)


if __name__ == "__main__":
    main()
