"""Stage 5: the only module that talks to MongoDB (pymongo).

Writes are unordered bulk writes in bounded batches. Every replace/delete is
guarded by the source version (``_sidecar.version`` not newer than ours) and
addressed by ``_id``, so a stale op can never overwrite newer data: when the
guard fails, the upsert collides on ``_id`` (E11000) and the op is counted as
refused. Nothing is hard-deleted: a delete is sent only after the document it
removes is in ``memory_tombstones``, and only for exactly that version
(sidecar/tombstones.py); GridFS blobs are only ever deleted by ``gc_blobs``.
Errors that mean "MongoDB is away" are raised as ``MongoUnavailable`` (one
translation: ``_mongo_errors``) so callers can retry with backoff; errors that
belong to one document are returned per op so one bad document never blocks the
rest.

I/O only: reads come back as rows (``iter_state``; ``state.build_state`` makes the
mirror state of them), writes as an ``ApplyResult`` the caller records in its
state (``MirrorState.apply``). The index plan is sidecar/indexes.py's.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import bson
import gridfs
import pymongo
from pymongo import DeleteOne, InsertOne, ReplaceOne, UpdateOne
from pymongo.errors import BulkWriteError, OperationFailure, PyMongoError

from . import indexes, quick
from .config import Config
from .documents import entry_value, file_fields, stat_guard, version_guard
from .model import parse_iso, utcnow
from .names import EPISODES, EVENTS, FILES, HUBS, META, SNAPSHOTS, TOMBSTONES
from .parse import value_hash
from .state import EpisodeRow, FileRow, HubRow, Op, Row, SnapshotRow, intern_format, pack_hash
from .timers import Timers
from .tombstones import Tombstones

log = logging.getLogger("sidecar.store")

DUPLICATE_KEY = 11000
# Documents per cursor batch when loading the state: a server's default batch
# (up to 16 MB of BSON) decodes into several times that in Python objects at once.
LOAD_BATCH = 500
# gc_blobs leaves a blob alone for this long after it was uploaded (or reused):
# its manifest may still be on its way (uploaded first, manifest written after).
BLOB_GC_GRACE = timedelta(hours=1)


class MongoUnavailable(Exception):
    """MongoDB could not be reached or did not acknowledge; safe to retry later."""


class MongoConfigError(Exception):
    """The MongoDB URL or options are malformed: retrying will not help."""


@dataclass
class ApplyResult:
    applied: list[Op] = field(default_factory=list)
    stale: list[Op] = field(default_factory=list)
    failed: list[tuple[Op, str]] = field(default_factory=list)


def _content_sha(doc: dict) -> bytes | str | None:
    """A generic file's content hash as stored (see FilePlan.content_hash), packed
    the way the mirror state keeps it (``state.pack_hash``)."""
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
        self.tombstones = Tombstones(self)

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

    @contextmanager
    def _mongo_errors(self, also: tuple[type[BaseException], ...] = (),
                      keep: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
        """The one translation of "MongoDB is away" (any ``PyMongoError``, and the
        ``also`` types) into ``MongoUnavailable``, scrubbed, without the chained
        traceback; ``keep``: types raised as they are."""
        try:
            yield
        except keep:
            raise
        except (PyMongoError, *also) as exc:
            raise self._unavailable(exc) from None

    def check_write_concern(self, details: dict) -> None:
        """A bulk write's errors that mean "not acknowledged": MongoUnavailable."""
        if details.get("writeConcernErrors"):
            raise MongoUnavailable("write concern not satisfied: " + self.config.scrub(
                str(details["writeConcernErrors"][0].get("errmsg", ""))))

    def ping(self) -> None:
        with self._mongo_errors():
            self.client.admin.command("ping")

    def shape(self, counts: bool = False) -> tuple[tuple[str, str, int], ...]:
        """(name, uuid, count) of each mirrored collection that exists: ``mongorestore --drop``
        (any drop and re-create) gives new UUIDs, so a restore into a running server shows.
        ``counts``: also the tombstones and GridFS, with the server's estimated counts (no scan;
        -1 otherwise), what a restore still running keeps changing (``Incarnation.settle``).
        Empty where the server does not tell (then nothing can be told: not an outage)."""
        names = [self.files_name, HUBS, EPISODES, SNAPSHOTS]
        names += [TOMBSTONES, f"{self.blobs_name}.files", f"{self.blobs_name}.chunks"] if counts else []
        out = []
        with self._mongo_errors():
            try:
                infos = list(self.db.list_collections(filter={"name": {"$in": names}}))
            except OperationFailure:
                return ()  # refused (e.g. a role without listCollections)
            for info in infos:
                if not isinstance(info, dict) or info.get("name") not in names:  # a server may ignore the filter
                    continue
                uuid = info["info"].get("uuid") if isinstance(info.get("info"), dict) else None
                if uuid is not None:
                    out.append((info["name"], str(uuid), self._estimate(info["name"]) if counts else -1))
        return tuple(sorted(out))

    def _estimate(self, name: str) -> int:
        try:
            return int(self.db[name].estimated_document_count())
        except (OperationFailure, LookupError, TypeError, ValueError, ArithmeticError):
            return -1  # dropped between the listing and here, refused, or an ``n`` pymongo cannot read

    def close(self) -> None:
        self.client.close()

    # --- indexes (sidecar/indexes.py) ---------------------------------------------
    TTL_INDEXES = indexes.TTL_INDEXES

    def index_plan(self) -> list[indexes.IndexSpec]:
        """(collection, keys, options). Names match the Mentorix Mongo store's, so
        whichever side creates them first, the other's create is a no-op."""
        return indexes.index_plan(self.config)

    def ensure_indexes(self) -> dict[str, list[dict]]:
        """Create what is missing, fix a changed TTL, drop a TTL that was turned off."""
        with self._mongo_errors():
            indexes.ensure(self.db, self.coll, self.config)
            return self.list_indexes()

    def list_indexes(self) -> dict[str, list[dict]]:
        return indexes.listing(self.coll)

    # --- reading ------------------------------------------------------------------
    def iter_state(self) -> Iterator[Row]:
        """What MongoDB holds, as hashes, one document at a time (hubs, episodes,
        snapshots, files): ``state.build_state`` makes the mirror state of them,
        and a comparison (``parity.compute``) need not hold a second copy of it.
        Typed rows (``state.HubRow``, ``EpisodeRow``, ``SnapshotRow``, ``FileRow``),
        hashes packed (``state.pack_hash``).

        Hashes are computed from the stored values themselves (payloads, file
        fields, content), not taken from ``_sidecar`` bookkeeping, so a document
        changed behind the sidecar's back is seen as different (and repaired by
        the next sync).

        Whole documents are read: on the servers we measured, a projection costs
        more than it saves. Each cursor batch (``LOAD_BATCH``) is decoded at once
        and dropped as soon as it is consumed.
        """
        self.foreign_skipped = []
        with self._mongo_errors():
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

    def _foreign(self, logical: str, doc: Any, reason: str) -> None:
        doc_id = doc.get("_id") if isinstance(doc, dict) else None
        if len(self.foreign_skipped) < 200:
            self.foreign_skipped.append({"collection": self.coll[logical].name, "_id": repr(doc_id)[:120],
                                         "reason": reason})
        log.warning("skipped a document of %s (_id %s): %s", self.coll[logical].name, repr(doc_id)[:120], reason)

    def _row(self, logical: str, doc: dict) -> Row | None:
        meta = doc.get("_sidecar")
        meta = meta if isinstance(meta, dict) else {}
        version = _int_or_none(meta.get("version"))
        if logical == HUBS:
            hub_type, key = doc.get("hub_type"), doc.get("item_key")
            if not isinstance(hub_type, str) or not isinstance(key, str):
                self._foreign(logical, doc, "hub_type/item_key not strings")
                return None
            # entry_value: the payload, or the value kept raw (BSON cannot hold it)
            return HubRow(hub_type, key, _digest_of(entry_value(doc)), _int_or_none(meta.get("pos")), version)
        if logical == EPISODES:
            run_id = doc.get("run_id")
            if not isinstance(run_id, str):
                self._foreign(logical, doc, "run_id not a string")
                return None
            return EpisodeRow(run_id, _digest_of(file_fields(doc)), version)
        if logical == SNAPSHOTS:
            # Keyed by content, whoever wrote it (our _id is the content hash;
            # Mentorix's store and backfill use their own): the same snapshot
            # is never stored twice, and the newest by instant is the current one.
            digest = _digest_of(file_fields(doc))
            return SnapshotRow(digest.hex(), digest, parse_iso(doc.get("timestamp")))
        rel = doc.get("_id")
        kind = doc.get("kind", "other")
        doc_id = doc.get("doc_id") or doc.get("hub_type")
        if not isinstance(rel, str) or not isinstance(kind, str) or not isinstance(doc_id, (str, type(None))):
            self._foreign(logical, doc, "manifest _id/kind/doc_id of the wrong type")
            return None
        fmt = doc.get("format")
        # Interned here as the state will (the same shared dict): a format it cannot
        # intern (an unhashable value) is this document's fault, reported as foreign.
        return FileRow(rel, doc.get("sha256"), version, kind, doc.get("deleted_at") is not None, doc_id,
                       intern_format(fmt if isinstance(fmt, dict) else None), _content_sha(doc),
                       meta.get("stat"))  # the quick check's record, validated by sidecar/quick.py

    def find(self, logical: str, query: dict | None = None, projection: dict | None = None,
             sort: list | None = None) -> Iterator[dict]:
        with self._mongo_errors():
            cursor = self.coll[logical].find(query or {}, projection)
            if sort:
                cursor = cursor.sort(sort)
            yield from cursor

    def find_one(self, logical: str, query: dict, **kw: Any) -> dict | None:
        with self._mongo_errors():
            return self.coll[logical].find_one(query, **kw)

    def count(self, logical: str, query: dict | None = None) -> int:
        with self._mongo_errors():
            return self.coll[logical].count_documents(query or {})

    def blob_sha256(self, blob_id: Any) -> str | None:
        """The sha256 recorded with a GridFS blob, without downloading it."""
        with self._mongo_errors():
            meta = self.db[f"{self.files_name}_blobs.files"].find_one({"_id": blob_id}, {"metadata": 1})
        return ((meta or {}).get("metadata") or {}).get("sha256")

    def read_blob(self, blob_id: Any) -> bytes:
        with self._mongo_errors():
            return self.bucket.open_download_stream(blob_id).read()

    # --- writing --------------------------------------------------------------------
    def _request(self, op: Op, now: datetime) -> Any:
        if op.action == "insert":
            return InsertOne(op.doc)
        if op.action == "update":
            return ReplaceOne(version_guard(op), _body(op.doc), upsert=True)
        if op.action == "setpos":
            return UpdateOne(version_guard(op), {"$set": {"_sidecar.pos": op.pos}})
        if op.action == "delete":
            return DeleteOne(version_guard(op))
        if op.action == "mark_deleted":
            return UpdateOne({"_id": op.id}, {"$set": {"deleted_at": now}})
        if op.action == "stat":
            # Bookkeeping only (sidecar/quick.py): the content is not touched.
            return UpdateOne(stat_guard(op), {"$set": {"_sidecar.stat": op.doc}})
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

    def gc_blobs(self, grace: timedelta = BLOB_GC_GRACE) -> int:
        """Delete the GridFS blobs that no live manifest and no tombstone names,
        older than ``grace`` (``Tombstones.gc_blobs``). Returns the count."""
        with self._mongo_errors():
            return self.tombstones.gc_blobs(grace)

    def apply(self, ops: list[Op]) -> ApplyResult:
        """Write ops: which MongoDB acknowledged, which it refused as stale, which
        failed. Raises MongoUnavailable. The caller records the acknowledged ones
        in its state (``MirrorState.apply(result)``); the store keeps none.

        Nothing is hard-deleted: before a delete is sent, the document it removes
        is copied to ``memory_tombstones`` (and a GridFS blob a manifest stops
        naming gets a tombstone too; blobs are only ever deleted by ``gc_blobs``)."""
        result = ApplyResult()
        now = utcnow()
        # GridFS errors mean the same; a BulkWriteError escaping _bulk is a bug, kept as it is.
        with self._mongo_errors(also=(gridfs.errors.GridFSError,), keep=(BulkWriteError,)):
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
                if logical == FILES and batch:
                    batch = quick.unrecorded(batch, result.stale, [op for op, _ in result.failed])
                size = self.config.sidecar_batch_size
                t0 = time.perf_counter()
                for start in range(0, len(batch), size):
                    self._write_batch(logical, batch[start:start + size], now, result)
                if batch and self.timers is not None:
                    self.timers.observe(f"write.{logical}", time.perf_counter() - t0)
            result.applied.extend(tracked)  # nothing to send; the state still learns
        return result

    def _write_batch(self, logical: str, ops: list[Op], now: datetime, result: ApplyResult) -> None:
        if not any(op.action == "delete" or (logical == FILES and op.action == "update") for op in ops):
            self._bulk(logical, ops, now, result)
            return
        deletions, replaced = self.tombstones.plan_removals(logical, ops, now, result)
        # The tombstones land before anything they describe is removed or replaced;
        # an op whose tombstone MongoDB refused is not sent at all.
        failed_before = len(result.failed)
        written = self.tombstones.write(deletions + replaced, result)
        refused = {id(op) for op, _ in result.failed[failed_before:]}
        deletions = [r for r in written if r.request is not None]
        replaced = [r for r in written if r.request is None]
        others = [op for op in ops if op.action != "delete" and id(op) not in refused]
        before = len(result.stale) + len(result.failed)
        self._bulk(logical, others, now, result)
        if replaced and len(result.stale) + len(result.failed) > before:
            # A manifest write refused: it still names its blob, the tombstone lied.
            undone = {id(op) for op in result.stale} | {id(op) for op, _ in result.failed}
            self.tombstones.drop([ts["_id"] for r in replaced if id(r.op) in undone for ts in r.tombstones])
        self.tombstones.send_deletes(logical, deletions, result)

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
        self.check_write_concern(details)
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
            res = coll.replace_one(version_guard(op, natural=True), _body(op.doc), upsert=False)
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
                coll.bulk_write([UpdateOne(version_guard(op, natural=True), {"$set": {"_sidecar.pos": op.pos}})
                                 for op in missing], ordered=False)
        result.applied.extend(ops)

    def record_events(self, events: list[dict]) -> None:
        if not events:
            return
        with self._mongo_errors():
            for start in range(0, len(events), self.config.sidecar_batch_size):
                self.coll[EVENTS].insert_many(events[start:start + self.config.sidecar_batch_size],
                                              ordered=False)
