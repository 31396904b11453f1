"""What the sidecar's documents look like (DESIGN §3), and the way back.

Builders: a ``FilePlan`` (sidecar/model.py) → the documents MongoDB should hold
for it: one per hub entry (``hub_doc``), the snapshot (``snapshot_doc``), the
run (``episode_doc``) and the file's manifest (``manifest_doc``). Every document
the sidecar writes carries ``_sidecar``: source path, content hash, the source
version that guards against regressions (sidecar/clock.py), and what restore
needs (entry position, the file's own field order, values BSON cannot hold kept
as their canonical JSON in ``_sidecar.raw``).

Readers: a document → the values it holds (``entry_value``, ``file_fields``),
whoever wrote it, for the state (sidecar/store.py), restore and heal.

Addressing: where a write finds its document (``_id``, or the natural key a
document Mentorix created has) and the version guard every write carries.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .classify import Kind
from .model import parse_iso
from .names import EPISODES, HUBS
from .parse import BadInput, canonical, validate

if TYPE_CHECKING:
    from .model import FilePlan, HubEntry
    from .state import Op


def hub_id(hub_type: str, key: str) -> str:
    return f"{hub_type}/{key}"


def hub_doc(plan: FilePlan, entry: HubEntry, pos: int, source: str, now: datetime) -> dict:
    value = entry.value
    doc = {
        "_id": hub_id(plan.hub_type, entry.key),
        "hub_type": plan.hub_type,
        "item_key": entry.key,
        "learner_id": entry.key,
        "payload": None if entry.stored_raw else value,
        "updated_at": now.isoformat(),
        "_sidecar": {
            "path": plan.rel,
            "hash": entry.hash,
            "pos": pos,
            "version": plan.version,
            "source": source,
        },
    }
    if entry.stored_raw:
        # BSON cannot hold the value: its canonical JSON (what the hash is of).
        doc["_sidecar"].update(raw=canonical(value), stored_raw=entry.stored_raw)
    return doc


# Fields of ours that a file's own top-level object may also use: the file's
# values are kept aside in ``_sidecar.orig`` so restore gives them back.
_RESERVED = ("_id", "_sidecar")


def _own_fields(plan: FilePlan) -> tuple[dict[str, Any], dict[str, Any]]:
    orig = {k: plan.obj[k] for k in _RESERVED if k in plan.obj}
    fields = {k: v for k, v in plan.obj.items() if k not in orig}
    if plan.stored_raw:
        # The whole object is in _sidecar.raw; the document keeps (queryable) the
        # top-level fields BSON can hold.
        fields = {k: v for k, v in fields.items() if _storable({k: v})}
        orig = {}
    return fields, orig


def _storable(value: Any) -> bool:
    try:
        validate(value, True)
    except BadInput:
        return False
    return True


def snapshot_doc(plan: FilePlan, source: str, now: datetime) -> dict:
    fields, orig = _own_fields(plan)
    doc: dict[str, Any] = {"_id": plan.doc_id}
    doc.update(fields)
    doc.setdefault("snapshot_id", plan.doc_id)
    doc.setdefault("source", "memory-sidecar")
    doc.setdefault("timestamp_dt", parse_iso(plan.obj.get("timestamp")) or now)
    doc["_sidecar"] = _meta(plan, source, orig)
    return doc


def episode_doc(plan: FilePlan, source: str, now: datetime) -> dict:
    fields, orig = _own_fields(plan)
    doc: dict[str, Any] = {"_id": plan.doc_id}
    doc.update(fields)
    if doc.get("run_id") != plan.doc_id:
        # Mentorix reads episodes by a string run_id; keep the file's own value aside.
        if "run_id" in doc and not plan.stored_raw:
            orig["run_id"] = doc["run_id"]
        doc["run_id"] = plan.doc_id
    doc.setdefault("updated_at", now.isoformat())
    doc.setdefault("updated_at_dt", parse_iso(plan.obj.get("updated_at")) or now)
    doc["_sidecar"] = _meta(plan, source, orig)
    return doc


def _meta(plan: FilePlan, source: str, orig: dict[str, Any]) -> dict:
    meta = {
        "path": plan.rel,
        "hash": plan.doc_hash,
        "version": plan.version,
        "source": source,
        "fields": [k for k in plan.obj if _storable(k)] if plan.stored_raw else list(plan.obj),
    }
    if orig:
        meta["orig"] = orig
    if plan.stored_raw:
        meta.update(raw=canonical(plan.obj), stored_raw=plan.stored_raw)
    return meta


def manifest_doc(plan: FilePlan, source: str, now: datetime, blob_id: Any = None) -> dict:
    """One per file. For hubs, snapshots and episodes it records where the
    documents are and how the file is formatted; it is rewritten when that
    changes, not on every content edit, so its ``sha256``/``size`` are those of
    the version it was written for."""
    doc: dict[str, Any] = {
        "_id": plan.rel,
        "path": plan.rel,
        "kind": plan.kind.value,
        "sha256": plan.sha256,
        "size": plan.size,
        "encoding": plan.encoding,
        "format": plan.fmt,
        "updated_at": now,
        "deleted_at": None,
        "_sidecar": {"hash": plan.sha256, "version": plan.version, "source": source},
    }
    if plan.stat is not None:
        doc["_sidecar"]["stat"] = plan.stat  # the quick check's record (sidecar/quick.py)
    if plan.kind is Kind.HUB:
        doc["hub_type"] = plan.hub_type
    elif plan.kind.structured:
        doc["doc_id"] = plan.doc_id
    if plan.kind.structured:
        if plan.raw is not None:
            doc["raw"] = plan.raw
            doc["docs_hash"] = plan.docs_hash
    elif plan.encoding == "json":
        doc["content"] = plan.content
        if plan.raw is not None:
            doc["raw"] = plan.raw
    elif plan.encoding == "bytes":
        doc["raw"] = plan.raw
    elif plan.encoding == "gridfs":
        doc["blob_id"] = blob_id
    return doc


# --- the reverse: documents → values (state, restore, heal) -------------------


def decode_raw(raw: Any) -> Any:
    """A value stored raw (its canonical JSON bytes). ValueError when it is not."""
    if not isinstance(raw, bytes):
        raise ValueError("not stored raw")
    return json.loads(raw.decode("utf-8", "surrogatepass"))


def entry_value(doc: dict) -> Any:
    """A hub document's value: its payload, or what it keeps raw (payload null).
    A raw field that does not decode (written by someone else) is ignored."""
    payload = doc.get("payload")
    meta = doc.get("_sidecar")
    if payload is None and isinstance(meta, dict) and meta.get("raw") is not None:
        try:
            return decode_raw(meta["raw"])
        except (ValueError, RecursionError):
            return None
    return payload





_ADDED_FIELDS = ("_id", "_sidecar", "snapshot_id", "source", "timestamp_dt", "updated_at_dt")


def file_fields(doc: dict) -> dict:
    """The fields the file had, in the file's order, from a snapshot/episode document."""
    meta = doc.get("_sidecar") or {}
    if not isinstance(meta, dict):
        meta = {}
    if meta.get("raw") is not None:
        try:
            value = decode_raw(meta["raw"])
        except (ValueError, RecursionError):
            value = None  # not ours (or damaged): the document's fields speak
        if isinstance(value, dict):
            return value
    names = meta.get("fields")
    if isinstance(names, list):
        orig = meta.get("orig") or {}
        return {name: orig[name] if name in orig else doc[name] for name in names
                if name in orig or name in doc}
    # A document Mentorix wrote itself: drop what only the database added.
    return {k: v for k, v in doc.items() if k not in _ADDED_FIELDS}


# --- addressing: which document a write is for, and the version guard --------------


def natural_key(op: Op) -> dict:
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


def natural_id(doc: dict, logical: str) -> Any:
    """A live document's op id (the inverse of ``natural_key``)."""
    if logical == HUBS:
        return f"{doc.get('hub_type')}/{doc.get('item_key')}"
    if logical == EPISODES:
        return doc.get("run_id")
    return doc.get("_id")


def stat_guard(op: Op) -> dict:
    """Where a bookkeeping refresh of a manifest's quick-check record may land: the
    manifest, not newer than the read the record is of, nor its record."""
    return {"_id": op.id, "_sidecar.hash": {"$exists": True},  # a manifest of ours, not a foreign shape
            "_sidecar.version": {"$not": {"$gt": op.version}},
            "_sidecar.stat.version": {"$not": {"$gt": op.version}}}


def version_guard(op: Op, natural: bool = False) -> dict:
    """The version guard on every write: MongoDB's copy must not be newer than the
    version (the order of the sidecar's reads, sidecar/clock.py) this op carries."""
    where = natural_key(op) if natural else {"_id": op.id}
    return {**where, "_sidecar.version": {"$not": {"$gt": op.version}}}


def newer_than(doc: dict, version: int) -> bool:
    """What the version guard (``version_guard``) would refuse: a numeric ``_sidecar.version``
    above ours (MongoDB compares numbers with numbers only)."""
    meta = doc.get("_sidecar")
    held = meta.get("version") if isinstance(meta, dict) else None
    return isinstance(held, (int, float)) and not isinstance(held, bool) and held > version
