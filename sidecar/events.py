"""The ``memory_events`` audit trail, built from acknowledged ops.

Before/after are content hashes unless ``SIDECAR_EVENTS_PAYLOAD=full``. A bulk
first load is one ``backfill`` event per top-level folder (with a count) rather
than one event per entry or file: the entries themselves are the record, and doubling every
write of a backfill would buy nothing.
"""

from __future__ import annotations

import contextlib
import time
from datetime import datetime
from typing import Any

from .names import EPISODES, FILES, HUBS, SNAPSHOTS
from .source import printable
from .state import Op
from .store import MongoUnavailable

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
        if op.action in ("setpos", "track", "stat"):
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
    rel = printable(rel)  # a name that is not valid UTF-8 cannot go into a BSON string
    doc = {"event_type": event_type, "entity_key": f"{FILES}:{rel}", "path": rel,
           "before": None, "after": None, "created_at": now, "source": source}
    doc.update(extra)
    return doc


# Events kept while MongoDB is away (the oldest go first past this, counted as
# ``events_dropped``): the documents they describe are in MongoDB or still on disk.
MAX_UNSENT_EVENTS = 10_000
# Under steady load the writer's events are sent in batches of this many, or
# when the oldest is this old, or as soon as the writer has nothing queued: an
# insert of 5-8 events cost the server 2-3x more per event than one of 50
# (~7 % of a core at 200 writes/s), all of it on the writer's critical path.
EVENTS_BATCH = 50
EVENTS_MAX_AGE = 0.5


class EventOutbox:
    """``memory_events`` on their way to MongoDB: sent at once, or (``defer``) held
    for a batch while the writer has more work queued; kept across an outage.

    ``send`` and ``flush`` raise ``MongoUnavailable`` with the events kept (the
    newest ``MAX_UNSENT_EVENTS``), to go first on the next successful send.
    ``status`` (optional) shows the last events and counts a drop; ``writing`` (a
    ``Pending.writing``, optional) times the insert as a MongoDB write under way.
    One caller at a time (the writer's lock)."""

    def __init__(self, store: Any, status: Any = None, writing: Any = None) -> None:
        self.store = store
        self.status = status
        self._writing = writing
        self._unsent: list[dict] = []
        self._since = 0.0  # monotonic time the oldest kept event was added

    def __len__(self) -> int:
        return len(self._unsent)

    def send(self, events: list[dict], defer: bool = False) -> None:
        if events and self.status is not None:
            self.status.saw_events(events)
        if events and not self._unsent:
            self._since = time.monotonic()
        pending, self._unsent = self._unsent + events, []
        if not pending:
            return
        if defer and len(pending) < EVENTS_BATCH and time.monotonic() - self._since < EVENTS_MAX_AGE:
            self._unsent = pending
            return
        try:
            with self._writing() if self._writing is not None else contextlib.nullcontext(), self._timed():
                self.store.record_events(pending)
        except MongoUnavailable:
            self._unsent = pending[-MAX_UNSENT_EVENTS:]
            if len(pending) > MAX_UNSENT_EVENTS and self.status is not None:
                self.status.error("events_dropped")
            raise

    def flush(self) -> None:
        """Send what is kept now."""
        if self._unsent:
            self.send([])

    def _timed(self):
        if self.status is None:
            return contextlib.nullcontext()
        return self.status.timers.time("events")
