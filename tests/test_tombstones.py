"""Nothing is hard-deleted (DESIGN §5): whatever leaves the live collections is
first copied to ``memory_tombstones`` (TTL ``SIDECAR_TOMBSTONE_DAYS``), and
``restore --include-deleted`` / ``--as-of`` bring it back byte-identically.

Everything runs the real pipeline (sync, ``Reconciler.scan``, ``deletion_ops``,
``Store.apply``) against the test server."""

from __future__ import annotations

import hashlib
import json
import os
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from bson import ObjectId
from pydantic import ValidationError

from sidecar.cli import main
from sidecar.config import Config
from sidecar.diff import deletion_ops
from sidecar.state import Op, build_state
from sidecar.model import INLINE_MAX_BYTES
from sidecar.names import FILES, HUBS, TOMBSTONES
from sidecar.reconcile import Reconciler
from sidecar.restore import restore
from sidecar.store import MongoUnavailable, Store
from sidecar.sync import run_divergences, run_sync

pytestmark = pytest.mark.integration

HUB = "structured_hubs/soft_identity.json"
EPISODE = "episodes/skeleton_r1.json"
RUN = "runs/run_r1.json"
NOTES = "notes/plain.txt"
BIG = "exports/big.bin"
MS = timedelta(milliseconds=1)


def tree(root: Path) -> dict[str, str]:
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and not path.is_symlink() and not rel.startswith("reports/"):
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def synced(config, store) -> dict:
    """Sync; the removals these tests make on purpose are then accepted, as an
    operator would (the deletion model holds what a one-shot sync did not see happen)."""
    report, code = run_sync(config, store)
    if report["divergences"]["count"]:
        accepted, acode = run_divergences(config, store, accept_all=True)
        assert acode == 0, accepted
        for name, n in accepted["writes"].items():
            report["writes"][name] += n
        code = run_sync(config, store)[1]
    assert code == 0, (report["bad_input"], report["parity"])
    return report


def scan_with_removals(config, state) -> list:
    """What a sync plus an accept of every held removal would write."""
    rec = Reconciler(config)
    ops, _ = rec.scan(state, "sync")
    for div in rec.drain()[0]:
        ops.extend(rec.accept_ops(div, state) or [])
    return ops


def write(root: Path, rel: str, data: bytes | str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())


def tombstones(db, **query) -> list[dict]:
    return list(db[TOMBSTONES].find(query))


@pytest.fixture
def files_data(legacy_dir) -> Path:
    """The sample files plus one file of every other sort restore must rebuild."""
    write(legacy_dir, EPISODE, json.dumps({"run_id": "r1", "query": "fractions", "status": "completed",
                                           "updated_at": "2026-02-21T05:00:00", "nodes": [{"id": "n0"}],
                                           "edges": []}, indent=2))
    write(legacy_dir, RUN, json.dumps({"run_id": "r1", "steps": [1, 2.5, None], "ok": True}, indent=2))
    write(legacy_dir, NOTES, "plain text\r\nno final newline")
    write(legacy_dir, BIG, os.urandom(INLINE_MAX_BYTES + 4096))
    return legacy_dir


def remove_key(root: Path, rel: str, index: int) -> tuple[str, bytes]:
    """Rewrite a hub file without one of its keys, the way the legacy writer writes."""
    path = root / rel
    before = path.read_bytes()
    data = json.loads(before)
    key = list(data)[index]
    del data[key]
    path.write_text(json.dumps(data, indent=2))
    return key, before


# --- hub entries --------------------------------------------------------------------------


def test_a_removed_hub_key_is_tombstoned_and_restored_byte_identical(legacy_dir, config, store, db, tmp_path):
    synced(config, store)
    original = tree(legacy_dir)
    key, _ = remove_key(legacy_dir, HUB, 1)  # a middle key
    doc_id = f"soft_identity/{key}"
    live_before = db.memory_hubs.find_one({"_id": doc_id})
    report = synced(config, store)
    assert report["writes"]["hubs_deleted"] == 1

    # Live readers (Mentorix reads the hubs with find({})) no longer see it.
    assert db.memory_hubs.find_one({"_id": doc_id}) is None
    assert key not in {d["item_key"] for d in db.memory_hubs.find({}, {"_id": 0, "hub_type": 1, "item_key": 1,
                                                                        "payload": 1})
                       if d["hub_type"] == "soft_identity"}
    [ts] = tombstones(db)
    assert isinstance(ts["_id"], ObjectId)
    assert ts["coll"] == "memory_hubs" and ts["doc_id"] == doc_id and ts["path"] == HUB
    assert ts["doc"] == live_before and ts["reason"] == "deleted"
    assert ts["deleted_at"].tzinfo is not None
    assert ts["expire_at"] - ts["deleted_at"] == timedelta(days=30)
    ttl = db[TOMBSTONES].index_information()["ix_tombstones_expire_at_ttl"]
    assert ttl["key"] == [("expire_at", 1)] and ttl["expireAfterSeconds"] == 0

    # Plain restore: what exists now. With the tombstones: the file before the key went.
    now_dir = tmp_path / "now"
    restore(store, now_dir)
    assert tree(now_dir) == tree(legacy_dir)
    back = tmp_path / "with-deleted"
    result = restore(store, back, include_deleted=True)
    assert not result.skipped
    assert tree(back) == original
    # as_of: just before the removal, the key was there; at the removal, it was gone.
    before = tmp_path / "before"
    restore(store, before, as_of=ts["deleted_at"] - MS)
    assert tree(before) == original
    after = tmp_path / "after"
    restore(store, after, as_of=ts["deleted_at"])
    assert tree(after) == tree(legacy_dir)


def test_a_key_that_came_back_is_restored_from_the_live_document(legacy_dir, config, store, db, tmp_path):
    synced(config, store)
    key, original_bytes = remove_key(legacy_dir, HUB, 0)
    synced(config, store)
    data = json.loads((legacy_dir / HUB).read_text())
    (legacy_dir / HUB).write_text(json.dumps({key: {"back": True}, **data}, indent=2))
    synced(config, store)
    out = tmp_path / "out"
    restore(store, out, include_deleted=True)
    assert tree(out) == tree(legacy_dir)  # live wins over the tombstone
    [ts] = tombstones(db)
    old = tmp_path / "old"
    restore(store, old, as_of=ts["deleted_at"] - MS)
    # What the tombstones can say: the removed version of the key; nothing else was removed.
    assert (old / HUB).read_bytes() == original_bytes


# --- files: episode, generic JSON, bytes, GridFS, a whole hub file ----------------------------


def test_deleted_files_are_tombstoned_and_restored_byte_identical(files_data, config, store, db, tmp_path):
    synced(config, store)
    original = tree(files_data)
    files = config.sidecar_files_collection
    gone = [HUB, EPISODE, RUN, NOTES, BIG]
    live_before = {rel: db[files].find_one({"_id": rel}) for rel in gone}
    episode_before = db.episodic_memory.find_one({"run_id": "r1"})
    hub_keys = list(json.loads((files_data / HUB).read_text()))
    big_blob = live_before[BIG]["blob_id"]
    state = build_state(store.iter_state())
    ops = []
    for rel in gone:
        ops += deletion_ops(rel, state, propagate=True, version=time.time_ns())
        (files_data / rel).unlink()
    result = store.apply(ops)
    state.apply(result)
    assert not result.stale and not result.failed and len(result.applied) == len(ops)

    assert db[files].count_documents({"_id": {"$in": gone}}) == 0
    assert db.episodic_memory.find_one({"run_id": "r1"}) is None
    assert db.memory_hubs.count_documents({"hub_type": "soft_identity"}) == 0
    for rel in gone:
        [ts] = tombstones(db, coll=files, doc_id=rel)
        assert ts["doc"] == live_before[rel] and ts["path"] == rel and ts["reason"] == "deleted"
        assert ts["expire_at"] - ts["deleted_at"] == timedelta(days=30)
    [ep] = tombstones(db, coll="episodic_memory")
    assert ep["doc_id"] == "r1" and ep["doc"] == episode_before and ep["path"] == EPISODE
    assert {t["doc"]["item_key"] for t in tombstones(db, coll="memory_hubs")} == set(hub_keys)
    # The GridFS blob stays (gc_blobs frees it once its tombstones expire) and has its own tombstone.
    [blob_ts] = tombstones(db, coll=f"{files}_blobs")
    assert blob_ts["doc_id"] == big_blob and blob_ts["doc"] == live_before[BIG] and blob_ts["reason"] == "deleted"
    assert store.blob_sha256(big_blob) == live_before[BIG]["sha256"]
    assert store.gc_blobs(grace=timedelta(0)) == 0

    plain = tmp_path / "plain"
    restore(store, plain)
    assert tree(plain) == tree(files_data) and not set(gone) & set(tree(plain))
    back = tmp_path / "back"
    result = restore(store, back, include_deleted=True)
    assert not result.skipped
    assert tree(back) == original
    deleted_at = min(t["deleted_at"] for t in tombstones(db))
    before = tmp_path / "before"
    restore(store, before, as_of=deleted_at - MS)
    assert tree(before) == original
    after = tmp_path / "after"
    restore(store, after, as_of=max(t["deleted_at"] for t in tombstones(db)))
    assert tree(after) == tree(files_data)


def test_every_hub_entry_of_a_deleted_hub_file_is_tombstoned(legacy_dir, config, store, db):
    synced(config, store)
    keys = list(json.loads((legacy_dir / HUB).read_text()))
    state = build_state(store.iter_state())
    state.apply(store.apply(deletion_ops(HUB, state, propagate=True, version=time.time_ns())))
    assert {t["doc"]["item_key"] for t in tombstones(db, coll="memory_hubs")} == set(keys)
    assert all(t["path"] == HUB for t in tombstones(db, coll="memory_hubs"))


# --- GridFS blobs: replaced, never deleted in the write path; gc_blobs ----------------------------


def test_a_replaced_blob_is_kept_tombstoned_and_restorable_as_of(legacy_dir, config, store, db, tmp_path):
    files = config.sidecar_files_collection
    v1 = os.urandom(INLINE_MAX_BYTES + 1)
    write(legacy_dir, BIG, v1)
    synced(config, store)
    old_manifest = db[files].find_one({"_id": BIG})
    v2 = os.urandom(INLINE_MAX_BYTES + 2)
    write(legacy_dir, BIG, v2)
    synced(config, store)
    new_blob = db[files].find_one({"_id": BIG})["blob_id"]
    assert new_blob != old_manifest["blob_id"]
    assert store.blob_sha256(old_manifest["blob_id"]) == hashlib.sha256(v1).hexdigest()  # not deleted
    [ts] = tombstones(db)
    assert ts["coll"] == f"{files}_blobs" and ts["doc_id"] == old_manifest["blob_id"]
    assert ts["reason"] == "blob_replaced" and ts["doc"] == old_manifest and ts["path"] == BIG

    now_dir = tmp_path / "now"
    restore(store, now_dir)
    assert (now_dir / BIG).read_bytes() == v2
    then = tmp_path / "then"
    restore(store, then, as_of=ts["deleted_at"] - MS)
    assert (then / BIG).read_bytes() == v1
    assert tree(then) == {**tree(legacy_dir), BIG: hashlib.sha256(v1).hexdigest()}


def _backdate(db, files: str, blob_id, hours: float = 2) -> None:
    db[f"{files}_blobs.files"].update_one(
        {"_id": blob_id}, {"$set": {"uploadDate": datetime.now(timezone.utc) - timedelta(hours=hours)}})


def test_gc_blobs_keeps_referenced_blobs_and_deletes_orphans(legacy_dir, config, store, db):
    files = config.sidecar_files_collection
    write(legacy_dir, BIG, os.urandom(INLINE_MAX_BYTES + 1))
    synced(config, store)
    old_blob = db[files].find_one({"_id": BIG})["blob_id"]
    write(legacy_dir, BIG, os.urandom(INLINE_MAX_BYTES + 2))
    synced(config, store)
    live_blob = db[files].find_one({"_id": BIG})["blob_id"]
    store.bucket.upload_from_stream_with_id("orphan-old", "orphan", b"x" * 10, metadata={"sha256": "0" * 64})
    store.bucket.upload_from_stream_with_id("orphan-new", "orphan", b"y" * 10, metadata={"sha256": "1" * 64})
    for blob_id in (old_blob, live_blob, "orphan-old"):
        _backdate(db, files, blob_id)

    assert store.gc_blobs() == 1  # the backdated orphan; the fresh one is within the grace period
    blob_ids = {d["_id"] for d in db[f"{files}_blobs.files"].find({}, {"_id": 1})}
    assert blob_ids == {old_blob, live_blob, "orphan-new"}
    assert db[f"{files}_blobs.chunks"].count_documents({"files_id": "orphan-old"}) == 0
    # The tombstone expires (TTL): the replaced blob is freed, the live one stays.
    db[TOMBSTONES].delete_many({"coll": f"{files}_blobs"})
    assert store.gc_blobs(grace=timedelta(0)) == 2  # old_blob and orphan-new
    assert {d["_id"] for d in db[f"{files}_blobs.files"].find({}, {"_id": 1})} == {live_blob}
    assert store.read_blob(live_blob) == (legacy_dir / BIG).read_bytes()
    # sync runs it (with the grace period) and reports it
    report = synced(config, store)
    assert report["blobs_collected"] == 0


def test_a_reused_blob_is_claimed_again_so_gc_leaves_it(legacy_dir, config, store, db):
    files = config.sidecar_files_collection
    v1 = os.urandom(INLINE_MAX_BYTES + 1)
    write(legacy_dir, BIG, v1)
    synced(config, store)
    blob_v1 = db[files].find_one({"_id": BIG})["blob_id"]
    write(legacy_dir, BIG, os.urandom(INLINE_MAX_BYTES + 1))
    synced(config, store)
    _backdate(db, files, blob_v1)
    write(legacy_dir, BIG, v1)  # the old content again: its blob is reused, not uploaded twice
    synced(config, store)
    assert db[files].find_one({"_id": BIG})["blob_id"] == blob_v1
    meta = db[f"{files}_blobs.files"].find_one({"_id": blob_v1})
    assert meta["metadata"]["claimed_at"] > meta["uploadDate"]
    db[TOMBSTONES].delete_many({})
    store.gc_blobs()  # the other version (fresh) stays by grace, v1 by its manifest
    assert store.read_blob(blob_v1) == v1


# --- refused deletes, outages ---------------------------------------------------------------------


def test_a_refused_stale_delete_leaves_no_tombstone(legacy_dir, config, store, db):
    synced(config, store)
    doc = db.memory_hubs.find_one({"hub_type": "soft_identity"})
    older = doc["_sidecar"]["version"] - 1
    op = Op(HUBS, "delete", doc["_id"], older, before=doc["_sidecar"]["hash"], rel=HUB)
    state = build_state(store.iter_state())
    result = store.apply([op])
    state.apply(result)
    assert result.stale == [op] and not result.applied
    assert db.memory_hubs.find_one({"_id": doc["_id"]}) == doc
    assert tombstones(db) == []
    assert doc["item_key"] in state.hubs["soft_identity"]  # the state still knows it


def test_a_delete_refused_because_the_document_changed_meanwhile_drops_its_tombstone(
        legacy_dir, config, store, db, monkeypatch):
    synced(config, store)
    key, _ = remove_key(legacy_dir, HUB, 0)
    doc_id = f"soft_identity/{key}"
    state = build_state(store.iter_state())
    ops = scan_with_removals(config, state)
    real = store.tombstones.write

    def then_mentorix_writes(removals, result):
        out = real(removals, result)
        assert len(tombstones(db)) == 1  # written before the delete
        # Mentorix's own store updates the entry between our read and our delete.
        db.memory_hubs.update_one({"_id": doc_id}, {"$set": {"payload": {"newer": 1},
                                                             "updated_at": "2099-01-01T00:00:00+00:00"}})
        return out
    monkeypatch.setattr(store.tombstones, "write", then_mentorix_writes)
    result = store.apply(ops)
    state.apply(result)
    assert [op.id for op in result.stale] == [doc_id]
    assert db.memory_hubs.find_one({"_id": doc_id})["payload"] == {"newer": 1}  # not removed
    assert tombstones(db) == []  # no tombstone claims a deletion that did not happen


def _fail_deletes(db, on: bool) -> None:
    db.client.admin.command("configureFailPoint", "failCommand", mode="alwaysOn" if on else "off",
                            data={"failCommands": ["delete"], "closeConnection": True})


def test_mongo_gone_between_tombstone_and_delete_keeps_the_doc_and_a_retry_makes_one_tombstone(
        files_data, config, store, db, mongo_server):
    if mongo_server.external:
        pytest.skip("failpoints need the test server")
    synced(config, store)
    files = config.sidecar_files_collection
    key, _ = remove_key(files_data, HUB, 2)
    doc_id = f"soft_identity/{key}"
    (files_data / RUN).unlink()

    def ops_now():
        state = build_state(store.iter_state())
        hub_ops = scan_with_removals(config, state)  # the hub edit (and RUN's removal, filtered out)
        hub_ops = [op for op in hub_ops if op.coll == HUBS]
        return state, hub_ops + deletion_ops(RUN, state, propagate=True, version=time.time_ns())

    state, ops = ops_now()
    assert {(op.coll, op.action) for op in ops} == {(HUBS, "delete"), (FILES, "delete")}
    _fail_deletes(db, True)
    try:
        for coll in (FILES, HUBS):  # one at a time: the first failure stops a whole apply
            with pytest.raises(MongoUnavailable):
                state.apply(store.apply([op for op in ops if op.coll == coll]))
    finally:
        _fail_deletes(db, False)
    # The tombstones landed, the deletes did not: the live documents are still there.
    assert db.memory_hubs.find_one({"_id": doc_id}) is not None
    assert db[files].find_one({"_id": RUN}) is not None
    assert len(tombstones(db)) == 2
    # The retry is a new diff (a file deletion's op has a new version): still one tombstone each.
    state, ops = ops_now()
    result = store.apply(ops)
    state.apply(result)
    assert len(result.applied) == 2 and not result.stale
    assert db.memory_hubs.find_one({"_id": doc_id}) is None and db[files].find_one({"_id": RUN}) is None
    assert len(tombstones(db, coll="memory_hubs", doc_id=doc_id)) == 1
    assert len(tombstones(db, coll=files, doc_id=RUN)) == 1
    # ...and a replay of the same ops once everything is gone changes nothing
    assert len(store.apply(ops).applied) == 2
    assert len(tombstones(db)) == 2


# --- documents written by others -------------------------------------------------------------------


def test_foreign_tombstones_are_skipped_and_reported_never_a_crash(legacy_dir, config, store, db, tmp_path):
    synced(config, store)
    files = config.sidecar_files_collection
    now = datetime.now(timezone.utc)
    planted = {
        "not-a-doc": {"coll": "memory_hubs", "doc_id": "x", "doc": "just a string", "deleted_at": now},
        "a-list": {"coll": "memory_hubs", "doc_id": "x", "doc": [{"hub_type": "a"}], "deleted_at": now},
        "no-time": {"coll": "memory_hubs", "doc_id": "x", "doc": {"hub_type": "h", "item_key": "k"}},
        "str-time": {"coll": files, "doc": {"_id": "x.json"}, "deleted_at": "2026-01-01"},
        "no-key": {"coll": "memory_hubs", "doc": {"hub_type": "h"}, "deleted_at": now},
        "no-payload": {"coll": "memory_hubs", "doc": {"hub_type": "soft_identity", "item_key": "ghost"},
                       "deleted_at": now},
        "int-run": {"coll": "episodic_memory", "doc": {"run_id": 7}, "deleted_at": now},
        "escape": {"coll": files, "doc": {"_id": "../../escape.txt", "kind": "other", "encoding": "bytes",
                                          "raw": b"evil"}, "deleted_at": now},
        "no-blob": {"coll": files, "doc": {"_id": "lost.bin", "kind": "other", "encoding": "gridfs",
                                           "blob_id": "nowhere"}, "deleted_at": now},
        "no-content": {"coll": files, "doc": {"_id": "empty.json", "kind": "other", "encoding": "json"},
                       "deleted_at": now},
        "bad-format": {"coll": files, "doc": {"_id": "fmt.json", "kind": "other", "encoding": "json",
                                              "content": {"a": 1}, "format": "indent-2"}, "deleted_at": now},
        "elsewhere": {"coll": "someone_elses", "doc": {"_id": 1}, "deleted_at": now},
        "no-coll": {"doc": {"_id": 1}, "deleted_at": now},
    }
    db[TOMBSTONES].insert_many([dict(doc, _id=name) for name, doc in planted.items()])
    out = tmp_path / "a" / "out"
    result = restore(store, out, include_deleted=True)
    reported = {s.get("id"): s for s in result.skipped}
    expected_skips = set(planted) - {"bad-format"}  # a format that is not one: rendered in the default layout
    assert set(reported) == expected_skips
    assert reported["escape"]["path"] == "../../escape.txt" and "'..'" in reported["escape"]["reason"]
    assert reported["no-blob"]["path"] == "lost.bin" and "blob" in reported["no-blob"]["reason"]
    assert all(s["reason"] for s in result.skipped)
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "a" / "escape.txt").exists()
    restored = tree(out)
    assert (out / "fmt.json").read_bytes() == json.dumps({"a": 1}, indent=2).encode()
    restored.pop("fmt.json")
    assert restored == tree(legacy_dir)  # the real files are all there, untouched by the planted ones
    # gc_blobs and the index/TTL pass read them too, and survive them
    assert store.gc_blobs(grace=timedelta(0)) == 0
    store.ensure_indexes()
    # as_of reads the same documents and survives them too
    result = restore(store, tmp_path / "as-of", as_of=now - MS)
    assert "not-a-doc" in {s.get("id") for s in result.skipped}


# --- indexes, settings, CLI ---------------------------------------------------------------------------


def test_tombstone_indexes_are_idempotent_and_follow_the_days(make_config, legacy_dir, db):
    store = Store(make_config())
    try:
        first = store.ensure_indexes()
        assert store.ensure_indexes() == first
        got = {spec["name"]: spec for spec in db[TOMBSTONES].list_indexes()}
        assert list(got["ix_tombstones_expire_at_ttl"]["key"].items()) == [("expire_at", 1)]
        assert got["ix_tombstones_expire_at_ttl"]["expireAfterSeconds"] == 0
        assert list(got["ix_tombstones_coll_doc_id"]["key"].items()) == [("coll", 1), ("doc_id", 1)]
        assert list(got["ix_tombstones_deleted_at_desc"]["key"].items()) == [("deleted_at", -1)]
        synced(make_config(), store)
        remove_key(legacy_dir, HUB, 0)
        synced(make_config(), store)
    finally:
        store.close()
    [ts] = tombstones(db)
    assert ts["expire_at"] - ts["deleted_at"] == timedelta(days=30)
    # A TTL index someone created with other options is corrected in place.
    db.command("collMod", TOMBSTONES, index={"name": "ix_tombstones_expire_at_ttl", "expireAfterSeconds": 60})
    store = Store(make_config(sidecar_tombstone_days=7))
    try:
        store.ensure_indexes()
    finally:
        store.close()
    assert db[TOMBSTONES].index_information()["ix_tombstones_expire_at_ttl"]["expireAfterSeconds"] == 0
    [ts] = tombstones(db)
    assert ts["expire_at"] - ts["deleted_at"] == timedelta(days=7) and ts["days"] == 7


def test_tombstone_days_setting(monkeypatch):
    assert Config().sidecar_tombstone_days == 30
    monkeypatch.setenv("SIDECAR_TOMBSTONE_DAYS", "90")
    assert Config().sidecar_tombstone_days == 90
    with pytest.raises(ValidationError):
        Config(sidecar_tombstone_days=0)


def test_cli_restore_as_of_and_include_deleted(legacy_dir, config, store, db, tmp_path, mongo_url, db_name,
                                               capsys):
    args = ["--data-dir", str(legacy_dir), "--mongodb-url", mongo_url, "--db-name", db_name, "restore"]
    synced(config, store)
    original = tree(legacy_dir)
    remove_key(legacy_dir, HUB, 0)
    synced(config, store)
    [ts] = tombstones(db)
    naive_before = (ts["deleted_at"] - MS).astimezone(timezone.utc).replace(tzinfo=None).isoformat()
    assert main(args + ["--out", str(tmp_path / "a"), "--as-of", naive_before]) == 0  # naive = UTC
    assert tree(tmp_path / "a") == original
    assert main(args + ["--out", str(tmp_path / "b"), "--as-of", ts["deleted_at"].isoformat()]) == 0
    assert tree(tmp_path / "b") == tree(legacy_dir)
    assert main(args + ["--out", str(tmp_path / "c"), "--include-deleted"]) == 0
    assert tree(tmp_path / "c") == original
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(args + ["--out", str(tmp_path / "d"), "--as-of", "yesterday-ish"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--as-of" in err and "ISO 8601" in err
    assert not (tmp_path / "d").exists()
