"""memory-sidecar sync: backfill, parity report, idempotence, diffs."""

from __future__ import annotations

import json

import pytest

from testkit.corpus import LegacyWriter, generate
from sidecar.cli import main
from sidecar.sync import run_divergences, run_parity, run_sync

pytestmark = pytest.mark.integration

REPORT_FIELDS = {"source_counts", "mongo_counts", "writes", "checksums", "parity"}


def test_sample_backfill_reports_parity(legacy_dir, config, store, db):
    report, code = run_sync(config, store)
    assert code == 0
    assert REPORT_FIELDS <= set(report)
    assert report["parity"] == {"hubs_match": True, "snapshot_match": True, "episodes_match": True,
                                "files_match": True, "all_match": True}
    assert report["source_counts"]["hub_entries"] == 18 == report["mongo_counts"]["hub_entries"]
    assert report["writes"]["hubs_upserted"] == 18
    assert report["writes"]["snapshots_upserted"] == 1
    assert set(report["checksums"]) == {"source", "mongo_subset"}
    assert report["checksums"]["source"] == report["checksums"]["mongo_subset"]
    # The contract's document shape, as a later Mongo-backed Mentorix reads it.
    hub = db.memory_hubs.find_one({"hub_type": "learner_preferences",
                                   "item_key": "31c31732-5a98-4f23-a675-c2d943ca0641"})
    assert hub["learner_id"] == hub["item_key"]
    assert hub["payload"] == {"preferred_explanation_density": "high",
                              "last_concept": "quadratic_equations", "last_score": 0.35}
    assert hub["updated_at"]
    latest = db.runtime_snapshots.find_one(sort=[("timestamp", -1)])
    assert latest["timestamp"] == "2026-02-21T05:29:24.762951" and latest["active_runs"] == []
    assert latest["snapshot_id"] and latest["source"] and latest["timestamp_dt"].year == 2026
    # The report file is where Mentorix's backfill puts it, and is the printed report.
    on_disk = json.loads((legacy_dir / "reports" / "memory_backfill_report.json").read_text())
    assert on_disk["parity"]["all_match"] is True


def test_second_run_writes_nothing_and_still_reports_parity(legacy_dir, config, store, db):
    run_sync(config, store)
    events_before = db.memory_events.count_documents({})
    report, code = run_sync(config, store)
    assert code == 0
    assert report["writes"]["total"] == 0
    assert report["parity"]["all_match"]
    assert db.memory_events.count_documents({}) == events_before


def test_reports_dir_is_never_mirrored(legacy_dir, config, store, db):
    run_sync(config, store)
    run_sync(config, store)  # the first run's report now exists on disk
    assert db[config.sidecar_files_collection].count_documents({"path": {"$regex": "^reports/"}}) == 0


def test_dry_run_writes_nothing(legacy_dir, config, store, db):
    report, code = run_sync(config, store, dry_run=True)
    assert code == 1  # nothing is in MongoDB yet
    assert report["dry_run"] is True
    assert report["writes"]["total"] == 0
    assert report["planned_writes"]["memory_hubs.insert"] == 18
    assert db.memory_hubs.count_documents({}) == 0
    assert db.memory_events.count_documents({}) == 0


def test_one_changed_entry_writes_one_document(data_dir, config, store, db):
    generate(data_dir, learners=300, episodes=5, runs=5)
    run_sync(config, store)
    writer = LegacyWriter(data_dir, seed=7)
    learner = next(iter(writer.hubs["soft_identity"]))
    path = data_dir / "structured_hubs" / "soft_identity.json"
    data = json.loads(path.read_text())
    data[learner]["confidence_band"] = "changed"
    path.write_text(json.dumps(data, indent=2))
    report, code = run_sync(config, store)
    assert code == 0
    w = report["writes"]
    assert w["hubs_upserted"] == 1
    assert w["total"] == 1  # the entry only: the manifest is not rewritten for a content edit
    assert db.memory_hubs.find_one({"_id": f"soft_identity/{learner}"})["payload"]["confidence_band"] == "changed"
    ev = db.memory_events.find_one({"entity_key": f"memory_hubs:soft_identity/{learner}"})
    assert ev["event_type"] == "hub_updated" and ev["before"] != ev["after"]
    assert "changed" not in json.dumps(ev, default=str)  # hashes, not values, by default


def test_removed_key_is_held_then_deleted_when_accepted(legacy_dir, config, store, db):
    run_sync(config, store)
    path = legacy_dir / "structured_hubs" / "operating_context.json"
    data = json.loads(path.read_text())
    gone = next(iter(data))
    del data[gone]
    data["new-learner"] = {"recent_adaptation_score": 1.0, "intervention_required": True}
    path.write_text(json.dumps(data, indent=2))
    report, code = run_sync(config, store)
    # A one-shot sync saw no edit happen: the removal is a divergence, held and reported.
    assert code == 1
    assert report["writes"]["hubs_deleted"] == 0 and report["writes"]["hubs_upserted"] == 1
    assert report["writes"]["positions_updated"] == 0  # appending keeps neighbours untouched
    assert report["divergences"]["items"][0]["keys"] == [gone]
    assert report["divergences"]["items"][0]["reason"] == "noticed_at_reconcile"
    assert db.memory_hubs.find_one({"_id": f"operating_context/{gone}"}) is not None
    assert db.memory_events.find_one({"event_type": "divergence_held"})["keys"] == [gone]
    listed, code = run_divergences(config, store)
    assert code == 1 and listed["entries"] == 1
    report, code = run_divergences(config, store, accept=["structured_hubs/operating_context.json"])
    assert code == 0 and report["writes"]["hubs_deleted"] == 1
    assert db.memory_hubs.count_documents({"hub_type": "operating_context"}) == 6
    assert db.memory_hubs.find_one({"_id": f"operating_context/{gone}"}) is None
    assert db.memory_events.find_one({"event_type": "hub_deleted"})["before"]
    assert db.memory_events.find_one({"event_type": "divergence_accepted"})["count"] == 1
    assert run_sync(config, store)[1] == 0


def test_hub_emptied_to_braces_never_wipes(legacy_dir, config, store, db):
    run_sync(config, store)
    (legacy_dir / "structured_hubs" / "soft_identity.json").write_text("{}")
    report, code = run_sync(config, store)
    assert code == 1
    assert db.memory_hubs.count_documents({"hub_type": "soft_identity"}) == 6
    assert report["divergences"]["entries"] == 6 and report["bad_input"]["count"] == 0


def test_deleted_file_held_then_recorded_not_propagated(legacy_dir, config, store, db, make_config):
    run_sync(config, store)
    (legacy_dir / "structured_hubs" / "soft_identity.json").unlink()
    report, code = run_sync(config, store)
    assert report["writes"]["file_deletions_recorded"] == 0
    assert report["divergences"]["files"] == 1 and code == 1
    report, code = run_divergences(config, store, accept_all=True)
    assert report["writes"]["file_deletions_recorded"] == 1 and code == 0
    assert db.memory_hubs.count_documents({"hub_type": "soft_identity"}) == 6
    assert db.memory_events.find_one({"event_type": "file_deleted_recorded"})["path"] == \
        "structured_hubs/soft_identity.json"
    report, code = run_sync(config, store)
    assert code == 0  # a recorded deletion is retained data, not a mismatch
    assert report["kinds"]["hubs"]["retained_deleted"] == 6
    assert report["divergences"]["count"] == 0


def test_deleted_file_propagated_when_accepted_and_configured(legacy_dir, make_config, store, db):
    run_sync(make_config(), store)
    (legacy_dir / "episodes").mkdir()
    (legacy_dir / "episodes" / "skeleton_r1.json").write_text(json.dumps({"run_id": "r1"}, indent=2))
    run_sync(make_config(), store)
    (legacy_dir / "structured_hubs" / "soft_identity.json").unlink()
    (legacy_dir / "episodes" / "skeleton_r1.json").unlink()
    config = make_config(sidecar_propagate_file_deletes=True)
    report, code = run_sync(config, store)
    assert code == 1 and report["divergences"]["files"] == 2
    assert db.memory_hubs.count_documents({"hub_type": "soft_identity"}) == 6
    report, code = run_divergences(config, store, accept_all=True)
    assert code == 0
    assert db.memory_hubs.count_documents({"hub_type": "soft_identity"}) == 0
    assert db.episodic_memory.count_documents({}) == 0
    assert report["writes"]["hubs_deleted"] == 6
    assert run_sync(config, store)[1] == 0


def test_empty_data_dir_is_a_fresh_volume_not_a_mass_delete(legacy_dir, make_config, store, db):
    run_sync(make_config(), store)
    for p in sorted(legacy_dir.rglob("*.json"), reverse=True):
        p.unlink()
    report, code = run_sync(make_config(sidecar_propagate_file_deletes=True), store)
    assert report["fresh_volume"] is True
    assert db.memory_hubs.count_documents({}) == 18
    assert db[make_config().sidecar_files_collection].count_documents({"deleted_at": {"$ne": None}}) == 0
    assert report["divergences"]["files"] == 4


def test_generic_files_mirrored_with_hash_and_size(data_dir, config, store, db):
    generate(data_dir, learners=5, episodes=3, runs=4, jobs=3)
    (data_dir / "notes.bin").write_bytes(b"\x00\xffbinary")
    report, code = run_sync(config, store)
    assert code == 0
    files = db[config.sidecar_files_collection]
    jobs = files.find_one({"_id": "scheduled_jobs.json"})
    assert jobs["kind"] == "scheduled_jobs" and isinstance(jobs["content"], list) and jobs["size"] > 0
    assert len(jobs["sha256"]) == 64
    assert files.count_documents({"kind": "run"}) == 4
    assert bytes(files.find_one({"_id": "notes.bin"})["raw"]) == b"\x00\xffbinary"
    assert report["source_counts"]["episodes"] == 3 == db.episodic_memory.count_documents({})


def test_parity_command_detects_a_change_behind_our_back(legacy_dir, config, store, db):
    run_sync(config, store)
    db.memory_hubs.update_one({"hub_type": "soft_identity"}, {"$set": {"payload.confidence_band": "x"}})
    report, code = run_parity(config, store)
    assert code == 1
    assert report["kinds"]["hubs"]["different"]["count"] == 1
    assert report["parity"]["hubs_match"] is False
    # No values leak into the report, only keys.
    assert '"x"' not in json.dumps(report)


def test_cli_sync_exit_codes(legacy_dir, mongo_url, db_name, capsys):
    args = ["--data-dir", str(legacy_dir), "--mongodb-url", mongo_url, "--db-name", db_name]
    assert main(args + ["sync"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["parity"]["all_match"] is True
    assert main(args + ["parity"]) == 0
    (legacy_dir / "structured_hubs" / "soft_identity.json").write_text('{"a": ')
    assert main(args + ["parity"]) == 1


def test_first_backfill_is_summarised_per_folder_in_memory_events(data_dir, config, store, db):
    generate(data_dir, learners=40, episodes=6, runs=5, jobs=2)
    run_sync(config, store)
    backfill = {e["path"]: e["count"] for e in db.memory_events.find({"event_type": "backfill"})}
    assert backfill == {"structured_hubs/": 120, "episodes/": 6, "runs/": 5, ".": 1}
    # Nothing else was recorded for a clean first load but the snapshot.
    others = [e["event_type"] for e in db.memory_events.find({"event_type": {"$ne": "backfill"}})]
    assert others == ["snapshot_inserted"]
