"""Ordering without mtime (issue 11): "newer" is the order of the sidecar's reads
(sidecar/clock.py), the version guard holds on every write path, and one writer
at a time holds the lease (sidecar/lease.py)."""

from __future__ import annotations

import json
import os
import socket
from datetime import datetime, timedelta, timezone

import pytest
from bson import ObjectId

from testkit.measure import wait_for
from sidecar.cli import main
from sidecar.clock import Clock
from sidecar.state import Op
from sidecar.lease import Lease, LeaseHeld
from sidecar.names import EPISODES, FILES, HUBS, META
from sidecar.restore import restore
from sidecar.sync import run_sync

pytestmark = pytest.mark.integration

OLD = 1_577_836_800  # 2020-01-01: an mtime from a prepared file, cp -p, rsync -a, tar x


def write(root, rel, obj, mtime=None) -> bytes:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.dumps(obj, indent=2).encode()
    path.write_bytes(data)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return data


def sha_of(db, config, rel):
    return (db[config.sidecar_files_collection].find_one({"_id": rel}) or {}).get("sha256")


# --- the clock --------------------------------------------------------------------------------


def test_clock_is_monotonic_when_the_wall_clock_steps_back():
    now = [1_000]
    clock = Clock(now=lambda: now[0])
    assert clock.tick() == 1_000
    now[0] = 10  # a clock step back
    assert clock.tick() == 1_001
    clock.observe(5_000)  # a version MongoDB already holds (another run, before a restart)
    assert clock.tick() == 5_001
    clock.observe(True)  # foreign types are ignored
    assert clock.tick() == 5_002


# --- newer content with an older mtime ----------------------------------------------------------------


def test_newer_content_with_an_older_mtime_is_mirrored_at_reconcile(data_dir, config, store, db, tmp_path):
    write(data_dir, "runs/run_a.json", {"v": 1})
    run_sync(config, store)
    newer = write(data_dir, "runs/run_a.json", {"v": 2}, mtime=OLD)
    report, code = run_sync(config, store)
    assert code == 0 and report["writes"]["files_upserted"] == 1 and report["writes"]["stale_refused"] == 0
    restore(store, tmp_path / "out")
    assert (tmp_path / "out" / "runs" / "run_a.json").read_bytes() == newer


def test_a_sync_after_a_clock_step_back_still_wins(data_dir, config, store, db, monkeypatch):
    write(data_dir, "structured_hubs/soft_identity.json", {"a": 1})
    run_sync(config, store)
    import sidecar.clock

    monkeypatch.setattr(sidecar.clock.time, "time_ns", lambda: 10)  # the host's clock went back
    write(data_dir, "structured_hubs/soft_identity.json", {"a": 2})
    report, code = run_sync(config, store)
    assert code == 0 and report["writes"]["hubs_upserted"] == 1
    assert db.memory_hubs.find_one({"item_key": "a"})["payload"] == 2


def test_newer_content_with_an_older_mtime_is_mirrored_by_the_watcher(data_dir, running, config):
    write(data_dir, "runs/run_a.json", {"v": 1})
    d = running()
    db = d.daemon.store.db
    newer = write(data_dir, "runs/run_a.json", {"v": 2}, mtime=OLD)
    wait_for(lambda: sha_of(db, config, "runs/run_a.json") == __import__("hashlib").sha256(newer).hexdigest(),
             10, what="the newer content with the older mtime to be mirrored")
    # A prepared file moved over a hub (mv keeps its 2020 mtime).
    write(data_dir, "structured_hubs/learner_preferences.json", {"l1": {"s": 1}})
    wait_for(lambda: db.memory_hubs.find_one({"item_key": "l1"}), 10, what="the hub")
    prepared = data_dir.parent / "prepared.json"
    prepared.write_text(json.dumps({"l1": {"s": 2}}, indent=2))
    os.utime(prepared, (OLD, OLD))
    os.replace(prepared, data_dir / "structured_hubs" / "learner_preferences.json")
    wait_for(lambda: db.memory_hubs.find_one({"item_key": "l1"})["payload"] == {"s": 2}, 10,
             what="the moved-in hub")
    assert d.daemon.status.stale_refused == 0
    d.wait_parity()


# --- the guard on every write path -----------------------------------------------------------


def _hub_op(action, version, payload, pos=0):
    doc = {"_id": "soft_identity/k", "hub_type": "soft_identity", "item_key": "k", "learner_id": "k",
           "payload": payload, "updated_at": "x",
           "_sidecar": {"path": "structured_hubs/soft_identity.json", "hash": "h", "pos": pos,
                        "version": version, "source": "t"}}
    return Op(HUBS, action, "soft_identity/k", version, doc if action in ("insert", "update") else None,
              pos=pos, rel="structured_hubs/soft_identity.json")


def _episode_op(action, version, status):
    doc = {"_id": "r1", "run_id": "r1", "status": status,
           "_sidecar": {"path": "episodes/skeleton_r1.json", "hash": "h", "version": version, "source": "t",
                        "fields": ["run_id", "status"]}}
    return Op(EPISODES, action, "r1", version, doc if action in ("insert", "update") else None,
              rel="episodes/skeleton_r1.json")


def _file_op(action, version, content):
    doc = {"_id": "runs/run_x.json", "path": "runs/run_x.json", "kind": "run", "sha256": "s" * 64, "size": 1,
           "encoding": "json", "format": None, "content": content, "deleted_at": None,
           "_sidecar": {"hash": "s", "version": version, "source": "t"}}
    return Op(FILES, action, "runs/run_x.json", version, doc if action in ("insert", "update") else None,
              rel="runs/run_x.json")


@pytest.mark.parametrize("foreign_id", [False, True], ids=["own-id", "mentorix-objectid"])
def test_an_older_write_never_overwrites_a_newer_one_on_any_path(store, db, foreign_id):
    store.ensure_indexes()
    assert store.apply([_hub_op("insert", 200, "new")]).applied
    assert store.apply([_episode_op("insert", 200, "new")]).applied
    assert store.apply([_file_op("insert", 200, "new")]).applied
    if foreign_id:
        # The same entries as Mentorix's store holds them: its own _id, our newer metadata.
        for coll, key in ((db.memory_hubs, {"item_key": "k"}), (db.episodic_memory, {"run_id": "r1"})):
            doc = coll.find_one(key)
            coll.delete_one({"_id": doc["_id"]})
            coll.insert_one(dict(doc, _id=ObjectId()))
    # Each older write, by every route the store has: update (guarded upsert), insert
    # (collides, retried as a guarded update: whichever index the server names), setpos, delete.
    for make, value in ((_hub_op, "old"), (_episode_op, "old"), (_file_op, "old")):
        for action in ("update", "insert"):
            result = store.apply([make(action, 100, value)])
            assert result.stale and not result.applied, (make.__name__, action)
    assert store.apply([_hub_op("setpos", 100, None, pos=7)]).applied  # sent, matches nothing
    assert db.memory_hubs.find_one({"item_key": "k"})["_sidecar"]["pos"] == 0
    for op in (_hub_op("delete", 100, None), _episode_op("delete", 100, None), _file_op("delete", 100, None)):
        assert store.apply([op]).stale
    assert db.memory_hubs.find_one({"item_key": "k"})["payload"] == "new"
    assert db.episodic_memory.find_one({"run_id": "r1"})["status"] == "new"
    assert db.memory_files.find_one({"_id": "runs/run_x.json"})["content"] == "new"
    assert db.memory_hubs.count_documents({}) == db.episodic_memory.count_documents({}) == 1
    assert db.memory_tombstones.count_documents({}) == 0
    # A newer one passes on every route.
    assert store.apply([_hub_op("update", 300, "newer")]).applied
    assert store.apply([_episode_op("insert", 300, "newer")]).applied
    assert db.memory_hubs.find_one({"item_key": "k"})["payload"] == "newer"
    assert db.episodic_memory.find_one({"run_id": "r1"})["status"] == "newer"
    assert db.memory_hubs.count_documents({}) == db.episodic_memory.count_documents({}) == 1


# --- the single-writer lease ----------------------------------------------------------------------


def _foreign_lease(db, **kw):
    doc = {"_id": "writer_lease", "owner": "someone-else", "kind": "daemon", "host": "another-host",
           "pid": 4242, "expires_at": datetime.now(timezone.utc) + timedelta(seconds=60)}
    doc.update(kw)
    db[META].replace_one({"_id": "writer_lease"}, doc, upsert=True)


def test_sync_beside_a_live_writer_refuses_with_a_clear_message_and_exit_code(
        data_dir, config, store, db, mongo_url, db_name, capsys):
    write(data_dir, "runs/run_a.json", {"v": 1})
    _foreign_lease(db)
    with pytest.raises(LeaseHeld) as info:
        run_sync(config, store)
    assert "daemon on host another-host pid 4242" in str(info.value)
    assert db.memory_files.count_documents({}) == 0
    cli = ["--data-dir", str(data_dir), "--mongodb-url", mongo_url, "--db-name", db_name]
    assert main(cli + ["sync"]) == 4
    assert "another writer holds the MongoDB writer lease" in capsys.readouterr().err
    assert main(cli + ["sync", "--dry-run"]) == 1  # reads need no lease (and report what is missing)
    # Expired: taken over.
    _foreign_lease(db, expires_at=datetime.now(timezone.utc) - timedelta(seconds=1))
    assert run_sync(config, store)[1] == 0
    assert db[META].find_one({"_id": "writer_lease"}) is None  # released at the end


def test_a_dead_holder_on_this_host_is_taken_over_at_once(store, db, config):
    _foreign_lease(db, host=socket.gethostname(), pid=2**22 + 12345)  # no such process
    lease = Lease(store, "sync", 30)
    lease.acquire()
    assert db[META].find_one({"_id": "writer_lease"})["owner"] == lease.owner
    other = Lease(store, "sync", 30, host="elsewhere")
    with pytest.raises(LeaseHeld):
        other.acquire()
    lease.release()
    other.acquire()


def test_the_daemon_waits_for_the_lease_and_says_why(data_dir, running, db):
    _foreign_lease(db, kind="sync")
    d = running(wait_ready=False)
    r = wait_for(lambda: (lambda r: r if r.status == 503 and "lease" in r.json().get("reason", "") else None)(
        d.get("/readyz")), 10, what="the lease reason")
    assert "sync on host another-host" in r.json()["reason"]
    db[META].delete_one({"_id": "writer_lease"})
    wait_for(lambda: d.get("/readyz").status == 200, 15, what="ready once the lease is free")
    assert db[META].find_one({"_id": "writer_lease"})["kind"] == "daemon"


def test_a_daemon_whose_lease_is_taken_stops_writing_and_resumes_with_a_reconcile(data_dir, running, db):
    d = running(sidecar_lease_ttl_s=1.0)
    # Another writer takes the lease over (as after an expiry the daemon did not see).
    _foreign_lease(db, kind="sync", expires_at=datetime.now(timezone.utc) + timedelta(seconds=120))
    wait_for(lambda: "lease" in d.get("/readyz").json().get("reason", ""), 10, what="the daemon to notice")
    write(data_dir, "runs/run_during.json", {"v": 1})
    wait_for(lambda: d.daemon.status.lease_problem and len(d.daemon.pending) >= 1, 10,
             what="the write to wait in pending")
    assert db.memory_files.find_one({"_id": "runs/run_during.json"}) is None
    db[META].delete_one({"_id": "writer_lease"})
    wait_for(lambda: db.memory_files.find_one({"_id": "runs/run_during.json"}), 15,
             what="the write mirrored once the lease is back")
    wait_for(lambda: d.get("/readyz").status == 200, 10, what="ready again")
