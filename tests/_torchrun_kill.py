"""SIGKILL a running ``torchrun`` job: the launcher and every rank (the kill -9 resume tests of training, FSDP and
encoding share this)."""

from __future__ import annotations

import os
import signal
import time


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(x) for x in f.read().split()]


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "X"


def kill_torchrun(proc, nranks: int = 2) -> None:
    """SIGKILL ``proc`` (a ``torchrun`` Popen) and its ``nranks`` ranks, then wait until the ranks are gone."""
    ranks = _children(proc.pid)  # torchrun starts each rank in a session of its own: kill them by pid
    assert len(ranks) == nranks, ranks
    for pid in [*ranks, proc.pid]:
        os.kill(pid, signal.SIGKILL)
    proc.wait()
    for pid in ranks:
        deadline = time.monotonic() + 10
        while os.path.exists(f"/proc/{pid}") and _state(pid) != "Z" and time.monotonic() < deadline:
            time.sleep(0.05)
