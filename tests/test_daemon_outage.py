"""MongoDB outage (DESIGN §5 "Outage"): the daemon stays up, /readyz goes 503 and
back, nothing is dropped, and it converges once MongoDB returns.

These tests stop and restart the session's test server (``restartable_server``);
every test restarts it in a ``finally`` so a failed assertion never leaves the
rest of the session without a server.
"""

from __future__ import annotations

import json
import time
import uuid

import pymongo
import pytest

from testkit.measure import wait_for
from testkit.daemon_fixtures import SignalWriter, assert_nothing_lost

pytestmark = pytest.mark.integration

SELECTION_MS = 400  # short server-selection timeout: each failed attempt returns fast
OUTAGE_S = 2.0  # how long MongoDB stays down at least (the scenario, not a wait for a result)


@pytest.fixture
def cred_url(restartable_server):
    """The test server's URL with real credentials in it (a user created for this test),
    so "no credentials in any error" is checked against something that could leak."""
    user, password = f"u{uuid.uuid4().hex[:8]}", f"pw-{uuid.uuid4().hex}"
    admin = pymongo.MongoClient(restartable_server.url, serverSelectionTimeoutMS=5000)
    try:
        admin.admin.command("createUser", user, pwd=password, roles=["root"])
    except pymongo.errors.OperationFailure as exc:  # pragma: no cover - depends on the server
        admin.close()
        pytest.skip(f"the test server cannot create users: {exc.code}")
    url = restartable_server.url.replace("mongodb://", f"mongodb://{user}:{password}@", 1)
    yield url, user, password
    if restartable_server.proc is None:
        restartable_server.start()
    try:
        admin.admin.command("dropUser", user)
    finally:
        admin.close()


def _no_secret(body: bytes, *secrets: str) -> None:
    text = body.decode(errors="replace")
    for s in secrets:
        assert s not in text, "a credential leaked into a response"


def test_mongo_outage_during_writes(restartable_server, cred_url, data_dir, running):
    url, user, password = cred_url
    d = running(mongodb_url=url, sidecar_server_selection_timeout_ms=SELECTION_MS)
    db = d.daemon.store.db
    writer = SignalWriter(data_dir, n=3000, pace=0.01, episode_every=5)
    writer.start()
    server = restartable_server
    health_codes: list[int | None] = []

    def healthy() -> None:
        r = d.get("/healthz")
        health_codes.append(r.status)
        assert r.status == 200, "the daemon must stay alive while MongoDB is down"

    try:
        wait_for(lambda: writer.count >= 20 or writer.error, 20, what="writes before the outage")
        # Mirroring works before the outage.
        wait_for(lambda: db.memory_hubs.count_documents({"hub_type": "soft_identity"}) >= 10, 20,
                 what="pre-outage writes mirrored")
        server.stop()
        down_at = time.monotonic()
        written_at_stop = writer.count

        def not_ready():
            healthy()
            r = d.get("/readyz")
            return r.status == 503 and r.json()["ready"] is False
        wait_for(not_ready, 15, 0.05, "/readyz to go 503 while MongoDB is down")

        seen: dict = {}

        def status_shows_outage():
            healthy()
            r = d.get("/memory/status")
            _no_secret(r.body, password, user)
            s = r.json()
            seen["status"] = s
            return (s["mongo"]["connected"] is False and s["mongo"]["error"]
                    and s["sidecar"]["pending"] > 0)
        wait_for(status_shows_outage, 15, 0.05, "status to show the outage with pending changes")
        status = seen["status"]
        assert status["sidecar"]["ready"] is True  # start-up was done; only MongoDB is away
        assert "mongo_unavailable" in status["sidecar"]["errors_by_kind"]

        # Parity cannot be computed while MongoDB is away: a clean 503, no credentials.
        parity = d.get("/parity")
        assert parity.status == 503
        _no_secret(parity.body, password, user)
        _no_secret(d.get("/metrics").body, password, user)

        # Writes keep going while MongoDB is down (the API is never blocked).
        wait_for(lambda: (healthy() or True) and writer.count >= written_at_stop + 50
                 and time.monotonic() - down_at >= OUTAGE_S, 30, 0.05, "writes during the outage")
        assert writer.error is None
    finally:
        if server.proc is None:
            server.start()

    def ready_again():
        healthy()
        return d.get("/readyz").status == 200
    wait_for(ready_again, 30, 0.05, "/readyz back to 200 after MongoDB returned")
    writer.finish()
    assert writer.count > written_at_stop + 50
    d.wait_parity(30)
    assert_nothing_lost(db, data_dir, writer.learners, writer.episodes)
    assert set(health_codes) == {200}
    status = d.get("/memory/status").json()
    assert status["mongo"]["connected"] is True and status["mongo"]["error"] is None
    assert status["sidecar"]["pending"] == 0


def test_daemon_started_while_mongo_is_down_waits_then_gets_ready(restartable_server, cred_url, data_dir,
                                                                  running):
    url, user, password = cred_url
    server = restartable_server
    (data_dir / "structured_hubs").mkdir()
    (data_dir / "structured_hubs" / "soft_identity.json").write_text(
        json.dumps({"learner-a": {"band": "steady"}, "learner-b": {"band": "low"}}, indent=2))
    server.stop()
    try:
        d = running(wait_ready=False, mongodb_url=url, sidecar_server_selection_timeout_ms=SELECTION_MS)
        seen: dict = {}

        def waiting():
            assert d.get("/healthz").status == 200
            r = d.get("/readyz")
            s = d.get("/memory/status")
            _no_secret(r.body + s.body, password, user)
            seen["ready"], seen["status"] = r, s.json()
            return r.status == 503 and s.json()["mongo"]["error"]
        wait_for(waiting, 15, 0.05, "the daemon to report that it waits for MongoDB")
        status = seen["status"]
        assert status["sidecar"]["phase"] == "connecting"
        assert status["sidecar"]["ready"] is False
        assert status["mongo"]["connected"] is False
        assert seen["ready"].json()["reason"] == "starting: connecting"
        # A write while MongoDB is down, before the daemon is ready: the start-up reconcile has it.
        (data_dir / "structured_hubs" / "learner_preferences.json").write_text(
            json.dumps({"learner-a": {"density": "high"}}, indent=2))
    finally:
        if server.proc is None:
            server.start()
    wait_for(lambda: d.get("/readyz").status == 200, 30, 0.05, "ready after MongoDB started")
    assert d.get("/memory/status").json()["sidecar"]["phase"] == "running"
    report = d.wait_parity(10)
    assert report["mongo_counts"]["hub_entries"] == 3


def test_outage_between_a_write_and_its_events_loses_no_event(data_dir, running):
    import threading

    from sidecar.store import MongoUnavailable

    d = running()
    db = d.daemon.store.db
    rel = "runs/run_a.json"
    (data_dir / "runs").mkdir()
    (data_dir / rel).write_text(json.dumps({"run_id": "a"}, indent=2))
    wait_for(lambda: db.memory_files.find_one({"_id": rel}), 10, what=f"{rel} mirrored")
    store = d.daemon.store
    real = store.record_events
    injected = threading.Event()

    def drops_once(events):
        # MongoDB goes away right after acknowledging the write, before its events.
        if not injected.is_set() and any(e["event_type"] == "file_deleted_recorded" for e in events):
            injected.set()
            raise MongoUnavailable("AutoReconnect: connection closed (injected)")
        return real(events)
    store.record_events = drops_once
    (data_dir / rel).unlink()
    wait_for(injected.is_set, 10, what="the injected failure")
    assert db.memory_files.find_one({"_id": rel})["deleted_at"] is not None  # the write itself landed
    wait_for(lambda: db.memory_events.find_one({"event_type": "file_deleted_recorded", "path": rel}), 3,
             what="the deletion's event after MongoDB came back")


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def test_frozen_mongodb_write_is_pending_lags_and_stalls_readyz(restartable_server, data_dir, running):
    """SIGSTOP the server while a write is on its way: the path stays pending (in
    flight), lag grows, /readyz is 503 with the reason; SIGCONT: it converges, 200."""
    import os
    import signal

    d = running(sidecar_write_stall_s=0.5)
    db = d.daemon.store.db
    (data_dir / "runs").mkdir()
    (data_dir / "runs" / "run_warm.json").write_text(json.dumps({"run_id": "warm"}))
    wait_for(lambda: db.memory_files.find_one({"_id": "runs/run_warm.json"}), 10, what="a write before the freeze")
    wait_for(lambda: len(d.daemon.pending) == 0, 10, what="nothing pending before the freeze")
    assert d.get("/readyz").status == 200
    rel = "runs/run_frozen.json"
    pid = restartable_server.proc.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        (data_dir / rel).write_text(json.dumps({"run_id": "frozen"}))
        # Taken by the writer, its write hanging: still pending, everywhere it is reported.
        wait_for(lambda: rel in d.daemon.pending.inflight(), 10, what="the batch in flight")
        assert d.daemon.pending.paths() == {rel}  # what /parity counts as pending
        seen: dict = {}

        def stalled():
            r = d.get("/readyz")
            seen["readyz"] = r
            return r.status == 503 and r.json()["reason"].startswith("mongodb write stalled for ")
        wait_for(stalled, 10, 0.05, "/readyz 503 for the stalled write")
        assert seen["readyz"].json()["ready"] is False
        status = d.get("/memory/status").json()["sidecar"]
        assert status["pending"] == 1 and status["lag_seconds"] > 0
        assert status["write_inflight_seconds"] > 0.5
        metrics = d.get("/metrics").body.decode()
        assert _metric(metrics, "sidecar_pending_changes") == 1
        assert _metric(metrics, "sidecar_write_inflight_seconds") > 0.5
        lag = _metric(metrics, "sidecar_lag_seconds")
        assert lag > 0
        wait_for(lambda: d.get("/memory/status").json()["sidecar"]["lag_seconds"] > lag, 10, 0.05,
                 "the lag to grow while the write hangs")
        assert d.get("/memory/status").json()["sidecar"]["pending"] == 1
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_for(lambda: d.get("/readyz").status == 200, 30, 0.05, "/readyz back to 200 once the write completed")
    wait_for(lambda: db.memory_files.find_one({"_id": rel, "content.run_id": "frozen"}), 30,
             what="the frozen write mirrored")
    wait_for(lambda: d.get("/memory/status").json()["sidecar"]["pending"] == 0, 30, 0.05, "nothing pending")
    status = d.get("/memory/status").json()["sidecar"]
    assert status["write_inflight_seconds"] == 0 and status["lag_seconds"] == 0
    assert _metric(d.get("/metrics").body.decode(), "sidecar_write_inflight_seconds") == 0
    d.wait_parity(20)
