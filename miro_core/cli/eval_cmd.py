"""``miro eval``: run a registered evaluation suite (or a suite TOML file) on a model or on a folder of images.

``miro eval --suite NAME (--pretrained DIR | --checkpoint DIR | --images DIR) [--out DIR] [--set key=value ...]``.
Suites come from the ``suites`` registry (``miro plugins --kind suites``); ``--suite FILE.toml`` configures one
of them from a file (``suite = "rewards"`` + an ``[options]`` table). Re-running the same command into the same
``--out`` resumes: images and scores already written are kept.
"""

from __future__ import annotations

__all__ = ["EvalCommand", "resolve_suite", "suite_from_toml"]

import copy
import json
import sys
from pathlib import Path
from typing import Any

import attrs

from .. import hookimpl
from ._model_args import add_model_source
from .._errors import ConfigError
from ..interfaces import Command

_TOML_KEYS = ("suite", "name", "description", "options")


def _resolve_paths(options: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Relative ``*_file`` / ``*_path`` / ``*_dir`` strings of a suite file are relative to the file's folder."""
    out: dict[str, Any] = {}
    for k, v in options.items():
        if isinstance(v, dict):
            out[k] = _resolve_paths(v, folder)
        elif (isinstance(v, str) and k.endswith(("_file", "_path", "_dir")) and "://" not in v
              and not Path(v).is_absolute() and (folder / v).exists()):
            out[k] = str((folder / v).resolve())
        else:
            out[k] = v
    return out


def suite_from_toml(path: str | Path) -> type:
    """A suite class defined by a TOML file: a registered suite with new default options.

    The file: ``suite = "<registered suite>"``, optional ``name`` (default: the file's stem) and ``description``,
    and an ``[options]`` table of that suite's options (relative ``*_file`` paths are relative to the file). A
    plugin can register the class (``register(suite_from_toml(path))``); ``miro eval --suite FILE.toml`` runs it.
    """
    from .._config import load_toml, structure, unstructure
    from .._errors import did_you_mean
    from .._plugins import registry

    path = Path(path)
    data = load_toml(path)
    extra = sorted(set(data) - set(_TOML_KEYS))
    if extra:
        raise ConfigError(f"Suite file {path}: unknown key(s) {', '.join(extra)}{did_you_mean(extra[0], _TOML_KEYS)} "
                          f"Known keys: {', '.join(_TOML_KEYS)} (suite options go in the [options] table).")
    base_name = data.get("suite")
    if not isinstance(base_name, str) or not base_name:
        raise ConfigError(f"Suite file {path} needs `suite = \"<name>\"`: the registered suite it configures "
                          f"(available: {', '.join(registry('suites').names())}).")
    base = registry("suites").get(base_name).cls
    options = _resolve_paths(dict(data.get("options") or {}), path.parent.resolve())
    merged = {**unstructure(base.Config()), **options}
    typed = structure(merged, base.Config, path=f"{path} [options]")
    attrs.resolve_types(base.Config)
    fields = {f.name: f for f in attrs.fields(base.Config)}
    new_fields = {}
    for key in options:
        value = getattr(typed, key)
        default = (attrs.Factory(lambda v=value: copy.deepcopy(v)) if isinstance(value, (dict, list)) else value)
        new_fields[key] = attrs.field(default=default, type=fields[key].type)
    config_cls = attrs.make_class(base.Config.__name__, new_fields, bases=(base.Config,), frozen=True, kw_only=True,
                                  slots=True)
    name = str(data.get("name") or path.stem)
    doc = str(data.get("description") or f"{base.name} suite configured by {path.name}")
    return type(f"TomlSuite_{name}", (base,), {"name": name, "Config": config_cls, "__doc__": doc,
                                               "__module__": base.__module__, "suite_file": str(path.resolve())})


def resolve_suite(spec: str, overrides: list[str] | None = None) -> Any:
    """A suite instance from a registered name or a suite TOML file, with ``key=value`` overrides applied."""
    from .._config import apply_overrides, structure, unstructure
    from .._plugins import registry

    reg = registry("suites")
    if spec.endswith(".toml"):
        if not Path(spec).is_file():
            raise ConfigError(f"Suite file {spec} does not exist.")
        cls = suite_from_toml(spec)
        path = f"suite {spec}"
    else:
        cls = reg.get(spec).cls
        path = f"suites.{spec}"
    base = unstructure(cls.Config())
    data = apply_overrides(base, list(overrides or []))
    return cls(structure(data, cls.Config, path=path))


def _progress(enabled: bool):
    if not enabled:
        return None

    def bar(total: int, desc: str):
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, file=sys.stderr, dynamic_ncols=True, leave=True)

    return bar


class EvalCommand(Command):
    name = "eval"
    help = "run an evaluation suite (geneval, partiprompts, rewards, best_of_n, world, ...) on a model or images"

    def add_arguments(self, parser):
        parser.add_argument("--suite", required=True,
                            help="registered suite name (`miro plugins --kind suites`) or a suite .toml file")
        src = add_model_source(parser, required=False)
        src.add_argument("--images", help="score a folder of images any model produced: GenEval's layout "
                                          "(<index>/metadata.jsonl + <index>/samples/<k>.png) or images with prompts")
        parser.add_argument("--out", help="output folder (default: miro-eval/<suite>/<source name>); re-running "
                                          "into it resumes")
        parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                            help="override a suite option by dotted path (e.g. --set sampling.num_steps=30 "
                                 "--set images_per_prompt=4); values are TOML")
        parser.add_argument("--device", default="auto", help="device of the model: auto (CUDA when present), cpu, cuda")
        parser.add_argument("--no-ema", action="store_true", help="with --checkpoint: the raw weights, not the EMA")
        parser.add_argument("--print-config", action="store_true", help="print the resolved suite options and exit")
        parser.add_argument("--no-progress", action="store_true", help="no progress bars")

    def run(self, args):
        from .._config import unstructure

        suite = resolve_suite(args.suite, args.set)
        if args.print_config:
            json.dump({"suite": suite.name, "options": unstructure(suite.config)}, sys.stdout, indent=2)
            sys.stdout.write("\n")
            return 0
        source = args.pretrained or args.checkpoint or args.images
        if source is None:
            raise ConfigError("Give what to evaluate: --pretrained DIR, --checkpoint DIR or --images DIR.")
        if args.checkpoint and (args.text_encoder or args.vae):
            raise ConfigError("--text-encoder / --vae go with --pretrained; a checkpoint uses its own.")
        out = Path(args.out) if args.out else Path("miro-eval") / suite.name / (Path(source).resolve().name or "source")
        pipeline = None
        if not args.images:
            from ..sampling import load_pipeline

            pipeline = load_pipeline(checkpoint=args.checkpoint, pretrained=args.pretrained,
                                     text_encoder=args.text_encoder, vae=args.vae, device=args.device,
                                     use_ema=not args.no_ema)
        result = suite.run(out, pipeline=pipeline, images=args.images, progress=_progress(not args.no_progress))
        metrics = result.get("metrics", {})
        shown = list(metrics.items())[:12]
        for k, v in shown:
            print(f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}")
        if len(metrics) > len(shown):
            print(f"... {len(metrics) - len(shown)} more in metrics.json")
        print(f"report: {(out / 'report.md').resolve()}")
        return 0


@hookimpl
def miro_register_commands(register):
    register(EvalCommand)
