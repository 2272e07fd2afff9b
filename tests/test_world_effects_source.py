"""The world's synthetic-caption option (paper section 3.3; issue 13): a share of captions replaced by a true,
complete description, everything else exactly the default world."""
import numpy as np
import pytest

from miro_world.captions import short_phrase, spec_from_scene
from miro_world.scene import Scene
from miro_world.source import WorldSource


def _src(p, n=400):
    return WorldSource(WorldSource.Config(num_samples=n, seed=3, p_synthetic_caption=p))


def test_default_world_is_unchanged_by_the_option():
    a, b = _src(0.0), WorldSource(WorldSource.Config(num_samples=400, seed=3))
    for i in range(0, 400, 7):
        sa, sb = a[i], b[i]
        assert sa.caption == sb.caption and sa.meta == sb.meta and "synthetic_caption" not in sa.meta
        np.testing.assert_array_equal(sa.image, sb.image)


def test_synthetic_captions_are_true_and_the_rest_is_the_default_world():
    base, syn = _src(0.0), _src(0.5)
    flags = []
    for i in range(400):
        s0, s1 = base[i], syn[i]
        np.testing.assert_array_equal(s0.image, s1.image)  # same scene and degradations
        assert s1.meta["scene"] == s0.meta["scene"] and s1.meta["degradations"] == s0.meta["degradations"]
        flags.append(s1.meta["synthetic_caption"])
        if s1.meta["synthetic_caption"]:
            assert s1.meta["caption_corruption"] is None
            spec = spec_from_scene(Scene.from_dict(s1.meta["scene"]))
            # the synthetic caption makes the scene's full claim (every group, colour, count, relation)
            assert s1.short_caption == short_phrase(spec)
            assert all(g.color in s1.caption for g in spec.groups)
        else:
            assert s1.caption == s0.caption and s1.meta["caption_corruption"] == s0.meta["caption_corruption"]
    assert 0.4 < np.mean(flags) < 0.6
    # the web-like share keeps its corruptions; the synthetic share has none
    corrupted = [syn[i].meta["caption_corruption"] is not None for i in range(400)]
    assert not any(c and f for c, f in zip(corrupted, flags))
    assert sum(corrupted) > 20


@pytest.mark.parametrize("p", [0.0, 1.0])
def test_extremes(p):
    s = _src(p, 50)
    assert all((s[i].meta.get("synthetic_caption", False)) == (p == 1.0) for i in range(50))
