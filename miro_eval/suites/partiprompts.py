"""``partiprompts``: PartiPrompts (Yu et al., 2022; 1632 prompts, 12 categories, 11 challenges) scored with any
rewards (default: the paper's six evaluation scorers, Figure 4), mean and std overall, per category and challenge.

The TSV (``Prompt``, ``Category``, ``Challenge``, ``Note``) is read from a local path or any fsspec URL with
``csv.QUOTE_NONE`` (prompts that start with a quote stay intact) and every field stripped (some prompts end with
spaces)."""

from __future__ import annotations

__all__ = ["PartiPromptsSuite", "read_partiprompts", "PARTIPROMPTS_URL", "PAPER_EVAL_REWARDS"]

from typing import Any

from miro_core import ConfigError, config, hookimpl

from ._prompts import open_text, read_tsv_prompts
from .rewards import RewardsSuite

#: the official file (google-research/parti)
PARTIPROMPTS_URL = "https://raw.githubusercontent.com/google-research/parti/main/PartiPrompts.tsv"
#: the paper's evaluation scorers (Figure 4: AestheticScore, PickScore, ImageReward, HPSv2, JINA CLIP + OpenAI CLIP)
PAPER_EVAL_REWARDS = ("aesthetic", "pick", "image_reward", "hpsv2", "jina_clip", "openai_clip")


def read_partiprompts(url: str = PARTIPROMPTS_URL) -> list[dict[str, Any]]:
    """The prompt records ``{"prompt", "category", "challenge", "note"}`` of a PartiPrompts TSV."""
    records = read_tsv_prompts(open_text(url), url)
    for key in ("category", "challenge"):
        if any(key not in r for r in records):
            raise ConfigError(f"{url} has no {key.capitalize()!r} column: is it PartiPrompts.tsv?")
    return records


class PartiPromptsSuite(RewardsSuite):
    """PartiPrompts with any rewards (default: the paper's six evaluation scorers), per category and challenge."""

    name = "partiprompts"

    @config
    class Config(RewardsSuite.Config):
        rewards: tuple[str, ...] = PAPER_EVAL_REWARDS
        #: local path or fsspec URL of PartiPrompts.tsv
        prompt_file: str | None = PARTIPROMPTS_URL
        breakdown: tuple[str, ...] = ("category", "challenge")

    def prompt_records(self) -> list[dict[str, Any]]:
        if self._records is None:
            if self.config.prompts:
                raise ConfigError("partiprompts reads its prompts from `prompt_file` (the TSV); use the `rewards` "
                                  "suite for an inline prompt list.")
            if not self.config.prompt_file:
                raise ConfigError("partiprompts needs prompt_file=<path or URL of PartiPrompts.tsv>.")
            self._records = read_partiprompts(self.config.prompt_file)
        return self._records


@hookimpl
def miro_register_suites(register):
    register(PartiPromptsSuite)
