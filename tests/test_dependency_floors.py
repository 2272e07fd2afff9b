"""Dependency floors in pyproject.toml match what the code needs, and the store works at exactly those floors.

Why each floor: zarr >= 3.1.3 is the first release whose ``LocalStore`` writes through a temporary file and a
rename (3.1.2 writes in place, so a killed writer could leave a torn chunk); ``np.dtypes.StringDType`` (the
store's string arrays) arrived in NumPy 2.0; ``tomllib`` (config files) in Python 3.11.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
FLOORS = {"zarr": "3.1.3", "numpy": "2"}


def _project():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _requirements():
    return {Requirement(r).name.lower(): Requirement(r) for r in _project()["dependencies"]}


def test_pyproject_floors():
    reqs = _requirements()
    for name, floor in FLOORS.items():
        spec = reqs[name].specifier
        assert Version(floor) in spec, (name, str(spec))
        below = Version(floor).release
        just_below = ".".join(map(str, below[:-1] + (below[-1] - 1,))) if below[-1] else f"{below[0] - 1}.99"
        assert Version(just_below) not in spec, f"{name} allows {just_below}, below the floor {floor}"
    python = _project()["requires-python"]
    from packaging.specifiers import SpecifierSet

    assert Version("3.11") in SpecifierSet(python) and Version("3.10") not in SpecifierSet(python)
    assert "hypothesis" in " ".join(_project()["optional-dependencies"]["test"])


def test_the_code_uses_what_the_floors_provide():
    """Each floor names a feature the code relies on; if the code stops using it the floor may be relaxed."""
    import numpy as np

    store_src = (ROOT / "miro_core" / "store.py").read_text()
    assert "np.dtypes.StringDType" in store_src and hasattr(np.dtypes, "StringDType")
    assert "import tomllib" in (ROOT / "miro_core" / "_config.py").read_text()
    import zarr.storage._local as local

    assert ".partial" in Path(local.__file__).read_text()  # the write-then-rename of zarr >= 3.1.3


@pytest.mark.slow
def test_store_and_scoring_tests_pass_at_the_floors(tmp_path):
    """Installs zarr and numpy at their floors (from PyPI) over this environment and runs the store tests."""
    target = tmp_path / "floors"
    pins = [f"zarr=={FLOORS['zarr']}", "numpy==2.0.0"]
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--target", str(target), *pins],
                         capture_output=True, text=True, timeout=600)
    if pip.returncode != 0:
        pytest.skip(f"cannot install the floors from the package index here: {pip.stderr[-500:]}")
    env = {**os.environ, "PYTHONPATH": str(target), "OMP_NUM_THREADS": "1"}
    probe = subprocess.run([sys.executable, "-c", "import numpy, zarr; print(numpy.__version__, zarr.__version__)"],
                           capture_output=True, text=True, env=env, timeout=120)
    assert probe.stdout.split() == ["2.0.0", FLOORS["zarr"]], probe.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow",
         str(ROOT / "tests" / "test_store.py"), str(ROOT / "tests" / "test_scoring.py"),
         str(ROOT / "tests" / "test_store_concurrency.py")],
        capture_output=True, text=True, env=env, timeout=900, cwd=str(ROOT),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
