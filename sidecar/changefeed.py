"""What the sync checkpoint asks MongoDB (sidecar/checkpoint.py): I/O only.

``ChangeFeed`` answers "what changed in this database after that point" with a
fence (a document it writes, then reads back out of the stream) so that "nothing"
is proven rather than read from an empty batch, reads the manifests' quick-check
records, and keeps the checkpoint document in ``memory_sidecar_meta``. It goes
through ``Store``'s client and its one error translation (``MongoUnavailable``); a
server that cannot tell raises ``ChangesUnknown``, which is never an outage.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

import bson
import gridfs
import pymongo
from pymongo.errors import OperationFailure

from .model import utcnow
from .names import EVENTS, FILES, META
from .store import LOAD_BATCH, Store


class ChangesUnknown(Exception):
    """The server cannot say what changed since a point of its change stream (no change
    streams, a history it no longer keeps, a point it does not take): not an outage."""


class Change(NamedTuple):
    """One change event: its collection, operation type and document ``_id``, and what it
    wrote (``_written``)."""

    coll: str
    op: str
    key: Any
    written: tuple[str, Any] | None = None


def _written(op: str, event: dict) -> tuple[str, Any] | None:
    """What a change wrote, in the terms a write the sidecar sent is compared in: ("doc",
    the document without ``_id``) for an insert or replace, ("set", the fields) for an
    update that only set fields; None for anything else (a delete, a drop, an unset)."""
    if op in ("insert", "replace"):
        doc = event.get("fullDocument")
        return ("doc", {k: v for k, v in doc.items() if k != "_id"}) if isinstance(doc, dict) else None
    if op == "update":
        desc = event.get("updateDescription")
        if not isinstance(desc, dict) or desc.get("removedFields") or desc.get("truncatedArrays"):
            return None
        fields = desc.get("updatedFields")
        return ("set", fields) if isinstance(fields, dict) else None
    return None


def describe(coll: str, op: str) -> str:
    """A change event as "<operation> on <collection>": never a document key or value."""
    return f"{op[:40]} on {coll[:120] or 'the database'}"


# Where a checkpoint's listing of the files it vouches for is kept (GridFS).
LISTING_BUCKET = "memory_sidecar_checkpoint"


class ChangeFeed:
    """The change stream and the checkpoint document of ``store``'s database."""

    CHECKPOINT_ID = "sync_checkpoint"
    FENCE_ID = "sync_fence"
    # How long the fence's own event may take to come back (since the last event) before "cannot tell".
    FENCE_WAIT_S = 10.0

    def __init__(self, store: Store) -> None:
        self.store = store
        self.listings = gridfs.GridFSBucket(store.db, bucket_name=LISTING_BUCKET)

    def _changes_pipeline(self) -> list[dict]:
        """The events the checkpoint counts: every collection of the database but the
        audit trail, and in memory_sidecar_meta only the fence (not the lease, not the
        checkpoint and its listing, not doctor's probe: bookkeeping). A dropped database or an
        invalidate has no ``ns.coll``: counted."""
        uncounted = [META, EVENTS, f"{LISTING_BUCKET}.files", f"{LISTING_BUCKET}.chunks"]
        return [{"$match": {"$or": [
            {"ns.coll": {"$nin": uncounted}},
            {"to.coll": {"$exists": True, "$nin": uncounted}},  # renamed onto a counted name
            {"ns.coll": META, "documentKey._id": self.FENCE_ID},
        ]}}]

    def change_point(self, since: Any = None) -> tuple[str | None, Any]:
        """MongoDB's change stream of this database after ``since``: (the first change
        to a counted collection, as "<operation> on <collection>" (never a document's
        key or value), or None; the point reached). ``since`` None: the point now,
        nothing asked. ``ChangesUnknown`` when the server cannot tell."""
        if since is None:
            with self._stream(None) as stream:
                return None, stream.resume_token
        for change in self.changes_until_fence(since):
            if change.op == "fence":
                return None, change.key
            return describe(change.coll, change.op), None
        raise AssertionError("unreachable: changes_until_fence ends with the fence")

    @contextmanager
    def _stream(self, since: Any) -> Iterator[Any]:
        with self.store._mongo_errors():
            try:
                with self.store.db.watch(self._changes_pipeline(), resume_after=since, max_await_time_ms=50,
                                        batch_size=1000) as stream:
                    yield stream
            except OperationFailure as exc:
                raise ChangesUnknown(f"change stream refused (code {exc.code})") from None
            except (NotImplementedError, pymongo.errors.InvalidOperation) as exc:
                raise ChangesUnknown(f"no change streams ({type(exc).__name__})") from None

    def changes_until_fence(self, since: Any) -> Iterator[Change]:
        """Every counted change after ``since`` (``Change``: its key and what it wrote are
        the caller's to compare, never to log), ending with ``Change("", "fence", the
        point just after the fence)``. ``ChangesUnknown`` when the server cannot tell.

        "No more" is proven, not inferred from an empty batch: a fence document
        (``FENCE_ID``, a fresh nonce) is written once the stream is open, and the stream
        read up to the fence's own event. Whatever was committed before the fence comes
        before it in the stream; what follows it is the next reader's to see."""
        nonce = bson.ObjectId()
        with self._stream(since) as stream:
            self.store.meta.replace_one({"_id": self.FENCE_ID}, {"nonce": nonce, "at": utcnow()}, upsert=True)
            deadline = time.monotonic() + self.FENCE_WAIT_S
            while time.monotonic() < deadline:
                event = stream.try_next()
                if event is None:
                    continue
                deadline = time.monotonic() + self.FENCE_WAIT_S  # still coming: not stuck
                if not isinstance(event, dict):
                    yield Change("", "an event of another shape", None)
                    continue
                ns = event.get("ns") if isinstance(event.get("ns"), dict) else {}
                coll = ns.get("coll") if isinstance(ns.get("coll"), str) else ""
                op = event.get("operationType") if isinstance(event.get("operationType"), str) else "?"
                key = event.get("documentKey")
                key = key.get("_id") if isinstance(key, dict) else None
                if coll == META and key == self.FENCE_ID and op in ("insert", "replace"):
                    full = event.get("fullDocument")
                    if isinstance(full, dict) and full.get("nonce") == nonce:
                        yield Change("", "fence", event.get("_id"))
                        return
                    continue  # an earlier reader's fence: bookkeeping, not a change
                yield Change(coll, op, key, _written(op, event))
        raise ChangesUnknown(f"the fence did not come back within {self.FENCE_WAIT_S:.0f} s")

    def server_clock(self) -> tuple[str | None, Any]:
        """(the replica set's name, the server's operation time), either None where not reported."""
        with self.store._mongo_errors():
            try:
                hello = self.store.client.admin.command("hello")
            except OperationFailure as exc:
                raise ChangesUnknown(f"hello refused (code {exc.code})") from None
        set_name = hello.get("setName")
        op_time = hello.get("operationTime")
        return (set_name if isinstance(set_name, str) else None,
                op_time if isinstance(op_time, bson.Timestamp) else None)

    @contextmanager
    def _bookkeeping(self, what: str, keep: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
        """A read or write of the checkpoint's own documents: MongoDB away is
        ``MongoUnavailable``; MongoDB answering "no" (a refused write, a foreign index or
        validator, a GridFS error) is ``ChangesUnknown``: no checkpoint, never an outage."""
        with self.store._mongo_errors(keep=keep):
            try:
                yield
            except keep:
                raise
            except (OperationFailure, gridfs.errors.GridFSError) as exc:
                code = getattr(exc, "code", None)
                raise ChangesUnknown(f"{what} refused ({type(exc).__name__}"
                                     f"{f', code {code}' if code is not None else ''})") from None

    def records(self) -> Iterator[tuple[Any, bool, Any]]:
        """Every manifest's ``_id``, whether it is marked deleted, and its quick-check
        record (sidecar/quick.py); types not trusted. The cursor is closed when the
        caller stops early."""
        with self._bookkeeping("reading the manifests' records"):
            with self.store.coll[FILES].find({}, {"deleted_at": 1, "_sidecar.stat": 1}).batch_size(
                    LOAD_BATCH) as cursor:
                for doc in cursor:
                    meta = doc.get("_sidecar")
                    yield doc.get("_id"), doc.get("deleted_at") is not None, (
                        meta.get("stat") if isinstance(meta, dict) else None)

    def read_checkpoint(self) -> Any:
        with self._bookkeeping("reading the checkpoint"):
            return self.store.meta.find_one({"_id": self.CHECKPOINT_ID})

    def write_checkpoint(self, doc: dict) -> None:
        with self._bookkeeping("writing the checkpoint"):
            self.store.meta.replace_one({"_id": self.CHECKPOINT_ID}, doc, upsert=True)

    def put_listing(self, data: bytes) -> Any:
        with self._bookkeeping("writing the listing"):
            return self.listings.upload_from_stream("sync_checkpoint_listing", data)

    def get_listing(self, listing_id: Any) -> bytes | None:
        """The listing's bytes, or None when there is none by that id or it cannot be read
        whole (a chunk missing or of another size: someone else's, or a kill mid-upload)."""
        unusable = (gridfs.errors.NoFile, gridfs.errors.CorruptGridFile)
        with self._bookkeeping("reading the listing", keep=unusable):
            try:
                with self.listings.open_download_stream(listing_id) as out:
                    return out.read()
            except unusable:
                return None

    def drop_listings(self, keep: Any) -> None:
        """Every listing but ``keep`` (the one the checkpoint names now)."""
        with self._bookkeeping("dropping old listings"):
            for old in self.listings.find({"_id": {"$ne": keep}}):
                try:
                    self.listings.delete(old._id)
                except gridfs.errors.NoFile:
                    pass  # gone meanwhile
