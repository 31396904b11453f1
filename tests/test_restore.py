"""restore: byte-identical files (sha256) from MongoDB, entry order kept, target
safety (non-empty, symlinks), dry run, atomic writes, Mentorix-written data,
deleted files."""

from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime, timezone
from pathlib import Path

import pytest
from bson import ObjectId
from testkit.corpus import generate

from sidecar.cli import main
from sidecar.restore import RestoreRefused, restore
from sidecar.sync import run_divergences, run_sync

pytestmark = pytest.mark.integration


def tree(root: Path) -> dict[str, str]:
    """sha256 of every file under root (the sidecar's own reports excluded)."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and not path.is_symlink() and not rel.startswith("reports/"):
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def all_entries(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


@pytest.fixture
def cli_args(mongo_url, db_name, data_dir):
    return ["--data-dir", str(data_dir), "--mongodb-url", mongo_url, "--db-name", db_name]


def synced(config, store) -> None:
    report, code = run_sync(config, store)
    assert code == 0, report["bad_input"]


def accepted(config, store) -> dict:
    """Sync, then accept every removal it held (what an operator does on purpose)."""
    run_sync(config, store)
    report, code = run_divergences(config, store, accept_all=True)
    assert code == 0, report
    return report


# --- byte identity ---------------------------------------------------------------------


def test_sample_files_restore_byte_identical(legacy_dir, config, store, tmp_path):
    synced(config, store)
    out = tmp_path / "restored"
    result = restore(store, out)
    assert tree(out) == tree(legacy_dir)
    assert len(tree(out)) == 4
    assert sorted(result.written) == sorted(tree(legacy_dir)) and not result.skipped


def test_cli_restore_sample_files(legacy_dir, config, store, tmp_path, cli_args, capsys):
    synced(config, store)
    out = tmp_path / "restored"
    assert main(cli_args + ["restore", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["files_written"] == 4 and printed["skipped"] == [] and printed["dry_run"] is False
    assert tree(out) == tree(legacy_dir)


def test_generated_corpus_and_odd_files_restore_byte_identical(data_dir, config, store, tmp_path):
    generate(data_dir, learners=300, episodes=20, runs=20, jobs=5)
    (data_dir / "blob.bin").write_bytes(bytes(range(256)) * 7 + b"\x00\xff")
    (data_dir / "indent4.json").write_text(json.dumps({"b": [1, {"c": None}], "a": 1.5}, indent=4) + "\n")
    (data_dir / "unknown" / "deeper").mkdir(parents=True)
    (data_dir / "unknown" / "deeper" / "notes.txt").write_text("plain text\nwith lines\r\nand no final newline")
    (data_dir / "unicode.json").write_text(
        json.dumps({"имя": "Zoë", "emoji": "🎓", "ключ": ["é", "ü"]}, indent=2, ensure_ascii=False),
        encoding="utf-8")
    (data_dir / "compact.json").write_text(json.dumps({"x": 1, "y": [1, 2]}, separators=(",", ":")))
    (data_dir / "odd_layout.json").write_text('{ "kept" :  "verbatim" ,\n\t"n": 1.0e3 }')
    (data_dir / "empty.txt").write_bytes(b"")
    synced(config, store)
    out = tmp_path / "restored"
    restore(store, out)
    source = tree(data_dir)
    assert len(source) == 3 + 20 + 20 + 2 + 7
    assert tree(out) == source


def test_entry_order_kept_after_edits(legacy_dir, config, store, tmp_path):
    synced(config, store)
    path = legacy_dir / "structured_hubs" / "learner_preferences.json"
    data = json.loads(path.read_text())
    keys = list(data)
    del data[keys[2]]  # a middle key
    data["appended-1"] = {"last_score": 0.5}
    data["appended-2"] = {"last_score": 0.6}
    data[keys[4]] = {"edited": True}  # in place: keeps its position
    path.write_text(json.dumps(data, indent=2))
    assert accepted(config, store)["writes"]["hubs_deleted"] == 1
    synced(config, store)
    out = tmp_path / "r1"
    restore(store, out)
    assert tree(out) == tree(legacy_dir)
    restored = json.loads((out / "structured_hubs" / "learner_preferences.json").read_text())
    assert list(restored) == list(data)
    # a full reorder (not the legacy pattern) is kept too
    reordered = dict(reversed(list(data.items())))
    path.write_text(json.dumps(reordered, indent=2))
    synced(config, store)
    out = tmp_path / "r2"
    restore(store, out)
    assert tree(out) == tree(legacy_dir)
    # ...and re-adding a key that was deleted puts it where the file has it
    reordered = {keys[2]: {"back": 1}, **reordered}
    path.write_text(json.dumps(reordered, indent=2))
    synced(config, store)
    out = tmp_path / "r3"
    restore(store, out)
    assert tree(out) == tree(legacy_dir)


def test_snapshot_and_episode_field_order_and_history(legacy_dir, config, store, db, tmp_path):
    (legacy_dir / "episodes").mkdir()
    ep = {"status": "completed", "run_id": "r1", "nodes": [], "query": "q", "updated_at": "2026-02-20T10:00:00",
          "edges": [], "source": "kept-as-file-field"}
    (legacy_dir / "episodes" / "skeleton_r1.json").write_text(json.dumps(ep, indent=2))
    synced(config, store)
    (legacy_dir / "snapshot.json").write_text(json.dumps(
        {"active_runs": ["r1"], "timestamp": "2026-02-22T00:00:00"}, indent=2))
    synced(config, store)
    assert db.runtime_snapshots.count_documents({}) == 2  # history kept
    out = tmp_path / "restored"
    restore(store, out)
    assert tree(out) == tree(legacy_dir)


# --- target safety ----------------------------------------------------------------------


def test_refuses_a_non_empty_target_without_force(legacy_dir, config, store, tmp_path, cli_args, capsys):
    synced(config, store)
    out = tmp_path / "restored"
    out.mkdir()
    (out / "someone_elses.txt").write_text("keep me")
    assert main(cli_args + ["restore", "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert "not empty" in captured.err and "--force" in captured.err
    assert all_entries(out) == {"someone_elses.txt"}
    with pytest.raises(RestoreRefused):
        restore(store, out)
    assert main(cli_args + ["restore", "--out", str(out), "--force"]) == 0
    capsys.readouterr()
    assert (out / "someone_elses.txt").read_text() == "keep me"
    restored = tree(out)
    restored.pop("someone_elses.txt")
    assert restored == tree(legacy_dir)
    # forcing again over identical files rewrites nothing
    result = restore(store, out, force=True)
    assert result.written == [] and len(result.unchanged) == 4


def test_restore_into_a_data_dir_holding_only_reports(legacy_dir, config, store, cli_args, capsys):
    synced(config, store)  # writes reports/memory_backfill_report.json into the data dir
    original = tree(legacy_dir)
    for rel in original:
        (legacy_dir / rel).unlink()
    assert (legacy_dir / "reports" / "memory_backfill_report.json").exists()
    assert main(cli_args + ["restore"]) == 0  # default target: the data dir itself
    capsys.readouterr()
    assert tree(legacy_dir) == original


def test_dry_run_writes_nothing(legacy_dir, config, store, tmp_path, cli_args, capsys):
    synced(config, store)
    out = tmp_path / "restored"
    assert main(cli_args + ["restore", "--out", str(out), "--dry-run"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["dry_run"] is True and printed["files_written"] == 4
    assert printed["bytes"] == sum((legacy_dir / rel).stat().st_size for rel in tree(legacy_dir))
    assert not out.exists()
    out.mkdir()
    result = restore(store, out, dry_run=True)
    assert len(result.written) == 4 and all_entries(out) == set()


def test_no_temp_files_left_behind(data_dir, config, store, tmp_path):
    generate(data_dir, learners=20, episodes=3, runs=3, jobs=2)
    synced(config, store)
    out = tmp_path / "restored"
    restore(store, out)
    restore(store, out, force=True)  # second pass: nothing to write, still nothing left over
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert files == set(tree(data_dir))
    assert not [p for p in out.rglob("*") if p.name.startswith(".sidecar-") or p.suffix == ".tmp"]


def test_symlinked_dir_in_target_is_not_written_through(legacy_dir, config, store, tmp_path, cli_args, capsys):
    synced(config, store)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    victim = tmp_path / "victim.json"
    victim.write_text("untouched")
    out = tmp_path / "restored"
    out.mkdir()
    os.symlink(elsewhere, out / "structured_hubs")
    os.symlink(victim, out / "snapshot.json")
    code = main(cli_args + ["restore", "--out", str(out), "--force"])
    printed = json.loads(capsys.readouterr().out)
    assert code == 1  # something could not be restored: not a success
    assert list(elsewhere.iterdir()) == []
    assert victim.read_text() == "untouched"
    assert (out / "structured_hubs").is_symlink() and (out / "snapshot.json").is_symlink()
    skipped = {s["path"] for s in printed["skipped"]}
    assert skipped == {"snapshot.json", "structured_hubs/learner_preferences.json",
                       "structured_hubs/operating_context.json", "structured_hubs/soft_identity.json"}
    assert all("symlink" in s["reason"] for s in printed["skipped"])


# --- data written by Mentorix's own Mongo store ------------------------------------------------


def test_data_written_by_mentorix_mongo_store_is_restored(db, store, tmp_path):
    """No manifests, ObjectId _ids, no _sidecar: the layout of MongoMemoryStore."""
    now = datetime(2026, 2, 21, 6, 0, tzinfo=timezone.utc)
    for hub, key, payload in [
        ("learner_preferences", "learner-b", {"preferred_explanation_density": "high", "last_score": 0.4}),
        ("learner_preferences", "learner-a", {"preferred_explanation_density": "compact", "last_score": 0.9}),
        ("soft_identity", "learner-a", {"confidence_band": "steady"}),
    ]:
        db.memory_hubs.update_one({"hub_type": hub, "item_key": key},
                                  {"$set": {"payload": payload, "learner_id": key, "updated_at": now.isoformat()}},
                                  upsert=True)
    skeleton = {"run_id": "run-42", "query": "Explain fractions", "status": "completed",
                "updated_at": "2026-02-21T05:00:00", "nodes": [{"id": "n0", "agent": "tutor"}], "edges": []}
    db.episodic_memory.replace_one({"run_id": "run-42"}, dict(skeleton, updated_at_dt=now), upsert=True)
    older = {"timestamp": "2026-02-20T05:29:24.762951", "active_runs": ["old"]}
    latest = {"timestamp": "2026-02-21T05:29:24.762951", "active_runs": []}
    for snap in (older, latest):
        db.runtime_snapshots.insert_one(dict(snap, timestamp_dt=now))
    assert isinstance(db.memory_hubs.find_one()["_id"], ObjectId)

    out = tmp_path / "restored"
    result = restore(store, out)
    assert not result.skipped
    assert set(tree(out)) == {"structured_hubs/learner_preferences.json", "structured_hubs/soft_identity.json",
                              "episodes/skeleton_run-42.json", "snapshot.json"}
    prefs = (out / "structured_hubs" / "learner_preferences.json").read_bytes()
    assert json.loads(prefs) == {
        "learner-a": {"preferred_explanation_density": "compact", "last_score": 0.9},
        "learner-b": {"preferred_explanation_density": "high", "last_score": 0.4}}
    assert prefs == json.dumps(json.loads(prefs), indent=2).encode()  # the legacy layout
    assert (out / "episodes" / "skeleton_run-42.json").read_bytes() == json.dumps(skeleton, indent=2).encode()
    assert (out / "snapshot.json").read_bytes() == json.dumps(latest, indent=2).encode()


def test_mentorix_entries_added_to_a_mirrored_hub_are_restored(legacy_dir, config, store, db, tmp_path):
    synced(config, store)
    db.memory_hubs.update_one({"hub_type": "soft_identity", "item_key": "written-by-mentorix"},
                              {"$set": {"payload": {"confidence_band": "low"}, "learner_id": "written-by-mentorix"}},
                              upsert=True)
    out = tmp_path / "restored"
    restore(store, out)
    original = json.loads((legacy_dir / "structured_hubs" / "soft_identity.json").read_text())
    restored = json.loads((out / "structured_hubs" / "soft_identity.json").read_text())
    assert list(restored) == list(original) + ["written-by-mentorix"]
    assert restored["written-by-mentorix"] == {"confidence_band": "low"}


# --- deleted files -----------------------------------------------------------------------------


def test_recorded_deletions_are_restored_only_with_include_deleted(legacy_dir, config, store, tmp_path,
                                                                   cli_args, capsys):
    (legacy_dir / "runs").mkdir()
    (legacy_dir / "runs" / "run_r1.json").write_text(json.dumps({"run_id": "r1"}, indent=2))
    (legacy_dir / "notes.txt").write_text("notes")
    synced(config, store)
    before = tree(legacy_dir)
    (legacy_dir / "runs" / "run_r1.json").unlink()
    (legacy_dir / "structured_hubs" / "operating_context.json").unlink()
    report = accepted(config, store)
    assert report["writes"]["file_deletions_recorded"] == 2
    out = tmp_path / "plain"
    assert main(cli_args + ["restore", "--out", str(out)]) == 0
    assert tree(out) == tree(legacy_dir)  # what exists now, nothing more
    assert not (out / "runs" / "run_r1.json").exists()
    assert not (out / "structured_hubs" / "operating_context.json").exists()
    out = tmp_path / "with-deleted"
    assert main(cli_args + ["restore", "--out", str(out), "--include-deleted"]) == 0
    capsys.readouterr()
    assert tree(out) == before


# --- the fields the sidecar adds must not clobber the file's own --------------------------------


@pytest.mark.parametrize("run_id", [None, ""], ids=["null", "empty"])
def test_episode_with_null_run_id_round_trips(legacy_dir, config, store, tmp_path, run_id):
    (legacy_dir / "episodes").mkdir()
    path = legacy_dir / "episodes" / "skeleton_unknown.json"
    path.write_text(json.dumps({"run_id": run_id, "status": "completed", "nodes": []}, indent=2))
    report, code = run_sync(config, store)
    assert code == 0, report["kinds"]["episodes"]
    out = tmp_path / "restored"
    restore(store, out)
    assert tree(out) == tree(legacy_dir)


def test_snapshot_with_its_own_id_field_round_trips(legacy_dir, config, store, tmp_path):
    (legacy_dir / "snapshot.json").write_text(json.dumps(
        {"_id": "snap-1", "timestamp": "2026-02-21T05:29:24.762951", "active_runs": []}, indent=2))
    report, code = run_sync(config, store)
    assert code == 0, report["parity"]
    report, code = run_sync(config, store)
    assert code == 0 and report["writes"]["total"] == 0
    out = tmp_path / "restored"
    restore(store, out)
    assert tree(out) == tree(legacy_dir)


# --- names taken from the database never leave, or move within, the target ------------------------


def _plant_traversal_names(db, files_coll: str) -> None:
    db.memory_hubs.insert_one({"hub_type": "../../../escape", "item_key": "k", "payload": {"evil": 1}})
    db.episodic_memory.insert_one({"run_id": "../../../../escape2", "x": 1})
    db[files_coll].insert_one({"_id": "/abs/escape3", "kind": "other", "encoding": "bytes", "raw": b"x"})
    db[files_coll].insert_one({"_id": "a/../../escape4", "kind": "other", "encoding": "bytes", "raw": b"x"})


def test_traversal_names_in_the_database_never_escape_the_target(legacy_dir, config, store, db, tmp_path):
    synced(config, store)
    _plant_traversal_names(db, config.sidecar_files_collection)
    out = tmp_path / "a" / "b" / "out"
    result = restore(store, out)
    assert {s["path"] for s in result.skipped} == {
        "/abs/escape3", "a/../../escape4", "structured_hubs/../../../escape.json",
        "episodes/skeleton_../../../../escape2.json"}
    written_anywhere = {p for p in tmp_path.rglob("*") if p.is_file()} - set(legacy_dir.rglob("*"))
    assert all(out in p.parents for p in written_anywhere)
    assert tree(out) == tree(legacy_dir)


def test_a_name_with_dot_dot_cannot_land_on_another_file(legacy_dir, config, store, db, tmp_path):
    synced(config, store)
    db.memory_hubs.insert_one({"hub_type": "x/../../snapshot", "item_key": "k", "payload": {"evil": 1}})
    out = tmp_path / "out"
    result = restore(store, out)
    assert tree(out) == tree(legacy_dir)
    assert result.written.count("snapshot.json") == 1
    assert len(result.skipped) == 1 and ".." in result.skipped[0]["path"]


def test_a_directory_in_the_way_is_skipped_not_a_crash(legacy_dir, config, store, tmp_path, cli_args, capsys):
    synced(config, store)
    out = tmp_path / "out"
    (out / "snapshot.json").mkdir(parents=True)
    code = main(cli_args + ["restore", "--out", str(out), "--force"])
    printed = json.loads(capsys.readouterr().out)
    assert code == 1
    assert [s["path"] for s in printed["skipped"]] == ["snapshot.json"]
    expected = tree(legacy_dir)
    expected.pop("snapshot.json")
    assert tree(out) == expected
    assert not [p for p in out.rglob(".sidecar-*")]
