"""Property-based tests (hypothesis): the binners, the config / option / reward-list parsers, sample ids and the
data sources, and the store's round trip of whatever text they yield."""

from __future__ import annotations

import json
import math
import os
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

sys.path.insert(0, os.path.dirname(__file__))
import test_scoring_helpers as helpers  # noqa: E402

import miro_core  # noqa: E402
from miro_core import MISSING_BIN, ConfigError, registry  # noqa: E402

#: any code point, lone surrogates included (what a non-UTF-8 file name or a JSON "\ud800" escape gives)
any_text = st.text(alphabet=st.characters(blacklist_categories=()), max_size=20)

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(autouse=True, scope="module")
def _plugins():
    miro_core.reset_plugins(None)  # the real built-ins: the binners of miro_rewards
    yield
    miro_core.reset_plugins(None)


# ------------------------------------------------------------------------------------------- binners
scores = st.lists(st.one_of(st.floats(allow_nan=False, allow_infinity=False, width=32, min_value=-1e6, max_value=1e6),
                            st.just(float("nan")), st.just(float("inf")), st.just(float("-inf"))),
                  min_size=1, max_size=300)


@FAST
@given(x=scores, num_bins=st.integers(2, 40), name=st.sampled_from(["quantile", "uniform", "refined_quantile"]))
def test_binners_range_missing_monotone_and_state_round_trip(x, num_bins, name):
    options = {"num_bins": num_bins}
    if name == "refined_quantile":
        options.update({"num_bins": max(num_bins, 4), "refine_top_fraction": 0.25, "refine_factor": 2.0})
    b = registry("binners").create(name, options)
    x = np.asarray(x, dtype=np.float64)
    state = json.loads(json.dumps(b.fit(x)))  # JSON-serialisable, round-trips
    bins = np.asarray(b.transform(x, state))
    assert bins.shape == x.shape and bins.dtype == np.int16
    nan = np.isnan(x)
    assert (bins[nan] == MISSING_BIN).all()
    ok = bins[~nan]
    assert ((ok >= 0) & (ok < b.num_bins)).all()
    order = np.argsort(x[~nan], kind="stable")
    assert (np.diff(ok[order].astype(int)) >= 0).all()  # higher score, never a lower bin
    again = registry("binners").create(name, options).transform(x, state)
    np.testing.assert_array_equal(bins, again)  # a fresh binner with the stored state gives the same bins


# ------------------------------------------------------------------------------------- config parsers
@FAST
@given(value=st.one_of(st.integers(-10**12, 10**12), st.booleans(),
                       st.floats(allow_nan=False, allow_infinity=False)))
def test_parse_scalar_round_trips_toml_scalars(value):
    from miro_core._config import _parse_scalar

    text = ("true" if value else "false") if isinstance(value, bool) else repr(value)
    got = _parse_scalar(text)
    assert type(got) is type(value) and (got == value or (isinstance(value, float) and math.isclose(got, value)))


@FAST
@given(text=st.text(max_size=40))
def test_parse_scalar_never_raises(text):
    from miro_core._config import _parse_scalar

    _parse_scalar(text)  # TOML if it parses, else the text itself


keys = st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True)


@FAST
@given(base=st.dictionaries(keys, st.integers(), max_size=5), path=st.lists(keys, min_size=1, max_size=4),
       value=st.integers())
def test_apply_overrides_sets_exactly_the_path(base, path, value):
    from miro_core import apply_overrides

    assume(not (len(path) > 1 and path[0] in base))  # overriding through a scalar is an error (tested below)
    frozen = json.dumps(base, sort_keys=True)
    out = apply_overrides(base, [f"{'.'.join(path)}={value}"])
    assert json.dumps(base, sort_keys=True) == frozen  # the input is not modified
    node = out
    for p in path:
        node = node[p]
    assert node == value
    assert {k: v for k, v in out.items() if k != path[0]} == {k: v for k, v in base.items() if k != path[0]}


def test_apply_overrides_through_a_scalar_is_an_error():
    from miro_core import apply_overrides

    with pytest.raises(ConfigError, match="is not a table"):
        apply_overrides({"a": 1}, ["a.b=2"])


@FAST
@given(opts=st.dictionaries(keys, st.integers(0, 10**6), max_size=6))
def test_data_spec_options_round_trip(opts):
    from miro_core.data import parse_options

    assert parse_options(",".join(f"{k}={v}" for k, v in opts.items())) == opts


names = st.from_regex(r"[A-Za-z0-9_.\-]{1,12}", fullmatch=True).filter(lambda n: n.lower() not in ("all", "none"))


@FAST
@given(items=st.lists(names, min_size=1, max_size=6, unique=True))
def test_reward_list_round_trips(items):
    from miro_core._reward_list import parse_reward_list

    assert parse_reward_list(",".join(items)) == tuple(items)


@FAST
@given(text=st.text(max_size=30))
def test_reward_list_accepts_exactly_the_documented_form(text):
    import re

    from miro_core._reward_list import parse_reward_list

    items = text.split(",")
    well_formed = all(re.fullmatch(r"[A-Za-z0-9_.\-]+", i) for i in items) and text != ""
    ok = (well_formed and len(set(items)) == len(items)
          and not any(i.lower() in ("all", "none") for i in items))
    try:
        got = parse_reward_list(text)
    except ConfigError:
        assert not ok, text
    else:  # any other exception type fails the test
        assert ok and got == tuple(items), text


# --------------------------------------------------------------------------- ids, sources and the store
@FAST
@given(sid=any_text)
@example(sid="\ud800")
@example(sid="a\x00b")
@example(sid="\x7f")
@example(sid="")
@example(sid="../../x")
def test_id_rule(sid):
    from miro_core.scoring import _id_problem

    try:
        sid.encode("utf-8")
        encodable = True
    except UnicodeEncodeError:
        encodable = False
    usable = sid != "" and encodable and not any(ord(c) < 32 or ord(c) == 127 for c in sid)
    assert (_id_problem(sid) is None) == usable


@FAST
@given(rows=st.lists(st.tuples(any_text.filter(bool), any_text), min_size=1, max_size=12))
def test_jsonl_source_and_store_round_trip_any_text(tmp_path_factory, rows):
    """Whatever ids and captions a manifest holds, the source yields them as written and the store keeps the
    usable ones exactly (ids that cannot be rows are rejected, not crashed on)."""
    from miro_core.data.sources import JsonlSource
    from miro_core.scoring import _id_problem
    from miro_core.store import RewardStore

    tmp = tmp_path_factory.mktemp("jsonl")
    path = tmp / "m.jsonl"
    with open(path, "w", encoding="utf-8", errors="surrogatepass") as f:
        for i, cap in rows:
            f.write(json.dumps({"id": i, "image": "x.png", "caption": cap}) + "\n")  # ASCII JSON escapes
    src = JsonlSource(JsonlSource.Config(path=str(path)))
    got = [(s.id, s.caption) for s in src]
    assert got == [(i, c) for i, c in rows]
    first: dict[str, str] = {}
    for i, cap in rows:
        if _id_problem(i) is None and i not in first:
            first[i] = cap
    if not first:
        return
    ids = list(first)
    caps = [c.encode("utf-8", "surrogatepass").decode("utf-8", "replace") for c in first.values()]
    store = RewardStore.create(f"memory://prop-{os.getpid()}-{abs(hash(tuple(ids)))}", ids, caps, chunk_rows=4,
                               overwrite=True)
    assert store.ids().tolist() == ids and store.captions().tolist() == caps


@pytest.fixture
def scoring_host():
    helpers.install()
    yield
    miro_core.reset_plugins(None)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ids=st.lists(st.one_of(any_text, st.sampled_from(["../../x", "a\x00b", "/etc/passwd", "..", "\ud800x"])),
                    min_size=1, max_size=8))
def test_scoring_any_ids_finishes_or_says_why(tmp_path_factory, scoring_host, ids):
    from miro_core.scoring import _id_problem, score_dataset
    from miro_core.store import RewardStore

    tmp = tmp_path_factory.mktemp("ids")
    img = tmp / "a.png"
    img.write_bytes(helpers.png_bytes(helpers.make_images(1)[0]))
    path = tmp / "m.jsonl"
    path.write_text("".join(json.dumps({"id": i, "image": str(img), "caption": "red"}) + "\n" for i in ids))
    usable = list(dict.fromkeys(i for i in ids if _id_problem(i) is None))
    url = str(tmp / "store")
    if not usable:
        with pytest.raises(miro_core.MiroError, match="usable id"):
            score_dataset(str(path), ["brightness"], url, workers=0, progress=False)
        return
    score_dataset(str(path), ["brightness"], url, workers=0, progress=False)
    s = RewardStore.open(url)
    assert s.ids().tolist() == usable and s.scored_mask("brightness").all()
    assert s.rejected()["count"] == len(ids) - len(usable)
    assert sorted(os.listdir(tmp)) == ["a.png", "m.jsonl", "store"]  # nothing written beside the store


@FAST
@given(data=st.binary(max_size=60))
def test_decode_caption_any_bytes(data):
    from miro_core.data.sources import decode_caption

    text, problem = decode_caption(data)
    try:
        want = data.decode("utf-8-sig").strip()
    except UnicodeDecodeError:
        assert problem is not None and "not valid UTF-8" in problem
        assert text == data.decode("utf-8", "replace").strip()
    else:
        assert problem is None and text == want


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(samples=st.lists(st.tuples(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_\-]{0,9}(/[A-Za-z0-9][A-Za-z0-9_\-]{0,5})?",
                                                fullmatch=True),  # (hidden "." / "_" names are skipped)
                                  st.binary(max_size=40)),
                        min_size=1, max_size=8, unique_by=lambda t: t[0]))
def test_webdataset_source_yields_every_sample_as_written(tmp_path_factory, samples):
    import io
    import tarfile

    from miro_core.data.sources import WebDatasetSource, decode_caption

    tmp = tmp_path_factory.mktemp("wds")
    path = tmp / "s.tar"
    with tarfile.open(path, "w") as tar:
        for key, cap in samples:
            for ext, data in (("png", b"\x89PNG fake"), ("txt", cap)):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    got = list(WebDatasetSource(WebDatasetSource.Config(url=str(path))))
    assert [s.id for s in got] == [k for k, _ in samples]
    for s, (_, cap) in zip(got, samples):
        text, problem = decode_caption(cap)
        assert s.caption == text and s.image == b"\x89PNG fake"
        assert s.meta.get("caption_error") == problem
