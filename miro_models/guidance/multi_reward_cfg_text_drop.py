"""Multi-reward CFG whose negative branch also drops the text (empty caption), as the reference pipeline does.

``v = v(x_t, c, s+) + w (v(x_t, c, s+) - v(x_t, "", s-))``; both branches in one 2B forward. The model
should have been trained with caption dropout (``data.caption_dropout > 0``) so that the empty caption is
in-distribution.
"""

from __future__ import annotations

__all__ = ["MultiRewardCFGTextDrop"]

from collections.abc import Callable

from miro_core import hookimpl
from miro_core.sampling import Cond

from .multi_reward_cfg import MultiRewardCFG


class MultiRewardCFGTextDrop(MultiRewardCFG):
    """Multi-reward CFG with an empty caption in the negative branch."""

    name = "multi_reward_cfg_text_drop"

    def prepare_negative(self, negative: Cond, empty_text: Callable[[], Cond] | Cond) -> Cond:
        empty = empty_text() if callable(empty_text) else empty_text
        return negative.with_text(empty)


@hookimpl
def miro_register_guidance(register):
    register(MultiRewardCFGTextDrop)
