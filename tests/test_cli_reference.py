"""docs/cli.md is generated from the live parsers; this keeps it true."""

from pathlib import Path

from miro_core.cli._reference import render_reference

DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


def test_cli_reference_is_current(monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    assert DOC.read_text() == render_reference(), (
        "docs/cli.md is out of date: run `python -m miro_core.cli._reference > docs/cli.md`"
    )


def test_every_command_documented():
    from miro_core import registry

    text = DOC.read_text()
    for name in registry("commands").names():
        assert f"## `miro {name}`" in text
