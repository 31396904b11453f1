"""Nothing is hard-deleted: the tombstones the write path leaves.

Before a delete is sent, the document it removes is copied to
``memory_tombstones`` (and a GridFS blob a manifest stops naming gets a
tombstone too; blobs are only ever deleted by ``gc_blobs``), and the
delete is addressed to exactly the document state its tombstone holds. A
removal whose tombstone MongoDB refused is not sent; a delete that removed
nothing (newer data arrived in between) is stale and its tombstone goes again.
Tombstones expire by TTL (``expire_at``: ``deleted_at`` + SIDECAR_TOMBSTONE_DAYS),
and ``gc_blobs`` then frees the GridFS blobs only they still named.

Part of ``Store``'s write path (``Store._write_batch``), I/O like it.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import bson
import gridfs
from pymongo import DeleteOne, ReplaceOne
from pymongo.errors import BulkWriteError

from .documents import natural_id, newer_than, version_guard
from .model import utcnow
from .names import EPISODES, FILES, HUBS, TOMBSTONES
from .state import Op

if TYPE_CHECKING:
    from .store import ApplyResult, Store

log = logging.getLogger("sidecar.store")

# The fields of a live document that any writer changes (ours: _sidecar; Mentorix:
# updated_at / updated_at_dt; a recorded deletion: deleted_at). A delete is sent only
# for the document state its tombstone holds: equal on all of them.
_FINGERPRINT = ("_sidecar", "updated_at", "updated_at_dt", "deleted_at", "sha256")



def _tombstone_id(coll: str, doc_id: Any, doc: dict, reason: str) -> bson.ObjectId:
    """Deterministic: the same removal of the same document state (a retry after
    MongoDB went away between tombstone and delete, a re-diff with a new op
    version) upserts the same tombstone instead of adding a second one."""
    digest = hashlib.sha256(bson.encode({"c": coll, "i": doc_id, "r": reason, "d": doc})).digest()
    return bson.ObjectId(digest[:12])


@dataclass
class _Removal:
    """A delete (or a GridFS blob replacement) about to be sent, with its tombstones."""

    op: Op
    request: Any = None  # the DeleteOne, addressed to exactly the state tombstoned
    tombstones: list[dict] = field(default_factory=list)
    real_id: Any = None  # the live document's _id


class Tombstones:
    """The store's tombstone writes (``store``: its collections and settings)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def live(self, logical: str, ops: list[Op]) -> dict[Any, dict]:
        """The live documents the ops address (``natural_key``), by op id."""
        coll = self.store.coll[logical]
        ids = {op.id for op in ops}
        if logical == HUBS:
            pairs = [op.id.split("/", 1) for op in ops]
            query = {"hub_type": {"$in": sorted({t for t, _ in pairs})},
                     "item_key": {"$in": sorted({k for _, k in pairs})}}
        elif logical == EPISODES:
            query = {"run_id": {"$in": sorted(ids)}}
        else:
            query = {"_id": {"$in": sorted(ids, key=str)}}
        out: dict[Any, dict] = {}
        for doc in coll.find(query):
            nid = natural_id(doc, logical)
            if nid in ids:
                out[nid] = doc
        return out

    def tombstone(self, coll: str, doc_id: Any, path: Any, doc: dict, reason: str, op: Op,
                   now: datetime) -> dict:
        days = self.store.config.sidecar_tombstone_days
        return {
            "_id": _tombstone_id(coll, doc_id, doc, reason),
            "coll": coll,
            "doc_id": doc_id,
            "path": path if isinstance(path, str) and path else None,
            "doc": doc,
            "deleted_at": now,
            "expire_at": now + timedelta(days=days),
            "days": days,
            "reason": reason,
            "version": op.version,
        }

    def plan_removals(self, logical: str, ops: list[Op], now: datetime,
                       result: ApplyResult) -> tuple[list[_Removal], list[_Removal]]:
        """Read what the batch's deletes remove and what its manifest writes replace
        (GridFS blobs), and build their tombstones. Returns (deletes to send,
        blob replacements). A delete whose document is gone already is done; one
        the version guard would refuse is stale: neither gets a tombstone."""
        coll = self.store.coll[logical]
        deletes = [op for op in ops if op.action == "delete"]
        deletions: list[_Removal] = []
        if deletes:
            live = self.live(logical, deletes)
            for op in deletes:
                doc = live.get(op.id)
                if doc is None:
                    result.applied.append(op)  # nothing left to remove (an earlier try did)
                    continue
                if newer_than(doc, op.version):
                    result.stale.append(op)  # MongoDB holds newer data: the guard refuses
                    continue
                exact = dict(version_guard(op))
                exact["_id"] = doc["_id"]  # the very document read (ours, or one Mentorix created)
                for name in _FINGERPRINT:
                    exact[name] = {"$eq": doc.get(name)}
                meta = doc.get("_sidecar")
                path = op.rel or (meta.get("path") if isinstance(meta, dict) else None)
                if logical == FILES:
                    path = op.id
                removal = _Removal(op, DeleteOne(exact), real_id=doc["_id"], tombstones=[
                    self.tombstone(coll.name, op.id, path, doc, "deleted", op, now)])
                if logical == FILES and doc.get("blob_id") is not None:
                    removal.tombstones.append(
                        self.tombstone(self.store.blobs_name, doc["blob_id"], path, doc, "deleted", op, now))
                deletions.append(removal)
        replaced: list[_Removal] = []
        updates = [op for op in ops if logical == FILES and op.action == "update" and op.doc is not None]
        if updates:
            old = {d["_id"]: d for d in coll.find({"_id": {"$in": [op.id for op in updates]},
                                                   "blob_id": {"$ne": None}})}
            for op in updates:
                doc = old.get(op.id)
                if doc is None or doc.get("blob_id") == op.doc.get("blob_id") or newer_than(doc, op.version):
                    continue
                replaced.append(_Removal(op, None, [self.tombstone(
                    self.store.blobs_name, doc["blob_id"], op.id, doc, "blob_replaced", op, now)]))
        return deletions, replaced

    def write(self, removals: list[_Removal], result: ApplyResult) -> list[_Removal]:
        """Upsert the tombstones (by their deterministic _id); the removals whose
        tombstones all landed, in order. The others fail and are not sent."""
        requests, owner = [], []
        for i, removal in enumerate(removals):
            for ts in removal.tombstones:
                requests.append(ReplaceOne({"_id": ts["_id"]}, ts, upsert=True))
                owner.append(i)
        if not requests:
            return removals
        bad: dict[int, str] = {}
        try:
            self.store.coll[TOMBSTONES].bulk_write(requests, ordered=False)
        except BulkWriteError as exc:
            details = exc.details
            self.store.check_write_concern(details)
            for err in details.get("writeErrors", []):
                bad[owner[err["index"]]] = f"tombstone refused: code {err.get('code')}"
        except bson.errors.InvalidDocument:
            if len(removals) > 1:  # find which, one by one
                out: list[_Removal] = []
                for removal in removals:
                    out.extend(self.write([removal], result))
                return out
            bad[0] = "tombstone too large or not encodable as BSON"
        if bad:
            self.drop([ts["_id"] for i in bad for ts in removals[i].tombstones])
        for i, why in bad.items():
            result.failed.append((removals[i].op, why))
        return [r for i, r in enumerate(removals) if i not in bad]

    def drop(self, ids: list[Any]) -> None:
        """Tombstones of removals that did not happen (refused, failed)."""
        if ids:
            self.store.coll[TOMBSTONES].delete_many({"_id": {"$in": ids}})

    def send_deletes(self, logical: str, removals: list[_Removal], result: ApplyResult) -> None:
        """The deletes, each addressed to the document state its tombstone holds.
        One that removed nothing was refused (newer data arrived in between): its
        tombstone goes again, the op is stale."""
        if not removals:
            return
        coll = self.store.coll[logical]
        failed: set[int] = set()
        try:
            removed = coll.bulk_write([r.request for r in removals], ordered=False).deleted_count
        except BulkWriteError as exc:
            details = exc.details
            self.store.check_write_concern(details)
            removed = int(details.get("nRemoved", 0))
            for err in details.get("writeErrors", []):
                failed.add(err["index"])
                removal = removals[err["index"]]
                result.failed.append((removal.op, f"code {err.get('code')}: {str(err.get('errmsg', ''))[:120]}"))
        sent = [r for i, r in enumerate(removals) if i not in failed]
        refused = len(sent) - removed
        present: set[Any] = set()
        if refused > 0:
            present = {d["_id"] for d in coll.find({"_id": {"$in": [r.real_id for r in sent]}}, {"_id": 1})}
        drop = [ts["_id"] for i in failed for ts in removals[i].tombstones]
        for removal in sent:
            if removal.real_id not in present:
                result.applied.append(removal.op)
                continue
            result.stale.append(removal.op)
            # Still there: refused, unless it was removed and re-created meanwhile,
            # which only a shortfall smaller than the survivors can tell. Then keep
            # every tombstone: one too many is better than a lost version.
            if len(present) <= refused:
                drop.extend(ts["_id"] for ts in removal.tombstones)
        self.drop(drop)

    def gc_blobs(self, grace: timedelta) -> int:
        """Delete the GridFS blobs that no live manifest (``blob_id``) and no
        tombstone names, uploaded (or last reused) more than ``grace`` ago. The
        write path never deletes a blob; tombstones expire by TTL, and so the
        blobs only they kept are freed by the next collection. Returns the count."""
        store = self.store
        keep: set[Any] = set()

        def hold(value: Any) -> None:
            try:
                keep.add(value)
            except TypeError:  # an unhashable id written by someone else: never ours
                pass
        for man in store.coll[FILES].find({"blob_id": {"$ne": None}}, {"blob_id": 1}):
            hold(man.get("blob_id"))
        for ts in store.coll[TOMBSTONES].find({"coll": {"$in": [store.files_name, store.blobs_name]}},
                                              {"coll": 1, "doc_id": 1, "doc.blob_id": 1}):
            if ts.get("coll") == store.blobs_name:
                hold(ts.get("doc_id"))
            doc = ts.get("doc")
            if isinstance(doc, dict):
                hold(doc.get("blob_id"))
        cutoff = utcnow() - grace
        deleted = 0
        for meta in store.db[f"{store.blobs_name}.files"].find({}, {"uploadDate": 1, "metadata.claimed_at": 1}):
            blob_id = meta["_id"]
            try:
                if blob_id in keep:
                    continue
            except TypeError:
                continue
            claimed = (meta.get("metadata") or {}).get("claimed_at") if isinstance(
                meta.get("metadata"), dict) else None
            stamps = [t for t in (meta.get("uploadDate"), claimed)
                      if isinstance(t, datetime) and t.tzinfo is not None]
            if not stamps or max(stamps) > cutoff:
                continue
            try:
                store.bucket.delete(blob_id)
                deleted += 1
            except gridfs.errors.NoFile:
                pass
        if deleted:
            log.info("gc: deleted %d GridFS blobs no manifest or tombstone names", deleted)
        return deleted
