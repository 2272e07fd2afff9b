"""Training the world alignment model from scratch (tiny config), saving, loading, the CLI command."""

from __future__ import annotations

import json

import numpy as np
import torch

from miro_core import registry
from miro_core.cli import main
from miro_world.alignment_model import (AlignmentModelConfig, AlignmentTrainConfig, load_alignment_model,
                                        tokenize, train_alignment, SHIPPED_WEIGHTS)

TINY = {"steps": 60, "batch_size": 32, "num_scenes": 400, "num_eval_scenes": 150, "lr": 5e-3,
        "model": {"channels": [8, 16, 16, 16], "text_dim": 32, "text_layers": 1, "embed_dim": 32}}


def test_tokenize_is_order_aware_and_handles_unknown_words():
    ids, lengths = tokenize(["a red circle left of a blue square", "A blue square, left of a red CIRCLE!", "zebra"])
    assert lengths.tolist() == [8, 8, 1]
    assert not torch.equal(ids[0], ids[1]) and sorted(ids[0].tolist()) == sorted(ids[1].tolist())
    assert ids[2, 0].item() == 1  # <unk>


def test_train_from_scratch_tiny_and_reload(tmp_path):
    torch.set_num_threads(1)
    model, metrics = train_alignment(TINY, tmp_path / "m")
    chance = np.log(32 * (1 + 3))
    assert metrics["final_loss"] < chance - 0.5  # it learned something
    assert metrics["acc_wrong_color"] > 0.6  # above chance (0.5) on held-out scenes
    assert (tmp_path / "m" / "alignment.safetensors").exists()
    meta = json.loads((tmp_path / "m" / "alignment.json").read_text())
    assert meta["train"]["steps"] == 60 and meta["metrics"]["acc_all"] == metrics["acc_all"]
    again = load_alignment_model(tmp_path / "m")
    x = torch.rand(3, 3, 32, 32)
    ids, lengths = tokenize(["a red circle", "two squares", "a blue triangle above a white circle"])
    with torch.no_grad():
        # weights are stored in float16: the reloaded model matches up to that rounding
        torch.testing.assert_close(again(x, ids, lengths), model.eval()(x, ids, lengths), atol=5e-3, rtol=0)
    reward = registry("rewards").create("world_alignment", {"weights": str(tmp_path / "m")})
    reward.setup("cpu")
    assert reward.score(torch.rand(2, 3, 48, 48), ["a red circle", "two squares"]).shape == (2,)


def test_cli_train_alignment(tmp_path, capsys):
    rc = main(["world", "train-alignment", "--out", str(tmp_path / "cli"), "--steps", "3", "--batch-size", "8",
               "--num-scenes", "40"])
    assert rc == 0
    assert (tmp_path / "cli" / "alignment.json").exists()
    assert "acc_all" in capsys.readouterr().out


def test_shipped_weights_small_and_accurate():
    size = (SHIPPED_WEIGHTS / "alignment.safetensors").stat().st_size
    assert size < 1_000_000
    meta = json.loads((SHIPPED_WEIGHTS / "alignment.json").read_text())
    assert meta["metrics"]["acc_all"] > 0.8
    # re-measure on fresh held-out scenes (stream 2 of a different seed than training)
    from miro_world.alignment_model import evaluate_alignment

    cfg = AlignmentTrainConfig(seed=99, model=AlignmentModelConfig())
    acc = evaluate_alignment(load_alignment_model(), cfg, num_scenes=300)
    assert acc["acc_wrong_color"] > 0.95 and acc["acc_all"] > 0.9 and acc["acc_wrong_relation"] > 0.75, acc
