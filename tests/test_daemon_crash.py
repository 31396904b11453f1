"""Crash safety (DESIGN §5): ``kill -9`` of the daemon process during a write burst,
then a restart, converges with nothing lost; SIGTERM with unmirrored changes exits
0 within a bound and the next start converges.

The daemon runs as a real process (``python -m sidecar run``), configured only
through the environment, exactly as deployed.
"""

from __future__ import annotations

import uuid

import pytest

from testkit.measure import free_port, wait_for
from testkit.daemon_fixtures import SignalWriter, assert_nothing_lost
from testkit.process import DaemonProcess

pytestmark = pytest.mark.integration

BURST = 300
KILL_AFTER = 60


@pytest.fixture
def proc(tmp_path, data_dir, mongo_url, db_name):
    p = DaemonProcess(tmp_path, data_dir, mongo_url, db_name)
    yield p
    p.close()


def test_kill_9_during_a_write_burst_then_restart_converges(proc, data_dir, db):
    writer = SignalWriter(data_dir, n=BURST, episode_every=10)
    try:
        proc.start().wait_ready()
        writer.start()
        # Kill once the daemon is demonstrably mirroring the burst, not before it started.
        wait_for(lambda: writer.count >= KILL_AFTER and db.memory_hubs.count_documents({}) > 0
                 or writer.error or not writer.is_alive(), 30, 0.01, "the burst to be under way")
        proc.kill()
        killed_at = writer.count
        assert killed_at < BURST, "the kill must land mid-burst"
        assert proc.proc.returncode == -9
        writer.finish(120, stop=False)
        assert writer.count == BURST
        proc.start().wait_ready()
        report = proc.wait_parity(30)
    finally:
        writer.stop_event.set()
        proc.close()
    assert report["source_counts"]["hub_entries"] == 3 * BURST
    assert_nothing_lost(db, data_dir, writer.learners, writer.episodes)
    assert db.memory_hubs.count_documents({}) == 3 * BURST


def test_sigterm_with_unmirrored_changes_exits_zero_and_restart_converges(
        restartable_server, proc, data_dir, db):
    server = restartable_server
    writer = SignalWriter(data_dir, n=40, episode_every=10, prefix="before")
    writer.start()
    writer.finish(stop=False)
    proc.start().wait_ready()
    proc.wait_parity(20)
    # MongoDB away, so the changes below stay pending and the final flush cannot write them.
    late = SignalWriter(data_dir, n=30, episode_every=10, prefix="late", seed=11)
    try:
        server.stop()
        late.start()
        late.finish(stop=False)

        def pending():
            r = proc.get("/memory/status")
            s = r.json() if r is not None and r.status == 200 else None
            return s and s["sidecar"]["pending"] > 0 and s["mongo"]["connected"] is False
        wait_for(pending, 20, 0.05, "unmirrored changes while MongoDB is down")
        # Bounded: SHUTDOWN_SECONDS (10) for the final flush, plus slack for a loaded machine.
        assert proc.terminate(timeout=45) == 0, proc.log_tail()
    finally:
        if server.proc is None:
            server.start()
    assert "Traceback" not in proc.log_tail(100_000)
    proc.start().wait_ready()
    proc.wait_parity(30)
    proc.close()
    assert_nothing_lost(db, data_dir, writer.learners + late.learners, writer.episodes + late.episodes)


def test_sigterm_right_after_a_burst_exits_zero_and_restart_converges(proc, data_dir, db):
    writer = SignalWriter(data_dir, n=80, episode_every=10)
    try:
        proc.start().wait_ready()
        writer.start()
        writer.finish(stop=False)
        # Straight away: events may still be queued or pending; the final flush or the
        # next start's reconcile must cover them.
        assert proc.terminate(timeout=45) == 0, proc.log_tail()
        proc.start().wait_ready()
        proc.wait_parity(30)
    finally:
        writer.stop_event.set()
        proc.close()
    assert "Traceback" not in proc.log_tail(100_000)
    assert_nothing_lost(db, data_dir, writer.learners, writer.episodes)


def test_sigterm_while_waiting_for_mongo_exits_zero_and_leaks_no_credential(tmp_path, data_dir, db_name):
    """Nothing listens at the URL: the process stays up and unready, says why without the
    URL's credentials (in responses and in its log), and stops cleanly on SIGTERM."""
    user, password = "sidecar-user", f"pw-{uuid.uuid4().hex}"
    url = f"mongodb://{user}:{password}@127.0.0.1:{free_port()}/?directConnection=true"
    p = DaemonProcess(tmp_path, data_dir, url, db_name, SIDECAR_SERVER_SELECTION_TIMEOUT_MS="200")
    seen: dict = {}
    try:
        p.start()

        def waiting():
            health, ready, status = p.get("/healthz"), p.get("/readyz"), p.get("/memory/status")
            if None in (health, ready, status):
                return False
            seen.update(health=health, ready=ready, status=status)
            return status.json()["mongo"]["error"] is not None
        wait_for(waiting, 20, 0.05, "the process to report that it waits for MongoDB")
        assert seen["health"].status == 200
        assert seen["ready"].status == 503
        status = seen["status"].json()
        assert status["sidecar"]["phase"] == "connecting" and status["mongo"]["connected"] is False
        for r in seen.values():
            assert password not in r.body.decode() and user not in r.body.decode()
        assert p.terminate(timeout=45) == 0, p.log_tail()
    finally:
        p.close()
    log = p.log_tail(1_000_000)
    assert "waiting for MongoDB" in log
    assert password not in log and user not in log
