"""``miro-run``: the end-to-end main job.

data -> score every reward into a reward table store -> bin -> train MIRO (all rewards) and, by default,
the unconditioned baseline with the same steps and seed -> sample with multi-reward guidance -> evaluate
(rewards + the compositional evaluator) -> ``report.md`` + ``metrics.json`` in ``--out``.

With no arguments it runs on the built-in procedural world (no downloads, CPU, minutes). Every phase writes
its result into the out folder and a re-run into the same ``--out`` reuses finished phases: scoring resumes
row-exactly (the store records what was scored), finished training runs are reused, evaluations are cached.
"""

from __future__ import annotations

__all__ = ["main", "build_parser", "resolve_config", "MiroRun"]

import argparse
import hashlib
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from miro_core import ConfigError, MiroError, apply_overrides, load_toml, structure, unstructure

from ._run_config import PRESETS, SMALL_BACKBONES, RunConfig

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


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def parse_reward_list(text: str) -> tuple[str, ...]:
    """``"a,b,c"`` -> ``("a", "b", "c")``, ``"none"`` -> ``()``: the shared rules of ``miro score`` / ``miro
    train`` (:func:`miro_core._reward_list.parse_reward_list`)."""
    from miro_core._reward_list import parse_reward_list as _parse

    return _parse(text, allow_none=True)


def resolve_config(args: argparse.Namespace) -> RunConfig:
    """preset < --config TOML < flags < --set; validated against the registries."""
    file_data: dict[str, Any] = load_toml(args.config) if args.config else {}
    preset = args.preset or file_data.get("preset") or "default"
    if preset not in PRESETS:
        from miro_core._errors import did_you_mean

        raise ConfigError(f"Unknown preset {preset!r}.{did_you_mean(preset, PRESETS)} Presets: {', '.join(PRESETS)}.")
    data = _deep_merge(PRESETS[preset], file_data)
    data["preset"] = preset
    flags: dict[str, Any] = {}
    if args.rewards is not None:
        flags["rewards"] = list(parse_reward_list(args.rewards))
    for key, attr in (("binner", "binner"), ("bins", "bins"), ("backbone", "backbone"), ("data", "data"),
                      ("steps", "steps"), ("batch_size", "batch_size"), ("seed", "seed"), ("device", "device"),
                      ("name", "name")):
        value = getattr(args, attr)
        if value is not None:
            flags[key] = value
    if args.no_baseline:
        flags["baseline"] = False
    data = _deep_merge(data, flags)
    if args.set:
        data = apply_overrides(data, list(args.set))
    if getattr(args, "reward_option", None):
        from miro_core.cli.score_cmd import parse_reward_options

        known = list(dict.fromkeys([*data.get("rewards", RunConfig().rewards), *data.get("eval_rewards", ())]))
        for name, opts in parse_reward_options(known, list(args.reward_option)).items():
            if opts:
                data["reward_options"] = _deep_merge(data.get("reward_options", {}), {name: opts})
    if "backbone_options" not in file_data and not any(s.startswith("backbone_options") for s in args.set):
        # presets use a small model of the chosen backbone (see SMALL_BACKBONES); its defaults otherwise
        data["backbone_options"] = dict(SMALL_BACKBONES.get(str(data.get("backbone", "unet")), {}))
    if args.rewards is not None:  # preset experiment settings naming other rewards follow --rewards
        ex = data.get("experiments", {})
        user_ex = set(file_data.get("experiments", {})) | {s.split("=", 1)[0].split(".", 1)[-1] for s in args.set
                                                            if s.startswith("experiments.")}
        chosen = set(flags["rewards"])
        if "controllability_rewards" in ex and "controllability_rewards" not in user_ex:
            ex["controllability_rewards"] = [r for r in ex["controllability_rewards"] if r in chosen]
        if ex.get("tts_selection") and "tts_selection" not in user_ex and ex["tts_selection"] not in chosen:
            ex["tts_selection"] = ""
    cfg = structure(data, RunConfig, path="run")
    validate_config(cfg)
    return cfg


def validate_config(cfg: RunConfig) -> None:
    """Check names against the registries before any work starts (one-paragraph errors)."""
    from miro_core import registry

    for name in (*cfg.rewards, *cfg.eval_rewards):
        registry("rewards").get(name)
    registry("binners").get(cfg.binner)
    registry("backbones").get(cfg.backbone)
    registry("text_encoders").get(cfg.text_encoder)
    registry("autoencoders").get(cfg.autoencoder)
    if cfg.bins < 2:
        raise ConfigError(f"--bins {cfg.bins}: need at least 2 bins per reward.")
    if cfg.steps < 1:
        raise ConfigError(f"--steps {cfg.steps}: train for at least 1 step.")
    if not cfg.rewards and not cfg.baseline:
        raise ConfigError("No rewards and no baseline: nothing to train. Give --rewards or drop --no-baseline.")
    for r in cfg.experiments.controllability_rewards:
        if r not in cfg.rewards:
            raise ConfigError(f"experiments.controllability_rewards names {r!r}, which is not in --rewards {list(cfg.rewards)}.")
    if cfg.experiments.tts_selection and cfg.experiments.tts_selection not in (*cfg.rewards, *cfg.eval_rewards):
        raise ConfigError(f"experiments.tts_selection {cfg.experiments.tts_selection!r} is not among the rewards.")
    known = sorted({*registry("guidance").names(), "text_cfg"})
    for v in cfg.experiments.guidance_sweep_variants:
        if v not in known:
            raise ConfigError(f"experiments.guidance_sweep_variants names {v!r}, which is not a guidance; known: {', '.join(known)}.")
    for w in cfg.experiments.guidance_sweep_scales:
        if not (w >= 0 and w < float("inf")):
            raise ConfigError(f"experiments.guidance_sweep_scales has {w!r}: guidance scales must be finite and >= 0.")


# ---------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------
def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class _Progress:
    """tqdm when enabled, else a no-op with the same calls."""

    def __init__(self, enabled: bool):
        self.enabled = enabled

    def bar(self, total: int | None, desc: str):
        if self.enabled:
            from tqdm.auto import tqdm

            return tqdm(total=total, desc=desc, file=sys.stderr, dynamic_ncols=True, leave=True)
        return _NullBar()


class _NullBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass

    def set_postfix_str(self, s: str) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


class MiroRun:
    """Runs every phase into ``out``; each phase reuses its finished result on a re-run."""

    def __init__(self, cfg: RunConfig, out: str | Path, *, progress: bool = True):
        self.cfg = cfg
        self.out = Path(out)
        self.progress = _Progress(progress)
        self.timings: dict[str, float] = {}
        self.metrics: dict[str, Any] = {}
        self.store_url = str((self.out / "store.zarr").resolve())
        self._prompts: dict[str, list[str]] = {}
        self._reward_models: dict[str, Any] | None = None
        self._pipes: dict[str, Any] = {}
        self.device = self._resolve_device(cfg.device)

    @staticmethod
    def _resolve_device(device: str) -> str:
        if device == "auto":
            import torch

            return "cuda" if torch.cuda.is_available() else "cpu"
        return device

    # -- helpers ---------------------------------------------------------------------------------------
    def path(self, *parts: str) -> Path:
        p = self.out.joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def _timed(self, phase: str, fn, *a, **kw):
        t0 = time.perf_counter()
        try:
            return fn(*a, **kw)
        finally:
            self.timings[phase] = self.timings.get(phase, 0.0) + time.perf_counter() - t0

    @property
    def is_world(self) -> bool:
        return self.cfg.data.split(":", 1)[0] == "world"

    def data_spec(self, seed_offset: int = 0, num_samples: int | None = None) -> str:
        """The data spec with ``data_options`` merged in (registered sources only; the spec's own options win)."""
        from miro_core import registry
        from miro_core.data import parse_options

        spec = self.cfg.data.strip()
        name, _, opts = spec.partition(":")
        if "://" in spec or name not in registry("data_sources"):
            return spec
        import attrs

        fields = {f.name for f in attrs.fields(registry("data_sources").config_class(name))}
        # preset data_options apply only where the source has such a field; the spec's own options win
        options = {**{k: v for k, v in self.cfg.data_options.items() if k in fields}, **parse_options(opts)}
        if seed_offset:
            options["seed"] = int(options.get("seed", 0)) + seed_offset
        if num_samples is not None:
            options["num_samples"] = num_samples
        if not options:
            return name
        return name + ":" + ",".join(f"{k}={json.dumps(v) if isinstance(v, str) else v}" for k, v in options.items())

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
        key = _hash({"train": unstructure(tc), "eval": self._curve_key()})
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
            inner = self._curve_eval_fn()

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

    def pipeline(self, name: str):
        if name not in self._pipes:
            from miro_core.sampling import MiroPipeline

            self._pipes[name] = MiroPipeline.from_checkpoint(self.checkpoint(name), device=self.device, use_ema=True)
        return self._pipes[name]

    # evaluation -------------------------------------------------------------------------------------
    def sampling_kwargs(self, pipe: Any, num_steps: int | None = None) -> dict[str, Any]:
        e = self.cfg.eval
        kw: dict[str, Any] = {"num_steps": int(num_steps or e.num_steps), "solver": e.solver, "guidance_scale": e.guidance_scale}
        if getattr(pipe, "reward_names", ()):
            kw["guidance"] = e.guidance
        elif e.baseline_text_cfg:
            kw["guidance"] = "multi_reward_cfg"
            kw["drop_text_in_negative"] = True
        else:
            kw["guidance"] = "none"
        return kw

    def prompts(self, kind: str, n: int) -> list[str]:
        """Evaluation prompts: captions of held-out data (world: another seed) or of the scored table."""
        key = f"{kind}:{n}"
        if key not in self._prompts:
            if self.is_world:
                from miro_core.data import resolve_data

                src = resolve_data(self.data_spec(seed_offset=10_007, num_samples=max(n, 1)))
                caps = [s.caption for s in src][:n]
            else:
                import numpy as np

                from miro_core.store import RewardStore

                caps_all = RewardStore.open(self.store_url).captions()
                if caps_all is None:
                    raise MiroError("The data has no captions to use as evaluation prompts.")
                rng = np.random.default_rng(self.cfg.eval.seed)
                idx = rng.permutation(len(caps_all))[:n]
                caps = [str(caps_all[i]) for i in idx]
            self._prompts[key] = caps
        return self._prompts[key]

    @property
    def eval_reward_names(self) -> list[str]:
        return list(dict.fromkeys([*self.cfg.rewards, *self.cfg.eval_rewards]))

    @property
    def reward_models(self) -> dict[str, Any]:
        if self._reward_models is None:
            from ._common import load_rewards

            self._reward_models = load_rewards(self.eval_reward_names, self.cfg.reward_options, self.device)
        return self._reward_models

    def _reward_evaluator(self):
        from .reward_scores import RewardScores

        ev = RewardScores(RewardScores.Config(rewards=tuple(self.eval_reward_names), batch_size=self.cfg.eval.batch_size,
                                              seed=self.cfg.eval.seed, device=self.device))
        ev._rewards = self.reward_models  # share the loaded reward models
        return ev

    def geneval_enabled(self) -> bool:
        from miro_core import registry

        return self.cfg.eval.geneval and self.is_world and self.cfg.eval.geneval_evaluator in registry("evaluators")

    def _geneval(self):
        from miro_core import registry

        return registry("evaluators").create(self.cfg.eval.geneval_evaluator, dict(self.cfg.eval.geneval_options))

    def _curve_key(self) -> dict[str, Any]:
        e = self.cfg.eval
        return {"every": e.eval_every, "n": e.curve_prompts, "steps": e.curve_num_steps, "geneval": e.curve_geneval,
                "rewards": self.eval_reward_names, "scale": e.guidance_scale, "seed": e.seed, "guidance": e.guidance,
                "baseline_text_cfg": e.baseline_text_cfg, "solver": e.solver}

    def _curve_eval_fn(self):
        ev = self._reward_evaluator()
        prompts = self.prompts("curve", self.cfg.eval.curve_prompts)
        geneval = self._geneval() if (self.cfg.eval.curve_geneval and self.geneval_enabled()) else None

        def eval_fn(pipeline: Any, step: int) -> dict[str, float]:
            kw = self.sampling_kwargs(pipeline, self.cfg.eval.curve_num_steps)
            out = {k: v for k, v in ev.evaluate(pipeline, prompts=prompts, seed=self.cfg.eval.seed, **kw).items() if k.endswith("/mean")}
            if geneval is not None:
                out.update({f"geneval/{k}": float(v) for k, v in geneval.evaluate(pipeline, seed=self.cfg.eval.seed, **kw).items()})
            return out

        return eval_fn

    def _cached(self, rel: str, key: Any, fn):
        from .report import read_json, write_json

        path = self.out / rel
        k = _hash(key)
        if path.exists():
            prev = read_json(path)
            if prev.get("key") == k:
                return prev["value"]
        value = fn()
        write_json(path, {"key": k, "value": value})
        from .report import to_jsonable

        return to_jsonable(value)

    def evaluate_model(self, name: str) -> dict[str, float]:
        """Rewards on the evaluation prompts + the compositional evaluator (cached per checkpoint)."""
        e = self.cfg.eval
        key = {"ckpt": self.checkpoint_id(name), "eval": unstructure(e), "rewards": self.eval_reward_names}

        def compute():
            pipe = self.pipeline(name)
            bar = self.progress.bar(2 if self.geneval_enabled() else 1, f"evaluate {name}")
            out = self.measure(pipe, self.sampling_kwargs(pipe), bar=bar)
            bar.close()
            return out

        return self._cached(f"eval/{name}.json", key, compute)

    def measure(self, pipe: Any, sampling_kwargs: dict[str, Any], bar: Any = None) -> dict[str, float]:
        """The main evaluation of one sampler setting: every reward on the evaluation prompts, then the
        compositional evaluator (when enabled); ``bar`` is advanced once per part."""
        e = self.cfg.eval
        out = dict(self._reward_evaluator().evaluate(pipe, prompts=self.prompts("eval", e.num_prompts), seed=e.seed,
                                                     **sampling_kwargs))
        if bar is not None:
            bar.update(1)
        if self.geneval_enabled():
            out.update({f"geneval/{k}": float(v) for k, v in self._geneval().evaluate(pipe, seed=e.seed, **sampling_kwargs).items()})
            if bar is not None:
                bar.update(1)
        return out

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
            key = _hash({"ckpt": self.checkpoint_id(name), "eval": unstructure(e)})
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
