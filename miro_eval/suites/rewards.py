"""``rewards``: any set of registered rewards on any prompt file; mean and std overall and per metadata key."""

from __future__ import annotations

__all__ = ["RewardsSuite", "score_records", "reward_summary"]

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from miro_core import ConfigError, config, hookimpl

from .._common import load_rewards, mean_std
from ._base import ImageSuite, Progress, ResultCache, SuiteOptions
from ._layout import ImageRecord, load_rgb
from ._prompts import read_prompt_file

log = logging.getLogger(__name__)


def _load_batch(records: Sequence[ImageRecord]):
    import torch

    arrs = [np.asarray(load_rgb(r.path), dtype=np.uint8) for r in records]
    return torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).float().div_(255.0)


def score_records(rewards: Mapping[str, Any] | None, load_rewards_fn: Any, records: Sequence[ImageRecord], root: Path,
                  cache: ResultCache, progress: Progress, *, batch_size: int, keys: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Reward scores of every record (``rewards`` built on first need by ``load_rewards_fn()``), cached per image.

    Each row: ``file``, ``prompt``, ``group``, ``sample``, ``scores`` ({reward: float, NaN = failed}) and the
    metadata ``keys`` of the record."""
    import torch

    rows: dict[int, dict[str, Any]] = {}
    todo = []
    for i, r in enumerate(records):
        hit = cache.get(r, root)
        if hit is not None:
            rows[i] = hit
        else:
            todo.append(i)
    if todo:
        rewards = rewards if rewards is not None else load_rewards_fn()
        bar = progress(len(todo), "score")
        # images of one batch must share a size: group the work by size, keep batches in record order
        by_size: dict[tuple[int, int], list[int]] = {}
        for i in todo:
            from PIL import Image

            with Image.open(records[i].path) as im:
                by_size.setdefault(im.size, []).append(i)
        try:
            for idx in by_size.values():
                for start in range(0, len(idx), batch_size):
                    chunk = idx[start:start + batch_size]
                    recs = [records[i] for i in chunk]
                    images = _load_batch(recs)
                    prompts = [r.prompt for r in recs]
                    scores: dict[str, np.ndarray] = {}
                    with torch.no_grad():
                        for name, reward in rewards.items():
                            s = reward.score(images, prompts)
                            scores[name] = torch.as_tensor(s).detach().double().cpu().reshape(-1).numpy()
                    for j, (i, r) in enumerate(zip(chunk, recs)):
                        row = {"file": r.key(root), "prompt": r.prompt, "group": r.group, "sample": r.sample,
                               "scores": {n: float(v[j]) for n, v in scores.items()},
                               **{k: r.metadata.get(k) for k in keys if k in r.metadata}}
                        cache.put(r, root, row)
                        rows[i] = cache.get(r, root)
                    bar.update(len(chunk))
        finally:
            bar.close()
    return [rows[i] for i in range(len(records))]


def _value(v: Any) -> float:
    return float("nan") if v is None else float(v)


def reward_summary(rows: Sequence[dict[str, Any]], rewards: Sequence[str], keys: Sequence[str] = ()) -> dict[str, Any]:
    """``metrics``: ``<reward>/mean`` and ``<reward>/std`` over the finite scores (NaN = failed, counted in
    ``<reward>/failed``); ``breakdown``: ``{key: {value: {reward: {mean, std, n}}}}`` per metadata key."""
    metrics: dict[str, float] = {}
    for name in rewards:
        vals = np.array([_value(r["scores"].get(name)) for r in rows], dtype=np.float64)
        metrics[f"{name}/mean"], metrics[f"{name}/std"] = mean_std(vals)
        metrics[f"{name}/failed"] = float(np.sum(~np.isfinite(vals)))
    breakdown: dict[str, Any] = {}
    for key in keys:
        groups: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            if r.get(key) not in (None, ""):
                groups.setdefault(str(r[key]), []).append(r)
        if not groups:
            continue
        table: dict[str, Any] = {}
        for value in sorted(groups):
            sub = groups[value]
            table[value] = {}
            for name in rewards:
                vals = np.array([_value(r["scores"].get(name)) for r in sub], dtype=np.float64)
                m, s = mean_std(vals)
                table[value][name] = {"mean": m, "std": s, "n": int(np.isfinite(vals).sum())}
        breakdown[key] = table
    return {"metrics": metrics, "breakdown": breakdown}


class RewardsSuite(ImageSuite):
    """Any rewards on any prompt file (text, JSONL or TSV; local or fsspec URL): mean/std overall and per key."""

    name = "rewards"

    @config
    class Config(SuiteOptions):
        #: reward names from the ``rewards`` registry
        rewards: tuple[str, ...] = ()
        #: per-reward options, ``{reward: {option: value}}``
        reward_options: dict[str, dict[str, Any]] = attrs.field(factory=dict)
        #: the prompts (or ``prompt_file``: .txt one a line, .jsonl with ``prompt``, .tsv with a Prompt column)
        prompts: tuple[str, ...] = ()
        prompt_file: str | None = None
        #: metadata keys to break the means down by (those the prompt records have)
        breakdown: tuple[str, ...] = ("category",)
        #: images scored at once
        score_batch_size: int = 32

    def __init__(self, config: Any = None):
        super().__init__(config)
        self._records: list[dict[str, Any]] | None = None
        self._rewards: dict[str, Any] | None = None

    def reward_names(self) -> list[str]:
        if not self.config.rewards:
            raise ConfigError(f"Suite {self.name!r} needs rewards: --set rewards='[\"aesthetic\", \"pick\"]' "
                              "(see `miro plugins --kind rewards`).")
        return list(self.config.rewards)

    def prompt_records(self) -> list[dict[str, Any]]:
        if self._records is None:
            c = self.config
            if c.prompts and c.prompt_file:
                raise ConfigError(f"Suite {self.name!r}: give `prompts` or `prompt_file`, not both.")
            if c.prompts:
                self._records = [{"prompt": p} for p in c.prompts]
            elif c.prompt_file:
                self._records = read_prompt_file(c.prompt_file)
            else:
                raise ConfigError(f"Suite {self.name!r} has no prompts: --set prompt_file=PATH_OR_URL "
                                  "(or prompts=[...]).")
        return self._records

    def rewards(self) -> dict[str, Any]:
        if self._rewards is None:
            names = self.reward_names()
            from miro_core import registry

            for n in names:
                registry("rewards").get(n)  # unknown names fail before any work
            self._rewards = load_rewards(names, self.config.reward_options, self.device)
        return self._rewards

    def scorer_config(self) -> Any:
        return {"rewards": list(self.config.rewards), "reward_options": self.config.reward_options}

    def attach_metadata(self, records: list[ImageRecord]) -> list[ImageRecord]:
        """``--images``: metadata the folder lacks (category...) comes from the prompt file, matched by prompt."""
        missing = [k for k in self.config.breakdown if not all(k in r.metadata for r in records)]
        if not missing or not (self.config.prompt_file or self.config.prompts):
            return records
        by_prompt: dict[str, dict[str, Any]] = {}
        for rec in self.prompt_records():
            by_prompt.setdefault(rec["prompt"].strip(), rec)
        out, unmatched = [], 0
        for r in records:
            ref = by_prompt.get(r.prompt.strip())
            if ref is None:
                unmatched += 1
                out.append(r)
            else:
                out.append(attrs.evolve(r, metadata={**ref, **dict(r.metadata)}))
        if unmatched:
            log.warning("%s: %d of %d images have prompts that are not in the prompt file (no %s for them)",
                        self.name, unmatched, len(records), "/".join(missing))
        return out

    def score(self, records, root, cache, progress):
        self.reward_names()
        return score_records(self._rewards, self.rewards, records, root, cache, progress,
                             batch_size=self.config.score_batch_size, keys=self.config.breakdown)

    def summarize(self, rows):
        return reward_summary(rows, self.reward_names(), self.config.breakdown)

    def headline_metrics(self, result):
        return [f"{r}/mean" for r in self.reward_names()]

    def report_body(self, report, result, out):
        names = self.reward_names()
        m = result["metrics"]
        report.table(["reward", "mean", "std", "failed"],
                     [[n, m.get(f"{n}/mean"), m.get(f"{n}/std"), m.get(f"{n}/failed")] for n in names])
        for key, table in result.get("breakdown", {}).items():
            report.heading(f"By {key}", 3)
            report.table([key, "n", *names], [[v, max(t[n]["n"] for n in names), *[t[n]["mean"] for n in names]]
                                              for v, t in table.items()])


@hookimpl
def miro_register_suites(register):
    register(RewardsSuite)
