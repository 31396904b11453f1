"""Beside Mentorix's own store (DESIGN §8, issue 11): its documents are adopted,
restore and /parity take what it wrote last, and a sync after a rollback settles."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from testkit.corpus import generate
from mentorix_double import MongoMemoryStore, backfill
from sidecar.restore import restore
from sidecar.sync import run_parity, run_sync

pytestmark = pytest.mark.integration


def tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and "reports" not in p.parts}


@pytest.fixture
def corpus(data_dir) -> Path:
    generate(data_dir, learners=150, episodes=20, runs=5)
    return data_dir


def test_a_database_filled_by_mentorix_backfill_is_adopted_and_settles(corpus, config, store, db, tmp_path):
    backfill(db, corpus)
    hubs_before = db.memory_hubs.count_documents({})
    report, code = run_sync(config, store)
    assert code == 0, report["parity"]
    # Adopted, not duplicated: one document per entry, per run, per distinct snapshot.
    assert db.memory_hubs.count_documents({}) == hubs_before == 450
    assert db.episodic_memory.count_documents({}) == 20
    assert db.runtime_snapshots.count_documents({}) == 1
    assert report["writes"]["hubs_upserted"] == report["writes"]["episodes_upserted"] == 0
    assert report["writes"]["snapshots_upserted"] == 0
    again, code = run_sync(config, store)
    assert code == 0 and again["writes"]["total"] == 0, again["writes"]
    restore(store, tmp_path / "out")
    assert tree(tmp_path / "out") == tree(corpus)
    # Mentorix still reads what it expects.
    assert len(MongoMemoryStore(db).load_hubs()) == 450


def test_restore_and_parity_take_the_snapshot_mentorix_wrote_last(corpus, config, store, db, tmp_path):
    run_sync(config, store)
    mentorix = MongoMemoryStore(db)
    newer = datetime(2026, 2, 21, 5, 29, 25, tzinfo=timezone.utc)  # one second after the file's (naive) time
    mentorix.save_snapshot({"active_runs": ["r-new"]}, newer)
    report, code = run_parity(config, store)
    assert code == 1 and report["parity"]["snapshot_match"] is False
    restore(store, tmp_path / "out")
    restored = json.loads((tmp_path / "out" / "snapshot.json").read_text())
    assert restored["active_runs"] == ["r-new"] and restored["timestamp"] == newer.isoformat()
    # An older one written later is not "the latest": compared as instants, not as strings.
    mentorix.save_snapshot({"active_runs": ["r-old"]}, newer - timedelta(days=1))
    restore(store, tmp_path / "out2")
    assert json.loads((tmp_path / "out2" / "snapshot.json").read_text())["active_runs"] == ["r-new"]


def test_rollback_from_the_mongo_backed_api_restores_what_it_wrote_and_the_next_sync_settles(
        corpus, config, store, db, tmp_path):
    run_sync(config, store)
    mentorix = MongoMemoryStore(db)
    hub = json.loads((corpus / "structured_hubs" / "soft_identity.json").read_text())
    first = next(iter(hub))
    mentorix.set_hub("soft_identity", first, {"changed": True})  # an existing entry, its own write
    mentorix.set_hub("soft_identity", "learner-from-mongo-api", {"new": 1})  # ObjectId _id
    ep_path = next((corpus / "episodes").glob("skeleton_*.json"))
    ep = json.loads(ep_path.read_text())
    mentorix.save_episode(dict(ep, status="rerun"))  # replace_one: drops the sidecar's metadata
    mentorix.save_snapshot({"active_runs": []}, datetime.now(timezone.utc))
    # Roll back: the files become what Mentorix's store wrote last.
    out = tmp_path / "rolled-back"
    restore(store, out)
    hub_back = json.loads((out / "structured_hubs" / "soft_identity.json").read_text())
    assert hub_back[first] == {"changed": True} and hub_back["learner-from-mongo-api"] == {"new": 1}
    assert json.loads((out / "episodes" / ep_path.name).read_text())["status"] == "rerun"
    sync_config = config.model_copy(update={"runtime_data_dir": out})
    report, code = run_sync(sync_config, store)
    assert code == 0, report["parity"]
    again, code = run_sync(sync_config, store)
    assert code == 0 and again["writes"]["total"] == 0, again["writes"]
    assert db.memory_hubs.count_documents({"item_key": "learner-from-mongo-api"}) == 1
    assert db.episodic_memory.count_documents({}) == 20
