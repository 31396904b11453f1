"""The coalescing queue between the watcher and the writer.

It holds *paths*, not events: a burst of writes to one file is one entry, so
memory is bounded by the number of files, never by the event rate or by how
long MongoDB is away. The files on disk are the journal; an entry only says
"look at this path again".

A path stays pending until MongoDB acknowledged it: ``take`` hands a batch to
the writer and keeps it *in flight* (counted by ``len``, ``paths`` and
``oldest_age``) until the writer says ``done`` or ``requeue``s it. Otherwise a
write hanging on a frozen server would read as "nothing pending, no lag".
``writing`` times each MongoDB write itself, so a stall is seen while it lasts.

Shim frames come in here too, so one thread (the writer) writes to MongoDB. An
async frame marks its path *urgent*: the writer takes it without lingering for
a burst. A sync frame also leaves a ``Waiter`` (``wait``): ``take`` hands the
waiters of the paths it takes to that batch (``claim``), and the writer answers
them once the flush that read the file after the frame was sent is
acknowledged (or failed). A waiter that arrives while its path is in flight
waits for the next flush: that one's read is the first certain to see the write.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from concurrent.futures import Future, InvalidStateError
from typing import Iterator


class Waiter:
    """One sync shim frame waiting for the flush that covers its write: ``future``
    gets the frame's status ("written", "unchanged", "stale", "not_durable") or an
    exception. ``sha256``: of the frame's body (None: not compared)."""

    __slots__ = ("sha256", "future")

    def __init__(self, sha256: str | None) -> None:
        self.sha256 = sha256
        self.future: Future = Future()

    def answer(self, status: str | None = None, error: BaseException | None = None) -> None:
        try:
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(status)
        except InvalidStateError:
            pass  # already answered, or cancelled (the frame's connection went away)


class Pending:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._paths: dict[str, list[float]] = {}  # rel -> [first_seen, ready_at]
        self._urgent: set[str] = set()  # queued paths a shim frame asked for: taken without lingering
        self._waiters: dict[str, list[Waiter]] = {}  # sync frames of queued paths
        self._claimed: dict[str, list[Waiter]] = {}  # sync frames the batch in flight answers
        self._full: float | None = None  # first_seen of a requested full reconcile
        # Taken by the writer, not yet acknowledged: rel -> [first_seen, batches holding it].
        self._inflight: dict[str, list] = {}
        self._inflight_full: list[float] = []  # first_seen of each full reconcile being run
        self._writes: dict[int, float] = {}  # MongoDB writes under way: token -> monotonic start
        self._tokens = itertools.count(1)
        self._closed = False

    def mark(self, rel: str, delay: float = 0.0, first_seen: float | None = None,
             urgent: bool = False) -> None:
        """Ask for ``rel`` to be mirrored ``delay`` seconds after its last event
        (``urgent``: a shim frame's; no lingering for a burst to gather)."""
        with self._cond:
            self._mark(rel, delay, first_seen, urgent)

    def wait(self, rel: str, sha256: str | None) -> Waiter:
        """A sync shim frame: queue ``rel`` now, urgent, and get a ``Waiter`` that the
        writer answers after the flush that covered this write."""
        waiter = Waiter(sha256)
        with self._cond:
            if self._closed:
                waiter.answer(error=RuntimeError("stopping"))
                return waiter
            self._waiters.setdefault(rel, []).append(waiter)
            self._mark(rel, 0.0, None, True)
        return waiter

    def claim(self, taken: dict[str, float]) -> dict[str, list[Waiter]]:
        """The paths of the batch ``taken`` that a shim frame asked for, each with the
        waiters (sync frames) the batch answers (handed over by ``take``; an async
        frame's path has none)."""
        with self._cond:
            return {rel: self._claimed.pop(rel) for rel in taken if rel in self._claimed}

    def rewait(self, claims: dict[str, list[Waiter]], queued_only: bool = False) -> list[Waiter]:
        """Waiters a batch could not answer precisely: back to their paths, for the
        next flush (marked now: the batch turned into a full reconcile). With
        ``queued_only`` (a torn read is being re-checked), only where the path is
        queued again; the waiters not put back are returned, for the caller to answer."""
        left: list[Waiter] = []
        with self._cond:
            for rel, waiters in claims.items():
                if not waiters:
                    continue
                if queued_only and rel not in self._paths:
                    left.extend(waiters)
                    continue
                self._waiters.setdefault(rel, []).extend(waiters)
                if not queued_only:
                    self._mark(rel, 0.0, None, True)
        return left

    def answer_all(self, error: BaseException) -> None:
        """Stopping: every waiter still here gets ``error``."""
        with self._cond:
            waiters = [w for ws in self._waiters.values() for w in ws]
            waiters += [w for ws in self._claimed.values() for w in ws]
            self._waiters.clear()
            self._claimed.clear()
        for w in waiters:
            w.answer(error=error)

    def waiting(self) -> int:
        """Sync shim frames waiting for a flush."""
        with self._cond:
            return sum(map(len, self._waiters.values())) + sum(map(len, self._claimed.values()))

    def _mark(self, rel: str, delay: float, first_seen: float | None, urgent: bool) -> None:
        now = time.monotonic()
        if urgent:
            self._urgent.add(rel)
        entry = self._paths.get(rel)
        if entry is None:
            self._paths[rel] = [first_seen if first_seen is not None else now, now + delay]
        else:
            if first_seen is not None:
                entry[0] = min(entry[0], first_seen)
            entry[1] = now + delay
        self._cond.notify_all()

    def mark_full(self, first_seen: float | None = None) -> None:
        with self._cond:
            if self._full is None:
                self._full = first_seen if first_seen is not None else time.monotonic()
            self._cond.notify_all()

    def take(self, timeout: float, linger: float = 0.0, limit: int = 10_000,
             ignore_delay: bool = False) -> tuple[float | None, dict[str, float]]:
        """Wait up to ``timeout`` for ready work. Returns (full-reconcile first_seen or
        None, {path: first_seen}). ``linger`` lets a burst gather into one flush."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._closed:
                now = time.monotonic()
                ready = self._full is not None or any(
                    ignore_delay or e[1] <= now for e in self._paths.values())
                if ready:
                    break
                wait = deadline - now
                if self._paths:
                    wait = min(wait, max(0.0, min(e[1] for e in self._paths.values()) - now))
                if deadline - now <= 0:
                    return None, {}
                self._cond.wait(max(wait, 0.001))
            # Linger only for a burst that is just starting: work that became
            # ready while the writer was busy (a flush in progress) has waited
            # long enough already, and lingering on it would only add latency;
            # nor for a shim frame (a sync writer waits on it).
            if linger > 0 and self._full is None and len(self._paths) < limit and not any(
                    rel in self._urgent and e[1] <= now for rel, e in self._paths.items()):
                oldest = min((e[1] for e in self._paths.values() if e[1] <= now), default=now)
                if now - oldest < linger:
                    self._cond.wait(linger - (now - oldest))
            now = time.monotonic()
            full, self._full = self._full, None
            taken = {}
            for rel, (first, ready_at) in list(self._paths.items()):
                if full is not None or ignore_delay or ready_at <= now:
                    taken[rel] = first
                    del self._paths[rel]
                    waiters = self._waiters.pop(rel, None)
                    if waiters or rel in self._urgent:
                        # A shim frame's path (with its sync frames' waiters, if any).
                        self._claimed.setdefault(rel, []).extend(waiters or ())
                    self._urgent.discard(rel)
                    if len(taken) >= limit and full is None:
                        break
            self._hold(taken, full)
            return full, taken

    def has_paths(self) -> bool:
        """A path is queued, ready or not (cheap: asked between the files of a full reconcile)."""
        return bool(self._paths)

    def take_now(self, limit: int, exclude: str | None = None, ignore_delay: bool = False) -> dict[str, float]:
        """The paths ready now (``ignore_delay``: all), never a full reconcile, without
        waiting; in flight as with ``take``. ``exclude``: a path to leave queued (one
        a reconcile has read but not written yet)."""
        with self._cond:
            now = time.monotonic()
            taken: dict[str, float] = {}
            for rel, entry in list(self._paths.items()):
                if rel == exclude or not (ignore_delay or entry[1] <= now):
                    continue
                taken[rel] = entry[0]
                del self._paths[rel]
                self._urgent.discard(rel)
                waiters = self._waiters.pop(rel, None)
                if waiters:
                    self._claimed.setdefault(rel, []).extend(waiters)
                if len(taken) >= limit:
                    break
            self._hold(taken, None)
            return taken

    def _hold(self, taken: dict[str, float], full: float | None) -> None:
        for rel, first in taken.items():
            entry = self._inflight.get(rel)
            if entry is None:
                self._inflight[rel] = [first, 1]
            else:
                entry[0] = min(entry[0], first)
                entry[1] += 1
        if full is not None:
            self._inflight_full.append(full)

    def done(self, taken: dict[str, float], full: float | None = None) -> None:
        """The batch of ``take`` (or ``hold``) was acknowledged by MongoDB, or given up."""
        with self._cond:
            for rel in taken:
                entry = self._inflight.get(rel)
                if entry is None:
                    continue
                entry[1] -= 1
                if entry[1] <= 0:
                    del self._inflight[rel]
            if full is not None:
                try:
                    self._inflight_full.remove(full)
                except ValueError:
                    pass

    def requeue(self, taken: dict[str, float], delay: float, full: float | None = None) -> None:
        """Not acknowledged: back to the queue (with its first_seen), no longer in flight."""
        for rel, first in taken.items():
            self.mark(rel, delay, first)
        if full is not None:
            self.mark_full(full)
        self.done(taken, full)

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Around one MongoDB write: ``write_age`` tells how long it has been under way."""
        token = next(self._tokens)
        with self._cond:
            self._writes[token] = time.monotonic()
        try:
            yield
        finally:
            with self._cond:
                self._writes.pop(token, None)

    def write_age(self) -> float:
        """Seconds the oldest MongoDB write under way has been waiting (0: none)."""
        with self._cond:
            starts = list(self._writes.values())
        return max(0.0, time.monotonic() - min(starts)) if starts else 0.0

    def __len__(self) -> int:
        with self._cond:
            queued = len(self._paths) + sum(1 for rel in self._inflight if rel not in self._paths)
            return queued + (1 if self._full is not None or self._inflight_full else 0)

    def queued(self) -> int:
        """Work waiting behind the batch in flight (what ``len`` counts, minus it)."""
        with self._cond:
            return len(self._paths) + (1 if self._full is not None else 0)

    def paths(self) -> set[str]:
        with self._cond:
            return set(self._paths) | set(self._inflight)

    def inflight(self) -> set[str]:
        with self._cond:
            return set(self._inflight)

    def oldest_age(self) -> float:
        with self._cond:
            firsts = [e[0] for e in self._paths.values()]
            firsts.extend(e[0] for e in self._inflight.values())
            if self._full is not None:
                firsts.append(self._full)
            firsts.extend(self._inflight_full)
        return max(0.0, time.monotonic() - min(firsts)) if firsts else 0.0

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
