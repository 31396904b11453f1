"""The sync-mode circuit breaker (standard library only).

A sync write waits for the sidecar to say MongoDB acknowledged it. When the
sidecar cannot (MongoDB down or frozen, the sidecar frozen or gone), waiting
the full timeout on every write would stall the API on every memory write
although the file is on disk and the watcher mirrors it later. So after one
failure (a timeout, a refused connection, a "not durable now" answer) the
breaker *opens*: for ``open_s`` seconds sync writes do not wait (they go the
async way and are counted ``unconfirmed``; with SIDECAR_SHIM_ON_FAILURE=closed
they fail at once with the documented OSError). Then it is *half-open*: one
write waits (the probe), the others still do not; the probe's success closes
it, its failure opens it again. So an outage costs the API at most one
timeout per ``open_s``.
"""

from __future__ import annotations

import threading
import time

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class Breaker:
    def __init__(self, open_s: float, clock=time.monotonic) -> None:
        self.open_s = open_s
        self._clock = clock
        self._lock = threading.Lock()
        self.state = CLOSED
        self._until = 0.0
        self.opened = 0  # how many times it opened

    def allow(self) -> bool:
        """True: this write waits for the confirmation (closed, or the half-open probe)."""
        with self._lock:
            if self.state == CLOSED:
                return True
            if self.state == OPEN and self._clock() >= self._until:
                self.state = HALF_OPEN
                return True  # the probe
            return False

    def skips(self) -> bool:
        """True: a write now would not wait (open and not yet due, or a probe is
        out). No transition: the caller may take the cheaper async route."""
        state = self.state
        if state == CLOSED:
            return False
        if state == HALF_OPEN:
            return True
        return self._clock() < self._until

    def view(self) -> str:
        """closed | open | probe_due (open, the next write probes) | half_open (a probe waits)."""
        with self._lock:
            if self.state == OPEN and self._clock() >= self._until:
                return "probe_due"
            return self.state

    def success(self) -> None:
        with self._lock:
            self.state = CLOSED

    def failure(self) -> None:
        with self._lock:
            if self.state != OPEN:
                self.opened += 1
            self.state = OPEN
            self._until = self._clock() + self.open_s

    def after_fork(self) -> None:
        self._lock = threading.Lock()
