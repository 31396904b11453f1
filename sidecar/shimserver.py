"""The sidecar's end of the shim socket (wire format: shim/PROTOCOL.md).

Standard library only and self-contained: the daemon plugs in an ``async``
handler that mirrors one event and returns "written", "unchanged", "stale",
"ignored" (the path matches the ignore rules: nothing stored, by
configuration) or (async frames only) "queued".

    server = ShimServer(config.socket_path, handler)
    await server.start()
    ...
    await server.stop()

Everything that arrives is untrusted until validated: a bad frame is
answered with an error (if the client may be waiting for one), counted, and
ends that connection only; other connections keep being served. Frames of
one connection are handled one after the other, so the order in which one
process wrote is the order in which the handler sees its events.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import logging
import os
import re
import socket
import stat
import tempfile
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

# The wire format's constants, shared with the shim's client (stdlib only).
from shim._protocol import (
    MAX_BODY,
    MAX_HEADER,
    MAX_PATH,
    OK,
    OPS,
    PROTOCOL_VERSION,
    STATUSES,
)
from shim._protocol import LEN as _LEN

from .shimclients import ShimClients

log = logging.getLogger(__name__)

# Hashing a large body would stall every other connection: do it off-loop.
_HASH_INLINE_MAX = 1024 * 1024

_SHA256_HEX = re.compile(r"[0-9a-f]{64}\Z")


@dataclass(frozen=True, slots=True)
class ShimEvent:
    op: str  # "write" | "delete"
    path: str  # posix, relative to the data dir, validated
    data: bytes | None  # the file's exact bytes (write); None (delete)
    sha256: str | None  # hex of data, verified (write); None (delete, or an async write sent without it)
    mtime_ns: int | None
    seq: int  # per writing process, increasing
    pid: int
    ack: bool  # the writer waits for the outcome (sync mode)

    def __repr__(self) -> str:  # never print file contents
        size = None if self.data is None else len(self.data)
        return (
            f"ShimEvent(op={self.op!r}, path={self.path!r}, size={size}, "
            f"mtime_ns={self.mtime_ns}, seq={self.seq}, pid={self.pid}, ack={self.ack})"
        )


Handler = Callable[[ShimEvent], Awaitable[str]]


class BadFrame(Exception):
    """A frame that breaks the protocol. The message is ours, never peer data."""


def validate_path(path: Any) -> str:
    """A relative, normalised posix path that cannot leave the data dir."""
    if type(path) is not str or not path:
        raise BadFrame("path must be a non-empty string")
    if len(path) > MAX_PATH:
        raise BadFrame("path too long")
    if "\x00" in path:
        raise BadFrame("path contains NUL")
    if path.startswith("/"):
        raise BadFrame("path must be relative")
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise BadFrame("path is not valid UTF-8") from None
    # Rejecting "", "." and ".." parts also rejects "//", "./x", "x/" and any
    # other spelling that is not already normalised.
    for part in path.split("/"):
        if part in ("", ".", ".."):
            raise BadFrame("path must be normalised, without '.' or '..' parts")
    return path


def _is_int(value: Any) -> bool:
    return type(value) is int  # bool is an int subclass: not accepted


def parse_header(raw: bytes, max_body: int = MAX_BODY) -> dict[str, Any]:
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise BadFrame("header is not UTF-8 JSON") from None
    if not isinstance(header, dict):
        raise BadFrame("header is not a JSON object")
    if header.get("v") != PROTOCOL_VERSION or not _is_int(header.get("v")):
        raise BadFrame("unsupported protocol version")
    op = header.get("op")
    if op not in OPS:
        raise BadFrame("op must be 'write' or 'delete'")
    if type(header.get("ack")) is not bool:
        raise BadFrame("ack must be a boolean")
    validate_path(header.get("path"))
    size = header.get("size")
    if not _is_int(size) or size < 0:
        raise BadFrame("size must be a non-negative integer")
    if size > max_body:
        raise BadFrame("body too large")
    sha = header.get("sha256")
    if op == "write":
        # Optional on async frames: nobody waits for them and the daemon checks
        # the bytes against the file before using them, so hashing on the API's
        # side would only cost its process CPU. A sync frame's reply vouches for
        # exactly these bytes, so it carries the hash.
        if sha is None:
            if header["ack"]:
                raise BadFrame("a sync write carries its sha256")
        elif type(sha) is not str or not _SHA256_HEX.match(sha):
            raise BadFrame("sha256 must be 64 lowercase hex digits")
    else:
        if size != 0 or sha is not None:
            raise BadFrame("a delete carries no body and no sha256")
    mtime = header.get("mtime_ns")
    if mtime is not None and (not _is_int(mtime) or mtime < 0):
        raise BadFrame("mtime_ns must be a non-negative integer or null")
    seq = header.get("seq")
    if not _is_int(seq) or seq < 0:
        raise BadFrame("seq must be a non-negative integer")
    pid = header.get("pid")
    if not _is_int(pid) or pid <= 0:
        raise BadFrame("pid must be a positive integer")
    return header


def encode_reply(status: str, error: str | None = None) -> bytes:
    reply = {"ok": status in OK, "status": status, "error": error}
    raw = json.dumps(reply, separators=(",", ":")).encode("utf-8")
    return _LEN.pack(len(raw)) + raw


class ShimServer:
    """Asyncio Unix-socket server for shim frames.

    ``stats`` counts: connections, connections_rejected, frames (valid),
    bad_frames, replies, handler_errors, and one counter per status
    (written, unchanged, stale, queued, ignored, error).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        handler: Handler,
        *,
        socket_mode: int = 0o600,
        max_header: int = MAX_HEADER,
        max_body: int = MAX_BODY,
        max_connections: int = 256,
    ) -> None:
        self.path = os.path.abspath(os.fspath(path))
        self.handler = handler
        # Owner-only by default: anyone who can connect can write into the
        # mirror. 0o660 is for deployments where API and sidecar only share a
        # group (document it there; never world-accessible).
        if socket_mode & 0o007:
            raise ValueError("the shim socket must not be accessible to others")
        self.socket_mode = socket_mode
        self.max_header = max_header
        self.max_body = max_body
        self.max_connections = max_connections
        self.stats: dict[str, int] = dict.fromkeys(
            (
                "connections",
                "connections_rejected",
                "frames",
                "bad_frames",
                "replies",
                "handler_errors",
                "written",
                "unchanged",
                "stale",
                "queued",
                "ignored",
                "not_durable",
                "error",
            ),
            0,
        )
        self.clients = ShimClients()
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._inode: tuple[int, int] | None = None

    def report(self) -> dict[str, Any]:
        """For /memory/status and /metrics: the frame counters (bad frames
        included) and what the writing processes said about their breakers."""
        return {"frames": dict(self.stats), "clients": self.clients.summary()}

    # -- lifecycle ----------------------------------------------------------------
    async def start(self) -> None:
        if self._server is not None:
            return
        parent = os.path.dirname(self.path)
        os.makedirs(parent, exist_ok=True)
        self._remove_stale_socket()
        sock = self._bind()
        try:
            sock.listen(128)
            sock.setblocking(False)
            self._server = await asyncio.start_unix_server(self._on_connect, sock=sock)
        except BaseException:
            sock.close()
            self._unlink_own_socket()
            raise
        log.info("shim socket listening at %s", self.path)

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        await asyncio.sleep(0)  # connections accepted just before run now, and see the server stopped
        while True:
            for writer in list(self._writers):
                writer.close()
            tasks = [t for t in self._tasks if not t.done()]
            if not tasks:
                break
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()
        self._unlink_own_socket()

    async def __aenter__(self) -> "ShimServer":
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    def _remove_stale_socket(self) -> None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            # Never delete what is not ours to delete (a config typo pointing
            # at a data file must not cost that file).
            raise FileExistsError(errno.EEXIST, "exists and is not a socket; refusing to replace it", self.path)
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.settimeout(0.5)
            probe.connect(self.path)
        except OSError:
            pass  # nobody listening: stale, left by a killed sidecar
        else:
            raise OSError(errno.EADDRINUSE, "another process is serving this socket", self.path)
        finally:
            probe.close()
        os.unlink(self.path)

    def _bind(self) -> socket.socket:
        """Bind so that the socket never exists with looser permissions.

        Bound inside a private 0o700 directory, chmod-ed, then linked into
        place: no window in which another user could connect, and no change
        of the process-wide umask (other threads may be creating files).
        """
        parent = os.path.dirname(self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            tmpdir = tempfile.mkdtemp(prefix=".shim-", dir=parent)
            tmp_path = os.path.join(tmpdir, "s")
            try:
                if len(os.fsencode(tmp_path)) < 100:
                    sock.bind(tmp_path)
                    os.chmod(tmp_path, self.socket_mode)
                    try:
                        # link() refuses to replace anything that appeared
                        # at the final path meanwhile.
                        os.link(tmp_path, self.path)
                    finally:
                        os.unlink(tmp_path)
                else:
                    # AF_UNIX paths are short (108 bytes): no room for the
                    # private directory, fall back to a tight umask.
                    old = os.umask(0o177)
                    try:
                        sock.bind(self.path)
                    finally:
                        os.umask(old)
                    os.chmod(self.path, self.socket_mode)
            finally:
                os.rmdir(tmpdir)
            st = os.lstat(self.path)
            self._inode = (st.st_dev, st.st_ino)
        except BaseException:
            sock.close()
            raise
        return sock

    def _unlink_own_socket(self) -> None:
        # Only the socket we created: a newer sidecar may own the path now.
        try:
            st = os.lstat(self.path)
            if stat.S_ISSOCK(st.st_mode) and (st.st_dev, st.st_ino) == self._inode:
                os.unlink(self.path)
        except OSError:
            pass
        self._inode = None

    # -- serving ---------------------------------------------------------------------
    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._server is None:
            # Accepted just before stop(): its task runs after stop's snapshot of
            # the connections, so it must not start serving (it would outlive the loop).
            writer.close()
            return
        if len(self._tasks) >= self.max_connections:
            self.stats["connections_rejected"] += 1
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.stats["connections"] += 1
        try:
            while await self._serve_frame(reader, writer):
                pass
        except (ConnectionError, asyncio.CancelledError):
            pass
        except Exception:  # a bug here must not take the server down
            log.exception("shim connection failed")
        finally:
            self._tasks.discard(task)
            self._writers.discard(writer)
            writer.close()

    async def _reject(self, writer: asyncio.StreamWriter, reply: bool, reason: str) -> bool:
        self.stats["bad_frames"] += 1
        log.warning("bad shim frame: %s; closing that connection", reason)
        if reply:
            await self._reply(writer, "error", f"bad frame: {reason}")
        return False

    async def _reply(self, writer: asyncio.StreamWriter, status: str, error: str | None) -> None:
        writer.write(encode_reply(status, error))
        await writer.drain()
        self.stats["replies"] += 1

    async def _serve_frame(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Serve one frame; False when the connection is done."""
        try:
            prefix = await reader.readexactly(4)
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                return await self._reject(writer, False, "truncated frame")
            return False  # clean end between frames
        (length,) = _LEN.unpack(prefix)
        # Until the header is parsed we cannot know whether the client waits
        # for a reply: answer anyway (an async client never reads, and the
        # connection is closed right after).
        if length == 0 or length > self.max_header:
            return await self._reject(writer, True, "header length out of range")
        try:
            raw = await reader.readexactly(length)
        except asyncio.IncompleteReadError:
            return await self._reject(writer, False, "truncated frame")
        try:
            header = parse_header(raw, self.max_body)
        except BadFrame as exc:
            return await self._reject(writer, True, str(exc))
        ack: bool = header["ack"]
        size: int = header["size"]
        try:
            body = await reader.readexactly(size) if size else b""
        except asyncio.IncompleteReadError:
            return await self._reject(writer, False, "truncated frame")
        sha: str | None = header.get("sha256")
        data: bytes | None = body if header["op"] == "write" else None
        if sha is not None:
            if size > _HASH_INLINE_MAX:
                digest = await asyncio.to_thread(lambda: hashlib.sha256(body).hexdigest())
            else:
                digest = hashlib.sha256(body).hexdigest()
            if digest != sha:
                return await self._reject(writer, ack, "sha256 does not match the body")
        self.stats["frames"] += 1
        event = ShimEvent(
            op=header["op"],
            path=header["path"],
            data=data,
            sha256=sha,
            mtime_ns=header["mtime_ns"] if "mtime_ns" in header else None,
            seq=header["seq"],
            pid=header["pid"],
            ack=ack,
        )
        self.clients.heard(event.pid, header.get("shim"), "shim" in header)
        status, error = await self._handle(event)
        self.stats[status] += 1
        if ack:
            if status in OK:
                self.clients.confirmed(event.pid)  # the shim's breaker closes on this reply
            await self._reply(writer, status, error)
        return True

    async def _handle(self, event: ShimEvent) -> tuple[str, str | None]:
        try:
            status = await self.handler(event)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # The class name only: a message may quote payload data.
            self.stats["handler_errors"] += 1
            log.warning("shim handler failed for %r: %s", event.path, type(exc).__name__)
            return "error", type(exc).__name__
        if status not in STATUSES:
            self.stats["handler_errors"] += 1
            log.warning("shim handler returned an invalid status for %r", event.path)
            return "error", "InvalidHandlerStatus"
        return status, None
