"""Source versions that never trust mtime: a hybrid logical clock.

"Newer" is the order in which the sidecar *read* the content (DESIGN §5), never
the file's mtime: mtimes go backwards (``mv`` of a prepared file, ``cp -p``,
``rsync -a``, ``tar x``, a clock step) and newer content with an older mtime
must still win. Every read gets ``tick()``: the wall clock in ns, or one more
than the last value handed out, whichever is larger, so the values only grow
however the clock steps. Across restarts and between the daemon and a ``sync``
run the clock starts above every version MongoDB holds (``observe`` of the
largest ``_sidecar.version`` read at start-up), and the writer lease
(sidecar/lease.py) keeps two writers from interleaving their ticks.
"""

from __future__ import annotations

import threading
import time


class Clock:
    def __init__(self, floor: int = 0, now=time.time_ns) -> None:
        self._last = floor
        self._now = now
        self._lock = threading.Lock()

    def tick(self) -> int:
        with self._lock:
            self._last = max(self._now(), self._last + 1)
            return self._last

    def observe(self, version: object) -> None:
        """Never hand out a value at or below one already used (by anyone)."""
        if isinstance(version, int) and not isinstance(version, bool):
            with self._lock:
                self._last = max(self._last, version)

    @property
    def last(self) -> int:
        return self._last
