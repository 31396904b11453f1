"""Helpers shared by the shim tests (not fixtures: conftest.py is not ours).

* ``Recorder``: a transport that keeps the events the shim hands over.
* ``ServerThread``: a real ``ShimServer`` on its own event loop in a thread,
  so blocking shim code can run on the test's thread.
* ``RecordingHandler``: a server handler that records events and lets the
  test wait for them with a deadline (no sleeps as synchronisation).
* ``frame``/``read_reply``: raw protocol access for the server tests.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import struct
import threading
import time
from typing import Any, Awaitable, Callable

from sidecar.shimserver import ShimEvent, ShimServer
from testkit.measure import wait_for

WAIT = 5.0  # upper bound of every wait; tests finish long before


class Recorder:
    """Transport double: ``deliver(event, sync)`` appends, or raises ``fail``."""

    def __init__(self, fail: BaseException | None = None) -> None:
        self.events: list[Any] = []
        self.sync_flags: list[bool] = []
        self.unsent: list[str] = []  # paths of events settle() refused
        self.fail = fail

    def deliver(self, event: Any, sync: bool) -> None:
        if self.fail is not None:
            raise self.fail
        # What the real sender does before sending: finish an event that was
        # reported without reading the file back.
        if not event.settle():
            self.unsent.append(event.path)
            return
        self.events.append(event)
        self.sync_flags.append(sync)

    @property
    def summary(self) -> list[tuple[str, str]]:
        return [(e.op, e.path) for e in self.events]


class RecordingHandler:
    """Records events; ``status`` or ``raises`` decide the answer.

    ``before_reply`` (an async callable) runs before the status is returned,
    e.g. to set a flag or to block until the test releases it.
    """

    def __init__(self, status: str = "written") -> None:
        self.status = status
        self.raises: BaseException | None = None
        self.before_reply: Callable[[ShimEvent], Awaitable[None]] | None = None
        self.events: list[ShimEvent] = []
        self._cond = threading.Condition()

    async def __call__(self, event: ShimEvent) -> str:
        with self._cond:
            self.events.append(event)
            self._cond.notify_all()
        if self.before_reply is not None:
            await self.before_reply(event)
        if self.raises is not None:
            raise self.raises
        return self.status

    def wait_for(self, count: int, timeout: float = WAIT) -> list[ShimEvent]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.events) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"only {len(self.events)} of {count} events arrived")
                self._cond.wait(remaining)
            return list(self.events)


class ServerThread:
    def __init__(self, path: Any, handler: Callable[[ShimEvent], Awaitable[str]], **kwargs: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-shimserver", daemon=True)
        self.server = ShimServer(path, handler, **kwargs)
        self._started = False

    def call(self, coro: Awaitable[Any], timeout: float = WAIT) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]

    def start(self) -> "ServerThread":
        self.thread.start()
        self._started = True
        try:
            self.call(self.server.start())
        except BaseException:
            self.close()
            raise
        return self

    def stop_server(self) -> None:
        self.call(self.server.stop())

    def close(self) -> None:
        if not self._started:
            return
        self._started = False
        try:
            self.call(self.server.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(WAIT)
            self.loop.close()

    def __enter__(self) -> "ServerThread":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()


def wait_until(predicate: Callable[[], Any], timeout: float = WAIT, what: str = "condition") -> Any:
    """``testkit.measure.wait_for`` with the shim tests' bound and a 10 ms poll."""
    return wait_for(predicate, timeout, 0.01, what)


def header(**overrides: Any) -> dict[str, Any]:
    body = overrides.pop("_body", b"{}")
    h = {
        "v": 1,
        "op": "write",
        "path": "x.json",
        "size": len(body),
        "sha256": hashlib.sha256(body).hexdigest(),
        "mtime_ns": 1,
        "seq": 1,
        "pid": 1234,
        "ack": True,
    }
    h.update(overrides)
    return h


def frame(h: dict[str, Any] | bytes, body: bytes = b"") -> bytes:
    raw = h if isinstance(h, bytes) else json.dumps(h).encode()
    return struct.pack(">I", len(raw)) + raw + body


def connect(path: Any) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(WAIT)
    s.connect(str(path))
    return s


def recv_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise EOFError(f"connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    return buf


def read_reply(s: socket.socket) -> dict[str, Any]:
    (n,) = struct.unpack(">I", recv_exact(s, 4))
    return json.loads(recv_exact(s, n))


def at_eof(s: socket.socket) -> bool:
    """True once the server has closed its end (bounded by the socket timeout)."""
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True
