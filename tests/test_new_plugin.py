"""``miro new-plugin`` and MIRO's pytest plugin (issue 15).

Every kind is rendered into a temporary directory, "installed" by writing the ``.dist-info`` (METADATA +
entry_points.txt, taken from the rendered pyproject.toml) that pip would write onto a temporary ``sys.path``
entry, and its own generated tests are run in this process with pytest. The slow test installs one rendered
reward package with pip (``--target``, the same interpreter) and scores the built-in world with it through the
``miro`` command line.
"""

from __future__ import annotations

import fnmatch
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from miro_core import ConfigError, registry
from miro_core import _plugins
from miro_core.cli import main
from miro_core.cli.new_plugin_cmd import KINDS, plugin_names, render_plugin
from miro_core.pytest_plugin import miro_components, miro_fresh_plugins  # noqa: F401 - fixtures

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = ROOT / "miro_core" / "templates" / "plugin"

#: the package's own (non-contract) tests per kind, each must pass too
OWN_TESTS = {"reward": 2, "binner": 2, "backbone": 1, "guidance": 1, "evaluator": 1, "suite": 2, "data_source": 1}


def fake_install(pkg: Path, site: Path) -> str:
    """Write the ``.dist-info`` pip would write for ``pkg`` (from its pyproject.toml) into ``site``."""
    project = tomllib.loads((pkg / "pyproject.toml").read_text())["project"]
    name, version = project["name"], project["version"]
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = []
    for group, eps in project.get("entry-points", {}).items():
        lines.append(f"[{group}]")
        lines += [f"{k} = {v}" for k, v in eps.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    return name


class _Outcomes:
    """A pytest plugin collecting the outcome of every test of an in-process run."""

    def __init__(self):
        self.passed: list[str] = []
        self.failed: list[tuple[str, str]] = []
        self.skipped: list[str] = []

    def pytest_runtest_logreport(self, report):
        if report.failed:
            self.failed.append((report.nodeid, report.longreprtext))
        elif report.when == "call" and report.passed:
            self.passed.append(report.nodeid)
        elif report.skipped:
            self.skipped.append(report.nodeid)

    def pytest_collectreport(self, report):
        if report.failed:
            self.failed.append((report.nodeid, report.longreprtext))


def _pytest11_installed() -> bool:
    import importlib.metadata as md

    return any(ep.value == "miro_core.pytest_plugin" for ep in md.entry_points(group="pytest11"))


def run_pytest_inprocess(path: Path, *extra: str) -> _Outcomes:
    """Run pytest on ``path`` in this process (sys.modules entries it adds under ``path`` are dropped after)."""
    outcomes = _Outcomes()
    before = set(sys.modules)
    args = [str(path), "-q", "-p", "no:cacheprovider", "--import-mode=importlib", *extra]
    if not _pytest11_installed():  # this checkout's .venv predates the entry point: load the plugin by hand
        args += ["-p", "miro_core.pytest_plugin", "-W", "ignore::pytest.PytestAssertRewriteWarning"]
    try:
        rc = pytest.main(args, plugins=[outcomes])
    finally:
        for mod in set(sys.modules) - before:
            f = getattr(sys.modules[mod], "__file__", None) or ""
            if f.startswith(str(path)) or mod.startswith("miro_t_"):
                del sys.modules[mod]
    outcomes.rc = rc
    return outcomes


@pytest.fixture
def installed(tmp_path, monkeypatch, miro_fresh_plugins):
    """``installed(name, kind) -> pkg``: render and fake-install a plugin, visible to entry points and imports."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))

    def make(name: str, kind: str) -> Path:
        pkg = render_plugin(name, kind, tmp_path / f"pkg-{name}")
        fake_install(pkg, site)
        monkeypatch.syspath_prepend(str(pkg))
        _plugins.reset_plugins(None)
        return pkg

    return make


@pytest.mark.parametrize("kind", list(KINDS))
def test_rendered_package_passes_its_own_tests_and_is_listed(kind, installed, capsys):
    name = f"t_{kind}"
    pkg = installed(name, kind)
    names = plugin_names(name, kind)
    outcomes = run_pytest_inprocess(pkg)
    assert not outcomes.failed, "\n\n".join(f"{n}\n{text}" for n, text in outcomes.failed)
    assert outcomes.rc == 0 and not outcomes.skipped
    contract = [n for n in outcomes.passed if "Contract::" in n]
    own = [n for n in outcomes.passed if "Contract::" not in n]
    assert len(contract) >= 2 and len(own) == OWN_TESTS[kind], outcomes.passed
    assert all(f"::Test{names['class']}Contract::" in n for n in contract)

    _plugins.reset_plugins(None)
    capsys.readouterr()
    assert main(["plugins", "--json", "--kind", names["registry"]]) == 0
    listed = {i["name"]: i for i in json.loads(capsys.readouterr().out)[names["registry"]]}
    assert listed[name]["distribution"] == names["dist"] and listed[name]["version"] == "0.1.0"
    assert listed[name]["class"] == f"{names['module']}.{name}.{names['class']}"


def test_rendered_files(tmp_path):
    pkg = render_plugin("sharp_edges", "reward", tmp_path / "p")
    assert sorted(str(p.relative_to(pkg)) for p in pkg.rglob("*") if p.is_file()) == [
        "README.md", "miro_sharp_edges/__init__.py", "miro_sharp_edges/sharp_edges.py", "pyproject.toml",
        "tests/test_miro_sharp_edges.py"]
    project = tomllib.loads((pkg / "pyproject.toml").read_text())["project"]
    assert project["name"] == "miro-sharp-edges"
    assert project["entry-points"]["miro"] == {"miro_sharp_edges": "miro_sharp_edges"}
    init = (pkg / "miro_sharp_edges" / "__init__.py").read_text()
    assert "@hookimpl\ndef miro_register_rewards(register):\n    register(SharpEdgesReward)" in init
    assert "class TestSharpEdgesRewardContract(RewardContract):" in (pkg / "tests/test_miro_sharp_edges.py").read_text()
    readme = (pkg / "README.md").read_text()
    assert "miro score --data world:num_samples=64 --rewards sharp_edges,world_alignment" in readme
    assert "{{" not in readme and not list(tmp_path.glob(".tmp-*"))


def test_cli_creates_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "mine"
    assert main(["new-plugin", "my_sharpness", "--kind", "reward", "--out", str(out)]) == 0
    assert "created" in capsys.readouterr().out and (out / "pyproject.toml").exists()
    (out / "README.md").write_text("my edits")
    assert main(["new-plugin", "my_sharpness", "--kind", "reward", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "never overwrites" in err and "--out" in err
    assert (out / "README.md").read_text() == "my edits"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="already exists"):
        render_plugin("other", "binner", empty)
    assert list(empty.iterdir()) == []


def test_default_out_is_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert render_plugin("edge_density", "evaluator") == tmp_path / "miro-edge-density"


@pytest.mark.parametrize(("name", "fix"), [
    ("My-Reward", "'my_reward'"), ("1st", "'my_1st'"), ("miro_sharp", "'sharp'"), ("class", "'class_plugin'"),
    ("a__b", "'a_b'"), ("sharp_", "'sharp'"), ("", "'my_component'"),
])
def test_invalid_names_say_how_to_fix(name, fix, tmp_path):
    with pytest.raises(ConfigError) as err:
        render_plugin(name, "reward", tmp_path / "x")
    assert repr(name) in str(err.value) and fix in str(err.value)
    assert not (tmp_path / "x").exists()


def test_unknown_kind_and_taken_names(tmp_path, monkeypatch, capsys):
    with pytest.raises(ConfigError, match="Unknown plugin kind 'rewards'; choose one of reward, binner"):
        render_plugin("x", "rewards", tmp_path / "x")
    with pytest.raises(ConfigError, match=r"'quantile' is already registered by miro 0\.1\.0"):
        render_plugin("quantile", "binner", tmp_path / "q")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "miro_taken_name.py").write_text("")
    monkeypatch.syspath_prepend(str(elsewhere))
    with pytest.raises(ConfigError, match="module named miro_taken_name is already importable"):
        render_plugin("taken_name", "reward", tmp_path / "c")
    with pytest.raises(SystemExit) as exc:  # argparse: not one of the kinds
        main(["new-plugin", "x", "--kind", "nope", "--out", str(tmp_path / "n")])
    assert exc.value.code == 2 and "invalid choice: 'nope'" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere"]


def test_failed_render_leaves_nothing(tmp_path, monkeypatch):
    from miro_core.cli import new_plugin_cmd

    real = new_plugin_cmd._render
    calls = []

    def flaky(text, names):
        calls.append(1)
        if len(calls) == 4:
            raise OSError("disk full")
        return real(text, names)

    monkeypatch.setattr(new_plugin_cmd, "_render", flaky)
    with pytest.raises(ConfigError, match="disk full"):
        render_plugin("broken", "reward", tmp_path / "b")
    assert list(tmp_path.iterdir()) == []


def test_templates_are_package_data():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = cfg["tool"]["setuptools"]["package-data"]
    files = [p.relative_to(ROOT / "miro_core").as_posix() for p in TEMPLATES.rglob("*") if p.is_file()]
    assert len(files) == 3 + 3 * len(KINDS)
    pats = patterns.get("miro_core", []) + patterns.get("*", [])
    missing = [f for f in files if not any(fnmatch.fnmatch(f, p) and f.count("/") == p.count("/") or
                                           ("/" not in p and fnmatch.fnmatch(Path(f).name, p)) for p in pats)]
    assert not missing, f"templates not covered by [tool.setuptools.package-data]: {missing}"
    assert sorted(p.name for p in TEMPLATES.iterdir()) == sorted(["common", *KINDS])


# ---------------------------------------------------------------------------------------------------
# The pytest plugin
# ---------------------------------------------------------------------------------------------------
def test_pytest11_entry_point_declared():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert cfg["project"]["entry-points"]["pytest11"] == {"miro": "miro_core.pytest_plugin"}


def _tiny_reward():
    import torch

    import miro_core

    class TinyReward(miro_core.Reward):
        """Mean pixel value."""

        name = "tiny_mean"

        def score(self, images, prompts):
            return images.flatten(1).mean(1)

    return TinyReward, torch


def test_miro_components_registers_and_restores(miro_components):
    TinyReward, torch = _tiny_reward()
    before = _plugins._host
    host = miro_components(TinyReward)
    assert _plugins._host is host and "tiny_mean" in registry("rewards")
    assert "world_sharpness" in registry("rewards")  # installed plugins stay available by default
    assert registry("rewards").get("tiny_mean").distribution == "<local>"
    assert registry("rewards").create("tiny_mean").score(torch.ones(2, 3, 4, 4), ["", ""]).tolist() == [1.0, 1.0]
    isolated = miro_components(TinyReward, installed=False)
    assert registry("rewards").names() == ["tiny_mean"] and isolated is _plugins._host
    assert before is not host


def test_miro_components_rejects_non_components(miro_components):
    with pytest.raises(ConfigError, match="is not a MIRO component class"):
        miro_components(dict)


def test_fixtures_work_as_a_pytest_plugin_and_leave_no_state(tmp_path):
    """The fixtures, as a pytest session in this environment gets them, inside a nested run; afterwards the
    process-wide host is what it was."""
    (tmp_path / "test_uses_fixtures.py").write_text(
        "import types\n"
        "import miro_core\n"
        "from miro_core import hookimpl, registry\n\n"
        "class Tiny(miro_core.Reward):\n"
        "    name = 'tiny_fixture_reward'\n"
        "    def score(self, images, prompts):\n"
        "        return images.flatten(1).mean(1)\n\n"
        "def test_classes(miro_components):\n"
        "    miro_components(Tiny, installed=False)\n"
        "    assert registry('rewards').names() == ['tiny_fixture_reward']\n\n"
        "def test_plugin_module(miro_components):\n"
        "    mod = types.ModuleType('my_inline_plugin')\n"
        "    @hookimpl\n"
        "    def miro_register_rewards(register):\n"
        "        register(Tiny)\n"
        "    mod.miro_register_rewards = miro_register_rewards\n"
        "    miro_components(plugins=[mod], installed=False)\n"
        "    assert registry('rewards').get('tiny_fixture_reward').plugin == 'my_inline_plugin'\n\n"
        "def test_gone_afterwards():\n"
        "    assert 'tiny_fixture_reward' not in registry('rewards')\n"
    )
    (tmp_path / "pyproject.toml").write_text("[tool.pytest.ini_options]\n")
    before = _plugins.get_plugin_host()
    outcomes = run_pytest_inprocess(tmp_path, "-p", "no:randomly")
    assert not outcomes.failed, outcomes.failed
    assert len(outcomes.passed) == 3
    assert _plugins._host is before


# ---------------------------------------------------------------------------------------------------
# The whole flow with pip: install, list, test, score
# ---------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_pip_installed_reward_scores_the_world(tmp_path):
    py = Path(sys.executable)
    pkg = render_plugin("contrast_check", "reward", tmp_path / "miro-contrast-check")
    site = tmp_path / "site"
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    "--target", str(site), str(pkg)], check=True, timeout=300)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    env.pop("MIRO_LOAD_PLUGINS", None)
    miro = [str(py), "-m", "miro_core.cli"]

    listed = subprocess.run([*miro, "plugins", "--json", "--kind", "rewards"], env=env, capture_output=True,
                            text=True, check=True, timeout=300)
    item = {i["name"]: i for i in json.loads(listed.stdout)["rewards"]}["contrast_check"]
    assert (item["distribution"], item["version"]) == ("miro-contrast-check", "0.1.0")

    tests = subprocess.run([str(py), "-m", "pytest", "-q", "-p", "no:cacheprovider", str(pkg / "tests")], env=env,
                           cwd=pkg, capture_output=True, text=True, timeout=600)
    assert tests.returncode == 0, tests.stdout + tests.stderr
    last = tests.stdout.strip().splitlines()[-1]
    assert "passed" in last and "failed" not in last and "skipped" not in last, tests.stdout

    store = tmp_path / "s.zarr"
    scored = subprocess.run([*miro, "score", "--data", "world:num_samples=8", "--rewards", "contrast_check",
                             "--store", str(store)], env=env, capture_output=True, text=True, timeout=600)
    assert scored.returncode == 0, scored.stdout + scored.stderr

    # the stored scores are the reward's formula on the world images, recomputed here independently
    from miro_core.data import to_tensor
    from miro_core.store import open_store

    st = open_store(str(store))
    ids = [str(i) for i in st.ids()]
    got = np.asarray(st.scores("contrast_check"), dtype=np.float64)
    src = registry("data_sources").create("world", {"num_samples": 8})
    by_id = {s.id: to_tensor(s.image).double() for s in src}
    want = []
    for i in ids:
        img = by_id[i]
        y = 0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2]
        want.append(float(y.std(unbiased=False)))
    assert len(ids) == 8 and np.isfinite(got).all()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert np.std(got) > 0  # the world's degraded samples really differ in contrast


@pytest.mark.slow
def test_every_kind_installs_into_a_fresh_venv_and_passes_its_tests(tmp_path):
    """Each scaffold kind, pip-installed into a new virtual environment (which reuses this environment's packages
    through a .pth file: no download, no new torch), is listed by `miro plugins`, passes its own generated tests,
    and the reward works in `miro score`."""
    import site as site_mod
    import sysconfig

    venv = tmp_path / "venv"
    # no pip or setuptools of its own: those of the base environment come through the .pth file below
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    vpy = venv / "bin" / "python"
    vsite = Path(subprocess.run([str(vpy), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                capture_output=True, text=True, check=True).stdout.strip())
    base = sysconfig.get_paths()["purelib"]
    assert Path(base) != vsite and base in site_mod.getsitepackages() + [base]
    (vsite / "_miro_base_env.pth").write_text(f"import site; site.addsitedir({base!r})\n")
    pkgs = {kind: render_plugin(f"fresh_{kind}", kind, tmp_path / f"pkg-{kind}") for kind in KINDS}
    env = {k: v for k, v in os.environ.items() if k not in ("MIRO_LOAD_PLUGINS", "PYTHONPATH", "VIRTUAL_ENV")}
    subprocess.run([str(vpy), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    *[str(p) for p in pkgs.values()]], check=True, timeout=600, env=env)
    # installed into the fresh venv, not the base environment
    assert list(vsite.glob("miro_fresh_reward*")) and not list(Path(base).glob("miro_fresh_reward*"))

    listed = subprocess.run([str(vpy), "-m", "miro_core.cli", "plugins", "--json"], env=env, capture_output=True,
                            text=True, check=True, timeout=300)
    data = json.loads(listed.stdout)
    assert data["broken"] == []
    for kind, (reg_kind, *_rest) in KINDS.items():
        item = {i["name"]: i for i in data[reg_kind]}[f"fresh_{kind}"]
        assert item["distribution"] == f"miro-fresh-{kind.replace('_', '-')}", item

    for kind, pkg in pkgs.items():
        tests = subprocess.run([str(vpy), "-m", "pytest", "-q", "-p", "no:cacheprovider", str(pkg / "tests")],
                               env=env, cwd=pkg, capture_output=True, text=True, timeout=600)
        assert tests.returncode == 0, (kind, tests.stdout + tests.stderr)
        last = tests.stdout.strip().splitlines()[-1]
        assert "passed" in last and "failed" not in last and "error" not in last, (kind, tests.stdout)

    scored = subprocess.run([str(vpy), "-m", "miro_core.cli", "score", "--data", "world:num_samples=8",
                             "--rewards", "fresh_reward", "--store", str(tmp_path / "s.zarr")], env=env,
                            capture_output=True, text=True, timeout=600)
    assert scored.returncode == 0, scored.stdout + scored.stderr
