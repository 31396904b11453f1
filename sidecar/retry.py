"""Waiting between attempts: one ``Backoff`` for every retry loop, and the
daemon's one stop signal those waits end on.

Every loop that retries MongoDB (the daemon waiting for it at start, for the
writer lease, around the restore and the start-up reconcile; the writer thread
after a failed flush) and the daemon's wait for a usable data dir take their
delays from a ``Backoff``: capped exponential growth, optional jitter, reset on
success. A wait is a ``stop.wait(delay)``: a stop request ends it at once, never
after the delay.
"""

from __future__ import annotations

import asyncio
import random
import threading
from typing import Protocol

# Retrying MongoDB: the first wait and the longest one (a retry never waits
# longer than 5 s for a MongoDB that is back).
BACKOFF_MIN, BACKOFF_MAX = 0.1, 5.0


class Waitable(Protocol):
    def wait(self, timeout: float | None = None) -> bool: ...


class Stopped(Exception):
    """The stop signal came while a loop was waiting or about to retry."""


class Backoff:
    """Delays between attempts: ``initial``, then times ``factor`` each failure, at
    most ``maximum``; with ``jitter`` j each delay is scaled by a random factor in
    [1 - j, 1] (spreads many writers' retries; the scaled value is the one the next
    delay grows from). ``reset()`` after a success starts again from ``initial``."""

    def __init__(self, initial: float, maximum: float, factor: float = 2.0, jitter: float = 0.0) -> None:
        if not 0 < initial <= maximum:
            raise ValueError("need 0 < initial <= maximum")
        if factor < 1:
            raise ValueError("factor must be >= 1")
        if not 0 <= jitter < 1:
            raise ValueError("jitter must be in [0, 1)")
        self.initial = initial
        self.maximum = maximum
        self.factor = factor
        self.jitter = jitter
        self.delay = 0.0  # the delay last handed out; 0 after a reset (no failure since)

    def next(self, at_least: float | None = None, jitter: bool = True) -> float:
        """The delay before the next attempt (and remember it). ``at_least`` raises
        the floor for this one (a held lease: no sooner than 1 s); ``jitter=False``
        leaves it unscaled."""
        floor = self.initial if at_least is None else at_least
        delay = min(self.maximum, max(floor, self.delay * self.factor))
        if jitter and self.jitter:
            delay *= random.uniform(1.0 - self.jitter, 1.0)
        self.delay = delay
        return delay

    def reset(self) -> None:
        self.delay = 0.0

    def wait(self, stop: Waitable) -> bool:
        """Wait the next delay, or less when ``stop`` is set: True when stopped."""
        return stop.wait(self.next())


class StopSignal:
    """One stop request, seen by worker threads (``wait(timeout)``, ``is_set``) and by
    the event loop (``await until_set()``); ``set()`` works from any thread, from a
    signal handler on the loop, and more than once."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = []

    def set(self) -> None:
        with self._lock:
            self._event.set()
            waiters, self._waiters = self._waiters, []
        for loop, fut in waiters:
            try:
                loop.call_soon_threadsafe(_resolve, fut)
            except RuntimeError:  # that loop is closed: nobody is waiting there any more
                pass

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._event.wait(timeout)

    async def until_set(self) -> None:
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._event.is_set():
                return
            fut = loop.create_future()
            self._waiters.append((loop, fut))
        await fut


def _resolve(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)
