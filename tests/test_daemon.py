"""memory-sidecar run: continuous mirroring, fresh volume, status endpoints."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from testkit import ROOT
from testkit.measure import wait_for

pytestmark = pytest.mark.integration

# DESIGN §5: once writes stop, MongoDB equals the data dir within 1 s. That bound is a
# timing and is measured in bench/ (bench_latency.py: close -> visible); a test only
# waits, with a deadline, for the convergence itself (a timing assertion flakes under load).
CONVERGENCE_S = float(os.environ.get("SIDECAR_TEST_CONVERGENCE_S", "10.0"))

LEGACY_WRITER = r"""
import sys
sys.path.insert(0, sys.argv[2])
from testkit.corpus import LegacyWriter
w = LegacyWriter(sys.argv[1], seed=3)
w.start()
for i in range(int(sys.argv[3])):
    w.learner_signal(f"learner-{i % 25}", i)
    if i % 10 == 0:
        w.save_episode(f"run-{i}")
        w.save_run(f"run-{i}")
        w.save_jobs(i // 10 + 1)
        w.save_snapshot([f"run-{i}"])
"""


def files_sha(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and "reports" not in p.parts}


def test_legacy_writer_process_converges_once_writes_stop(data_dir, running):
    d = running()
    proc = subprocess.run([sys.executable, "-c", LEGACY_WRITER, str(data_dir), str(ROOT), "120"],
                          capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    last_write = time.monotonic()
    # Poll parity; the check that first succeeds must have *started* within the bound.
    deadline = last_write + 30
    while True:
        began = time.monotonic()
        report = d.parity()
        if report["parity"]["all_match"] or began > deadline:
            break
    assert report["parity"]["all_match"], report["kinds"]
    assert began - last_write <= CONVERGENCE_S, f"converged only {began - last_write:.2f}s after the last write"
    assert report["source_counts"]["hub_entries"] == 75
    assert report["source_counts"]["episodes"] == 12 and report["mongo_counts"]["episodes"] == 12
    assert report["source_counts"]["files"] == 13  # 12 run files + scheduled_jobs.json
    # The parity check above includes a full scan; its start is what must be within the bound.
    assert d.daemon.status.snapshot()["pending"] == 0
    db = d.daemon.store.db
    assert db.memory_events.count_documents({"event_type": "hub_deleted"}) == 0


def test_each_write_is_mirrored_before_the_next(data_dir, running):
    d = running()
    coll = d.daemon.store.db.memory_hubs
    for i in range(5):
        path = data_dir / "structured_hubs" / "learner_preferences.json"
        data = json.loads(path.read_text()) if path.exists() else {}
        data[f"k{i}"] = {"v": i}
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(data, indent=2))
        wait_for(lambda: coll.find_one({"_id": f"learner_preferences/k{i}"}), CONVERGENCE_S, 0.005,
                 f"entry k{i} within {CONVERGENCE_S}s of its write")


def test_only_changed_entries_are_written(data_dir, running):
    d = running()
    path = data_dir / "structured_hubs" / "soft_identity.json"
    path.parent.mkdir()
    path.write_text(json.dumps({f"l{i}": {"n": i} for i in range(200)}, indent=2))
    d.wait_parity()
    counter = d.daemon.status.writes.labels(collection="memory_hubs", op="update")
    before = counter._value.get()
    data = json.loads(path.read_text())
    data["l7"] = {"n": -1}
    path.write_text(json.dumps(data, indent=2))
    # The counter moves after MongoDB acknowledged the flush that carried the edit.
    wait_for(lambda: counter._value.get() > before, 10, what="the edit to be flushed")
    assert d.daemon.store.db.memory_hubs.find_one({"_id": "soft_identity/l7"})["payload"] == {"n": -1}
    assert counter._value.get() - before == 1


def test_fresh_volume_restored_in_mongo_mode(legacy_dir, running, tmp_path, make_config, store):
    from sidecar.sync import run_sync

    original = files_sha(legacy_dir)
    run_sync(make_config(), store)
    fresh = tmp_path / "fresh" / "system"
    d = running(runtime_data_dir=fresh, memory_store_backend="mongo")
    assert files_sha(fresh) == original
    assert d.daemon.status.restored_files == 4
    assert d.get("/readyz").status == 200


def test_hub_recreated_as_braces_is_refilled_in_mongo_mode(legacy_dir, running):
    d = running(memory_store_backend="mongo")
    hub = legacy_dir / "structured_hubs" / "soft_identity.json"
    original = hub.read_bytes()
    hub.write_text("{}")  # what the API does at start on a fresh volume
    wait_for(lambda: hub.read_bytes() == original, 10, what="the hub file to be restored from MongoDB")
    db = d.daemon.store.db
    assert db.memory_hubs.count_documents({"hub_type": "soft_identity"}) == 6
    # The event is recorded right after the file is written back.
    event = wait_for(lambda: db.memory_events.find_one({"event_type": "restored_from_mongo"}), 10,
                     what="the restore event")
    assert event["path"] == "structured_hubs/soft_identity.json"


def test_hub_recreated_as_braces_never_wipes_in_file_mode(legacy_dir, running):
    d = running()
    hub = legacy_dir / "structured_hubs" / "soft_identity.json"
    hub.write_text("{}")
    held = wait_for(lambda: d.get("/memory/status").json()["sidecar"]["divergences"]["items"], 10,
                    what="the held divergence to show in the status")
    assert [(h["path"], h["count"], h["reason"]) for h in held] == [
        ("structured_hubs/soft_identity.json", 6, "emptied")]
    assert d.daemon.store.db.memory_hubs.count_documents({"hub_type": "soft_identity"}) == 6


SECRET_VALUE = "do-not-leak-7f3a9c"


def test_status_endpoints_shapes_tokens_and_no_values(data_dir, running, mongo_url):
    (data_dir / "structured_hubs").mkdir()
    (data_dir / "structured_hubs" / "learner_preferences.json").write_text(
        json.dumps({"learner-1": {"note": SECRET_VALUE}}, indent=2))
    (data_dir / "structured_hubs" / "bad.json").write_text('{"x": ' + json.dumps(SECRET_VALUE))
    d = running()
    assert d.get("/healthz").status == 200
    assert d.get("/readyz").json() == {"ready": True}
    # A truncated file is re-checked a few times before it is reported (it may be mid-write).
    wait_for(lambda: d.get("/memory/status").json()["sidecar"]["errors_by_kind"].get("invalid_json"), 10,
             what="the bad file to be reported")
    status = d.get("/memory/status").json()
    assert {"configured_backend", "active_mode", "dual_write_enabled", "mongo"} <= set(status)
    assert status["mongo"]["connected"] is True and status["mongo"]["error"] is None
    assert {"watcher", "pending", "last_sync_at", "errors_by_kind", "problems"} <= set(status["sidecar"])
    assert status["sidecar"]["errors_by_kind"].get("invalid_json") == 1
    parity = d.get("/parity").json()
    hubs = parity["kinds"]["hubs"]
    assert {"files", "entries", "documents", "missing", "extra", "different", "checksum_source",
            "checksum_mongo", "pending", "mismatch"} <= set(hubs)
    assert "lag_seconds" in parity["pending"]
    metrics = d.get("/metrics").body.decode()
    for name in ("sidecar_events_total", "sidecar_writes_total", "sidecar_errors_total",
                 "sidecar_bulk_write_seconds_bucket", "sidecar_pending_changes", "sidecar_lag_seconds"):
        assert name in metrics
    # Token: state changes need it.
    assert d.get("/reconcile", "POST").status == 401
    assert d.get("/reconcile", "POST", {"Authorization": "Bearer wrong"}).status == 401
    assert d.get("/reconcile", "POST", {"Authorization": "Bearer test-token-123"}).status == 202
    # No payload value, token or URL credential in any response.
    for path in ("/healthz", "/readyz", "/memory/status", "/parity", "/metrics"):
        body = d.get(path).body.decode()
        assert SECRET_VALUE not in body and "test-token-123" not in body


def test_no_token_configured_disables_state_changes(data_dir, running):
    d = running(sidecar_token=None)
    assert d.get("/reconcile", "POST", {"Authorization": "Bearer anything"}).status == 403


def test_status_server_binds_loopback_by_default(data_dir, running):
    d = running()
    assert d.config.sidecar_http_host == "127.0.0.1"
