"""The ``memory_events`` audit trail, built from acknowledged ops.

Before/after are content hashes unless ``SIDECAR_EVENTS_PAYLOAD=full``. A bulk
first load is one ``backfill`` event per top-level folder (with a count) rather
than one event per entry or file: the entries themselves are the record, and doubling every
write of a backfill would buy nothing.
"""

from __future__ import annotations

from datetime import datetime

from .names import EPISODES, FILES, HUBS, SNAPSHOTS
from .state import Op

_NAMES = {HUBS: "hub", EPISODES: "episode", SNAPSHOTS: "snapshot", FILES: "file"}


def _value(op: Op) -> object:
    doc = op.doc or {}
    if op.coll == HUBS:
        return doc.get("payload")
    if op.coll == FILES:
        return doc.get("content")
    return {k: v for k, v in doc.items() if k not in ("_id", "_sidecar")}


def build_events(
    applied: list[Op], source: str, now: datetime, summarize_inserts: bool, full_payload: bool
) -> list[dict]:
    events: list[dict] = []
    backfill: dict[str, int] = {}
    for op in applied:
        if op.action in ("setpos", "track"):
            continue  # bookkeeping, not a content change
        if op.coll == FILES and op.action in ("insert", "update") and op.doc and op.doc.get("kind") in (
            "hub", "snapshot", "episode"):
            continue  # the entity documents carry their own events
        if summarize_inserts and op.action == "insert" and op.coll != SNAPSHOTS:
            # One event per top-level folder for a first load: episodes/, runs/ ...
            folder = op.rel.split("/", 1)[0] + "/" if "/" in op.rel else "."
            backfill[folder] = backfill.get(folder, 0) + 1
            continue
        name = _NAMES.get(op.coll, op.coll)
        event_type = {"mark_deleted": "file_deleted_recorded", "delete": f"{name}_deleted"}.get(
            op.action, f"{name}_{'inserted' if op.action == 'insert' else 'updated'}")
        after: object = op.after
        if full_payload and op.action in ("insert", "update"):
            after = _value(op)
        events.append({
            "event_type": event_type,
            "entity_key": op.entity,
            "path": op.rel,
            "before": op.before,
            "after": None if op.action in ("delete", "mark_deleted") else after,
            "created_at": now,
            "source": source,
        })
    for folder, count in backfill.items():
        events.append({
            "event_type": "backfill",
            "entity_key": f"{FILES}:{folder}",
            "path": folder,
            "before": None,
            "after": None,
            "count": count,
            "created_at": now,
            "source": source,
        })
    return events


def note_event(event_type: str, rel: str, source: str, now: datetime, **extra: object) -> dict:
    """A non-write event: refused wipe, restored file, bad input seen..."""
    doc = {"event_type": event_type, "entity_key": f"{FILES}:{rel}", "path": rel,
           "before": None, "after": None, "created_at": now, "source": source}
    doc.update(extra)
    return doc
