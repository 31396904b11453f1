"""The shim against a real ShimServer over a real Unix socket.

The server runs on its own event loop in a thread (``ServerThread``), the
shim on the test's thread, as in production. Every wait is bounded and polls
or blocks on an event; nothing asserts on durations.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import shim  # noqa: E402
from shim import _transport  # noqa: E402
from shim_helpers import WAIT, RecordingHandler, ServerThread, wait_until  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _shim_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name in ("mentorix-shim-sender", "test-shimserver") and t.is_alive()]


@pytest.fixture(autouse=True)
def no_shim_thread_leak():
    before = set(_shim_threads())
    yield
    shim.uninstall()
    wait_until(lambda: set(_shim_threads()) <= before, what="shim and server threads to stop")


@pytest.fixture
def env(tmp_path):
    data = tmp_path / "data" / "system"
    data.mkdir(parents=True)
    # AF_UNIX paths are limited to ~108 bytes; pytest's tmp_path can be long.
    sockdir = tempfile.mkdtemp(prefix="shim-", dir="/tmp")
    servers: list[ServerThread] = []

    def serve(handler, **kwargs) -> ServerThread:
        server = ServerThread(os.path.join(sockdir, "s.sock"), handler, **kwargs).start()
        servers.append(server)
        return server

    def install(**kwargs):
        kwargs.setdefault("data_dir", str(data))
        kwargs.setdefault("socket_path", os.path.join(sockdir, "s.sock"))
        assert shim.install(**kwargs)

    yield SimpleNamespace(data=data, sock=os.path.join(sockdir, "s.sock"), serve=serve, install=install)
    shim.uninstall()
    for server in servers:
        server.close()
    shutil.rmtree(sockdir, ignore_errors=True)


# --- async ------------------------------------------------------------------------


def test_async_delivers_in_order_with_exact_bytes(env):
    handler = RecordingHandler()
    env.serve(handler)
    (env.data / "gone.json").write_text("{}")  # before the shim: only its removal is an event
    env.install(mode="async")
    expected = []
    for i in range(30):
        name = f"hub{i}.json"
        body = json.dumps({"i": i, "text": "é" * i}, indent=2)
        (env.data / name).write_text(body, encoding="utf-8")
        expected.append(("write", name, body.encode()))
    (env.data / "big.bin").write_bytes(os.urandom(300_000))  # larger than one socket buffer
    expected.append(("write", "big.bin", (env.data / "big.bin").read_bytes()))
    # (Not a file written above: a write followed in the same batch by its file's
    # removal is legitimately not sent, "superseded".)
    os.remove(env.data / "gone.json")
    expected.append(("delete", "gone.json", None))
    assert shim.flush(WAIT)
    events = handler.wait_for(len(expected))
    assert [(e.op, e.path, e.data) for e in events] == expected
    seqs = [e.seq for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert all(e.sha256 is None for e in events)  # async bodies are checked against the file instead
    assert {e.pid for e in events} == {os.getpid()}
    assert all(not e.ack for e in events)
    stats = shim.stats()
    assert stats["sent"] == len(expected)
    assert stats["dropped_unavailable"] == stats["dropped_queue_full"] == stats["errors"] == 0


def test_async_rewrites_of_one_file_may_coalesce_but_the_last_version_arrives(env):
    # The sender settles an event (lstat) after the call returned: a version
    # already overwritten by the time it looks is not sent (counted
    # "superseded"); the newer write's own event carries the file.
    handler = RecordingHandler()
    env.serve(handler)
    env.install(mode="async")
    bodies = [json.dumps({"i": i, "pad": "x" * i}) for i in range(50)]  # all sizes differ
    for body in bodies:
        (env.data / "hot.json").write_text(body, encoding="utf-8")
    assert shim.flush(WAIT)
    stats = shim.stats()
    assert stats["sent"] + stats["superseded"] == len(bodies) == stats["writes"] + stats["superseded"]
    events = handler.wait_for(stats["sent"])
    assert events[-1].data == bodies[-1].encode()
    assert all(e.data in {b.encode() for b in bodies} for e in events)
    assert [e.seq for e in events] == sorted(e.seq for e in events)


def test_async_without_sidecar_drops_counts_and_does_not_reconnect_per_write(env, monkeypatch):
    # With a long retry interval the whole burst must cost one connect.
    monkeypatch.setattr(_transport, "RETRY_INTERVAL_S", 3600.0)
    env.install(mode="async")
    for i in range(200):
        (env.data / f"f{i}.json").write_text(str(i))
    assert shim.flush(WAIT)
    assert [(env.data / f"f{i}.json").read_text() for i in (0, 199)] == ["0", "199"]
    stats = shim.stats()
    assert stats["connect_attempts"] == 1
    assert stats["dropped_unavailable"] == 200
    assert stats["sent"] == 0 and stats["errors"] == 0


def test_async_events_flow_again_once_the_sidecar_arrives(env, monkeypatch):
    monkeypatch.setattr(_transport, "RETRY_INTERVAL_S", 0.05)
    env.install(mode="async")
    (env.data / "early.json").write_text("lost to the shim, seen by the watcher")
    assert shim.flush(WAIT)
    assert shim.stats()["dropped_unavailable"] == 1

    handler = RecordingHandler()
    env.serve(handler)
    probe = iter(range(10_000))

    def delivered():
        (env.data / f"probe{next(probe)}.json").write_text("x")
        shim.flush(WAIT)
        return handler.events

    wait_until(delivered, what="events to reach the new sidecar")
    (env.data / "after.json").write_text("after")
    assert shim.flush(WAIT)
    # flush() means "on the wire"; the handler may still be catching up.
    wait_until(lambda: handler.events and handler.events[-1].path == "after.json", what="the last event")


def test_async_survives_a_sidecar_restart(env, monkeypatch):
    monkeypatch.setattr(_transport, "RETRY_INTERVAL_S", 0.05)
    first = RecordingHandler()
    server = env.serve(first)
    env.install(mode="async")
    (env.data / "one.json").write_text("1")
    assert shim.flush(WAIT)
    first.wait_for(1)
    server.close()

    second = RecordingHandler()
    env.serve(second)
    probe = iter(range(10_000))

    def delivered():
        (env.data / f"probe{next(probe)}.json").write_text("x")
        shim.flush(WAIT)
        return second.events

    wait_until(delivered, what="events to reach the restarted sidecar")


def test_async_full_queue_drops_and_counts(env):
    gate = asyncio.Event()
    handler = RecordingHandler()

    async def hold(event):
        await gate.wait()

    handler.before_reply = hold
    server = env.serve(handler)
    env.install(mode="async", queue_size=2, timeout_ms=30_000)
    # The server reads frame 1 and then waits in the handler; frame 2 (1 MiB)
    # cannot fit in the socket buffer, so the sender blocks and the queue fills.
    for i in range(10):
        (env.data / f"big{i}.bin").write_bytes(bytes([i]) * (1 << 20))
    dropped = shim.stats()["dropped_queue_full"]
    assert dropped >= 1
    server.loop.call_soon_threadsafe(gate.set)
    assert shim.flush(WAIT)
    events = handler.wait_for(10 - dropped)
    stats = shim.stats()
    assert stats["sent"] + stats["dropped_queue_full"] == 10
    assert [e.seq for e in events] == sorted(e.seq for e in events)


def test_uninstall_stops_the_sender_thread(env):
    env.serve(RecordingHandler())
    env.install(mode="async")
    (env.data / "x.json").write_text("x")
    assert any(t.name == "mentorix-shim-sender" for t in _shim_threads())
    shim.uninstall()
    wait_until(lambda: not any(t.name == "mentorix-shim-sender" for t in _shim_threads()), what="sender to stop")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_sends_on_its_own_connection(env):
    # Pre-fork servers (gunicorn) fork after the shim is installed: the child
    # must not share the parent's socket or wait for a sender it lacks.
    handler = RecordingHandler()
    env.serve(handler)
    env.install(mode="async")
    (env.data / "parent.json").write_text("p")
    assert shim.flush(WAIT)
    pid = os.fork()
    if pid == 0:  # child: no pytest teardown, leave with os._exit
        code = 1
        try:
            (env.data / "child.json").write_text("c")
            code = 0 if shim.flush(WAIT) else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    child = wait_until(lambda: [e for e in handler.events if e.path == "child.json"], what="the child's event")
    assert child[0].pid == pid
    (env.data / "parent-again.json").write_text("p2")  # the parent's sender is unaffected
    assert shim.flush(WAIT)
    wait_until(lambda: any(e.path == "parent-again.json" for e in handler.events), what="the parent's event")


# --- sync -------------------------------------------------------------------------


def test_sync_returns_only_after_the_sidecar_acknowledged(env):
    acked = threading.Event()
    handler = RecordingHandler()

    async def store(event):
        await asyncio.sleep(0.05)  # a slow store: the caller must wait for it
        acked.set()

    handler.before_reply = store
    env.serve(handler)
    env.install(mode="sync", on_failure="closed")
    (env.data / "hub.json").write_text('{"a": 1}')
    assert acked.is_set()
    assert handler.events[0].ack and handler.events[0].data == b'{"a": 1}'
    assert handler.events[0].sha256 == hashlib.sha256(b'{"a": 1}').hexdigest()  # a sync reply vouches for these bytes
    assert shim.stats()["sync_ok"] == 1


@pytest.mark.parametrize("status", ["written", "unchanged", "stale"])
def test_sync_accepts_every_ok_status(env, status):
    env.serve(RecordingHandler(status))
    env.install(mode="sync", on_failure="closed")
    (env.data / "x.json").write_text("x")
    os.remove(env.data / "x.json")
    assert shim.stats()["sync_ok"] == 2


def test_sync_without_sidecar_fail_open_logs_once_and_continues(env, caplog):
    env.install(mode="sync", on_failure="open")
    with caplog.at_level(logging.WARNING, logger="mentorix_shim"):
        for i in range(3):
            (env.data / f"x{i}.json").write_text("payload-never-logged")
    assert len([r for r in caplog.records if r.name == "mentorix_shim"]) == 1
    assert "payload-never-logged" not in caplog.text
    # One write waited and failed; the breaker opened, the next two did not wait.
    stats = shim.stats()
    assert (stats["sync_failed"], stats["unconfirmed"], stats["breaker_opened"]) == (1, 2, 1)
    assert shim.breaker_state() == "open"


def test_sync_without_sidecar_fail_closed_raises(env):
    env.install(mode="sync", on_failure="closed")
    with pytest.raises(OSError) as info:
        (env.data / "x.json").write_text("x")
    assert info.value.errno == errno.EIO
    assert "not confirmed durable in MongoDB" in str(info.value)
    assert (env.data / "x.json").read_text() == "x"


def test_sync_handler_error_raises_in_closed_mode_without_its_message(env):
    handler = RecordingHandler()
    handler.raises = ValueError("contains secret payload")
    env.serve(handler)
    env.install(mode="sync", on_failure="closed", breaker_ms=1)
    with pytest.raises(OSError) as info:
        (env.data / "x.json").write_text("x")
    assert "ValueError" in str(info.value) and "secret" not in str(info.value)
    # The connection stays usable once the handler recovers (the breaker's probe).
    handler.raises = None
    wait_until(lambda: shim.breaker_state() == "probe_due", 5, what="the breaker's probe")
    (env.data / "y.json").write_text("y")
    assert shim.breaker_state() == "closed"
    assert shim.stats()["sync_ok"] == 1


def test_sync_handler_error_fail_open_does_not_raise(env):
    handler = RecordingHandler()
    handler.raises = RuntimeError("store down")
    env.serve(handler)
    env.install(mode="sync", on_failure="open")
    (env.data / "x.json").write_text("x")
    assert shim.stats()["sync_failed"] == 1


def test_sync_timeout_then_recovery(env):
    gate = asyncio.Event()
    handler = RecordingHandler()

    async def hold(event):
        if event.path == "slow.json":
            await gate.wait()

    handler.before_reply = hold
    server = env.serve(handler)
    env.install(mode="sync", on_failure="closed", timeout_ms=200, breaker_ms=1)
    with pytest.raises(OSError) as info:
        (env.data / "slow.json").write_text("x")
    assert "timed out" in str(info.value)
    server.loop.call_soon_threadsafe(gate.set)
    wait_until(lambda: shim.breaker_state() == "probe_due", 5, what="the breaker's probe")
    (env.data / "fast.json").write_text("y")  # a fresh connection, not the stale one
    assert shim.stats()["sync_ok"] == 1


def test_sync_reconnects_after_a_sidecar_restart(env):
    server = env.serve(RecordingHandler())
    env.install(mode="sync", on_failure="closed")
    (env.data / "before.json").write_text("1")
    server.close()
    handler = RecordingHandler()
    env.serve(handler)
    (env.data / "after.json").write_text("2")  # the kept connection is dead: retried once
    assert [e.path for e in handler.events] == ["after.json"]


def test_sync_from_many_threads(env):
    handler = RecordingHandler()
    env.serve(handler)
    env.install(mode="sync", on_failure="closed")
    errors = []

    def work(n):
        try:
            for j in range(10):
                (env.data / f"t{n}-{j}.json").write_text(str(j))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert errors == []
    assert len(handler.events) == 40
    assert shim.stats()["sync_ok"] == 40


# --- activation in a separate process ------------------------------------------------

LEGACY_WRITER = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path

    data = Path(os.environ["RUNTIME_DATA_DIR"])
    (data / "structured_hubs").mkdir(parents=True, exist_ok=True)
    for hub in ("learner_preferences", "operating_context", "soft_identity"):
        (data / "structured_hubs" / f"{hub}.json").write_text(json.dumps({"l1": {"hub": hub}}, indent=2), encoding="utf-8")
    (data / "snapshot.json").write_text(json.dumps({"timestamp": "t", "active_runs": []}, indent=2), encoding="utf-8")
    mod = sys.modules.get("shim") or sys.modules.get("mentorix_shim")
    print(json.dumps({"installed": bool(mod and mod.is_installed()), "stats": mod.stats() if mod else None}))
    """
)


def _run_legacy(env, **extra_env):
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
    child_env.update(
        PYTHONPATH=str(ROOT / "shim" / "activate"),
        RUNTIME_DATA_DIR=str(env.data),
        SIDECAR_SOCKET=env.sock,
        **extra_env,
    )
    out = subprocess.run(
        [sys.executable, "-c", LEGACY_WRITER],
        env=child_env,
        cwd=str(env.data.parent),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_pythonpath_activation_in_sync_mode(env):
    handler = RecordingHandler()
    env.serve(handler)
    report = _run_legacy(env, SIDECAR_SHIM="sync", SIDECAR_SHIM_ON_FAILURE="closed")
    assert report["installed"] and report["stats"]["sync_ok"] == 4
    # sync: everything was acknowledged before the child went on, so it is here now
    assert sorted(e.path for e in handler.events) == [
        "snapshot.json",
        "structured_hubs/learner_preferences.json",
        "structured_hubs/operating_context.json",
        "structured_hubs/soft_identity.json",
    ]


def test_pythonpath_without_sidecar_shim_is_inert(env):
    report = _run_legacy(env)
    assert report["installed"] is False
