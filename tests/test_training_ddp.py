"""2-process DDP (torchrun, gloo on CPU): the run matches a single process on the same global batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from _miro_train_fakes import make_store, miro_host_module, tiny_config  # noqa: F401

pytestmark = pytest.mark.usefixtures("miro_host_module")
TESTS = Path(__file__).resolve().parent

SCRIPT = """
import json, sys
sys.path.insert(0, {tests!r})
from _miro_train_fakes import make_host, make_store
from miro_core._plugins import reset_plugins
from miro_core.training import train
reset_plugins(make_host(with_rin=True))
cfg = json.loads({cfg!r})
r = train(cfg, {out!r}, store=make_store(), progress=False)
import torch.distributed  # the group is gone after train(); rank 0 writes the history
import os
if os.environ.get("RANK") == "0":
    open({hist!r}, "w").write(json.dumps(r.history))
"""


def _torchrun_train(cfg: dict, tmp_path: Path) -> list[dict]:
    """Train ``cfg`` with torchrun on 2 CPU processes (gloo) into ``tmp_path/ddp``; rank 0's history."""
    script, hist = tmp_path / "ddp_run.py", tmp_path / "hist.json"
    script.write_text(SCRIPT.format(tests=str(TESTS), cfg=json.dumps(cfg), out=str(tmp_path / "ddp"), hist=str(hist)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MIRO_LOAD_PLUGINS": "miro_world"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)],
        capture_output=True, text=True, timeout=240, env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(hist.read_text())


RIN_TINY = {"name": "rin", "options": {"interface_dim": 16, "latent_dim": 16, "num_latents": 4, "num_blocks": 1,
                                       "layers_per_block": 1, "heads": 2, "interface_heads": 2}}


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["tiny_test", "rin"])
def test_two_process_ddp_matches_single_process(tmp_path, backbone):
    """With ``rin`` this also checks that each rank self-conditions its own samples of the global draw."""
    from miro_core.training import train
    from miro_core.training.checkpoint import load_state_dict_file

    over = {"optim.grad_clip": 0.0}
    if backbone == "rin":
        over["model.backbone"] = RIN_TINY
    cfg = tiny_config(tmp_path, steps=3, checkpoint_every=0, **over)
    single = train(cfg, tmp_path / "single", store=make_store(), progress=False)  # also builds the cache
    ddp_hist = _torchrun_train(cfg, tmp_path)
    a = {h["step"]: h["loss"] for h in single.history}
    b = {h["step"]: h["loss"] for h in ddp_hist}
    for s in (1, 2, 3):
        assert b[s] == pytest.approx(a[s], rel=1e-5)
    wa = load_state_dict_file(single.checkpoint_dir / "model.safetensors")
    wb = load_state_dict_file(tmp_path / "ddp" / "checkpoints" / "step_00000003" / "model.safetensors")
    for k in wa:
        if k.endswith(("k_norm.bias", "qkv.bias")):
            # a key bias shifts every logit of a query equally: its true gradient is 0 and Adam turns the
            # summation-order noise (~1e-9) into +-lr steps whose sign depends on the reduction order
            continue
        # Adam divides by the gradient's own scale: elements with tiny gradients carry reduction-order noise
        atol = 1e-4 if backbone == "rin" else 1e-5
        torch.testing.assert_close(wa[k], wb[k], atol=atol, rtol=1e-4, msg=lambda m, k=k: f"{k}: {m}")
    meta = json.loads((tmp_path / "ddp" / "checkpoints" / "step_00000003" / "config.json").read_text())
    assert meta["world_size"] == 2


@pytest.mark.slow
def test_two_process_streaming_training_encodes_and_trains(tmp_path):
    """torchrun x2 with data.encoded: the two ranks encode the missing shards between them (each its share,
    then they wait for each other without a collective), both stream their own shards, and the shards equal a
    single-process encoding."""
    import fsspec

    from miro_core.training.encoded import _load, open_encoded

    over = {"optim.grad_clip": 0.0, "data.encoded": str(tmp_path / "enc_ddp"), "data.shard_rows": 6}
    cfg = tiny_config(tmp_path, steps=3, checkpoint_every=0, **over)
    losses = [h["loss"] for h in _torchrun_train(cfg, tmp_path) if "loss" in h]
    assert len(losses) == 3 and all(l == l for l in losses)
    # the same shards as one process encoding everything
    from miro_core.training import train

    single = tiny_config(tmp_path, steps=1, checkpoint_every=0, **{**over, "data.encoded": str(tmp_path / "enc_one")})
    train(single, tmp_path / "one", store=make_store(), progress=False)
    a, b = open_encoded(str(tmp_path / "enc_ddp")), open_encoded(str(tmp_path / "enc_one"))
    assert a.units == b.units == 6
    fs = fsspec.filesystem("file")
    for k in range(a.units):
        (ta, ma) = _load(fs, str(tmp_path / "enc_ddp" / a.shard_name(k)))
        (tb, mb) = _load(fs, str(tmp_path / "enc_one" / b.shard_name(k)))
        assert ma == mb and all(torch.equal(ta[x], tb[x]) for x in ta)
