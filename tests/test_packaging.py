"""A built wheel (not the editable checkout) carries every data file the code reads (issue 16's page was missing)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tracked_data_files(root: Path, packages: list[str]) -> set[str]:
    out = subprocess.run(["git", "ls-files", *packages], cwd=root, capture_output=True, text=True, check=True).stdout
    return {f for f in out.split() if not f.endswith((".py", ".pyc")) and "__pycache__" not in f and "/tests/" not in f}


@pytest.mark.slow
@pytest.mark.parametrize(("project", "packages"), [
    (".", ["miro_core", "miro_rewards", "miro_models", "miro_eval"]),
    ("plugins/miro-world", ["miro_world"]),
])
def test_wheel_contains_every_tracked_data_file(project, packages, tmp_path):
    src = ROOT / project
    want = _tracked_data_files(src, packages)
    assert want, "no data files found: the test would pass vacuously"
    # build from a copy of the tracked files only: a stale build/ or egg-info in the checkout must not hide a gap
    clean = tmp_path / "src"
    tracked = subprocess.run(["git", "ls-files", "."], cwd=src, capture_output=True, text=True, check=True).stdout.split()
    for rel in tracked:
        if (src / rel).is_file() and not rel.startswith(("tests/", "plugins/")):
            (clean / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / rel, clean / rel)
    out = tmp_path / "wheel"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    "-w", str(out), str(clean)], check=True, timeout=600, capture_output=True)
    (wheel,) = out.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = sorted(want - names)
    assert not missing, f"{wheel.name} lacks {missing}: add them to [tool.setuptools.package-data] in {project}/pyproject.toml"
