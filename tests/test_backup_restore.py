"""MongoDB restored from an older dump while the files are newer (issue 15 point 2).

What `mongodump` / `mongorestore --drop` do is modelled with pymongo: every collection of the
database (the sidecar's, GridFS's `memory_files_blobs.files`/`.chunks`, `memory_sidecar_meta`) is
exported as raw BSON with its index specs; "restoring" drops every collection and re-creates it
from that export, indexes included. Then the sidecar must bring MongoDB forward to the newer files
and lose nothing:

- file mode, daemon restarted after the restore: its start-up reconcile re-mirrors every newer file;
- restore while the daemon runs: it does not notice by itself (nothing went down), so the runbook
  says to POST /reconcile (or restart it); that path is tested, in both modes;
- mongo mode, restarted: the newer files are kept and mirrored; what the older dump still holds and
  the files no longer do (a hub key removed, a file deleted after the dump) comes back into the
  files: the deletion is undone, nothing newer is destroyed.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pymongo
import pytest
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument

from mentorix_double import MongoMemoryStore
from testkit.measure import wait_for
from testkit.corpus import LegacyWriter, write_json
from sidecar import incarnation
from sidecar.model import INLINE_MAX_BYTES
from sidecar.restore import restore

pytestmark = pytest.mark.integration

RAW = CodecOptions(document_class=RawBSONDocument)
PREFS = Path("structured_hubs") / "learner_preferences.json"
BIG = Path("exports") / "attachments.bin"  # over INLINE_MAX_BYTES: its content lives in GridFS


# --------------------------------------------------------------------------- mongodump / mongorestore
def dump(db) -> dict[str, dict]:
    """`mongodump --db`: every collection's documents (raw BSON) and index specs."""
    out = {}
    for name in db.list_collection_names():
        coll = db.get_collection(name, codec_options=RAW)
        indexes = [{k: v for k, v in spec.items() if k not in ("v", "ns")}
                   for spec in db[name].list_indexes() if spec["name"] != "_id_"]
        out[name] = {"docs": list(coll.find({})), "indexes": indexes}
    assert out, "nothing to dump"
    return out


def restore_dump(db, snapshot: dict[str, dict], pause: float = 0.0) -> None:
    """`mongorestore --drop`: collections created since the dump are dropped too (a restore
    into a fresh database has none of them). ``pause``: the time a large restore takes
    between its steps (the restore's own pace, not synchronisation)."""
    for name in db.list_collection_names():
        db.drop_collection(name)
    for name, part in snapshot.items():
        time.sleep(pause)
        try:
            db.create_collection(name)
        except pymongo.errors.CollectionInvalid:
            pass  # a running daemon's write re-created it between the drop and here: it exists
        time.sleep(pause)
        if part["indexes"]:
            db.command({"createIndexes": name, "indexes": part["indexes"]})
        if part["docs"]:
            db.get_collection(name, codec_options=RAW).insert_many(part["docs"], ordered=True)


def _counts(db) -> dict[str, int]:
    return {name: db[name].count_documents({}) for name in db.list_collection_names()}


# --------------------------------------------------------------------------- the data
def _disk(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.relative_to(root).parts[0] != "reports"}


def _restore_offline(d, db, snapshot, running, check=None, **config):
    """The runbook's order: stop the sidecar, restore the dump, start it again."""
    d.stop()
    d._stop = None  # stopped here: the fixture's teardown must not stop it again
    restore_dump(db, snapshot)
    if check is not None:
        check()
    return running(**config)


def _seed(root: Path) -> LegacyWriter:
    """The sample Mentorix data plus an episode, a run, scheduled jobs and a GridFS-sized file."""
    w = LegacyWriter(root, seed=15)
    w.start()
    w.learner_signal("learner-old", 1)
    w.save_episode("run-old")
    w.save_episode("run-gone")
    w.save_run("ctx-old")
    w.save_jobs(3)
    (root / BIG).parent.mkdir(parents=True, exist_ok=True)
    (root / BIG).write_bytes(b"v1" + os.urandom(INLINE_MAX_BYTES))
    return w


def _newer_writes(root: Path, w: LegacyWriter) -> dict:
    """What the API writes after the dump: changed and new hub entries, new episodes, changed files."""
    before = json.loads((root / PREFS).read_text())
    w.learner_signal("learner-old", 2)             # an entry that exists in the dump, changed
    w.learner_signal("learner-new", 1)             # entries the dump does not have
    new_runs = [w.save_episode("run-new-1"), w.save_episode("run-new-2")]
    write_json(root / "episodes" / "skeleton_run-old.json",   # a changed episode
               {**json.loads((root / "episodes" / "skeleton_run-old.json").read_text()), "status": "revised"})
    w.save_jobs(5)                                 # a changed generic file (content in memory_files)
    (root / BIG).write_bytes(b"v2" + os.urandom(INLINE_MAX_BYTES))  # a new GridFS blob
    after = json.loads((root / PREFS).read_text())
    assert after["learner-old"] != before["learner-old"]
    return {"new_runs": new_runs, "prefs": after}


def _wait_mirrored(d, root: Path, store, timeout: float = 60.0) -> None:
    """Parity through the daemon's /parity, and every file's bytes restorable from MongoDB."""
    d.wait_parity(timeout)
    _assert_mongo_holds(store, root)


def _assert_mongo_holds(store, root: Path) -> None:
    """MongoDB holds exactly the content of every file on disk: a restore of it gives the same bytes."""
    out = root.parent / f"restore-check-{os.urandom(4).hex()}"
    result = restore(store, out)
    assert not result.skipped, result.skipped
    got, want = _disk(out), _disk(root)
    assert set(got) == set(want), sorted(set(got) ^ set(want))
    assert [rel for rel in want if got[rel] != want[rel]] == []


def _assert_newer_content_in_mongo(db, newer: dict) -> None:
    prefs = {d["item_key"]: d["payload"] for d in db.memory_hubs.find({"hub_type": "learner_preferences"})}
    assert prefs["learner-old"] == newer["prefs"]["learner-old"]  # not the dump's older value
    assert prefs["learner-new"] == newer["prefs"]["learner-new"]
    runs = {d["run_id"]: d for d in db.episodic_memory.find({})}
    assert set(newer["new_runs"]) <= set(runs)
    assert runs["run-old"]["status"] == "revised"
    jobs = db.memory_files.find_one({"_id": "scheduled_jobs.json"})
    assert len(jobs["content"]) == 5


# --------------------------------------------------------------------------- file mode, restarted
def test_older_dump_restored_then_restart_remirrors_the_newer_files(running, legacy_dir, store, db):
    w = _seed(legacy_dir)
    d = running()
    _wait_mirrored(d, legacy_dir, store)
    snapshot = dump(db)
    assert {"memory_files_blobs.files", "memory_files_blobs.chunks", "memory_sidecar_meta"} <= set(snapshot)

    newer = _newer_writes(legacy_dir, w)
    _wait_mirrored(d, legacy_dir, store)
    on_disk = _disk(legacy_dir)

    def restored():  # the restore really took MongoDB back: the newer content is gone from it
        assert db.episodic_memory.count_documents({"run_id": {"$in": newer["new_runs"]}}) == 0
        assert db.memory_hubs.count_documents({"item_key": "learner-new"}) == 0
        assert len(db.memory_files.find_one({"_id": "scheduled_jobs.json"})["content"]) == 3
    d2 = _restore_offline(d, db, snapshot, running, check=restored)
    _wait_mirrored(d2, legacy_dir, store)
    _assert_newer_content_in_mongo(db, newer)
    assert _disk(legacy_dir) == on_disk  # file mode: the files were never touched
    assert not d2.get("/divergences").json()["items"]
    # the new blob is in GridFS again, and the old one is still there (nothing hard-deleted)
    assert db["memory_files_blobs.files"].count_documents({}) >= 2


# --------------------------------------------------------------------------- restored while running
@pytest.mark.parametrize("backend", ["file", "mongo"])
def test_older_dump_restored_while_running_is_noticed_and_remirrored(running, legacy_dir, store, db, backend):
    """A mongorestore --drop into the running server re-creates the collections: the
    daemon notices (their UUIDs changed) and compares every file again by itself."""
    w = _seed(legacy_dir)
    d = running(memory_store_backend=backend)
    _wait_mirrored(d, legacy_dir, store)
    snapshot = dump(db)
    newer = _newer_writes(legacy_dir, w)
    _wait_mirrored(d, legacy_dir, store)
    on_disk = _disk(legacy_dir)
    before = _counts(db)

    restore_dump(db, snapshot)
    assert _counts(db)["episodic_memory"] < before["episodic_memory"]  # MongoDB is the dump's again
    # No POST /reconcile, no restart: the daemon's own check finds the re-created collections.
    wait_for(lambda: d.daemon.status.error_counts.get("collections_replaced"), 20,
             what="the daemon to notice the restore")
    _wait_mirrored(d, legacy_dir, store)
    _assert_newer_content_in_mongo(db, newer)
    assert _disk(legacy_dir) == on_disk  # nothing on disk was regressed toward the dump
    assert not d.get("/divergences").json()["items"]
    # and it goes on mirroring as usual
    w.learner_signal("learner-after", 1)
    wait_for(lambda: db.memory_hubs.find_one({"item_key": "learner-after"}), 20, what="a write after it")
    _wait_mirrored(d, legacy_dir, store)


# --------------------------------------------------------------------------- mongo mode, restarted
def test_mongo_mode_older_dump_keeps_newer_files_and_brings_back_later_deletions(running, legacy_dir, store, db):
    """MongoDB is the truth in mongo mode, but only for what the files lack: the newer files win
    (their reads are newer versions); what the dump holds that the files no longer do comes back
    into them: an episode file deleted after the dump is restored (its deletion record is newer
    than the dump), an undone deletion, not a loss."""
    w = _seed(legacy_dir)
    d = running(memory_store_backend="mongo")
    _wait_mirrored(d, legacy_dir, store)
    snapshot = dump(db)

    newer = _newer_writes(legacy_dir, w)
    _wait_mirrored(d, legacy_dir, store)
    # a deletion after the dump, watched as it happens: recorded on the file's manifest
    # (in mongo mode a hub key removed from a file is healed back at once, so none is removed here)
    (legacy_dir / "episodes" / "skeleton_run-gone.json").unlink()
    wait_for(lambda: (db.memory_files.find_one({"_id": "episodes/skeleton_run-gone.json"}) or {}).get("deleted_at"),
             20, what="the file deletion to be recorded")
    _wait_mirrored(d, legacy_dir, store)
    on_disk = _disk(legacy_dir)
    d2 = _restore_offline(d, db, snapshot, running, memory_store_backend="mongo")
    _wait_mirrored(d2, legacy_dir, store)
    _assert_newer_content_in_mongo(db, newer)

    now = _disk(legacy_dir)
    # every newer file's bytes survived; the one file deleted after the dump is back
    assert {rel: now[rel] for rel in on_disk} == on_disk
    assert set(now) - set(on_disk) == {"episodes/skeleton_run-gone.json"}
    assert db.episodic_memory.find_one({"run_id": "run-gone"})  # as in the dump


# --------------------------------------------------------------------------- file mode: deletions since the dump
def test_file_mode_deletions_after_the_dump_come_back_as_held_divergences(running, legacy_dir, store, db):
    """The dump predates a mirrored hub-key removal and a mirrored file deletion (their tombstone and
    deletion record are newer than the dump, so the restore drops them). The restarted daemon finds
    MongoDB holding data the files lack: held and reported, never written into the files (file mode)
    nor silently removed; accepting them again puts them into the tombstones."""
    _seed(legacy_dir)
    d = running(sidecar_propagate_file_deletes=True)
    _wait_mirrored(d, legacy_dir, store)
    snapshot = dump(db)

    prefs = json.loads((legacy_dir / PREFS).read_text())
    removed_key = next(k for k in prefs if k != "learner-old")
    del prefs[removed_key]
    write_json(legacy_dir / PREFS, prefs)  # in place: a watched removal, mirrored
    (legacy_dir / "episodes" / "skeleton_run-gone.json").unlink()
    wait_for(lambda: db.memory_hubs.count_documents({"hub_type": "learner_preferences",
                                                     "item_key": removed_key}) == 0,
             20, what="the hub key removal to be mirrored")
    wait_for(lambda: db.episodic_memory.count_documents({"run_id": "run-gone"}) == 0,
             20, what="the file deletion to be mirrored")
    _wait_mirrored(d, legacy_dir, store)
    on_disk = _disk(legacy_dir)

    def restored():
        assert db.memory_hubs.count_documents({"hub_type": "learner_preferences", "item_key": removed_key}) == 1
    d2 = _restore_offline(d, db, snapshot, running, check=restored, sidecar_propagate_file_deletes=True)
    items = {i["path"]: i for i in d2.get("/divergences").json()["items"]}
    assert set(items) == {str(PREFS), "episodes/skeleton_run-gone.json"}, items
    assert _disk(legacy_dir) == on_disk  # file mode: nothing written into the files

    r = d2.get("/divergences/accept", "POST", {"Authorization": "Bearer test-token-123"})
    assert r.status == 200, r.body
    _wait_mirrored(d2, legacy_dir, store)
    assert db.memory_hubs.count_documents({"hub_type": "learner_preferences", "item_key": removed_key}) == 0
    assert db.memory_tombstones.count_documents({"coll": "memory_hubs",
                                                 "doc_id": f"learner_preferences/{removed_key}"}) == 1
    assert db.episodic_memory.count_documents({"run_id": "run-gone"}) == 0


# --------------------------------------------------------------------------- the window before the reconcile
@pytest.mark.parametrize("pause", [0.0, 0.3], ids=["fast", "still_running"])
def test_removal_right_after_a_live_restore_never_tombstones_the_older_value_silently(
        running, legacy_dir, store, db, pause):
    """A hub key removed right after a dump was restored into the running server: the
    removal either follows the re-mirror of the newer value (its tombstone holds v2) or,
    seen before the daemon noticed the restore, is held as a divergence (MongoDB keeps the
    dump's v1, shown for an operator to accept). Never a tombstone of v1 as if v1 were
    what the API removed. (v2 itself was only in the dropped database and the file the
    API rewrote: README step 9 says to stop the API around a restore.)

    still_running: the daemon notices the restore by its drops while it is still re-creating
    and filling one collection after another (a large dump takes minutes: here longer than
    the daemon's look every 2 s). Its full reconcile waits until MongoDB stops changing: it
    writes nothing into a half-restored database (the restore's own inserts would collide
    with it: DuplicateKeyError here) and its state then holds all the dump brought. (The CI
    caught the fast restore's version once: the look landed inside the restore.)"""
    w = _seed(legacy_dir)
    d = running()
    _wait_mirrored(d, legacy_dir, store)
    snapshot = dump(db)
    w.learner_signal("learner-old", 2)  # v2 of learner-old, mirrored
    _wait_mirrored(d, legacy_dir, store)
    v2 = json.loads((legacy_dir / PREFS).read_text())["learner-old"]

    restore_dump(db, snapshot, pause)  # MongoDB: learner-old at v1 again
    prefs = json.loads((legacy_dir / PREFS).read_text())
    del prefs["learner-old"]
    write_json(legacy_dir / PREFS, prefs)
    query = {"coll": "memory_hubs", "doc_id": "learner_preferences/learner-old"}

    def settled():
        held = [i for i in d.get("/divergences").json()["items"] if "learner-old" in json.dumps(i)]
        tomb = db.memory_tombstones.find_one(query)
        return ("held", held) if held else ("tombstoned", tomb) if tomb else None
    outcome, what = wait_for(settled, 30, 0.05, "the removal to be mirrored or held")
    if outcome == "tombstoned":
        assert what["doc"]["payload"] == v2
    else:
        hub = db.memory_hubs.find_one({"hub_type": "learner_preferences", "item_key": "learner-old"})
        assert hub is not None and db.memory_tombstones.find_one(query) is None
    assert d.daemon.status.error_counts.get("collections_replaced")


def test_a_writer_that_never_stops_beside_a_live_restore_does_not_keep_the_mirror_reconciling(
        running, legacy_dir, store, db, monkeypatch):
    """Mentorix's own store writing the same collections all the time (DESIGN §8): after a
    restore into the running server they never stop changing. The reconcile waits at most
    SETTLE_MAX_S (once per replacement), reloads at most RELOADS times, says so, and the
    mirror goes on watching: the suspicion ends, and a file written then is mirrored."""
    monkeypatch.setattr(incarnation, "SETTLE_MAX_S", 1.5)
    w = _seed(legacy_dir)
    d = running()
    _wait_mirrored(d, legacy_dir, store)
    snapshot = dump(db)
    mentorix, stop = MongoMemoryStore(db), threading.Event()

    def write():
        for i in range(20_000):  # bounded: it ends by itself (its pace is the other writer's)
            if stop.wait(0.02):
                return
            mentorix.set_hub("operating_context", f"mx-{i}", {"n": i})
    writer = threading.Thread(target=write, name="test-mentorix-store", daemon=True)
    restore_dump(db, snapshot)
    writer.start()
    try:
        inc = d.daemon.mirror.incarnation
        wait_for(lambda: d.daemon.status.error_counts.get("collections_still_changing"), 60, 0.05,
                 "the reconcile to stop waiting for a database that never stops changing")
        wait_for(lambda: not inc.suspect and not d.daemon.status.reconcile.running, 120, 0.05,
                 "the reconciles after the restore to end while the other writer still writes")
        assert writer.is_alive()
        run = w.save_episode("run-after")
        wait_for(lambda: db.episodic_memory.find_one({"run_id": run}), 30, 0.05, "the new episode mirrored")
        calls = d.daemon.status.timers.snapshot()["reconcile"]["calls"]
        assert calls <= 2 + incarnation.RELOADS + 1  # the start-up one, the restore's, its reloads (+1 racing)
    finally:
        stop.set()
        writer.join(10)


def _settling(running, legacy_dir, store, db, monkeypatch, **config):
    """A running daemon whose reconcile after a live restore is waiting for MongoDB to settle,
    and keeps waiting (QUIET_S never reached) until the test sets QUIET_S back."""
    monkeypatch.setattr(incarnation, "QUIET_S", 1e6)
    w = _seed(legacy_dir)
    d = running(**config)
    _wait_mirrored(d, legacy_dir, store)
    restore_dump(db, dump(db))
    inc = d.daemon.mirror.incarnation
    wait_for(lambda: inc.suspect and d.daemon.status.reconcile.running, 30, 0.05, "the settle after the restore")
    return w, d, inc


def test_a_stop_during_the_settle_after_a_live_restore_ends_it(running, legacy_dir, store, db, monkeypatch):
    """The reconcile after a restore seen in the running server waits for MongoDB to stop
    changing: a stop meanwhile ends the wait (and the daemon) at once, whatever is left of it."""
    monkeypatch.setattr(incarnation, "SETTLE_MAX_S", 1e6)  # never quiet: the wait is only ended by the stop
    _, d, _ = _settling(running, legacy_dir, store, db, monkeypatch)
    d.stop()
    assert not d.daemon.mirror._thread.is_alive()


def test_the_lease_taken_during_the_settle_after_a_live_restore_is_waited_for(
        running, legacy_dir, store, db, monkeypatch):
    """Another writer takes the lease while the reconcile after a restore waits for MongoDB to
    settle: the wait ends with the lease (not writing, said), and once the lease is free again
    the reconcile runs, settles and the mirror goes on."""
    from datetime import datetime, timedelta, timezone

    w, d, inc = _settling(running, legacy_dir, store, db, monkeypatch, sidecar_lease_ttl_s=1.5)
    status = d.daemon.status
    until = datetime.now(timezone.utc) + timedelta(hours=1)
    db.memory_sidecar_meta.update_one({"_id": "writer_lease"}, {"$set": {
        "owner": "someone-else", "kind": "sync", "host": "elsewhere", "pid": 1, "expires_at": until}}, upsert=True)
    wait_for(lambda: status.lease_problem, 30, 0.05, "the lease taken away to be seen during the settle")
    db.memory_sidecar_meta.delete_one({"_id": "writer_lease", "owner": "someone-else"})
    monkeypatch.setattr(incarnation, "QUIET_S", 0.5)
    wait_for(lambda: status.lease_problem is None and not inc.suspect and not status.reconcile.running,
             60, 0.05, "the reconcile after the restore to run once the lease is free")
    run = w.save_episode("run-after-lease")
    wait_for(lambda: db.episodic_memory.find_one({"run_id": run}), 30, 0.05, "the new episode mirrored")
    assert d.daemon.mirror._thread.is_alive()


def test_a_server_frozen_during_the_settle_after_a_live_restore_stalls_readyz(
        restartable_server, running, legacy_dir, store, db, monkeypatch):
    """The settle's looks at MongoDB are MongoDB calls of the writer like its writes: a server
    frozen (SIGSTOP) while the reconcile after a restore waits for it to settle shows on
    /readyz as a stalled write, as a frozen write does (the writer hangs in either)."""
    import signal

    _, d, inc = _settling(running, legacy_dir, store, db, monkeypatch, sidecar_write_stall_s=0.5)
    assert d.get("/readyz").status == 200
    pid = restartable_server.proc.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        def stalled():
            r = d.get("/readyz")
            return r.status == 503 and r.json()["reason"].startswith("mongodb write stalled for ")
        wait_for(stalled, 10, 0.05, "/readyz 503 while the settle's look hangs")
    finally:
        os.kill(pid, signal.SIGCONT)
        monkeypatch.setattr(incarnation, "QUIET_S", 0.5)
    wait_for(lambda: not inc.suspect and not d.daemon.status.reconcile.running, 60, 0.05, "the reconcile to end")
    wait_for(lambda: d.get("/readyz").status == 200, 30, 0.05, "/readyz back to 200")


def test_a_sync_frame_during_the_settle_after_a_live_restore_is_answered_at_once(
        running, legacy_dir, store, db, monkeypatch):
    """While the reconcile after a restore waits for MongoDB to settle (up to SETTLE_MAX_S),
    nothing is written: a sync writer (the shim, waiting on the API's write) is told "not
    durable" at once, as when a write is stalled, instead of being held until its timeout;
    the file is queued and mirrored once the reconcile has run."""
    import asyncio
    import hashlib

    from sidecar.shimserver import ShimEvent

    _, d, inc = _settling(running, legacy_dir, store, db, monkeypatch)
    body = b'{"run_id": "during-settle"}'
    rel = "runs/run_during_settle.json"
    (legacy_dir / rel).parent.mkdir(parents=True, exist_ok=True)
    (legacy_dir / rel).write_bytes(body)
    event = ShimEvent(op="write", path=rel, data=body, sha256=hashlib.sha256(body).hexdigest(),
                      mtime_ns=None, seq=1, pid=os.getpid(), ack=True)
    answer = asyncio.run_coroutine_threadsafe(d.daemon.on_shim(event), d._loop)
    try:
        wait_for(answer.done, 10, 0.05, "the sync frame answered while the settle waits")
        assert answer.result() == "not_durable"
        assert inc.suspect and d.daemon.status.reconcile.running  # still settling
    finally:
        monkeypatch.setattr(incarnation, "QUIET_S", 0.5)
    wait_for(lambda: db.memory_files.find_one({"_id": rel}), 60, 0.05, "the file mirrored after the settle")
