"""Attacks on the deletion model, the heal and the mongo-mode start (DESIGN §5,
README "Guarantees and their limits"). Each test is one attempt to make the
sidecar lose data only MongoDB had, hard-delete without a tombstone, mark
something deleted that was not a watched edit, let mongo mode overwrite or lose
an API write, or report ready before a mongo-mode restore finished.

Passing tests are attacks that failed. ``xfail(strict=True)`` tests pin real bugs.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from testkit.measure import wait_for
from testkit.corpus import LegacyWriter, generate
from testkit.daemon_fixtures import SignalWriter, reconcile_now
from testkit.process import DaemonProcess
from deletion_helpers import HUB, dump, keys_in_mongo, write_in_place
from sidecar.sync import run_sync

pytestmark = pytest.mark.integration

def replace_new_inode(root: Path, rel: str, obj) -> None:
    """A prepared file renamed over the path (temp name ignored: ``*.tmp``)."""
    path = root / rel
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(dump(obj))
    os.replace(tmp, path)


def keys_on_disk(root: Path, rel: str = HUB) -> set[str]:
    try:
        return set(json.loads((root / rel).read_text()))
    except (OSError, ValueError):
        return set()


def held(d) -> dict[str, dict]:
    return {i["path"]: i for i in d.get("/divergences").json()["items"]}


def entries(n: int, prefix: str = "l") -> dict:
    return {f"{prefix}{i}": {"score": i} for i in range(n)}


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file() and "reports" not in p.parts}


# --- a backup copied over a hub *in place* (cp keeps the inode) ----------------------------------


@pytest.mark.xfail(strict=True, reason="documented limit (README, deletion model): cp onto an existing hub "
                   "keeps the inode, an in-place edit to us; up to SIDECAR_MAX_REMOVALS keys are removed, tombstoned")
def test_cp_of_an_old_backup_onto_the_hub_is_held_file_mode(data_dir, running, tmp_path):
    write_in_place(data_dir, HUB, entries(5))
    backup = tmp_path / "backup.json"
    shutil.copyfile(data_dir / HUB, backup)
    d = running()
    db = d.daemon.store.db
    write_in_place(data_dir, HUB, entries(7))  # two learners added since the backup (watched)
    wait_for(lambda: len(keys_in_mongo(db)) == 7, 10, what="7 keys mirrored")
    ino = (data_dir / HUB).stat().st_ino
    shutil.copyfile(backup, data_dir / HUB)  # `cp backup.json learner_preferences.json`
    assert (data_dir / HUB).stat().st_ino == ino
    wait_for(lambda: held(d).get(HUB) or len(keys_in_mongo(db)) != 7, 10, what="the copy to be processed")
    assert keys_in_mongo(db) == set(entries(7)), "keys only MongoDB had were removed from the live collection"


def test_cp_of_an_old_backup_onto_the_hub_is_healed_mongo_mode(data_dir, running, tmp_path):
    write_in_place(data_dir, HUB, entries(5))
    backup = tmp_path / "backup.json"
    shutil.copyfile(data_dir / HUB, backup)
    d = running(memory_store_backend="mongo")
    db = d.daemon.store.db
    write_in_place(data_dir, HUB, entries(7))
    wait_for(lambda: len(keys_in_mongo(db)) == 7, 10, what="7 keys mirrored")
    shutil.copyfile(backup, data_dir / HUB)
    wait_for(lambda: keys_on_disk(data_dir) == set(entries(7)) or len(keys_in_mongo(db)) != 7, 10,
             what="heal or removal")
    assert keys_in_mongo(db) == set(entries(7))
    wait_for(lambda: keys_on_disk(data_dir) == set(entries(7)), 5, what="the file healed")


# --- the heal's compare-and-swap: a write into the old inode right after the rename -------------


def test_heal_a_write_into_the_old_inode_just_after_the_rename_is_kept(data_dir, running, monkeypatch):
    from sidecar import heal

    write_in_place(data_dir, HUB, entries(3))
    d = running(memory_store_backend="mongo")
    db = d.daemon.store.db
    real_swap = heal.Healer._swap
    done = {}

    def racing_swap(dir_fd, name, fd, st0, out):
        ok = real_swap(dir_fd, name, fd, st0, out)
        if ok and "late" not in done:
            # The API's write_text opened the path (the old inode) before the
            # rename; its bytes land now, before heal_hub fstat()s the old inode.
            done["late"] = True
            with open(f"/proc/self/fd/{fd}", "w") as late:
                late.write(json.dumps({"l0": {"score": 0}, "newcomer": {"score": 7}}, indent=2))
        return ok

    monkeypatch.setattr(heal.Healer, "_swap", staticmethod(racing_swap))
    replace_new_inode(data_dir, HUB, {"l0": {"score": 0}})  # a backup put over the hub: healed
    wait_for(lambda: "late" in done, 10, what="a heal")
    wait_for(lambda: "newcomer" in keys_on_disk(data_dir) and "newcomer" in keys_in_mongo(db),
             heal.HEAL_WATCH_S + 4, what="the API's late write to be merged back")


# --- a file re-created with the same inode number, read before the watcher's break ------------------


def test_recreated_same_inode_read_before_the_break_arrives_removes_nothing(make_config, store, data_dir):
    from sidecar.state import MirrorState
    from sidecar.mirror import Mirror
    from sidecar.pending import Pending
    from sidecar.status import Status

    write_in_place(data_dir, HUB, entries(4))
    config = make_config()
    mirror = Mirror(config, store, Status(), Pending(), MirrorState())
    db = store.db
    with mirror.lock:
        mirror.reconcile()
        write_in_place(data_dir, HUB, entries(6))  # the API's in-place edit, watched
        mirror._flush_paths({HUB: time.monotonic()})
    assert keys_in_mongo(db) == set(entries(6))
    ino = (data_dir / HUB).stat().st_ino
    # An operator: rm, then a new file with four of the keys. Its delete/create
    # events are still in the watcher's queue (not dispatched yet) when a read
    # that was already scheduled (the API's close event, a transient re-check,
    # a shim frame) happens.
    (data_dir / HUB).unlink()
    write_in_place(data_dir, HUB, entries(4))
    if (data_dir / HUB).stat().st_ino != ino:
        pytest.skip("this filesystem did not reuse the inode number")
    with mirror.lock:
        mirror._flush_paths({HUB: time.monotonic()})
    assert keys_in_mongo(db) == set(entries(6)), "a re-created file's missing keys were mirrored as deletions"


# --- the data dir replaced: is the new one watched as a lineage of its own? -------------------------


def test_a_watched_deletion_in_a_replaced_data_dir_is_mirrored(data_dir, running):
    write_in_place(data_dir, "runs/run_a.json", {"run_id": "a"})
    d = running()
    db = d.daemon.store.db
    before = d.daemon.status.last_reconcile_at
    os.rename(data_dir, data_dir.with_name("system.old"))
    data_dir.mkdir()  # a new directory: a new inode (the old one still exists)
    new_ino = data_dir.stat().st_ino
    wait_for(lambda: d.daemon.watcher.attached is not None and d.daemon.watcher.attached.ino == new_ino
             and d.daemon.status.last_reconcile_at != before and d.daemon.status.ready, 10,
             what="re-attached and reconciled")
    assert held(d)["runs/run_a.json"]["what"] == "file"  # the old dir's file: held, not deleted
    write_in_place(data_dir, "runs/run_b.json", {"run_id": "b"})
    wait_for(lambda: db.memory_files.find_one({"_id": "runs/run_b.json"}), 10, what="run_b mirrored")
    (data_dir / "runs" / "run_b.json").unlink()  # watched, alone, directory unchanged
    wait_for(lambda: (db.memory_files.find_one({"_id": "runs/run_b.json"}) or {}).get("deleted_at")
             or "runs/run_b.json" in held(d), 10, what="the deletion to settle")
    assert (db.memory_files.find_one({"_id": "runs/run_b.json"}) or {}).get("deleted_at"), held(d)


# --- hub entries written by someone else ------------------------------------------------------------


def test_a_foreign_hub_entry_removed_by_a_watched_edit_leaves_the_live_collection(data_dir, running, db):
    from bson import ObjectId

    db.memory_hubs.insert_one({"_id": ObjectId(), "hub_type": "learner_preferences", "item_key": "foreign",
                               "payload": {"score": 99}})
    data = entries(3)
    data["foreign"] = {"score": 99}
    write_in_place(data_dir, HUB, data)
    d = running()
    wait_for(lambda: len(keys_in_mongo(db)) == 4 and not d.daemon.pending.paths(), 10, what="mirrored")
    assert db.memory_hubs.count_documents({"item_key": "foreign"}) == 1
    del data["foreign"]
    write_in_place(data_dir, HUB, data)  # an operator removes it, in place: a watched edit
    wait_for(lambda: d.daemon.store.db.memory_events.find_one({"event_type": "hub_deleted"}), 10,
             what="the removal to be processed")
    assert held(d) == {}
    # Reported deleted: then it must be gone from the live collection, into a tombstone.
    assert db.memory_hubs.count_documents({"item_key": "foreign"}) == 0
    assert db.memory_tombstones.count_documents({"doc.item_key": "foreign"}) == 1


def test_foreign_hub_entries_missing_from_the_file_are_held_and_healed(data_dir, running, db):
    from bson import ObjectId

    write_in_place(data_dir, HUB, entries(2))
    db.memory_hubs.insert_one({"_id": ObjectId(), "hub_type": "learner_preferences", "item_key": "foreign",
                               "payload": {"score": 99}})
    d = running()
    assert held(d)[HUB]["keys"] == ["foreign"]
    assert db.memory_hubs.count_documents({"item_key": "foreign"}) == 1
    d.stop()
    d._stop = None  # stopped here: the fixture's teardown must not stop it again
    d2 = running(memory_store_backend="mongo")
    wait_for(lambda: "foreign" in keys_on_disk(data_dir), 10, what="the foreign entry healed into the file")
    assert json.loads((data_dir / HUB).read_text())["foreign"] == {"score": 99}
    assert held(d2) == {}


# --- SIDECAR_MAX_REMOVALS=0 ------------------------------------------------------------------------


def test_max_removals_zero_holds_every_removal(data_dir, running):
    write_in_place(data_dir, HUB, entries(3))
    write_in_place(data_dir, "runs/run_a.json", {"run_id": "a"})
    d = running(sidecar_max_removals=0)
    db = d.daemon.store.db
    write_in_place(data_dir, HUB, entries(2))
    (data_dir / "runs" / "run_a.json").unlink()
    wait_for(lambda: set(held(d)) == {HUB, "runs/run_a.json"}, 10, what="both held")
    assert held(d)[HUB]["reason"] == "mass_removal"
    assert keys_in_mongo(db) == set(entries(3))
    assert db.memory_files.count_documents({"deleted_at": {"$ne": None}}) == 0


# --- symlinks planted in the data dir ------------------------------------------------------------


def test_a_symlink_over_or_beside_a_hub_is_never_followed_nor_a_deletion(data_dir, running, tmp_path):
    write_in_place(data_dir, HUB, entries(4))
    d = running()
    db = d.daemon.store.db
    # Beside: a new "hub" that is a link to the real one.
    os.symlink("learner_preferences.json", data_dir / "structured_hubs" / "evil.json")
    # Over: the hub replaced by a link to a smaller copy outside the data dir.
    outside = tmp_path / "outside.json"
    outside.write_bytes(dump(entries(1)))
    link = data_dir / "structured_hubs" / "lp.tmp"
    os.symlink(outside, link)
    os.replace(link, data_dir / HUB)
    wait_for(lambda: d.get("/memory/status").json()["sidecar"].get("problems") or
             "symlink" in json.dumps(d.get("/memory/status").json()), 10, what="the symlink reported")
    reconcile_now(d)
    assert keys_in_mongo(db) == set(entries(4))
    assert db.memory_hubs.count_documents({"hub_type": "evil"}) == 0
    assert db.memory_files.count_documents({"deleted_at": {"$ne": None}}) == 0
    assert db.memory_events.count_documents({"event_type": "hub_deleted"}) == 0


# --- a hub renamed away and back -----------------------------------------------------------------


def test_a_hub_renamed_away_edited_and_back_is_held(data_dir, running, tmp_path):
    write_in_place(data_dir, HUB, entries(4))
    d = running()
    db = d.daemon.store.db
    away = tmp_path / "away.json"
    os.rename(data_dir / HUB, away)  # same inode, moved out of the data dir
    away.write_bytes(dump(entries(3)))  # edited in place while away
    os.rename(away, data_dir / HUB)  # the same inode comes back
    wait_for(lambda: held(d).get(HUB), 10, what="the missing key held")
    assert held(d)[HUB]["keys"] == ["l3"]
    write_in_place(data_dir, HUB, entries(3))  # a later in-place edit of the same inode
    reconcile_now(d)
    assert keys_in_mongo(db) == set(entries(4))
    assert db.memory_files.find_one({"_id": HUB})["deleted_at"] is None


# --- rm -rf of the whole data dir while running, both modes ---------------------------------------


def test_rm_rf_of_the_data_dir_file_mode_deletes_nothing(data_dir, running):
    generate(data_dir, learners=5, episodes=3, runs=2)
    d = running(sidecar_propagate_file_deletes=True)
    db = d.daemon.store.db
    hubs = db.memory_hubs.count_documents({})
    shutil.rmtree(data_dir)
    wait_for(lambda: d.get("/readyz").status == 503, 10, what="not ready: data dir missing")
    data_dir.mkdir()
    wait_for(lambda: d.get("/readyz").status == 200 and len(held(d)) == 10, 15, what="ready again, all held")
    assert db.memory_files.count_documents({"deleted_at": {"$ne": None}}) == 0
    assert db.memory_hubs.count_documents({}) == hubs
    assert db.episodic_memory.count_documents({}) == 3


def test_rm_rf_of_the_data_dir_mongo_mode_restores_everything(data_dir, running):
    generate(data_dir, learners=5, episodes=3, runs=2)
    original = tree(data_dir)
    d = running(memory_store_backend="mongo", sidecar_propagate_file_deletes=True)
    db = d.daemon.store.db
    shutil.rmtree(data_dir)
    data_dir.mkdir()
    wait_for(lambda: tree(data_dir) == original, 20, what="everything restored byte-identical")
    assert db.memory_files.count_documents({"deleted_at": {"$ne": None}}) == 0
    wait_for(lambda: held(d) == {}, 10, what="nothing held")
    d.wait_parity()


# --- the legacy writer's read-modify-write racing mongo-mode heals -----------------------------------


def test_legacy_writer_racing_repeated_heals_loses_nothing_mongo_had(data_dir, running):
    w0 = LegacyWriter(data_dir)
    w0.start()
    for i in range(5):
        w0.learner_signal(f"base-{i}", i)
    d = running(memory_store_backend="mongo")
    db = d.daemon.store.db
    writer = SignalWriter(data_dir, n=400, pace=0.002)
    writer.start()
    must_keep: set[str] = set()
    backup = {"base-0": db.memory_hubs.find_one({"hub_type": "learner_preferences", "item_key": "base-0"})["payload"]}
    try:
        for _ in range(6):  # a backup put over the hub, again and again, while the API writes
            must_keep |= keys_in_mongo(db)
            replace_new_inode(data_dir, HUB, backup)
            # Safety only: under load a busy writer can starve the heal's compare-and-swap
            # (it retries every 0.3 s and loses to each concurrent write), so wait for the
            # heal or for the writer to be done; the guarantees are asserted after.
            wait_for(lambda: must_keep <= keys_on_disk(data_dir) or not writer.is_alive(), 60,
                     what="the hub healed or the writer done")
    finally:
        writer.finish(stop=False)
    wait_for(lambda: must_keep <= keys_on_disk(data_dir), 15, what="the hub healed once the API is quiet")
    d.wait_parity(20)
    assert must_keep <= keys_in_mongo(db)
    assert keys_on_disk(data_dir) == keys_in_mongo(db)
    assert db.memory_events.count_documents({"event_type": "hub_deleted"}) == 0
    assert held(d) == {}


# --- mongo mode: the API first, writing all through the restore ---------------------------------


def test_api_writing_through_a_mongo_mode_restore_is_never_overwritten_and_ready_waits(
        data_dir, running, make_config, store, db):
    generate(data_dir, learners=20, episodes=600, runs=100)
    original = tree(data_dir)
    run_sync(make_config(), store)
    run_rel = next(r for r in original if r.startswith("runs/"))
    shutil.rmtree(data_dir)
    data_dir.mkdir()
    writer = SignalWriter(data_dir, n=300, pace=0.002, episode_every=25, prefix="api")
    writer.start()
    mine = dump({"run_id": "the-api-wrote-this"})
    (data_dir / "runs").mkdir(exist_ok=True)
    (data_dir / run_rel).write_bytes(mine)  # a file MongoDB also holds, written by the API first
    d = running(wait_ready=False, memory_store_backend="mongo")
    try:
        wait_for(lambda: d.daemon.status.ready, 60, 0.002, "ready")
        missing = [r for r in original if not (data_dir / r).exists()]
        assert missing == [], f"ready before the restore finished: {missing[:5]}"
    finally:
        writer.finish(stop=False)
    assert (data_dir / run_rel).read_bytes() == mine
    for rel, data in original.items():
        if rel != run_rel and not rel.startswith("structured_hubs/"):
            assert (data_dir / rel).read_bytes() == data, rel
    wait_for(lambda: keys_on_disk(data_dir) >= set(writer.learners) | set(json.loads(
        original[HUB])), 15, what="the hubs healed")
    d.wait_parity(30)
    assert db.memory_files.count_documents({"deleted_at": {"$ne": None}}) == 0
    assert db.memory_events.count_documents({"event_type": "hub_deleted"}) == 0


# --- kill -9 while heals run ------------------------------------------------------------------------


def test_kill_9_around_heals_loses_nothing_and_leaves_no_temp(tmp_path, data_dir, mongo_url, db_name, db):
    write_in_place(data_dir, HUB, entries(5))
    proc = DaemonProcess(tmp_path, data_dir, mongo_url, db_name, MEMORY_STORE_BACKEND="mongo")
    try:
        proc.start().wait_ready(60)
        wait_for(lambda: len(keys_in_mongo(db)) == 5, 10, what="mirrored")
        for i in range(3):  # bounded
            replace_new_inode(data_dir, HUB, {"l0": {"score": 0}, f"n{i}": {"score": i}})
            proc.kill()
            proc.start().wait_ready(60)
            want = set(entries(5)) | {f"n{j}" for j in range(i + 1)}
            wait_for(lambda: keys_on_disk(data_dir) == want and keys_in_mongo(db) == want, 15,
                     what="healed after the restart")
        proc.wait_parity(20)
    finally:
        proc.close()
    assert not list(data_dir.rglob(".sidecar-*"))
    assert db.memory_events.count_documents({"event_type": "hub_deleted"}) == 0


# --- a tombstone written, then MongoDB fails before the delete ------------------------------------


def test_tombstone_written_then_the_delete_fails_nothing_is_lost(data_dir, running, monkeypatch):
    from sidecar.store import MongoUnavailable

    write_in_place(data_dir, HUB, entries(4))
    d = running()
    db = d.daemon.store.db
    real = d.daemon.store.tombstones.send_deletes
    calls = {"n": 0}

    def dying(logical, removals, result):
        calls["n"] += 1
        if calls["n"] == 1:
            raise MongoUnavailable("simulated: MongoDB went away after the tombstones")
        return real(logical, removals, result)

    monkeypatch.setattr(d.daemon.store.tombstones, "send_deletes", dying)
    write_in_place(data_dir, HUB, entries(3))  # l3 removed in place: a watched edit
    wait_for(lambda: calls["n"] >= 1 and (("l3" not in keys_in_mongo(db)) or HUB in held(d)), 15,
             what="the retry")
    live = "l3" in keys_in_mongo(db)
    tomb = db.memory_tombstones.count_documents({"doc.item_key": "l3"})
    assert live or tomb == 1, "l3 neither live nor in a tombstone"
    if live:
        assert held(d)[HUB]["keys"] == ["l3"]  # not removed: then it is reported


# --- mongo mode start: a hub torn to 0 bytes (the API died inside write_text) ---------------------


def test_mongo_mode_start_with_a_torn_empty_hub_gets_its_entries_back(data_dir, running, make_config, store):
    write_in_place(data_dir, HUB, entries(5))
    run_sync(make_config(), store)
    (data_dir / HUB).write_bytes(b"")  # O_TRUNC done, the write never happened
    d = running(memory_store_backend="mongo")
    assert d.get("/readyz").status == 200
    assert keys_in_mongo(d.daemon.store.db) == set(entries(5))
    wait_for(lambda: keys_on_disk(data_dir) == set(entries(5)), 5, what="the hub's entries back on disk")
