"""The index plan (DESIGN §3) and its idempotent creation.

Names and keys match the Mentorix Mongo store's, so whichever side creates them
first, the other's create is a no-op. A TTL index follows its setting: created
when the days are > 0, its ``expireAfterSeconds`` changed in place (``collMod``)
when the days change, dropped when they are set to 0. ``Store.ensure_indexes``
runs this and translates a MongoDB outage into ``MongoUnavailable``.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from pymongo import UpdateOne
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import OperationFailure

from .config import Config
from .names import (
    EPISODES,
    EVENTS,
    FILES,
    HUBS,
    IX_EPISODES_RUN_ID,
    IX_EPISODES_TTL,
    IX_EPISODES_UPDATED_AT,
    IX_EVENTS_CREATED_AT,
    IX_EVENTS_ENTITY_KEY,
    IX_EVENTS_TTL,
    IX_FILES_KIND,
    IX_HUB_TYPE_ITEM_KEY,
    IX_HUBS_LEARNER_ID,
    IX_SNAPSHOTS_TIMESTAMP,
    IX_SNAPSHOTS_TTL,
    IX_TOMBSTONES_COLL_DOC_ID,
    IX_TOMBSTONES_DELETED_AT,
    IX_TOMBSTONES_EXPIRE_AT_TTL,
    SNAPSHOTS,
    TOMBSTONES,
)

IndexSpec = tuple[str, list[tuple[str, int]], dict[str, Any]]

# The TTL indexes a setting turns on (> 0 days) and off (0: dropped).
TTL_INDEXES = {SNAPSHOTS: IX_SNAPSHOTS_TTL, EPISODES: IX_EPISODES_TTL, EVENTS: IX_EVENTS_TTL}


def index_plan(config: Config) -> list[IndexSpec]:
    """(logical collection, keys, options)."""
    plan: list[IndexSpec] = [
        (HUBS, [("hub_type", 1), ("item_key", 1)], {"name": IX_HUB_TYPE_ITEM_KEY, "unique": True}),
        (HUBS, [("learner_id", 1)], {"name": IX_HUBS_LEARNER_ID}),
        (SNAPSHOTS, [("timestamp", -1)], {"name": IX_SNAPSHOTS_TIMESTAMP}),
        (EPISODES, [("run_id", 1)], {"name": IX_EPISODES_RUN_ID, "unique": True}),
        (EPISODES, [("updated_at", -1)], {"name": IX_EPISODES_UPDATED_AT}),
        (EVENTS, [("entity_key", 1)], {"name": IX_EVENTS_ENTITY_KEY}),
        (EVENTS, [("created_at", -1)], {"name": IX_EVENTS_CREATED_AT}),
        (FILES, [("kind", 1)], {"name": IX_FILES_KIND}),
        # Always on: a tombstone carries its own expiry (deleted_at + SIDECAR_TOMBSTONE_DAYS).
        (TOMBSTONES, [("expire_at", 1)], {"name": IX_TOMBSTONES_EXPIRE_AT_TTL, "expireAfterSeconds": 0}),
        (TOMBSTONES, [("coll", 1), ("doc_id", 1)], {"name": IX_TOMBSTONES_COLL_DOC_ID}),
        (TOMBSTONES, [("deleted_at", -1)], {"name": IX_TOMBSTONES_DELETED_AT}),
    ]
    if config.mongodb_snapshots_ttl_days > 0:
        plan.append((SNAPSHOTS, [("timestamp_dt", -1)], {
            "name": IX_SNAPSHOTS_TTL,
            "expireAfterSeconds": config.mongodb_snapshots_ttl_days * 86400}))
    if config.mongodb_episodes_ttl_days > 0:
        plan.append((EPISODES, [("updated_at_dt", -1)], {
            "name": IX_EPISODES_TTL,
            "expireAfterSeconds": config.mongodb_episodes_ttl_days * 86400}))
    if config.sidecar_events_ttl_days > 0:
        # Ascending, so its key differs from ix_events_created_at_desc's (a server
        # refuses two indexes on one key pattern that differ only in options).
        plan.append((EVENTS, [("created_at", 1)], {
            "name": IX_EVENTS_TTL,
            "expireAfterSeconds": config.sidecar_events_ttl_days * 86400}))
    return plan


def ensure(db: Database, colls: dict[str, Collection], config: Config) -> None:
    """Create what is missing, fix a changed TTL, drop a TTL that was turned off,
    re-date tombstones written for other days. Raises pymongo's errors."""
    wanted_ttl = set()
    for logical, keys, opts in index_plan(config):
        coll = colls[logical]
        if "expireAfterSeconds" in opts:
            wanted_ttl.add(opts["name"])
        try:
            coll.create_index(keys, **opts)
        except OperationFailure as exc:
            if "expireAfterSeconds" in opts and exc.code in (85, 86):
                db.command("collMod", coll.name, index={
                    "name": opts["name"], "expireAfterSeconds": opts["expireAfterSeconds"]})
            else:
                raise
    for logical, name in TTL_INDEXES.items():
        if name not in wanted_ttl and name in colls[logical].index_information():
            colls[logical].drop_index(name)
    _redate_tombstones(colls[TOMBSTONES], config)


def _redate_tombstones(coll: Collection, config: Config) -> None:
    """SIDECAR_TOMBSTONE_DAYS changed: tombstones written with other days get
    ``expire_at = deleted_at + days`` (the TTL index itself always says 0)."""
    days = config.sidecar_tombstone_days
    requests = []
    for doc in coll.find({"days": {"$ne": days}}, {"deleted_at": 1}):
        deleted_at = doc.get("deleted_at")
        if isinstance(deleted_at, datetime):
            requests.append(UpdateOne({"_id": doc["_id"]}, {"$set": {
                "days": days, "expire_at": deleted_at + timedelta(days=days)}}))
        if len(requests) >= config.sidecar_batch_size:
            coll.bulk_write(requests, ordered=False)
            requests = []
    if requests:
        coll.bulk_write(requests, ordered=False)


def listing(colls: dict[str, Collection]) -> dict[str, list[dict]]:
    """Collection name → its indexes (name, key, unique, expireAfterSeconds)."""
    out = {}
    for coll in colls.values():
        rows = []
        for spec in coll.list_indexes():
            row = {"name": spec["name"], "key": [[k, v] for k, v in spec["key"].items()]}
            for opt in ("unique", "expireAfterSeconds"):
                if opt in spec:
                    row[opt] = spec[opt]
            rows.append(row)
        out[coll.name] = rows
    return out
