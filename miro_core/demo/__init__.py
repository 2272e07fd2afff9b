"""``miro demo``: reward dials in a local web page (docs/demo.md).

A standard-library HTTP server (:mod:`http.server`) and one static HTML/JS page (``static/index.html``, no CDN,
no network). One model, one worker thread, a queue: :class:`DemoApp` holds the model and the jobs,
:class:`DemoServer` serves the page and the JSON API on 127.0.0.1 by default.
"""

from __future__ import annotations

__all__ = ["DemoApp", "DemoServer", "Job", "bin_counts"]

from .server import DemoApp, DemoServer, Job, bin_counts
