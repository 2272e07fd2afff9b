"""End-to-end smoke test: ``miro-run --preset tiny`` on the built-in world (< 2 minutes on 2 CPU cores)."""

from __future__ import annotations

import json

import pytest

from miro_eval.run import main

WORLD_REWARDS = ["world_sharpness", "world_cleanliness", "world_vividness", "world_alignment"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("miro-run") / "out"
    rc = main(["--preset", "tiny", "--out", str(out), "--no-progress"])
    assert rc == 0
    return out


def test_out_folder_contents(tiny_run):
    out = tiny_run
    for rel in ("report.md", "metrics.json", "config.json", "store.zarr", "samples/miro.png", "samples/baseline.png",
                "samples/prompts.txt", "plots/models.png", "plots/convergence.png", "plots/radar.png"):
        assert (out / rel).exists(), rel
    for model in ("miro", "baseline"):
        ckpts = list((out / "models" / model / "checkpoints").glob("step_*"))
        assert ckpts, f"no checkpoint for {model}"
        assert list((out / "models" / model / "tb").glob("events.out.tfevents.*")), f"no TensorBoard log for {model}"
    assert (out / "samples" / "miro.png").read_bytes()[:4] == b"\x89PNG"


def test_metrics_json(tiny_run):
    m = json.loads((tiny_run / "metrics.json").read_text())
    for key in ("config", "preset", "reward_table", "models", "comparison", "convergence", "timings", "checkpoints", "headline"):
        assert key in m, key
    assert m["preset"] == "tiny"
    assert m["reward_table"]["rows"] == 64
    assert set(m["reward_table"]["rewards"]) == set(WORLD_REWARDS)
    for model in ("miro", "baseline"):
        for r in WORLD_REWARDS:
            assert isinstance(m["models"][model][f"{r}/mean"], float)
        assert 0.0 <= m["models"][model]["geneval/overall"] <= 1.0
    assert m["model_rewards"] == {"miro": WORLD_REWARDS, "baseline": []}
    speed = m["convergence"]["speedup"]
    assert set(speed) == {f"{r}/mean" for r in WORLD_REWARDS}
    for v in speed.values():
        assert v["speedup"] is None or v["speedup"] > 0
    curves = m["convergence"]["curves"]["miro"]["world_alignment/mean"]
    assert curves["steps"] == [3.0, 6.0]


def test_report_md(tiny_run):
    text = (tiny_run / "report.md").read_text()
    assert text.startswith("# MIRO run (tiny)")
    for section in ("## Reward table", "## Models", "## Samples", "## Convergence", "## Artifacts and timings"):
        assert section in text
    assert "| miro | world_sharpness, world_cleanliness, world_vividness, world_alignment |" in text
    assert "![reward vs step](plots/convergence.png)" in text
    # the compositional table carries each model's overall score and its standard error, as in metrics.json
    from miro_eval.report import format_value

    m = json.loads((tiny_run / "metrics.json").read_text())
    lines = text.splitlines()
    header = next(i for i, ln in enumerate(lines) if ln.startswith("| model |") and "| overall | ± SE |" in ln)
    rows = {}
    for ln in lines[header + 2:]:  # the rows of that table, up to its end
        if not ln.startswith("| "):
            break
        rows[ln.split("|")[1].strip()] = ln
    for model in ("miro", "baseline"):
        overall, se = m["models"][model]["geneval/overall"], m["models"][model]["geneval/overall_stderr"]
        assert rows[model].endswith(f"| {format_value(overall, 4)} | {format_value(se, 4)} |"), rows[model]


def test_rerun_reuses_finished_phases(tiny_run, capsys):
    out = tiny_run

    def files(*parts):
        root = out.joinpath(*parts)
        return {p.relative_to(out): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}

    models_before, eval_before = files("models"), files("eval")
    scored_before = json.loads((out / "metrics.json").read_text())["reward_table"]
    assert models_before and eval_before
    assert main(["--preset", "tiny", "--out", str(out), "--no-progress"]) == 0
    # nothing of training (checkpoints, logs, results) or of the evaluation was rewritten: both were reused
    assert files("models") == models_before
    assert files("eval") == eval_before
    m = json.loads((out / "metrics.json").read_text())
    assert m["scoring"]["rows_processed"] == 0  # the store was complete: nothing rescored
    assert m["reward_table"] == scored_before
    assert "report:" in capsys.readouterr().out


def test_switching_ddp_and_fsdp_reuses_the_trained_models(tiny_run):
    """``train.parallel`` says how ranks share the work, not what is trained: it is not part of the model key."""
    out = tiny_run
    before = {p: p.stat().st_mtime_ns for p in (out / "models").rglob("*") if p.is_file()}
    assert main(["--preset", "tiny", "--out", str(out), "--no-progress", "--set", "train.parallel=fsdp"]) == 0
    assert {p: p.stat().st_mtime_ns for p in (out / "models").rglob("*") if p.is_file()} == before
