"""Helpers shared by the deletion-model tests (test_deletion_model, test_attacks_deletion)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from testkit.daemon_fixtures import TOKEN

HUB = "structured_hubs/learner_preferences.json"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def dump(obj) -> bytes:
    return json.dumps(obj, indent=2).encode()


def write_in_place(root: Path, rel: str, obj) -> None:
    """What the legacy writer does: truncate and rewrite the same inode."""
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(dump(obj))


def write_new_inode(root: Path, rel: str, obj, suffix: str = ".new") -> None:
    """A copy put over the file by rename (an editor's save, an atomic writer, mv)."""
    path = root / rel
    tmp = path.with_name(path.name + suffix)
    tmp.write_bytes(dump(obj))
    os.replace(tmp, path)


def keys_in_mongo(db, hub_type: str = "learner_preferences") -> set[str]:
    return {d["item_key"] for d in db.memory_hubs.find({"hub_type": hub_type}, {"item_key": 1})}
