"""Plugins that break their contract at run time are reported with their distribution and the fix (issue 15)."""

from __future__ import annotations

import numpy as np
import torch
import pytest

import miro_core
from miro_core import StoreError
from miro_core.store import RewardStore


def _binner(name: str, transform):
    class Bad(miro_core.Binner):
        @miro_core.config
        class Config:
            num_bins: int = 4

        def fit(self, scores):
            return {}

        def transform(self, scores, state):
            return transform(np.asarray(scores, dtype=np.float64))

    Bad.name = name
    return Bad


def _store(tmp_path):
    s = RewardStore.create(str(tmp_path / "s.zarr"), [f"id{i}" for i in range(20)], chunk_rows=8)
    s.ensure_reward("r", {"version": "1", "config": {}})
    vals = np.linspace(0, 1, 20, dtype=np.float32)
    vals[3] = np.nan
    for c in range(s.num_chunks()):
        lo, hi = s.chunk_bounds(c)
        s.write_scores("r", lo, vals[lo:hi])
    return s


CASES = {
    "wrong_shape": (lambda x: np.zeros(x.shape[0] - 1, dtype=np.int16), "returned shape (19,) for 20 scores"),
    "out_of_range": (lambda x: np.where(np.isnan(x), -1, 7).astype(np.int16), "outside [0, 4)"),
    "nan_levels": (lambda x: np.full(x.shape, np.nan), "non-integer or NaN levels"),
    "nan_not_missing": (lambda x: np.zeros(x.shape, dtype=np.int16), "NaN scores got a level other than -1"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_binner_breaking_its_contract_is_named_and_nothing_is_written(case, tmp_path, miro_components):
    transform, expected = CASES[case]
    miro_components(_binner(f"bad_{case}", transform))
    s = _store(tmp_path)
    with pytest.raises(StoreError) as err:
        s.bin(f"bad_{case}")
    msg = str(err.value)
    assert f"Binner 'bad_{case}'" in msg and "distribution <local>" in msg and expected in msg, msg
    assert "BinnerContract" in msg and "nothing was written" in msg
    assert f"bad_{case}" not in s.binnings()


def test_a_good_binner_passes_the_check(tmp_path, miro_components):
    good = _binner("good_levels", lambda x: np.where(np.isnan(x), -1, np.clip(np.nan_to_num(x) * 4, 0, 3)).astype(np.int16))
    miro_components(good)
    s = _store(tmp_path)
    s.bin("good_levels")
    b = s.bins("good_levels", "r")
    assert b[3] == -1 and b.max() == 3 and b[b >= 0].min() == 0


# ------------------------------------------------------------------------------------------ rewards at run time
def _reward(name: str, fn):
    class Bad(miro_core.Reward):
        Config = miro_core.EmptyConfig

        def score(self, images, prompts):
            return fn(images)

    Bad.name = name
    return Bad


REWARD_CASES = {
    "nan_everywhere": (lambda x: torch.full((x.shape[0],), float("nan")), "non-finite"),
    "wrong_count": (lambda x: torch.zeros(x.shape[0] + 1), "scores for"),
}


@pytest.mark.parametrize("case", sorted(REWARD_CASES))
def test_reward_breaking_its_contract_is_named_with_its_distribution(case, tmp_path, miro_components):
    from miro_core.scoring import score_dataset

    fn, reason = REWARD_CASES[case]
    miro_components(_reward(f"bad_{case}", fn))
    url = str(tmp_path / "s.zarr")
    with pytest.raises(miro_core.MiroError) as err:
        score_dataset("world:num_samples=16", [f"bad_{case}"], url, batch_size=4, workers=0, progress=False)
    msg = str(err.value)
    assert f"Reward 'bad_{case}' (distribution <local>" in msg and "looks broken" in msg and reason in msg, msg
    assert not RewardStore.open(url).scored_mask(f"bad_{case}").any()  # nothing of the job was written
