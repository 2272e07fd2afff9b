"""The world's GenEval evaluator judges with the shared GenEval rules (:func:`miro_eval.geneval.rules.judge`) and
gives the numbers it gave with its own copy of the loop, bit for bit.

The golden values below were computed with the world's own judging loop (``miro_world.geneval.judge`` as of commit
9873a9e, before it used the shared rules) on a fixed set of images: oracle renders of every world prompt, degraded
copies of them and random world scenes, each judged against its own prompt and three others (1280 verdicts), and
``WorldGenEval.evaluate`` on a generator that renders a wrong prompt's scene for a third of the prompts.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from miro_world.degrade import apply_degradations, sample_degradations
from miro_world.detector import detect
from miro_world.geneval import WorldGenEval, judge, load_prompts, scene_for_metadata
from miro_world.scene import render, sample_scene, scene_rng

N_RANDOM = 80
#: computed with the world's own loop (see the module docstring)
GOLDEN_VERDICTS_SHA = "accab2c6fec3ec195a35915bb7567117f95c0452c4d358545df656b48f6c2d17"
GOLDEN_NUM_CORRECT = 178
GOLDEN_METRICS: dict[str, float] = {
    "single_object": 0.6666666666666666, "two_object": 0.5833333333333334, "counting": 0.6666666666666666,
    "colors": 0.6666666666666666, "position": 0.75, "color_attr": 0.6666666666666666, "overall": 0.6666666666666666,
    "overall_stderr": 0.05526544623293205, "num_images": 72.0}


def _images() -> list[tuple[np.ndarray, int | None]]:
    """The fixed images, each with the index of the prompt it was rendered for (None: a random scene)."""
    records = load_prompts()
    out: list[tuple[np.ndarray, int | None]] = []
    for i, rec in enumerate(records):
        img = render(scene_for_metadata(rec, np.random.default_rng([7, i])), 32)
        out.append((img, i))
        deg = sample_degradations(np.random.default_rng([8, i]),
                                  {"blur": 0.5, "noise": 0.5, "low_contrast": 0.3, "clutter": 0.3})
        out.append((apply_degradations(img, deg), i))
    for k in range(N_RANDOM):
        out.append((render(sample_scene(scene_rng(3, k)), 32), None))
    return out


def _verdicts() -> list[bool]:
    records = load_prompts()
    n = len(records)
    verdicts = []
    for j, (img, own) in enumerate(_images()):
        dets = detect(torch.from_numpy(img.astype(np.float32) / 255.0).permute(2, 0, 1))
        others = [(j * 7 + 3) % n, (j * 13 + 5) % n, (j * 31 + 11) % n]
        for r in ([own] if own is not None else [(j * 3 + 1) % n]) + others:
            verdicts.append(bool(judge(dets, records[r])[0]))
    return verdicts


def _sha(verdicts: list[bool]) -> str:
    return hashlib.sha256("".join("1" if v else "0" for v in verdicts).encode()).hexdigest()


def _evaluate() -> dict[str, float]:
    records = load_prompts()
    by_prompt = {r["prompt"]: i for i, r in enumerate(records)}
    counter = [0]

    def generate(prompts, **_):
        imgs = []
        for p in prompts:
            i = by_prompt[p]
            j = (i * 5 + 2) % len(records) if counter[0] % 3 == 0 else i  # every third image: another prompt's scene
            imgs.append(render(scene_for_metadata(records[j], np.random.default_rng([9, counter[0]])), 32, chw=True))
            counter[0] += 1
        return torch.from_numpy(np.stack(imgs))

    return WorldGenEval(WorldGenEval.Config(images_per_category=12)).evaluate(generate)


def test_world_verdicts_are_the_world_loops_bit_for_bit():
    v = _verdicts()
    assert len(v) == (2 * len(load_prompts()) + N_RANDOM) * 4
    assert 0 < sum(v) < len(v)  # both outcomes occur
    assert sum(v) == GOLDEN_NUM_CORRECT
    assert _sha(v) == GOLDEN_VERDICTS_SHA


def test_world_evaluate_numbers_unchanged():
    got = _evaluate()
    assert got == GOLDEN_METRICS  # exact floats


def test_world_judge_is_the_shared_rules():
    """The world's judge delegates to the shared loop: a change of the shared rules changes the world's verdicts."""
    import miro_eval.geneval.rules as rules

    rec = {"tag": "counting", "include": [{"class": "circle", "count": 2}], "exclude": [{"class": "circle", "count": 3}]}
    img = render(scene_for_metadata(rec, np.random.default_rng([1, 2])), 32)
    dets = detect(torch.from_numpy(img.astype(np.float32) / 255.0).permute(2, 0, 1))
    assert judge(dets, rec)[0]
    original = rules.judge
    try:
        rules.judge = lambda *a, **k: (False, "patched")
        assert judge(dets, rec) == (False, "patched")
    finally:
        rules.judge = original
