"""Retention (issue 15 point 4): ``SIDECAR_EVENTS_TTL_DAYS`` and ``memory-sidecar archive``."""

from __future__ import annotations

import gzip
import hashlib
import json
import stat
from pathlib import Path

import pytest

from sidecar import archive as archive_mod
from sidecar.cli import main
from sidecar.lease import Lease
from sidecar.store import Store
from sidecar.sync import run_sync

pytestmark = pytest.mark.integration
DAY = 86400


# --- memory_events TTL ---------------------------------------------------------------------------
def events_ttl(db) -> int | None:
    for spec in db["memory_events"].list_indexes():
        if spec["name"] == "ix_events_created_at_ttl":
            return int(spec["expireAfterSeconds"])
    return None


def test_events_ttl_off_by_default_on_later_changed_off_without_losing_events(legacy_dir, make_config, db):
    def ensure(days: int) -> None:
        s = Store(make_config(sidecar_events_ttl_days=days))
        try:
            s.ensure_indexes()
        finally:
            s.close()
    config = make_config()
    s = Store(config)
    try:
        report, code = run_sync(config, s)
        assert code == 0
    finally:
        s.close()
    events = db["memory_events"].count_documents({})
    assert events > 0
    assert events_ttl(db) is None  # 0 = kept forever: no TTL index
    ensure(30)
    assert events_ttl(db) == 30 * DAY
    ensure(90)  # changed in place (collMod), not dropped and re-built
    assert events_ttl(db) == 90 * DAY
    assert db["memory_events"].count_documents({}) == events
    ensure(0)
    assert events_ttl(db) is None
    assert db["memory_events"].count_documents({}) == events
    # the descending index Mentorix's readers use is untouched throughout
    assert "ix_events_created_at_desc" in db["memory_events"].index_information()


# --- archive --------------------------------------------------------------------------------------
BIG = 9 * 1024 * 1024  # over INLINE_MAX_BYTES: the run file goes to GridFS


@pytest.fixture
def corpus(data_dir) -> dict[str, bytes]:
    """Two old runs (one with NaN, a layout json.dumps would not write and a GridFS run file),
    one new run, a hub. Returns the files' bytes."""
    files = {
        "episodes/skeleton_old1.json": json.dumps({"run_id": "old1", "query": "fractions", "status": "completed",
                                                   "updated_at": "2026-01-05T10:00:00", "nodes": [{"id": "n0"}]},
                                                  indent=2).encode(),
        "runs/run_old1.json": json.dumps({"run_id": "old1", "learner_id": "L-1", "steps": [1, 2]}).encode(),
        "episodes/skeleton_old2.json": b'{"run_id": "old2", "updated_at": "2026-02-27T23:59:59", '
                                       b'"score": NaN, "big": 1E5}',
        "runs/run_old2.json": json.dumps({"run_id": "old2", "blob": "x" * BIG}).encode(),
        "episodes/skeleton_new.json": json.dumps({"run_id": "new", "updated_at": "2026-03-01T00:00:00"}).encode(),
        "runs/run_new.json": json.dumps({"run_id": "new"}).encode(),
        "structured_hubs/soft_identity.json": json.dumps({"L-1": {"name": "x"}}, indent=2).encode(),
    }
    for rel, data in files.items():
        (data_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (data_dir / rel).write_bytes(data)
    return files


OLD = ("episodes/skeleton_old1.json", "runs/run_old1.json", "episodes/skeleton_old2.json", "runs/run_old2.json")


@pytest.fixture
def synced(corpus, config, store):
    report, code = run_sync(config, store)
    assert code == 0, report["bad_input"]
    return corpus


@pytest.fixture
def cli(mongo_url, db_name, data_dir):
    def call(*args: str, db: str | None = None) -> int:
        return main(["--data-dir", str(data_dir), "--mongodb-url", mongo_url, "--db-name", db or db_name, *args])
    return call


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): sha(p.read_bytes()) for p in root.rglob("*") if p.is_file()}


def test_archive_prune_restore_is_byte_identical(synced, cli, db, data_dir, tmp_path, other_db, capsys):
    out = tmp_path / "old.jsonl.gz"
    assert cli("archive", "--before", "2026-03-01", "--out", str(out), "--prune") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["exported"] == {"episodes": 2, "files": 4, "blobs": 1}
    assert report["verified"] is True
    assert report["pruned"] == {"removed": {"episodes": 2, "files": 4}, "kept": []}
    assert stat.S_IMODE(out.stat().st_mode) == 0o600  # learner data
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    # gone from the live collections, through the tombstones (with the GridFS blob's)
    assert sorted(d["run_id"] for d in db["episodic_memory"].find()) == ["new"]
    assert db["memory_files"].count_documents({"_id": {"$in": list(OLD)}}) == 0
    tombs = {(t["coll"], t["doc_id"]) for t in db["memory_tombstones"].find()}
    assert {("episodic_memory", "old1"), ("episodic_memory", "old2")} <= tombs
    assert {("memory_files", rel) for rel in OLD} <= tombs
    assert any(coll == "memory_files_blobs" for coll, _ in tombs)
    assert db["memory_events"].count_documents({"event_type": "episodes_archived", "count": 2}) == 1
    # each line is self-describing
    with gzip.open(out, "rt") as fh:
        types = [json.loads(line)["type"] for line in fh]
    assert types[0] == "header" and types[-1] == "end" and types.count("blob") == 1

    # the archive into an empty database, then restore into an empty dir: byte-identical
    assert cli("archive", "--restore", str(out), db=other_db) == 0
    restored = json.loads(capsys.readouterr().out)["restored"]
    assert restored == {"episodes": 2, "files": 4, "blobs": 1}
    empty = tmp_path / "fresh"
    assert cli("restore", "--out", str(empty), db=other_db) == 0
    capsys.readouterr()
    assert tree(empty) == {rel: sha(synced[rel]) for rel in OLD}

    # and back into the database it came from (files removed from disk as intended)
    for rel in OLD:
        (data_dir / rel).unlink()
    assert cli("archive", "--restore", str(out)) == 0
    capsys.readouterr()
    again = tmp_path / "again"
    assert cli("restore", "--out", str(again)) == 0
    capsys.readouterr()
    assert tree(again) == {rel: sha(data) for rel, data in synced.items()}
    # restoring twice keeps what is live (exit 1, everything listed as kept)
    assert cli("archive", "--restore", str(out)) == 1
    assert len(json.loads(capsys.readouterr().out)["kept"]) == 6  # the blob: the same bytes, present


def test_archive_without_prune_removes_nothing(synced, cli, db, tmp_path, capsys):
    before = {c: db[c].count_documents({}) for c in ("episodic_memory", "memory_files", "memory_tombstones")}
    out = tmp_path / "a.jsonl.gz"
    assert cli("archive", "--before", "2026-01-06", "--out", str(out)) == 0
    printed = capsys.readouterr()
    report = json.loads(printed.out)
    assert report["exported"] == {"episodes": 1, "files": 2, "blobs": 0}  # only old1
    assert "pruned" not in report
    assert {c: db[c].count_documents({}) for c in before} == before
    # quiet without a terminal: no progress bar in stderr
    assert "archiving" not in printed.err and "episode/s" not in printed.err


def test_pruned_episode_whose_file_stays_on_disk_is_mirrored_again(synced, cli, config, store, db, tmp_path,
                                                                    capsys):
    assert cli("archive", "--before", "2026-03-01", "--out", str(tmp_path / "a.jsonl.gz"), "--prune") == 0
    capsys.readouterr()
    assert db["episodic_memory"].count_documents({"run_id": "old1"}) == 0
    report, code = run_sync(config, store)  # what a daemon's start-up reconcile does too
    assert code == 0
    assert db["episodic_memory"].count_documents({"run_id": {"$in": ["old1", "old2"]}}) == 2
    assert report["parity"]["all_match"] is True


def test_existing_target_refused(synced, cli, db, tmp_path, capsys):
    out = tmp_path / "a.jsonl.gz"
    out.write_bytes(b"keep")
    assert cli("archive", "--before", "2026-03-01", "--out", str(out), "--prune") == 2
    assert "exists" in capsys.readouterr().err
    assert out.read_bytes() == b"keep"
    assert db["episodic_memory"].count_documents({}) == 3


def test_usage_errors(synced, cli, tmp_path, capsys):
    assert cli("archive", "--before", "2026-03-01") == 2
    assert cli("archive", "--restore", str(tmp_path / "x"), "--prune") == 2
    with pytest.raises(SystemExit):
        cli("archive", "--before", "March", "--out", str(tmp_path / "x"))


def test_prune_refused_while_another_writer_holds_the_lease(synced, cli, store, db, tmp_path, capsys):
    daemon = Lease(store, "daemon", 30, host="elsewhere")
    daemon.acquire()
    try:
        out = tmp_path / "a.jsonl.gz"
        assert cli("archive", "--before", "2026-03-01", "--out", str(out), "--prune") == 4
        assert not out.exists()
        assert db["episodic_memory"].count_documents({}) == 3
    finally:
        daemon.release()


def test_failed_write_leaves_no_archive_and_prunes_nothing(synced, cli, db, tmp_path, capsys, monkeypatch):
    real = archive_mod._line
    calls = {"n": 0}

    def failing(obj):
        calls["n"] += 1
        if calls["n"] == 4:
            raise OSError(28, "No space left on device")
        return real(obj)
    monkeypatch.setattr(archive_mod, "_line", failing)
    with pytest.raises(OSError):
        cli("archive", "--before", "2026-03-01", "--out", str(tmp_path / "a.jsonl.gz"), "--prune")
    assert list(tmp_path.glob("*a.jsonl.gz*")) == []
    assert db["episodic_memory"].count_documents({}) == 3


def test_verification_failure_prunes_nothing(synced, cli, db, tmp_path, capsys, monkeypatch):
    def corrupt(path):
        raise archive_mod.ArchiveError(f"{path}: the end line's counts or sha256 do not match the content")
    monkeypatch.setattr(archive_mod, "read_archive", corrupt)
    assert cli("archive", "--before", "2026-03-01", "--out", str(tmp_path / "a.jsonl.gz"), "--prune") == 2
    assert "do not match" in capsys.readouterr().err
    assert db["episodic_memory"].count_documents({}) == 3
    assert db["memory_tombstones"].count_documents({}) == 0


def test_truncated_or_altered_archive_restores_nothing(synced, cli, db, tmp_path, other_db, capsys):
    out = tmp_path / "a.jsonl.gz"
    assert cli("archive", "--before", "2026-03-01", "--out", str(out)) == 0
    capsys.readouterr()
    data = gzip.decompress(out.read_bytes())
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(gzip.compress(data[: data.rindex(b'{"type": "end"')]))
    assert cli("archive", "--restore", str(cut), db=other_db) == 2
    assert "no end line" in capsys.readouterr().err
    altered = tmp_path / "altered.jsonl.gz"
    altered.write_bytes(gzip.compress(data.replace(b"fractions", b"decimals!")))
    assert cli("archive", "--restore", str(altered), db=other_db) == 2
    err = capsys.readouterr().err
    assert "do not match" in err and "decimals" not in err and "fractions" not in err
    half = tmp_path / "half.jsonl.gz"
    half.write_bytes(out.read_bytes()[:200])
    assert cli("archive", "--restore", str(half), db=other_db) == 2
    assert other_db not in db.client.list_database_names() or \
        db.client[other_db]["episodic_memory"].count_documents({}) == 0


def test_progress_bar_on_a_terminal(synced, cli, tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert cli("archive", "--before", "2026-03-01", "--out", str(tmp_path / "a.jsonl.gz")) == 0
    assert "archiving" in capsys.readouterr().err


def test_episode_changed_after_export_is_kept_with_its_files(synced, cli, db, tmp_path, capsys, monkeypatch):
    real = archive_mod.verify

    def verify_then_someone_writes(exported):
        archive = real(exported)
        db["episodic_memory"].update_one({"run_id": "old1"}, {"$set": {"status": "re-opened"}})
        return archive
    monkeypatch.setattr(archive_mod, "verify", verify_then_someone_writes)
    assert cli("archive", "--before", "2026-03-01", "--out", str(tmp_path / "a.jsonl.gz"), "--prune") == 1
    pruned = json.loads(capsys.readouterr().out)["pruned"]
    assert pruned["removed"] == {"episodes": 1, "files": 2}
    assert [k["run_id"] for k in pruned["kept"]] == ["old1"]
    assert db["episodic_memory"].find_one({"run_id": "old1"})["status"] == "re-opened"
    assert db["memory_files"].count_documents({"_id": {"$in": ["episodes/skeleton_old1.json",
                                                               "runs/run_old1.json"]}}) == 2
    assert db["episodic_memory"].count_documents({"run_id": "old2"}) == 0
