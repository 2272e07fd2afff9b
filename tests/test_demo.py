"""``miro demo`` without a browser: the JSON API (validation messages, 415 / 503, cancel, queue order), the bin
counts the dials use, and the command's own errors. The browser tests are in test_demo_browser.py."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest

from miro_core.cli import main
from miro_core.demo import DemoApp, DemoServer, bin_counts
from miro_core.sampling import load_pipeline
from miro_core.training import train

from miro_core._plugins import reset_plugins

from _miro_train_fakes import make_host, make_store, tiny_config


@pytest.fixture(scope="module", autouse=True)
def demo_host():
    """The tiny test components plus the ``demo`` command."""
    host = make_host(with_rin=True, with_binner=True, extra=("miro_core.cli.demo_cmd",))
    reset_plugins(host)
    yield host
    reset_plugins(None)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("demo-api")
    return train(tiny_config(tmp, steps=1, checkpoint_every=0), tmp / "out", store=make_store(), progress=False).checkpoint_dir


def call(server, path, body=None, ctype="application/json"):
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    req = urllib.request.Request(server.url.rstrip("/") + path, data=data, headers={"Content-Type": ctype})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def wait(server, job_id, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, job = call(server, f"/api/jobs/{job_id}")
        if job["state"] not in ("queued", "running"):
            return job
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} did not finish")


@pytest.fixture
def server(ckpt):
    s = DemoServer(DemoApp(lambda: load_pipeline(checkpoint=ckpt, device="cpu"), source=str(ckpt), max_images=8),
                   "127.0.0.1", 0).start()
    assert s.app.wait_ready(60) == "ready"
    yield s
    s.close()


def test_model_info_and_bin_counts(server, ckpt):
    status, info = call(server, "/api/model")
    assert status == 200 and info["reward_names"] == ["aesthetic", "pick"]
    # the fake store has 8 quantile bins: the dials have levels k/7
    assert [r["bins"] for r in info["rewards"]] == [8, 8]
    assert server.host == "127.0.0.1"

    class Pipe:
        reward_names = ("a", "b", "c")
        binner_states = {"a": {"num_bins": 16, "edges": [0.0]}, "b": {"edges": [0.0, 1.0]}}
        metadata = {}

    got = bin_counts(Pipe())
    assert [got[n]["bins"] for n in "abc"] == [16, 3, 64] and "assumed 64" in got["c"]["from"]
    Pipe.binner_states, Pipe.metadata = {}, {"source": {"format": "official"}}
    assert bin_counts(Pipe())["a"] == {"bins": 64, "from": "official release (64 quantile bins)"}


@pytest.mark.parametrize("body,match", [
    ({"positive": {"hpsv2": 1.0}}, "Its rewards: aesthetic, pick"),
    ({"negative": {"pick": 1.5}}, r"outside [0, 1]"),
    ({"steps": 0}, "steps must be in [1, 1000]"),
    ({"n": 2.5}, "number of images must be a whole number"),
    ({"n": 9}, "number of images must be in [1, 8]"),
    ({"mode": "isolate", "n": 3}, "would make 9 images (3 columns x 3); the limit is 8"),
    ({"mode": "interpolate", "a": "pick", "b": "pick"}, "two different rewards"),
    ({"mode": "interpolate", "a": "aesthetic", "b": "hpsv"}, "not among"),
    ({"mode": "grid"}, "mode must be one of sample, isolate, interpolate"),
    ({"guidance_scale": "seven"}, "guidance scale must be a finite number"),
])
def test_bad_requests_say_what_is_wrong(server, body, match):
    status, reply = call(server, "/api/jobs", {"prompt": "x", "steps": 2, **body})
    assert status == 400 and match in reply["error"], reply
    assert server.app.requests == []


def test_post_needs_json_and_an_existing_job(server):
    status, reply = call(server, "/api/jobs", b"mode=sample", ctype="application/x-www-form-urlencoded")
    assert status == 415 and "application/json" in reply["error"]
    status, reply = call(server, "/api/jobs", b"{not json")
    assert status == 400 and "not valid JSON" in reply["error"]
    assert call(server, "/api/jobs/j999")[0] == 404
    assert call(server, "/api/nothing")[0] == 404


def test_queue_order_positions_and_cancel(ckpt):
    """Jobs run one at a time in submission order; a queued job knows how many are ahead and can be cancelled
    before it runs; a running job stops at its next model call."""
    gate = {"sleep": 0.02}

    def load():
        pipe = load_pipeline(checkpoint=ckpt, device="cpu")
        pipe.model.register_forward_pre_hook(lambda m, i: time.sleep(gate["sleep"]))
        return pipe

    s = DemoServer(DemoApp(load, source="slow"), "127.0.0.1", 0).start()
    try:
        assert s.app.wait_ready(60) == "ready"
        ids = [call(s, "/api/jobs", {"prompt": "x", "steps": 30, "seed": i})[1]["id"] for i in range(4)]
        time.sleep(0.2)
        jobs = [call(s, f"/api/jobs/{i}")[1] for i in ids]
        assert jobs[0]["state"] == "running" and [j["position"] for j in jobs[1:]] == [1, 2, 3]
        status, cancelled = call(s, f"/api/jobs/{ids[2]}/cancel", {})
        assert status == 200 and cancelled["state"] == "cancelled"
        assert call(s, f"/api/jobs/{ids[3]}")[1]["position"] == 2
        done = [wait(s, i) for i in (ids[0], ids[1], ids[3])]
        assert [j["state"] for j in done] == ["done"] * 3
        app_jobs = [s.app.jobs[i] for i in (ids[0], ids[1], ids[3])]
        assert app_jobs[0].finished <= app_jobs[1].started and app_jobs[1].finished <= app_jobs[2].started
        assert s.app.jobs[ids[2]].started is None
        # cancel a running job: it stops before its 30 steps
        gate["sleep"] = 0.05
        job = call(s, "/api/jobs", {"prompt": "x", "steps": 30})[1]
        while call(s, f"/api/jobs/{job['id']}")[1]["state"] != "running":
            time.sleep(0.01)
        call(s, f"/api/jobs/{job['id']}/cancel", {})
        final = wait(s, job["id"])
        assert final["state"] == "cancelled" and final["progress"]["done"] < 30
        gate["sleep"] = 0.0
        assert wait(s, call(s, "/api/jobs", {"prompt": "x", "steps": 2})[1]["id"])["state"] == "done"
    finally:
        s.close()


def test_requests_wait_for_the_model_to_load(ckpt):
    release = {"go": False}

    def load():
        while not release["go"]:
            time.sleep(0.01)
        return load_pipeline(checkpoint=ckpt, device="cpu")

    s = DemoServer(DemoApp(load, source="slow-load"), "127.0.0.1", 0).start()
    try:
        assert call(s, "/api/model")[1]["state"] == "loading"
        status, reply = call(s, "/api/jobs", {"prompt": "x"})
        assert status == 503 and "still loading" in reply["error"]
        release["go"] = True
        assert s.app.wait_ready(60) == "ready"
        assert call(s, "/api/jobs", {"prompt": "x", "steps": 1})[0] == 202
    finally:
        s.close()


def test_command_errors(capsys, ckpt):
    assert main(["demo", "--checkpoint", str(ckpt), "--port", "70000"]) == 2
    assert "--port must be in [0, 65535]" in capsys.readouterr().err
    assert main(["demo", "--checkpoint", str(ckpt), "--text-encoder", "x"]) == 2
    assert "go with --pretrained" in capsys.readouterr().err
    busy = DemoServer(DemoApp(lambda: None), "127.0.0.1", 0)
    try:
        assert main(["demo", "--checkpoint", str(ckpt), "--port", str(busy.port)]) == 2
        assert "pick another --port" in capsys.readouterr().err
    finally:
        busy.httpd.server_close()
