"""``miro sample``: images from a checkpoint or a pretrained model (ours or an official MIRO release) with
multi-reward guidance; PNGs plus one JSON sidecar each. Unset sampling settings follow the model's defaults."""

from __future__ import annotations

__all__ = ["SampleCommand", "parse_targets"]

import json
import math
from collections.abc import Sequence

from .. import hookimpl
from ._model_args import add_model_source
from .._errors import ConfigError
from ..interfaces import Command


def parse_targets(items: Sequence[str] | None, flag: str) -> dict[str, float]:
    """``["aesthetic=1", "pick=0.5"]`` -> ``{"aesthetic": 1.0, "pick": 0.5}``."""
    out: dict[str, float] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        name = name.strip()
        try:
            if not sep or not name:
                raise ValueError
            out[name] = float(value)
        except ValueError:
            raise ConfigError(f"{flag} {item!r} is not of the form name=value with a number in [0, 1] (e.g. aesthetic=1).") from None
    return out


def _interval(text: str | None) -> tuple[float, float] | None:
    if not text:
        return None
    try:
        a, b = (float(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"--guidance-interval {text!r} must be two numbers 'a,b' with 0 <= a <= b <= 1.") from None
    return a, b


class SampleCommand(Command):
    name = "sample"
    help = "generate images from a checkpoint with multi-reward classifier-free guidance"

    def add_arguments(self, parser):
        add_model_source(parser)
        parser.add_argument("--prompt", action="append", required=True, help="text prompt (repeatable)")
        parser.add_argument("--target", action="append", metavar="NAME=LEVEL",
                            help="positive reward level in [0,1] (default 1.0 for every reward; repeatable)")
        parser.add_argument("--negative", action="append", metavar="NAME=LEVEL",
                            help="negative reward level in [0,1] (default 0.0; repeatable)")
        parser.add_argument("--sampling", choices=("paper", "official"),
                            help="named sampling settings replacing the model's defaults: paper (eq. 3, the negative "
                                 "keeps the caption) or official (empty-text negative); both w = 7, 50 Euler steps")
        parser.add_argument("--guidance", type=float, help="guidance scale w (default: the model's, 7)")
        parser.add_argument("--guidance-strategy", help="registered guidance strategy (default: the model's; "
                                                        "multi_reward_cfg, or the text-dropping one for official models)")
        parser.add_argument("--guidance-interval", metavar="A,B", help="apply guidance only for t in [A, B]")
        parser.add_argument("--drop-text-in-negative", action="store_true", default=None,
                            help="negative branch uses the empty caption")
        parser.add_argument("--steps", type=int, help="ODE steps (default: the model's, 50)")
        parser.add_argument("--solver", help="euler (default) or heun")
        parser.add_argument("--time-shift", type=float, help="time shift s (>1: more steps near noise; default 1)")
        parser.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
        parser.add_argument("--n", type=int, default=1, help="images per prompt (default 1)")
        parser.add_argument("--batch-size", type=int, default=16, help="images sampled at once (default 16)")
        parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
        parser.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA weights")
        parser.add_argument("--out", required=True, help="output directory for PNGs and JSON sidecars")

    def run(self, args):
        from pathlib import Path

        from ..flow import SOLVERS
        from ..sampling import load_pipeline, resolve_targets, save_images

        if args.n < 1 or (args.steps is not None and args.steps < 1) or args.batch_size < 1:
            raise ConfigError("--n, --steps and --batch-size must be >= 1.")
        if args.solver is not None and args.solver not in SOLVERS:
            raise ConfigError(f"Unknown solver {args.solver!r}; available: {', '.join(SOLVERS)}.")
        if args.guidance is not None and not math.isfinite(args.guidance):
            raise ConfigError("--guidance must be a finite number.")
        positive = parse_targets(args.target, "--target")
        negative = parse_targets(args.negative, "--negative")
        interval = _interval(args.guidance_interval)
        pipe = load_pipeline(checkpoint=args.checkpoint, pretrained=args.pretrained, text_encoder=args.text_encoder,
                             vae=args.vae, device=args.device, use_ema=not args.no_ema)
        device = pipe.device
        if args.sampling:
            pipe.use_sampling(args.sampling)
        names = list(pipe.reward_names)
        pos_levels = resolve_targets(names, positive, 1.0, "positive target")
        neg_levels = resolve_targets(names, negative, 0.0, "negative target")
        settings = {
            "guidance_scale": args.guidance, "guidance": args.guidance_strategy, "num_inference_steps": args.steps,
            "solver": args.solver, "time_shift": args.time_shift, "drop_text_in_negative": args.drop_text_in_negative,
        }
        settings = {k: v for k, v in settings.items() if v is not None}
        prompts = list(args.prompt)
        images = pipe(prompts, reward_targets=positive, negative_reward_targets=negative, num_images_per_prompt=args.n,
                      seed=args.seed, guidance_interval=interval, output_type="pt", batch_size=args.batch_size,
                      **settings)
        prompts = [p for p in prompts for _ in range(args.n)]
        out = Path(args.out)
        paths = save_images(images, out, prefix="sample")
        resolved = {**{k: pipe.defaults[k] for k in ("guidance_scale", "guidance", "num_inference_steps", "solver",
                                                     "time_shift", "drop_text_in_negative")}, **settings}
        params = {
            "source": str(args.checkpoint or args.pretrained), "step": pipe.metadata.get("step"),
            "use_ema": not args.no_ema, "reward_names": names, "binner": pipe.metadata.get("binner"),
            "positive_targets": dict(zip(names, pos_levels)), "negative_targets": dict(zip(names, neg_levels)),
            "guidance_scale": resolved["guidance_scale"], "guidance_strategy": resolved["guidance"],
            "guidance_interval": list(interval) if interval else None,
            "drop_text_in_negative": resolved["drop_text_in_negative"], "num_steps": resolved["num_inference_steps"],
            "solver": resolved["solver"], "time_shift": resolved["time_shift"], "seed": args.seed,
            "batch_size": len(prompts), "device": str(device), "image_size": pipe.image_size,
        }
        for i, (p, prompt) in enumerate(zip(paths, prompts)):
            side = {**params, "prompt": prompt, "batch_index": i, "image": p.name}
            p.with_suffix(".json").write_text(json.dumps(side, indent=2, sort_keys=True))
        print(f"wrote {len(paths)} images to {out}")
        return 0


@hookimpl
def miro_register_commands(register):
    register(SampleCommand)
