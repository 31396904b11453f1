"""A warm ``sync`` that costs what changed: the checkpoint of the last clean one.

A full sync that left the data dir and MongoDB equal (parity, every write
acknowledged, nothing held, no bad input, no foreign document, no fresh volume)
leaves a checkpoint in ``memory_sidecar_meta``: a point in MongoDB's change
stream, the fingerprint of the settings and the code, the server's replica-set
name and clock, and the parity section it reported. The point is the one it took
*before it read anything*, moved past its own writes only when every event
since is one of them (``accounted``): a change anyone else made meanwhile is
after the point, for the next sync to see.

The next sync asks two questions before loading anything:

* MongoDB: did any collection of the database change after that point (one
  change-stream aggregate resumed from it; the lease, this checkpoint, its
  listing and the audit trail excepted)? An insert, update, replace, delete,
  drop, rename or a dropped database all count, whoever made them. "Nothing" is
  proven, not read from an empty batch: a fence document is written once the
  stream is open and the stream read up to the fence's own event
  (``ChangeFeed.changes_until_fence``).
* the data dir: is every file one the checkpoint's listing names (the live
  manifests and their quick-check records, read when it was saved: unchanged
  since, as no event says otherwise), with that stat data (size, mtime_ns,
  ctime_ns, inode, device, one ``lstat`` each), and no file more, none less,
  nothing skipped? A record the quick check would not trust (racily clean, made
  under other settings) keeps the checkpoint from being saved; one from the
  future (the clock went back) keeps it from being used.

When both answers are "nothing changed", the checkpoint's parity is still the
truth: the sync reports it without reading a file or a document, writes
nothing (the fence and the moved checkpoint are bookkeeping; the blob GC waits
for the next full sync), and moves the checkpoint on to the point it asked at.
Anything else is the full sync (sidecar/sync.py), with the reason in the
report's ``checkpoint``: an event, a history the server no longer keeps, a
server without change streams (a standalone ``mongod``), another deployment, a
server clock behind the checkpoint's, a file new, gone, changed or racy, a
setting or the version changed, a checkpoint in a shape we cannot use (someone
else may have written it). Nothing here ever writes data or decides a
deletion: the worst a wrong "changed" costs is the full sync's time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zlib
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import bson

from . import __version__, quick
from .config import Config
from .localindex import BATCH, LocalIndex, drop_tables, put_many
from .model import utcnow
from .names import EPISODES, FILES, HUBS, SNAPSHOTS
from .changefeed import ChangeFeed, ChangesUnknown, describe
from .source import Prober, Skipped, SourceError, walk
from .store import Store

log = logging.getLogger("sidecar.checkpoint")

# Bumped whenever what a checkpoint vouches for changes meaning: older ones are then not used.
FORMAT = 1
# A listing decompresses to at most this (500k files: ~30 MB).
LISTING_MAX = 1 << 30
# The report sections a checkpoint carries (sync.build_report's parity part).
PARITY_KEYS = ("source_counts", "mongo_counts", "checksums", "parity", "kinds", "stored_raw")
# A sync that wrote more documents than this leaves no checkpoint: reading that many of
# its own events back costs about what the next sync's full check does (36k events ~2 s
# on SecantusDB), and would make every bulk sync that much slower.
ACCOUNT_MAX = 5_000
# Settings that cannot change what a file becomes in MongoDB or what parity says:
# a change of any other one (or a new one) makes the next sync a full one.
_NOT_FINGERPRINTED = frozenset({
    "mongodb_url", "sidecar_token", "sidecar_http_host", "sidecar_http_port", "sidecar_socket",
    "sidecar_lease_ttl_s", "sidecar_write_concern", "sidecar_write_timeout_ms",
    "sidecar_server_selection_timeout_ms", "sidecar_write_stall_s", "sidecar_batch_size",
    "sidecar_flush_interval_ms", "sidecar_root_check_ms", "sidecar_verify_interval",
    "sidecar_state_dir", "sidecar_log_format", "sidecar_log_level",
})


def settings_fingerprint(config: Config) -> str:
    """The settings and code a checkpoint was made under (never a credential: the URL
    and the token are not part of it)."""
    fields = {name: value for name, value in config.model_dump(mode="json").items()
              if name not in _NOT_FINGERPRINTED}
    fields["_data_dir"] = str(Path(config.data_dir).resolve())
    fields["_ignore"] = list(config.ignore_globs)  # the built-in globs too, not only SIDECAR_IGNORE
    text = json.dumps([FORMAT, __version__, quick.fingerprint(config.sidecar_redact_keys), quick.RACY_NS, fields],
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class Point:
    """Where MongoDB's change stream stood (``ChangeFeed.change_point``) and the server's clock then."""

    token: Any
    set_name: str | None
    op_time: Any  # bson.Timestamp, or None where the server reports none


@dataclass
class Outcome:
    """What the checkpoint said: ``report`` (its parity part) when nothing changed, else
    ``reason``; ``point`` is where the stream was asked (the next checkpoint's)."""

    report: dict[str, Any] | None
    reason: str
    files: int = 0
    point: Point | None = None
    since: datetime | None = None
    carried: dict[str, Any] | None = None  # the checkpoint, to move on unchanged


def now_point(store: Store) -> Point | None:
    """The point a full sync's checkpoint will start from, taken before it reads
    anything; None when the server cannot give one (then no checkpoint is made)."""
    feed = ChangeFeed(store)
    try:
        set_name, op_time = feed.server_clock()
        _, token = feed.change_point()
    except ChangesUnknown as exc:
        log.info("no sync checkpoint on this server: %s", exc)
        return None
    return Point(token, set_name, op_time) if _token_ok(token) else None


def _token_ok(token: Any) -> bool:
    return isinstance(token, dict) and isinstance(token.get("_data"), (str, bytes)) and len(token) <= 4


def _parse(doc: Any) -> dict[str, Any] | None:
    """A checkpoint read back, every field's type checked (someone else may have written it)."""
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        return None
    report = doc.get("report")
    if not _token_ok(doc.get("token")) or not isinstance(doc.get("settings"), str):
        return None
    if not isinstance(report, dict) or set(report) != set(PARITY_KEYS):
        return None
    parity = report.get("parity")
    if not isinstance(parity, dict) or parity.get("all_match") is not True:
        return None
    for name in ("files", "latest_at"):
        value = doc.get(name)  # an int, or bson.Int64 (a subclass) once over 2**31
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            return None
    if not isinstance(doc.get("listing_id"), bson.ObjectId) or not isinstance(doc.get("listing_sha256"), str):
        return None
    if not isinstance(doc.get("set_name"), (str, type(None))):
        return None
    if not isinstance(doc.get("op_time"), (bson.Timestamp, type(None))):
        return None
    at = doc.get("at")
    return {**doc, "at": at if isinstance(at, datetime) else None}


def check(config: Config, store: Store, root: Path, index: LocalIndex) -> Outcome:
    """Whether nothing changed on either side since the checkpoint (see the module)."""
    feed = ChangeFeed(store)
    try:
        doc = feed.read_checkpoint()
    except ChangesUnknown as exc:
        return Outcome(None, f"checkpoint unusable ({exc})")
    cp = _parse(doc)
    if cp is None:
        return Outcome(None, "no checkpoint" if doc is None else "checkpoint unusable")
    if cp["settings"] != settings_fingerprint(config):
        return Outcome(None, "settings or version changed")
    if cp["latest_at"] > quick.wall_ns():
        return Outcome(None, "a record the quick check does not trust (from the future: the clock went back)")
    try:
        set_name, op_time = feed.server_clock()
        if set_name != cp["set_name"]:
            return Outcome(None, "another deployment")
        if cp["op_time"] is not None and (op_time is None or op_time < cp["op_time"]):
            return Outcome(None, "the server's clock is behind the checkpoint")
        event, token = feed.change_point(since=cp["token"])
    except ChangesUnknown as exc:
        return Outcome(None, f"changes unknown: {exc}")
    if event is not None:
        return Outcome(None, f"MongoDB changed ({event})")
    if not _token_ok(token):
        return Outcome(None, "changes unknown: no resume point")
    point = Point(token, set_name, op_time)
    reason = _disk_unchanged(config, feed, cp, root, index)
    if reason is not None:
        return Outcome(None, reason, point=point)
    return Outcome(cp["report"], "", files=cp["files"], point=point, since=cp["at"], carried=cp)


def _pack(entries: list[tuple[str, bytes]]) -> bytes:
    """A listing: per file, its path's length (2 bytes), the path (UTF-8), its stat key (8 bytes)."""
    out = bytearray()
    for rel, key in entries:
        raw = rel.encode()
        out += len(raw).to_bytes(2, "big") + raw + key
    return zlib.compress(bytes(out), 1)


def _unpack(data: bytes) -> Iterator[tuple[str, bytes]]:
    """ValueError (zlib.error is one) when it is not a listing."""
    raw = zlib.decompressobj().decompress(data, LISTING_MAX)
    pos = 0
    while pos < len(raw):
        if pos + 2 > len(raw):
            raise ValueError("truncated")
        n = int.from_bytes(raw[pos:pos + 2], "big")
        end = pos + 2 + n + 8
        if end > len(raw):
            raise ValueError("truncated")
        yield raw[pos + 2:pos + 2 + n].decode(), raw[pos + 2 + n:end]
        pos = end


def _disk_unchanged(config: Config, feed: ChangeFeed, cp: dict[str, Any], root: Path,
                    index: LocalIndex) -> str | None:
    """None when every file is the one the checkpoint's listing names, with that stat
    data, and there is no other; else the reason. No file is read, no manifest either:
    they are what they were at the checkpoint's point (no event since)."""
    try:
        data = feed.get_listing(cp["listing_id"])
    except ChangesUnknown as exc:
        return f"checkpoint unusable ({exc})"
    if data is None or hashlib.sha256(data).hexdigest() != cp["listing_sha256"]:
        return "checkpoint unusable (its listing is missing or not its own)"
    records = index.map("checkpoint_records")  # rel -> stat key: out of the heap at 500k files
    try:
        try:
            batch: list[tuple[str, bytes]] = []  # handed over BATCH at a time: one transaction each
            for entry in _unpack(data):
                batch.append(entry)
                if len(batch) >= BATCH:
                    put_many(records, batch)
                    batch = []
            put_many(records, batch)
        except ValueError:
            return "checkpoint unusable (a listing of another shape)"
        if len(records) != cp["files"]:
            return "checkpoint unusable (a listing of another length)"
        files = walk(root, config.ignore_globs, spill=lambda: index.map("listing"))
        with Prober(root) as prober, closing(files):  # closed when left early: no fd stays open
            for item in files:
                if isinstance(item, Skipped):
                    return "a path the sync skips"
                key = records.pop(item, None)
                if key is None:
                    return "a file no live manifest names"
                try:
                    st = prober.lstat(item)
                except SourceError:
                    return "a file that cannot be probed"
                if quick.lstat_key(st) != key:
                    return "a file changed"
        if len(records):
            return "a mirrored file is missing"
        return None
    finally:
        drop_tables(records)


def clean(report: dict[str, Any], result: Any, held: list, view: Any, store: Store,
          blobs_collected: int) -> bool:
    """Whether a full sync may leave a checkpoint: parity, every write acknowledged, and
    nothing refused, held, skipped, bad or foreign. (Its own writes are then accounted
    for one by one: ``accounted``.) Anything it did not vouch for is checked in full next time."""
    return (report["parity"]["all_match"] and result is not None and not result.stale
            and not result.failed and not held and not view.problems and not view.fresh_volume
            and not store.foreign_skipped and blobs_collected == 0)


def accounted(store: Store, point: Point, applied: list) -> tuple[Point | None, str]:
    """After a full sync: whether every change MongoDB's stream shows after ``point`` is
    one of the sync's own acknowledged writes, and then the point after them (a fence's),
    else (None, why). A change is the sync's own only when it is on a document the sync
    wrote and wrote exactly what the sync sent (the whole document of an insert or a
    replace, the fields of an update): a write MongoDB acknowledged without changing
    anything (a guard that matched nothing, a duplicate taken as already there) makes no
    event, and someone else's change to that document must not pass for it. An event on
    a document it did not write (a tombstone, a blob, anyone else's) or one it cannot
    match means someone else changed MongoDB meanwhile; a delete is never accounted."""
    sent = [op for op in applied if op.action != "track"]  # a track is the state's only
    if not sent:
        return point, ""
    if len(sent) > ACCOUNT_MAX:
        return None, f"more than {ACCOUNT_MAX} writes to account for"
    names = {logical: store.coll[logical].name for logical in (HUBS, EPISODES, SNAPSHOTS, FILES)}
    ours: dict[str, list[Any]] = {}  # "<collection>\0<_id>" -> what each write wrote (``_strict``)
    for op in sent:
        wrote = _sent(op)
        if wrote is None:
            return None, f"a {op.action} cannot be accounted for"
        ours.setdefault(f"{names[op.coll]}\0{op.id}", []).append(_strict(wrote))
    try:
        with closing(ChangeFeed(store).changes_until_fence(point.token)) as changes:
            for change in changes:
                if change.op == "fence":
                    return Point(change.key, point.set_name, point.op_time), ""
                mine = ours.get(f"{change.coll}\0{change.key}") if isinstance(change.key, str) else None
                written = _strict(change.written)
                if not mine or written not in mine:
                    return None, f"a change the sync did not make ({describe(change.coll, change.op)})"
                mine.remove(written)
    except ChangesUnknown as exc:
        return None, f"changes unknown: {exc}"
    raise AssertionError("unreachable: the feed ends with the fence")


def _strict(value: Any) -> Any:
    """``value`` in a form that compares equal only where the BSON does: each value
    tagged with its type (in Python ``True == 1 == 1.0``, and ``{"n": True}`` would pass
    for ``{"n": 1}``), a document's fields in name order."""
    if isinstance(value, dict):
        return "dict", tuple(sorted((str(k), _strict(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return "list", tuple(_strict(v) for v in value)
    return type(value).__name__, value


def _sent(op: Any) -> tuple[str, Any] | None:
    """What a write the sidecar sent leaves in its change event (``changefeed._written``),
    through BSON as the server keeps it (datetimes to the millisecond, tuples as lists)."""
    if op.action in ("insert", "update") and isinstance(op.doc, dict):
        return "doc", _bson({k: v for k, v in op.doc.items() if k != "_id"})
    if op.action == "setpos":
        return "set", _bson({"_sidecar.pos": op.pos})
    if op.action == "stat" and isinstance(op.doc, dict):
        return "set", _bson({"_sidecar.stat": op.doc})
    return None  # a delete, a deletion mark: not accounted (the next sync checks in full)


_OPTIONS = bson.CodecOptions(tz_aware=True)


def _bson(doc: dict[str, Any]) -> dict[str, Any]:
    return bson.decode(bson.encode(doc), codec_options=_OPTIONS)


def _listing(feed: ChangeFeed, config: Config) -> tuple[bytes | None, str, int, int]:
    """(the listing of every live manifest's trusted stat key, "", files, the latest
    record's moment), or (None, why, 0, 0) when some record is not trusted: then the
    next sync would check in full anyway."""
    cfg = quick.fingerprint(config.sidecar_redact_keys)
    entries: list[tuple[str, bytes]] = []
    latest = 0
    for rel, deleted, raw in feed.records():
        if not isinstance(rel, str) or len(rel.encode()) >= 1 << 16:
            return None, "a manifest of another shape", 0, 0
        if deleted:
            continue
        trusted = quick.record_key(raw, cfg)
        if trusted is None:
            return None, "a record the quick check does not trust (racy, missing or of another shape)", 0, 0
        entries.append((rel, trusted[0]))
        latest = max(latest, trusted[1])
    return _pack(entries), "", len(entries), latest


def save(config: Config, store: Store, point: Point, report: dict[str, Any]) -> str:
    """The checkpoint of a full sync at ``point`` (taken before it read anything, or
    after its own writes: ``accounted``), with the listing of the manifests' records
    read now: a change to one after ``point`` is an event the next check sees.
    Returns "" when saved, else why not."""
    feed = ChangeFeed(store)
    try:
        data, why, files, latest = _listing(feed, config)
        if data is None:
            return why
        listing_id = feed.put_listing(data)
        _write(config, feed, point, {"report": {key: report[key] for key in PARITY_KEYS}, "files": files,
                                     "latest_at": latest, "listing_id": listing_id,
                                     "listing_sha256": hashlib.sha256(data).hexdigest()})
    except ChangesUnknown as exc:
        return str(exc)
    try:
        feed.drop_listings(keep=listing_id)
    except ChangesUnknown as exc:  # saved; the old listings wait for the next save
        log.warning("sync checkpoint: %s", exc)
    return ""


def move_on(config: Config, store: Store, outcome: Outcome) -> bool:
    """A check that found nothing changed: the same checkpoint (report, listing), at
    the point it asked, so the history the server keeps need only reach back to it.
    Whether it was moved (MongoDB may refuse the write: then it stays where it was)."""
    carried = outcome.carried or {}
    if outcome.point is None or not carried:
        return False
    try:
        _write(config, ChangeFeed(store), outcome.point,
               {key: carried[key] for key in ("report", "files", "latest_at", "listing_id", "listing_sha256")})
    except ChangesUnknown as exc:
        log.warning("sync checkpoint not moved on: %s", exc)
        return False
    return True


def _write(config: Config, feed: ChangeFeed, point: Point, fields: dict[str, Any]) -> None:
    feed.write_checkpoint({"format": FORMAT, "token": point.token, "set_name": point.set_name,
                           "op_time": point.op_time, "settings": settings_fingerprint(config),
                           "at": utcnow(), **fields})
