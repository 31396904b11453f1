"""Getting events to the sidecar over its Unix socket (see PROTOCOL.md).

Two ways of sending, chosen per event by the caller:

* ``deliver(event, sync=False)``: put the event on a bounded queue drained by
  one daemon thread. Never blocks and never raises: a full queue or an absent
  sidecar drops the event and counts it (the watcher still mirrors the file).
  The thread lingers ``LINGER_S`` after the first event of a burst, then
  sends everything queued in one ``sendall`` (frames stay in order). The API
  thread takes no lock to enqueue and wakes the sender only when it is idle.
* ``deliver(event, sync=True)``: send with ``ack: true`` on the calling
  thread's own connection and wait for the reply; raise ``DeliveryError`` if
  it is not ``{"ok": true}`` within the timeout.

The frame itself (layout, limits, statuses) is ``_protocol.py``, shared with
the sidecar's server. Whatever replaces this class in tests only needs
``deliver(event, sync)``;
``ready()``, ``flush(timeout)``, ``close(timeout)`` and ``after_fork()`` are
optional.
"""

from __future__ import annotations

import collections
import json
import select
import socket
import threading
import time
from typing import TYPE_CHECKING

from ._protocol import LEN, MAX_REPLY, encode_frames, encode_header

if TYPE_CHECKING:  # pragma: no cover
    from ._events import Event, Stats

# While the sidecar is away, at most one connect attempt per interval from the
# async sender, so that a down sidecar costs nothing per write.
RETRY_INTERVAL_S = 0.5
# Below this size header and body go out in one send: one syscall, one copy.
_COALESCE = 64 * 1024
# After the first event of a burst the sender waits this long before
# draining: the API thread finishes its call (and the rest of a burst, e.g.
# the three hub files of one learner signal) without the sender taking the
# GIL from it in the middle; the burst then goes out in one send.
LINGER_S = 0.002
# In steady traffic (bursts less than KEEP_WARM_S apart) the sender polls the
# queue every POLL_S for up to KEEP_WARM_S after a burst instead of sleeping
# until the API thread wakes it: the API never pays the wake-up. Sparser
# traffic is not polled for (each poll costs more CPU than a wake-up).
POLL_S = 0.002
KEEP_WARM_S = 0.006
# Bounds of one async burst.
_BATCH_EVENTS = 256
_BATCH_BYTES = 4 * 1024 * 1024

_STOP = object()


class DeliveryError(Exception):
    """The sidecar did not confirm an event. The message never holds file data."""


class _Connection:
    """One long-lived stream to the sidecar; any error makes it unusable."""

    __slots__ = ("sock",)

    def __init__(self, path: str, timeout: float) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | getattr(socket, "SOCK_CLOEXEC", 0))
        try:
            sock.settimeout(timeout)
            sock.connect(path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock

    def send(self, event: "Event", ack: bool, report: str = "") -> None:
        head = encode_header(event, ack, report)
        body = event.data
        if not body:
            self.sock.sendall(head)
        elif len(body) <= _COALESCE:
            self.sock.sendall(head + body)
        else:
            self.sock.sendall(head)
            self.sock.sendall(body)

    def peer_gone(self) -> bool:
        # The sidecar never writes on an async connection, so readable means
        # EOF (restart) or an error reply right before it hung up. Checking
        # costs one poll and saves losing the next frame into a dead socket.
        try:
            readable, _, _ = select.select([self.sock], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)

    def _recv_exact(self, n: int, deadline: float) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("timed out waiting for the sidecar's reply")
            self.sock.settimeout(remaining)
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionResetError("the sidecar closed the connection")
            buf += chunk
        return bytes(buf)

    def request(self, event: "Event", deadline: float, report: str = "") -> dict:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("timed out before sending to the sidecar")
        self.sock.settimeout(remaining)
        self.send(event, True, report)
        (n,) = LEN.unpack(self._recv_exact(4, deadline))
        if n > MAX_REPLY:
            raise ValueError("oversized reply from the sidecar")
        reply = json.loads(self._recv_exact(n, deadline).decode("utf-8"))
        if not isinstance(reply, dict):
            raise ValueError("malformed reply from the sidecar")
        return reply

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class SocketTransport:
    def __init__(self, path: str, timeout_s: float, queue_size: int, stats: "Stats") -> None:
        self.path = path
        self.timeout_s = timeout_s
        self.queue_size = queue_size
        self.stats = stats
        # The shim's health, sent in every frame's header once set (Shim._note_breaker):
        # the sidecar learns of writes it could not confirm when it is back. A
        # callable, formatted when a frame is built (on the sender thread for async
        # frames), not on every API write.
        self.reporter = None
        self._reset_state()

    def _reset_state(self) -> None:
        # The async queue is a plain deque: append/popleft are atomic under
        # the GIL, so the API thread takes no lock to enqueue. The sender
        # sleeps on ``_wake`` (a Lock used as a binary semaphore) only when it
        # has nothing to do and says so in ``_idle``; the API thread releases
        # it for the first event after an idle spell and for none of the
        # events that arrive while the sender is lingering or sending.
        self._q: collections.deque = collections.deque()
        self._wake = threading.Lock()
        self._wake.acquire()
        self._idle = False
        self._busy = False  # the sender holds a batch taken off the deque
        self._last_batch = float("-inf")  # monotonic time the sender last went idle
        self._done = threading.Condition(threading.Lock())  # flush() waits on it
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._tls = threading.local()
        self._down_until = 0.0
        self._closed = False

    # -- async ------------------------------------------------------------
    def ready(self) -> bool:
        """False while the async sender is backing off from an absent sidecar.

        Checked before the shim reads the file back, so a down sidecar costs
        one clock read per write instead of a read, a hash and a queue put.
        """
        return time.monotonic() >= self._down_until

    def deliver(self, event: "Event", sync: bool) -> None:
        if sync:
            self._send_sync(event)
            return
        if self._closed:
            self.stats.inc("dropped_unavailable")
            return
        if self._thread is None:
            self._start_sender()
        q = self._q
        if len(q) >= self.queue_size:
            self.stats.inc("dropped_queue_full")
            self._check_sender()
            return
        q.append(event)
        if self._idle:
            self._idle = False
            self._signal()

    def _signal(self) -> None:
        try:
            self._wake.release()
        except RuntimeError:  # already released by another thread
            pass

    def _check_sender(self) -> None:
        # A full queue is also the moment to notice a sender that died
        # (it never should: every batch is guarded).
        thread = self._thread
        if thread is not None and not thread.is_alive():
            self._thread = None
            self._start_sender()

    def _start_sender(self) -> None:
        # Started lazily: nothing runs in a process that never writes, and a
        # forked child (which inherits no threads) gets its own on first use.
        with self._start_lock:
            if self._thread is not None and self._thread.is_alive():
                return
            thread = threading.Thread(target=self._run, name="mentorix-shim-sender", daemon=True)
            thread.start()
            self._thread = thread

    def _connect(self) -> _Connection | None:
        self.stats.inc("connect_attempts")
        try:
            conn = _Connection(self.path, self.timeout_s)
        except OSError:
            self.stats.inc("connect_failures")
            self._down_until = time.monotonic() + RETRY_INTERVAL_S
            return None
        self._down_until = 0.0
        return conn

    def _wait_for_work(self) -> bool:
        """Return once the deque holds something; True if it was found by polling."""
        q = self._q
        if q:
            return False
        now = time.monotonic()
        steady = now - self._last_batch < KEEP_WARM_S
        self._last_batch = now
        if steady:
            deadline = now + KEEP_WARM_S
            while True:
                time.sleep(POLL_S)
                if q:
                    return True
                if time.monotonic() >= deadline:
                    break
        while not q:
            self._idle = True
            # Re-check after announcing idleness: an event appended before
            # the flag was visible would otherwise wait for the next one.
            if not q:
                self._wake.acquire()
            self._idle = False
        return False

    def _run(self) -> None:
        q = self._q
        conn: _Connection | None = None
        stop = False
        while not stop:
            polled = self._wait_for_work()
            # Linger after the first event of a burst: the API thread finishes
            # its call (and the rest of a burst) without the sender taking the
            # GIL from it in the middle; the burst then goes out in one send.
            # (An event found by polling has already waited up to POLL_S.)
            if LINGER_S and not polled and q[0] is not _STOP:
                time.sleep(LINGER_S)
            self._busy = True
            batch = []
            size = 0
            while q and len(batch) < _BATCH_EVENTS and size < _BATCH_BYTES:
                event = q.popleft()
                if event is _STOP:
                    stop = True
                    break
                batch.append(event)
                data = getattr(event, "data", None)
                size += len(data) if data else 0
            try:
                if batch:
                    conn = self._send_async(conn, batch)
            except Exception:  # never let the sender die on a surprise
                self.stats.inc("errors")
            finally:
                with self._done:
                    self._busy = False
                    self._done.notify_all()
        if conn is not None:
            conn.close()

    def _settle(self, batch: list) -> list:
        """The events of ``batch`` to send, each settled (``Event.settle``).

        A write followed in the same batch by another event on the same path
        was overwritten (or removed) by then: it is not sent, and not even
        settled, so a file rewritten in a loop costs the sender one look at
        the file per batch instead of one per write. Deletes are always sent.
        """
        last = {event.path: i for i, event in enumerate(batch)}
        out = []
        superseded = 0
        for i, event in enumerate(batch):
            if last[event.path] != i and event.op == "write":
                superseded += 1
                continue
            settle = getattr(event, "settle", None)
            if settle is None or settle():
                out.append(event)
        if superseded:
            self.stats.inc("superseded", superseded)
        return out

    def _send_async(self, conn: _Connection | None, batch: list) -> _Connection | None:
        batch = self._settle(batch)
        if not batch:
            return conn
        if conn is not None and conn.peer_gone():
            conn.close()
            conn = None
        reporter = self.reporter
        payload = encode_frames(batch, reporter() if reporter is not None else "")
        # A second try covers a sidecar restart between two bursts: the
        # stale connection fails, a fresh one is made at once. A burst that
        # failed half-way is resent whole; the sidecar de-duplicates by hash.
        for _attempt in range(2):
            if conn is None:
                if time.monotonic() < self._down_until:
                    break
                conn = self._connect()
                if conn is None:
                    break
            try:
                conn.sock.sendall(payload)
            except OSError:
                self.stats.inc("send_failures")
                conn.close()
                conn = None
                continue
            self.stats.inc("sent", len(batch))
            return conn
        self.stats.inc("dropped_unavailable", len(batch))
        return conn

    def flush(self, timeout: float) -> bool:
        """Wait until every queued event was sent or dropped; True if so."""
        thread = self._thread
        if thread is None or not thread.is_alive():
            return not self._q and not self._busy
        deadline = time.monotonic() + timeout
        with self._done:
            # The sender notifies after every batch; the short wait also
            # covers an event appended and picked up between two checks.
            while self._q or self._busy:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._done.wait(min(remaining, 0.05))
        return True

    # -- sync -------------------------------------------------------------
    def _send_sync(self, event: "Event") -> None:
        # One connection per thread: a reply always belongs to the frame its
        # own thread sent, without a lock serialising all API threads.
        deadline = time.monotonic() + self.timeout_s
        conn: _Connection | None = getattr(self._tls, "conn", None)
        reply = None
        for attempt in range(2):
            if conn is None:
                self.stats.inc("connect_attempts")
                try:
                    conn = _Connection(self.path, max(deadline - time.monotonic(), 0.001))
                except OSError as exc:
                    self.stats.inc("connect_failures")
                    raise DeliveryError(f"sidecar unavailable ({type(exc).__name__})") from None
                self._tls.conn = conn
            try:
                reporter = self.reporter
                reply = conn.request(event, deadline, reporter() if reporter is not None else "")
                break
            except (BrokenPipeError, ConnectionResetError) as exc:
                # A kept connection may predate a sidecar restart: retry once
                # on a fresh one (the sidecar de-duplicates by content hash).
                conn.close()
                conn = self._tls.conn = None
                if attempt or time.monotonic() >= deadline:
                    raise DeliveryError(f"sidecar connection lost ({type(exc).__name__})") from None
            except (OSError, ValueError) as exc:
                # A timeout leaves a reply in flight: the stream is out of
                # step, so it is never reused.
                conn.close()
                self._tls.conn = None
                if isinstance(exc, (TimeoutError, socket.timeout)):
                    raise DeliveryError("timed out waiting for the sidecar") from None
                raise DeliveryError(f"sidecar exchange failed ({type(exc).__name__})") from None
        if reply is None:  # pragma: no cover - loop always breaks or raises
            raise DeliveryError("no reply from the sidecar")
        if reply.get("ok") is not True:
            status = reply.get("status")
            error = reply.get("error")
            detail = f"status {status!r}" + (f", {error}" if isinstance(error, str) and error else "")
            raise DeliveryError(f"sidecar did not confirm the write ({detail})")

    # -- lifecycle ----------------------------------------------------------
    def close(self, timeout: float = 2.0) -> None:
        """Stop the sender (after it drains what it can within ``timeout``)."""
        self._closed = True
        thread = self._thread
        deadline = time.monotonic() + timeout
        if thread is not None and thread.is_alive():
            # Behind whatever is queued: the sender drains first, then stops.
            self._q.append(_STOP)
            self._idle = False
            self._signal()
            thread.join(max(deadline - time.monotonic(), 0.001))
        conn = getattr(self._tls, "conn", None)
        if conn is not None:
            conn.close()
            self._tls.conn = None

    def after_fork(self) -> None:
        # The child inherits the parent's sockets and queue but not the
        # sender thread: sharing a stream with the parent would interleave
        # frames, so start from nothing. The inherited descriptors are left
        # for the garbage collector (closing them in the child does not
        # affect the parent's connections).
        closed = self._closed
        self._reset_state()
        self._closed = closed
