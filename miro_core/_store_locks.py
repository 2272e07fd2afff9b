"""Inter-process locks of a local reward store (POSIX record locks, released by the kernel when a process dies).

Files live in ``<store>/.miro-locks/`` (zarr ignores them):

* ``store``: one exclusive lock around every metadata change (creating the store, appending rows, adding a
  reward column, writing attrs, binning). Held for milliseconds to seconds; other processes wait for it.
* ``rows-<reward>``: one byte per row. A scoring job claims the rows it is about to score (non-blocking):
  a second job claiming any of the same rows is refused with a message instead of interleaving its writes.
  Jobs on disjoint rows (different shards of the data) run side by side.
* ``chunks-<reward>``: one byte per chunk, held while a job writes a chunk (read-modify-write of the rows it
  did not score), so two jobs whose rows share a chunk never lose each other's results.

``fcntl`` record locks belong to a process: a ``kill -9`` releases them, so no stale lock survives a crash.
They do not exclude threads of one process (run concurrent writers as processes) and exist only for local
paths; stores on fsspec URLs (``memory://``, ``s3://``) assume one writing job at a time (or the ranks of
one ``torchrun`` job, which write disjoint chunks by construction).
"""

from __future__ import annotations

__all__ = ["StoreLocks", "NoLocks", "locks_for"]

import hashlib
import logging
import os
import re
import threading
import time
from collections.abc import Iterable
from contextlib import contextmanager

import numpy as np

from ._errors import StoreError

log = logging.getLogger(__name__)

LOCK_DIR = ".miro-locks"

try:  # pragma: no cover - always present on Linux / macOS
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


def _safe(name: str) -> str:
    """A file-name-safe, collision-free form of a reward name."""
    clean = re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:64]
    return f"{clean}-{hashlib.sha1(name.encode('utf-8')).hexdigest()[:10]}"


def runs(rows: np.ndarray) -> list[tuple[int, int]]:
    """Sorted unique rows -> ``[(start, end)]`` half-open runs of consecutive rows."""
    rows = np.unique(np.asarray(rows, dtype=np.int64))
    if rows.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(rows) != 1)
    starts = np.concatenate([[rows[0]], rows[breaks + 1]])
    ends = np.concatenate([rows[breaks], [rows[-1]]]) + 1
    return [(int(a), int(b)) for a, b in zip(starts.tolist(), ends.tolist())]


class NoLocks:
    """Locks of a store without a local path: no-ops (see the module docstring)."""

    enabled = False

    @contextmanager
    def store(self, timeout: float | None = None):
        yield

    def claim_rows(self, reward: str, rows: np.ndarray, url: str) -> None:
        return None

    @contextmanager
    def chunk(self, reward: str, chunk: int):
        yield

    def release_claims(self) -> None:
        return None


class StoreLocks:
    """The locks of one local store, shared by every handle on it in this process."""

    enabled = True
    _by_root: dict[str, StoreLocks] = {}
    _registry_lock = threading.Lock()

    def __init__(self, root: str):
        self.root = root
        self.dir = os.path.join(root, LOCK_DIR)
        self._fds: dict[str, int] = {}
        self._depth = 0
        self._thread = threading.RLock()
        self._claims: list[tuple[str, int, int]] = []

    @classmethod
    def get(cls, root: str) -> StoreLocks:
        root = os.path.realpath(root)
        with cls._registry_lock:
            if root not in cls._by_root:
                cls._by_root[root] = cls(root)
            return cls._by_root[root]

    def _fd(self, name: str) -> int:
        path = os.path.join(self.dir, name)
        fd = self._fds.get(name)
        if fd is not None:
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(path))
            except OSError:
                same = False
            if not same:  # the lock directory was deleted (store overwritten): locks on the old file mean nothing
                os.close(fd)
                fd = None
        if fd is None:
            os.makedirs(self.dir, exist_ok=True)
            # one descriptor per file for the life of the process: closing any descriptor of a file would drop
            # every record lock this process holds on it
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            self._fds[name] = fd
        return fd

    # -------------------------------------------------------------------------------- store lock
    @contextmanager
    def store(self, timeout: float | None = 600.0):
        """Exclusive metadata lock (re-entrant within this process); waits up to ``timeout`` seconds."""
        with self._thread:
            if self._depth == 0:
                fd = self._fd("store")
                deadline = None if timeout is None else time.monotonic() + timeout
                waited = False
                while True:
                    try:
                        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0)
                        break
                    except OSError:
                        if deadline is not None and time.monotonic() > deadline:
                            raise StoreError(
                                f"Store {self.root} is locked by another process for more than {timeout:.0f} s "
                                "(a job appending rows or writing metadata). Wait for it to finish and rerun."
                            ) from None
                        if not waited:
                            log.info("waiting for another process to release the store lock of %s", self.root)
                            waited = True
                        time.sleep(0.05)
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0:
                    fcntl.lockf(self._fds["store"], fcntl.LOCK_UN, 1, 0)

    # -------------------------------------------------------------------------------- row claims
    def claim_rows(self, reward: str, rows: np.ndarray, url: str) -> None:
        """Claim ``rows`` of ``reward`` for this process until :meth:`release_claims` (or its death).

        Raises :class:`StoreError` naming the rows if another process holds any of them."""
        name = f"rows-{_safe(reward)}"
        fd = self._fd(name)
        taken: list[tuple[int, int]] = []
        for a, b in runs(rows):
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, b - a, a)
            except OSError:
                for x, y in taken:
                    fcntl.lockf(fd, fcntl.LOCK_UN, y - x, x)
                raise StoreError(
                    f"Rows {a}..{b - 1} of reward {reward!r} in store {url} are being scored by another process "
                    "right now. Two writers on the same rows would interleave their results, so this job stops "
                    "before writing anything: wait for the other job to finish (then rerun to score what is left), "
                    "or give each job disjoint data (different shards)."
                ) from None
            taken.append((a, b))
        self._claims.extend((name, a, b) for a, b in taken)

    def release_claims(self) -> None:
        for name, a, b in self._claims:
            fcntl.lockf(self._fds[name], fcntl.LOCK_UN, b - a, a)
        self._claims.clear()

    @contextmanager
    def chunk(self, reward: str, chunk: int):
        """Exclusive lock of one chunk of ``reward`` while it is read and rewritten (waits for it)."""
        fd = self._fd(f"chunks-{_safe(reward)}")
        fcntl.lockf(fd, fcntl.LOCK_EX, 1, int(chunk))
        try:
            yield
        finally:
            fcntl.lockf(fd, fcntl.LOCK_UN, 1, int(chunk))


def locks_for(local_root: str | None) -> StoreLocks | NoLocks:
    if local_root is None or fcntl is None:
        return NoLocks()
    return StoreLocks.get(local_root)


def claim_all(locks, reward_rows: Iterable[tuple[str, np.ndarray]], url: str) -> None:
    """Claim several rewards' rows; on a refusal release what this call took and re-raise."""
    before = len(getattr(locks, "_claims", []))
    try:
        for reward, rows in reward_rows:
            locks.claim_rows(reward, rows, url)
    except StoreError:
        if isinstance(locks, StoreLocks):
            extra = locks._claims[before:]
            for name, a, b in extra:
                fcntl.lockf(locks._fds[name], fcntl.LOCK_UN, b - a, a)
            del locks._claims[before:]
        raise
