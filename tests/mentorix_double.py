"""A faithful double of Mentorix's own Mongo store and backfill script (DESIGN §8):
the same collections, indexes and write calls, so the sidecar can be tested beside
the documents they leave (ObjectId ``_id``, no sidecar metadata, ``+00:00`` times,
``snapshot_id: "file_snapshot_latest"``)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from pymongo import ASCENDING, DESCENDING


class MongoMemoryStore:
    """``app/memory/store.py`` as DESIGN §8 describes it."""

    def __init__(self, db) -> None:
        self.db = db
        db.memory_hubs.create_index([("hub_type", ASCENDING), ("item_key", ASCENDING)],
                                    name="ux_hub_type_item_key", unique=True)
        db.memory_hubs.create_index([("learner_id", ASCENDING)], name="ix_hubs_learner_id")
        db.runtime_snapshots.create_index([("timestamp", DESCENDING)], name="ix_snapshots_timestamp_desc")
        db.episodic_memory.create_index([("run_id", ASCENDING)], name="ux_episodes_run_id", unique=True)
        db.episodic_memory.create_index([("updated_at", DESCENDING)], name="ix_episodes_updated_at_desc")

    def set_hub(self, hub_type: str, item_key: str, payload) -> None:
        self.db.memory_hubs.update_one(
            {"hub_type": hub_type, "item_key": item_key},
            {"$set": {"payload": payload, "learner_id": item_key,
                      "updated_at": datetime.now(timezone.utc).isoformat()}}, upsert=True)

    def load_hubs(self) -> list[dict]:
        return list(self.db.memory_hubs.find({}, {"_id": 0, "hub_type": 1, "item_key": 1, "payload": 1}))

    def save_snapshot(self, payload: dict, when: datetime) -> None:
        self.db.runtime_snapshots.insert_one(dict(payload, timestamp=when.isoformat(), timestamp_dt=when))

    def latest_snapshot(self) -> dict | None:
        return self.db.runtime_snapshots.find_one(sort=[("timestamp", -1)])

    def save_episode(self, skeleton: dict) -> None:
        run_id = skeleton["run_id"]
        self.db.episodic_memory.replace_one(
            {"run_id": run_id}, dict(skeleton, run_id=run_id, updated_at_dt=datetime.now(timezone.utc)),
            upsert=True)


def backfill(db, root: Path) -> None:
    """``scripts/backfill_memory_to_mongo.py``: the files into the same collections."""
    MongoMemoryStore(db)
    for path in sorted((root / "structured_hubs").glob("*.json")):
        for key, payload in json.loads(path.read_text()).items():
            db.memory_hubs.update_one(
                {"hub_type": path.stem, "item_key": key},
                {"$set": {"hub_type": path.stem, "item_key": key, "learner_id": key, "payload": payload}},
                upsert=True)
    snap = root / "snapshot.json"
    if snap.exists():
        db.runtime_snapshots.replace_one({"snapshot_id": "file_snapshot_latest"},
                                         dict(json.loads(snap.read_text()), snapshot_id="file_snapshot_latest"),
                                         upsert=True)
    for path in sorted((root / "episodes").glob("skeleton_*.json")) if (root / "episodes").exists() else []:
        content = json.loads(path.read_text())
        run_id = content.get("run_id") or path.stem[len("skeleton_"):]
        db.episodic_memory.replace_one({"run_id": run_id}, dict(content, run_id=run_id), upsert=True)
