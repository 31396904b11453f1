"""ShimServer on its own: frame validation, isolation of bad peers, socket file hygiene."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import os
import shutil
import socket
import stat
import struct
import sys
import tempfile
import threading

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from shim_helpers import RecordingHandler, ServerThread, at_eof, connect, frame, header, read_reply, wait_until  # noqa: E402

from sidecar.shimserver import BadFrame, ShimServer, parse_header, validate_path  # noqa: E402


@pytest.fixture
def sockdir():
    # Short: AF_UNIX paths are limited to ~108 bytes.
    path = tempfile.mkdtemp(prefix="shimsrv-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def served(sockdir):
    handler = RecordingHandler()
    server = ServerThread(os.path.join(sockdir, "s.sock"), handler).start()
    yield server, handler
    server.close()
    wait_until(lambda: not server.thread.is_alive(), what="server thread to stop")


def good_frame(path="ok.json", body=b'{"a": 1}', **overrides):
    return frame(header(path=path, _body=body, **overrides), body)


def assert_rejected(server, payload: bytes, expect_reply: bool = True) -> dict | None:
    before = server.server.stats["bad_frames"]
    with connect(server.server.path) as s:
        s.sendall(payload)
        reply = read_reply(s) if expect_reply else None
        assert at_eof(s), "the server must close a connection after a bad frame"
    wait_until(lambda: server.server.stats["bad_frames"] == before + 1, what="bad frame counted")
    if reply is not None:
        assert reply["ok"] is False and reply["status"] == "error"
        assert reply["error"].startswith("bad frame: ")
    return reply


def assert_still_serving(server, handler):
    with connect(server.server.path) as s:
        s.sendall(good_frame(path="still/alive.json"))
        assert read_reply(s) == {"ok": True, "status": "written", "error": None}
    assert handler.events[-1].path == "still/alive.json"


# --- valid traffic -------------------------------------------------------------------


def test_many_frames_on_one_connection_in_order(served):
    server, handler = served
    with connect(server.server.path) as s:
        for i in range(5):
            s.sendall(good_frame(path=f"f{i}.json", body=str(i).encode(), seq=i, ack=False))
        s.sendall(frame(header(op="delete", path="f0.json", size=0, sha256=None, mtime_ns=None, seq=9, _body=b""), b""))
        assert read_reply(s)["status"] == "written"
        s.shutdown(socket.SHUT_WR)
        assert at_eof(s)  # exactly one reply: ack=false frames get none
    events = handler.wait_for(6)
    assert [(e.op, e.path, e.data, e.seq) for e in events] == [
        *[("write", f"f{i}.json", str(i).encode(), i) for i in range(5)],
        ("delete", "f0.json", None, 9),
    ]
    assert events[0].sha256 == hashlib.sha256(b"0").hexdigest() and events[0].pid == 1234
    assert server.server.stats["frames"] == 6 and server.server.stats["replies"] == 1


def test_async_write_may_leave_the_hash_out_but_a_given_one_is_checked(served):
    # The async shim sends no sha256 (the daemon checks the bytes against the
    # file); when a client does send one, it must still match.
    server, handler = served
    with connect(server.server.path) as s:
        s.sendall(good_frame(path="nohash.json", body=b"abc", sha256=None, ack=False))
        s.sendall(good_frame(path="sync.json"))
        assert read_reply(s)["status"] == "written"
    events = handler.wait_for(2)
    assert (events[0].path, events[0].data, events[0].sha256) == ("nohash.json", b"abc", None)
    assert_rejected(server, good_frame(path="bad.json", body=b"abc", sha256="0" * 64, ack=False),
                    expect_reply=False)
    assert len(handler.events) == 2


def test_handler_error_replies_with_the_class_name_only(served):
    server, handler = served
    handler.raises = KeyError("learner-42 secret preferences")
    with connect(server.server.path) as s:
        s.sendall(good_frame())
        assert read_reply(s) == {"ok": False, "status": "error", "error": "KeyError"}
        handler.raises = None
        s.sendall(good_frame())  # same connection: a valid frame never ends it
        assert read_reply(s)["ok"] is True
    assert server.server.stats["handler_errors"] == 1


def test_handler_returning_nonsense_is_an_error(served):
    server, handler = served
    handler.status = "maybe"
    with connect(server.server.path) as s:
        s.sendall(good_frame())
        assert read_reply(s) == {"ok": False, "status": "error", "error": "InvalidHandlerStatus"}


# --- bad frames ------------------------------------------------------------------------

BAD_HEADERS = {
    "not json": b"{not json",
    "not utf-8": b"\xff\xfe",
    "array": b"[1, 2]",
    "version": header(v=2),
    "version bool": header(v=True),
    "op": header(op="chmod"),
    "ack type": header(ack=1),
    "path traversal": header(path="../x.json"),
    "inner traversal": header(path="a/../../x.json"),
    "absolute path": header(path="/etc/passwd"),
    "dot part": header(path="./x.json"),
    "double slash": header(path="a//x.json"),
    "trailing slash": header(path="a/"),
    "empty path": header(path=""),
    "nul": header(path="a\x00b"),
    "path type": header(path=["x"]),
    "size type": header(size="8"),
    "negative size": header(size=-1),
    "sha upper": header(sha256="A" * 64),
    "sha short": header(sha256="abc"),
    "sha missing on a sync write": header(sha256=None),
    "mtime type": header(mtime_ns="now"),
    "seq negative": header(seq=-1),
    "pid zero": header(pid=0),
    "pid bool": header(pid=True),
    "delete with body": header(op="delete", sha256=None),
}


@pytest.mark.parametrize("name", list(BAD_HEADERS))
def test_bad_headers_are_rejected_and_the_server_keeps_serving(served, name):
    server, handler = served
    h = BAD_HEADERS[name]
    raw = h if isinstance(h, bytes) else json.dumps(h).encode()
    reply = assert_rejected(server, struct.pack(">I", len(raw)) + raw)
    assert "Traceback" not in reply["error"]
    assert handler.events == []
    assert_still_serving(server, handler)


def test_oversized_header_is_rejected_before_reading_it(served):
    server, handler = served
    assert_rejected(server, struct.pack(">I", 64 * 1024 + 1) + b"x" * 16)
    assert_rejected(server, struct.pack(">I", 0))
    assert_still_serving(server, handler)


def test_body_not_matching_its_sha256_is_rejected(served):
    server, handler = served
    h = header(_body=b"original")
    assert_rejected(server, frame(h, b"tampered"))
    assert handler.events == []
    assert_still_serving(server, handler)


def test_body_over_the_limit_is_rejected_before_reading_it(sockdir):
    handler = RecordingHandler()
    with ServerThread(os.path.join(sockdir, "s.sock"), handler, max_body=1024) as server:
        reply = assert_rejected(server, frame(header(size=1025, _body=b""), b""))
        assert "too large" in reply["error"]


def test_truncated_frame_counts_and_closes(served):
    server, handler = served
    before = server.server.stats["bad_frames"]
    with connect(server.server.path) as s:
        s.sendall(good_frame()[:-3])  # body cut short, then the peer goes away
        s.shutdown(socket.SHUT_WR)
        assert at_eof(s)
    wait_until(lambda: server.server.stats["bad_frames"] == before + 1, what="truncation counted")
    assert handler.events == []


def test_a_bad_peer_does_not_disturb_another_connection(served):
    server, handler = served
    with connect(server.server.path) as good:
        good.sendall(good_frame(path="a.json"))
        assert read_reply(good)["ok"]
        assert_rejected(server, frame(header(path="../../etc/shadow")))
        good.sendall(good_frame(path="b.json"))
        assert read_reply(good)["ok"]
    assert [e.path for e in handler.events] == ["a.json", "b.json"]


def test_validators_directly():
    assert validate_path("structured_hubs/learner_preferences.json") == "structured_hubs/learner_preferences.json"
    assert validate_path("ünïcode/ok.json")
    for bad in ("..", "a/..", "/a", "a\x00", "", "a/./b", "\udcff"):
        with pytest.raises(BadFrame):
            validate_path(bad)
    assert parse_header(json.dumps(header(extra_key="ignored")).encode())["path"] == "x.json"


# --- socket file ---------------------------------------------------------------------------


def test_socket_is_owner_only_and_parent_is_created(sockdir):
    path = os.path.join(sockdir, "sub", "dir", "s.sock")
    with ServerThread(path, RecordingHandler()) as server:
        st = os.lstat(path)
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o600
        assert server.server.stats["connections"] == 0
        assert os.listdir(os.path.dirname(path)) == ["s.sock"]  # no temp leftovers
    assert not os.path.exists(path)  # stop() removes its own socket


def test_stale_socket_is_replaced(sockdir):
    path = os.path.join(sockdir, "s.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()  # the file stays, nobody listens: what a kill -9 leaves
    handler = RecordingHandler()
    with ServerThread(path, handler) as server:
        assert_still_serving(server, handler)


def test_a_live_socket_is_not_stolen(served):
    server, _ = served
    other = ServerThread(server.server.path, RecordingHandler())
    with pytest.raises(OSError) as info:
        other.start()
    assert info.value.errno == errno.EADDRINUSE
    assert os.path.exists(server.server.path)


def test_a_regular_file_is_never_removed(sockdir):
    path = os.path.join(sockdir, "s.sock")
    with open(path, "w") as f:
        f.write("precious")
    server = ServerThread(path, RecordingHandler())
    with pytest.raises(FileExistsError):
        server.start()
    with open(path) as f:
        assert f.read() == "precious"


def test_world_accessible_mode_is_refused():
    async def handler(event):
        return "written"

    with pytest.raises(ValueError):
        ShimServer("/tmp/x.sock", handler, socket_mode=0o666)


def test_stop_without_start_and_twice(sockdir):
    async def scenario():
        server = ShimServer(os.path.join(sockdir, "s.sock"), RecordingHandler())
        await server.stop()
        async with server:
            pass
        await server.stop()

    asyncio.run(scenario())


def test_stop_closes_open_connections(sockdir):
    handler = RecordingHandler()
    server = ServerThread(os.path.join(sockdir, "s.sock"), handler).start()
    try:
        s = connect(server.server.path)
        s.sendall(good_frame())
        read_reply(s)
        server.stop_server()
        assert at_eof(s)
        s.close()
    finally:
        server.close()
    assert not any(t is server.thread and t.is_alive() for t in threading.enumerate())


def test_a_connection_whose_task_starts_after_stop_is_closed_not_served(sockdir):
    """Accepted just before stop(): its task runs after stop's snapshot of the
    connections, and must close instead of serving past the loop's end."""

    class Writer:
        closed = False

        def close(self):
            self.closed = True

    async def scenario():
        server = ShimServer(os.path.join(sockdir, "s.sock"), RecordingHandler())
        await server.start()
        await server.stop()
        writer = Writer()
        await asyncio.wait_for(server._on_connect(asyncio.StreamReader(), writer), 5)
        return server, writer

    server, writer = asyncio.run(scenario())
    assert writer.closed
    assert server.stats["connections"] == 0 and not server._tasks
