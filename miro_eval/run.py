"""``miro-run``: the end-to-end main job.

data -> score every reward into a reward table store -> bin -> train MIRO (all rewards) and, by default,
the unconditioned baseline with the same steps and seed -> sample with multi-reward guidance -> evaluate
(rewards + the compositional evaluator) -> ``report.md`` + ``metrics.json`` in ``--out``.

With no arguments it runs on the built-in procedural world (no downloads, CPU, minutes). Every phase writes
its result into the out folder and a re-run into the same ``--out`` reuses finished phases: scoring resumes
row-exactly (the store records what was scored), finished training runs are reused, evaluations are cached.
"""

from __future__ import annotations

__all__ = ["main", "build_parser", "resolve_config", "validate_config", "parse_reward_list", "MiroRun"]

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from miro_core import structure, unstructure

from ._run_config import PRESETS, RunConfig, _deep_merge, parse_reward_list, resolve_config, validate_config
from .suites._experiment import RunContext, cache_hash, eval_key
from .suites.convergence import curve_eval_fn, curve_key

log = logging.getLogger("miro_eval.run")


# ---------------------------------------------------------------------------------------------------
# Command line and config resolution
# ---------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="miro-run",
        description="MIRO end to end: data -> score -> bin -> train MIRO (+ baseline) -> sample -> evaluate -> report. "
        "With no arguments: the built-in procedural world, on CPU, no downloads.",
    )
    p.add_argument("--preset", help=f"size preset: {', '.join(PRESETS)} (default: default)")
    p.add_argument("--config", metavar="FILE.toml", help="TOML file with RunConfig fields (tables mirror the config)")
    p.add_argument("--rewards", help="comma-separated reward names to score and condition on (default: the world rewards)")
    p.add_argument("--binner", help="binner name (quantile, uniform, refined_quantile, ...)")
    p.add_argument("--bins", type=int, help="number of bins per reward")
    p.add_argument("--backbone", help="backbone name (rin, dit, ...)")
    p.add_argument("--data", help="data spec: 'world[:key=value,...]', an image folder, webdataset shards, a JSONL manifest")
    p.add_argument("--out", help="output folder (default: ./miro-out/<run name or timestamp>); re-running into it resumes")
    p.add_argument("--name", help="run name (used for the default --out)")
    p.add_argument("--steps", type=int, help="training steps per model")
    p.add_argument("--batch-size", type=int, help="training batch size")
    p.add_argument("--seed", type=int, help="seed of data order, initialisation and sampling")
    p.add_argument("--device", help="cpu, cuda, cuda:1, auto")
    p.add_argument("--no-baseline", action="store_true", help="do not train the unconditioned baseline")
    p.add_argument("--reward-option", action="append", default=[], metavar="REWARD.KEY=VALUE",
                   help="option of one reward (repeatable), as in `miro score`; the same as "
                        "--set reward_options.REWARD.KEY=VALUE")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config field by dotted path, e.g. --set eval.num_steps=30 --set train.optim.lr=3e-4")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-v info, -vv debug)")
    return p


# ---------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------
class MiroRun(RunContext):
    """Runs every phase into ``out``; each phase reuses its finished result on a re-run. The evaluation side
    (prompts, rewards, ``measure``, the cache) is :class:`~miro_eval.suites._experiment.RunContext`'s; the
    experiments are suites (:data:`miro_eval._experiments.EXPERIMENTS`)."""

    def __init__(self, cfg: RunConfig, out: str | Path, *, progress: bool = True):
        super().__init__(cfg, out, progress=progress)

    # -- phases ----------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        self.out.mkdir(parents=True, exist_ok=True)
        from .report import write_json

        write_json(self.out / "config.json", unstructure(self.cfg))
        t_start = time.perf_counter()
        self._timed("score", self.score)
        self._timed("bin", self.bin)
        models = self.model_plan()
        histories: dict[str, list[dict[str, Any]]] = {}
        for name, rewards in models.items():
            histories[name] = self._timed("train", self.train_model, name, rewards)
        self.metrics["models"] = {}
        for name in models:
            self.metrics["models"][name] = self._timed("evaluate", self.evaluate_model, name)
        self._timed("samples", self.sample_grids, list(models))
        self._timed("experiments", self.experiments, models, histories)
        self.timings["total"] = time.perf_counter() - t_start
        return self._timed("report", self.report, models)

    # scoring ----------------------------------------------------------------------------------------
    def score(self) -> None:
        from miro_core.data import resolve_data
        from miro_core.scoring import score_dataset

        spec = self.data_spec()
        source = resolve_data(spec)
        rewards = list(dict.fromkeys([*self.cfg.rewards]))
        if not rewards:
            return
        result = score_dataset(
            source,
            {r: dict(self.cfg.reward_options.get(r, {})) for r in rewards},
            self.store_url,
            batch_size=self.cfg.score_batch_size,
            device=self.device,
            progress=self.progress.enabled,
            data_spec=spec,
        )
        self.metrics["scoring"] = result if isinstance(result, dict) else {}

    def bin(self) -> None:
        from miro_core.store import RewardStore

        if not self.cfg.rewards:
            return
        store = RewardStore.open(self.store_url, "a")
        have = store.binnings().get(self.cfg.binner, [])
        stale = store.stale_bins(self.cfg.binner, list(self.cfg.rewards))  # rows added or rescored since binning
        todo = []
        for r in self.cfg.rewards:
            if r not in have or r in stale \
                    or int(store.bin_attrs(self.cfg.binner, r).get("num_bins", -1)) != self.cfg.bins \
                    or int(store.bin_attrs(self.cfg.binner, r).get("seed", -1)) != self.cfg.seed:
                todo.append(r)
        if stale:
            log.info("rebinning %s: %s", ", ".join(stale), "; ".join(stale.values()))
        if todo:
            store.bin(self.cfg.binner, {"num_bins": self.cfg.bins}, rewards=todo, seed=self.cfg.seed)

    # training ---------------------------------------------------------------------------------------
    def model_plan(self) -> dict[str, tuple[str, ...]]:
        """Model name -> rewards it is conditioned on (``()`` = unconditioned baseline)."""
        rewards = tuple(self.cfg.rewards)
        plan: dict[str, tuple[str, ...]] = {}
        if rewards:
            plan["miro"] = rewards
        if self.cfg.baseline:
            plan["baseline"] = ()
        ex = self.cfg.experiments
        if ex.single_reward and len(rewards) > 1:
            for r in rewards:
                plan[f"only_{r}"] = (r,)
        if ex.leave_one_out and len(rewards) > 1:
            for r in rewards:
                plan[f"without_{r}"] = tuple(x for x in rewards if x != r)
        return plan

    def train_config(self, name: str, rewards: tuple[str, ...]):
        from miro_core.training import TrainConfig

        c = self.cfg
        data = {
            "model": {
                "backbone": {"name": c.backbone, "options": dict(c.backbone_options)},
                "text_encoder": {"name": c.text_encoder, "options": dict(c.text_encoder_options)},
                "autoencoder": {"name": c.autoencoder, "options": dict(c.autoencoder_options)},
            },
            "data": {
                "spec": self.data_spec(),
                "store": self.store_url if rewards else "",
                "binner": c.binner,
                "rewards": list(rewards) if rewards else ["none"],
                "image_size": c.image_size,
                "cache_dir": str((self.out / "cache").resolve()),
            },
            "optim": {"lr": c.lr},
            "steps": c.steps,
            "batch_size": c.batch_size,
            "seed": c.seed,
            "device": c.device,
            "eval_every": c.eval.eval_every,
        }
        data = _deep_merge(data, json.loads(json.dumps(c.train)))
        return structure(data, TrainConfig, path=f"train[{name}]")

    def train_model(self, name: str, rewards: tuple[str, ...]) -> list[dict[str, Any]]:
        """Train (or reuse, or resume) one model; returns its evaluation curve rows ``{"step", metric: value}``.

        ``models/<name>/key.txt`` holds a hash of the training + curve-evaluation config: a finished run with
        the same key is reused, an interrupted one resumes from its latest checkpoint, a different key starts
        over. Curve rows are appended to ``curve.jsonl`` as they are measured, so they survive a resume.
        """
        import shutil

        from miro_core.training import train

        from .report import read_json, to_jsonable, write_json

        tc = self.train_config(name, rewards)
        train_key = unstructure(tc)
        train_key.pop("parallel", None)  # how the ranks share the work (DDP / FSDP), not what is trained
        key = cache_hash({"train": train_key, "eval": curve_key(self)})
        mdir = self.out / "models" / name
        key_file, done, curve_file = mdir / "key.txt", mdir / "result.json", mdir / "curve.jsonl"
        if mdir.exists() and (not key_file.exists() or key_file.read_text().strip() != key):
            if key_file.exists() or done.exists():
                log.warning("model %s: its config changed since the earlier run in %s; training again", name, mdir)
            shutil.rmtree(mdir)
        if done.exists() and Path(read_json(done).get("checkpoint_dir", "")).exists():
            log.info("model %s: reusing finished training", name)
            return self._read_curve(curve_file)
        mdir.mkdir(parents=True, exist_ok=True)
        key_file.write_text(key)
        if self.progress.enabled:
            print(f"[miro-run] training {name} ({', '.join(rewards) or 'no reward conditioning'}), {tc.steps} steps",
                  file=sys.stderr)
        eval_fn = None
        if tc.eval_every > 0:
            inner = curve_eval_fn(self)

            def eval_fn(pipeline: Any, step: int) -> dict[str, float]:
                metrics = inner(pipeline, step)
                with curve_file.open("a") as f:
                    f.write(json.dumps(to_jsonable({"step": int(step), **metrics})) + "\n")
                return metrics

        resume = (mdir / "checkpoints").exists()
        result = train(tc, mdir, eval_fn=eval_fn, progress=self.progress.enabled, resume=resume)
        write_json(done, {"key": key, "checkpoint_dir": str(Path(result.checkpoint_dir).resolve()), "step": int(result.step),
                          "rewards": list(rewards), "history": [dict(h) for h in (result.history or [])]})
        return self._read_curve(curve_file)

    @staticmethod
    def _read_curve(path: Path) -> list[dict[str, Any]]:
        if not path.exists():
            return []
        rows: dict[int, dict[str, Any]] = {}
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                rows[int(row["step"])] = row  # a step re-measured after a resume keeps its last value
        return [rows[k] for k in sorted(rows)]

    def checkpoint(self, name: str) -> str:
        from .report import read_json

        return read_json(self.out / "models" / name / "result.json")["checkpoint_dir"]

    def checkpoint_id(self, name: str) -> str:
        """Identifies a trained model in cache keys: its checkpoint path and training-config hash."""
        key_file = self.out / "models" / name / "key.txt"
        return f"{self.checkpoint(name)}#{key_file.read_text().strip() if key_file.exists() else ''}"

    # sample grids ------------------------------------------------------------------------------------
    def sample_grids(self, models: Sequence[str]) -> None:
        from ._common import generate_batched
        from .plots import save_grid

        e = self.cfg.eval
        prompts = self.prompts("eval", e.num_prompts)[: e.grid_prompts]
        (self.out / "samples").mkdir(parents=True, exist_ok=True)
        (self.out / "samples" / "prompts.txt").write_text("\n".join(prompts) + "\n")
        for name in models:
            path = self.out / "samples" / f"{name}.png"
            stamp = self.out / "samples" / f"{name}.key"
            key = cache_hash({"ckpt": self.checkpoint_id(name), "eval": eval_key(e)})
            if path.exists() and stamp.exists() and stamp.read_text() == key:
                continue
            pipe = self.pipeline(name)
            imgs = generate_batched(pipe, prompts, batch_size=e.batch_size, seed=e.seed, **self.sampling_kwargs(pipe))
            save_grid(imgs, path, nrow=min(8, len(prompts)))
            stamp.write_text(key)

    # experiments ------------------------------------------------------------------------------------
    def experiments(self, models: dict[str, tuple[str, ...]], histories: dict[str, list[dict[str, Any]]]) -> None:
        from . import _experiments as X

        X.run_experiments(self, models, histories)

    # report -----------------------------------------------------------------------------------------
    def report(self, models: dict[str, tuple[str, ...]]) -> dict[str, Any]:
        from . import _report_writer

        return _report_writer.write_report(self, models)


# ---------------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------------
def _default_out(cfg: RunConfig) -> Path:
    name = cfg.name or time.strftime("%Y%m%d-%H%M%S")
    return Path("miro-out") / name


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    cfg = resolve_config(args)
    out = Path(args.out) if args.out else _default_out(cfg)
    progress = not args.no_progress
    if not progress:
        import os

        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        try:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        except ImportError:  # transformers is optional for custom text encoders
            pass
    if progress:
        print(f"[miro-run] preset {cfg.preset}, rewards {', '.join(cfg.rewards) or '(none)'}, out {out}", file=sys.stderr)
    result = MiroRun(cfg, out, progress=progress).run()
    print(f"report: {(out / 'report.md').resolve()}")
    summary = result.get("headline")
    if summary:
        print(summary)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from miro_core.cli import run_cli

    argv = list(sys.argv[1:] if argv is None else argv)
    return run_cli(lambda: _main(argv), "--debug" in argv)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
