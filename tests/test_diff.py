"""sidecar/diff.py: positions, per-document ops, refusals, deletions, state (pure, no server).

The last tests run the requests ``Store._request`` builds against mongomock, to
pin the op → MongoDB request translation (version guard, _id, bodies) without a
server.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

import mongomock
import pytest
from pymongo import DeleteOne, InsertOne, ReplaceOne, UpdateOne
from pymongo.errors import DuplicateKeyError

from sidecar.classify import Kind
from sidecar.config import Config
from sidecar.diff import EmptyHubRefused, _positions, deletion_ops, diff_plan
from sidecar.state import count_ops
from sidecar.state import FileState, HubState, MirrorState, apply_to_state, build_state
from sidecar.parse import BadInput
from sidecar.model import build_plan
from sidecar.names import EPISODES, FILES, HUBS, SNAPSHOTS
from sidecar.parse import value_hash
from sidecar.source import FileRead, sha256_hex
from sidecar.store import Store

NOW = datetime(2026, 2, 21, 5, 29, 24, tzinfo=timezone.utc)
HUB = "structured_hubs/soft_identity.json"


def read(rel: str, payload, version: int = 1) -> FileRead:
    data = json.dumps(payload, indent=2).encode()
    return FileRead(rel, data, sha256_hex(data), len(data), version)


def plan_of(rel: str, payload, version: int = 1):
    return build_plan(read(rel, payload, version))


def mirror(state: MirrorState, ops) -> MirrorState:
    for op in ops:
        apply_to_state(state, op)
    return state


def base(*keys: str, positions=None) -> dict[str, HubState]:
    positions = positions or range(len(keys))
    return {k: HubState("h", p, 1) for k, p in zip(keys, positions)}


# --- _positions ------------------------------------------------------------------


def test_positions_fresh_file_numbers_from_zero():
    assert _positions(["a", "b", "c"], {}) == [0, 1, 2]


def test_positions_append_keeps_old_positions():
    assert _positions(["a", "b", "c", "d"], base("a", "b", "c")) == [0, 1, 2, 3]


def test_positions_delete_in_middle_and_append_keeps_neighbours():
    # b removed, e appended: the survivors keep their numbers, e goes after the max.
    assert _positions(["a", "c", "d", "e"], base("a", "b", "c", "d")) == [0, 2, 3, 4]


def test_positions_append_after_gaps_uses_max_plus_one():
    assert _positions(["a", "x"], base("a", "gone", positions=[3, 10])) == [3, 11]


def test_positions_reorder_renumbers():
    assert _positions(["b", "a", "c"], base("a", "b", "c")) == [0, 1, 2]


def test_positions_insert_in_the_middle_renumbers():
    assert _positions(["a", "new", "b"], base("a", "b")) == [0, 1, 2]


def test_positions_unknown_old_position_renumbers():
    assert _positions(["a", "b", "c"], {"a": HubState("h", None, 1), "b": HubState("h", 1, 1)}) == [0, 1, 2]


# --- diff_plan: hubs ----------------------------------------------------------------


def test_fresh_hub_inserts_every_entry_and_the_manifest():
    plan = plan_of(HUB, {"a": {"v": 1}, "b": {"v": 2}}, version=5)
    ops = diff_plan(plan, MirrorState(), "sync", NOW)
    assert count_ops(ops) == {f"{HUBS}.insert": 2, f"{FILES}.insert": 1}
    a = ops[0]
    assert (a.coll, a.action, a.id, a.pos, a.version) == (HUBS, "insert", "soft_identity/a", 0, 5)
    assert a.doc["hub_type"] == "soft_identity" and a.doc["item_key"] == a.doc["learner_id"] == "a"
    assert a.doc["payload"] == {"v": 1}
    assert a.doc["_sidecar"]["hash"] == a.after == value_hash({"v": 1})
    assert a.doc["_sidecar"]["version"] == 5 and a.doc["_sidecar"]["path"] == HUB
    assert all(op.rel == HUB for op in ops)
    man = ops[-1]
    assert man.id == HUB and man.doc["sha256"] == plan.sha256 and man.doc["hub_type"] == "soft_identity"


def test_unchanged_hub_yields_no_ops():
    payload = {"a": {"v": 1}, "b": {"v": 2}}
    state = mirror(MirrorState(), diff_plan(plan_of(HUB, payload), MirrorState(), "sync", NOW))
    assert diff_plan(plan_of(HUB, payload, version=2), state, "sync", NOW) == []


def test_one_changed_entry_is_one_update_and_a_state_only_manifest_track():
    state = mirror(MirrorState(), diff_plan(plan_of(HUB, {"a": 1, "b": 2, "c": 3}), MirrorState(), "s", NOW))
    ops = diff_plan(plan_of(HUB, {"a": 1, "b": 20, "c": 3}, version=2), state, "s", NOW)
    # The manifest document is not rewritten (same format, same hub): only the state learns the sha.
    assert count_ops(ops) == {f"{HUBS}.update": 1, f"{FILES}.track": 1}
    assert ops[-1].doc is None and ops[-1].after != ops[-1].before
    upd = ops[0]
    assert upd.id == "soft_identity/b" and upd.before == value_hash(2) and upd.after == value_hash(20)
    assert upd.pos == 1 and upd.doc["payload"] == 20


def test_removed_key_is_a_delete_and_append_is_an_insert_without_setpos():
    state = mirror(MirrorState(), diff_plan(plan_of(HUB, {"a": 1, "b": 2, "c": 3}), MirrorState(), "s", NOW))
    # Nothing is removed unless the deletion model says so.
    held = diff_plan(plan_of(HUB, {"a": 1, "c": 3, "d": 4}, version=2), state, "s", NOW)
    assert count_ops(held) == {f"{HUBS}.insert": 1, f"{FILES}.track": 1}
    ops = diff_plan(plan_of(HUB, {"a": 1, "c": 3, "d": 4}, version=2), state, "s", NOW, remove={"b"})
    assert count_ops(ops) == {f"{HUBS}.insert": 1, f"{HUBS}.delete": 1, f"{FILES}.track": 1}
    ins = next(op for op in ops if op.action == "insert")
    assert ins.id == "soft_identity/d" and ins.pos == 3
    dele = next(op for op in ops if op.action == "delete")
    assert dele.id == "soft_identity/b" and dele.before == value_hash(2) and dele.doc is None


def test_reorder_only_yields_setpos_ops():
    state = mirror(MirrorState(), diff_plan(plan_of(HUB, {"a": 1, "b": 2, "c": 3}), MirrorState(), "s", NOW))
    ops = diff_plan(plan_of(HUB, {"c": 3, "a": 1, "b": 2}, version=2), state, "s", NOW)
    setpos = {op.id: op.pos for op in ops if op.action == "setpos"}
    assert setpos == {"soft_identity/c": 0, "soft_identity/a": 1, "soft_identity/b": 2}
    assert all(op.doc is None for op in ops if op.action == "setpos")
    state = mirror(state, ops)
    assert {k: s.pos for k, s in state.hubs["soft_identity"].items()} == {"c": 0, "a": 1, "b": 2}
    # setpos keeps the entry's content version
    assert state.hubs["soft_identity"]["a"].version == 1


def test_empty_hub_over_held_entries_is_refused_unless_allowed():
    state = mirror(MirrorState(), diff_plan(plan_of(HUB, {"a": 1, "b": 2}), MirrorState(), "s", NOW))
    with pytest.raises(EmptyHubRefused) as info:
        diff_plan(plan_of(HUB, {}, version=2), state, "s", NOW)
    assert info.value.held == 2 and info.value.rel == HUB
    ops = diff_plan(plan_of(HUB, {}, version=2), state, "s", NOW, allow_empty_hub=True, remove={"a", "b"})
    assert count_ops(ops) == {f"{HUBS}.delete": 2, f"{FILES}.track": 1}


def test_empty_hub_on_an_empty_mirror_is_fine():
    ops = diff_plan(plan_of(HUB, {}), MirrorState(), "s", NOW)
    assert count_ops(ops) == {f"{FILES}.insert": 1}


def test_bad_entry_is_neither_written_nor_deleted():
    state = mirror(MirrorState(), diff_plan(plan_of(HUB, {"a": {"x": 1}, "b": 2}), MirrorState(), "s", NOW))
    plan = plan_of(HUB, {"a": {"x": 1}, "b": 3}, version=2)
    plan.entry_errors["a"] = BadInput("too_large", "too large")  # what is still refused
    plan.entries = [e for e in plan.entries if e.key != "a"]
    ops = diff_plan(plan, state, "s", NOW)
    assert {op.id for op in ops if op.coll == HUBS} == {"soft_identity/b"}
    assert not [op for op in ops if op.action == "delete"]


def test_entry_bson_cannot_hold_is_stored_raw_not_refused():
    state = mirror(MirrorState(), diff_plan(plan_of(HUB, {"a": {"x": 1}, "b": 2}), MirrorState(), "s", NOW))
    plan = plan_of(HUB, {"a": {"x.y": 1}, "b": 2}, version=2)
    assert not plan.entry_errors and plan.entries[0].stored_raw == "bad_key"
    ops = [op for op in diff_plan(plan, state, "s", NOW) if op.coll == HUBS]
    assert [(op.id, op.action) for op in ops] == [("soft_identity/a", "update")]
    assert ops[0].doc["payload"] is None and ops[0].doc["_sidecar"]["raw"] == b'{"x.y":1}'


def test_hub_with_only_bad_entries_is_not_an_empty_hub():
    state = mirror(MirrorState(), diff_plan(plan_of(HUB, {"a": 1}), MirrorState(), "s", NOW))
    plan = plan_of(HUB, {"a": 1}, version=2)
    plan.entry_errors["a"], plan.entries = BadInput("too_large", "too large"), []
    ops = diff_plan(plan, state, "s", NOW)
    assert [op.action for op in ops if op.coll == HUBS] == []


# --- diff_plan: snapshots, episodes, generic files -----------------------------------


def test_snapshot_history_one_insert_per_distinct_content():
    snap = {"timestamp": "2026-02-21T05:29:24.762951", "active_runs": []}
    ops = diff_plan(plan_of("snapshot.json", snap), MirrorState(), "s", NOW)
    assert count_ops(ops) == {f"{SNAPSHOTS}.insert": 1, f"{FILES}.insert": 1}
    doc = ops[0].doc
    assert doc["_id"] == doc["snapshot_id"] == value_hash(snap)
    assert doc["timestamp_dt"] == datetime(2026, 2, 21, 5, 29, 24, 762951, tzinfo=timezone.utc)
    assert doc["_sidecar"]["fields"] == ["timestamp", "active_runs"]
    state = mirror(MirrorState(), ops)
    assert diff_plan(plan_of("snapshot.json", snap, 2), state, "s", NOW) == []
    newer = dict(snap, timestamp="2026-02-22T00:00:00")
    assert count_ops(diff_plan(plan_of("snapshot.json", newer, 3), state, "s", NOW)) == {
        f"{SNAPSHOTS}.insert": 1, f"{FILES}.update": 1}


def test_episode_insert_then_update_by_run_id():
    rel = "episodes/skeleton_r-1.json"
    ep = {"run_id": "r-1", "status": "running", "updated_at": "2026-02-01T00:00:00", "nodes": [], "edges": []}
    ops = diff_plan(plan_of(rel, ep), MirrorState(), "s", NOW)
    assert (ops[0].coll, ops[0].action, ops[0].id) == (EPISODES, "insert", "r-1")
    assert ops[0].doc["updated_at_dt"].year == 2026
    state = mirror(MirrorState(), ops)
    ops = diff_plan(plan_of(rel, dict(ep, status="completed"), 2), state, "s", NOW)
    assert (ops[0].action, ops[0].before) == ("update", value_hash(ep))


def test_episode_without_run_id_takes_it_from_the_file_name():
    ops = diff_plan(plan_of("episodes/skeleton_abc.json", {"status": "x"}), MirrorState(), "s", NOW)
    assert ops[0].id == "abc" and ops[0].doc["run_id"] == "abc"


def test_generic_files_have_only_a_manifest_op():
    ops = diff_plan(plan_of("runs/run_1.json", {"a": [1, 2]}), MirrorState(), "s", NOW)
    assert [(op.coll, op.action) for op in ops] == [(FILES, "insert")]
    assert ops[0].doc["encoding"] == "json" and ops[0].doc["content"] == {"a": [1, 2]}
    assert ops[0].doc["kind"] == Kind.RUN.value and ops[0].blob is None


def test_previously_deleted_file_that_reappears_is_rewritten():
    plan = plan_of("runs/run_1.json", {"a": 1})
    state = MirrorState(files={plan.rel: FileState(plan.sha256, 1, "run", deleted=True)})
    ops = diff_plan(plan, state, "s", NOW)
    assert [(op.coll, op.action) for op in ops] == [(FILES, "update")]


# --- deletion_ops ----------------------------------------------------------------------


def _mirrored_hub_and_episode() -> MirrorState:
    state = MirrorState()
    mirror(state, diff_plan(plan_of(HUB, {"a": 1, "b": 2}), state, "s", NOW))
    mirror(state, diff_plan(plan_of("episodes/skeleton_r.json", {"run_id": "r"}), state, "s", NOW))
    mirror(state, diff_plan(plan_of("snapshot.json", {"timestamp": "t"}), state, "s", NOW))
    return state


def test_deletion_without_propagation_only_records():
    state = _mirrored_hub_and_episode()
    ops = deletion_ops(HUB, state, propagate=False, version=9)
    assert [(op.coll, op.action, op.id) for op in ops] == [(FILES, "mark_deleted", HUB)]
    mirror(state, ops)
    assert state.files[HUB].deleted and set(state.hubs["soft_identity"]) == {"a", "b"}
    assert deletion_ops(HUB, state, propagate=False, version=10) == []  # recorded once


def test_deletion_with_propagation_removes_entries_and_episode():
    state = _mirrored_hub_and_episode()
    ops = deletion_ops(HUB, state, propagate=True, version=9)
    assert sorted((op.coll, op.action, op.id) for op in ops) == [
        (FILES, "delete", HUB), (HUBS, "delete", "soft_identity/a"), (HUBS, "delete", "soft_identity/b")]
    mirror(state, ops)
    assert state.hubs["soft_identity"] == {} and HUB not in state.files
    ops = deletion_ops("episodes/skeleton_r.json", state, propagate=True, version=9)
    assert sorted((op.coll, op.action, op.id) for op in ops) == [
        (EPISODES, "delete", "r"), (FILES, "delete", "episodes/skeleton_r.json")]
    mirror(state, ops)
    assert "r" not in state.episodes


def test_snapshot_history_survives_a_propagated_delete():
    state = _mirrored_hub_and_episode()
    ops = deletion_ops("snapshot.json", state, propagate=True, version=9)
    assert [(op.coll, op.action) for op in ops] == [(FILES, "delete")]


def test_deleting_an_unknown_file_is_nothing():
    assert deletion_ops("nope.json", MirrorState(), propagate=True, version=1) == []


# --- apply_to_state ----------------------------------------------------------------------


def test_apply_to_state_tracks_hashes_positions_versions():
    state = MirrorState()
    ops = diff_plan(plan_of(HUB, {"a": 1, "b": 2}, version=3), state, "s", NOW)
    mirror(state, ops)
    assert state.hubs["soft_identity"]["b"] == HubState(value_hash(2), 1, 3)
    fs = state.files[HUB]
    assert (fs.sha256, fs.version, fs.kind, fs.deleted, fs.doc_id) == (
        ops[-1].after, 3, "hub", False, "soft_identity")


# --- Store._request over mongomock: op → request translation --------------------------------
# mongomock's bulk_write does not accept the current pymongo request objects, so
# each request is executed through the equivalent single-document call. That is
# enough to pin what matters: the filters (version guard, _id) and the bodies.


@pytest.fixture
def mock_store(monkeypatch):
    # GridFSBucket type-checks its database; accept mongomock's for this test only
    # (what mongomock.gridfs.enable_gridfs_integration does, but undone afterwards).
    import gridfs.synchronous.grid_file as grid_file
    import pymongo.collection
    import pymongo.database

    monkeypatch.setattr(grid_file, "Database", (pymongo.database.Database, mongomock.Database))
    monkeypatch.setattr(grid_file, "Collection", (pymongo.collection.Collection, mongomock.Collection))
    config = Config(mongodb_url="mongodb://127.0.0.1:1", mongodb_db_name="unit")
    store = Store(config, client=mongomock.MongoClient())
    # The unique natural keys the guard relies on (Store.ensure_indexes creates them).
    store.coll[HUBS].create_index([("hub_type", 1), ("item_key", 1)], unique=True)
    store.coll[EPISODES].create_index([("run_id", 1)], unique=True)
    return store


def execute(store: Store, ops) -> list[str]:
    """Run ops one by one as Store would request them; return 'ok'/'dup' per op."""
    outcome = []
    for op in ops:
        if op.action == "track":  # state-only: Store.apply sends nothing for it
            outcome.append("ok")
            continue
        req = store._request(op, NOW)
        coll = store.coll[op.coll]
        try:
            if isinstance(req, InsertOne):
                coll.insert_one(dict(req._doc))
            elif isinstance(req, ReplaceOne):
                coll.replace_one(req._filter, req._doc, upsert=req._upsert)
            elif isinstance(req, UpdateOne):
                coll.update_one(req._filter, req._doc, upsert=bool(req._upsert))
            elif isinstance(req, DeleteOne):
                coll.delete_one(req._filter)
            else:
                raise AssertionError(req)
            outcome.append("ok")
        except DuplicateKeyError:
            outcome.append("dup")
    return outcome


def test_request_translation_writes_the_documents(mock_store):
    state = MirrorState()
    ops = diff_plan(plan_of(HUB, {"a": 1, "b": 2, "c": 3}, 1), state, "s", NOW)
    assert set(execute(mock_store, ops)) == {"ok"}
    mirror(state, ops)
    hubs = mock_store.db[HUBS]
    assert hubs.count_documents({}) == 3
    ops = diff_plan(plan_of(HUB, {"c": 30, "a": 1}, 2), state, "s", NOW, remove={"b"})
    assert {op.action for op in ops} == {"update", "setpos", "delete", "track"}
    assert set(execute(mock_store, ops)) == {"ok"}
    mirror(state, ops)
    assert hubs.find_one({"_id": "soft_identity/b"}) is None
    c = hubs.find_one({"_id": "soft_identity/c"})
    assert c["payload"] == 30 and c["_sidecar"]["version"] == 2 and c["_sidecar"]["pos"] == 0
    assert c["hub_type"] == "soft_identity" and c["item_key"] == "c"
    assert hubs.find_one({"_id": "soft_identity/a"})["_sidecar"]["pos"] == 1  # setpos
    man = mock_store.db[mock_store.files_name].find_one({"_id": HUB})
    # A content edit leaves the manifest document alone ("track": state only).
    assert ops[-1].action == "track" and man["sha256"] == ops[-1].before
    assert state.files[HUB].sha256 == ops[-1].after
    # load_state reads back exactly the mirror state the ops produced
    assert build_state(mock_store.iter_state()).hubs == state.hubs


def test_version_guard_refuses_a_stale_replace_and_delete(mock_store):
    state = MirrorState()
    ops = diff_plan(plan_of(HUB, {"a": 1, "b": 2}, version=10), state, "s", NOW)
    execute(mock_store, ops)
    mirror(state, ops)
    # An older reading of the file (version 5) arrives late: it must not win.
    stale_state = MirrorState(hubs={"soft_identity": {
        "a": HubState(value_hash(1), 0, 10), "b": HubState(value_hash(2), 1, 10)}})
    ops = [op for op in diff_plan(plan_of(HUB, {"a": "old"}, version=5), stale_state, "s", NOW, remove={"b"})
           if op.coll == HUBS]
    assert [(op.action, op.id) for op in ops] == [("update", "soft_identity/a"), ("delete", "soft_identity/b")]
    # the guarded upsert collides on _id (counted as stale by Store), the delete matches nothing
    assert execute(mock_store, ops) == ["dup", "ok"]
    assert mock_store.db[HUBS].find_one({"_id": "soft_identity/a"})["payload"] == 1
    assert mock_store.db[HUBS].count_documents({}) == 2
    # a newer version passes the guard
    newer = [op for op in diff_plan(plan_of(HUB, {"a": "new", "b": 2}, version=11), state, "s", NOW)
             if op.coll == HUBS]
    assert execute(mock_store, newer) == ["ok"]
    assert mock_store.db[HUBS].find_one({"_id": "soft_identity/a"})["payload"] == "new"


def test_mark_deleted_sets_deleted_at_and_keeps_content(mock_store):
    state = MirrorState()
    ops = diff_plan(plan_of("runs/run_1.json", {"a": 1}), state, "s", NOW)
    execute(mock_store, ops)
    mirror(state, ops)
    execute(mock_store, deletion_ops("runs/run_1.json", state, propagate=False, version=2))
    man = mock_store.db[mock_store.files_name].find_one({"_id": "runs/run_1.json"})
    assert man["deleted_at"] == NOW.replace(tzinfo=None) and man["content"] == {"a": 1}
    assert build_state(mock_store.iter_state()).files["runs/run_1.json"].deleted
