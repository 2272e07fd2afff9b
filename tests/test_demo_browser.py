"""``miro demo`` in a real browser: Debian's chromium (headless) driven by Playwright, against the demo server on
127.0.0.1 serving a tiny model trained in the test (a few seconds on 2 CPU cores, no downloads).

Screenshots go to ``$MIRO_TEST_ARTIFACTS/demo/`` when set, else to a pytest temporary directory (printed).
Without chromium or playwright the tests fail under ``CI=true`` and skip, saying why, elsewhere.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from miro_core.demo import DemoApp, DemoServer
from miro_core.demo.server import _png
from miro_core.sampling import load_pipeline
from miro_core.training import train

from _miro_train_fakes import make_store, miro_host_module, tiny_config  # noqa: F401

pytestmark = pytest.mark.usefixtures("miro_host_module")

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _need(message: str):
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} (CI=true: the browser tests must run in CI)", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """A fresh headless chromium profile; every request that leaves 127.0.0.1 is refused and recorded."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _need("playwright is not installed: run `bash scripts/setup-env.sh` (it installs the `test` extra)")
    exe = CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium")
    if not exe:
        _need(f"Debian's chromium is missing ({CHROMIUM}): run `bash scripts/setup-env.sh` as root (it apt-installs "
              "chromium and chromium-driver), or `apt-get install chromium chromium-driver`")
    pw = sync_playwright().start()
    ctx = pw.chromium.launch_persistent_context(str(tmp_path_factory.mktemp("chromium-profile")), executable_path=exe,
                                                headless=True, args=CHROMIUM_ARGS, viewport={"width": 1100, "height": 900})
    ctx.set_default_timeout(20_000)
    ctx.outside = []

    def guard(route):
        if re.match(r"^https?://127\.0\.0\.1(:\d+)?/", route.request.url):
            route.continue_()
        else:
            ctx.outside.append(route.request.url)
            route.abort()

    ctx.route("**/*", guard)
    yield ctx
    ctx.close()
    pw.stop()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("demo")
    return train(tiny_config(tmp, steps=2, checkpoint_every=0), tmp / "out", store=make_store(), progress=False).checkpoint_dir


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    root = os.environ.get("MIRO_TEST_ARTIFACTS")
    out = Path(root) / "demo" if root else tmp_path_factory.mktemp("demo-screenshots")
    out.mkdir(parents=True, exist_ok=True)
    print(f"demo screenshots: {out}")
    return out


def serve(ckpt, hook=None):
    """A demo server on a free 127.0.0.1 port over a freshly loaded tiny model; ``hook``: a forward pre-hook
    (to slow the model down or make it fail)."""
    def load():
        pipe = load_pipeline(checkpoint=ckpt, device="cpu")
        if hook is not None:
            pipe.model.register_forward_pre_hook(hook)
        return pipe

    server = DemoServer(DemoApp(load, source=str(ckpt)), "127.0.0.1", 0).start()
    assert server.app.wait_ready(60) == "ready", server.app.load_error
    return server


def open_page(browser, server):
    page = browser.new_page()
    page.goto(server.url)
    page.wait_for_selector('input[type=range][data-reward="aesthetic"][data-sign="pos"]')
    return page


def slider(page, reward, sign):
    return page.locator(f'input[type=range][data-reward="{reward}"][data-sign="{sign}"]')


def test_slider_to_image(browser, ckpt, shots):
    """Move two dials by keyboard, generate: the images appear, the server got the dials' levels (snapped to
    k / (B - 1), B = 8 for this model), and the images are the pipeline's own for those levels."""
    server = serve(ckpt)
    try:
        page = open_page(browser, server)
        pos, neg = slider(page, "aesthetic", "pos"), slider(page, "pick", "neg")
        assert pos.get_attribute("max") == "7" and pos.input_value() == "7" and neg.input_value() == "0"
        pos.focus()
        for _ in range(3):
            page.keyboard.press("ArrowLeft")
        neg.focus()
        page.keyboard.press("ArrowRight")
        page.keyboard.press("ArrowRight")
        assert "0.571 (4/7)" in page.locator("td", has=pos).inner_text()
        page.fill("#prompt", "a red square on the left")
        page.fill("#steps", "4")
        page.fill("#n", "2")
        page.fill("#seed", "3")
        page.click("#generate")
        page.wait_for_selector("#status[data-state=done]")
        imgs = page.locator("table.grid[data-mode=sample] img")
        assert imgs.count() == 2
        page.wait_for_function("() => [...document.querySelectorAll('table.grid img')].every(i => i.naturalWidth === 8)")
        page.screenshot(path=str(shots / "slider-generate.png"), full_page=True)

        req = server.app.requests[-1]
        assert req["mode"] == "sample" and req["prompt"] == "a red square on the left"
        assert req["steps"] == 4 and req["n"] == 2 and req["seed"] == 3 and req["guidance_scale"] == 7.0
        assert req["positive"] == {"aesthetic": pytest.approx(4 / 7), "pick": 1.0}
        assert req["negative"] == {"aesthetic": 0.0, "pick": pytest.approx(2 / 7)}
        # what the browser shows is what the pipeline makes for those levels
        job = server.app.jobs[page.locator("table.grid").first.get_attribute("data-job")]
        pipe = load_pipeline(checkpoint=ckpt, device="cpu")
        want = pipe(["a red square on the left"], reward_targets={"aesthetic": 4 / 7},
                    negative_reward_targets={"pick": 2 / 7}, num_inference_steps=4, num_images_per_prompt=2, seed=3,
                    output_type="pt")
        assert job.png == [_png(im) for im in want]
        assert browser.outside == []
    finally:
        server.close()


def test_isolate_grid_and_interpolation_strip(browser, ckpt, shots):
    """One click each: the isolation grid (a column per reward + "all") and the A/B strip, with the guidance
    targets of isolate_reward / interpolate_rewards."""
    from miro_core.sampling import interpolate_rewards, isolate_reward

    server = serve(ckpt)
    try:
        page = open_page(browser, server)
        page.fill("#steps", "3")
        page.fill("#n", "2")
        page.click("#isolate")
        grid = page.locator("table.grid[data-mode=isolate]")
        grid.wait_for()
        assert [t.strip() for t in grid.locator("th").all_inner_texts()] == ["aesthetic", "pick", "all"]
        assert grid.locator("img").count() == 6
        job = server.app.jobs[grid.get_attribute("data-job")]
        names = ("aesthetic", "pick")
        assert [(c["positive"], c["negative"]) for c in job.columns[:2]] == [isolate_reward(names, n) for n in names]
        assert job.columns[2]["negative"] == {"aesthetic": 0.0, "pick": 0.0}
        page.screenshot(path=str(shots / "isolate.png"), full_page=True)

        page.fill("#points", "3")
        page.click("#interpolate")
        strip = page.locator("table.grid[data-mode=interpolate]")
        strip.wait_for()
        assert strip.locator("img").count() == 6
        assert "more aesthetic" in strip.locator("th").first.inner_text()
        job = server.app.jobs[strip.get_attribute("data-job")]
        assert [c["negative"] for c in job.columns] == [interpolate_rewards(names, "aesthetic", "pick", t)[1]
                                                         for t in (0.0, 0.5, 1.0)]
        page.screenshot(path=str(shots / "interpolate.png"), full_page=True)
        assert browser.outside == []
    finally:
        server.close()


def test_generation_errors_show_in_the_page(browser, ckpt, shots):
    """A failing generation and an out-of-memory one are shown in the page; the worker lives on."""
    fail: dict[str, BaseException | None] = {"exc": None}

    def hook(module, inputs):
        if fail["exc"] is not None:
            raise fail["exc"]

    server = serve(ckpt, hook)
    try:
        page = open_page(browser, server)
        page.fill("#steps", "2")
        fail["exc"] = RuntimeError("injected failure in the backbone")
        page.click("#generate")
        page.wait_for_selector("#status[data-state=error]")
        err = page.locator("#error")
        assert err.is_visible()
        assert "Generation failed" in err.inner_text() and "injected failure in the backbone" in err.inner_text()
        page.screenshot(path=str(shots / "generation-error.png"), full_page=True)

        fail["exc"] = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        page.click("#generate")
        page.wait_for_function("() => document.querySelector('#error').textContent.includes('Out of memory')")
        assert "Lower the number of images" in err.inner_text()
        page.screenshot(path=str(shots / "oom-error.png"), full_page=True)

        fail["exc"] = None
        page.click("#generate")
        page.wait_for_selector("#status[data-state=done]")
        assert not err.is_visible()
        assert page.locator("table.grid img").count() == 1
    finally:
        server.close()


class DemoProcess:
    """``python -m miro_core.cli demo ARGS --port 0`` (the real command, real plugins) and the URL it prints."""

    def __init__(self, *args: str):
        self.proc = subprocess.Popen([sys.executable, "-m", "miro_core.cli", "demo", *args, "--port", "0",
                                      "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        lines: list[str] = []
        threading.Thread(target=lambda: lines.extend(iter(self.proc.stdout.readline, "")), daemon=True).start()
        deadline = time.monotonic() + 60
        while not any("http://127.0.0.1:" in ln for ln in lines):
            if self.proc.poll() is not None:
                raise AssertionError(f"miro demo exited with {self.proc.returncode}: {self.proc.stderr.read()}")
            if time.monotonic() > deadline:
                self.close()
                raise AssertionError("miro demo printed no URL within 60 s")
            time.sleep(0.05)
        self.url = re.search(r"http://127\.0\.0\.1:\d+/", "".join(lines)).group(0)

    def close(self):
        self.proc.terminate()
        self.proc.wait(10)


def test_bad_checkpoint_shows_in_the_page(browser, tmp_path, shots):
    """`miro demo --checkpoint <not a checkpoint>`: the page says what failed and how to fix it."""
    bad = tmp_path / "not-a-checkpoint"
    bad.mkdir()
    (bad / "config.json").write_text("{ this is not json")
    demo = DemoProcess("--checkpoint", str(bad))
    try:
        page = browser.new_page()
        page.goto(demo.url)
        box = page.locator("#load-error")
        box.wait_for()
        text = box.inner_text()
        assert "Could not load the model" in text and str(bad) in text and "restart `miro demo`" in text
        assert page.locator("#form").is_hidden()
        page.screenshot(path=str(shots / "bad-checkpoint.png"), full_page=True)
    finally:
        demo.close()


def test_official_format_directory(browser, tmp_path, shots):
    """`miro demo --pretrained <official release dir> --text-encoder T5 --vae VAE` (a tiny release written with
    the official miro-t2i classes): dials for its rewards in its order, 64 levels each, and an image."""
    from test_official_parity import OURS, make_official_release

    release, t5, vae, _, _ = make_official_release(tmp_path)
    demo = DemoProcess("--pretrained", str(release), "--text-encoder", str(t5), "--vae", str(vae))
    try:
        page = browser.new_page()
        page.goto(demo.url)
        page.wait_for_selector("input[type=range]", timeout=60_000)
        dials = page.eval_on_selector_all('input[type=range][data-sign="pos"]', "es => es.map(e => [e.dataset.reward, e.max])")
        assert dials == [[name, "63"] for name in OURS]
        page.fill("#steps", "2")
        page.click("#generate")
        page.wait_for_selector("#status[data-state=done]", timeout=60_000)
        page.wait_for_function("() => document.querySelector('table.grid img')?.naturalWidth === 16")
        page.screenshot(path=str(shots / "official.png"), full_page=True)
        assert browser.outside == []
    finally:
        demo.close()


def test_concurrent_requests_queue(browser, ckpt, shots):
    """Two pages generate at once: the second waits in the queue (and says so), the first shows per-step
    progress, both finish, one after the other."""
    server = serve(ckpt, lambda module, inputs: time.sleep(0.03))
    try:
        a, b = open_page(browser, server), open_page(browser, server)
        for page in (a, b):
            page.fill("#steps", "40")
        a.click("#generate")
        a.wait_for_selector("#status[data-state=running]")
        b.click("#generate")
        b.wait_for_function("() => document.querySelector('#status').textContent.startsWith('Queued: 1 job ahead')")
        a.wait_for_function("() => { const p = document.querySelector('#progress');"
                            " return !p.hidden && p.value > 0 && p.value < p.max; }")
        assert re.search(r"Generating j\d+: \d+ / 40 model steps", a.locator("#status").inner_text())
        b.screenshot(path=str(shots / "queued.png"), full_page=True)
        for page in (a, b):
            page.wait_for_selector("#status[data-state=done]", timeout=30_000)
            assert page.locator("table.grid img").count() == 1
        a.screenshot(path=str(shots / "queue-done.png"), full_page=True)
        first, second = (server.app.jobs[p.locator("table.grid").get_attribute("data-job")] for p in (a, b))
        assert first.state == second.state == "done"
        assert second.position_at_submit == 1 and second.started >= first.finished
    finally:
        server.close()
