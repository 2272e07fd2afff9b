"""Run every ``<!-- run -->`` command block of docs/getting-started.md in a fresh folder (keeps the page true)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "getting-started.md"


def _blocks() -> list[str]:
    return re.findall(r"<!-- run -->\n```bash\n(.*?)```", DOC.read_text(), flags=re.S)


def test_page_has_runnable_blocks():
    blocks = _blocks()
    assert len(blocks) >= 5
    assert any("miro score" in b for b in blocks) and any("miro sample" in b for b in blocks)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_getting_started_commands_run(tmp_path):
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    for block in _blocks():
        proc = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"block failed:\n{block}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    assert (tmp_path / "runs/world.zarr").exists()
    assert len(list((tmp_path / "runs/samples/max").glob("*.png"))) == 2
    assert len(list((tmp_path / "runs/samples/less-vivid").glob("*.json"))) == 2
    assert list((tmp_path / "runs/baseline").rglob("*.safetensors"))
