"""The demo's model worker, job queue and HTTP server (standard library only; docs/demo.md).

* :class:`DemoApp`: loads the model in its one worker thread (a load error is kept and shown by the page), then
  runs jobs one at a time from a FIFO queue. A job is a plain sample (the page's sliders), an isolation grid
  (:func:`~miro_core.sampling.isolate_reward` per reward, plus "all") or a two-reward interpolation strip
  (:func:`~miro_core.sampling.interpolate_rewards`); every image goes through :class:`MiroPipeline.__call__`, so
  guidance is the model's own. Progress is the number of model forwards done (a forward pre-hook) out of the
  number the job needs; a queued job knows how many jobs are ahead of it.
* :class:`DemoServer`: ``GET /`` (the page), ``GET /api/model``, ``POST /api/jobs``, ``GET /api/jobs/<id>``,
  ``GET /api/jobs/<id>/images/<i>.png``, ``POST /api/jobs/<id>/cancel``. POST bodies must be
  ``application/json`` (a cross-site form cannot post one without a CORS preflight, which is never granted).
"""

from __future__ import annotations

__all__ = ["DemoApp", "DemoServer", "Job", "bin_counts", "DEFAULT_BINS"]

import collections
import io
import itertools
import json
import logging
import math
import re
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from .._errors import ConfigError, MiroError

log = logging.getLogger(__name__)

#: Bin count assumed when a model does not record one: DESIGN.md's default, and the official release's 64.
DEFAULT_BINS = 64
MODES = ("sample", "isolate", "interpolate")
_PAGE = Path(__file__).with_name("static") / "index.html"
_MAX_BODY = 1 << 20


def bin_counts(pipe: Any) -> dict[str, dict[str, Any]]:
    """``{reward: {"bins": B, "from": why}}``: the number of levels each reward was trained on (k / (B - 1)).

    From the fitted binner state (``num_bins``, else ``len(edges) + 1``); an official release records none and
    was trained on 64 quantile bins; anything else falls back to :data:`DEFAULT_BINS`, said so in ``from``.
    """
    states = getattr(pipe, "binner_states", None) or {}
    source = (getattr(pipe, "metadata", None) or {}).get("source") or {}
    official = isinstance(source, Mapping) and source.get("format") == "official"
    out: dict[str, dict[str, Any]] = {}
    for name in pipe.reward_names:
        st = states.get(name) or {}
        if isinstance(st, Mapping) and st.get("num_bins"):
            b, why = int(st["num_bins"]), "binner state"
        elif isinstance(st, Mapping) and isinstance(st.get("edges"), list):
            b, why = len(st["edges"]) + 1, "binner edges"
        elif official:
            b, why = 64, "official release (64 quantile bins)"
        else:
            b, why = DEFAULT_BINS, f"not recorded by the model; assumed {DEFAULT_BINS}"
        out[name] = {"bins": max(2, b), "from": why}
    return out


class _Cancelled(Exception):
    pass


class Job:
    """One request: its validated parameters, state (queued / running / done / error / cancelled), progress,
    images (PNG bytes with a label, row and column) and error message."""

    def __init__(self, job_id: str, mode: str, params: dict[str, Any], columns: list[dict[str, Any]], total: int):
        self.id = job_id
        self.mode = mode
        self.params = params
        #: one entry per pipeline call: ``{"label", "positive", "negative"}``
        self.columns = columns
        self.state = "queued"
        self.done = 0
        self.total = total
        self.error: str | None = None
        self.images: list[dict[str, Any]] = []
        self.png: list[bytes] = []
        self.created = time.time()
        self.started: float | None = None
        self.finished: float | None = None
        self.cancel_requested = False
        self.position_at_submit = 0


class DemoApp:
    """One model, one worker thread, a FIFO queue of jobs.

    ``load``: a callable returning a :class:`~miro_core.sampling.MiroPipeline` (run in the worker thread, so the
    page is up while a large model loads; an exception becomes the page's error). ``source``: what to show as the
    model's origin. ``max_images``: the most images one job may make; ``keep_jobs``: finished jobs kept.
    """

    def __init__(self, load: Callable[[], Any], *, source: str = "", max_images: int = 64, max_steps: int = 1000,
                 batch_size: int = 16, keep_jobs: int = 64):
        self._load_fn = load
        self.source = source
        self.max_images = int(max_images)
        self.max_steps = int(max_steps)
        self.batch_size = int(batch_size)
        self.keep_jobs = int(keep_jobs)
        self.pipe: Any = None
        self.state = "loading"
        self.load_error: str | None = None
        self.bins: dict[str, dict[str, Any]] = {}
        self.jobs: dict[str, Job] = {}
        #: every accepted request, validated (what the page sent, resolved against the model)
        self.requests: list[dict[str, Any]] = []
        self._pending: collections.deque[Job] = collections.deque()
        self._running: Job | None = None
        self._cv = threading.Condition()
        self._ids = itertools.count(1)
        self._stop = False
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------------
    def start(self) -> DemoApp:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="miro-demo-worker", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        with self._cv:
            self._stop = True
            for job in self._pending:
                job.state, job.error = "cancelled", "The server is shutting down."
            self._pending.clear()
            if self._running is not None:
                self._running.cancel_requested = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def wait_ready(self, timeout: float = 60.0) -> str:
        """Block until the model is loaded or failed to load; returns the state (``ready`` / ``error``)."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while self.state == "loading" and time.monotonic() < deadline:
                self._cv.wait(0.05)
        return self.state

    # -- the model -------------------------------------------------------------------------------------
    def _load(self) -> None:
        try:
            pipe = self._load_fn()
            bins = bin_counts(pipe)
            pipe.model.register_forward_pre_hook(self._on_forward)
        except Exception as exc:  # noqa: BLE001 - shown in the page, and logged
            if not isinstance(exc, MiroError):
                log.error("loading the model failed:\n%s", traceback.format_exc())
            msg = str(exc) if isinstance(exc, MiroError) else f"{type(exc).__name__}: {exc}"
            with self._cv:
                self.state = "error"
                self.load_error = (f"Could not load the model from {self.source or 'the given source'}: {msg} "
                                   "Fix the --checkpoint / --pretrained path (and --text-encoder / --vae) and "
                                   "restart `miro demo`.")
                self._cv.notify_all()
            log.error("%s", self.load_error)
            return
        with self._cv:
            self.pipe, self.bins, self.state = pipe, bins, "ready"
            self._cv.notify_all()

    def _on_forward(self, module, inputs):  # forward pre-hook: progress + cancellation
        job = self._running
        if job is not None:
            if job.cancel_requested:
                raise _Cancelled
            job.done = min(job.total, job.done + 1)

    def model_info(self) -> dict[str, Any]:
        info: dict[str, Any] = {"state": self.state, "error": self.load_error, "source": self.source,
                                "limits": {"max_images": self.max_images, "max_steps": self.max_steps}}
        pipe = self.pipe
        if pipe is not None:
            d = pipe.defaults
            info.update({
                "reward_names": list(pipe.reward_names),
                "rewards": [{"name": n, **self.bins[n]} for n in pipe.reward_names],
                "image_size": pipe.image_size, "device": str(pipe.device),
                "defaults": {"guidance_scale": d["guidance_scale"], "steps": d["num_inference_steps"],
                             "solver": d["solver"], "guidance": d["guidance"]},
            })
        return info

    # -- requests --------------------------------------------------------------------------------------
    def submit(self, request: Mapping[str, Any]) -> Job:
        """Validate a request (raises :class:`ConfigError` naming the field and the fix) and queue it."""
        if self.state == "loading":
            raise _Unavailable("The model is still loading; try again in a moment.")
        if self.state == "error":
            raise _Unavailable(self.load_error or "The model failed to load.")
        if self._stop:
            raise _Unavailable("The server is shutting down.")
        from ..sampling import interpolate_rewards, isolate_reward, resolve_targets

        if not isinstance(request, Mapping):
            raise ConfigError("The request body must be a JSON object.")
        names = list(self.pipe.reward_names)
        mode = request.get("mode", "sample")
        if mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(MODES)} (got {mode!r}).")
        prompt = request.get("prompt", "")
        if not isinstance(prompt, str):
            raise ConfigError("prompt must be a string.")
        d = self.pipe.defaults
        steps = _int(request.get("steps", d["num_inference_steps"]), "steps", 1, self.max_steps)
        n = _int(request.get("n", 1), "number of images", 1, self.max_images)
        seed = _int(request.get("seed", 0), "seed", 0, 2**63 - 1)
        scale = request.get("guidance_scale", d["guidance_scale"])
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
            raise ConfigError(f"guidance scale must be a finite number (got {scale!r}).")
        params: dict[str, Any] = {"mode": mode, "prompt": prompt, "steps": steps, "n": n, "seed": seed,
                                  "guidance_scale": float(scale)}
        if mode == "sample":
            pos = resolve_targets(names, _levels(request.get("positive"), "positive"), 1.0, "positive target")
            neg = resolve_targets(names, _levels(request.get("negative"), "negative"), 0.0, "negative target")
            params["positive"], params["negative"] = dict(zip(names, pos)), dict(zip(names, neg))
            columns = [{"label": "sample", "positive": params["positive"], "negative": params["negative"]}]
        elif mode == "isolate":
            if not names:
                raise ConfigError("This model has no rewards to isolate (an unconditioned baseline).")
            columns = []
            for name in names:
                p, q = isolate_reward(names, name)
                columns.append({"label": name, "positive": p, "negative": q})
            columns.append({"label": "all", "positive": {k: 1.0 for k in names}, "negative": {k: 0.0 for k in names}})
        else:
            if len(names) < 2:
                raise ConfigError(f"Interpolation needs two rewards; this model has {len(names)} ({', '.join(names)}).")
            a, b = request.get("a", names[0]), request.get("b", names[1])
            if a == b:
                raise ConfigError(f"Interpolation needs two different rewards (got {a!r} twice).")
            points = _int(request.get("points", 5), "points", 2, 11)
            params.update({"a": a, "b": b, "points": points})
            columns = []
            for i in range(points):
                t = i / (points - 1)
                p, q = interpolate_rewards(names, a, b, t)
                columns.append({"label": f"s−[{a}]={t:.2f} s−[{b}]={1 - t:.2f}", "t": t, "positive": p, "negative": q})
        if n * len(columns) > self.max_images:
            raise ConfigError(f"This would make {n * len(columns)} images ({len(columns)} columns x {n}); the limit is "
                              f"{self.max_images}. Lower the number of images.")
        chunks = math.ceil(n / self.batch_size)
        per_step = 2 if d["solver"] == "heun" else 1
        total = len(columns) * chunks * steps * per_step
        with self._cv:
            job = Job(f"j{next(self._ids)}", mode, params, columns, total)
            job.position_at_submit = len(self._pending) + (1 if self._running is not None else 0)
            self.jobs[job.id] = job
            self.requests.append(dict(params))
            self._pending.append(job)
            self._forget_old()
            self._cv.notify_all()
        return job

    def cancel(self, job_id: str) -> Job:
        with self._cv:
            job = self.jobs[job_id]
            if job.state == "queued":
                self._pending.remove(job)
                job.state, job.error, job.finished = "cancelled", "Cancelled before it started.", time.time()
            elif job.state == "running":
                job.cancel_requested = True
            return job

    def position(self, job: Job) -> int:
        """Jobs ahead of ``job`` (the running one included); 0 when running or finished."""
        with self._cv:
            if job.state != "queued":
                return 0
            return list(self._pending).index(job) + (1 if self._running is not None else 0)

    def job_json(self, job: Job) -> dict[str, Any]:
        pos = self.position(job)
        return {"id": job.id, "mode": job.mode, "state": job.state, "position": pos,
                "position_at_submit": job.position_at_submit,
                "progress": {"done": job.done, "total": job.total}, "error": job.error, "params": job.params,
                "columns": [c["label"] for c in job.columns], "rows": job.params["n"],
                "images": list(job.images) if job.state == "done" else [],
                "elapsed": round((job.finished or time.time()) - (job.started or time.time()), 3)
                if job.started else None}

    def _forget_old(self) -> None:
        finished = [j for j in self.jobs.values() if j.state in ("done", "error", "cancelled")]
        for j in finished[: max(0, len(finished) - self.keep_jobs)]:
            del self.jobs[j.id]

    # -- the worker ------------------------------------------------------------------------------------
    def _work(self) -> None:
        self._load()
        while True:
            with self._cv:
                while not self._pending and not self._stop:
                    self._cv.wait()
                if self._stop:
                    return
                job = self._pending.popleft()
                job.state, job.started = "running", time.time()
                self._running = job
            try:
                self._run(job)
                state, error = "done", None
            except _Cancelled:
                state, error = "cancelled", "Cancelled."
            except Exception as exc:  # noqa: BLE001 - every failure goes to the page; the worker lives on
                state, error = "error", self._describe(exc, job)
            with self._cv:
                job.state, job.error, job.finished = state, error, time.time()
                if state == "done":
                    job.done = job.total
                self._running = None
                self._forget_old()
                self._cv.notify_all()

    def _run(self, job: Job) -> None:
        p = job.params
        pngs, images = [], []
        for col, column in enumerate(job.columns):
            out = self.pipe([p["prompt"]], reward_targets=column["positive"],
                            negative_reward_targets=column["negative"], num_inference_steps=p["steps"],
                            guidance_scale=p["guidance_scale"], num_images_per_prompt=p["n"], seed=p["seed"],
                            output_type="pt", batch_size=self.batch_size)
            for row, img in enumerate(out):
                i = len(pngs)
                pngs.append(_png(img))
                images.append({"url": f"/api/jobs/{job.id}/images/{i}.png", "row": row, "col": col,
                               "label": column["label"], "positive": column["positive"],
                               "negative": column["negative"]})
        job.png, job.images = pngs, images

    def _describe(self, exc: BaseException, job: Job) -> str:
        import torch

        p = job.params
        what = f"{p['n'] * len(job.columns)} image(s) of {self.pipe.image_size}px on {self.pipe.device}"
        text = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, torch.cuda.OutOfMemoryError) or re.search(r"out of memory|can't allocate memory", text, re.I):
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            return (f"Out of memory while generating {what}. Lower the number of images (or, for a grid, use fewer "
                    f"columns), then try again; the model is still loaded. ({text})")
        if isinstance(exc, MiroError):
            return f"Generation failed: {exc}"
        log.error("generation of job %s failed:\n%s", job.id, traceback.format_exc())
        return f"Generation failed while making {what}: {text}. The server log has the traceback."


class _Unavailable(Exception):
    """The model is not ready (loading, or failed to load): HTTP 503 with the reason."""


def _int(value: Any, what: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer():
        raise ConfigError(f"{what} must be a whole number in [{lo}, {hi}] (got {value!r}).")
    v = int(value)
    if not lo <= v <= hi:
        raise ConfigError(f"{what} must be in [{lo}, {hi}] (got {v}).")
    return v


def _levels(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{what} must be an object {{reward: level}} with levels in [0, 1].")
    return dict(value)


def _png(img: Any) -> bytes:
    from PIL import Image

    arr = (img.float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------------
# HTTP
# ---------------------------------------------------------------------------------------------------
_JOB = re.compile(r"^/api/jobs/([A-Za-z0-9]+)$")
_IMAGE = re.compile(r"^/api/jobs/([A-Za-z0-9]+)/images/(\d+)\.png$")
_CANCEL = re.compile(r"^/api/jobs/([A-Za-z0-9]+)/cancel$")


class _Handler(BaseHTTPRequestHandler):
    app: DemoApp  # set on the subclass DemoServer makes
    server_version = "miro-demo"

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        log.debug("%s %s", self.address_string(), format % args)

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"error": message})

    def _job(self, job_id: str) -> Job | None:
        job = self.app.jobs.get(job_id)
        if job is None:
            self._error(404, f"No job {job_id!r} (the server keeps the last {self.app.keep_jobs} finished jobs).")
        return job

    def do_GET(self):  # noqa: N802 - http.server's name
        path = self.path.split("?", 1)[0]
        if path in ("/", "/index.html"):
            try:
                page = _PAGE.read_bytes()
            except OSError as exc:
                return self._error(500, f"The demo page is missing from this installation ({_PAGE}: {exc}); "
                                        "reinstall MIRO with its package data.")
            return self._send(200, page, "text/html; charset=utf-8")
        if path == "/api/model":
            return self._json(200, self.app.model_info())
        if m := _JOB.match(path):
            if job := self._job(m.group(1)):
                self._json(200, self.app.job_json(job))
            return None
        if m := _IMAGE.match(path):
            job = self._job(m.group(1))
            if job is None:
                return None
            i = int(m.group(2))
            if job.state != "done" or i >= len(job.png):
                return self._error(404, f"Job {job.id} has no image {i} (state {job.state}).")
            return self._send(200, job.png[i], "image/png")
        return self._error(404, f"No such page: {path}.")

    def do_POST(self):  # noqa: N802
        path = self.path.split("?", 1)[0]
        ctype = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            return self._error(415, "POST bodies must be JSON (Content-Type: application/json).")
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= _MAX_BODY:
            return self._error(413, f"The request body must be at most {_MAX_BODY} bytes.")
        raw = self.rfile.read(length)
        if path == "/api/jobs":
            try:
                body = json.loads(raw or b"{}")
            except ValueError as exc:
                return self._error(400, f"The request body is not valid JSON: {exc}.")
            try:
                job = self.app.submit(body)
            except _Unavailable as exc:
                return self._error(503, str(exc))
            except MiroError as exc:
                return self._error(400, str(exc))
            return self._json(202, self.app.job_json(job))
        if m := _CANCEL.match(path):
            if self._job(m.group(1)):
                self._json(200, self.app.job_json(self.app.cancel(m.group(1))))
            return None
        return self._error(404, f"No such endpoint: POST {path}.")


class DemoServer:
    """The HTTP server of a :class:`DemoApp`: ``DemoServer(app, "127.0.0.1", 0).start()`` serves in a thread
    (``port=0``: a free port; ``.url`` says which); ``serve_forever()`` blocks; ``close()`` stops both."""

    def __init__(self, app: DemoApp, host: str = "127.0.0.1", port: int = 7860):
        handler = type("DemoHandler", (_Handler,), {"app": app})
        self.app = app
        try:
            self.httpd = ThreadingHTTPServer((host, int(port)), handler)
        except OSError as exc:
            raise ConfigError(f"Cannot listen on {host}:{port} ({exc.strerror or exc}); pick another --port "
                              "(0 = any free port) or stop what is using it.") from None
        self.httpd.daemon_threads = True
        self.host = host
        self.port = int(self.httpd.server_address[1])
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def start(self) -> DemoServer:
        self.app.start()
        self._thread = threading.Thread(target=self.httpd.serve_forever, args=(0.1,), name="miro-demo-http", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self.app.start()
        self.httpd.serve_forever()

    def close(self) -> None:
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join(10)
        self.httpd.server_close()
        self.app.stop()
