"""Stage 5: the only module that talks to MongoDB (pymongo).

Writes are unordered bulk writes in bounded batches. Every replace/delete is
guarded by the source version (``_sidecar.version`` not newer than ours) and
addressed by ``_id``, so a stale op can never overwrite newer data: when the
guard fails, the upsert collides on ``_id`` (E11000) and the op is counted as
refused. Errors that mean "MongoDB is away" are raised as ``MongoUnavailable``
so callers can retry with backoff; errors that belong to one document are
returned per op so one bad document never blocks the rest.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import bson
import gridfs
import pymongo
from pymongo import DeleteOne, InsertOne, ReplaceOne, UpdateOne
from pymongo.errors import BulkWriteError, OperationFailure, PyMongoError

from .classify import Kind
from .config import Config
from .diff import FILES, FileState, HubState, MirrorState, Op, apply_to_state, pack_hash
from .model import EPISODES, EVENTS, HUBS, SNAPSHOTS, file_fields, utcnow
from .parse import intern_format, value_hash

log = logging.getLogger("sidecar.store")

DUPLICATE_KEY = 11000
# Documents per cursor batch when loading the state: a server's default batch
# (up to 16 MB of BSON) decodes into several times that in Python objects at once.
LOAD_BATCH = 500


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


def _guard(op: Op) -> dict:
    return {"_id": op.id, "_sidecar.version": {"$not": {"$gt": op.version}}}


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


def _body(doc: dict) -> dict:
    return {k: v for k, v in doc.items() if k != "_id"}


class Store:
    def __init__(self, config: Config, client: pymongo.MongoClient | None = None) -> None:
        self.config = config
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
        }
        self.bucket = gridfs.GridFSBucket(self.db, bucket_name=f"{self.files_name}_blobs")

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
        ]
        if self.config.mongodb_snapshots_ttl_days > 0:
            plan.append((SNAPSHOTS, [("timestamp_dt", -1)], {
                "name": "ix_snapshots_timestamp_dt_ttl",
                "expireAfterSeconds": self.config.mongodb_snapshots_ttl_days * 86400}))
        if self.config.mongodb_episodes_ttl_days > 0:
            plan.append((EPISODES, [("updated_at_dt", -1)], {
                "name": "ix_episodes_updated_at_dt_ttl",
                "expireAfterSeconds": self.config.mongodb_episodes_ttl_days * 86400}))
        return plan

    TTL_INDEXES = {SNAPSHOTS: "ix_snapshots_timestamp_dt_ttl", EPISODES: "ix_episodes_updated_at_dt_ttl"}

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
            return self.list_indexes()
        except PyMongoError as exc:
            raise self._unavailable(exc) from None

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
        for row in self.iter_state():
            coll = row[0]
            if coll == HUBS:
                _, hub_type, key, digest, pos, version = row
                hub = state.hubs.get(hub_type)
                if hub is None:
                    hub = state.hubs[hub_type] = {}
                hub[key] = HubState(digest, pos, version)
            elif coll == EPISODES:
                _, run_id, digest, version = row
                state.episodes[run_id] = (digest, version)
                run_ids[run_id] = run_id
            elif coll == SNAPSHOTS:
                state.snapshots[row[1]] = row[2]
            else:
                rel, fs = row[1], row[2]
                if fs.doc_id is not None and fs.kind == Kind.EPISODE.value:
                    fs.doc_id = run_ids.get(fs.doc_id, fs.doc_id)
                    episode = state.episodes.get(fs.doc_id)
                    if episode is not None and episode[1] == fs.version:
                        fs.version = episode[1]
                state.files[rel] = fs
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
        try:
            for doc in self.coll[HUBS].find({}).batch_size(LOAD_BATCH):
                meta = doc.get("_sidecar") or {}
                yield (HUBS, str(doc.get("hub_type")), str(doc.get("item_key")),
                       _digest_of(doc.get("payload")), meta.get("pos"), meta.get("version"))
            for doc in self.coll[EPISODES].find({}).batch_size(LOAD_BATCH):
                meta = doc.get("_sidecar") or {}
                yield (EPISODES, str(doc.get("run_id")), _digest_of(file_fields(doc)), meta.get("version"))
            for doc in self.coll[SNAPSHOTS].find({}).batch_size(LOAD_BATCH):
                yield (SNAPSHOTS, str(doc["_id"]), _digest_of(file_fields(doc)))
            for doc in self.coll[FILES].find({}).batch_size(LOAD_BATCH):
                meta = doc.get("_sidecar") or {}
                yield (FILES, str(doc["_id"]), FileState(
                    doc.get("sha256"), meta.get("version"), doc.get("kind", "other"),
                    doc.get("deleted_at") is not None, doc.get("doc_id") or doc.get("hub_type"),
                    intern_format(doc.get("format")), _content_sha(doc)))
        except PyMongoError as exc:
            raise self._unavailable(exc) from None

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
            return UpdateOne({"_id": op.id}, {"$set": {"_sidecar.pos": op.pos}})
        if op.action == "delete":
            return DeleteOne(_guard(op))
        if op.action == "mark_deleted":
            return UpdateOne({"_id": op.id}, {"$set": {"deleted_at": now}})
        raise ValueError(op.action)

    def _natural(self, op: Op) -> Any:
        """Retry for a document Mentorix created itself (its own _id, same natural key)."""
        body = _body(op.doc)
        if op.coll == HUBS:
            key = {"hub_type": body["hub_type"], "item_key": body["item_key"]}
        else:
            key = {"run_id": body["run_id"]}
        return ReplaceOne(key, body, upsert=False)

    def _upload_blobs(self, ops: list[Op]) -> None:
        for op in ops:
            if op.blob is None or op.doc is None:
                continue
            blob_id = f"{op.id}@{op.after}"
            if self.blob_sha256(blob_id) is None:
                self.bucket.upload_from_stream_with_id(
                    blob_id, op.id, op.blob, metadata={"sha256": op.after, "path": op.id})
            op.doc["blob_id"] = blob_id

    def _drop_old_blobs(self, ops: list[Op]) -> None:
        for op in ops:
            if op.coll == FILES and op.before and op.action in ("update", "delete"):
                try:
                    self.bucket.delete(f"{op.id}@{op.before}")
                except gridfs.errors.NoFile:
                    pass

    def apply(self, ops: list[Op], state: MirrorState | None = None) -> ApplyResult:
        """Write ops; record acknowledged ones in ``state``. Raises MongoUnavailable."""
        result = ApplyResult()
        now = utcnow()
        try:
            self._upload_blobs([op for op in ops if op.coll == FILES])
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
                for start in range(0, len(batch), size):
                    self._bulk(logical, batch[start:start + size], now, result)
            self._drop_old_blobs(result.applied)
            result.applied.extend(tracked)  # nothing to send; the state still learns
        except (PyMongoError, gridfs.errors.GridFSError) as exc:
            if isinstance(exc, BulkWriteError):  # pragma: no cover - handled in _bulk
                raise
            raise self._unavailable(exc) from None
        if state is not None:
            for op in result.applied:
                apply_to_state(state, op)
        return result

    def _bulk(self, logical: str, ops: list[Op], now: datetime, result: ApplyResult) -> None:
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
            on_id = list((err.get("keyPattern") or {"_id": 1}).keys()) == ["_id"]
            if code == DUPLICATE_KEY and on_id:
                if op.action == "insert" and logical == SNAPSHOTS:
                    result.applied.append(op)  # same content already recorded
                elif op.action == "insert":
                    op.action = "update"  # someone got there first: retry under the guard
                    retry_guarded.append(op)
                else:
                    result.stale.append(op)  # the guard refused: MongoDB holds newer data
            elif code == DUPLICATE_KEY and logical in (HUBS, EPISODES) and op.doc is not None:
                retry_natural.append(op)
            else:
                result.failed.append((op, f"code {code}: {str(err.get('errmsg', ''))[:120]}"))
        if retry_guarded:
            self._bulk(logical, retry_guarded, now, result)
        if retry_natural:
            try:
                coll.bulk_write([self._natural(op) for op in retry_natural], ordered=False)
                result.applied.extend(retry_natural)
            except BulkWriteError as exc:
                bad = {e["index"] for e in exc.details.get("writeErrors", [])}
                for i, op in enumerate(retry_natural):
                    if i in bad:
                        result.failed.append((op, "conflicts with an existing document"))
                    else:
                        result.applied.append(op)

    def record_events(self, events: list[dict]) -> None:
        if not events:
            return
        try:
            for start in range(0, len(events), self.config.sidecar_batch_size):
                self.coll[EVENTS].insert_many(events[start:start + self.config.sidecar_batch_size],
                                              ordered=False)
        except PyMongoError as exc:
            raise self._unavailable(exc) from None
