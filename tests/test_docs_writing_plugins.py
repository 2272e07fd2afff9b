"""Run every ``<!-- run -->`` command block of docs/writing-plugins.md in a fresh folder (keeps the page true).

The page's ``pip install -e DIR`` must not change the shared environment, so the blocks run with a ``pip``
shell function that installs DIR with this interpreter into a temporary ``--target`` folder on ``PYTHONPATH``
(``--no-deps --no-build-isolation --no-index``: nothing is downloaded); every other command runs as written.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "writing-plugins.md"

PIP_SHIM = r'''
pip() {
  if [ "$1" = install ] && [ "$2" = -e ] && [ $# -eq 3 ]; then
    python -m pip install -q --no-deps --no-build-isolation --no-index --target "$MIRO_DOC_SITE" "$3"
  else
    echo "unexpected pip command in docs/writing-plugins.md: pip $*" >&2; return 1
  fi
}
'''


def _blocks() -> list[str]:
    return re.findall(r"<!-- run -->\n```bash\n(.*?)```", DOC.read_text(), flags=re.S)


def test_page_has_runnable_blocks():
    text = "\n".join(_blocks())
    for cmd in ("miro new-plugin contrast_check --kind reward", "pip install -e ./miro-contrast-check",
                "miro plugins", "python -m pytest", "miro score --data world:", "--rewards contrast_check,world_alignment",
                "miro train", "miro sample", "miro-run --rewards contrast_check,world_alignment"):
        assert cmd in text, cmd
    assert "writing-plugins.md" in (DOC.parent / "plugins.md").read_text()
    assert "docs/writing-plugins.md" in (DOC.parents[1] / "README.md").read_text()


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_writing_plugins_commands_run(tmp_path):
    site = tmp_path / "site"
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "MIRO_LOAD_PLUGINS"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), env.get("PYTHONPATH", "")) if p)
    env["MIRO_DOC_SITE"] = str(site)
    outputs = []
    for block in _blocks():
        proc = subprocess.run(["bash", "-euo", "pipefail", "-c", PIP_SHIM + block], cwd=work, env=env,
                              capture_output=True, text=True, timeout=1200)
        assert proc.returncode == 0, f"block failed:\n{block}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
        outputs.append(proc.stdout)
    listing = next(o for o in outputs if o.startswith("rewards ("))
    assert re.search(r"contrast_check\s+\[miro-contrast-check 0\.1\.0\]", listing)
    from miro_core.store import open_store

    scores = open_store(str(work / "runs/mine.zarr")).scores("contrast_check")
    assert scores.shape == (64,) and (scores == scores).all() and scores.std() > 0
    assert list((work / "runs/mine").rglob("*.safetensors"))
    assert len(list((work / "runs/low-contrast").glob("*.png"))) == 2
    metrics = list((work / "runs/mine-run").rglob("metrics.json"))
    assert metrics and "contrast_check" in json.dumps([json.loads(m.read_text()) for m in metrics])
