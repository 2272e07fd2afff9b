"""``reward_scores``: generate images for a prompt set and report mean / std of any list of rewards."""

from __future__ import annotations

__all__ = ["RewardScores", "read_prompts"]

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import torch

from miro_core import ConfigError, Evaluator, config, hookimpl

from ._common import generate_batched, load_rewards, mean_std, score_images

log = logging.getLogger(__name__)


def read_prompts(path: str | Path) -> list[str]:
    """One prompt per non-empty line of a text file."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"Prompt file {p} does not exist; pass a text file with one prompt per line.")
    return [line.strip() for line in p.read_text().splitlines() if line.strip()]


class RewardScores(Evaluator):
    """Generate images for a prompt set and report the mean and std of each reward.

    ``evaluate(generate, prompts=None, **sampling_kwargs)`` returns ``{"<reward>/mean": ..,
    "<reward>/std": ..}``; the rewards are created from the registry once and reused across calls (the
    training loop calls the evaluator every ``eval_every`` steps).
    """

    name = "reward_scores"

    @config
    class Config:
        #: reward names from the ``rewards`` registry
        rewards: tuple[str, ...] = ()
        #: per-reward options, ``{reward: {option: value}}``
        reward_options: dict[str, dict[str, Any]] = attrs.field(factory=dict)
        #: the prompt set (or ``prompt_file``, one prompt per line); ``evaluate(prompts=...)`` overrides
        prompts: tuple[str, ...] = ()
        prompt_file: str | None = None
        images_per_prompt: int = 1
        batch_size: int = 16
        seed: int = 0
        device: str = "cpu"

    def __init__(self, config: Any = None):
        super().__init__(config)
        self._rewards: dict[str, Any] | None = None
        self.last_images: torch.Tensor | None = None
        self.last_scores: dict[str, Any] | None = None

    @property
    def rewards(self) -> dict[str, Any]:
        if self._rewards is None:
            if not self.config.rewards:
                raise ConfigError("reward_scores needs at least one reward: set its `rewards` option.")
            self._rewards = load_rewards(self.config.rewards, self.config.reward_options, self.config.device)
        return self._rewards

    def prompt_set(self, prompts: Sequence[str] | None = None) -> list[str]:
        if prompts is not None:
            out = list(prompts)
        elif self.config.prompts:
            out = list(self.config.prompts)
        elif self.config.prompt_file:
            out = read_prompts(self.config.prompt_file)
        else:
            out = []
        if not out:
            raise ConfigError("reward_scores has no prompts: set `prompts` or `prompt_file`, or pass prompts=.")
        return out

    def evaluate(self, generate: Any, prompts: Sequence[str] | None = None, **sampling_kwargs: Any) -> dict[str, float]:
        prompts = self.prompt_set(prompts)
        all_prompts = prompts * max(1, self.config.images_per_prompt)
        seed = sampling_kwargs.pop("seed", self.config.seed)
        images = generate_batched(generate, all_prompts, batch_size=self.config.batch_size, seed=seed, **sampling_kwargs)
        scores = score_images(self.rewards, images, all_prompts)
        self.last_images, self.last_scores = images, scores
        out: dict[str, float] = {}
        for name, values in scores.items():
            mean, std = mean_std(values)
            out[f"{name}/mean"] = mean
            out[f"{name}/std"] = std
        return out


@hookimpl
def miro_register_evaluators(register):
    register(RewardScores)
