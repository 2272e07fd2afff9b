"""The world's scene model, captions, degradations and the ``world`` data source."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from miro_core import registry
from miro_core.testing import DataSourceContract
from miro_world.captions import CORRUPTIONS, CaptionSpec, corrupt, make_caption, spec_from_scene
from miro_world.scene import (COLORS, SHAPES, Scene, relations_between, render, sample_scene, scene_rng)
from miro_world.source import WorldSource


def spec_holds(spec: CaptionSpec, scene: Scene) -> bool:
    """Whether every claim of ``spec`` is true of ``scene`` and it mentions every object."""
    objs = scene.objects
    if spec.relation is not None:
        rel, a, b = spec.relation
        ga, gb = spec.groups[a], spec.groups[b]
        if len(objs) != 2 or ga.count != 1 or gb.count != 1:
            return False
        for i, j in ((0, 1), (1, 0)):
            oa, ob = objs[i], objs[j]
            if (oa.shape == ga.shape and ga.color in (None, oa.color) and ob.shape == gb.shape
                    and gb.color in (None, ob.color) and rel in relations_between(oa, ob)):
                return True
        return False
    covered = 0
    for g in spec.groups:
        n = sum(o.shape == g.shape and g.color in (None, o.color) for o in objs)
        if n != g.count:
            return False
        covered += n
    return covered == len(objs)


def test_scene_deterministic_by_seed_and_index():
    a = sample_scene(scene_rng(3, 17), backdrop_prob=0.5)
    b = sample_scene(scene_rng(3, 17), backdrop_prob=0.5)
    c = sample_scene(scene_rng(3, 18), backdrop_prob=0.5)
    assert a == b and a != c
    np.testing.assert_array_equal(render(a, 32), render(b, 32))
    assert Scene.from_dict(a.as_dict()) == a


def test_render_formats_and_antialiasing():
    scene = sample_scene(scene_rng(0, 1), kind="single")
    u8 = render(scene, 32)
    f = render(scene, 64, chw=True)
    assert u8.shape == (32, 32, 3) and u8.dtype == np.uint8
    assert f.shape == (3, 64, 64) and f.dtype == np.float32 and 0 <= f.min() and f.max() <= 1
    # anti-aliasing: edge pixels take values strictly between background and object colour
    obj = np.asarray(scene.objects[0].rgb)
    bg = np.asarray(scene.background)
    t = ((f.transpose(1, 2, 0) - bg) @ (obj - bg)) / ((obj - bg) @ (obj - bg))
    assert ((t > 0.1) & (t < 0.9)).sum() > 8


def test_scene_kinds_and_counts():
    for i in range(60):
        rng = scene_rng(1, i)
        for kind, n in (("single", (1,)), ("count", (2, 3, 4)), ("two", (2,)), ("position", (2,)), ("multi", (2, 3, 4))):
            s = sample_scene(rng, kind=kind)
            assert len(s.objects) in n
            assert all(o.shape in SHAPES and o.color in COLORS for o in s.objects)
            if kind == "count":
                assert len({(o.shape, o.color) for o in s.objects}) == 1
            if kind == "position":
                rel, a, b = s.relation
                assert rel in relations_between(s.objects[a], s.objects[b])


def test_true_captions_agree_with_scene():
    for i in range(300):
        rng = scene_rng(2, i)
        scene = sample_scene(rng)
        caption, short, corruption, spec = make_caption(scene, rng, color_drop_prob=0.3)
        assert corruption is None
        assert spec_holds(spec, scene), (caption, scene)
        for g in spec.groups:
            assert g.shape in caption and g.shape in short


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_corruptions_make_captions_false_or_partial(kind):
    applied = 0
    for i in range(200):
        rng = scene_rng(4, i)
        scene = sample_scene(rng)
        spec = spec_from_scene(scene)
        out = corrupt(spec, kind, rng)
        if out is None:
            continue
        applied += 1
        new, details = out
        assert details["type"] == kind
        assert not spec_holds(new, scene), (kind, spec, new)
    assert applied > 30


def test_source_meta_ground_truth():
    src = WorldSource(WorldSource.Config(num_samples=400, seed=5, p_partial_caption=0.2, p_wrong_caption=0.2))
    kinds = Counter()
    for s in src:
        assert s.id.startswith("world-5-")
        meta = s.meta
        scene = Scene.from_dict(meta["scene"])
        corruption = meta["caption_corruption"]
        kinds[corruption["type"] if corruption else None] += 1
        np.testing.assert_array_equal(render(scene, 32), render(scene, 32))
        if not meta["degradations"]:
            np.testing.assert_array_equal(s.image, render(scene, 32))  # clean samples are exact renders
        else:
            assert set(meta["degradations"]) <= {"blur", "noise", "low_contrast", "clutter", "jpeg"}
    assert kinds[None] > 200 and kinds["partial"] > 30 and sum(v for k, v in kinds.items() if k and k.startswith("wrong")) > 30


def test_source_random_access_and_sharding_cheap():
    src = registry("data_sources").create("world", {"num_samples": 50, "seed": 9, "image_size": 64})
    assert len(src) == 50
    s7 = src[7]
    assert s7.id == "world-9-7" and s7.image.shape == (64, 64, 3)
    shard = list(src.iter_samples(2, 5))
    assert [s.id for s in shard] == [f"world-9-{i}" for i in range(2, 50, 5)]
    np.testing.assert_array_equal(shard[1].image, s7.image)
    assert shard[1].caption == s7.caption
    with pytest.raises(IndexError):
        src[50]


class TestWorldSourceContract(DataSourceContract):
    def make_source(self, tmp_path):
        return registry("data_sources").create("world", {"num_samples": 24, "seed": 1})
