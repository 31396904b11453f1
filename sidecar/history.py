"""What ``memory_tombstones`` can add to a restore: the documents removed since
(``--include-deleted``) or the data as it stood at an instant (``--as-of``).

Tombstones are documents anyone with database access can write: one that does
not make sense is skipped and reported, never trusted.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .classify import hub_path
from .model import parse_iso
from .names import EPISODES, HUBS, SNAPSHOTS, TOMBSTONES
from .store import Store

def _aware(value: Any) -> datetime | None:
    return value if isinstance(value, datetime) and value.tzinfo is not None else None


class TombstoneUnusable(LookupError):
    """A chosen tombstone cannot make its file; ``tid`` names it in the report."""

    def __init__(self, message: str, tid: Any) -> None:
        super().__init__(message)
        self.tid = tid


@dataclass
class Chosen:
    """The tombstone that speaks for one removed document."""

    tid: Any
    deleted_at: datetime
    doc: dict  # projected: identifying fields only (``Tombstones.full`` reads the rest)
    path: Any = None


def latest_snapshot(store: Store) -> dict | None:
    """The newest snapshot document by its ``timestamp`` compared as an instant
    (the legacy file's naive UTC and Mentorix's ``+00:00`` alike); a timestamp
    that is not a time never wins over one that is."""
    best: tuple[Any, Any] | None = None
    for doc in store.find(SNAPSHOTS, {}, {"timestamp": 1}):
        when = parse_iso(doc.get("timestamp"))
        if best is None or (when is not None and (best[0] is None or when > best[0])):
            best = (when, doc.get("_id"))
    return store.find_one(SNAPSHOTS, {"_id": best[1]}) if best is not None else None


class Tombstones:
    """What ``memory_tombstones`` can add to a restore.

    ``include_deleted``: every removed document that is not live, in its last
    version (the tombstone deleted last). ``as_of``: the data as it stood at that
    instant, as far as tombstones can say: a tombstone deleted after ``as_of``
    held the document then (the one deleted first after it wins, over the live
    one too). Tombstones are documents anyone with database access can write:
    one that does not make sense is skipped and reported, never trusted."""

    # Only what identifies a tombstone's document: payloads and content are read
    # for the chosen ones only, when their file is produced.
    _PROJECTION = {name: 1 for name in (
        "coll", "doc_id", "path", "deleted_at", "reason", "doc._id", "doc.hub_type", "doc.item_key",
        "doc.run_id", "doc.kind", "doc.doc_id", "doc.encoding", "doc.format", "doc.blob_id",
        "doc.deleted_at", "doc.sha256", "doc.docs_hash")}

    def __init__(self, store: Store, include_deleted: bool = False, as_of: datetime | None = None,
                 skipped: list[dict[str, str]] | None = None) -> None:
        self.store = store
        self.as_of = as_of
        self.active = include_deleted or as_of is not None
        self.skipped = skipped if skipped is not None else []
        self.hubs: dict[str, dict[str, Chosen]] = {}
        self.episodes: dict[str, Chosen] = {}
        self.snapshots: dict[str, Chosen] = {}
        self.manifests: dict[str, Chosen] = {}
        if self.active:
            self._load()

    def skip(self, tid: Any, path: Any, reason: str) -> None:
        self.skipped.append({"path": str(path) if path is not None else "", "reason": reason, "id": str(tid)})

    def _choose(self, table: dict, key: Any, chosen: Chosen) -> None:
        held = table.get(key)
        if held is None:
            table[key] = chosen
        elif self.as_of is not None:  # the first removal after as_of: what was there at as_of
            if chosen.deleted_at < held.deleted_at:
                table[key] = chosen
        elif chosen.deleted_at > held.deleted_at:  # the last version the document had
            table[key] = chosen

    def _load(self) -> None:
        store = self.store
        files, blobs = store.files_name, store.blobs_name
        for ts in store.find(TOMBSTONES, {}, self._PROJECTION):
            tid, path = ts.get("_id"), ts.get("path")
            deleted_at = _aware(ts.get("deleted_at"))
            if deleted_at is None:
                self.skip(tid, path, "tombstone without a deleted_at time")
                continue
            if self.as_of is not None and deleted_at <= self.as_of:
                continue  # already gone at as_of
            coll, doc = ts.get("coll"), ts.get("doc")
            if not isinstance(doc, dict):
                self.skip(tid, path, "tombstone whose doc is not a document")
                continue
            chosen = Chosen(tid, deleted_at, doc, path)
            if coll == HUBS:
                hub_type, key = doc.get("hub_type"), doc.get("item_key")
                if not isinstance(hub_type, str) or not isinstance(key, str):
                    self.skip(tid, path, "hub tombstone without a hub_type and item_key")
                    continue
                self._choose(self.hubs.setdefault(hub_type, {}), key, chosen)
            elif coll == EPISODES:
                run_id = doc.get("run_id")
                if not isinstance(run_id, str) or not run_id:
                    self.skip(tid, path, "episode tombstone without a run_id")
                    continue
                self._choose(self.episodes, run_id, chosen)
            elif coll == SNAPSHOTS:
                if not isinstance(doc.get("_id"), str):
                    self.skip(tid, path, "snapshot tombstone without an _id")
                    continue
                self._choose(self.snapshots, doc["_id"], chosen)
            elif coll in (files, blobs):
                # A file's manifest as it was before it was deleted, or before a new
                # version stopped naming its GridFS blob.
                rel = doc.get("_id")
                if not isinstance(rel, str) or not rel:
                    self.skip(tid, path, "file tombstone without the file's path")
                    continue
                self._choose(self.manifests, rel, chosen)
            else:
                self.skip(tid, path, f"tombstone of an unknown collection {str(coll)[:60]!r}")

    def full(self, chosen: Chosen) -> dict:
        ts = self.store.find_one(TOMBSTONES, {"_id": chosen.tid})
        doc = ts.get("doc") if isinstance(ts, dict) else None
        if not isinstance(doc, dict):
            raise TombstoneUnusable("tombstone vanished or changed", chosen.tid)
        return doc

    def merge_hub(self, hub_type: str, docs: list[dict]) -> list[dict]:
        chosen = self.hubs.get(hub_type)
        if not chosen:
            return docs
        by_key = {str(d.get("item_key")): d for d in docs}
        for key, c in chosen.items():
            if key in by_key and self.as_of is None:
                continue  # live wins: the key came back
            doc = self.full(c)
            if "payload" not in doc:
                self.skip(c.tid, hub_path(hub_type), f"hub tombstone of {key!r} without a payload")
                continue
            by_key[key] = doc
        return list(by_key.values())

    def episode(self, run_id: str) -> dict | None:
        """The episode as restore should see it, or None."""
        c = self.episodes.get(run_id)
        if c is not None and self.as_of is not None:
            return self.full(c)
        live = self.store.find_one(EPISODES, {"run_id": run_id})
        if live is None and c is not None:
            return self.full(c)
        return live

    def snapshot(self, snapshot_id: Any) -> dict | None:
        c = self.snapshots.get(snapshot_id) if isinstance(snapshot_id, str) else None
        if c is not None and self.as_of is not None:
            return self.full(c)
        # The newest snapshot by instant, whoever wrote it (Mentorix's store inserts
        # its own), as Mentorix reads it at start-up.
        live = latest_snapshot(self.store)
        if live is not None:
            return live
        live = self.store.find_one(SNAPSHOTS, {"_id": snapshot_id})
        if live is None and c is not None:
            return self.full(c)
        return live


def usable(man: dict, tombs: Tombstones, include_deleted: bool) -> bool:
    """Did this manifest's file exist (at as_of / now)?"""
    deleted_at = man.get("deleted_at")
    if deleted_at is None:
        return True
    if tombs.as_of is not None:
        return _aware(deleted_at) is not None and deleted_at > tombs.as_of
    return include_deleted
