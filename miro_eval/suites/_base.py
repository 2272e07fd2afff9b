"""The machinery every image suite shares: options, generation or an image folder, resumable scoring, output.

An :class:`ImageSuite` defines ``prompt_records()`` (the prompt set: dicts with ``prompt`` and any metadata,
e.g. GenEval's ``tag`` / ``include``, PartiPrompts' ``category`` / ``challenge``), ``score(records, ...)`` (one
result row per image) and ``summarize(rows)`` (flat metrics + breakdowns). ``run`` does the rest:

1. with a model: generate the missing images into ``<out>/images`` in GenEval's layout (resumable, see
   :mod:`._generation`); with ``--images DIR``: read that folder (GenEval's layout or a flat one);
2. score every image not already scored (results are appended to ``<out>/results.jsonl`` as they come, so a
   killed scoring pass resumes too; a row is reused only for the same file, size and scorer settings);
3. write ``<out>/metrics.json`` (atomic) and ``<out>/report.md`` with tables, breakdowns, an image grid and,
   with ``compare = [other metrics.json ...]``, a comparison table and a radar plot (paper Figure 4).
"""

from __future__ import annotations

__all__ = ["SamplingOptions", "SuiteOptions", "ImageSuite", "ResultCache", "Progress", "null_progress",
           "load_compare", "suite_source"]

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from miro_core import ConfigError, MiroError, Suite, config, unstructure

from ._generation import generate_into, source_id
from ._layout import ImageRecord, load_rgb, read_image_folder

log = logging.getLogger(__name__)

Progress = Callable[[int, str], Any]


class _NullBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def null_progress(total: int, desc: str) -> _NullBar:
    return _NullBar()


@config
class SamplingOptions:
    """How a model samples (unset: the model's own defaults, see ``MiroPipeline.defaults``)."""

    num_steps: int | None = None
    guidance_scale: float | None = None
    #: registered guidance strategy (``multi_reward_cfg``, ``multi_reward_cfg_text_drop``, ``none``...)
    guidance: str | None = None
    solver: str | None = None
    time_shift: float | None = None
    drop_text_in_negative: bool | None = None
    #: positive reward levels in [0, 1] (unset rewards: 1.0)
    reward_targets: dict[str, float] = attrs.field(factory=dict)
    #: negative reward levels in [0, 1] (unset rewards: 0.0)
    negative_reward_targets: dict[str, float] = attrs.field(factory=dict)

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``MiroPipeline.generate`` (only the options that are set)."""
        out = {k: v for k, v in unstructure(self).items() if v is not None and v != {}}
        return out


@config
class SuiteOptions:
    """Options every image suite has."""

    images_per_prompt: int = 1
    #: base seed; image k of prompt i uses batch_seed(seed, i, k)
    seed: int = 0
    #: images generated at once
    batch_size: int = 16
    sampling: SamplingOptions = attrs.field(factory=SamplingOptions)
    #: only the first ``limit`` prompts (quick runs); None = all
    limit: int | None = None
    #: device of the scorers (auto: CUDA when present)
    device: str = "auto"
    #: other evaluations' metrics.json (or their folders) to compare with in the report
    compare: tuple[str, ...] = ()
    #: prompts shown in the report's image grid
    grid_prompts: int = 8


def _device(name: str) -> str:
    if name == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def suite_source(pipeline: Any, images: Any) -> dict[str, Any]:
    if images is not None:
        return {"images": str(Path(images).resolve())}
    return source_id(pipeline)


class ResultCache:
    """Per-image result rows appended to a JSONL file, reused on a re-run for the same file and scorer key."""

    def __init__(self, path: Path, scorer_key: str):
        self.path = Path(path)
        self.scorer_key = scorer_key
        self.rows: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:  # a line cut by a kill: recomputed
                    continue
                if row.get("_scorer") == scorer_key:
                    self.rows[row["_key"]] = row

    @staticmethod
    def file_key(record: ImageRecord, root: Path) -> str:
        st = record.path.stat()
        return f"{record.key(root)}|{st.st_size}|{st.st_mtime_ns}"

    def get(self, record: ImageRecord, root: Path) -> dict[str, Any] | None:
        return self.rows.get(self.file_key(record, root))

    def put(self, record: ImageRecord, root: Path, row: dict[str, Any]) -> None:
        from ..report import to_jsonable

        row = {**to_jsonable(row), "_key": self.file_key(record, root), "_scorer": self.scorer_key}
        self.rows[row["_key"]] = row
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())


def load_compare(paths: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``{label: metrics.json content}`` of other evaluations (a folder means its metrics.json)."""
    out: dict[str, dict[str, Any]] = {}
    for p in paths:
        path = Path(p)
        if path.is_dir():
            path = path / "metrics.json"
        if not path.exists():
            raise ConfigError(f"compare: {path} does not exist; give the metrics.json of an earlier `miro eval`.")
        data = json.loads(path.read_text())
        label = data.get("label") or path.parent.name
        while label in out:
            label += "'"
        out[label] = data
    return out


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class ImageSuite(Suite):
    """Base of the suites that generate (or read) images for a prompt set and score them."""

    Config = SuiteOptions

    # -- what a suite defines -------------------------------------------------------------------------
    def prompt_records(self) -> list[dict[str, Any]]:
        """The prompt set: dicts with ``prompt`` and metadata (stored as each prompt's metadata.jsonl)."""
        raise NotImplementedError

    def scorer_config(self) -> Any:
        """What the scores depend on (a change invalidates the cached result rows)."""
        return unstructure(self.config)

    def score(self, records: Sequence[ImageRecord], root: Path, cache: ResultCache, progress: Progress) -> list[dict[str, Any]]:
        """One result row per record (reusing ``cache``); rows carry ``prompt``, ``group``, ``sample``."""
        raise NotImplementedError

    def summarize(self, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """``{"metrics": {flat name: value}, "breakdown": {...}}`` of the result rows."""
        raise NotImplementedError

    def report_body(self, report: Any, result: dict[str, Any], out: Path) -> None:
        """Add the suite's own tables to the report (after the headline table)."""

    def headline_metrics(self, result: dict[str, Any]) -> list[str]:
        """The metrics of the headline table and the comparison radar."""
        return list(result["metrics"])

    def attach_metadata(self, records: list[ImageRecord]) -> list[ImageRecord]:
        """``--images``: complete the records' metadata from the suite's prompt set where needed."""
        return records

    # -- the run ----------------------------------------------------------------------------------------
    def records(self) -> list[dict[str, Any]]:
        recs = self.prompt_records()
        if self.config.limit is not None:
            recs = recs[: max(0, int(self.config.limit))]
        if not recs:
            raise ConfigError(f"Suite {self.name!r} has no prompts (check its prompt file and `limit`).")
        return recs

    @property
    def device(self) -> str:
        return _device(self.config.device)

    def generate(self, pipeline: Any, out: Path, progress: Progress, *, images_per_prompt: int | None = None,
                 root: Path | None = None) -> Path:
        """Generate the missing images of the prompt set into ``root`` (default ``<out>/images``)."""
        root = root or out / "images"
        c = self.config
        generate_into(pipeline, self.records(), root, images_per_prompt=images_per_prompt or c.images_per_prompt,
                      seed=c.seed, batch_size=c.batch_size, sampling=c.sampling.kwargs(), progress=progress)
        return root

    def image_records(self, root: Path, images_per_prompt: int | None = None) -> list[ImageRecord]:
        """The images of ``root`` that belong to the prompt set (the first ``images_per_prompt`` of each)."""
        n_prompts = len(self.records())
        n = images_per_prompt or self.config.images_per_prompt
        recs = [r for r in read_image_folder(root) if r.group < n_prompts and r.sample < n]
        expected = n_prompts * n
        if len(recs) != expected:
            raise MiroError(f"{root} holds {len(recs)} of the {expected} images this suite needs; re-run to generate "
                            "the missing ones.")
        return recs

    def run(self, out: Any, *, pipeline: Any = None, images: Any = None, progress: Progress | None = None) -> dict[str, Any]:
        out = Path(out)
        progress = progress or null_progress
        if (pipeline is None) == (images is None):
            raise ConfigError(f"Suite {self.name!r}: give either a model (--pretrained / --checkpoint) or --images DIR.")
        if images is not None and not self.accepts_images:
            raise ConfigError(f"Suite {self.name!r} needs a model to generate with; it cannot score --images.")
        if pipeline is not None and not self.accepts_model:
            raise ConfigError(f"Suite {self.name!r} scores image folders only: give --images DIR.")
        others = load_compare(self.config.compare) if self.config.compare else {}  # bad paths fail before any work
        out.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        if pipeline is not None:
            root = self.generate(pipeline, out, progress)
            records = self.image_records(root)
        else:
            root = Path(images)
            records = self.attach_metadata(read_image_folder(root))
        t_gen = time.perf_counter() - t0
        cache = ResultCache(out / "results.jsonl", _hash({"suite": self.name, "scorer": self.scorer_config(),
                                                            "root": str(root.resolve())}))
        rows = self.score(records, root, cache, progress)
        result = self.summarize(rows)
        result = self.finish(out, result, pipeline=pipeline, images=images, root=root, records=records, others=others,
                             timings={"generate_s": t_gen, "score_s": time.perf_counter() - t0 - t_gen})
        return result

    def finish(self, out: Path, result: dict[str, Any], *, pipeline: Any, images: Any, root: Path,
               records: Sequence[ImageRecord], timings: dict[str, float],
               others: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
        """Write metrics.json and report.md; returns the metrics.json content."""
        from ..report import write_json

        data = {
            "suite": self.name,
            "label": out.name,
            "source": suite_source(pipeline, images),
            "config": unstructure(self.config),
            "images": str(root),
            "num_images": len(records),
            "num_prompts": len({r.group for r in records}),
            **result,
            "timings": timings,
        }
        if others is None:
            others = load_compare(self.config.compare) if self.config.compare else {}
        if others:
            data["comparison"] = {label: {k: other.get("metrics", {}).get(k) for k in self.headline_metrics(result)}
                                  for label, other in others.items()}
        write_json(out / "metrics.json", data)
        self.write_report(out, data, records, others)
        return data

    # -- report -------------------------------------------------------------------------------------------
    def write_report(self, out: Path, data: dict[str, Any], records: Sequence[ImageRecord],
                     others: Mapping[str, Mapping[str, Any]]) -> Path:
        from ..report import Report

        rep = Report(f"miro eval: {self.name}", out)
        src = data["source"]
        rep.text(f"Source: {', '.join(f'{k} `{v}`' for k, v in src.items())}. {data['num_images']} images of "
                 f"{data['num_prompts']} prompts in `{data['images']}`.")
        headline = self.headline_metrics(data)
        rep.heading("Results")
        rep.table(["metric", "value"], [[k, data["metrics"].get(k)] for k in headline])
        self.report_body(rep, data, out)
        if others:
            rep.heading("Comparison")
            labels = [data["label"], *others]
            table = {data["label"]: data["metrics"], **{k: v.get("metrics", {}) for k, v in others.items()}}
            rep.table(["metric", *labels], [[m, *[table[lab].get(m) for lab in labels]] for m in headline])
            finite = [m for m in headline if all(isinstance(table[lab].get(m), (int, float)) and
                                                 math.isfinite(float(table[lab][m])) for lab in labels)]
            if len(finite) >= 3:
                from ..plots import plot_radar

                path = plot_radar({lab: {m: float(table[lab][m]) for m in finite} for lab in labels}, finite,
                                  out / "plots" / "radar.png", reference=data["label"])
                rep.image(path, "radar")
        grid = self.grid(out, records)
        if grid is not None:
            rep.heading("Samples")
            rep.image(grid, "samples")
        return rep.write(out / "report.md")

    def grid(self, out: Path, records: Sequence[ImageRecord]) -> Path | None:
        """A grid of the first image of the first ``grid_prompts`` prompts (resized to a common size)."""
        import torch

        from ..plots import save_grid

        firsts: dict[int, ImageRecord] = {}
        for r in records:
            if r.group not in firsts or r.sample < firsts[r.group].sample:
                firsts[r.group] = r
        chosen = [firsts[g] for g in sorted(firsts)[: max(0, self.config.grid_prompts)]]
        if not chosen:
            return None
        imgs = [load_rgb(r.path) for r in chosen]
        side = min(256, min(min(im.size) for im in imgs))
        arr = np.stack([np.asarray(im.resize((side, side))) for im in imgs]).astype(np.float32) / 255.0
        return save_grid(torch.from_numpy(arr).permute(0, 3, 1, 2), out / "plots" / "samples.png", nrow=min(8, len(chosen)))
