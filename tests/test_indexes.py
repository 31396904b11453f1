"""Index plan (DESIGN §3): names, keys, uniqueness, optional TTLs, idempotence,
compatibility with the indexes Mentorix's own Mongo store creates, and the
``memory-sidecar indexes`` command."""

from __future__ import annotations

import json

import pymongo
import pytest
from pymongo.errors import DuplicateKeyError

from sidecar.cli import main
from sidecar.store import Store

pytestmark = pytest.mark.integration

DAY = 86400

# (collection, name) -> (key, unique)
CONTRACT = {
    ("memory_hubs", "ux_hub_type_item_key"): ([("hub_type", 1), ("item_key", 1)], True),
    ("memory_hubs", "ix_hubs_learner_id"): ([("learner_id", 1)], False),
    ("runtime_snapshots", "ix_snapshots_timestamp_desc"): ([("timestamp", -1)], False),
    ("episodic_memory", "ux_episodes_run_id"): ([("run_id", 1)], True),
    ("episodic_memory", "ix_episodes_updated_at_desc"): ([("updated_at", -1)], False),
    ("memory_events", "ix_events_entity_key"): ([("entity_key", 1)], False),
    ("memory_events", "ix_events_created_at_desc"): ([("created_at", -1)], False),
}
TTL = {
    ("runtime_snapshots", "ix_snapshots_timestamp_dt_ttl"): [("timestamp_dt", -1)],
    ("episodic_memory", "ix_episodes_updated_at_dt_ttl"): [("updated_at_dt", -1)],
}


def server_indexes(db) -> dict[tuple[str, str], dict]:
    """What the server itself reports (not the sidecar's listing)."""
    out = {}
    for coll in ("memory_hubs", "runtime_snapshots", "episodic_memory", "memory_events"):
        for spec in db[coll].list_indexes():
            out[(coll, spec["name"])] = spec
    return out


def ttl_of(db) -> dict[str, int]:
    return {name: int(spec["expireAfterSeconds"]) for (_, name), spec in server_indexes(db).items()
            if "expireAfterSeconds" in spec}


def test_contract_indexes_exact_names_keys_uniqueness(store, db):
    listed = store.ensure_indexes()
    got = server_indexes(db)
    for (coll, name), (key, unique) in CONTRACT.items():
        spec = got.get((coll, name))
        assert spec is not None, f"{coll}.{name} missing"
        assert list(spec["key"].items()) == key, name
        assert bool(spec.get("unique", False)) is unique, name
        assert "expireAfterSeconds" not in spec, name
    # nothing unexpected in the contract collections (besides _id_)
    assert set(got) - set(CONTRACT) == {(c, "_id_") for c in
                                        ("memory_hubs", "runtime_snapshots", "episodic_memory", "memory_events")}
    # no TTL by default
    assert ttl_of(db) == {}
    # the returned listing matches the server
    for (coll, name), (key, unique) in CONTRACT.items():
        row = next(r for r in listed[coll] if r["name"] == name)
        assert row["key"] == [list(k) for k in key]
        assert row.get("unique", False) is unique


def test_ensure_indexes_is_idempotent(store, db):
    first = store.ensure_indexes()
    second = store.ensure_indexes()
    assert first == second
    assert store.list_indexes() == second


def test_ttl_indexes_follow_the_settings(make_config, db):
    def ensure(**ttl):
        s = Store(make_config(**ttl))
        try:
            return s.ensure_indexes()
        finally:
            s.close()

    ensure()
    assert ttl_of(db) == {}
    listed = ensure(mongodb_snapshots_ttl_days=3, mongodb_episodes_ttl_days=7)
    assert ttl_of(db) == {"ix_snapshots_timestamp_dt_ttl": 3 * DAY, "ix_episodes_updated_at_dt_ttl": 7 * DAY}
    got = server_indexes(db)
    for (coll, name), key in TTL.items():
        assert list(got[(coll, name)]["key"].items()) == key
        assert any(r["name"] == name and r["expireAfterSeconds"] == got[(coll, name)]["expireAfterSeconds"]
                   for r in listed[coll])
    # idempotent with TTLs on too
    assert ensure(mongodb_snapshots_ttl_days=3, mongodb_episodes_ttl_days=7) == listed
    # changing the days updates expireAfterSeconds in place
    ensure(mongodb_snapshots_ttl_days=10, mongodb_episodes_ttl_days=1)
    assert ttl_of(db) == {"ix_snapshots_timestamp_dt_ttl": 10 * DAY, "ix_episodes_updated_at_dt_ttl": 1 * DAY}
    # turning one off drops only that one
    ensure(mongodb_snapshots_ttl_days=0, mongodb_episodes_ttl_days=1)
    assert ttl_of(db) == {"ix_episodes_updated_at_dt_ttl": 1 * DAY}
    ensure()
    assert ttl_of(db) == {}
    # the contract indexes are untouched by all this
    assert set(CONTRACT) <= set(server_indexes(db))


def mentorix_create_indexes(db, snapshots_ttl_days: int = 0, episodes_ttl_days: int = 0) -> None:
    """The index creation of Mentorix's MongoMemoryStore._ensure_indexes, call for call."""
    asc, desc = pymongo.ASCENDING, pymongo.DESCENDING
    hubs, snapshots, episodes = db["memory_hubs"], db["runtime_snapshots"], db["episodic_memory"]
    hubs.create_index([("hub_type", asc), ("item_key", asc)], unique=True, name="ux_hub_type_item_key")
    hubs.create_index([("learner_id", asc)], name="ix_hubs_learner_id")
    snapshots.create_index([("timestamp", desc)], name="ix_snapshots_timestamp_desc")
    episodes.create_index([("run_id", asc)], unique=True, name="ux_episodes_run_id")
    episodes.create_index([("updated_at", desc)], name="ix_episodes_updated_at_desc")
    if snapshots_ttl_days > 0:
        snapshots.create_index([("timestamp_dt", desc)], name="ix_snapshots_timestamp_dt_ttl",
                               expireAfterSeconds=int(snapshots_ttl_days) * 86400)
    if episodes_ttl_days > 0:
        episodes.create_index([("updated_at_dt", desc)], name="ix_episodes_updated_at_dt_ttl",
                              expireAfterSeconds=int(episodes_ttl_days) * 86400)


def test_compatible_with_indexes_mentorix_created_first(make_config, db):
    mentorix_create_indexes(db)
    before = server_indexes(db)
    s = Store(make_config())
    try:
        s.ensure_indexes()
    finally:
        s.close()
    after = server_indexes(db)
    for key in before:
        assert after[key]["key"] == before[key]["key"] and after[key].get("unique") == before[key].get("unique")
    assert set(CONTRACT) <= set(after)
    # ...and Mentorix starting after the sidecar is a no-op for it too
    mentorix_create_indexes(db)
    assert server_indexes(db) == after


def test_compatible_with_mentorix_ttl_indexes_and_other_days(make_config, db):
    mentorix_create_indexes(db, snapshots_ttl_days=3, episodes_ttl_days=7)
    s = Store(make_config(mongodb_snapshots_ttl_days=5, mongodb_episodes_ttl_days=7))
    try:
        s.ensure_indexes()
    finally:
        s.close()
    assert ttl_of(db) == {"ix_snapshots_timestamp_dt_ttl": 5 * DAY, "ix_episodes_updated_at_dt_ttl": 7 * DAY}
    # Mentorix restarting with the same days as the sidecar now: no conflict
    mentorix_create_indexes(db, snapshots_ttl_days=5, episodes_ttl_days=7)


def test_unique_index_rejects_a_duplicate_hub_entry(store, db):
    store.ensure_indexes()
    db.memory_hubs.insert_one({"hub_type": "soft_identity", "item_key": "L1", "learner_id": "L1", "payload": {}})
    with pytest.raises(DuplicateKeyError):
        db.memory_hubs.insert_one({"hub_type": "soft_identity", "item_key": "L1", "learner_id": "L1",
                                   "payload": {"other": 1}})
    # same key in another hub, or another key in the same hub, is fine
    db.memory_hubs.insert_one({"hub_type": "operating_context", "item_key": "L1", "payload": {}})
    db.memory_hubs.insert_one({"hub_type": "soft_identity", "item_key": "L2", "payload": {}})
    assert db.memory_hubs.count_documents({}) == 3
    db.episodic_memory.insert_one({"run_id": "r1"})
    with pytest.raises(DuplicateKeyError):
        db.episodic_memory.insert_one({"run_id": "r1"})


def test_cli_indexes_prints_the_listing(data_dir, mongo_url, db_name, db, capsys, monkeypatch):
    monkeypatch.setenv("MONGODB_SNAPSHOTS_TTL_DAYS", "3")
    args = ["--data-dir", str(data_dir), "--mongodb-url", mongo_url, "--db-name", db_name, "indexes"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    for (coll, name), (key, unique) in CONTRACT.items():
        row = next((r for r in out[coll] if r["name"] == name), None)
        assert row is not None, name
        assert row["key"] == [list(k) for k in key]
        assert row.get("unique", False) is unique
    ttl = [r for r in out["runtime_snapshots"] if r["name"] == "ix_snapshots_timestamp_dt_ttl"]
    assert len(ttl) == 1 and ttl[0]["expireAfterSeconds"] == 3 * DAY
    assert not any("expireAfterSeconds" in r for r in out["episodic_memory"])
    # the output matches what the server holds
    assert ttl_of(db) == {"ix_snapshots_timestamp_dt_ttl": 3 * DAY}
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out) == out


def test_sync_ensures_indexes_but_dry_run_does_not(legacy_dir, config, store, db):
    from sidecar.sync import run_sync

    run_sync(config, store, dry_run=True)
    assert "memory_hubs" not in db.list_collection_names() or \
        set(db.memory_hubs.index_information()) == {"_id_"}
    run_sync(config, store)
    assert set(CONTRACT) <= set(server_indexes(db))


# memory_tombstones (not in Mentorix's contract: the sidecar's own): always a TTL on
# expire_at (0 s: each tombstone carries its expiry), whatever the other TTL settings.
TOMBSTONE_INDEXES = {
    "ix_tombstones_expire_at_ttl": ([("expire_at", 1)], 0),
    "ix_tombstones_coll_doc_id": ([("coll", 1), ("doc_id", 1)], None),
    "ix_tombstones_deleted_at_desc": ([("deleted_at", -1)], None),
}


@pytest.mark.parametrize("ttl_days", [0, 3])
def test_tombstone_indexes(make_config, db, ttl_days):
    s = Store(make_config(mongodb_snapshots_ttl_days=ttl_days, mongodb_episodes_ttl_days=ttl_days))
    try:
        listed = s.ensure_indexes()
        assert s.ensure_indexes() == listed
    finally:
        s.close()
    got = {spec["name"]: spec for spec in db["memory_tombstones"].list_indexes()}
    assert set(got) == set(TOMBSTONE_INDEXES) | {"_id_"}
    for name, (key, ttl) in TOMBSTONE_INDEXES.items():
        assert list(got[name]["key"].items()) == key, name
        assert got[name].get("expireAfterSeconds") == ttl, name
    assert {r["name"] for r in listed["memory_tombstones"]} == set(got)
