"""The mirror state's compact form: hashes kept as 32-byte digests, read as hex.

Hashes travel as lowercase hex (plans, ops, ``_sidecar.hash`` and ``sha256`` in
MongoDB); the state keeps digests. These tests pin the boundary: whatever is
packed reads back as it was, a warm start from MongoDB finds nothing to write,
and parity (streamed from MongoDB or computed from a state) still matches, and
still sees a document changed behind the sidecar's back.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

from sidecar import parity
from sidecar.classify import Kind
from sidecar.diff import diff_plan
from sidecar.names import FILES
from sidecar.state import FileState, HubState, MirrorState, apply_to_state, build_state, pack_hash, unpack_hash
from sidecar.model import build_plan
from sidecar.reconcile import Reconciler
from sidecar.source import FileRead, sha256_hex
from sidecar.sync import run_sync

NOW = datetime(2026, 2, 21, 5, 29, 24, tzinfo=timezone.utc)
HEX = hashlib.sha256(b"x").hexdigest()
OTHER = hashlib.sha256(b"y").hexdigest()


# --- pure: the hex <-> digest boundary ----------------------------------------------------


def test_pack_hash_keeps_only_exact_lowercase_hex_as_a_digest():
    packed = pack_hash(HEX)
    assert type(packed) is bytes and len(packed) == 32 and unpack_hash(packed) == HEX
    # Values that would not round-trip (or are not digests at all) stay as they are,
    # so comparing them with a real hash stays unequal.
    for odd in (HEX.upper(), HEX[:-1], HEX[:-2] + "zz", " " + HEX[:-1], "h", "", None, 7):
        assert pack_hash(odd) is odd
        assert unpack_hash(pack_hash(odd)) is odd
    assert pack_hash(packed) is packed


def test_file_state_reads_hex_and_shares_an_equal_content_hash():
    fs = FileState(HEX, 5, "".join(["ep", "isode"]), doc_id="r1")
    assert fs.sha256 == HEX and type(fs._sha) is bytes
    assert fs.kind is Kind.EPISODE.value  # one shared str per kind
    gen = FileState(HEX, 1, "run", content_sha=HEX)
    assert gen.content_sha == HEX and gen._content is gen._sha
    gen.sha256 = OTHER  # a later edit's hash: the stored content's hash is unchanged
    assert (gen.sha256, gen.content_sha) == (OTHER, HEX)
    assert FileState(HEX, 1, "run", content_sha=OTHER).content_sha == OTHER
    assert FileState(None, None, "other").sha256 is None
    assert FileState(HEX, 1, "run") == FileState(pack_hash(HEX), 1, "run")
    assert FileState(HEX, 1, "run") != FileState(OTHER, 1, "run")
    assert HubState(HEX, 0, 1) == HubState(pack_hash(HEX), 0, 1) and HubState(HEX, 0, 1).hash == HEX
    assert HubState(HEX, 0, 1) != HubState(HEX, 1, 1)


def _read(rel: str, payload, version: int = 1) -> FileRead:
    data = json.dumps(payload, indent=2).encode()
    return FileRead(rel, data, sha256_hex(data), len(data), version)


def test_applied_ops_are_kept_packed_and_the_same_plans_diff_to_nothing():
    reads = [_read("structured_hubs/soft_identity.json", {"a": {"x": 1}, "b": 2}),
             _read("episodes/skeleton_r1.json", {"run_id": "r1", "nodes": []}),
             _read("snapshot.json", {"timestamp": "2026-02-21T05:29:24.762951", "active_runs": []}),
             _read("runs/run_1.json", {"a": [1, 2]})]
    state = MirrorState()
    for r in reads:
        for op in diff_plan(build_plan(r), state, "t", NOW):
            apply_to_state(state, op)
    assert type(state.episodes["r1"][0]) is bytes
    assert all(type(v[0]) is bytes for v in state.snapshots.values())
    assert type(state.hubs["soft_identity"]["a"]._hash) is bytes
    assert all(type(fs._sha) is bytes for fs in state.files.values())
    assert [op for r in reads for op in diff_plan(build_plan(r), state, "t", NOW)] == []
    # an edit is still seen, with the old hash (hex) as "before"
    edited = _read("episodes/skeleton_r1.json", {"run_id": "r1", "nodes": [1]}, 2)
    ops = diff_plan(build_plan(edited), state, "t", NOW)
    assert [(op.coll, op.action) for op in ops][0] == ("episodic_memory", "update")
    assert ops[0].before == unpack_hash(state.episodes["r1"][0]) and len(ops[0].before) == 64


# --- with a server: warm start from MongoDB, parity -------------------------------------------


def _corpus(root: Path) -> None:
    for i in range(5):
        (root / "episodes").mkdir(exist_ok=True)
        (root / "episodes" / f"skeleton_r{i}.json").write_text(
            json.dumps({"run_id": f"r{i}", "status": "completed", "nodes": [{"id": "n0"}]}, indent=2))
    (root / "runs").mkdir(exist_ok=True)
    (root / "runs" / "run_a.json").write_text(json.dumps({"run_id": "a", "steps": [1, 2]}, indent=2))
    (root / "runs" / "run_b.json").write_text('{"compact":true}')  # JSON, layout not reproducible
    (root / "scheduled_jobs.json").write_text(json.dumps([{"id": "j1"}], indent=2))
    (root / "notes.bin").write_bytes(b"\x00\x01binary")


@pytest.mark.integration
def test_warm_start_from_mongodb_finds_no_changes_and_parity_matches(legacy_dir, config, store, db):
    _corpus(legacy_dir)
    report, code = run_sync(config, store)
    assert code == 0 and report["writes"]["total"] > 0

    state = build_state(store.iter_state())
    assert state.episodes and all(type(d) is bytes for d, _ in state.episodes.values())
    assert all(type(fs._sha) is bytes for fs in state.files.values())
    # the manifest's run_id and the episodes key are one object
    fs = state.files["episodes/skeleton_r3.json"]
    assert next(k for k in state.episodes if k == "r3") is fs.doc_id
    assert state.episodes["r3"][1] is fs.version
    # Hashes recomputed from the stored values equal the files' (hex) hashes: nothing to write.
    ops, view = Reconciler(config).scan(state, "test")
    assert ops == []

    streamed = parity.compute(store, view)
    assert streamed["parity"]["all_match"] is True
    assert streamed["checksums"]["source"] == streamed["checksums"]["mongo_subset"]
    assert streamed == parity.compute(store, view, state=state)
    assert streamed["mongo_counts"] == {"hub_entries": 18, "has_snapshot": True, "episodes": 5, "files": 4}


@pytest.mark.integration
def test_parity_streamed_from_mongodb_sees_changes_behind_the_sidecars_back(legacy_dir, config, store, db):
    _corpus(legacy_dir)
    run_sync(config, store)
    files = db[config.sidecar_files_collection]
    db.episodic_memory.update_one({"_id": "r1"}, {"$set": {"status": "tampered"}})
    db.episodic_memory.delete_one({"_id": "r2"})
    hub = db.memory_hubs.find_one({"hub_type": "soft_identity"})
    db.memory_hubs.update_one({"_id": hub["_id"]}, {"$set": {"payload": {"changed": True}}})
    extra = files.find_one({"_id": "runs/run_a.json"})
    extra.update(_id="runs/run_zz.json", path="runs/run_zz.json")
    files.insert_one(extra)
    files.update_one({"_id": "scheduled_jobs.json"}, {"$set": {"content": [{"id": "other"}]}})
    # A manifest hash that is not lowercase hex is kept as it is: it never equals the file's.
    files.update_one({"_id": "runs/run_b.json"},
                     {"$set": {"sha256": sha256_hex(b'{"compact":true}').upper()}})

    _, view = Reconciler(config).scan(MirrorState(), "parity", view_only=True)
    streamed = parity.compute(store, view)
    kinds = streamed["kinds"]
    assert streamed["parity"]["all_match"] is False
    assert (kinds["episodes"]["different"]["keys"], kinds["episodes"]["missing"]["keys"]) == (["r1"], ["r2"])
    assert kinds["hubs"]["different"]["keys"] == [f"{hub['hub_type']}/{hub['item_key']}"]
    assert kinds["files"]["extra"]["keys"] == ["runs/run_zz.json"]
    assert kinds["files"]["different"]["keys"] == ["scheduled_jobs.json"]
    assert kinds["episodes"]["checksum_source"] != kinds["episodes"]["checksum_mongo"]
    # the same comparison from a loaded state gives the same report
    state = build_state(store.iter_state())
    assert streamed == parity.compute(store, view, state=state)
    assert state.files["runs/run_b.json"].sha256 == sha256_hex(b'{"compact":true}').upper()
    ops, _ = Reconciler(config).scan(state, "test")
    assert {(op.coll, op.id) for op in ops} >= {
        ("episodic_memory", "r1"), ("episodic_memory", "r2"), (FILES, "runs/run_b.json")}


@pytest.mark.integration
def test_source_view_is_compact_and_pending_finds_renamed_episodes(legacy_dir, config, store, db):
    _corpus(legacy_dir)
    # An episode whose file name does not follow skeleton_<run_id>.json.
    (legacy_dir / "episodes" / "skeleton_odd.json").write_text(
        json.dumps({"run_id": "renamed", "nodes": []}, indent=2))
    run_sync(config, store)
    _, view = Reconciler(config).scan(MirrorState(), "parity", view_only=True)
    assert all(type(h) is bytes for h in view.episodes.values())
    assert all(type(h) is bytes for h in view.files.values())
    # An episode file that is not its run's canonical file is a generic file
    # (run_id collisions): no episode path to remember, the copy is a file.
    assert view.episode_paths == {} and "renamed" not in view.episodes
    assert "episodes/skeleton_odd.json" in view.files
    assert view.present == set()  # a parity scan detects no deletions: it keeps no path set
    # Its document changes behind the sidecar's back while its file is queued: pending, not mismatch.
    db.episodic_memory.update_one({"_id": "r0"}, {"$set": {"nodes": [1]}})
    report = parity.compute(store, view, pending={"episodes/skeleton_odd.json", "episodes/skeleton_r0.json"})
    assert report["kinds"]["episodes"]["pending"] == 1
    assert report["kinds"]["episodes"]["mismatch"] == 0
    # The daemon's reconcile keeps no hashes at all, only problems and the paths present.
    _, lean = Reconciler(config).scan(build_state(store.iter_state()), "reconcile", hashes=False)
    assert not (lean.episodes or lean.files or lean.hubs or lean.episode_paths or lean.snapshot)
    assert "episodes/skeleton_odd.json" in lean.present
