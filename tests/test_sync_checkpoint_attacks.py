"""Attacks on the sync checkpoint (sidecar/checkpoint.py): each test changes one side
another way, or breaks a sync at an awkward moment, and checks the next sync never
reports the checkpoint's parity when something changed, and loses nothing.

The holes these attacks found (a write acknowledged without an event passing a foreign change off as
the sync's own; a corrupt listing chunk failing every sync) are fixed; the tests guard them.
"""

from __future__ import annotations

import os
import shutil

import bson
import pytest

from deletion_helpers import HUB, keys_in_mongo, write_in_place
from sidecar import checkpoint
from sidecar.changefeed import LISTING_BUCKET, ChangeFeed
from sidecar.store import Store
from sidecar.sync import run_sync
from test_sync_checkpoint import EPISODE, OTHER, RUN, checkpointed, seed, used

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("change_streams")]


class Crash(BaseException):
    """What a kill -9 leaves: the process stops there (not an Exception: nothing catches it)."""


def truth(config, store) -> dict:
    """What a sync that reads every file says (never the checkpoint)."""
    report, _ = run_sync(config, store, checksum=True)
    assert not used(report)
    return report


# --- MongoDB side ---------------------------------------------------------------------

@pytest.mark.parametrize("foreign", ["delete", "update_newer"])
def test_a_foreign_write_to_a_hub_entry_the_sync_only_repositions_is_not_hidden(data_dir, config, store, db,
                                                                                exact_clock, monkeypatch,
                                                                                foreign):
    """A sync that only moves a hub entry (``setpos``, an UpdateOne) sends a write that
    MongoDB acknowledges without an event when its guard matches nothing (the document
    gone, or newer). Someone deleting or rewriting that entry while the sync runs makes
    exactly one event on it, which must not pass for the sync's own (it did not write
    what the sync sent): no checkpoint moves past it, the next sync checks in full."""
    checkpointed(data_dir, config, store)
    write_in_place(data_dir, HUB, {"l1": {"score": 1}, "l0": {"score": 0}, "l2": {"score": 2}})  # reordered
    apply = Store.apply

    def write_then_apply(self, ops):
        if any(op.action == "setpos" for op in ops):  # Mentorix, an admin, a TTL: anyone
            if foreign == "delete":
                db.memory_hubs.delete_one({"item_key": "l0"})
            else:
                db.memory_hubs.update_one({"item_key": "l0"}, {"$set": {"payload": {"score": 1000},
                                                                         "_sidecar.version": 2**62}})
        return apply(self, ops)

    monkeypatch.setattr(Store, "apply", write_then_apply)
    during, _ = run_sync(config, store)
    monkeypatch.setattr(Store, "apply", apply)
    assert during["writes"]["positions_updated"] >= 1
    after, _ = run_sync(config, store)
    # MongoDB changed since the checkpoint: a sync must not vouch for parity from it.
    assert not used(after), (after["checkpoint"], keys_in_mongo(db))


def test_a_foreign_snapshot_under_the_syncs_id_is_not_hidden(data_dir, config, store, db, exact_clock,
                                                            monkeypatch):
    checkpointed(data_dir, config, store)
    write_in_place(data_dir, "snapshot.json", {"learner": "x", "state": "new"})
    apply = Store.apply

    def foreign_first(self, ops):
        for op in ops:
            if op.coll == "runtime_snapshots" and op.action == "insert":
                db.runtime_snapshots.insert_one({"_id": op.id, "not": "the file's content"})
        return apply(self, ops)

    monkeypatch.setattr(Store, "apply", foreign_first)
    during, _ = run_sync(config, store)
    monkeypatch.setattr(Store, "apply", apply)
    assert during["writes"]["snapshots_upserted"] == 1
    after, _ = run_sync(config, store)
    assert not used(after), after["checkpoint"]


def test_a_foreign_delete_of_a_manifest_the_sync_only_refreshes_is_found_on_disk(data_dir, config, store, db,
                                                                                exact_clock, monkeypatch):
    """The same no-event write on a manifest (a ``stat`` refresh whose guard matches
    nothing): the event is accounted for, but the listing is read afterwards, so the
    file no live manifest names makes the next sync a full one, which puts it back."""
    checkpointed(data_dir, config, store)
    path = data_dir / OTHER
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - 10**9))  # touched (into the past): same bytes
    apply = Store.apply

    def delete_then_apply(self, ops):
        if any(op.action == "stat" and op.id == OTHER for op in ops):
            db.memory_files.delete_one({"_id": OTHER})
        return apply(self, ops)

    monkeypatch.setattr(Store, "apply", delete_then_apply)
    during, _ = run_sync(config, store)
    monkeypatch.setattr(Store, "apply", apply)
    assert during["writes"]["stat_records_refreshed"] >= 1
    after, code = run_sync(config, store)
    assert not used(after) and code == 0 and db.memory_files.find_one({"_id": OTHER}) is not None


def test_a_foreign_write_after_the_fence_is_seen_by_the_next_sync(data_dir, config, store, db, exact_clock,
                                                                 monkeypatch):
    """Between the check's fence and its walk of the disk (the report of "unchanged" is
    right for the moment it asked): the checkpoint moved on must not cover it."""
    checkpointed(data_dir, config, store)
    disk = checkpoint._disk_unchanged

    def write_then_walk(*a, **k):
        db.episodic_memory.update_one({"run_id": "r1"}, {"$set": {"status": "behind its back"}})
        return disk(*a, **k)

    monkeypatch.setattr(checkpoint, "_disk_unchanged", write_then_walk)
    first, _ = run_sync(config, store)
    monkeypatch.setattr(checkpoint, "_disk_unchanged", disk)
    assert used(first)  # true at the point it asked
    after, code = run_sync(config, store)
    assert not used(after) and after["writes"]["episodes_upserted"] == 1 and code == 0
    assert db.episodic_memory.find_one({"run_id": "r1"})["status"] == "aaaa"


def test_a_foreign_write_between_a_changed_check_and_the_full_load_is_not_covered(data_dir, config, store, db,
                                                                                  exact_clock, monkeypatch):
    """The check found the disk changed: the full sync starts from the check's point;
    a write landing before its load is after that point and not one of its writes."""
    checkpointed(data_dir, config, store)
    write_in_place(data_dir, RUN, {"run_id": "a", "status": "bbbb"})
    iter_state = Store.iter_state

    def write_then_load(self):
        db.memory_hubs.update_one({"item_key": "l2"}, {"$set": {"payload": {"score": 99}}})
        return iter_state(self)

    monkeypatch.setattr(Store, "iter_state", write_then_load)
    during, _ = run_sync(config, store)
    monkeypatch.setattr(Store, "iter_state", iter_state)
    assert not used(during)
    after, code = run_sync(config, store)
    assert code == 0 and after["parity"]["all_match"]
    final, _ = run_sync(config, store)
    assert used(final)
    assert final["parity"] == truth(config, store)["parity"]


def test_a_foreign_write_between_the_stream_opening_and_the_fence_is_seen(data_dir, config, store, db,
                                                                         exact_clock, monkeypatch):
    checkpointed(data_dir, config, store)
    stream = ChangeFeed._stream
    from contextlib import contextmanager

    done = []

    @contextmanager
    def write_once_open(self, since):
        with stream(self, since) as s:
            if since is not None and not done:  # the check's stream only
                done.append(db.memory_hubs.delete_one({"item_key": "l1"}).deleted_count)
            yield s

    monkeypatch.setattr(ChangeFeed, "_stream", write_once_open)
    report, code = run_sync(config, store)
    assert not used(report) and report["checkpoint"]["reason"].startswith("MongoDB changed")
    assert done == [1] and code == 0 and keys_in_mongo(db) == {"l0", "l1", "l2"}


def test_a_foreign_write_to_the_audit_trail_is_not_a_change_of_the_mirror(data_dir, config, store, db,
                                                                          exact_clock):
    checkpointed(data_dir, config, store)
    db.memory_events.insert_one({"kind": "someone_elses"})
    report, code = run_sync(config, store)
    assert code == 0 and used(report) and report["parity"] == truth(config, store)["parity"]


def test_a_foreign_no_op_write_changes_nothing_and_the_checkpoint_still_holds(data_dir, config, store, db,
                                                                             exact_clock):
    checkpointed(data_dir, config, store)
    doc = db.episodic_memory.find_one({"run_id": "r1"})
    db.episodic_memory.update_one({"_id": doc["_id"]}, {"$set": {"status": doc["status"]}})  # no change
    report, code = run_sync(config, store)
    assert code == 0
    assert report["parity"] == truth(config, store)["parity"]


def test_a_foreign_write_to_another_meta_document_is_bookkeeping(data_dir, config, store, db, exact_clock):
    checkpointed(data_dir, config, store)
    db.memory_sidecar_meta.insert_one({"_id": "someone_elses", "x": 1})
    report, code = run_sync(config, store)
    assert code == 0 and used(report)
    assert report["parity"] == truth(config, store)["parity"]


def test_a_collection_renamed_onto_a_mirrored_name_is_a_change(data_dir, config, store, db, exact_clock):
    checkpointed(data_dir, config, store)
    db.scratch.insert_one({"_id": "x", "hub_type": "learner_preferences", "item_key": "zz"})
    db.scratch.rename("memory_hubs", dropTarget=True)  # every mirrored hub entry replaced
    report, code = run_sync(config, store)
    assert not used(report), report["checkpoint"]
    assert {"l0", "l1", "l2"} <= keys_in_mongo(db)


def test_a_collection_renamed_away_from_a_mirrored_name_is_a_change(data_dir, config, store, db, exact_clock):
    checkpointed(data_dir, config, store)
    db.memory_hubs.rename("memory_events_old")  # out of a mirrored name
    report, code = run_sync(config, store)
    assert not used(report), report["checkpoint"]
    assert keys_in_mongo(db) == {"l0", "l1", "l2"}


def test_a_tombstone_or_blob_written_by_someone_else_is_a_change(data_dir, config, store, db, exact_clock):
    checkpointed(data_dir, config, store)
    db.memory_tombstones.insert_one({"_id": "stray", "coll": "memory_hubs"})
    report, _ = run_sync(config, store)
    assert not used(report)


# --- a sync killed at an awkward moment -------------------------------------------------

@pytest.mark.parametrize("where", ["after_writes", "after_listing_upload", "after_checkpoint_write"])
def test_a_sync_killed_before_its_checkpoint_is_whole_leaves_the_next_one_right(data_dir, config, store, db,
                                                                               exact_clock, monkeypatch, where):
    checkpointed(data_dir, config, store)
    write_in_place(data_dir, EPISODE, {"run_id": "r1", "status": "cccc"})
    write_in_place(data_dir, RUN, {"run_id": "a", "status": "cccc"})

    def crash(*a, **k):
        raise Crash(where)

    if where == "after_writes":
        monkeypatch.setattr(checkpoint, "save", crash)
    elif where == "after_listing_upload":
        monkeypatch.setattr(checkpoint, "_write", crash)
    else:
        monkeypatch.setattr(ChangeFeed, "drop_listings", crash)
    with pytest.raises(Crash):
        run_sync(config, store)
    monkeypatch.undo()
    import sidecar.quick as quick
    monkeypatch.setattr(quick, "RACY_NS", 0)
    db.memory_sidecar_meta.delete_many({"_id": "writer_lease"})  # a kill -9 leaves it; its TTL frees it
    # Someone changes MongoDB while nobody runs: a checkpoint must not vouch for it.
    db.memory_hubs.update_one({"item_key": "l1"}, {"$set": {"payload": {"score": 77}}})
    report, code = run_sync(config, store)
    assert not used(report) and code == 0 and report["writes"]["hubs_upserted"] >= 1
    assert db.episodic_memory.find_one({"run_id": "r1"})["status"] == "cccc"
    final, _ = run_sync(config, store)
    assert used(final) and final["parity"] == truth(config, store)["parity"]
    assert db["memory_sidecar_checkpoint.files"].count_documents({}) == 1  # an orphan listing dropped


def test_a_sync_killed_by_sigkill_mid_write_then_the_next_is_right(data_dir, config, store, db, exact_clock,
                                                                  tmp_path):
    """A real ``kill -9`` of ``python -m sidecar sync`` while it writes: the next sync
    goes the full way (its writes are events after the old checkpoint's point)."""
    import signal
    import subprocess
    import sys

    checkpointed(data_dir, config, store)
    for i in range(30):
        write_in_place(data_dir, f"runs/run_{i:03d}.json", {"run_id": f"k{i}", "status": "x" * 50})
    gate = tmp_path / "gate"
    code = (
        "import os, sys, time, signal\n"
        "from sidecar import checkpoint\n"
        "from sidecar.store import Store\n"
        "apply = Store.apply\n"
        "def stop_after(self, ops):\n"
        "    out = apply(self, ops)\n"
        f"    open({str(gate)!r}, 'w').close()\n"
        "    os.kill(os.getpid(), signal.SIGSTOP)\n"  # held here for the parent's SIGKILL
        "    return out\n"
        "Store.apply = stop_after\n"
        "from sidecar.cli import main\n"
        "sys.argv = ['memory-sidecar', 'sync']\n"
        "main()\n"
    )
    env = {**os.environ, "RUNTIME_DATA_DIR": str(data_dir), "MONGODB_URL": config.mongodb_url.get_secret_value(),
           "MONGODB_DB_NAME": config.mongodb_db_name, "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        from testkit.measure import wait_for
        wait_for(lambda: gate.exists() or proc.poll() is not None, timeout=60)
        assert gate.exists(), proc.stderr.read().decode()[-2000:]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stderr.close()
    db.memory_sidecar_meta.delete_many({"_id": "writer_lease"})  # a kill -9 leaves it; its TTL frees it
    report, code = run_sync(config, store)
    assert not used(report) and code == 0 and report["parity"]["all_match"]
    final, _ = run_sync(config, store)
    assert used(final) and final["parity"] == truth(config, store)["parity"]


# --- ACCOUNT_MAX -----------------------------------------------------------------------

@pytest.mark.parametrize("limit,saved", [(3, True), (2, False)])
def test_account_max_is_a_bound_on_the_writes_accounted_for(data_dir, config, store, db, exact_clock,
                                                           monkeypatch, limit, saved):
    """A sync of 3 new run files sends 3 manifest writes: exactly ``ACCOUNT_MAX`` of them
    are accounted for (checkpoint saved), one more than it is not; and either way a
    change made after it is seen by the next sync."""
    checkpointed(data_dir, config, store)
    for i in range(3):
        write_in_place(data_dir, f"runs/run_m{i}.json", {"run_id": f"m{i}"})
    monkeypatch.setattr(checkpoint, "ACCOUNT_MAX", limit)
    report, _ = run_sync(config, store)
    assert report["writes"]["total"] == 3
    assert report["checkpoint"]["saved"] is saved, report["checkpoint"]
    if not saved:
        assert "more than 2 writes" in report["checkpoint"]["not_saved"]
    db.memory_hubs.update_one({"item_key": "l0"}, {"$set": {"payload": {"score": 5}}})
    after, code = run_sync(config, store)
    assert not used(after) and code == 0 and after["writes"]["hubs_upserted"] == 1
    final, _ = run_sync(config, store)
    assert used(final) and final["parity"] == truth(config, store)["parity"]


# --- the data dir ----------------------------------------------------------------------

@pytest.mark.parametrize("change", ["hard_link", "file_to_directory", "directory_renamed", "data_dir_copied",
                                    "truncate_rewrite_same_size_mtime"])
def test_a_change_on_disk_is_never_reported_from_the_checkpoint(data_dir, make_config, store, db, exact_clock,
                                                               tmp_path, change):
    config = make_config()
    checkpointed(data_dir, config, store)
    path = data_dir / RUN
    if change == "hard_link":
        os.link(path, data_dir / "runs" / "run_hard.json")
    elif change == "file_to_directory":
        path.unlink()
        path.mkdir()
        (path / "inner.txt").write_bytes(b"x")
    elif change == "directory_renamed":
        (data_dir / "notes").rename(data_dir / "notes2")
    elif change == "data_dir_copied":  # the data dir replaced by a copy with the same names (cp -a, mv)
        copy = data_dir.parent / (data_dir.name + ".copy")
        shutil.copytree(data_dir, copy, copy_function=shutil.copy2)
        write_in_place(copy, RUN, {"run_id": "a", "status": "zzzz"})
        os.utime(copy / RUN, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns))
        shutil.rmtree(data_dir)
        copy.rename(data_dir)
    elif change == "truncate_rewrite_same_size_mtime":
        before = os.stat(path)
        with open(path, "r+b") as f:
            data = f.read()
            f.seek(0)
            f.truncate()
            f.write(data.replace(b"aaaa", b"eeee"))
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        assert os.stat(path).st_size == before.st_size and os.stat(path).st_ino == before.st_ino
    report, _ = run_sync(config, store)
    assert not used(report), report["checkpoint"]
    if change in ("data_dir_copied", "truncate_rewrite_same_size_mtime"):
        assert report["writes"]["files_upserted"] >= 1


def test_a_data_dir_that_is_a_symlink_is_refused_not_followed(data_dir, make_config, store, tmp_path):
    """Swapping a symlinked data dir for a copy cannot fool the checkpoint: such a data
    dir is refused outright (never followed)."""
    from sidecar.source import DataDirMissing

    link = tmp_path / "dd_link"
    link.symlink_to(data_dir)
    seed(data_dir)
    with pytest.raises(DataDirMissing):
        run_sync(make_config(runtime_data_dir=link), store)


def test_an_ignored_file_added_does_not_invalidate_the_checkpoint(data_dir, make_config, store, db,
                                                                 exact_clock):
    config = make_config(sidecar_ignore=["scratch/*"])
    checkpointed(data_dir, config, store)
    (data_dir / "scratch").mkdir()
    (data_dir / "scratch" / "tmp.bin").write_bytes(b"not mirrored")
    report, code = run_sync(config, store)
    assert code == 0 and used(report)
    assert report["parity"] == truth(config, store)["parity"]


def test_a_file_whose_name_is_not_utf8_after_a_checkpoint_is_a_clear_full_sync(data_dir, config, store, db,
                                                                               exact_clock):
    checkpointed(data_dir, config, store)
    with open(os.path.join(os.fsencode(data_dir / "runs"), b"run_\xff.json"), "wb") as f:
        f.write(b'{"run_id": "nonutf"}')
    report, _ = run_sync(config, store)  # never a crash
    assert not used(report)


@pytest.mark.parametrize("how", ["force", "missing_only"])
def test_a_restore_into_the_data_dir_after_a_checkpoint_is_seen(data_dir, config, store, db, exact_clock, how):
    from sidecar.restore import restore

    checkpointed(data_dir, config, store)
    write_in_place(data_dir, EPISODE, {"run_id": "r1", "status": "edited, not yet synced"})
    (data_dir / RUN).unlink()
    restore(store, data_dir, force=True, missing_only=how == "missing_only")
    report, code = run_sync(config, store)
    assert not used(report), report["checkpoint"]
    assert code == 0 and report["parity"] == truth(config, store)["parity"]
    expected = "edited, not yet synced" if how == "missing_only" else "aaaa"
    assert db.episodic_memory.find_one({"run_id": "r1"})["status"] == expected


def test_files_removed_or_emptied_after_a_checkpoint_are_seen(data_dir, config, store, db, exact_clock):
    checkpointed(data_dir, config, store)
    (data_dir / RUN).unlink()
    (data_dir / EPISODE).write_bytes(b"")  # the file damaged
    report, _ = run_sync(config, store)
    assert not used(report)


# --- the checkpoint's own data -----------------------------------------------------------

@pytest.mark.parametrize("forged", ["chunk_garbage", "chunk_truncated", "chunk_same_length_garbage",
                                    "files_count_lies",
                                    "listing_swapped_with_consistent_sha", "listing_of_another_length"])
def test_a_listing_corrupted_or_replaced_is_a_full_sync(data_dir, config, store, db, exact_clock, forged):
    import hashlib

    checkpointed(data_dir, config, store)
    meta = db.memory_sidecar_meta
    doc = meta.find_one({"_id": "sync_checkpoint"})
    chunks = db["memory_sidecar_checkpoint.chunks"]
    if forged == "chunk_garbage":
        chunks.update_many({}, {"$set": {"data": bson.Binary(b"\x00garbage")}})
    elif forged == "chunk_truncated":
        chunk = chunks.find_one({"files_id": doc["listing_id"]})
        chunks.update_one({"_id": chunk["_id"]}, {"$set": {"data": bson.Binary(chunk["data"][:5])}})
    elif forged == "chunk_same_length_garbage":
        chunk = chunks.find_one({"files_id": doc["listing_id"]})
        chunks.update_one({"_id": chunk["_id"]}, {"$set": {"data": bson.Binary(b"\xff" * len(chunk["data"]))}})
    elif forged == "files_count_lies":
        meta.update_one({"_id": doc["_id"]}, {"$set": {"files": doc["files"] - 1}})
    else:
        # A listing that names one file fewer (or a garbage one), its sha256 made to match.
        feed = ChangeFeed(store)
        entries = list(checkpoint._unpack(feed.get_listing(doc["listing_id"])))
        if forged == "listing_swapped_with_consistent_sha":
            entries = [e for e in entries if e[0] != RUN]
            files = len(entries)
        else:
            files = doc["files"]
            entries = entries[:-1]
        data = checkpoint._pack(entries)
        new_id = feed.put_listing(data)
        meta.update_one({"_id": doc["_id"]}, {"$set": {"listing_id": new_id, "files": files,
                                                       "listing_sha256": hashlib.sha256(data).hexdigest()}})
    write_in_place(data_dir, RUN, {"run_id": "a", "status": "hidden?"})
    report, code = run_sync(config, store)
    assert not used(report) and code == 0 and report["writes"]["files_upserted"] == 1


# --- other commands between syncs ---------------------------------------------------------

def test_a_dry_run_after_a_checkpoint_changes_nothing_and_the_next_sync_still_uses_it(data_dir, config, store,
                                                                                     db, exact_clock):
    checkpointed(data_dir, config, store)
    dry, _ = run_sync(config, store, dry_run=True)
    assert not used(dry)
    report, code = run_sync(config, store)
    assert code == 0 and used(report)


def test_divergences_accept_after_a_checkpoint_is_seen(data_dir, config, store, db, exact_clock):
    from sidecar.sync import run_divergences

    checkpointed(data_dir, config, store)
    write_in_place(data_dir, HUB, {"l0": {"score": 0}, "l1": {"score": 1}})  # l2 removed from the file
    held, _ = run_sync(config, store)
    assert held["divergences"]["count"] >= 1 and not held["checkpoint"]["saved"]
    accepted, code = run_divergences(config, store, accept_all=True)
    assert code == 0 and accepted["accepted"]
    report, code = run_sync(config, store)
    assert not used(report) and code == 0 and keys_in_mongo(db) == {"l0", "l1"}
    final, _ = run_sync(config, store)
    assert final["parity"] == truth(config, store)["parity"]


def test_two_syncs_back_to_back_with_the_lease_held_by_another_refuse_cleanly(data_dir, config, store, db,
                                                                             exact_clock):
    from sidecar.lease import Lease, LeaseHeld

    checkpointed(data_dir, config, store)
    other = Lease(store, "daemon", 60, host="another-host")
    other.acquire()
    try:
        with pytest.raises(LeaseHeld):
            run_sync(config, store)
    finally:
        other.release()
    report, code = run_sync(config, store)
    assert code == 0 and used(report)


# --- the daemon between two syncs ----------------------------------------------------------

@pytest.mark.parametrize("what", ["idle", "mirrors_a_write"])
def test_the_daemon_running_between_two_syncs_is_never_hidden(data_dir, config, store, db, exact_clock,
                                                             running, what):
    from testkit.measure import wait_for

    checkpointed(data_dir, config, store)
    d = running(wait_reconciled=True)
    if what == "mirrors_a_write":
        write_in_place(data_dir, EPISODE, {"run_id": "r1", "status": "from the daemon"})
        wait_for(lambda: (db.episodic_memory.find_one({"run_id": "r1"}) or {}).get("status") == "from the daemon",
                 20, what="the daemon mirroring the episode")
    d.stop()
    report, code = run_sync(config, store)
    if what == "mirrors_a_write":
        assert not used(report), report["checkpoint"]
    assert code == 0 and report["parity"] == truth(config, store)["parity"]
    assert db.episodic_memory.find_one({"run_id": "r1"})["status"] == (
        "from the daemon" if what == "mirrors_a_write" else "aaaa")


def test_the_daemon_in_mongo_mode_healing_a_file_is_never_hidden(data_dir, make_config, store, db, exact_clock,
                                                                running):
    from testkit.measure import wait_for

    config = make_config(memory_store_backend="mongo")
    checkpointed(data_dir, config, store)
    (data_dir / RUN).unlink()  # gone from disk; MongoDB is the truth in mongo mode
    d = running(wait_reconciled=True, memory_store_backend="mongo")
    wait_for(lambda: (data_dir / RUN).exists(), 20, what="the daemon restoring the file")
    d.stop()
    report, code = run_sync(config, store)
    assert code == 0 and report["parity"] == truth(config, store)["parity"]
    assert (data_dir / RUN).exists() and db.memory_files.find_one({"_id": RUN, "deleted_at": None})


def _as_bool(value):
    """``value`` with every 1 under the key "n" as True: equal in Python, another BSON type."""
    if isinstance(value, dict):
        return {k: (True if k == "n" and value[k] == 1 else _as_bool(value[k])) for k in value}
    if isinstance(value, list):
        return [_as_bool(v) for v in value]
    return value


def test_a_foreign_write_equal_only_in_python_is_not_passed_off_as_the_syncs(data_dir, config, store, db,
                                                                              exact_clock, monkeypatch):
    """A snapshot insert taken as "already there" makes no event; someone else's
    snapshot under that id with ``true`` where the file says ``1`` compares equal to
    what the sync sent in Python (``True == 1``), not in BSON nor in the file: it is a
    change the sync did not make, and the next sync must check in full."""
    checkpointed(data_dir, config, store)
    write_in_place(data_dir, "snapshot.json", {"learner": "x", "state": "new", "n": 1})
    apply = Store.apply
    forged = []

    def foreign_first(self, ops):
        for op in ops:
            if op.coll == "runtime_snapshots" and op.action == "insert" and not forged:
                forged.append(db.runtime_snapshots.insert_one({"_id": op.id, **_as_bool(
                    {k: v for k, v in op.doc.items() if k != "_id"})}).inserted_id)
        return apply(self, ops)

    monkeypatch.setattr(Store, "apply", foreign_first)
    during, _ = run_sync(config, store)
    monkeypatch.setattr(Store, "apply", apply)
    assert forged and during["writes"]["snapshots_upserted"] == 1
    stored = db.runtime_snapshots.find_one({"_id": forged[0]})
    assert stored == _as_bool(stored) and "True" in repr(stored)  # the forged one stands
    after, _ = run_sync(config, store)
    assert not used(after), after["checkpoint"]


def test_mongodb_refusing_the_checkpoints_bookkeeping_is_no_outage(data_dir, config, store, db, exact_clock):
    """Someone else's unique index on the listing bucket: MongoDB answers, and refuses
    the next listing (E11000, an ``OperationFailure``). The sync did its work: its report
    says so, the checkpoint is not saved (with the reason), never "MongoDB unreachable"."""
    checkpointed(data_dir, config, store)
    db[f"{LISTING_BUCKET}.files"].create_index("filename", unique=True)
    write_in_place(data_dir, RUN, {"run_id": "a", "status": "bbbb"})
    report, code = run_sync(config, store)
    assert code == 0 and report["parity"]["all_match"] and not used(report)
    assert not report["checkpoint"]["saved"] and "refused" in report["checkpoint"]["not_saved"]
