"""EMA (formula, warmup, buffers, load_shadow) and checkpoints (keep_checkpoints pruning, leftovers of killed
writes, torn directories, pickle payloads refused)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from miro_core import CheckpointError
from miro_core.training.checkpoint import (
    list_checkpoints,
    load_state_dict_file,
    load_training_state,
    resolve_checkpoint,
    save_checkpoint,
)
from miro_core.training.ema import EMA


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.norm = nn.BatchNorm1d(2)  # has buffers (running stats): copied, not averaged


def _net(seed=0) -> _Net:
    torch.manual_seed(seed)
    return _Net()


# ------------------------------------------------------------------------------------------------- EMA
def test_ema_formula_without_warmup():
    model = _net()
    ema = EMA(model, decay=0.9, warmup=False)
    expected = {k: p.detach().clone() for k, p in model.named_parameters()}
    for step in range(5):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        ema.update(model)
        for k, p in model.named_parameters():
            expected[k] = 0.9 * expected[k] + 0.1 * p.detach()
            torch.testing.assert_close(ema.shadow[k], expected[k], rtol=1e-6, atol=1e-7)
    assert ema.num_updates == 5 and ema.current_decay() == 0.9


def test_ema_warmup_decay_schedule_and_use():
    model = _net()
    ema = EMA(model, decay=0.5, warmup=True)
    got = []
    for n in range(4):
        got.append(ema.current_decay())
        ema.update(model)
    # min(decay, (1 + n) / (10 + n)): 0.1, 2/11, 3/12, then capped at 0.5 only from n = 8 on
    assert got == pytest.approx([0.1, 2 / 11, 3 / 12, 4 / 13])
    ema.num_updates = 8
    assert ema.current_decay() == pytest.approx(min(0.5, 9 / 18)) and EMA(model, 0.9999).current_decay() == 0.1
    ema.num_updates = 1000
    assert ema.current_decay() == 0.5
    # the first update with warmup uses d = 0.1: the shadow moves 90 % of the way to the weights
    fresh = EMA(model, decay=0.9999, warmup=True)
    start = {k: v.clone() for k, v in fresh.shadow.items()}
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(1.0)
    fresh.update(model)
    for k, v in fresh.shadow.items():
        torch.testing.assert_close(v, 0.1 * start[k] + 0.9 * torch.ones_like(v))


def test_ema_state_dict_buffers_dtype_and_copy_to():
    model = _net().to(torch.bfloat16)
    ema = EMA(model, decay=0.9, warmup=False)
    assert all(v.dtype == torch.float32 for v in ema.shadow.values())  # float32 shadow of a bf16 model
    model.norm.running_mean.fill_(3.0)
    with torch.no_grad():
        model.lin.weight.fill_(2.0)
    ema.update(model)
    sd = ema.state_dict(model)
    assert set(sd) == set(model.state_dict())  # loads straight into a fresh model
    assert sd["lin.weight"].dtype == torch.bfloat16
    assert torch.equal(sd["norm.running_mean"], torch.full((2,), 3.0, dtype=torch.bfloat16))  # copied
    other = _net(seed=1).to(torch.bfloat16)
    ema.copy_to(other)
    assert torch.equal(other.lin.weight, ema.shadow["lin.weight"].to(torch.bfloat16))


def test_ema_load_shadow():
    model = _net()
    ema = EMA(model, decay=0.9)
    state = {k: torch.full_like(v, 7.0, dtype=torch.float64) for k, v in ema.shadow.items()}
    ema.load_shadow(state)
    assert all(v.dtype == torch.float32 and torch.all(v == 7.0) for v in ema.shadow.values())
    state["lin.weight"].fill_(-1.0)  # a copy, not a view of the caller's tensors
    assert torch.all(ema.shadow["lin.weight"] == 7.0)
    extra = {**state, "unused.buffer": torch.zeros(1)}  # extra keys (buffers of a full state dict) are fine
    ema.load_shadow(extra, device="cpu")
    missing = {k: v for k, v in state.items() if k != "lin.bias"}
    with pytest.raises(KeyError, match="lin.bias"):
        ema.load_shadow(missing)


# ------------------------------------------------------------------------------------------ checkpoints
def _save(root: Path, step: int, keep: int = 0, value: float = 0.0) -> Path:
    w = {"w": torch.full((2,), value)}
    state = {"optimizer": {"state": {}, "param_groups": []}, "step": step, "ema_updates": step}
    return save_checkpoint(root, step, meta={"train_config": {}, "reward_names": [], "model_info": {}},
                           model_state=w, ema_state=w, training_state=state, keep=keep)


def test_keep_checkpoints_prunes_the_oldest_and_leaves_no_litter(tmp_path):
    root = tmp_path / "checkpoints"
    for step in range(1, 6):
        _save(root, step, keep=2, value=float(step))
    assert [p.name for p in list_checkpoints(root)] == ["step_00000004", "step_00000005"]
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_00000004", "step_00000005"]
    assert resolve_checkpoint(tmp_path) == root / "step_00000005"
    assert torch.all(load_state_dict_file(root / "step_00000005" / "model.safetensors")["w"] == 5.0)
    _save(root, 6, keep=0)  # keep = 0: keep all
    assert len(list_checkpoints(root)) == 3


def test_leftovers_of_killed_writes_are_ignored_then_removed(tmp_path):
    root = tmp_path / "checkpoints"
    _save(root, 1)
    # a writer killed mid-write (.tmp-*), one killed mid-prune (.old-*), and a torn step dir (no weights)
    (root / ".tmp-step_00000002-deadbeef").mkdir()
    (root / ".tmp-step_00000002-deadbeef" / "config.json").write_text("{}")
    (root / ".old-step_00000000-cafe").mkdir()
    torn = root / "step_00000003"
    torn.mkdir()
    (torn / "config.json").write_text("{}")
    assert [p.name for p in list_checkpoints(root)] == ["step_00000001"]
    assert resolve_checkpoint(tmp_path) == root / "step_00000001"
    (root / "latest").write_text("step_00000003\n")  # even if `latest` names the torn one
    assert resolve_checkpoint(tmp_path) == root / "step_00000001"
    _save(root, 4)
    assert not any(p.name.startswith((".tmp-", ".old-")) for p in root.iterdir())
    assert resolve_checkpoint(tmp_path) == root / "step_00000004"


class _Payload:
    """Unpickling this creates a file: proof that a loader executed pickled code."""

    target = ""

    def __reduce__(self):
        return (open, (self.target, "w"))


def _payload(target: Path) -> _Payload:
    p = _Payload()
    p.target = str(target)
    return p


def test_training_state_with_a_pickle_payload_is_refused(tmp_path):
    ckpt = _save(tmp_path / "checkpoints", 1)
    target = tmp_path / "pwned_state"
    torch.save({"optimizer": _payload(target), "step": 1}, ckpt / "training_state.pt")
    with pytest.raises(CheckpointError, match="never loads"):
        load_training_state(ckpt)
    assert not target.exists()
    # the same file through a full unpickler would have run it: the test's payload is live
    loaded = torch.load(ckpt / "training_state.pt", weights_only=False)
    loaded["optimizer"].close()
    assert target.exists()
    os.unlink(target)


def test_weights_file_with_a_pickle_payload_is_refused(tmp_path):
    ckpt = _save(tmp_path / "checkpoints", 1)
    target = tmp_path / "pwned_weights"
    (ckpt / "model.safetensors").write_bytes(pickle.dumps(_payload(target)))
    with pytest.raises(CheckpointError, match="corrupt or unreadable"):
        load_state_dict_file(ckpt / "model.safetensors")
    torch.save({"w": _payload(target)}, ckpt / "ema.safetensors")  # a torch zip pickle under the name
    with pytest.raises(CheckpointError):
        load_state_dict_file(ckpt / "ema.safetensors")
    assert not target.exists()


def test_pretrained_negative_embedding_with_a_pickle_is_refused(tmp_path):
    """Official releases carry uncond_embedding.npy: read with allow_pickle=False."""
    import numpy as np

    from miro_core.pretrained import _official_negative

    target = tmp_path / "pwned_npy"
    arr = np.empty(1, dtype=object)
    arr[0] = _payload(target)
    np.save(tmp_path / "uncond_embedding.npy", arr, allow_pickle=True)
    with pytest.raises(CheckpointError, match="not a plain numpy array"):
        _official_negative(tmp_path)
    assert not target.exists()
