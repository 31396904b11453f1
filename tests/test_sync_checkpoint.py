"""The sync checkpoint (issue 13, point 4: a warm ``sync`` that costs what changed).

A full sync that found both sides equal and wrote nothing leaves a checkpoint (its
start in MongoDB's change stream, its parity); the next sync reports that parity
without reading a file or a document when neither MongoDB (no change-stream event)
nor the data dir (every file's stat data as its trusted record says, no file more,
none less) changed. Each test below changes one thing another way and checks the
sync goes the full way and finds it: the checkpoint never vouches for what it did
not see.
"""

from __future__ import annotations

import os
import shutil

import bson
import pytest

from deletion_helpers import HUB, keys_in_mongo, write_in_place
from sidecar import checkpoint, quick
from sidecar.changefeed import ChangeFeed, ChangesUnknown
from sidecar.reconcile import Reconciler
from sidecar.store import Store
from sidecar.sync import run_sync

EPISODE = "episodes/skeleton_r1.json"
RUN = "runs/run_a.json"
OTHER = "notes/todo.txt"
FILES = 5

# The checkpoint needs change streams: on a server without them every sync is a full one
# (test_a_server_without_change_streams_syncs_in_full shows it, by refusing them here).
pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("change_streams")]


def seed(root) -> None:
    write_in_place(root, HUB, {"l0": {"score": 0}, "l1": {"score": 1}, "l2": {"score": 2}})
    write_in_place(root, EPISODE, {"run_id": "r1", "status": "aaaa"})
    write_in_place(root, "episodes/skeleton_r2.json", {"run_id": "r2", "status": "aaaa"})
    write_in_place(root, RUN, {"run_id": "a", "status": "aaaa"})
    (root / "notes").mkdir(exist_ok=True)
    (root / OTHER).write_bytes(b"buy milk\n")


def used(report: dict) -> bool:
    return report["checkpoint"]["used"]


def checkpointed(root, config, store) -> dict:
    """Seed and sync: the sync leaves the checkpoint (its own writes accounted for)."""
    seed(root)
    cold, code = run_sync(config, store)
    assert code == 0 and not used(cold) and cold["checkpoint"]["reason"] == "no checkpoint"
    assert cold["checkpoint"]["saved"], cold["checkpoint"]
    return cold


def test_a_sync_after_a_clean_one_reads_nothing_and_reports_what_a_full_read_does(data_dir, config, store, db,
                                                                                 exact_clock, monkeypatch):
    cold = checkpointed(data_dir, config, store)
    full, _ = run_sync(config, store, checksum=True)  # every file read and hashed: the truth
    assert not used(full) and full["writes"]["total"] == 0
    events = db.memory_events.count_documents({})
    reads = []
    with monkeypatch.context() as m:
        m.setattr(Reconciler, "process_file", lambda *a, **k: reads.append(a) or ([], []))
        m.setattr(Store, "iter_state", lambda self: pytest.fail("the state is loaded"))
        for _ in range(2):  # the checkpoint moved on by the first is good for the second
            fast, code = run_sync(config, store)
            assert code == 0 and used(fast) and not reads
            for part in checkpoint.PARITY_KEYS:
                assert fast[part] == full[part] == cold[part], part
            assert fast["writes"]["total"] == 0 and fast["quick_check"]["files_read"] == 0
            assert fast["quick_check"]["files_quick_checked"] == FILES
    assert db.memory_events.count_documents({}) == events
    assert "token" in db.memory_sidecar_meta.find_one({"_id": "sync_checkpoint"})
    assert db["memory_sidecar_checkpoint.files"].count_documents({}) == 1  # the older listings dropped


@pytest.mark.parametrize("change", ["content", "same_size_and_mtime", "backup_copied_over", "added",
                                    "removed", "symlink"])
def test_a_change_on_disk_makes_it_a_full_sync_that_finds_it(data_dir, config, store, db, exact_clock,
                                                             change):
    checkpointed(data_dir, config, store)
    path = data_dir / RUN
    if change == "content":
        write_in_place(data_dir, RUN, {"run_id": "a", "status": "done!"})
    elif change == "same_size_and_mtime":  # touch -r style: only ctime tells
        before = os.stat(path)
        path.write_bytes(path.read_bytes().replace(b"aaaa", b"bbbb"))
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    elif change == "backup_copied_over":  # cp -p: same size and mtime, another inode
        backup = data_dir.parent / "backup.json"
        backup.write_bytes(path.read_bytes().replace(b"aaaa", b"cccc"))
        os.utime(backup, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns))
        os.replace(backup, path)
    elif change == "added":
        write_in_place(data_dir, "runs/run_new.json", {"run_id": "new"})
    elif change == "removed":
        path.unlink()
    else:
        (data_dir / "runs" / "link.json").symlink_to(path)
    report, _ = run_sync(config, store)
    assert not used(report), report["checkpoint"]
    if change in ("content", "same_size_and_mtime", "backup_copied_over"):
        assert report["writes"]["files_upserted"] == 1 and report["parity"]["all_match"]
    elif change == "added":
        assert report["writes"]["files_upserted"] == 1
    elif change == "removed":
        # A sync never deletes: the file's manifest stays live (nobody saw it go), parity says so.
        manifest = db.memory_files.find_one({"_id": RUN})
        assert manifest is not None and manifest.get("deleted_at") is None
        assert report["writes"]["total"] == 0
    else:
        assert report["bad_input"]["count"] >= 1


@pytest.mark.parametrize("change", ["episode_updated", "hub_entry_deleted", "manifest_updated",
                                    "collection_dropped", "blob_collection_written", "database_dropped"])
def test_a_change_in_mongodb_by_anyone_makes_it_a_full_sync_that_finds_it(data_dir, config, store, db,
                                                                          exact_clock, change):
    checkpointed(data_dir, config, store)
    if change == "episode_updated":
        db.episodic_memory.update_one({"run_id": "r1"}, {"$set": {"status": "zzzz"}})
    elif change == "hub_entry_deleted":
        db.memory_hubs.delete_one({"item_key": "l1"})
    elif change == "manifest_updated":
        db.memory_files.update_one({"_id": OTHER}, {"$set": {"raw": bson.Binary(b"edited elsewhere")}})
    elif change == "collection_dropped":
        db.drop_collection("memory_hubs")
    elif change == "blob_collection_written":
        db["memory_files_blobs.files"].insert_one({"_id": "stray"})
    else:
        db.client.drop_database(db.name)
    report, code = run_sync(config, store)
    assert not used(report) and report["checkpoint"]["reason"].startswith(("MongoDB changed", "no checkpoint"))
    if change in ("episode_updated", "hub_entry_deleted", "manifest_updated", "collection_dropped"):
        assert report["writes"]["total"] >= 1  # repaired from the files
    assert code == 0 and report["parity"]["all_match"]
    assert keys_in_mongo(db) == {"l0", "l1", "l2"}


@pytest.mark.parametrize("when", ["writing_sync_other_doc", "writing_sync_same_doc", "sync_writing_nothing"])
def test_a_change_made_while_the_full_sync_runs_is_not_covered_by_its_checkpoint(data_dir, config, store, db,
                                                                                 exact_clock, monkeypatch, when):
    """The checkpoint's point is taken before the full sync reads anything and moved past
    its own writes only when every event since is one of them: a write someone makes
    meanwhile (to a document the sync does not write, or to one it writes too) is
    after the point, and the next sync sees it."""
    seed(data_dir)
    run_sync(config, store)
    if when == "sync_writing_nothing":
        db.memory_sidecar_meta.delete_one({"_id": "sync_checkpoint"})  # the next sync is a full one
    elif when == "writing_sync_other_doc":
        write_in_place(data_dir, RUN, {"run_id": "a", "status": "bbbb"})  # it writes runs/run_a.json only
    else:
        write_in_place(data_dir, EPISODE, {"run_id": "r1", "status": "bbbb"})  # it writes r1 too
    scan = Reconciler.scan

    def scan_then_write(self, *a, **k):
        out = scan(self, *a, **k)
        db.episodic_memory.update_one({"run_id": "r1"}, {"$set": {"status": "behind its back"}})
        return out

    monkeypatch.setattr(Reconciler, "scan", scan_then_write)
    during, _ = run_sync(config, store)
    assert not used(during)
    if when == "sync_writing_nothing":
        assert during["writes"]["total"] == 0 and during["checkpoint"]["saved"]
    else:  # its own writes do not account for the other one: the point stays before it
        assert not during["checkpoint"]["saved"]
        assert "did not make" in during["checkpoint"]["not_saved"]
    monkeypatch.setattr(Reconciler, "scan", scan)
    after, _ = run_sync(config, store)
    assert not used(after) and after["parity"]["all_match"]
    # Repaired from the file now, or already overwritten by the sync's own write of r1.
    assert after["writes"]["episodes_upserted"] == (0 if when == "writing_sync_same_doc" else 1)
    assert db.episodic_memory.find_one({"run_id": "r1"})["status"] in ("aaaa", "bbbb")
    final, code = run_sync(config, store)
    assert code == 0 and used(final)


def test_a_racy_record_or_a_clock_gone_back_is_never_trusted(data_dir, config, store, db, exact_clock,
                                                            monkeypatch):
    checkpointed(data_dir, config, store)
    monkeypatch.setattr(quick, "RACY_NS", 10**18)  # every record is racily clean
    report, _ = run_sync(config, store)
    assert not used(report) and report["quick_check"]["files_read"] == FILES
    assert not report["checkpoint"]["saved"] and "trust" in report["checkpoint"]["not_saved"]
    monkeypatch.setattr(quick, "RACY_NS", 0)
    monkeypatch.setattr(quick, "wall_ns", lambda: 0)  # the clock went back: every record is from the future
    report, _ = run_sync(config, store)
    assert not used(report) and "trust" in report["checkpoint"]["reason"]


def test_a_file_rewritten_within_the_racy_window_is_found(data_dir, config, store, db):
    """The real margin: a file whose mtime is not safely older than its record could be
    rewritten in the same tick without its stat data changing (coarse timestamps): its
    record is never trusted, so the sync reads it, every time, until it is."""
    seed(data_dir)
    future = (os.stat(data_dir / RUN).st_mtime_ns + 60 * 10**9,) * 2
    os.utime(data_dir / RUN, ns=future)  # not older than any record made in the next minute
    cold, _ = run_sync(config, store)
    assert not cold["checkpoint"]["saved"] and "trust" in cold["checkpoint"]["not_saved"]
    path = data_dir / RUN
    path.write_bytes(path.read_bytes().replace(b"aaaa", b"dddd"))
    os.utime(path, ns=future)
    again, _ = run_sync(config, store)
    assert not used(again) and again["writes"]["files_upserted"] == 1


@pytest.mark.parametrize("forged", ["token_int", "report_partial", "parity_false", "not_a_dict", "format",
                                    "other_set", "clock_ahead", "bogus_token", "listing_gone", "listing_other",
                                    "files_int64_negative"])
def test_a_checkpoint_of_another_shape_or_origin_is_a_full_sync_never_a_crash(data_dir, config, store, db,
                                                                             exact_clock, forged):
    checkpointed(data_dir, config, store)
    meta = db.memory_sidecar_meta
    doc = meta.find_one({"_id": "sync_checkpoint"})
    change = {
        "token_int": {"token": 7},
        "report_partial": {"report": {"parity": {"all_match": True}}},
        "parity_false": {"report.parity.all_match": False},
        "format": {"format": 99},
        "other_set": {"set_name": "another-replica-set"},
        "clock_ahead": {"op_time": bson.Timestamp(2**31, 1)},
        "bogus_token": {"token": {"_data": "82DEADBEEF"}},
        "listing_other": {"listing_sha256": "0" * 64},
        "files_int64_negative": {"files": bson.Int64(-1)},
    }
    if forged == "listing_gone":
        db["memory_sidecar_checkpoint.files"].delete_many({})
        db["memory_sidecar_checkpoint.chunks"].delete_many({})
    elif forged == "not_a_dict":
        meta.replace_one({"_id": doc["_id"]}, {"report": "x", "token": [1, 2]})
    else:
        meta.update_one({"_id": doc["_id"]}, {"$set": change[forged]})
    write_in_place(data_dir, RUN, {"run_id": "a", "status": "changed"})  # what a trusted forgery would hide
    report, code = run_sync(config, store)
    assert not used(report) and report["writes"]["files_upserted"] == 1 and code == 0


def test_changed_settings_make_it_a_full_sync(data_dir, make_config, store, exact_clock):
    config = make_config()
    checkpointed(data_dir, config, store)
    report, _ = run_sync(make_config(sidecar_redact_keys=["score"]), store)
    assert not used(report) and report["checkpoint"]["reason"] == "settings or version changed"
    report, _ = run_sync(make_config(sidecar_ignore=["notes/*"]), store)
    assert not used(report)


def test_checksum_always_reads_and_a_dry_run_writes_nothing_not_even_the_fence(data_dir, config, store, db,
                                                                              exact_clock):
    checkpointed(data_dir, config, store)
    report, _ = run_sync(config, store, checksum=True)
    assert not used(report) and report["quick_check"]["files_read"] == FILES
    before = list(db.memory_sidecar_meta.find())
    dry, code = run_sync(config, store, dry_run=True)
    assert code == 0 and not used(dry) and dry["planned_writes"] == {} and not dry["checkpoint"]["saved"]
    assert list(db.memory_sidecar_meta.find()) == before


def test_a_fresh_volume_after_a_checkpoint_loses_nothing(data_dir, config, store, db, exact_clock):
    checkpointed(data_dir, config, store)
    for child in data_dir.iterdir():
        shutil.rmtree(child) if child.is_dir() else child.unlink()
    report, code = run_sync(config, store)
    assert not used(report) and report["fresh_volume"]
    assert db.memory_files.count_documents({"deleted_at": {"$ne": None}}) == 0
    assert keys_in_mongo(db) == {"l0", "l1", "l2"}


def test_a_server_without_change_streams_syncs_in_full(data_dir, config, store, exact_clock, monkeypatch):
    def refuse(self, since=None):
        raise ChangesUnknown("change stream refused (code 40573)")

    monkeypatch.setattr(ChangeFeed, "change_point", refuse)
    seed(data_dir)
    for _ in range(3):
        report, code = run_sync(config, store)
        assert code == 0 and not used(report) and not report["checkpoint"]["saved"]


def test_a_server_restart_keeps_the_answer_right(data_dir, config, store, db, exact_clock, restartable_server):
    checkpointed(data_dir, config, store)
    restartable_server.restart()
    write_in_place(data_dir, EPISODE, {"run_id": "r1", "status": "after the restart"})
    report, code = run_sync(config, store)
    assert code == 0 and not used(report) and report["writes"]["episodes_upserted"] == 1
    again, code = run_sync(config, store)
    assert code == 0 and again["writes"]["total"] == 0


def test_an_earlier_checks_fence_is_bookkeeping_not_a_change(data_dir, config, store, db, exact_clock):
    """A check that wrote its fence and then found the disk changed leaves the
    checkpoint where it was; the next check reads past that fence to its own."""
    checkpointed(data_dir, config, store)
    link = data_dir / "runs" / "link.json"
    link.symlink_to(data_dir / RUN)
    report, _ = run_sync(config, store)
    assert not used(report) and report["checkpoint"]["reason"] == "a path the sync skips"
    assert not report["checkpoint"]["saved"] and report["writes"]["total"] == 0
    link.unlink()
    fast, code = run_sync(config, store)
    assert code == 0 and used(fast)


def test_the_fence_not_coming_back_is_a_full_sync(data_dir, config, store, db, exact_clock, monkeypatch):
    checkpointed(data_dir, config, store)
    # A stream that does not show the fence (as one that lags behind the writes would not, yet).
    monkeypatch.setattr(ChangeFeed, "_changes_pipeline", lambda self: [{"$match": {"ns.coll": "nothing"}}])
    monkeypatch.setattr(ChangeFeed, "FENCE_WAIT_S", 0.3)
    report, code = run_sync(config, store)
    assert code == 0 and not used(report) and "fence did not come back" in report["checkpoint"]["reason"]


@pytest.mark.parametrize("edit", ["entry_changed", "entries_reordered", "episode_rewritten", "file_touched",
                                  "file_added", "snapshot_written"])
def test_a_sync_that_writes_a_little_accounts_for_its_own_writes_and_leaves_the_checkpoint(
        data_dir, config, store, db, exact_clock, edit):
    """Each kind of write a sync sends (a replace, an insert, a position, a record's
    refresh) is matched to its own change event, so the sync after it reads nothing."""
    checkpointed(data_dir, config, store)
    if edit == "entry_changed":
        write_in_place(data_dir, HUB, {"l0": {"score": 0}, "l1": {"score": 100}, "l2": {"score": 2}})
    elif edit == "entries_reordered":
        write_in_place(data_dir, HUB, {"l2": {"score": 2}, "l0": {"score": 0}, "l1": {"score": 1}})
    elif edit == "episode_rewritten":
        write_in_place(data_dir, EPISODE, {"run_id": "r1", "status": "done", "steps": [1, 2.5, None]})
    elif edit == "file_touched":
        st = os.stat(data_dir / OTHER)
        os.utime(data_dir / OTHER, ns=(st.st_atime_ns, st.st_mtime_ns - 10**9))
    elif edit == "file_added":
        write_in_place(data_dir, "runs/run_new.json", {"run_id": "new", "when": "2026-12-02T10:00:00"})
    else:
        write_in_place(data_dir, "snapshot.json", {"active_runs": [], "timestamp": "2026-12-02T10:00:00"})
    wrote, code = run_sync(config, store)
    assert code == 0 and not used(wrote)
    assert wrote["checkpoint"]["saved"], wrote["checkpoint"]
    after, code = run_sync(config, store)
    assert code == 0 and used(after)
    for part in checkpoint.PARITY_KEYS:
        assert after[part] == wrote[part], part
