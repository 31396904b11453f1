"""Documents written by others (Mentorix's store, an operator, an attacker with
database access) never crash sync, restore, /parity or the daemon's start-up:
each one we cannot use is skipped and reported with its reason and _id (issue 11)."""

from __future__ import annotations

import json

import pytest
from bson import ObjectId

from sidecar.restore import restore
from sidecar.sync import run_parity, run_sync

pytestmark = pytest.mark.integration


def plant(db, files: str) -> None:
    db.memory_hubs.insert_many([
        {"_id": ObjectId(), "hub_type": 5, "item_key": ["x"], "payload": 1},
        {"_id": ObjectId(), "hub_type": "soft_identity", "item_key": "junk-meta", "payload": {"a": 1},
         "_sidecar": "not a dict"},
        {"_id": ObjectId(), "hub_type": "soft_identity", "item_key": "bad-pos", "payload": 2,
         "_sidecar": {"pos": "seven", "version": [1]}},
    ])
    db.episodic_memory.insert_many([
        {"_id": ObjectId(), "run_id": 7, "status": "x"},
        {"_id": "r9", "run_id": "r9", "status": "y", "_sidecar": {"fields": "not a list", "orig": 3}},
    ])
    db.runtime_snapshots.insert_many([{"_id": ObjectId(), "timestamp": 12345, "active_runs": "none"}])
    db[files].insert_many([
        {"_id": ObjectId(), "kind": "hub", "hub_type": "x"},
        {"_id": "runs/weird_kind.json", "kind": ["bad"], "encoding": "json", "content": {}},
        {"_id": "../escape.json", "kind": "other", "encoding": "json", "content": {"a": 1}, "deleted_at": None},
        {"_id": "runs/raw_str.json", "kind": "run", "encoding": "bytes", "raw": "not bytes", "deleted_at": None},
        {"_id": "runs/no_content.json", "kind": "run", "encoding": "json", "deleted_at": None, "format": "x"},
        {"_id": "episodes/skeleton_q.json", "kind": "episode", "doc_id": {"$x": 1}, "deleted_at": None},
    ])


def test_sync_parity_and_restore_skip_and_report_foreign_documents(legacy_dir, config, store, db, tmp_path):
    run_sync(config, store)
    plant(db, config.sidecar_files_collection)
    report, code = run_sync(config, store)
    skipped = {(d["collection"], d["reason"].split(":")[0]) for d in report["foreign_documents"]}
    assert ("memory_hubs", "hub_type/item_key not strings") in skipped
    assert ("episodic_memory", "run_id not a string") in skipped
    assert any(c == config.sidecar_files_collection for c, _ in skipped)
    assert all("_id" in d for d in report["foreign_documents"])
    parity, _ = run_parity(config, store)
    assert "parity" in parity
    result = restore(store, tmp_path / "out")
    assert not (tmp_path / "escape.json").exists()
    reasons = {s["path"]: s["reason"] for s in result.skipped}
    assert "../escape.json" in reasons
    # The usable foreign entries are data (as Mentorix's store would write them): restored with the rest.
    restored = json.loads((tmp_path / "out" / "structured_hubs" / "soft_identity.json").read_text())
    original = json.loads((legacy_dir / "structured_hubs" / "soft_identity.json").read_text())
    assert set(restored) == set(original) | {"junk-meta", "bad-pos"}
    assert all(restored[k] == v for k, v in original.items())
    json.dumps(report, default=str)  # the report stays serialisable


def test_the_daemon_starts_beside_foreign_documents_and_says_what_it_skipped(legacy_dir, running, make_config,
                                                                            store, db):
    run_sync(make_config(), store)
    plant(db, make_config().sidecar_files_collection)
    d = running()
    assert d.get("/readyz").status == 200
    problems = d.get("/memory/status").json()["sidecar"]["problems"]
    assert any(p["reason"] == "foreign_document" for p in problems)
    assert d.get("/parity").status == 200
    (legacy_dir / "structured_hubs" / "soft_identity.json").write_text(json.dumps({"new": 1}, indent=2))
    from testkit.measure import wait_for
    wait_for(lambda: db.memory_hubs.find_one({"item_key": "new"}), 10, what="mirroring beside them")


def test_an_unexpected_start_up_failure_is_logged_and_shown(data_dir, running, monkeypatch, caplog):
    from sidecar.mirror import Mirror

    def broken(self, checksum=False):
        raise RuntimeError("boom in reconcile")
    monkeypatch.setattr(Mirror, "reconcile", broken)
    d = running(wait_ready=False)
    from testkit.measure import wait_for
    r = wait_for(lambda: (lambda r: r if "start-up failed" in r.json().get("reason", "") else None)(
        d.get("/readyz")), 15, what="the failure in /readyz")
    assert r.status == 503 and "RuntimeError: boom in reconcile" in r.json()["reason"]
    assert d.get("/memory/status").json()["sidecar"]["startup_error"].startswith("RuntimeError")
    assert any("start-up failed" in rec.getMessage() for rec in caplog.records)
