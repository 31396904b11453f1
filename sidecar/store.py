"""Stage 5: the only module that talks to MongoDB (pymongo).

Writes are unordered bulk writes in bounded batches. Every replace/delete is
guarded by the source version (``_sidecar.version`` not newer than ours) and
addressed by ``_id``, so a stale op can never overwrite newer data: when the
guard fails, the upsert collides on ``_id`` (E11000) and the op is counted as
refused. Nothing is hard-deleted: a delete is sent only after the document it
removes is in ``memory_tombstones``, and only for exactly that version; GridFS
blobs are only ever deleted by ``gc_blobs``. Errors that mean "MongoDB is away"
are raised as ``MongoUnavailable`` so callers can retry with backoff; errors that
belong to one document are returned per op so one bad document never blocks the
rest.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import bson
import gridfs
import pymongo
from pymongo import DeleteOne, InsertOne, ReplaceOne, UpdateOne
from pymongo.errors import BulkWriteError, OperationFailure, PyMongoError

from .classify import Kind
from .config import Config
from .diff import FILES, FileState, HubState, MirrorState, Op, apply_to_state, pack_hash
from .model import EPISODES, EVENTS, HUBS, META, SNAPSHOTS, TOMBSTONES, entry_value, file_fields, parse_iso, utcnow
from .parse import intern_format, value_hash
from .timers import Timers

log = logging.getLogger("sidecar.store")

DUPLICATE_KEY = 11000
# Documents per cursor batch when loading the state: a server's default batch
# (up to 16 MB of BSON) decodes into several times that in Python objects at once.
LOAD_BATCH = 500
# gc_blobs leaves a blob alone for this long after it was uploaded (or reused):
# its manifest may still be on its way (uploaded first, manifest written after).
BLOB_GC_GRACE = timedelta(hours=1)
# The fields of a live document that any writer changes (ours: _sidecar; Mentorix:
# updated_at / updated_at_dt; a recorded deletion: deleted_at). A delete is sent only
# for the document state its tombstone holds: equal on all of them.
_FINGERPRINT = ("_sidecar", "updated_at", "updated_at_dt", "deleted_at", "sha256")


class MongoUnavailable(Exception):
    """MongoDB could not be reached or did not acknowledge; safe to retry later."""


class MongoConfigError(Exception):
    """The MongoDB URL or options are malformed: retrying will not help."""


@dataclass
class ApplyResult:
    applied: list[Op] = field(default_factory=list)
    stale: list[Op] = field(default_factory=list)
    failed: list[tuple[Op, str]] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for op in self.applied:
            key = f"{op.coll}.{op.action}"
            out[key] = out.get(key, 0) + 1
        return out


def _natural_key(op: Op) -> dict:
    """Where a hub entry or episode is whoever created it: its natural key
    (``hub_type``+``item_key``, ``run_id``: the unique indexes Mentorix's store
    shares), so a document that Mentorix or its backfill script created (an
    ObjectId ``_id``, no sidecar metadata) is the one updated, never duplicated.
    Used only when the ``_id`` route found nothing: filtering by ``_id`` is what
    the servers we measured do fastest (by natural key a flush took 100x longer)."""
    if op.coll == HUBS:
        hub_type, key = op.id.split("/", 1)
        return {"hub_type": hub_type, "item_key": key}
    if op.coll == EPISODES:
        return {"run_id": op.id}
    return {"_id": op.id}


def _natural_id(doc: dict, logical: str) -> Any:
    """A live document's op id (see ``_key``)."""
    if logical == HUBS:
        return f"{doc.get('hub_type')}/{doc.get('item_key')}"
    if logical == EPISODES:
        return doc.get("run_id")
    return doc.get("_id")


def _guard(op: Op, natural: bool = False) -> dict:
    """The version guard on every write: MongoDB's copy must not be newer than the
    version (the order of the sidecar's reads, sidecar/clock.py) this op carries."""
    where = _natural_key(op) if natural else {"_id": op.id}
    return {**where, "_sidecar.version": {"$not": {"$gt": op.version}}}


def _content_sha(doc: dict) -> bytes | str | None:
    """A generic file's content hash as stored (see FilePlan.content_hash), packed
    the way the mirror state keeps it (``diff.pack_hash``)."""
    if doc.get("raw") is not None:
        return hashlib.sha256(bytes(doc["raw"])).digest()
    if doc.get("encoding") == "json":
        return _digest_of(doc.get("content"))
    if doc.get("encoding") == "gridfs":
        return pack_hash(doc.get("sha256"))  # the blob is stored with its sha256 and size
    return None


def _digest_of(value: Any) -> bytes:
    """``value_hash`` (what plans and ``_sidecar.hash`` use, hex) as the state's digest."""
    return bytes.fromhex(value_hash(value))


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _body(doc: dict) -> dict:
    return {k: v for k, v in doc.items() if k != "_id"}


def _newer_than(doc: dict, version: int) -> bool:
    """What the version guard (``_guard``) would refuse: a numeric ``_sidecar.version``
    above ours (MongoDB compares numbers with numbers only)."""
    meta = doc.get("_sidecar")
    held = meta.get("version") if isinstance(meta, dict) else None
    return isinstance(held, (int, float)) and not isinstance(held, bool) and held > version


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


class Store:
    def __init__(self, config: Config, client: pymongo.MongoClient | None = None,
                 timers: Timers | None = None) -> None:
        self.config = config
        self.timers = timers  # per-collection bulk-write time (sidecar/timers.py), when given
        try:
            self.client = client or self._connect(config)
        except (pymongo.errors.ConfigurationError, ValueError, TypeError) as exc:
            # The message may quote the URL: scrub it, and drop the chained traceback.
            raise MongoConfigError(config.scrub(f"invalid MONGODB_URL or MongoDB options: {exc}")) from None
        self.db = self.client[config.mongodb_db_name]
        self.files_name = config.sidecar_files_collection
        self.coll = {
            HUBS: self.db[HUBS],
            SNAPSHOTS: self.db[SNAPSHOTS],
            EPISODES: self.db[EPISODES],
            EVENTS: self.db[EVENTS],
            FILES: self.db[self.files_name],
            TOMBSTONES: self.db[TOMBSTONES],
        }
        self.meta = self.db[META]  # not in self.coll: no indexes, no state
        self.foreign_skipped: list[dict[str, str]] = []  # documents the last load could not use
        self.blobs_name = f"{self.files_name}_blobs"
        self.bucket = gridfs.GridFSBucket(self.db, bucket_name=self.blobs_name)

    @staticmethod
    def _connect(config: Config) -> pymongo.MongoClient:
        return pymongo.MongoClient(
            config.url,
            serverSelectionTimeoutMS=config.sidecar_server_selection_timeout_ms,
            connectTimeoutMS=config.sidecar_server_selection_timeout_ms,
            w=config.write_concern_w,
            wtimeoutMS=config.sidecar_write_timeout_ms or None,
            retryWrites=True,
            retryReads=True,
            tz_aware=True,
            appname="memory-sidecar",
        )

    # --- connectivity ---------------------------------------------------------
    def _unavailable(self, exc: BaseException) -> MongoUnavailable:
        # pymongo appends the whole topology description; the first clause says it.
        text = str(exc).split(", Timeout:")[0].split(" (configured timeouts")[0]
        return MongoUnavailable(self.config.scrub(f"{type(exc).__name__}: {text}")[:400])

    def ping(self) -> None:
        try:
            self.client.admin.command("ping")
        except PyMongoError as exc:
            raise self._unavailable(exc) from None

    def identity(self) -> tuple[tuple[str, str], ...]:
        """Which incarnation of the mirrored collections this is: (name, uuid) of each
        that exists. ``mongorestore --drop`` (or any drop and re-create) gives them new
        UUIDs, so a restore from a dump into a running server shows here. Empty where
        the server does not report UUIDs (then nothing can be told)."""
        names = [FILES, HUBS, EPISODES, SNAPSHOTS]
        try:
            infos = list(self.db.list_collections(filter={"name": {"$in": names}}))
        except OperationFailure:
            return ()  # refused (e.g. a role without listCollections): cannot be told, not an outage
        except PyMongoError as exc:
            raise self._unavailable(exc) from None
        out = []
        for info in infos:
            uuid = (info.get("info") or {}).get("uuid") if isinstance(info, dict) else None
            name = info.get("name") if isinstance(info, dict) else None
            if isinstance(name, str) and uuid is not None:
                out.append((name, str(uuid)))
        return tuple(sorted(out))

    def close(self) -> None:
        self.client.close()

    # --- indexes ----------------------------------------------------------------
    def index_plan(self) -> list[tuple[str, list[tuple[str, int]], dict[str, Any]]]:
        """(collection, keys, options). Names match the Mentorix Mongo store's, so
        whichever side creates them first, the other's create is a no-op."""
        plan: list[tuple[str, list[tuple[str, int]], dict[str, Any]]] = [
            (HUBS, [("hub_type", 1), ("item_key", 1)], {"name": "ux_hub_type_item_key", "unique": True}),
            (HUBS, [("learner_id", 1)], {"name": "ix_hubs_learner_id"}),
            (SNAPSHOTS, [("timestamp", -1)], {"name": "ix_snapshots_timestamp_desc"}),
            (EPISODES, [("run_id", 1)], {"name": "ux_episodes_run_id", "unique": True}),
            (EPISODES, [("updated_at", -1)], {"name": "ix_episodes_updated_at_desc"}),
            (EVENTS, [("entity_key", 1)], {"name": "ix_events_entity_key"}),
            (EVENTS, [("created_at", -1)], {"name": "ix_events_created_at_desc"}),
            (FILES, [("kind", 1)], {"name": "ix_files_kind"}),
            # Always on: a tombstone carries its own expiry (deleted_at + SIDECAR_TOMBSTONE_DAYS).
            (TOMBSTONES, [("expire_at", 1)], {"name": "ix_tombstones_expire_at_ttl", "expireAfterSeconds": 0}),
            (TOMBSTONES, [("coll", 1), ("doc_id", 1)], {"name": "ix_tombstones_coll_doc_id"}),
            (TOMBSTONES, [("deleted_at", -1)], {"name": "ix_tombstones_deleted_at_desc"}),
        ]
        if self.config.mongodb_snapshots_ttl_days > 0:
            plan.append((SNAPSHOTS, [("timestamp_dt", -1)], {
                "name": "ix_snapshots_timestamp_dt_ttl",
                "expireAfterSeconds": self.config.mongodb_snapshots_ttl_days * 86400}))
        if self.config.mongodb_episodes_ttl_days > 0:
            plan.append((EPISODES, [("updated_at_dt", -1)], {
                "name": "ix_episodes_updated_at_dt_ttl",
                "expireAfterSeconds": self.config.mongodb_episodes_ttl_days * 86400}))
        if self.config.sidecar_events_ttl_days > 0:
            # Ascending, so its key differs from ix_events_created_at_desc's (a server
            # refuses two indexes on one key pattern that differ only in options).
            plan.append((EVENTS, [("created_at", 1)], {
                "name": "ix_events_created_at_ttl",
                "expireAfterSeconds": self.config.sidecar_events_ttl_days * 86400}))
        return plan

    # The TTL indexes a setting turns on (> 0 days) and off (0: dropped).
    TTL_INDEXES = {SNAPSHOTS: "ix_snapshots_timestamp_dt_ttl", EPISODES: "ix_episodes_updated_at_dt_ttl",
                   EVENTS: "ix_events_created_at_ttl"}

    def ensure_indexes(self) -> dict[str, list[dict]]:
        """Create what is missing, fix a changed TTL, drop a TTL that was turned off."""
        try:
            wanted_ttl = set()
            for logical, keys, opts in self.index_plan():
                coll = self.coll[logical]
                if "expireAfterSeconds" in opts:
                    wanted_ttl.add(opts["name"])
                try:
                    coll.create_index(keys, **opts)
                except OperationFailure as exc:
                    if "expireAfterSeconds" in opts and exc.code in (85, 86):
                        self.db.command("collMod", coll.name, index={
                            "name": opts["name"], "expireAfterSeconds": opts["expireAfterSeconds"]})
                    else:
                        raise
            for logical, name in self.TTL_INDEXES.items():
                if name not in wanted_ttl and name in self.coll[logical].index_information():
                    self.coll[logical].drop_index(name)
            self._redate_tombstones()
            return self.list_indexes()
        except PyMongoError as exc:
            raise self._unavailable(exc) from None

    def _redate_tombstones(self) -> None:
        """SIDECAR_TOMBSTONE_DAYS changed: tombstones written with other days get
        ``expire_at = deleted_at + days`` (the TTL index itself always says 0)."""
        days = self.config.sidecar_tombstone_days
        coll = self.coll[TOMBSTONES]
        requests = []
        for doc in coll.find({"days": {"$ne": days}}, {"deleted_at": 1}):
            deleted_at = doc.get("deleted_at")
            if isinstance(deleted_at, datetime):
                requests.append(UpdateOne({"_id": doc["_id"]}, {"$set": {
                    "days": days, "expire_at": deleted_at + timedelta(days=days)}}))
            if len(requests) >= self.config.sidecar_batch_size:
                coll.bulk_write(requests, ordered=False)
                requests = []
        if requests:
            coll.bulk_write(requests, ordered=False)

    def list_indexes(self) -> dict[str, list[dict]]:
        out = {}
        for logical, coll in self.coll.items():
            rows = []
            for spec in coll.list_indexes():
                row = {"name": spec["name"], "key": [[k, v] for k, v in spec["key"].items()]}
                for opt in ("unique", "expireAfterSeconds"):
                    if opt in spec:
                        row[opt] = spec[opt]
                rows.append(row)
            out[coll.name] = rows
        return out

    # --- reading ------------------------------------------------------------------
    def load_state(self) -> MirrorState:
        """What MongoDB holds, as hashes: the baseline every diff starts from.

        Hashes are computed from the stored values themselves (payloads, file
        fields, content), not taken from ``_sidecar`` bookkeeping, so a document
        changed behind the sidecar's back is seen as different (and repaired by
        the next sync). They are kept as 32-byte digests (``diff.pack_hash``).
        """
        state = MirrorState()
        # An episode file's manifest names its run_id, already a key of
        # state.episodes, and usually has the same version: keep one object for
        # each (at 50k files, 35k duplicate strs and ints: ~3.6 MB).
        run_ids: dict[str, str] = {}
        top = 0

        def seen(version: Any) -> None:
            nonlocal top
            if isinstance(version, int) and not isinstance(version, bool) and version > top:
                top = version
        for row in self.iter_state():
            coll = row[0]
            if coll == HUBS:
                _, hub_type, key, digest, pos, version = row
                hub = state.hubs.get(hub_type)
                if hub is None:
                    hub = state.hubs[hub_type] = {}
                hub[key] = HubState(digest, pos, version)
                seen(version)
            elif coll == EPISODES:
                _, run_id, digest, version = row
                state.episodes[run_id] = (digest, version)
                seen(version)
                run_ids[run_id] = run_id
            elif coll == SNAPSHOTS:
                state.snapshots[row[1]] = (row[2], row[3])
            else:
                rel, fs = row[1], row[2]
                if fs.doc_id is not None and fs.kind == Kind.EPISODE.value:
                    fs.doc_id = run_ids.get(fs.doc_id, fs.doc_id)
                    episode = state.episodes.get(fs.doc_id)
                    if episode is not None and episode[1] == fs.version:
                        fs.version = episode[1]
                state.files[rel] = fs
                seen(fs.version)
        state.max_version = top
        return state

    def iter_state(self) -> Iterator[tuple]:
        """What ``load_state`` reads, one document at a time (hubs, episodes,
        snapshots, files), so a comparison (``parity.compute``) need not hold a
        second copy of the state. Rows, hashes packed (``diff.pack_hash``):
        ``(HUBS, hub_type, item_key, digest, pos, version)``,
        ``(EPISODES, run_id, digest, version)``, ``(SNAPSHOTS, snapshot_id, digest)``,
        ``(FILES, rel, FileState)``.

        Whole documents are read: on the servers we measured, a projection costs
        more than it saves. Each cursor batch (``LOAD_BATCH``) is decoded at once
        and dropped as soon as it is consumed.
        """
        self.foreign_skipped = []
        try:
            for logical in (HUBS, EPISODES, SNAPSHOTS, FILES):
                for doc in self.coll[logical].find({}).batch_size(LOAD_BATCH):
                    try:
                        row = self._row(logical, doc)
                    except (TypeError, ValueError, KeyError, AttributeError, RecursionError) as exc:
                        # Written by someone else, in a shape we cannot use: skipped and
                        # reported (reason, _id), never a crash at start-up.
                        self._foreign(logical, doc, f"{type(exc).__name__}: unusable document")
                        continue
                    if row is not None:
                        yield row
        except PyMongoError as exc:
            raise self._unavailable(exc) from None

    def _foreign(self, logical: str, doc: Any, reason: str) -> None:
        doc_id = doc.get("_id") if isinstance(doc, dict) else None
        if len(self.foreign_skipped) < 200:
            self.foreign_skipped.append({"collection": self.coll[logical].name, "_id": repr(doc_id)[:120],
                                         "reason": reason})
        log.warning("skipped a document of %s (_id %s): %s", self.coll[logical].name, repr(doc_id)[:120], reason)

    def _row(self, logical: str, doc: dict) -> tuple | None:
        meta = doc.get("_sidecar")
        meta = meta if isinstance(meta, dict) else {}
        version = _int_or_none(meta.get("version"))
        if logical == HUBS:
            hub_type, key = doc.get("hub_type"), doc.get("item_key")
            if not isinstance(hub_type, str) or not isinstance(key, str):
                self._foreign(logical, doc, "hub_type/item_key not strings")
                return None
            # entry_value: the payload, or the value kept raw (BSON cannot hold it)
            return (HUBS, hub_type, key, _digest_of(entry_value(doc)), _int_or_none(meta.get("pos")), version)
        if logical == EPISODES:
            run_id = doc.get("run_id")
            if not isinstance(run_id, str):
                self._foreign(logical, doc, "run_id not a string")
                return None
            return (EPISODES, run_id, _digest_of(file_fields(doc)), version)
        if logical == SNAPSHOTS:
            # Keyed by content, whoever wrote it (our _id is the content hash;
            # Mentorix's store and backfill use their own): the same snapshot
            # is never stored twice, and the newest by instant is the current one.
            digest = _digest_of(file_fields(doc))
            return (SNAPSHOTS, digest.hex(), digest, parse_iso(doc.get("timestamp")))
        rel = doc.get("_id")
        kind = doc.get("kind", "other")
        doc_id = doc.get("doc_id") or doc.get("hub_type")
        if not isinstance(rel, str) or not isinstance(kind, str) or not isinstance(doc_id, (str, type(None))):
            self._foreign(logical, doc, "manifest _id/kind/doc_id of the wrong type")
            return None
        fmt = doc.get("format")
        return (FILES, rel, FileState(
            doc.get("sha256"), version, kind, doc.get("deleted_at") is not None, doc_id,
            intern_format(fmt if isinstance(fmt, dict) else None), _content_sha(doc)))

    def find(self, logical: str, query: dict | None = None, projection: dict | None = None,
             sort: list | None = None) -> Iterator[dict]:
        try:
            cursor = self.coll[logical].find(query or {}, projection)
            if sort:
                cursor = cursor.sort(sort)
            yield from cursor
        except PyMongoError as exc:
            raise self._unavailable(exc) from None

    def find_one(self, logical: str, query: dict, **kw: Any) -> dict | None:
        try:
            return self.coll[logical].find_one(query, **kw)
        except PyMongoError as exc:
            raise self._unavailable(exc) from None

    def count(self, logical: str, query: dict | None = None) -> int:
        try:
            return self.coll[logical].count_documents(query or {})
        except PyMongoError as exc:
            raise self._unavailable(exc) from None

    def blob_sha256(self, blob_id: Any) -> str | None:
        """The sha256 recorded with a GridFS blob, without downloading it."""
        try:
            meta = self.db[f"{self.files_name}_blobs.files"].find_one({"_id": blob_id}, {"metadata": 1})
        except PyMongoError as exc:
            raise self._unavailable(exc) from None
        return ((meta or {}).get("metadata") or {}).get("sha256")

    def read_blob(self, blob_id: Any) -> bytes:
        try:
            return self.bucket.open_download_stream(blob_id).read()
        except PyMongoError as exc:
            raise self._unavailable(exc) from None

    # --- writing --------------------------------------------------------------------
    def _request(self, op: Op, now: datetime) -> Any:
        if op.action == "insert":
            return InsertOne(op.doc)
        if op.action == "update":
            return ReplaceOne(_guard(op), _body(op.doc), upsert=True)
        if op.action == "setpos":
            return UpdateOne(_guard(op), {"$set": {"_sidecar.pos": op.pos}})
        if op.action == "delete":
            return DeleteOne(_guard(op))
        if op.action == "mark_deleted":
            return UpdateOne({"_id": op.id}, {"$set": {"deleted_at": now}})
        raise ValueError(op.action)

    def _upload_blobs(self, ops: list[Op], now: datetime) -> None:
        for op in ops:
            if op.blob is None or op.doc is None:
                continue
            blob_id = f"{op.id}@{op.after}"
            if self.blob_sha256(blob_id) is None:
                self.bucket.upload_from_stream_with_id(
                    blob_id, op.id, op.blob, metadata={"sha256": op.after, "path": op.id})
            else:
                # Reused (the same content again): gc_blobs must not take it before
                # the manifest naming it lands.
                self.db[f"{self.blobs_name}.files"].update_one(
                    {"_id": blob_id}, {"$set": {"metadata.claimed_at": now}})
            op.doc["blob_id"] = blob_id

    # --- tombstones -------------------------------------------------------------------
    def _live(self, logical: str, ops: list[Op]) -> dict[Any, dict]:
        """The live documents the ops address (``_key``), by op id."""
        coll = self.coll[logical]
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
            nid = _natural_id(doc, logical)
            if nid in ids:
                out[nid] = doc
        return out

    def _tombstone(self, coll: str, doc_id: Any, path: Any, doc: dict, reason: str, op: Op,
                   now: datetime) -> dict:
        days = self.config.sidecar_tombstone_days
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

    def _plan_removals(self, logical: str, ops: list[Op], now: datetime,
                       result: ApplyResult) -> tuple[list[_Removal], list[_Removal]]:
        """Read what the batch's deletes remove and what its manifest writes replace
        (GridFS blobs), and build their tombstones. Returns (deletes to send,
        blob replacements). A delete whose document is gone already is done; one
        the version guard would refuse is stale: neither gets a tombstone."""
        coll = self.coll[logical]
        deletes = [op for op in ops if op.action == "delete"]
        deletions: list[_Removal] = []
        if deletes:
            live = self._live(logical, deletes)
            for op in deletes:
                doc = live.get(op.id)
                if doc is None:
                    result.applied.append(op)  # nothing left to remove (an earlier try did)
                    continue
                if _newer_than(doc, op.version):
                    result.stale.append(op)  # MongoDB holds newer data: the guard refuses
                    continue
                exact = dict(_guard(op))
                exact["_id"] = doc["_id"]  # the very document read (ours, or one Mentorix created)
                for name in _FINGERPRINT:
                    exact[name] = {"$eq": doc.get(name)}
                meta = doc.get("_sidecar")
                path = op.rel or (meta.get("path") if isinstance(meta, dict) else None)
                if logical == FILES:
                    path = op.id
                removal = _Removal(op, DeleteOne(exact), real_id=doc["_id"], tombstones=[
                    self._tombstone(coll.name, op.id, path, doc, "deleted", op, now)])
                if logical == FILES and doc.get("blob_id") is not None:
                    removal.tombstones.append(
                        self._tombstone(self.blobs_name, doc["blob_id"], path, doc, "deleted", op, now))
                deletions.append(removal)
        replaced: list[_Removal] = []
        updates = [op for op in ops if logical == FILES and op.action == "update" and op.doc is not None]
        if updates:
            old = {d["_id"]: d for d in coll.find({"_id": {"$in": [op.id for op in updates]},
                                                   "blob_id": {"$ne": None}})}
            for op in updates:
                doc = old.get(op.id)
                if doc is None or doc.get("blob_id") == op.doc.get("blob_id") or _newer_than(doc, op.version):
                    continue
                replaced.append(_Removal(op, None, [self._tombstone(
                    self.blobs_name, doc["blob_id"], op.id, doc, "blob_replaced", op, now)]))
        return deletions, replaced

    def _write_tombstones(self, removals: list[_Removal], result: ApplyResult) -> list[_Removal]:
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
            self.coll[TOMBSTONES].bulk_write(requests, ordered=False)
        except BulkWriteError as exc:
            details = exc.details
            if details.get("writeConcernErrors"):
                raise MongoUnavailable("write concern not satisfied: " + self.config.scrub(
                    str(details["writeConcernErrors"][0].get("errmsg", ""))))
            for err in details.get("writeErrors", []):
                bad[owner[err["index"]]] = f"tombstone refused: code {err.get('code')}"
        except bson.errors.InvalidDocument:
            if len(removals) > 1:  # find which, one by one
                out: list[_Removal] = []
                for removal in removals:
                    out.extend(self._write_tombstones([removal], result))
                return out
            bad[0] = "tombstone too large or not encodable as BSON"
        if bad:
            self._drop_tombstones([ts["_id"] for i in bad for ts in removals[i].tombstones])
        for i, why in bad.items():
            result.failed.append((removals[i].op, why))
        return [r for i, r in enumerate(removals) if i not in bad]

    def _drop_tombstones(self, ids: list[Any]) -> None:
        """Tombstones of removals that did not happen (refused, failed)."""
        if ids:
            self.coll[TOMBSTONES].delete_many({"_id": {"$in": ids}})

    def _send_deletes(self, logical: str, removals: list[_Removal], result: ApplyResult) -> None:
        """The deletes, each addressed to the document state its tombstone holds.
        One that removed nothing was refused (newer data arrived in between): its
        tombstone goes again, the op is stale."""
        if not removals:
            return
        coll = self.coll[logical]
        failed: set[int] = set()
        try:
            removed = coll.bulk_write([r.request for r in removals], ordered=False).deleted_count
        except BulkWriteError as exc:
            details = exc.details
            if details.get("writeConcernErrors"):
                raise MongoUnavailable("write concern not satisfied: " + self.config.scrub(
                    str(details["writeConcernErrors"][0].get("errmsg", ""))))
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
        self._drop_tombstones(drop)

    def gc_blobs(self, grace: timedelta = BLOB_GC_GRACE) -> int:
        """Delete the GridFS blobs that no live manifest (``blob_id``) and no
        tombstone names, uploaded (or last reused) more than ``grace`` ago. The
        write path never deletes a blob; tombstones expire by TTL, and so the
        blobs only they kept are freed by the next collection. Returns the count."""
        try:
            keep: set[Any] = set()

            def hold(value: Any) -> None:
                try:
                    keep.add(value)
                except TypeError:  # an unhashable id written by someone else: never ours
                    pass
            for man in self.coll[FILES].find({"blob_id": {"$ne": None}}, {"blob_id": 1}):
                hold(man.get("blob_id"))
            for ts in self.coll[TOMBSTONES].find({"coll": {"$in": [self.files_name, self.blobs_name]}},
                                                 {"coll": 1, "doc_id": 1, "doc.blob_id": 1}):
                if ts.get("coll") == self.blobs_name:
                    hold(ts.get("doc_id"))
                doc = ts.get("doc")
                if isinstance(doc, dict):
                    hold(doc.get("blob_id"))
            cutoff = utcnow() - grace
            deleted = 0
            for meta in self.db[f"{self.blobs_name}.files"].find({}, {"uploadDate": 1, "metadata.claimed_at": 1}):
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
                    self.bucket.delete(blob_id)
                    deleted += 1
                except gridfs.errors.NoFile:
                    pass
            if deleted:
                log.info("gc: deleted %d GridFS blobs no manifest or tombstone names", deleted)
            return deleted
        except PyMongoError as exc:
            raise self._unavailable(exc) from None

    def apply(self, ops: list[Op], state: MirrorState | None = None) -> ApplyResult:
        """Write ops; record acknowledged ones in ``state``. Raises MongoUnavailable.

        Nothing is hard-deleted: before a delete is sent, the document it removes
        is copied to ``memory_tombstones`` (and a GridFS blob a manifest stops
        naming gets a tombstone too; blobs are only ever deleted by ``gc_blobs``)."""
        result = ApplyResult()
        now = utcnow()
        try:
            self._upload_blobs([op for op in ops if op.coll == FILES], now)
            by_coll: dict[str, list[Op]] = {}
            tracked = [op for op in ops if op.action == "track"]
            for op in ops:
                if op.action != "track":
                    by_coll.setdefault(op.coll, []).append(op)
            # Entity documents first, manifests last: a manifest claims the
            # file's content is mirrored, so it must not land before the content.
            for logical in (HUBS, EPISODES, SNAPSHOTS, FILES):
                batch = by_coll.get(logical, [])
                size = self.config.sidecar_batch_size
                t0 = time.perf_counter()
                for start in range(0, len(batch), size):
                    self._write_batch(logical, batch[start:start + size], now, result)
                if batch and self.timers is not None:
                    self.timers.observe(f"write.{logical}", time.perf_counter() - t0)
            result.applied.extend(tracked)  # nothing to send; the state still learns
        except (PyMongoError, gridfs.errors.GridFSError) as exc:
            if isinstance(exc, BulkWriteError):  # pragma: no cover - handled in _bulk
                raise
            raise self._unavailable(exc) from None
        if state is not None:
            for op in result.applied:
                apply_to_state(state, op)
        return result

    def _write_batch(self, logical: str, ops: list[Op], now: datetime, result: ApplyResult) -> None:
        if not any(op.action == "delete" or (logical == FILES and op.action == "update") for op in ops):
            self._bulk(logical, ops, now, result)
            return
        deletions, replaced = self._plan_removals(logical, ops, now, result)
        # The tombstones land before anything they describe is removed or replaced;
        # an op whose tombstone MongoDB refused is not sent at all.
        failed_before = len(result.failed)
        written = self._write_tombstones(deletions + replaced, result)
        refused = {id(op) for op, _ in result.failed[failed_before:]}
        deletions = [r for r in written if r.request is not None]
        replaced = [r for r in written if r.request is None]
        others = [op for op in ops if op.action != "delete" and id(op) not in refused]
        before = len(result.stale) + len(result.failed)
        self._bulk(logical, others, now, result)
        if replaced and len(result.stale) + len(result.failed) > before:
            # A manifest write refused: it still names its blob, the tombstone lied.
            undone = {id(op) for op in result.stale} | {id(op) for op, _ in result.failed}
            self._drop_tombstones([ts["_id"] for r in replaced if id(r.op) in undone for ts in r.tombstones])
        self._send_deletes(logical, deletions, result)

    def _bulk(self, logical: str, ops: list[Op], now: datetime, result: ApplyResult) -> None:
        if not ops:
            return
        setpos = [op for op in ops if op.action == "setpos"]
        if setpos:
            ops = [op for op in ops if op.action != "setpos"]
            self._setpos(logical, setpos, now, result)
            if not ops:
                return
        coll = self.coll[logical]
        requests = [self._request(op, now) for op in ops]
        try:
            coll.bulk_write(requests, ordered=False)
            result.applied.extend(ops)
            return
        except BulkWriteError as exc:
            details = exc.details
        except bson.errors.InvalidDocument:
            # pymongo refuses a document before sending (e.g. DocumentTooLarge):
            # find which, one by one, so the rest of the batch still lands.
            if len(ops) == 1:
                result.failed.append((ops[0], "document too large or not encodable as BSON"))
                return
            for op in ops:
                self._bulk(logical, [op], now, result)
            return
        if details.get("writeConcernErrors"):
            raise MongoUnavailable("write concern not satisfied: " + self.config.scrub(
                str(details["writeConcernErrors"][0].get("errmsg", ""))))
        failed_idx = {}
        for err in details.get("writeErrors", []):
            failed_idx[err["index"]] = err
        retry_guarded: list[Op] = []
        retry_natural: list[Op] = []
        for i, op in enumerate(ops):
            err = failed_idx.get(i)
            if err is None:
                result.applied.append(op)
                continue
            code = err.get("code")
            # Whichever unique index the server names (mongod: the one violated;
            # some servers: _id), a duplicate means the document exists already.
            if code == DUPLICATE_KEY and op.action == "insert" and logical == SNAPSHOTS:
                result.applied.append(op)  # same content already recorded
            elif code == DUPLICATE_KEY and op.action == "insert" and op.doc is not None:
                op.action = "update"  # someone got there first: retry under the guard
                retry_guarded.append(op)
            elif code == DUPLICATE_KEY and logical in (HUBS, EPISODES) and op.doc is not None:
                # The guarded upsert by _id collided: our own document is newer, or
                # another's (Mentorix's ObjectId) holds the natural key. The guard
                # decides, by natural key this time. Never retried unguarded.
                retry_natural.append(op)
            elif code == DUPLICATE_KEY:
                result.stale.append(op)  # the guard refused: MongoDB holds newer data
            else:
                result.failed.append((op, f"code {code}: {str(err.get('errmsg', ''))[:120]}"))
        if retry_guarded:
            self._bulk(logical, retry_guarded, now, result)
        for op in retry_natural:
            res = coll.replace_one(_guard(op, natural=True), _body(op.doc), upsert=False)
            (result.applied if res.matched_count else result.stale).append(op)

    def _setpos(self, logical: str, ops: list[Op], now: datetime, result: ApplyResult) -> None:
        """Positions by _id; the ones whose _id is not there (a document Mentorix
        created) by natural key, so they are stored once and not re-sent forever."""
        coll = self.coll[logical]
        res = coll.bulk_write([self._request(op, now) for op in ops], ordered=False)
        if res.matched_count < len(ops):
            have = {d["_id"] for d in coll.find({"_id": {"$in": [op.id for op in ops]}}, {"_id": 1})}
            missing = [op for op in ops if op.id not in have]
            if missing:
                coll.bulk_write([UpdateOne(_guard(op, natural=True), {"$set": {"_sidecar.pos": op.pos}})
                                 for op in missing], ordered=False)
        result.applied.extend(ops)

    # --- the writer lease (sidecar/lease.py) -------------------------------------------
    LEASE_ID = "writer_lease"

    def try_lease(self, me: dict, now: datetime, until: datetime, steal_from: Any = None) -> dict | None:
        """Take the lease if it is free, expired, ours (or ``steal_from``'s). None when
        taken; else the holder's document (types not trusted)."""
        free = [{"owner": me["owner"]}, {"expires_at": {"$lt": now}}, {"expires_at": {"$exists": False}}]
        if steal_from is not None:
            free.append({"owner": steal_from})
        try:
            self.meta.find_one_and_update(
                {"_id": self.LEASE_ID, "$or": free},
                {"$set": {**me, "expires_at": until, "renewed_at": now}}, upsert=True)
            return None
        except pymongo.errors.DuplicateKeyError:
            try:
                doc = self.meta.find_one({"_id": self.LEASE_ID})
            except PyMongoError as exc:
                raise self._unavailable(exc) from None
            return doc if isinstance(doc, dict) else {}
        except PyMongoError as exc:
            raise self._unavailable(exc) from None

    def release_lease(self, owner: str) -> None:
        try:
            self.meta.delete_one({"_id": self.LEASE_ID, "owner": owner})
        except PyMongoError as exc:
            raise self._unavailable(exc) from None

    def record_events(self, events: list[dict]) -> None:
        if not events:
            return
        try:
            for start in range(0, len(events), self.config.sidecar_batch_size):
                self.coll[EVENTS].insert_many(events[start:start + self.config.sidecar_batch_size],
                                              ordered=False)
        except PyMongoError as exc:
            raise self._unavailable(exc) from None
