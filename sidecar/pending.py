"""The coalescing queue between the watcher and the writer.

It holds *paths*, not events: a burst of writes to one file is one entry, so
memory is bounded by the number of files, never by the event rate or by how
long MongoDB is away. The files on disk are the journal; an entry only says
"look at this path again".
"""

from __future__ import annotations

import threading
import time


class Pending:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._paths: dict[str, list[float]] = {}  # rel -> [first_seen, ready_at]
        self._full: float | None = None  # first_seen of a requested full reconcile
        self._closed = False

    def mark(self, rel: str, delay: float = 0.0, first_seen: float | None = None) -> None:
        """Ask for ``rel`` to be mirrored ``delay`` seconds after its last event."""
        now = time.monotonic()
        with self._cond:
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
            # long enough already, and lingering on it would only add latency.
            if linger > 0 and self._full is None and len(self._paths) < limit:
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
                    if len(taken) >= limit and full is None:
                        break
            return full, taken

    def requeue(self, taken: dict[str, float], delay: float, full: float | None = None) -> None:
        for rel, first in taken.items():
            self.mark(rel, delay, first)
        if full is not None:
            self.mark_full(full)

    def __len__(self) -> int:
        with self._cond:
            return len(self._paths) + (1 if self._full is not None else 0)

    def paths(self) -> set[str]:
        with self._cond:
            return set(self._paths)

    def oldest_age(self) -> float:
        with self._cond:
            firsts = [e[0] for e in self._paths.values()]
            if self._full is not None:
                firsts.append(self._full)
        return max(0.0, time.monotonic() - min(firsts)) if firsts else 0.0

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
