"""``memory-sidecar archive``: old episodes out of MongoDB into a compressed
JSON Lines file, and back.

Selected: ``episodic_memory`` documents whose ``updated_at_dt`` (else their
``updated_at``) is before ``--before`` (00:00 UTC), with their files: the
manifests of the run's canonical episode file and of ``runs/run_<run_id>.json``
in ``memory_files``, and the GridFS blobs those name (generic files over 8 MB).

The archive (gzip, mode 0600: it holds learner data) has one JSON object per
line, each self-describing by ``type``: ``header``, ``episode``, ``file``,
``blob`` (bytes in base64), ``end`` (counts and the sha256 of every line before
it). Documents are MongoDB Extended JSON (canonical), so every BSON type comes
back as it was (bytes as ``$binary`` base64, datetimes, int64, NaN): an archive
restores byte-identically. It is written to a temp file beside the target,
fsynced, renamed into place, and re-read and checked against what was exported
before anything is pruned.

``--prune`` removes the archived documents through the same path as every other
removal (``Store.apply`` with delete ops: each document is first copied to
``memory_tombstones``, the delete is sent only for exactly that version), under
the writer lease. Files on disk are never touched: an archived episode whose
file is still in the data dir is mirrored again the next time the sidecar looks
at it (a start-up reconcile, a ``sync``, a write). Archive and prune are meant
for episodes whose files are gone from disk, or removed with them.

``--restore PATH`` puts an archive's documents and blobs back into MongoDB
(blobs, then episodes, then manifests); a document or blob that is there
already wins and is reported as kept. ``memory-sidecar restore`` (or a mongo
mode start) then writes the files.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import logging
import os
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import bson
from bson import json_util
from pymongo.errors import PyMongoError
from tqdm import tqdm

from .classify import episode_path
from .config import Config
from .names import EPISODES, FILES
from .state import Op
from .events import build_events, note_event
from .lease import Lease
from .model import parse_iso, utcnow
from .store import Store

log = logging.getLogger("sidecar.archive")

FORMAT = "memory-sidecar-archive"
VERSION = 1
_JSON = json_util.CANONICAL_JSON_OPTIONS
_JSON_IN = json_util.CANONICAL_JSON_OPTIONS.with_options(tz_aware=True, tzinfo=timezone.utc)


class ArchiveError(Exception):
    """An unusable archive or target: nothing was written or removed."""


def _progress(total: int | None, desc: str) -> tqdm:
    return tqdm(total=total, desc=desc, unit="episode", disable=not sys.stderr.isatty(), leave=False)


def _line(obj: dict) -> bytes:
    return json_util.dumps(obj, json_options=_JSON, ensure_ascii=False).encode("utf-8") + b"\n"


def _fingerprint(doc: Any) -> bytes:
    return hashlib.sha256(bson.encode({"d": doc})).digest()


def _older(doc: dict, before: datetime) -> bool:
    when = doc.get("updated_at_dt")
    if not isinstance(when, datetime):
        when = parse_iso(doc.get("updated_at"))
    elif when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when is not None and when < before


def run_file_path(run_id: str) -> str:
    return f"runs/run_{run_id}.json"


@dataclass
class Exported:
    """What one archive holds, as (logical, id, fingerprint) and the ops to prune it."""

    path: Path
    counts: dict[str, int] = field(default_factory=lambda: {"episodes": 0, "files": 0, "blobs": 0})
    digest: str = ""
    prints: list[tuple[str, Any, bytes]] = field(default_factory=list)
    items: list["_Item"] = field(default_factory=list)  # what --prune removes (not the documents)


@dataclass(slots=True)
class _Item:
    logical: str  # EPISODES or FILES
    doc_id: Any  # the live document's _id
    run_id: str
    fingerprint: bytes
    version: int
    rel: str


def _selected(store: Store, before: datetime) -> Iterator[dict]:
    query = {"$or": [{"updated_at_dt": {"$lt": before}}, {"updated_at_dt": {"$exists": False}},
                     {"updated_at_dt": None}]}
    for doc in store.find(EPISODES, query, sort=[("_id", 1)]):
        if isinstance(doc.get("run_id"), str) and _older(doc, before):
            yield doc


def _files_of(store: Store, episode: dict) -> list[dict]:
    run_id = episode["run_id"]
    meta = episode.get("_sidecar")
    paths = {episode_path(run_id), run_file_path(run_id)}
    if isinstance(meta, dict) and isinstance(meta.get("path"), str):
        paths.add(meta["path"])
    return list(store.find(FILES, {"_id": {"$in": sorted(paths)}}, sort=[("_id", 1)]))


def export(store: Store, before: datetime, out: Path) -> Exported:
    """Write the archive (temp file, fsync, rename, fsync of the directory)."""
    out = Path(out)
    if out.exists() or out.is_symlink():
        raise ArchiveError(f"{out} exists; not overwritten")
    if not out.parent.is_dir():
        raise ArchiveError(f"{out.parent} is not a directory")
    result = Exported(out)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{os.urandom(4).hex()}"
    digest = hashlib.sha256()
    total = store.count(EPISODES, {"$or": [{"updated_at_dt": {"$lt": before}},
                                           {"updated_at_dt": {"$exists": False}}, {"updated_at_dt": None}]})
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
            def emit(obj: dict) -> None:
                data = _line(obj)
                digest.update(data)
                gz.write(data)
            emit({"type": "header", "format": FORMAT, "version": VERSION, "db": store.config.mongodb_db_name,
                  "before": before.isoformat(), "created_at": utcnow().isoformat()})
            bar = _progress(total, "archiving")
            for episode in _selected(store, before):
                emit({"type": "episode", "coll": EPISODES, "run_id": episode["run_id"], "doc": episode})
                result.prints.append(("episode", episode["run_id"], _fingerprint(episode)))
                meta = episode.get("_sidecar")
                rel = meta.get("path") if isinstance(meta, dict) and isinstance(meta.get("path"), str) else ""
                result.items.append(_Item(EPISODES, episode["_id"], episode["run_id"], _fingerprint(episode),
                                          _version(episode), rel or episode_path(episode["run_id"])))
                result.counts["episodes"] += 1
                for man in _files_of(store, episode):
                    blob_id = man.get("blob_id")
                    if blob_id is not None:
                        data = store.read_blob(blob_id)
                        files_meta = store.db[f"{store.blobs_name}.files"].find_one({"_id": blob_id}) or {}
                        emit({"type": "blob", "bucket": store.blobs_name, "blob_id": blob_id,
                              "filename": files_meta.get("filename", man["_id"]),
                              "metadata": files_meta.get("metadata") or {},
                              "sha256": hashlib.sha256(data).hexdigest(),
                              "data": base64.b64encode(data).decode("ascii")})
                        result.prints.append(("blob", blob_id, hashlib.sha256(data).digest()))
                        result.counts["blobs"] += 1
                    emit({"type": "file", "coll": store.files_name, "path": man["_id"],
                          "run_id": episode["run_id"], "doc": man})
                    result.prints.append(("file", man["_id"], _fingerprint(man)))
                    result.items.append(_Item(FILES, man["_id"], episode["run_id"], _fingerprint(man),
                                              _version(man), man["_id"]))
                    result.counts["files"] += 1
                bar.update(1)
            bar.close()
            result.digest = digest.hexdigest()
            gz.write(_line({"type": "end", "counts": result.counts, "sha256": result.digest}))
            gz.close()
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dfd = os.open(out.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return result


@dataclass
class Archive:
    header: dict
    counts: dict[str, int]
    prints: list[tuple[str, Any, bytes]]  # (type, id, fingerprint) per record, in file order


def _print_of(rec: dict) -> tuple[str, Any, bytes]:
    if rec["type"] == "blob":
        return ("blob", rec["blob_id"], hashlib.sha256(rec["data"]).digest())
    if rec["type"] == "episode":
        return ("episode", rec["run_id"], _fingerprint(rec["doc"]))
    return ("file", rec["path"], _fingerprint(rec["doc"]))


def _lines(path: Path) -> Iterator[tuple[int, bytes, dict]]:
    """(line number, raw line, decoded object), one at a time (an archive may be large)."""
    try:
        with gzip.open(path, "rb") as gz:
            for number, data in enumerate(gz, 1):
                try:
                    obj = json_util.loads(data.decode("utf-8"), json_options=_JSON_IN)
                except (ValueError, UnicodeDecodeError, bson.errors.InvalidBSON) as exc:
                    raise ArchiveError(f"{path}: line {number} is not Extended JSON "
                                       f"({type(exc).__name__})") from None
                if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
                    raise ArchiveError(f"{path}: line {number} has no type")
                yield number, data, obj
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise ArchiveError(f"{path}: cannot read the archive ({type(exc).__name__}: "
                           f"{getattr(exc, 'strerror', None) or 'truncated or not gzip'})") from None


def _record(path: Path, number: int, obj: dict) -> dict:
    if obj["type"] not in ("episode", "file", "blob"):
        raise ArchiveError(f"{path}: line {number}: unknown type {obj['type'][:40]!r}")
    if obj["type"] == "blob":
        try:
            obj["data"] = base64.b64decode(obj["data"], validate=True)
        except (KeyError, TypeError, ValueError):
            raise ArchiveError(f"{path}: line {number}: blob data is not base64") from None
        if hashlib.sha256(obj["data"]).hexdigest() != obj.get("sha256"):
            raise ArchiveError(f"{path}: line {number}: blob sha256 mismatch")
    elif not isinstance(obj.get("doc"), dict):
        raise ArchiveError(f"{path}: line {number}: no document")
    return obj


def records(path: Path, kind: str | None = None) -> Iterator[dict]:
    """The records of an archive ``read_archive`` checked, streamed (of one type)."""
    for number, _, obj in _lines(Path(path)):
        if obj["type"] in ("header", "end") or (kind is not None and obj["type"] != kind):
            continue
        yield _record(Path(path), number, obj)


def read_archive(path: Path) -> Archive:
    """Read and check a whole archive: header, every line, the end line's counts and
    sha256. Raises ArchiveError (never a value in the message). Streams: only the
    records' fingerprints are kept."""
    path = Path(path)
    digest = hashlib.sha256()
    header: dict | None = None
    end: dict | None = None
    prints: list[tuple[str, Any, bytes]] = []
    counts = {"episodes": 0, "files": 0, "blobs": 0}
    for number, data, obj in _lines(path):
        if end is not None:
            raise ArchiveError(f"{path}: line {number} after the end line")
        if obj["type"] == "end":
            end = obj
            continue
        digest.update(data)
        if number == 1:
            if obj["type"] != "header" or obj.get("format") != FORMAT:
                raise ArchiveError(f"{path}: not a {FORMAT} file")
            if obj.get("version") != VERSION:
                raise ArchiveError(f"{path}: archive version {obj.get('version')!r} not supported")
            header = obj
            continue
        rec = _record(path, number, obj)
        prints.append(_print_of(rec))
        counts[rec["type"] + "s"] += 1
    if header is None:
        raise ArchiveError(f"{path}: empty archive")
    if end is None:
        raise ArchiveError(f"{path}: no end line (truncated)")
    if end.get("sha256") != digest.hexdigest() or end.get("counts") != counts:
        raise ArchiveError(f"{path}: the end line's counts or sha256 do not match the content")
    return Archive(header, counts, prints)


def verify(exported: Exported) -> Archive:
    """Re-read the archive just written; every document as exported."""
    archive = read_archive(exported.path)
    if archive.prints != exported.prints or archive.counts != exported.counts:
        raise ArchiveError(f"{exported.path}: re-read archive differs from what was exported; nothing pruned")
    return archive


def _version(doc: dict) -> int:
    meta = doc.get("_sidecar")
    version = meta.get("version") if isinstance(meta, dict) else None
    return version if isinstance(version, int) and not isinstance(version, bool) else 0


def prune(store: Store, exported: Exported) -> dict[str, Any]:
    """Remove what the (verified) archive holds, through the tombstones. A document
    that changed since it was exported is kept (reported)."""
    kept: list[dict[str, str]] = []
    ops: list[Op] = []
    changed: set[str] = set()
    for item in exported.items:  # each episode before its files
        if item.run_id in changed:
            continue  # its episode stays: so do its files
        live = store.find_one(item.logical, {"_id": item.doc_id})
        if live is None or _fingerprint(live) != item.fingerprint:
            kept.append({"run_id": item.run_id, "path": item.rel, "reason": "changed or gone since exported"})
            if item.logical == EPISODES:
                changed.add(item.run_id)
            continue
        op_id = item.run_id if item.logical == EPISODES else item.doc_id
        ops.append(Op(item.logical, "delete", op_id, item.version, rel=item.rel))
    result = store.apply(ops)
    now = utcnow()
    for op in result.stale:
        kept.append({"id": op.id, "reason": "newer data in MongoDB: kept"})
    for op, why in result.failed:
        kept.append({"id": op.id, "reason": why})
    applied = [op for op in result.applied if op.action == "delete"]
    events = build_events(applied, "archive", now, summarize_inserts=False, full_payload=False)
    events.append(note_event("episodes_archived", ".", "archive", now, archive=exported.path.name,
                             count=sum(1 for op in applied if op.coll == EPISODES)))
    store.record_events(events)
    return {"removed": {"episodes": sum(1 for op in applied if op.coll == EPISODES),
                        "files": sum(1 for op in applied if op.coll == FILES)},
            "kept": kept}


def restore_archive(store: Store, path: Path) -> dict[str, Any]:
    """Put an archive back into MongoDB. Reads and checks the whole file first."""
    archive = read_archive(path)
    put = {"episodes": 0, "files": 0, "blobs": 0}
    kept: list[dict[str, str]] = []
    present = 0
    bar = _progress(sum(archive.counts.values()), "restoring")
    try:
        for rec in records(path, "blob"):
            held = store.blob_sha256(rec["blob_id"])
            if held == rec["sha256"]:
                present += 1  # the same bytes (kept alive by a tombstone until gc_blobs)
            elif held is not None:
                kept.append({"blob_id": str(rec["blob_id"]), "reason": "another blob has this id"})
            else:
                store.bucket.upload_from_stream_with_id(rec["blob_id"], rec.get("filename") or "",
                                                        rec["data"], metadata=rec.get("metadata") or {})
                put["blobs"] += 1
            bar.update(1)
        for rec in records(path, "episode"):
            doc = rec["doc"]
            if store.coll[EPISODES].find_one({"$or": [{"_id": doc["_id"]}, {"run_id": doc.get("run_id")}]},
                                             {"_id": 1}) is not None:
                kept.append({"run_id": str(doc.get("run_id")), "reason": "a live document exists"})
            else:
                store.coll[EPISODES].insert_one(doc)
                put["episodes"] += 1
            bar.update(1)
        # manifests last: a manifest claims the file's content is there
        for rec in records(path, "file"):
            doc = rec["doc"]
            if store.coll[FILES].find_one({"_id": doc["_id"]}, {"_id": 1}) is not None:
                kept.append({"path": str(doc["_id"]), "reason": "a live manifest exists"})
            else:
                store.coll[FILES].insert_one(doc)
                put["files"] += 1
            bar.update(1)
    except PyMongoError as exc:
        raise store._unavailable(exc) from None
    finally:
        bar.close()
    store.record_events([note_event("archive_restored", ".", "archive", utcnow(), archive=Path(path).name,
                                    count=put["episodes"])])
    return {"archive": str(path), "restored": put, "blobs_present": present, "kept": kept}


def run_archive_command(config: Config, store: Store, args) -> int:
    """The CLI's ``archive``: exit 0 done, 1 something kept, 2 usage or a bad archive, 3, 4."""
    from .cli import EXIT_MISMATCH, EXIT_OK, EXIT_USAGE, _print

    if args.restore is not None:
        if args.before or args.out or args.prune:
            print("memory-sidecar: archive --restore takes no --before/--out/--prune", file=sys.stderr)
            return EXIT_USAGE
    elif args.before is None or args.out is None:
        print("memory-sidecar: archive needs --before YYYY-MM-DD and --out PATH.jsonl.gz (or --restore PATH)",
              file=sys.stderr)
        return EXIT_USAGE
    store.ping()
    writing = args.restore is not None or args.prune
    lease = Lease(store, "archive", config.sidecar_lease_ttl_s) if writing else None
    if lease is not None:
        lease.acquire()  # LeaseHeld: a daemon writes this database; stop it first
    try:
        if args.restore is not None:
            try:
                report = restore_archive(store, args.restore)
            except ArchiveError as exc:
                print(f"memory-sidecar: {exc}; nothing restored", file=sys.stderr)
                return EXIT_USAGE
            _print(report)
            return EXIT_MISMATCH if report["kept"] else EXIT_OK
        try:
            exported = export(store, args.before, args.out)
            verify(exported)
        except ArchiveError as exc:
            print(f"memory-sidecar: {exc}", file=sys.stderr)
            return EXIT_USAGE
        report: dict[str, Any] = {"archive": str(exported.path), "before": args.before.date().isoformat(),
                                  "exported": exported.counts, "sha256": exported.digest, "verified": True}
        if args.prune:
            if lease is not None:
                lease.ensure()
            report["pruned"] = prune(store, exported)
        _print(report)
        return EXIT_MISMATCH if args.prune and report["pruned"]["kept"] else EXIT_OK
    finally:
        if lease is not None:
            try:
                lease.release()
            except Exception:  # noqa: BLE001 - the lease expires by itself
                log.warning("could not release the writer lease; it expires in %s s", config.sidecar_lease_ttl_s)
