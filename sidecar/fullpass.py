"""One full reconcile while the daemon serves: its progress, the scan's ops in
chunks, and the paths queued meanwhile, served between the scan's files.

In file mode the start-up reconcile runs behind readiness, in the writer thread,
as its first batch (sidecar/daemon.py); every later full reconcile (a watcher
overflow, MongoDB back, on request) runs the same way. Between two files of its
scan (``Reconciler.scan``'s ``progress`` callback):

- the progress is counted: files checked, of a total that is MongoDB's count of
  live file manifests, read with the state the reconcile loads anyway (no second
  walk of the data dir; exact on a warm restart, an estimate otherwise, none on a
  cold start), and an ETA (``Status.reconcile``, sidecar/status.py);
- at most every ``SERVE_EVERY_S``, the paths queued and ready (the watcher's,
  the shim's, the waiters of sync frames among them) are flushed as the writer's
  loop flushes them: a sync writer is answered within its timeout, and a write
  is visible about as soon as in steady state, not after a reconcile of the
  whole data dir. The scan's ops so far are written first (``flush`` with
  ``chunk=1`` hands them over file by file; batched here, ``CHUNK``): the read
  served now comes after every read the scan made, its versions are larger
  (sidecar/clock.py), and its write lands last. The file the scan has just read
  waits for the next round (its ops are not handed over yet);
- the stop signal and the writer lease are checked: either ends the reconcile
  (``ReconcileInterrupted``: it is run again, the files on disk are the journal).

The load of what MongoDB holds (before the scan) is timed in chunks of ``LOAD_CHUNK``
rows, each as one MongoDB write (``Pending.writing``): a frozen server shows as a
stalled write, a long healthy load of a large data dir does not. Nothing is served
during the load (the state to diff against is not there yet): a sync frame waits
for it, or for its timeout.

A path served here that the scan's walk did not list (created after the walk
passed its directory) is not a file gone: ``settle_served`` drops what the scan
held for it and has it looked at again once the reconcile is done.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .frames import answer_each, deliver
from .pending import Pending, Waiter
from .retry import Stopped
from .source import exists
from .state import MirrorState, Op, count_files
from .status import ReconcileProgress
from .store import MongoUnavailable

SERVE_EVERY_S = 0.05
CHUNK = 1000  # the scan's ops written together (the reconcile's memory peak stays bounded)
LOAD_CHUNK = 1000
PAUSE_STEP_S = 0.1

Answers = dict[int, tuple[str | None, BaseException | None]]


class ReconcileInterrupted(Stopped):
    """A full reconcile ended before its end: the stop signal, or the lease lost."""


def live_files(state: MirrorState) -> int:
    """The files MongoDB holds (its live manifests): the total a reconcile expects."""
    return count_files(state)[0]


def timed_load(rows: Iterable[Any], writing: Callable[[], Any], check: Callable[[], None]) -> Iterator[Any]:
    """``rows`` as they come, each ``LOAD_CHUNK`` of them read inside ``writing()``,
    ``check()`` before each (it raises to end the load)."""
    it = iter(rows)
    while True:
        check()
        with writing():
            chunk = list(itertools.islice(it, LOAD_CHUNK))
        if not chunk:
            return
        yield from chunk


class FullPass:
    """The callbacks of one full reconcile's scan (see the module's docstring).

    ``write(ops)``: the scan's ops to MongoDB (the reconcile's write step);
    ``flush_paths(taken, claims)``: the writer's flush of a batch (its answers, or
    None when it could not be made: then the batch is queued again and nothing
    more is served during this reconcile); ``stopping()``: True once the daemon
    stops; ``keep_lease()``: renews the writer lease (raises ``LeaseHeld``)."""

    def __init__(self, pending: Pending, progress: ReconcileProgress, *, write: Callable[[list[Op]], None],
                 flush_paths: Callable[[dict[str, float], dict[str, list[Waiter]]], Answers | None],
                 stopping: Callable[[], bool], keep_lease: Callable[[], None], limit: int) -> None:
        self.pending = pending
        self.progress = progress
        self._write = write
        self._flush_paths = flush_paths
        self._stopping = stopping
        self._keep_lease = keep_lease
        self.limit = limit
        self.ops: list[Op] = []
        self.served: set[str] = set()
        self.serving = True
        self._next = time.monotonic() + SERVE_EVERY_S

    # --- the scan's callbacks ------------------------------------------------------------
    def add(self, ops: list[Op]) -> None:
        self.ops.extend(ops)
        if len(self.ops) >= CHUNK:
            self.write()

    def checked(self, rel: str) -> None:
        self.progress.checked += 1
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + SERVE_EVERY_S
        self.check_stop()
        self._keep_lease()
        if self.serving and self.pending.has_paths():
            taken = self.pending.take_now(self.limit, exclude=rel)
            if taken:
                # The scan's older reads land before the newer ones served now (and the
                # divergences it found so far are recorded as its own).
                self.write(force=True)
                self._serve(taken)

    def check_stop(self) -> None:
        if self._stopping():
            raise ReconcileInterrupted("stopping")

    def pause(self, seconds: float) -> None:
        """A wait before the load (``Incarnation.settle``): the stop signal ends it
        (``ReconcileInterrupted``) within ``PAUSE_STEP_S``; the lease is kept meanwhile."""
        end = time.monotonic() + seconds
        while True:
            self.check_stop()
            self._keep_lease()
            left = end - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, PAUSE_STEP_S))

    def write(self, force: bool = False) -> None:
        ops, self.ops = self.ops, []
        if ops or force:
            self._write(ops)

    # --- serving a batch between two files --------------------------------------------------
    def _serve(self, taken: dict[str, float]) -> None:
        claims = self.pending.claim(taken)
        self.served.update(taken)
        try:
            answers = self._flush_paths(taken, claims)
        except MongoUnavailable as exc:
            self.pending.requeue(taken, 0.0)
            answer_each(claims, error=exc)
            raise
        except BaseException as exc:
            self.pending.done(taken)
            answer_each(claims, error=exc)
            raise
        if answers is None:
            self.pending.requeue(taken, 0.0)
            self.pending.rewait(claims)
            self.serving = False
            return
        self.pending.done(taken)
        deliver(claims, answers, self.pending)

    def settle_served(self, held: list, root) -> list:
        """``held`` (the scan's divergences) without the missing files it held for paths
        served meanwhile that are there: looked at again once the reconcile is done
        (the scan forgot their lineage), then watched as any other file."""
        if not self.served:
            return held
        keep = []
        for div in held:
            if div.missing_file and div.path in self.served and exists(root, div.path):
                self.pending.mark(div.path, 0.0)
            else:
                keep.append(div)
        return keep
