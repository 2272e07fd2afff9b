"""What ``miro-run``'s experiments share, and how each one also runs alone as a suite (``miro eval --suite NAME``).

:class:`RunContext` is the evaluation side of a ``miro-run`` out folder: the settings (a
:class:`~miro_eval._run_config.RunConfig`), the models by name, the evaluation prompts, the loaded rewards, the
main evaluation of a sampler setting (:meth:`RunContext.measure`) and the result cache (``_cached``: a value
stored with a hash of what it depends on). :class:`miro_eval.run.MiroRun` is a ``RunContext`` that also scores,
bins and trains; an :class:`ExperimentSuite` builds one from ``--checkpoint`` / ``--pretrained`` plus the other
models it needs (``--set models.baseline=DIR``) and the settings of a run folder (``run_dir``) or a preset.

An experiment is one class in one file (``miro_eval/suites/<name>.py``):

* ``compute(run, models, histories)`` writes its result into ``run.metrics[key]`` (and its plots): the code
  ``miro-run`` runs after training, unchanged;
* ``wanted(run, models, histories)``: whether ``miro-run`` runs it (its ``experiments.*`` flag and what it needs);
* ``report_section(rep, run, metrics, models)``: its part of ``report.md``.

Alone (``run``), the suite evaluates the models it needs with the main evaluation where the experiment compares
them (cached in ``<out>/eval/<model>.json``), runs ``compute`` and writes ``metrics.json`` (the experiment's result
under its key, as in a ``miro-run`` ``metrics.json``, plus the flat ``metrics``) and ``report.md``.
"""

from __future__ import annotations

__all__ = ["RunContext", "ExperimentSuite", "ExperimentOptions", "run_config", "main_metrics", "cache_hash", "eval_key", "own_targets"]

import hashlib
import json
import logging
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import attrs

from miro_core import ConfigError, MiroError, Suite, config, structure, unstructure

log = logging.getLogger("miro_eval.run")


def cache_hash(obj: Any) -> str:
    """The hash of a cache key (sorted JSON, sha256, 16 hex digits)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def eval_key(e: Any) -> dict[str, Any]:
    """The evaluation config as it enters cache keys: ``unstructure(e)`` without the reward-target fields when they
    are empty, so that results cached before those fields existed stay valid."""
    out = unstructure(e)
    for field in ("positive_targets", "negative_targets"):
        if not out.get(field):
            out.pop(field, None)
    return out


def own_targets(kw: dict[str, Any]) -> dict[str, Any]:
    """Sampling kwargs without ``eval.positive_targets`` / ``negative_targets``, for the experiments that set the
    reward targets themselves (controllability, trade-off)."""
    return {k: v for k, v in kw.items() if k not in ("reward_targets", "negative_reward_targets")}


def main_metrics(run: Any) -> list[str]:
    """The metrics every model is compared on: mean of each reward, then the compositional overall."""
    metrics = [f"{r}/mean" for r in run.eval_reward_names]
    if run.geneval_enabled():
        metrics.append("geneval/overall")
    return metrics


class _Progress:
    """tqdm when enabled (or the bars of ``fn(total, desc)``), else a no-op with the same calls."""

    def __init__(self, enabled: bool, fn: Any = None):
        self.enabled = bool(enabled)
        self.fn = fn

    def bar(self, total: int | None, desc: str):
        if not self.enabled:
            return _NullBar()
        if self.fn is not None:
            return self.fn(total, desc)
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, file=sys.stderr, dynamic_ncols=True, leave=True)


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


class RunContext:
    """The evaluation side of a ``miro-run``: settings, models by name, prompts, rewards, measure, cache.

    ``models`` maps a model name to a checkpoint directory or to a loaded pipeline (any ``generate`` callable);
    :class:`miro_eval.run.MiroRun` finds its models in ``<out>/models/<name>`` instead."""

    def __init__(self, cfg: Any, out: str | Path, *, progress: bool | Any = True,
                 models: Mapping[str, Any] | None = None, store_url: str | None = None):
        self.cfg = cfg
        self.out = Path(out)
        self.progress = progress if isinstance(progress, _Progress) else _Progress(progress)
        self.timings: dict[str, float] = {}
        self.metrics: dict[str, Any] = {}
        self.store_url = store_url or str((self.out / "store.zarr").resolve())
        self._prompts: dict[str, list[str]] = {}
        self._reward_models: dict[str, Any] | None = None
        self._pipes: dict[str, Any] = {}
        self._model_dirs: dict[str, str] = {}
        for name, m in (models or {}).items():
            if isinstance(m, (str, Path)):
                self._model_dirs[name] = str(m)
            else:
                self._pipes[name] = m
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

    # -- models ----------------------------------------------------------------------------------------
    def checkpoint(self, name: str) -> str:
        if name in self._model_dirs:
            return self._model_dirs[name]
        if name in self._pipes:
            from ._generation import source_id

            return json.dumps(source_id(self._pipes[name]), sort_keys=True)
        raise MiroError(f"No model {name!r} here; known: {', '.join([*self._model_dirs, *self._pipes]) or 'none'}.")

    def checkpoint_id(self, name: str) -> str:
        """Identifies a model in cache keys."""
        return f"{self.checkpoint(name)}#"

    def pipeline(self, name: str):
        if name not in self._pipes:
            from miro_core.sampling import MiroPipeline

            self._pipes[name] = MiroPipeline.from_checkpoint(self.checkpoint(name), device=self.device, use_ema=True)
        return self._pipes[name]

    # -- evaluation ------------------------------------------------------------------------------------
    def sampling_kwargs(self, pipe: Any, num_steps: int | None = None) -> dict[str, Any]:
        e = self.cfg.eval
        kw: dict[str, Any] = {"num_steps": int(num_steps or e.num_steps), "solver": e.solver, "guidance_scale": e.guidance_scale}
        names = tuple(getattr(pipe, "reward_names", ()))
        if names:
            kw["guidance"] = e.guidance
            for field, arg in (("positive_targets", "reward_targets"), ("negative_targets", "negative_reward_targets")):
                targets = {r: float(v) for r, v in getattr(e, field).items() if r in names}
                if targets:
                    kw[arg] = targets
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
            from .._common import load_rewards

            self._reward_models = load_rewards(self.eval_reward_names, self.cfg.reward_options, self.device)
        return self._reward_models

    def _reward_evaluator(self):
        from ..reward_scores import RewardScores

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

    def _cached(self, rel: str, key: Any, fn):
        from ..report import read_json, to_jsonable, write_json

        path = self.out / rel
        k = cache_hash(key)
        if path.exists():
            prev = read_json(path)
            if prev.get("key") == k:
                return prev["value"]
        value = fn()
        write_json(path, {"key": k, "value": value})
        return to_jsonable(value)

    def evaluate_model(self, name: str) -> dict[str, float]:
        """Rewards on the evaluation prompts + the compositional evaluator (cached per checkpoint)."""
        e = self.cfg.eval
        key = {"ckpt": self.checkpoint_id(name), "eval": eval_key(e), "rewards": self.eval_reward_names}

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


def run_config(run_dir: str | None, preset: str, overrides: dict[str, Any], *, what: str = "suite"):
    """The ``RunConfig`` of a ``miro-run`` out folder, or of a preset, with nested ``overrides`` merged in."""
    from .._run_config import PRESETS, SMALL_BACKBONES, RunConfig, _deep_merge

    if run_dir:
        path = Path(run_dir) / "config.json"
        if not path.exists():
            raise ConfigError(f"{what}: {path} does not exist; run_dir must be a miro-run --out folder.")
        data = json.loads(path.read_text())
    else:
        if preset not in PRESETS:
            raise ConfigError(f"{what}: unknown preset {preset!r}; presets: {', '.join(PRESETS)}.")
        data = _deep_merge(PRESETS[preset], {"preset": preset})
        data.setdefault("backbone_options", dict(SMALL_BACKBONES.get(str(data.get("backbone", "unet")), {})))
    data = _deep_merge(data, overrides)
    return structure(data, RunConfig, path=f"{what}.run_config")


@config
class ExperimentOptions:
    """Options of every experiment suite: where its settings come from and the models it evaluates."""

    #: a miro-run --out folder: its config.json gives the settings, its store.zarr the prompts of non-world data
    run_dir: str | None = None
    #: the preset whose settings are used without ``run_dir``
    preset: str = "default"
    #: nested RunConfig overrides, e.g. ``{"experiments": {"tts_max_log2": 3}}`` (``--set overrides.eval.num_prompts=16``)
    overrides: dict[str, Any] = attrs.field(factory=dict)
    #: the name of the --checkpoint / --pretrained model ("": ``miro`` when it is reward-conditioned, else ``baseline``)
    model_name: str = ""
    #: the other models, name -> checkpoint dir (``baseline``, ``only_<reward>``, ``without_<reward>``; a
    #: ``miro train`` / miro-run ``models/<name>`` folder loads its latest checkpoint)
    models: dict[str, str] = attrs.field(factory=dict)


class ExperimentSuite(Suite):
    """A ``miro-run`` experiment; run alone by ``miro eval --suite NAME --checkpoint DIR [--set models.X=DIR]``."""

    accepts_images = False
    Config = ExperimentOptions
    #: the key of ``metrics.json`` the experiment writes (``run.metrics[key]``)
    key: ClassVar[str] = ""
    #: models the experiment needs besides the --checkpoint one: names, or prefixes ending in ``_``
    needs: ClassVar[tuple[str, ...]] = ()
    #: run the main evaluation of every model first (``run.metrics["models"]``), as ``miro-run`` does
    needs_main_eval: ClassVar[bool] = False
    #: report title of the section
    title: ClassVar[str] = ""

    # -- what an experiment defines -------------------------------------------------------------------
    @classmethod
    def wanted(cls, run: Any, models: dict[str, tuple[str, ...]], histories: dict[str, list[dict[str, Any]]]) -> bool:
        raise NotImplementedError

    @classmethod
    def compute(cls, run: Any, models: dict[str, tuple[str, ...]], histories: dict[str, list[dict[str, Any]]]) -> None:
        raise NotImplementedError

    @classmethod
    def report_section(cls, rep: Any, run: Any, metrics: dict[str, Any], models: dict[str, tuple[str, ...]]) -> None:
        raise NotImplementedError

    @classmethod
    def flat_metrics(cls, result: Any) -> dict[str, Any]:
        """Scalar metrics of the result (the ``metrics`` of the suite's metrics.json)."""
        return {}

    # -- alone ------------------------------------------------------------------------------------------
    def _models(self, pipeline: Any) -> tuple[dict[str, Any], dict[str, tuple[str, ...]]]:
        """name -> checkpoint dir / pipeline, and name -> the rewards it is conditioned on."""
        from miro_core.sampling import load_pipeline

        c = self.config
        main = c.model_name or ("miro" if getattr(pipeline, "reward_names", ()) else "baseline")
        if main in c.models:
            raise ConfigError(f"{self.name}: models.{main} is the --checkpoint / --pretrained model already.")
        pipes = {main: pipeline}
        for name, path in c.models.items():
            if not Path(path).exists():
                raise ConfigError(f"{self.name}: models.{name} = {path!r} does not exist.")
            # a miro train / miro-run models/<name> folder or a checkpoint dir, as --checkpoint takes it
            pipes[name] = load_pipeline(checkpoint=path, device=self._device, use_ema=True)
        plan = {name: tuple(getattr(p, "reward_names", ()) or ()) for name, p in pipes.items()}
        for need in self.needs:
            have = [n for n in plan if (n.startswith(need) if need.endswith("_") else n == need)]
            if not have:
                raise ConfigError(f"The {self.name} suite needs the model {need}{'<reward>' if need.endswith('_') else ''}: "
                                  f"--checkpoint it or --set models.{need}{'<reward>' if need.endswith('_') else ''}=DIR "
                                  f"(have: {', '.join(plan)}).")
        return pipes, plan

    def run(self, out: Any, *, pipeline: Any = None, images: Any = None, progress: Any = None) -> dict[str, Any]:
        from ..report import Report, write_json
        from ._base import suite_source

        if images is not None or pipeline is None:
            raise ConfigError(f"The {self.name} suite generates with models: give --checkpoint or --pretrained "
                              "(and --set models.<name>=DIR for the others it compares).")
        c = self.config
        cfg = run_config(c.run_dir, c.preset, dict(c.overrides), what=self.name)
        self._device = RunContext._resolve_device(cfg.device)
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        pipes, plan = self._models(pipeline)
        store = str((Path(c.run_dir) / "store.zarr").resolve()) if c.run_dir else None
        ctx = RunContext(cfg, out, progress=_Progress(progress is not None, progress), models=pipes, store_url=store)
        for name, path in c.models.items():
            ctx._model_dirs[name] = str(Path(path).resolve())
        t0 = time.perf_counter()
        if self.needs_main_eval:
            ctx.metrics["models"] = {m: ctx.evaluate_model(m) for m in plan}
        ctx.metrics.setdefault("plots", {})
        self.compute(ctx, plan, {})
        if self.key not in ctx.metrics:
            raise MiroError(f"The {self.name} experiment does not apply to these models ({', '.join(plan)}); see "
                            "docs/evaluation.md for what it needs.")
        result = ctx.metrics[self.key]
        data = {"suite": self.name, "label": out.name, "source": suite_source(pipeline, None),
                "config": unstructure(c), "run_config": unstructure(cfg), "model_rewards": {m: list(r) for m, r in plan.items()},
                "metrics": self.flat_metrics(result), self.key: result,
                **({"models": ctx.metrics["models"]} if "models" in ctx.metrics else {}),
                "plots": ctx.metrics["plots"], "timings": {"total_s": time.perf_counter() - t0}}
        write_json(out / "metrics.json", data)
        rep = Report(f"miro eval: {self.name}", out)
        rep.text(f"miro-run's {self.name} experiment on {', '.join(f'`{m}`' for m in plan)} "
                 f"(settings of {'`' + str(c.run_dir) + '`' if c.run_dir else 'preset ' + c.preset}).")
        self.report_section(rep, ctx, data, plan)
        rep.write(out / "report.md")
        return data
