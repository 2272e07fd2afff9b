"""``miro eval`` and the suite machinery: registered suites, a TOML-only suite, a third-party plugin suite, --images
in GenEval's and a flat layout, PartiPrompts parsing, resumable generation, best-of-N and the world suite."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from miro_core import Reward, Suite, config, hookimpl, structure
from miro_core._plugins import reset_plugins
from miro_core.cli import main
from miro_core.sampling import MiroPipeline
from miro_core.training import train

from _miro_train_fakes import make_host, make_store, tiny_config

SUITE_MODULES = ("miro_eval.suites.rewards", "miro_eval.suites.partiprompts", "miro_eval.suites.best_of_n",
                 "miro_eval.suites.world", "miro_eval.suites.evaluators", "miro_eval.suites.geneval",
                 "miro_eval.reward_scores", "miro_core.cli.eval_cmd", "miro_world.rewards.sharpness",
                 "miro_world.rewards.vividness", "miro_world.rewards.cleanliness", "miro_world.rewards.alignment",
                 "miro_world.geneval", "miro_world.source", "miro_models.text_encoders.minilm",
                 "miro_eval.suites.controllability")


class Brightness(Reward):
    """Mean pixel value (ignores text); counts the images it scored."""

    name = "test_brightness"
    uses_text = False
    scored = 0

    def score(self, images, prompts):
        Brightness.scored += len(images)
        return images.float().mean(dim=(1, 2, 3))


class PromptLength(Reward):
    """Length of the prompt (NaN for prompts containing 'fail')."""

    name = "test_prompt_length"

    def score(self, images, prompts):
        return torch.tensor([float("nan") if "fail" in p else float(len(p)) for p in prompts])


class FakePick(Brightness):
    """Stands in for the `pick` reward the tiny checkpoint is conditioned on (brightness)."""

    name = "pick"


class CountingSuite(Suite):
    """A third-party suite: counts the images of a folder (plugin test)."""

    name = "test_count_images"

    @config
    class Config:
        factor: int = 1

    def run(self, out, *, pipeline=None, images=None, progress=None):
        from miro_eval.report import write_json
        from miro_eval.suites import read_image_folder

        data = {"suite": self.name, "metrics": {"images": self.config.factor * len(read_image_folder(images))}}
        Path(out).mkdir(parents=True, exist_ok=True)
        write_json(Path(out) / "metrics.json", data)
        return data


third_party = types.ModuleType("miro_test_third_party")


@hookimpl
def miro_register_suites(register):
    register(CountingSuite)


@hookimpl
def miro_register_rewards(register):
    register(Brightness)
    register(PromptLength)
    register(FakePick)


third_party.miro_register_suites = miro_register_suites
third_party.miro_register_rewards = miro_register_rewards
sys.modules[third_party.__name__] = third_party


@pytest.fixture(scope="module")
def host():
    h = make_host(with_binner=True, extra=SUITE_MODULES)
    h.add_plugin(third_party, name="miro_test_third_party", distribution="miro-test-plugin", version="9.9")
    h._check_pending()
    for reg in h.registries.values():  # rebuild the registries with the plugin included
        reg._items.clear()
    h._collect()
    reset_plugins(h)
    yield h
    reset_plugins(None)


@pytest.fixture(scope="module")
def ckpt(host, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("eval_ckpt")
    return train(tiny_config(tmp, steps=2, checkpoint_every=0), tmp / "out", store=make_store(), progress=False).checkpoint_dir


@pytest.fixture(scope="module")
def pipe(ckpt):
    return MiroPipeline.from_checkpoint(ckpt)


def make(cls, **options):
    """A suite from plain options, validated as the CLI does."""
    return cls(structure(options, cls.Config))


def _run(argv, capsys):
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 0, err
    return out


# -- registry and plugins ---------------------------------------------------------------------------------------------
def test_suites_are_listed_with_their_plugins(host, capsys):
    out = _run(["plugins", "--json", "--kind", "suites"], capsys)
    items = {i["name"]: i for i in json.loads(out)["suites"]}
    for name in ("world", "rewards", "geneval", "partiprompts", "best_of_n", "evaluators", "controllability",
                 "test_count_images"):
        assert name in items, name
    assert items["test_count_images"]["distribution"] == "miro-test-plugin"
    assert items["test_count_images"]["version"] == "9.9"


def test_third_party_suite_runs_through_miro_eval(host, tmp_path, capsys):
    imgs = tmp_path / "flat"
    imgs.mkdir()
    from miro_eval.suites import save_png

    for i in range(3):
        save_png(np.zeros((4, 4, 3), np.uint8), imgs / f"x{i}.png")
        (imgs / f"x{i}.txt").write_text(f"prompt {i}\n")
    _run(["eval", "--suite", "test_count_images", "--images", str(imgs), "--out", str(tmp_path / "o"),
          "--set", "factor=2", "--no-progress"], capsys)
    assert json.loads((tmp_path / "o" / "metrics.json").read_text())["metrics"] == {"images": 6}


def test_unknown_suite_and_bad_option_errors(host, capsys):
    assert main(["eval", "--suite", "genevall", "--images", "x"]) == 2
    assert "Did you mean 'geneval'" in capsys.readouterr().err
    assert main(["eval", "--suite", "rewards", "--set", "rewardz=[]", "--print-config"]) == 2
    assert "rewardz" in capsys.readouterr().err


# -- PartiPrompts -----------------------------------------------------------------------------------------------------
PARTI_TSV = (
    "Prompt\tCategory\tChallenge\tNote\n"
    "bond\tAbstract\tBasic\tBiology-inspired concepts with multiple meanings\n"
    'A robot painted as graffiti on a brick wall. The words "Fly an airplane" are written on the wall.\tOutdoor Scenes\tComplex\t\n'
    '"Good Morning" written in script\tIllustrations\tWriting & Symbols\t\n'
    "a statue flying over the city of Mars. \tWorld Knowledge\tComplex\t\n"
    "  a cat  \t Animals \t Basic \t\n"
    "\n"
)


def test_partiprompts_parsing_quotes_and_whitespace(tmp_path):
    from miro_eval.suites.partiprompts import read_partiprompts

    path = tmp_path / "PartiPrompts.tsv"
    path.write_text(PARTI_TSV)
    recs = read_partiprompts(str(path))
    assert [r["prompt"] for r in recs] == [
        "bond",
        'A robot painted as graffiti on a brick wall. The words "Fly an airplane" are written on the wall.',
        '"Good Morning" written in script',  # a leading quote is text, not a quoted field swallowing the line
        "a statue flying over the city of Mars.",
        "a cat",
    ]
    assert [r["category"] for r in recs] == ["Abstract", "Outdoor Scenes", "Illustrations", "World Knowledge", "Animals"]
    assert recs[2]["challenge"] == "Writing & Symbols" and recs[4]["challenge"] == "Basic"
    # any fsspec URL
    import fsspec

    with fsspec.open("memory://parti/PartiPrompts.tsv", "wt") as f:
        f.write(PARTI_TSV)
    assert read_partiprompts("memory://parti/PartiPrompts.tsv") == recs


def test_partiprompts_header_whitespace_and_crlf(tmp_path):
    """A header cell with surrounding spaces and Windows line endings still names the columns; no field keeps a
    stray space or carriage return."""
    from miro_eval.suites.partiprompts import read_partiprompts

    path = tmp_path / "parti_crlf.tsv"
    path.write_bytes(" Prompt \tCategory \tChallenge\tNote\r\n\"Quoted\" start \tArt\t Basic\t\r\n".encode())
    recs = read_partiprompts(str(path))
    assert recs == [{"prompt": '"Quoted" start', "category": "Art", "challenge": "Basic", "note": ""}]


def test_partiprompts_suite_per_category_and_challenge(host, tmp_path, pipe):
    from miro_eval.suites.partiprompts import PartiPromptsSuite

    path = tmp_path / "PartiPrompts.tsv"
    path.write_text(PARTI_TSV)
    suite = make(PartiPromptsSuite, prompt_file=str(path), rewards=["test_prompt_length"], sampling={"num_steps": 2},
                 device="cpu")
    res = suite.run(tmp_path / "out", pipeline=pipe)
    lengths = [len(r["prompt"]) for r in __import__("miro_eval.suites.partiprompts", fromlist=["x"]).read_partiprompts(str(path))]
    assert res["metrics"]["test_prompt_length/mean"] == pytest.approx(np.mean(lengths))
    assert res["metrics"]["test_prompt_length/std"] == pytest.approx(np.std(lengths))
    by_cat = res["breakdown"]["category"]
    assert set(by_cat) == {"Abstract", "Outdoor Scenes", "Illustrations", "World Knowledge", "Animals"}
    assert by_cat["Abstract"]["test_prompt_length"] == {"mean": 4.0, "std": 0.0, "n": 1}
    assert res["breakdown"]["challenge"]["Complex"]["test_prompt_length"]["n"] == 2
    report = (tmp_path / "out" / "report.md").read_text()
    assert "### By category" in report and "### By challenge" in report


# -- rewards suite, resumable generation -----------------------------------------------------------------------------
class CountingPipe:
    """Wraps a pipeline; counts generated images; raises after ``fail_after`` batches (a killed eval)."""

    def __init__(self, pipe, fail_after=None):
        self.pipe, self.fail_after, self.images, self.batches = pipe, fail_after, 0, 0
        self.metadata = pipe.metadata

    def __call__(self, prompts, **kw):
        if self.fail_after is not None and self.batches >= self.fail_after:
            raise KeyboardInterrupt
        self.batches += 1
        self.images += len(prompts)
        return self.pipe.generate(prompts, **kw)


def _png_bytes(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(Path(root).rglob("*.png"))}


def test_killed_eval_resumes_with_the_images_already_written(host, tmp_path, pipe):
    from miro_eval.suites.rewards import RewardsSuite

    opts = dict(rewards=["test_brightness"], prompts=[f"a red square {i}" for i in range(5)], images_per_prompt=2,
                batch_size=3, sampling={"num_steps": 2}, device="cpu")
    full = make(RewardsSuite, **opts).run(tmp_path / "full", pipeline=CountingPipe(pipe))
    killed = CountingPipe(pipe, fail_after=2)
    with pytest.raises(KeyboardInterrupt):
        make(RewardsSuite, **opts).run(tmp_path / "resumed", pipeline=killed)
    assert killed.images == 6 and len(_png_bytes(tmp_path / "resumed" / "images")) == 6
    resumed = CountingPipe(pipe)
    res = make(RewardsSuite, **opts).run(tmp_path / "resumed", pipeline=resumed)
    assert resumed.images == 4  # only the missing images
    assert _png_bytes(tmp_path / "resumed" / "images") == _png_bytes(tmp_path / "full" / "images")
    assert res["metrics"] == full["metrics"]
    again = CountingPipe(pipe)
    before = Brightness.scored
    make(RewardsSuite, **opts).run(tmp_path / "resumed", pipeline=again)
    assert again.images == 0 and Brightness.scored == before  # nor are the scores computed again
    # other sampling settings into the same folder are refused
    other = make(RewardsSuite, **{**opts, "sampling": {"num_steps": 3}})
    with pytest.raises(Exception, match="other settings"):
        other.run(tmp_path / "resumed", pipeline=CountingPipe(pipe))


def test_pipeline_images_do_not_depend_on_batching(host, tmp_path, pipe):
    from miro_eval.suites.rewards import RewardsSuite

    kw = dict(rewards=["test_brightness"], prompts=["a", "b", "c"], images_per_prompt=2, sampling={"num_steps": 2},
              device="cpu")
    make(RewardsSuite, batch_size=1, **kw).run(tmp_path / "b1", pipeline=pipe)
    make(RewardsSuite, batch_size=4, **kw).run(tmp_path / "b4", pipeline=pipe)
    a, b = _png_bytes(tmp_path / "b1" / "images"), _png_bytes(tmp_path / "b4" / "images")
    assert a == b and len(a) == 6
    assert len(set(a.values())) == 6  # each image has its own seed


def test_rewards_suite_scores_match_independent_computation(host, tmp_path, pipe):
    from PIL import Image

    from miro_eval.suites.rewards import RewardsSuite

    prompts = ["a red square", "a blue fail", "a green square"]
    res = make(RewardsSuite, rewards=["test_brightness", "test_prompt_length"], prompts=prompts,
               sampling={"num_steps": 2}, device="cpu").run(tmp_path / "o", pipeline=pipe)
    files = sorted((tmp_path / "o" / "images").rglob("*.png"))
    bright = [np.asarray(Image.open(f), dtype=np.float64).mean() / 255 for f in files]
    assert res["metrics"]["test_brightness/mean"] == pytest.approx(np.mean(bright))
    assert res["metrics"]["test_prompt_length/mean"] == pytest.approx(np.mean([12, 14]))  # NaN ignored...
    assert res["metrics"]["test_prompt_length/failed"] == 1.0  # ...and counted


# -- --images layouts -------------------------------------------------------------------------------------------------
def test_images_flat_layout_metadata_and_sidecars(host, tmp_path, capsys):
    from miro_eval.suites import read_image_folder, save_png

    flat = tmp_path / "flat"
    flat.mkdir()
    for i, v in enumerate((0, 51, 102, 255)):
        save_png(np.full((6, 6, 3), v, np.uint8), flat / f"img{i}.png")
    (flat / "metadata.jsonl").write_text("".join(json.dumps({"file_name": f"img{i}.png", "prompt": p, "category": c}) + "\n"
                                                 for i, (p, c) in enumerate([("p0", "A"), ("p1", "B"), ("p0", "A"), ("p2", "B")])))
    recs = read_image_folder(flat)
    assert [(r.group, r.sample) for r in recs] == [(0, 0), (1, 0), (0, 1), (2, 0)]
    _run(["eval", "--suite", "rewards", "--images", str(flat), "--out", str(tmp_path / "o"), "--no-progress",
          "--set", "rewards=['test_brightness']"], capsys)
    m = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert m["metrics"]["test_brightness/mean"] == pytest.approx((0 + 51 + 102 + 255) / 4 / 255)
    assert m["breakdown"]["category"]["B"]["test_brightness"]["mean"] == pytest.approx((51 + 255) / 2 / 255)
    # sidecars (.txt, or .json as `miro sample` writes)
    side = tmp_path / "side"
    side.mkdir()
    save_png(np.zeros((4, 4, 3), np.uint8), side / "sample_0000.png")
    (side / "sample_0000.json").write_text(json.dumps({"prompt": "a dog", "seed": 0}))
    save_png(np.zeros((4, 4, 3), np.uint8), side / "b.png")
    (side / "b.txt").write_text("a cat\n")
    assert sorted(r.prompt for r in read_image_folder(side)) == ["a cat", "a dog"]
    save_png(np.zeros((4, 4, 3), np.uint8), side / "orphan.png")
    with pytest.raises(Exception, match="have no prompt"):
        read_image_folder(side)


def test_images_in_geneval_layout_with_rewards(host, tmp_path, capsys):
    from miro_eval.suites import sample_path, save_png, write_prompt_metadata

    root = tmp_path / "gen"
    for g in range(2):
        write_prompt_metadata(root, g, {"prompt": f"prompt number {g}", "tag": "single_object", "include": []})
        for k in range(3):
            save_png(np.full((8, 8, 3), 10 * (g * 3 + k), np.uint8), sample_path(root, g, k))
    (root / "00001" / "grid.png").write_bytes(b"not read")  # GenEval's optional grid is ignored
    _run(["eval", "--suite", "rewards", "--images", str(root), "--out", str(tmp_path / "o"), "--no-progress",
          "--set", "rewards=['test_brightness']"], capsys)
    m = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert m["num_images"] == 6 and m["num_prompts"] == 2
    assert m["metrics"]["test_brightness/mean"] == pytest.approx(np.mean([10 * i for i in range(6)]) / 255)


# -- TOML suites ------------------------------------------------------------------------------------------------------
def test_suite_defined_only_by_a_toml_file(host, tmp_path, ckpt, capsys):
    (tmp_path / "prompts.txt").write_text("a red square on the left\na blue square on the right\n")
    toml = tmp_path / "my-suite.toml"
    toml.write_text(
        'suite = "rewards"\nname = "my-suite"\ndescription = "brightness on two prompts"\n'
        '[options]\nrewards = ["test_brightness"]\nprompt_file = "prompts.txt"\nimages_per_prompt = 2\n'
        'device = "cpu"\n[options.sampling]\nnum_steps = 2\n')
    out = _run(["eval", "--suite", str(toml), "--checkpoint", str(ckpt), "--out", str(tmp_path / "o"),
                "--no-progress"], capsys)
    assert "test_brightness/mean" in out
    m = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert m["suite"] == "my-suite" and m["num_images"] == 4
    assert m["config"]["sampling"]["num_steps"] == 2 and m["config"]["prompt_file"] == str(tmp_path / "prompts.txt")
    assert "# miro eval: my-suite" in (tmp_path / "o" / "report.md").read_text()
    # --set still overrides the file's defaults; bad keys name the file
    out = _run(["eval", "--suite", str(toml), "--print-config", "--set", "images_per_prompt=3"], capsys)
    assert json.loads(out)["options"]["images_per_prompt"] == 3
    bad = tmp_path / "bad.toml"
    bad.write_text('suite = "rewards"\n[options]\nimages_per_promt = 2\n')
    assert main(["eval", "--suite", str(bad), "--print-config"]) == 2
    assert "images_per_promt" in capsys.readouterr().err


def test_toml_suite_of_evaluators_registered_by_a_plugin(host, tmp_path, pipe):
    from miro_eval.suites import suite_from_toml

    toml = tmp_path / "evals.toml"
    toml.write_text('suite = "evaluators"\nname = "bright-eval"\n[options]\nseed = 3\n'
                    '[options.evaluators.reward_scores]\nrewards = ["test_brightness"]\nprompts = ["a", "b", "c"]\n'
                    '[options.sampling]\nnum_steps = 2\n')
    cls = suite_from_toml(toml)
    assert cls.name == "bright-eval" and cls.Config().seed == 3
    host["suites"].add(cls, distribution="my-plugin", version="1")  # what a plugin's hook does
    try:
        suite = host["suites"].create("bright-eval")
        res = suite.run(tmp_path / "o", pipeline=pipe)
        from miro_eval import RewardScores

        ref = RewardScores(RewardScores.Config(rewards=("test_brightness",), prompts=("a", "b", "c"))).evaluate(
            pipe, seed=3, num_steps=2)
        assert res["metrics"]["reward_scores/test_brightness/mean"] == ref["test_brightness/mean"]
        assert res["cache"] == {"hits": 0, "generated": 1}
        res2 = host["suites"].create("bright-eval").run(tmp_path / "o", pipeline=pipe)
        assert res2["cache"] == {"hits": 1, "generated": 0} and res2["metrics"] == res["metrics"]
    finally:
        del host["suites"]._items["bright-eval"]


# -- best-of-N --------------------------------------------------------------------------------------------------------
def test_samples_to_match_interpolates_in_log2():
    from miro_eval.suites.best_of_n import samples_to_match

    ns, vals = [1, 2, 4, 8], [1.0, 2.0, 3.0, 4.0]
    assert samples_to_match(ns, vals, 0.5) == 1.0
    assert samples_to_match(ns, vals, 3.0) == 4.0
    assert samples_to_match(ns, vals, 2.5) == pytest.approx(2 ** 1.5)
    assert samples_to_match(ns, vals, 4.5) is None


def test_pick_best_never_picks_nan():
    from miro_eval.suites.best_of_n import pick_best

    assert pick_best(np.array([np.nan, 0.1, 0.3, 0.9]), 3) == 2  # only the first 3 count
    assert pick_best(np.array([np.nan, -5.0]), 2) == 1
    assert pick_best(np.array([np.nan, np.nan]), 2) == 0
    assert pick_best(np.array([0.5, 0.5]), 2) == 0  # ties: the earliest


def test_best_of_n_on_a_suite(host, tmp_path, pipe):
    from PIL import Image

    from miro_eval.suites.best_of_n import BestOfNSuite
    from miro_eval.suites.rewards import RewardsSuite

    base = {"rewards": ["test_brightness"], "prompts": ["a red square", "a blue square", "a green square"],
            "sampling": {"num_steps": 2}, "device": "cpu", "images_per_prompt": 2}
    suite = make(BestOfNSuite, suite="rewards", suite_options=base, selection_reward="test_brightness", max_log2=2,
                 device="cpu")
    res = suite.run(tmp_path / "bon", pipeline=pipe)
    assert res["ns"] == [1, 2, 4]
    curve = [res["metrics"][f"best_of_{n}/test_brightness/mean"] for n in (1, 2, 4)]
    assert curve[0] <= curve[1] <= curve[2]  # selecting by the reported reward: monotone
    # independent: best of the first n candidates (candidate c of slot s = image c * 2 + s) by mean brightness
    cand = tmp_path / "bon" / "candidates"
    b = {(g, k): np.asarray(Image.open(cand / f"{g:05d}" / "samples" / f"{k:04d}.png"), np.float64).mean() / 255
         for g in range(3) for k in range(8)}
    for n, value in zip((1, 2, 4), curve):
        kept = [max(b[(g, c * 2 + s)] for c in range(n)) for g in range(3) for s in range(2)]
        assert value == pytest.approx(np.mean(kept))
    # best-of-1 is the base suite itself, image for image
    plain = make(RewardsSuite, **base).run(tmp_path / "plain", pipeline=pipe)
    assert plain["metrics"]["test_brightness/mean"] == pytest.approx(curve[0], abs=0)
    # sample efficiency against a reference whose best-of-1 is this model's best-of-2
    ref = tmp_path / "ref.json"
    ref.write_text(json.dumps({"label": "ref", "metrics": {"best_of_1/test_brightness/mean": curve[1]}}))
    res2 = make(BestOfNSuite, suite="rewards", suite_options=base, selection_reward="test_brightness", max_log2=2,
                device="cpu", reference=str(ref)).run(tmp_path / "bon", pipeline=pipe)
    se = res2["sample_efficiency"]["metrics"]["test_brightness/mean"]
    assert se["samples_to_match"] == pytest.approx(2.0)
    assert (tmp_path / "bon" / "plots" / "best_of_n.png").exists()
    assert "Sample efficiency" in (tmp_path / "bon" / "report.md").read_text()


def test_best_of_n_geneval_on_images(host, tmp_path):
    """best_of_n on GenEval with --images: 2 candidates per prompt, selected by brightness."""
    from miro_eval.suites import sample_path, save_png, write_prompt_metadata
    from miro_eval.suites.best_of_n import BestOfNSuite

    from test_eval_geneval import StubColors, StubDetector

    root = tmp_path / "gen"
    meta = {"tag": "single_object", "include": [{"class": "dog", "count": 1}], "prompt": "a photo of a dog"}
    for g, dogs in enumerate([(0, 1), (1, 0), (0, 0)]):
        write_prompt_metadata(root, g, meta)
        for k, n in enumerate(dogs):
            img = np.full((8, 8, 3), 20 + 100 * n, np.uint8)  # the image with the dog is brighter
            img[0, 0, 0] = 50 * n
            save_png(img, sample_path(root, g, k))
    suite = make(BestOfNSuite, suite="geneval", suite_options={"images_per_prompt": 1},
                 selection_reward="test_brightness", max_log2=1, device="cpu")
    suite.base._detector, suite.base._color = StubDetector(), StubColors()
    res = suite.run(tmp_path / "o", images=root)
    assert res["metrics"]["best_of_1/overall"] == pytest.approx(1 / 3)
    assert res["metrics"]["best_of_2/overall"] == pytest.approx(2 / 3)


# -- world ------------------------------------------------------------------------------------------------------------
def test_world_suite_is_miro_runs_measure_and_resumes(host, tmp_path, pipe):
    from miro_eval.run import MiroRun
    from miro_eval.suites.world import WorldSuite, world_run_config

    over = {"eval": {"num_prompts": 3, "geneval_options": {"images_per_category": 1}, "num_steps": 2}}
    suite = make(WorldSuite, preset="tiny", overrides=over)
    res = suite.run(tmp_path / "w", pipeline=pipe)
    cfg = world_run_config(None, "tiny", over)
    run = MiroRun(cfg, tmp_path / "ref", progress=False)
    ref = run.measure(pipe, run.sampling_kwargs(pipe))
    assert res["metrics"] == ref
    assert "geneval/overall" in ref and "world_sharpness/mean" in ref
    res2 = make(WorldSuite, preset="tiny", overrides=over).run(tmp_path / "w", pipeline=pipe)
    assert res2["metrics"] == ref and res2["cache"]["generated"] == 0 and res2["cache"]["hits"] > 0
    with pytest.raises(Exception, match="not --images"):
        suite.run(tmp_path / "x", images=tmp_path)


@pytest.mark.slow
def test_world_suite_reproduces_a_miro_run(tmp_path, capsys):
    """`miro-run --preset tiny`, then `miro eval --suite world` on its checkpoints: the same numbers, exactly."""
    from miro_eval.run import main as miro_run

    from miro_core._plugins import get_plugin_host

    previous = get_plugin_host()  # this module's fake host when another test here created it
    reset_plugins(None)  # the real plugins for miro-run
    try:
        out = tmp_path / "run"
        assert miro_run(["--preset", "tiny", "--out", str(out), "--no-progress"]) == 0
        metrics = json.loads((out / "metrics.json").read_text())
        reset_plugins(None)
        for model in ("miro", "baseline"):
            rc = main(["eval", "--suite", "world", "--checkpoint", str(out / "models" / model), "--set",
                       f"run_dir='{out}'", "--out", str(tmp_path / f"eval_{model}"), "--no-progress"])
            assert rc == 0
            got = json.loads((tmp_path / f"eval_{model}" / "metrics.json").read_text())["metrics"]
            assert got == metrics["models"][model], model
    finally:
        reset_plugins(previous)


def test_documented_toml_suite_parses(host, tmp_path):
    """The TOML example of docs/evaluation.md is a valid suite file."""
    import re

    from miro_eval.suites import suite_from_toml

    text = (Path(__file__).resolve().parents[1] / "docs" / "evaluation.md").read_text()
    block = re.findall(r"^```toml\n(.*?)^```", text, re.M | re.S)[0]
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "a house"}\n')
    (tmp_path / "house.toml").write_text(block)
    cls = suite_from_toml(tmp_path / "house.toml")
    cfg = cls.Config()
    assert cls.name == "house-prompts" and cfg.rewards == ("pick", "hpsv2") and cfg.sampling.guidance_scale == 5.0
    assert cfg.prompt_file == str(tmp_path / "prompts.jsonl") and cfg.seed == 7


def test_pretrained_and_checkpoint_give_the_same_evaluation(host, tmp_path, pipe, ckpt, capsys):
    pipe.save_pretrained(tmp_path / "pretrained")
    common = ["--suite", "rewards", "--no-progress", "--set", "rewards=['test_brightness']", "--set",
              "prompts=['a red square', 'a blue square']", "--set", "sampling.num_steps=2", "--set", "device='cpu'"]
    _run(["eval", "--pretrained", str(tmp_path / "pretrained"), "--out", str(tmp_path / "a"), *common], capsys)
    _run(["eval", "--checkpoint", str(ckpt), "--out", str(tmp_path / "b"), *common], capsys)
    a = json.loads((tmp_path / "a" / "metrics.json").read_text())
    b = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert a["metrics"] == b["metrics"] and a["source"]["pretrained"] and b["source"]["checkpoint"]
    assert _png_bytes(tmp_path / "a" / "images") == _png_bytes(tmp_path / "b" / "images")
    assert main(["eval", "--suite", "rewards", "--no-progress"]) == 2
    assert "--pretrained DIR, --checkpoint DIR or --images DIR" in capsys.readouterr().err


def test_compare_adds_a_table_and_a_radar(host, tmp_path, pipe):
    from miro_eval.suites.rewards import RewardsSuite

    opts = dict(rewards=["test_brightness", "test_prompt_length", "world_sharpness"], prompts=["a red square", "a b"],
                sampling={"num_steps": 2}, device="cpu")
    first = make(RewardsSuite, **opts).run(tmp_path / "baseline", pipeline=pipe)
    second = make(RewardsSuite, **{**opts, "sampling": {"num_steps": 3}, "compare": [str(tmp_path / "baseline")]}).run(
        tmp_path / "miro", pipeline=pipe)
    assert second["comparison"]["baseline"] == {k: first["metrics"][k] for k in
                                                ("test_brightness/mean", "test_prompt_length/mean", "world_sharpness/mean")}
    report = (tmp_path / "miro" / "report.md").read_text()
    assert "## Comparison" in report and "| metric | miro | baseline |" in report
    assert (tmp_path / "miro" / "plots" / "radar.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(Exception, match="does not exist"):
        make(RewardsSuite, **{**opts, "compare": [str(tmp_path / "nope")]}).run(tmp_path / "x", pipeline=pipe)
    assert not (tmp_path / "x").exists()  # refused before any work


def test_controllability_suite_is_the_sweep(host, tmp_path, pipe):
    from miro_eval import controllability_sweep
    from miro_eval.suites.controllability import ControllabilitySuite

    opts = dict(target="pick", rewards=["test_prompt_length"], prompts=["a red square", "a blue square"],
                sampling={"num_steps": 2}, device="cpu", seed=5)
    res = make(ControllabilitySuite, **opts).run(tmp_path / "c", pipeline=pipe)
    rewards = {"pick": FakePick(), "test_prompt_length": PromptLength()}
    ref = controllability_sweep(pipe, pipe.reward_names, "pick", opts["prompts"], rewards, batch_size=16, seed=5,
                                num_steps=2)
    assert res["sweep"]["means"] == ref["means"] and res["metrics"]["spearman"] == ref["spearman"]
    assert res["metrics"]["pick/mean@0.5"] == ref["means"]["pick"][2]
    again = make(ControllabilitySuite, **opts).run(tmp_path / "c", pipeline=pipe)
    assert again["cache"]["generated"] == 0 and again["sweep"]["means"] == ref["means"]
    with pytest.raises(Exception, match="not one of the model's rewards"):
        make(ControllabilitySuite, **{**opts, "target": "aesthetics"}).run(tmp_path / "d", pipeline=pipe)
