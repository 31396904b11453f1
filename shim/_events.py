"""The shim's own bookkeeping: counters, the events it reports, per-thread marks.

Standard library only. ``Stats`` are the counters ``shim.stats()`` shows;
``Event`` is one write or delete as the transport sends it; ``_seq`` numbers
events per process, ``_pid`` is the cached process id (refreshed after
``fork``); ``_tls`` with ``_bump``/``_mark`` is the per-thread count of
write-mode opens and moves by which an outer (pathlib) wrapper sees whether an
inner (io/os) one already took the call.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from ._report import Reporter

COUNTERS = (
    "writes",  # write events built (after read-back)
    "deletes",  # delete events built
    "skipped_symlinks",  # writes/deletes not reported: final component is a symlink
    "ignored",  # writes/deletes not reported: the path matches the ignore rules (shim/_ignore.py)
    "superseded",  # async writes not sent: the file was rewritten or removed before the sender got to them
    "sent",  # async frames written to the socket
    "dropped_queue_full",
    "dropped_unavailable",
    "sync_ok",
    "sync_failed",
    "errors",  # exceptions in the shim's own machinery (swallowed)
    "connect_attempts",
    "connect_failures",
    "send_failures",
    "unconfirmed",  # sync writes that did not wait: the breaker was open (shim/_breaker.py)
    "breaker_opened",  # times the sync breaker opened (Breaker.opened)
)


_seq = itertools.count(1)  # per process; next() on a count is atomic in CPython
_tls = threading.local()
# getpid() is a system call (glibc stopped caching it); every event carries it.
_pid = os.getpid()


def _refresh_pid() -> None:
    global _pid
    _pid = os.getpid()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_refresh_pid)


class Stats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(COUNTERS, 0)
        # The sync breaker (shim/_breaker.py) counts its own openings under its
        # lock: "breaker_opened" is read from it, never counted a second time.
        self.breaker: Any = None

    def inc(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] = self._counts.get(name, 0) + n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            counts = dict(self._counts)
        breaker = self.breaker
        if breaker is not None:
            counts["breaker_opened"] = breaker.opened
        return counts

    def after_fork(self) -> None:
        # Another thread may have held the lock at fork time.
        self._lock = threading.Lock()


class Event:
    """One write or delete that happened on disk.

    ``sha256`` is computed on first access: in async mode that is on the
    sender thread, so the API thread pays for reading the bytes back (which
    must happen at close, before the API can truncate the file again) but
    not for hashing them.
    """

    __slots__ = ("op", "path", "data", "mtime_ns", "seq", "pid", "_sha256", "_owner", "_codec")

    def __init__(self, op: str, path: str, data: Any, mtime_ns: int | None,
                 owner: "Reporter | None" = None, codec: str | None = None) -> None:
        self.op = op  # "write" | "delete"
        self.path = path  # posix, relative to the resolved data dir
        self.data = data  # bytes; until settled, possibly a str to encode with ``codec``
        self.mtime_ns = mtime_ns
        self.seq = next(_seq)  # numbered when built: the order in which the shim saw the calls
        self.pid = _pid
        self._sha256: str | None = None
        # Set for a write reported without reading the file back, until settled.
        self._owner = owner
        self._codec = codec

    def settle(self) -> bool:
        """Finish the event before it is sent; False: do not send it.

        Only a write reported without a read-back (``Reporter.report_written``)
        has anything left to do; the sender thread does it, off the API's
        path. Counted in the shim's stats.
        """
        owner = self._owner
        if owner is None:
            return True
        self._owner = None
        return owner.settle(self)

    @property
    def sha256(self) -> str | None:
        if self.data is None or self._owner is not None:
            return None
        if self._sha256 is None:
            self._sha256 = hashlib.sha256(self.data).hexdigest()
        return self._sha256

    def __repr__(self) -> str:  # never show file contents
        size = None if self.data is None or self._owner is not None else len(self.data)
        return f"Event(op={self.op!r}, path={self.path!r}, size={size}, seq={self.seq}, pid={self.pid})"


def _bump() -> None:
    _tls.n = getattr(_tls, "n", 0) + 1


def _mark() -> int:
    return getattr(_tls, "n", 0)
