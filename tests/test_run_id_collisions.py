"""Two episode files naming the same run_id (DESIGN §5, round trip).

The run's ``episodic_memory`` document belongs to its canonical file
``episodes/skeleton_<run_id>.json`` (run_id from the content); any other file
naming that run (a backup copy, a file whose name says another run) is kept as
a generic file (kind ``episode_copy``, content in its manifest). The choice is
a pure function of path and content, so the order the files are written in,
and which path sees them (sync, the daemon), make no difference.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from testkit.measure import wait_for

from sidecar.restore import restore
from sidecar.sync import run_divergences, run_sync

pytestmark = pytest.mark.integration

CANON = "episodes/skeleton_r1.json"
BACKUP = "episodes/skeleton_r1_backup.json"
OTHER_NAME = "episodes/skeleton_r2.json"  # its content says run r1


def episode(run_id: str, query: str) -> dict:
    return {"run_id": run_id, "query": query, "status": "completed", "updated_at": "2026-02-20T10:00:00",
            "nodes": [{"id": "n0", "agent": query}], "edges": []}


def legacy_write(root: Path, rel: str, payload) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2), encoding="utf-8")


def tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))
            if p.is_file() and not p.relative_to(root).as_posix().startswith("reports/")}


def synced(config, store) -> dict:
    report, code = run_sync(config, store)
    assert code == 0, (report["bad_input"], report["kinds"]["episodes"], report["kinds"]["files"])
    return report


def settled(config, store, data_dir: Path, out: Path) -> dict:
    """A second sync writes nothing, parity matches, restore is byte-identical."""
    report = synced(config, store)
    assert report["writes"]["total"] == 0, report["writes"]
    assert report["parity"]["all_match"]
    result = restore(store, out)
    assert not result.skipped
    assert tree(out) == tree(data_dir)
    return report


def owner_is_canonical(db, files_coll: str, query: str = "canonical") -> None:
    docs = list(db.episodic_memory.find({"run_id": "r1"}))
    assert len(docs) == 1 and docs[0]["query"] == query and docs[0]["_sidecar"]["path"] == CANON
    copy = db[files_coll].find_one({"_id": BACKUP})
    assert copy["kind"] == "episode_copy" and copy["encoding"] == "json"
    assert copy["content"] == episode("r1", "backup")


@pytest.mark.parametrize("order", [(CANON, BACKUP), (BACKUP, CANON), "together"])
def test_both_files_round_trip_whichever_comes_first(data_dir, config, store, db, tmp_path, order):
    content = {CANON: episode("r1", "canonical"), BACKUP: episode("r1", "backup")}
    if order == "together":
        for rel, payload in content.items():
            legacy_write(data_dir, rel, payload)
        synced(config, store)
    else:
        for rel in order:  # the canonical file appearing later is (BACKUP, CANON)
            legacy_write(data_dir, rel, content[rel])
            synced(config, store)
    report = settled(config, store, data_dir, tmp_path / "restored")
    owner_is_canonical(db, config.sidecar_files_collection)
    assert report["source_counts"]["episodes"] == 1 and report["mongo_counts"]["episodes"] == 1
    assert report["kinds"]["files"]["entries"] == 1  # the copy, counted as a file


def test_edits_of_either_file_never_touch_the_other(data_dir, config, store, db, tmp_path):
    legacy_write(data_dir, CANON, episode("r1", "canonical"))
    legacy_write(data_dir, BACKUP, episode("r1", "backup"))
    synced(config, store)
    legacy_write(data_dir, BACKUP, dict(episode("r1", "backup"), status="edited"))
    synced(config, store)
    assert db.episodic_memory.find_one({"run_id": "r1"})["query"] == "canonical"
    legacy_write(data_dir, CANON, dict(episode("r1", "canonical"), status="edited-too"))
    synced(config, store)
    assert db.episodic_memory.find_one({"run_id": "r1"})["status"] == "edited-too"
    settled(config, store, data_dir, tmp_path / "restored")


def test_a_name_that_says_another_run_is_a_copy(data_dir, config, store, db, tmp_path):
    """skeleton_r2.json whose content says run r1: not r2's document (its content
    says r1) nor r1's (not r1's canonical file): a generic file, alone or not."""
    legacy_write(data_dir, OTHER_NAME, episode("r1", "misnamed"))
    synced(config, store)
    assert db.episodic_memory.count_documents({}) == 0
    assert db[config.sidecar_files_collection].find_one({"_id": OTHER_NAME})["kind"] == "episode_copy"
    settled(config, store, data_dir, tmp_path / "r1")
    legacy_write(data_dir, CANON, episode("r1", "canonical"))
    synced(config, store)
    assert db.episodic_memory.find_one({"run_id": "r1"})["query"] == "canonical"
    settled(config, store, data_dir, tmp_path / "r2")


def test_canonical_removed_while_the_copy_stays(data_dir, config, store, db, tmp_path):
    legacy_write(data_dir, CANON, episode("r1", "canonical"))
    legacy_write(data_dir, BACKUP, episode("r1", "backup"))
    synced(config, store)
    before = tree(data_dir)
    (data_dir / CANON).unlink()
    # Noticed by sync, nobody saw it happen: held, MongoDB keeps the document.
    report, _ = run_sync(config, store)
    assert [i["path"] for i in report["divergences"]["items"]] == [CANON]
    owner_is_canonical(db, config.sidecar_files_collection)
    out = tmp_path / "held"
    restore(store, out)
    assert tree(out) == before  # both files, each its own content
    # Accepted by an operator: the canonical file is recorded deleted, the copy stays.
    accepted, code = run_divergences(config, store, accept_all=True)
    assert code == 0 and accepted["accepted"] == [CANON]
    out = tmp_path / "accepted"
    restore(store, out)
    assert tree(out) == tree(data_dir)
    out = tmp_path / "with-deleted"
    restore(store, out, include_deleted=True)
    assert tree(out) == before
    assert db[config.sidecar_files_collection].find_one({"_id": BACKUP})["deleted_at"] is None


def test_copy_mirrored_as_the_owner_before_is_taken_back(data_dir, config, store, db, tmp_path):
    """A database mirrored before collisions were told apart: the copy's manifest
    says it owns the run's document, which holds the copy's content."""
    legacy_write(data_dir, CANON, episode("r1", "canonical"))
    legacy_write(data_dir, BACKUP, episode("r1", "backup"))
    synced(config, store)
    files = db[config.sidecar_files_collection]
    files.update_one({"_id": BACKUP}, {"$set": {"kind": "episode", "doc_id": "r1", "encoding": "structured"},
                                       "$unset": {"content": ""}})
    db.episodic_memory.update_one({"run_id": "r1"}, {"$set": {"query": "backup", "_sidecar.path": BACKUP,
                                                              "_sidecar.hash": "0" * 64}})
    synced(config, store)
    settled(config, store, data_dir, tmp_path / "restored")
    owner_is_canonical(db, config.sidecar_files_collection)


def test_copy_recorded_as_the_only_owner_before_gives_its_document_up(data_dir, config, store, db, tmp_path):
    """As above, with no canonical file: the run's document (the copy's content)
    leaves episodic_memory for a tombstone, so restore does not invent
    skeleton_r1.json; the copy's manifest holds the content."""
    legacy_write(data_dir, BACKUP, episode("r1", "backup"))
    synced(config, store)
    files = db[config.sidecar_files_collection]
    files.update_one({"_id": BACKUP}, {"$set": {"kind": "episode", "doc_id": "r1", "encoding": "structured"},
                                       "$unset": {"content": ""}})
    db.episodic_memory.insert_one(dict(episode("r1", "backup"), _id="r1", _sidecar={
        "path": BACKUP, "hash": "0" * 64, "version": 1, "source": "sync",
        "fields": list(episode("r1", "backup"))}))
    report = synced(config, store)
    assert report["writes"]["episodes_deleted"] == 1
    assert db.episodic_memory.count_documents({}) == 0
    assert db.memory_tombstones.count_documents({"coll": "episodic_memory", "doc_id": "r1"}) == 1
    settled(config, store, data_dir, tmp_path / "restored")


def test_daemon_keeps_colliding_files_apart(data_dir, running, db, tmp_path):
    d = running()
    files_coll = d.config.sidecar_files_collection
    legacy_write(data_dir, BACKUP, episode("r1", "backup"))
    legacy_write(data_dir, CANON, episode("r1", "canonical"))
    legacy_write(data_dir, OTHER_NAME, episode("r1", "misnamed"))
    report = d.wait_parity()
    assert report["source_counts"]["episodes"] == 1
    owner_is_canonical(db, files_coll)
    # the copy rewritten: only its manifest changes
    legacy_write(data_dir, BACKUP, dict(episode("r1", "backup"), status="edited"))
    wait_for(lambda: db[files_coll].find_one({"_id": BACKUP})["content"]["status"] == "edited",
             what="the copy's edit mirrored")
    assert db.episodic_memory.find_one({"run_id": "r1"})["query"] == "canonical"
    # the copy deleted (watched: mirrored as a removal of that file alone)
    (data_dir / BACKUP).unlink()
    wait_for(lambda: (db[files_coll].find_one({"_id": BACKUP}) or {"deleted_at": 1}).get("deleted_at"),
             what="the copy's removal recorded")
    d.wait_parity()
    assert db.episodic_memory.find_one({"run_id": "r1"})["query"] == "canonical"
    out = tmp_path / "restored"
    assert not restore(d.daemon.store, out).skipped
    assert tree(out) == tree(data_dir)
