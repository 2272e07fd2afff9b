"""The plugin system (miro_core._plugins), the ``miro plugins`` command and the config converter."""

from __future__ import annotations

import inspect
import itertools
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import attrs
import pytest

import miro_core
from miro_core import (
    ConfigError,
    DuplicateComponentError,
    PluginLoadError,
    UnknownComponentError,
    _hookspecs,
    apply_overrides,
    load_toml,
    structure,
    unstructure,
)
from miro_core._plugins import PluginHost, Registry, reset_plugins
from miro_core.cli import main

ROOT = Path(__file__).resolve().parents[1]
KINDS = ["rewards", "binners", "backbones", "guidance", "evaluators", "suites", "data_sources", "text_encoders", "autoencoders",
         "commands"]
_counter = itertools.count()


# ----------------------------------------------------------------------------------------------- helpers
@miro_core.config
class _Inner:
    depth: int = 2


@miro_core.config
class _FakeConfig:
    num_bins: int = 8
    inner: _Inner = attrs.field(factory=_Inner)


class _FakeBinner(miro_core.Binner):
    """A fake binner for registry tests."""

    name = "fake"
    Config = _FakeConfig

    def fit(self, scores):
        return {}

    def transform(self, scores, state):
        return scores


class _FakeBinner2(_FakeBinner):
    name = "fakes"


REWARD_SOURCE = """
import miro_core
from miro_core import hookimpl


class Shiny(miro_core.Reward):
    \"\"\"Mean brightness (test plugin).\"\"\"

    name = "{reward}"

    @miro_core.config
    class Config:
        gain: float = 1.0

    def score(self, images, prompts):
        return images.mean(dim=(1, 2, 3)) * self.config.gain


@hookimpl
def miro_register_rewards(register):
    register(Shiny)
"""


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A temporary site directory on sys.path where tests build installed distributions."""
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))

    def make(dist: str, version: str, source: str, *, ep: str | None = None, extra: dict[str, str] | None = None):
        n = next(_counter)
        module = f"miro_tplug_{os.getpid()}_{n}"
        ep = ep or f"tplug{n}"
        info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        (info / "entry_points.txt").write_text(f"[miro]\n{ep} = {module}\n")
        (root / f"{module}.py").write_text(textwrap.dedent(source).replace("{module}", module))
        for name, text in (extra or {}).items():
            (root / f"{name.replace('{module}', module)}.py").write_text(textwrap.dedent(text))
        return ep, module

    return make


@pytest.fixture
def fresh_global_host():
    reset_plugins()
    yield
    reset_plugins()


def _host(monkeypatch, *entry_points: str, builtins: bool = False) -> PluginHost:
    """A host with only these third-party entry points (and, with ``builtins``, miro's own)."""
    monkeypatch.setenv("MIRO_LOAD_PLUGINS", ",".join(entry_points))
    return PluginHost(builtins=builtins)


# ----------------------------------------------------------------------------------------------- registries
def test_registry_names_get_create():
    reg = Registry("binners", miro_core.Binner)
    reg.add(_FakeBinner, distribution="dist-a", version="1.0", plugin="a")
    reg.add(_FakeBinner2, distribution="dist-b", version="2.0", plugin="b")
    assert reg.names() == ["fake", "fakes"] and len(reg) == 2 and "fake" in reg
    got = reg.get("fake")
    assert (got.cls, got.distribution, got.version, got.plugin) == (_FakeBinner, "dist-a", "1.0", "a")
    assert got.as_dict()["summary"] == "A fake binner for registry tests."
    obj = reg.create("fake", {"num_bins": 5, "inner": {"depth": 3}})
    assert isinstance(obj, _FakeBinner) and obj.config == _FakeConfig(num_bins=5, inner=_Inner(depth=3))
    assert reg.create("fake").config == _FakeConfig()  # no options: defaults
    cfg = _FakeConfig(num_bins=4)
    assert reg.create("fake", cfg).config is cfg  # a Config instance passes through


def test_create_validates_options_with_field_paths():
    reg = Registry("binners", miro_core.Binner)
    reg.add(_FakeBinner)
    with pytest.raises(ConfigError, match=r"binners\.fake: unknown key\(s\) bogus; known keys: num_bins, inner"):
        reg.create("fake", {"bogus": 1})
    with pytest.raises(ConfigError, match=r"binners\.fake\.inner: unknown key\(s\) deep"):
        reg.create("fake", {"inner": {"deep": 1}})
    with pytest.raises(ConfigError, match=r"binners\.fake\.inner\.depth: .*expected an integer, got str 'x'"):
        reg.create("fake", {"inner": {"depth": "x"}})


def test_registry_rejects_invalid_components():
    reg = Registry("binners", miro_core.Binner)

    class Nameless(_FakeBinner):
        name = ""

    class NotABinner:
        name = "nope"
        Config = miro_core.EmptyConfig

    class NoConfig(_FakeBinner):
        name = "noconf"
        Config = None

    with pytest.raises(PluginLoadError, match="no string class attribute `name`"):
        reg.add(Nameless, distribution="d", plugin="p")
    with pytest.raises(PluginLoadError, match="does not subclass miro_core.interfaces.Binner"):
        reg.add(NotABinner, distribution="d", plugin="p")
    with pytest.raises(PluginLoadError, match="no attrs `Config`"):
        reg.add(NoConfig, distribution="d", plugin="p")


def test_duplicate_names_raise_naming_both_sources():
    reg = Registry("binners", miro_core.Binner)
    reg.add(_FakeBinner, distribution="dist-a", version="1.0", plugin="plug_a")

    class Again(_FakeBinner):
        name = "fake"

    with pytest.raises(DuplicateComponentError) as err:
        reg.add(Again, distribution="dist-b", version="2.0", plugin="plug_b")
    msg = str(err.value)
    assert "'fake'" in msg and "dist-a 1.0" in msg and "dist-b 2.0" in msg and "MIRO_LOAD_PLUGINS" in msg


def test_unknown_name_suggests_and_lists_available():
    reg = Registry("binners", miro_core.Binner)
    reg.add(_FakeBinner)
    reg.add(_FakeBinner2)
    with pytest.raises(UnknownComponentError) as err:
        reg.get("fakse")
    msg = str(err.value)
    assert "Unknown binner 'fakse'" in msg and "Did you mean 'fake" in msg and "Available binners: fake, fakes" in msg
    with pytest.raises(UnknownComponentError, match=r"Available binners: \(none registered\)"):
        Registry("binners").create("x")
    with pytest.raises(KeyError):  # UnknownComponentError is also a KeyError
        reg.get("zzz")


def test_unknown_kind(monkeypatch):
    host = _host(monkeypatch)
    with pytest.raises(UnknownComponentError, match="Did you mean 'binners'"):
        host["binner"]


# ----------------------------------------------------------------------------------------------- entry points
def test_entry_point_plugin_registers_with_distribution(site, monkeypatch):
    ep, module = site("shiny-dist", "1.2.3", REWARD_SOURCE.replace("{reward}", "shiny_a"))
    host = _host(monkeypatch, ep)
    reg = host["rewards"].get("shiny_a")
    assert (reg.distribution, reg.version, reg.plugin) == ("shiny-dist", "1.2.3", ep)
    reward = host["rewards"].create("shiny_a", {"gain": 2.0})
    import torch

    assert torch.allclose(reward.score(torch.ones(2, 3, 4, 4), ["a", "b"]), torch.full((2,), 2.0))
    assert all(len(host[k]) == 0 for k in KINDS if k != "rewards")  # nothing else loaded


def test_plugin_sub_modules_are_attributed_to_the_distribution(site, monkeypatch):
    source = 'miro_plugins = ["{module}_binner"]\n'
    sub = GOOD_BINNER.replace("{name}", "const_test")
    ep, module = site("sub-dist", "0.3", source, extra={"{module}_binner": sub})
    host = _host(monkeypatch, ep)
    reg = host["binners"].get("const_test")
    assert (reg.distribution, reg.version, reg.plugin) == ("sub-dist", "0.3", f"{module}_binner")


def _broken(host: PluginHost, ep: str):
    found = [b for b in host.broken if b.entry_point == ep]
    assert found, f"{ep} not reported broken: {host.broken}"
    return found[0]


GOOD_BINNER = """
import miro_core
from miro_core import hookimpl


class Const(miro_core.Binner):
    name = "{name}"

    @miro_core.config
    class Config:
        num_bins: int = 4

    def fit(self, scores):
        return {}

    def transform(self, scores, state):
        import numpy as np
        return np.zeros(np.shape(scores), dtype=np.int16)


@hookimpl
def miro_register_binners(register):
    register(Const)
"""


def test_failing_import_is_isolated_named_and_keeps_traceback(site, monkeypatch, caplog):
    import logging

    ep, module = site("broken-dist", "0.9", """
    import miro_core

    def _helper():
        raise RuntimeError("boom while importing")

    _helper()
    """)
    good, _ = site("good-dist", "1.0", REWARD_SOURCE.replace("{reward}", "shiny_ok"))
    with caplog.at_level(logging.WARNING, logger="miro_core._plugins"):
        host = _host(monkeypatch, ep, good)
    assert "shiny_ok" in host["rewards"]  # the other plugin is untouched
    b = _broken(host, ep)
    assert (b.distribution, b.version, b.stage) == ("broken-dist", "0.9", "import")
    assert f"entry point {ep!r}" in b.error and "broken-dist 0.9" in b.error and "RuntimeError: boom while importing" in b.error
    assert "uninstall" in b.error and "MIRO_LOAD_PLUGINS" in b.error  # the fix
    assert f"{module}.py" in b.traceback and "_helper()" in b.traceback
    assert "boom while importing" in caplog.text and "miro plugins" in caplog.text
    with pytest.raises(UnknownComponentError) as err:  # a lookup of what it might have provided says so
        host["rewards"].get("shiny_from_broken")
    assert ep in str(err.value) and "failed to load" in str(err.value) and "RuntimeError" in str(err.value)


def test_failing_sub_module_leaves_the_whole_plugin_out(site, monkeypatch):
    source = 'miro_plugins = ["{module}_binner", "{module}_missing_sub"]\n'
    ep, module = site("broken-sub", "1.0", source, extra={"{module}_binner": GOOD_BINNER.replace("{name}", "half_plugin")})
    host = _host(monkeypatch, ep)
    b = _broken(host, ep)
    assert b.stage == "import" and "_missing_sub" in b.error and "broken-sub 1.0" in b.error
    assert "ModuleNotFoundError" in b.error
    assert "half_plugin" not in host["binners"]  # no half-registered plugin


def test_hook_that_raises_is_isolated(site, monkeypatch):
    ep, _ = site("raising-dist", "1.0", """
    import miro_core
    from miro_core import hookimpl

    class Fine(miro_core.Binner):
        name = "fine_but_dropped"
        Config = miro_core.EmptyConfig
        def fit(self, scores):
            return {}
        def transform(self, scores, state):
            return scores

    @hookimpl
    def miro_register_binners(register):
        register(Fine)

    @hookimpl
    def miro_register_guidance(register):
        raise ValueError("cannot register today")
    """)
    good, _ = site("good-dist2", "1.0", REWARD_SOURCE.replace("{reward}", "shiny_ok2"))
    host = _host(monkeypatch, ep, good)
    b = _broken(host, ep)
    assert b.stage == "hook" and "miro_register_guidance" in b.error and "raising-dist 1.0" in b.error
    assert "cannot register today" in b.error and "ValueError" in b.traceback
    assert "fine_but_dropped" not in host["binners"] and "shiny_ok2" in host["rewards"]


def test_invalid_component_is_isolated(site, monkeypatch):
    ep, _ = site("nameless-dist", "0.1", """
    import miro_core
    from miro_core import hookimpl

    class NoName(miro_core.Reward):
        Config = miro_core.EmptyConfig
        def score(self, images, prompts):
            return images.mean(dim=(1, 2, 3))

    @hookimpl
    def miro_register_rewards(register):
        register(NoName)
    """)
    host = _host(monkeypatch, ep, builtins=True)
    b = _broken(host, ep)
    assert b.stage == "invalid component" and "no string class attribute `name`" in b.error
    assert "quantile" in host["binners"]


def test_hook_failures_in_miro_itself_or_in_code_still_raise(monkeypatch):
    import types

    mod = types.ModuleType("local_raising_plugin")

    @miro_core.hookimpl
    def miro_register_binners(register):
        raise ValueError("a bug in code added directly")

    mod.miro_register_binners = miro_register_binners
    monkeypatch.setenv("MIRO_LOAD_PLUGINS", "")
    with pytest.raises(PluginLoadError, match=r"(?s)miro_register_binners.*local_raising_plugin.*a bug in code"):
        PluginHost(extra_plugins=[(mod, "local_raising_plugin")], builtins=False)
    with pytest.raises(DuplicateComponentError, match="'fake'"):  # two in-process plugins, one name
        PluginHost(extra_plugins=[(_dup_module("a"), "a"), (_dup_module("b"), "b")], builtins=False)


def _dup_module(suffix: str):
    import types

    m = types.ModuleType(f"local_dup_plugin_{suffix}")

    @miro_core.hookimpl
    def miro_register_binners(register):
        register(_FakeBinner)

    m.miro_register_binners = miro_register_binners
    return m


def test_same_name_from_two_distributions_makes_only_that_name_unusable(site, monkeypatch):
    extra = GOOD_BINNER.replace("{name}", "first_only_binner")
    src1 = REWARD_SOURCE.replace("{reward}", "shiny_dup") + "\nmiro_plugins = ['{module}_b']\n"
    ep1, _ = site("first-dist", "1.0", src1, extra={"{module}_b": extra})
    ep2, _ = site("second-dist", "2.0", REWARD_SOURCE.replace("{reward}", "shiny_dup"))
    host = _host(monkeypatch, ep1, ep2, builtins=True)
    with pytest.raises(DuplicateComponentError) as err:
        host["rewards"].get("shiny_dup")
    msg = str(err.value)
    assert "'shiny_dup'" in msg and "first-dist 1.0" in msg and "second-dist 2.0" in msg and "MIRO_LOAD_PLUGINS" in msg
    assert "shiny_dup" not in host["rewards"].names()
    assert "first_only_binner" in host["binners"] and "aesthetic" in host["rewards"]  # everything else works
    assert {b.distribution for b in host.broken if b.stage == "duplicate name"} == {"first-dist", "second-dist"}
    assert "shiny_dup" in _host(monkeypatch, ep2)["rewards"]  # restricting loading resolves it


def test_a_plugin_shadowing_a_builtin_name_is_reported_not_fatal(site, monkeypatch):
    ep, _ = site("shadow-dist", "0.1", GOOD_BINNER.replace("{name}", "quantile"))
    host = _host(monkeypatch, ep, builtins=True)
    with pytest.raises(DuplicateComponentError, match=r"(?s)(?=.*'quantile')(?=.*miro 0\.1\.0)(?=.*shadow-dist 0\.1)"):
        host["binners"].get("quantile")
    assert "uniform" in host["binners"]
    assert _broken(host, ep).stage == "duplicate name"


def test_miro_load_plugins_empty_loads_no_third_party_but_every_builtin(site, monkeypatch):
    site("broken-dist2", "0.1", "raise ImportError('must not be imported')\n")
    host = _host(monkeypatch, builtins=True)  # MIRO_LOAD_PLUGINS="": no third-party entry point
    assert "hasler_colorfulness" not in host["rewards"] and "zscore" not in host["binners"]
    for kind in KINDS:  # every built-in component is there, from the miro distribution
        assert len(host[kind]) > 0, kind
        assert {r.distribution for r in host[kind]} == {"miro"}, kind
    assert {"quantile", "uniform", "refined_quantile"} <= set(host["binners"].names())
    assert {"score", "bin", "plugins", "store info", "train"} <= set(host["commands"].names())
    isolated = _host(monkeypatch)  # builtins=False (tests only): nothing at all
    assert all(len(isolated[k]) == 0 for k in KINDS)


def test_miro_plugins_works_with_empty_miro_load_plugins(monkeypatch, capsys, fresh_global_host):
    """The issue's report: `MIRO_LOAD_PLUGINS= miro plugins` failed with "invalid choice"."""
    monkeypatch.setenv("MIRO_LOAD_PLUGINS", "")
    assert main(["plugins", "--json", "--kind", "binners"]) == 0
    names = [i["name"] for i in json.loads(capsys.readouterr().out)["binners"]]
    assert "quantile" in names and "zscore" not in names


def test_miro_load_plugins_unknown_name_warns(monkeypatch, caplog):
    import logging

    with caplog.at_level(logging.WARNING, logger="miro_core._plugins"):
        _host(monkeypatch, "no_such_plugin_xyz", builtins=True)
    assert "no_such_plugin_xyz" in caplog.text and "miro_example" in caplog.text


def test_miro_load_plugins_list_loads_only_those(site, monkeypatch):
    good, _ = site("good-dist", "1.0", REWARD_SOURCE.replace("{reward}", "shiny_only"))
    site("broken-dist3", "0.1", "raise ImportError('must not be imported')\n")
    host = _host(monkeypatch, good, "miro_example")
    assert host["rewards"].names() == ["hasler_colorfulness", "shiny_only"]
    assert host["binners"].names() == ["zscore"]
    assert host["commands"].names() == []  # builtins=False: miro's own commands were not loaded either
    monkeypatch.setenv("MIRO_LOAD_PLUGINS", f" {good} , ,")  # spaces and empty items are ignored
    assert PluginHost(builtins=False)["rewards"].names() == ["shiny_only"]
    with_builtins = PluginHost()["rewards"]  # the default: built-ins + the listed third-party plugin
    assert "shiny_only" in with_builtins and "aesthetic" in with_builtins
    assert "world_sharpness" not in with_builtins  # the world is a plugin like any other
    assert ("miro_world", "miro-world", "0.1.0") in PluginHost().skipped
    assert "hasler_colorfulness" not in with_builtins


def test_misspelled_hook_is_reported_with_a_suggestion(site, monkeypatch):
    ep, module = site("typo-dist", "0.2", """
    from miro_core import hookimpl

    @hookimpl
    def miro_register_reward(register):
        pass
    """)
    host = _host(monkeypatch, ep)
    b = _broken(host, ep)
    assert b.stage == "unknown hook"
    assert "miro_register_reward" in b.error and "typo-dist 0.2" in b.error and "Did you mean 'miro_register_rewards'" in b.error


def test_misspelled_hook_in_code_still_raises(monkeypatch):
    import types

    mod = types.ModuleType("local_typo")

    @miro_core.hookimpl
    def miro_register_binner(register):
        pass

    mod.miro_register_binner = miro_register_binner
    monkeypatch.setenv("MIRO_LOAD_PLUGINS", "")
    with pytest.raises(PluginLoadError, match="Did you mean 'miro_register_binners'"):
        PluginHost(extra_plugins=[(mod, "local_typo")], builtins=False)


def test_extra_plugins_register_as_local(monkeypatch):
    import types

    mod = types.ModuleType("local_test_plugin")

    @miro_core.hookimpl
    def miro_register_binners(register):
        register(_FakeBinner)

    mod.miro_register_binners = miro_register_binners
    monkeypatch.setenv("MIRO_LOAD_PLUGINS", "")
    host = PluginHost(extra_plugins=[(mod, "local")], builtins=False)
    reg = host["binners"].get("fake")
    assert reg.distribution == "<local>" and reg.plugin == "local"


# ----------------------------------------------------------------------------------------------- the command
def _plugins_json(capsys, *args) -> dict:
    assert main(["plugins", "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_miro_plugins_json(monkeypatch, capsys, fresh_global_host):
    monkeypatch.setenv("MIRO_LOAD_PLUGINS", "miro_core,miro_example")
    data = _plugins_json(capsys)
    assert list(data) == [*KINDS, "broken"] and data["broken"] == []
    for kind, items in data.items():
        for item in items:
            assert {"name", "distribution", "version"} <= set(item), (kind, item)
    by_name = {(k, i["name"]): i for k, items in data.items() for i in items}
    for key in [("rewards", "hasler_colorfulness"), ("binners", "zscore")]:
        assert by_name[key]["distribution"] == "miro-example-plugin" and by_name[key]["version"] == "0.1.0"
    assert by_name[("commands", "plugins")]["distribution"] == "miro"
    assert _plugins_json(capsys, "--kind", "binners") == {"binners": data["binners"], "broken": []}


def test_miro_plugins_text(monkeypatch, capsys, fresh_global_host):
    monkeypatch.setenv("MIRO_LOAD_PLUGINS", "miro_core,miro_example")
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    n_rewards = len(miro_core.registry("rewards"))
    assert n_rewards > 1 and re.search(rf"^rewards \({n_rewards}\)$", out, re.M)
    assert re.search(r"^  hasler_colorfulness +\[miro-example-plugin 0\.1\.0\]  Hasler-Suesstrunk", out, re.M)
    assert re.search(r"^  quantile +\[miro 0\.1\.0\]", out, re.M)
    assert main(["plugins", "--kind", "binner"]) == 2
    assert "Did you mean 'binners'" in capsys.readouterr().err


def test_cli_works_and_miro_plugins_lists_a_broken_plugin(site, monkeypatch, capsys, fresh_global_host, tmp_path):
    """The issue's report: an entry point that fails to import took the whole CLI down."""
    ep, _ = site("cmd-broken-dist", "0.4", "import miro_core\nraise ImportError('needs libfoo 2')\n")
    monkeypatch.setenv("MIRO_LOAD_PLUGINS", f"{ep},miro_example")
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert re.search(rf"^broken plugins \(1\)", out, re.M) and ep in out and "cmd-broken-dist 0.4" in out
    assert "needs libfoo 2" in out and "hasler_colorfulness" in out
    assert re.search(r"^not loaded \(MIRO_LOAD_PLUGINS\): .*miro_world \[miro-world", out, re.M)
    data = _plugins_json(capsys)
    (b,) = data["broken"]
    assert (b["entry_point"], b["distribution"], b["stage"]) == (ep, "cmd-broken-dist", "import")
    assert "ImportError: needs libfoo 2" in b["traceback"]
    # a real command that does not need the broken plugin still works
    assert main(["new-plugin", "iso_reward", "--kind", "reward", "--out", str(tmp_path / "pkg")]) == 0
    assert (tmp_path / "pkg").is_dir()


def test_all_installed_plugins_load_together(fresh_global_host, monkeypatch):
    """Every installed distribution loads at once (no duplicates, no broken imports, no unknown hooks)."""
    monkeypatch.delenv("MIRO_LOAD_PLUGINS", raising=False)
    binners = miro_core.registry("binners")
    for name in ["quantile", "uniform", "refined_quantile"]:
        assert binners.get(name).distribution == "miro"
    assert binners.get("zscore").distribution == "miro-example-plugin"
    assert miro_core.registry("rewards").get("hasler_colorfulness").distribution == "miro-example-plugin"
    # every registered component's default config round-trips through the converter
    for kind in KINDS:
        for reg in miro_core.registry(kind):
            try:
                default = reg.cls.Config()
            except TypeError:  # a required field (e.g. a weights path): nothing to round-trip
                continue
            data = json.loads(json.dumps(unstructure(default)))
            assert structure(data, reg.cls.Config) == default, (kind, reg.name)


def test_console_script(tmp_path):
    exe = Path(sys.executable).with_name("miro")
    env = dict(os.environ, MIRO_LOAD_PLUGINS="miro_world,miro_example")
    proc = subprocess.run([str(exe), "plugins", "--json", "--kind", "rewards"], capture_output=True, text=True,
                          env=env, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    names = [i["name"] for i in json.loads(proc.stdout)["rewards"]]
    assert "hasler_colorfulness" in names and "world_sharpness" in names and "shiny_only" not in names


# ----------------------------------------------------------------------------------------------- docs
def _hookspec_signatures() -> dict[str, str]:
    return {
        name: str(inspect.signature(fn))
        for name, fn in vars(_hookspecs).items()
        if callable(fn) and hasattr(fn, "miro_spec")
    }


def test_docs_list_exactly_the_hooks():
    text = (ROOT / "docs" / "plugins.md").read_text()
    documented = dict(re.findall(r"^### `(miro_\w+)(\(.*?\))`", text, re.M))
    specs = _hookspec_signatures()
    assert documented == specs
    assert set(specs) == set(_hookspecs.HOOK_KINDS.values())
    for name, fn in vars(_hookspecs).items():
        if name in specs:
            assert fn.__doc__, f"hookspec {name} needs a docstring"


def _doc_blocks(page: str, lang: str) -> list[str]:
    text = (ROOT / "docs" / page).read_text()
    return re.findall(rf"^```{lang}\n(.*?)^```", text, re.M | re.S)


def test_configuration_doc_examples_run(tmp_path, monkeypatch, fresh_global_host):
    """The python blocks of docs/configuration.md run, in order, in one namespace."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MIRO_LOAD_PLUGINS", "miro_rewards")
    blocks = _doc_blocks("configuration.md", "python")
    assert len(blocks) >= 3
    import types

    module = types.ModuleType("miro_docs_configuration")  # a real module: attrs resolves annotations in it
    monkeypatch.setitem(sys.modules, module.__name__, module)
    for block in blocks:
        exec(compile(block, "docs/configuration.md", "exec"), module.__dict__)  # noqa: S102 - our own docs


def test_configuration_doc_console_commands(monkeypatch, capsys, fresh_global_host):
    """Each ``$ miro ...`` command shown in docs/configuration.md runs and prints what the doc shows."""
    monkeypatch.setenv("MIRO_LOAD_PLUGINS", "miro_core,miro_rewards")
    blocks = _doc_blocks("configuration.md", "console")
    assert blocks
    for block in blocks:
        lines = block.splitlines()
        command = lines[0]
        assert command.startswith("$ miro ")
        expected = [ln for ln in lines[1:] if ln.strip()]
        rc = main(command[len("$ miro "):].split())
        captured = capsys.readouterr()
        out = (captured.out + captured.err).splitlines()
        for line in expected:
            if line.strip() == "...":
                continue
            assert line in out, (command, line, out)
        assert rc == (2 if expected and expected[0].startswith("error:") else 0)


# ----------------------------------------------------------------------------------------------- config
@miro_core.config
class _Optim:
    lr: float = 1e-3
    betas: list[float] = attrs.field(factory=lambda: [0.9, 0.99])
    amsgrad: bool = False


@miro_core.config
class _Train:
    steps: int = 100
    optim: _Optim = attrs.field(factory=_Optim)
    log_dir: str | None = None


@miro_core.config
class _Run:
    name: str
    train: _Train = attrs.field(factory=_Train)
    weights: dict[str, float] = attrs.field(factory=dict)


def _error(data, cls=_Run) -> str:
    with pytest.raises(ConfigError) as err:
        structure(data, cls)
    return str(err.value)


def test_config_is_frozen_and_kw_only():
    run = structure({"name": "a"}, _Run)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        run.name = "b"
    with pytest.raises(TypeError):
        _Optim(0.1)  # keyword-only


def test_config_unknown_keys_at_every_level():
    msg = _error({"name": "a", "bogus": 1, "train": {"optim": {"lrr": 3}}})
    assert "config: unknown key(s) bogus; known keys: name, train, weights" in msg
    assert "config.train.optim: unknown key(s) lrr; known keys: lr, betas, amsgrad" in msg


def test_config_wrong_types_with_nested_paths():
    assert "config.train.optim.lr: TypeError: expected a number, got str 'fast'" in _error(
        {"name": "a", "train": {"optim": {"lr": "fast"}}})
    assert "config.train.optim.betas[1]: TypeError: expected a number, got str 'x'" in _error(
        {"name": "a", "train": {"optim": {"betas": [0.9, "x"]}}})
    assert "config.weights['aesthetic']: TypeError: expected a number, got str 'high'" in _error(
        {"name": "a", "weights": {"aesthetic": "high"}})
    assert "config.train.steps: TypeError: expected an integer, got float 1.5" in _error({"name": "a", "train": {"steps": 1.5}})
    assert "config.train.steps: TypeError: expected an integer, got bool True" in _error({"name": "a", "train": {"steps": True}})
    assert "config.train.optim.amsgrad: TypeError: expected true or false, got str 'false'" in _error(
        {"name": "a", "train": {"optim": {"amsgrad": "false"}}})
    assert "config.name: TypeError: expected a string, got int 5" in _error({"name": 5})
    assert "config.name: required field missing" in _error({})
    both = _error({"name": "a", "train": {"steps": "x", "optim": {"lr": None}}})  # every problem at once
    assert "config.train.steps" in both and "config.train.optim.lr" in both


def test_config_accepts_lossless_values():
    import numpy as np

    run = structure({"name": "a", "train": {"steps": 5e5, "log_dir": Path("/tmp/x"),
                                            "optim": {"lr": 3, "betas": [np.float32(0.5), 1]}}}, _Run)
    assert run.train.steps == 500000 and isinstance(run.train.steps, int)
    assert run.train.optim.lr == 3.0 and isinstance(run.train.optim.lr, float)
    assert run.train.log_dir == "/tmp/x" and run.train.optim.betas == [0.5, 1.0]
    assert structure(unstructure(run), _Run) == run


def test_load_toml_and_overrides(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('name = "demo"\n[train]\nsteps = 10\n[train.optim]\nlr = 1e-3\n')
    data = apply_overrides(load_toml(path), ["train.optim.lr=3e-4", "train.optim.amsgrad=true",
                                             "train.log_dir=runs/demo", "weights.aesthetic=2", "train.steps=20"])
    run = structure(data, _Run)
    assert run == _Run(name="demo", train=_Train(steps=20, optim=_Optim(lr=3e-4, amsgrad=True), log_dir="runs/demo"),
                       weights={"aesthetic": 2.0})
    assert load_toml(path)["train"]["optim"]["lr"] == 1e-3  # overrides return a copy
    assert apply_overrides({"a": 1}, {"b.c": [1, 2]}) == {"a": 1, "b": {"c": [1, 2]}}
    with pytest.raises(ConfigError, match="not of the form key.path=value"):
        apply_overrides({}, ["train.lr"])
    with pytest.raises(ConfigError, match="'name' is not a table"):
        apply_overrides({"name": "x"}, ["name.first=1"])
    with pytest.raises(ConfigError, match=r"config\.train\.optim: unknown key\(s\) lrate"):
        structure(apply_overrides(load_toml(path), ["train.optim.lrate=1"]), _Run)


def test_load_toml_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_toml(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("name = \n")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_toml(bad)


# ----------------------------------------------------------------------------------------------- every hook
_HOOK_BASES = {
    "rewards": "Reward", "binners": "Binner", "backbones": "Backbone", "guidance": "Guidance",
    "evaluators": "Evaluator", "suites": "Suite", "data_sources": "DataSource", "text_encoders": "TextEncoder",
    "autoencoders": "Autoencoder", "commands": "Command",
}


def test_every_hook_registers_through_an_installed_entry_point(site, monkeypatch, capsys, fresh_global_host):
    """Each hook in docs/plugins.md works end to end: an installed distribution implementing it gets its component
    into the registry of that kind (attributed to the distribution) and into `miro plugins --json`."""
    assert set(_HOOK_BASES) == set(_hookspecs.HOOK_KINDS)
    eps = []
    for kind, hook in _hookspecs.HOOK_KINDS.items():
        name = f"hookcheck {kind}" if kind == "commands" else f"hookcheck_{kind}"
        ep, _ = site(f"hook-{kind.replace('_', '-')}", "0.0.1", f"""
        import miro_core
        from miro_core import hookimpl


        class C(miro_core.{_HOOK_BASES[kind]}):
            \"\"\"Registered by the {hook} check.\"\"\"

            name = "{name}"
            Config = miro_core.EmptyConfig


        @hookimpl
        def {hook}(register):
            register(C)
        """)
        eps.append(ep)
    host = _host(monkeypatch, *eps)
    assert host.broken == []
    for kind in _hookspecs.HOOK_KINDS:
        name = f"hookcheck {kind}" if kind == "commands" else f"hookcheck_{kind}"
        assert host[kind].names() == [name], kind
        assert host[kind].get(name).distribution == f"hook-{kind.replace('_', '-')}"
    monkeypatch.setenv("MIRO_LOAD_PLUGINS", ",".join(eps))
    data = _plugins_json(capsys)
    for kind in _hookspecs.HOOK_KINDS:
        assert any(i["name"].startswith("hookcheck") for i in data[kind]), kind


def test_a_command_that_fails_to_build_does_not_take_the_cli_down(site, monkeypatch, capsys, fresh_global_host):
    ep, _ = site("badcmd-dist", "0.2", """
    import miro_core
    from miro_core import hookimpl


    class Cmd(miro_core.Command):
        name = "badcmd"
        help = "a command whose arguments cannot be built"

        def add_arguments(self, parser):
            parser.add_argument("--x", type=int, default="not an int", choices="bad")
            raise RuntimeError("argument table is corrupt")

        def run(self, args):
            return 0


    @hookimpl
    def miro_register_commands(register):
        register(Cmd)
    """)
    monkeypatch.setenv("MIRO_LOAD_PLUGINS", ep)
    assert main(["plugins", "--kind", "rewards"]) == 0
    out = capsys.readouterr()
    assert "broken plugins (1)" in out.out and "badcmd-dist 0.2" in out.out and "argument table is corrupt" in out.out
    assert main(["badcmd", "--x", "1"]) == 2
    err = capsys.readouterr().err
    assert "error: Command 'badcmd'" in err and "badcmd-dist 0.2" in err and "RuntimeError: argument table is corrupt" in err
