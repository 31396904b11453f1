"""The quick check (rsync's, git's index): a file whose stat data equals what
was recorded when it was last mirrored is not read again at a full reconcile
or a ``sync``.

The record (``_sidecar.stat`` of the file's manifest, written with the manifest
or refreshed by a bookkeeping ``$set``, sidecar/store.py) says: "when the file
had this size, mtime_ns, ctime_ns, inode and device, read at wall-clock ``at``,
its bytes had ``sha256`` and MongoDB was given documents hashing to ``docs``".
A file is *clean*, and skipped, only when all of these hold:

- its stat data now equals the record's. ctime cannot be set from user space:
  a ``touch -r``/``cp -p``/``rsync -a`` that restores the mtime after a rewrite
  still moves it; a file replaced by a rename has another inode;
- the record is not *racily clean* (git's rule): the file's mtime and ctime
  were safely older than the moment of the read, by ``RACY_NS`` (2 s: FAT
  keeps mtimes to 2 s, ext3 and many network filesystems to 1 s, so a rewrite
  in the same tick as the recorded version, keeping the size, leaves the same
  stat data; 2 s also covers the filesystem's clock running a little behind
  the wall clock: a network filesystem whose server's clock is further behind
  weakens the rule, and only ``--checksum`` finds what it misses);
- the record is not from the future (``at`` after now): the clock went back
  since it was made, and timestamps given meanwhile may repeat the recorded
  ones; the file is read. (A clock stepped back, the file changed in the very
  tick of its recorded ctime, and only checked after the clock caught up again,
  is the one case left, as in git: ``sync --checksum`` reads everything.)
- MongoDB still holds what the record says it was given: ``docs`` equals the
  hash the state load computed from the documents' content (an episode, the
  snapshot, a generic file's content; sidecar/store.py). A document edited or
  removed behind the sidecar's back makes its file be read and diffed again;
- the record was made under the same model and redaction (``fingerprint``):
  changing ``SIDECAR_REDACT_KEYS`` or the document model reads everything.

Hub files are always read: their lineage keeps their key set (sidecar/lineage.py)
and there are a few. Records are validated field by field (documents may be
written by anyone): an invalid one means "read the file".

Memory: the per-file record is not kept in the long-lived ``MirrorState``. A
``Book`` is built beside it from the state's rows (``collect``) for one scan,
24 bytes per file (8-byte digests of the stat data, the documents' hash and the
bytes' hash), emptied as the scan takes its entries, and dropped after it; in
the daemon and ``sync`` its entries are a table of the local index
(sidecar/localindex.py), not a dict.
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from typing import TYPE_CHECKING, Any

from .classify import Kind
from .localindex import BATCH, drop_tables, put_many
from .model import LAYOUT

if TYPE_CHECKING:
    from .model import FilePlan
    from .source import FileRead, FileStat
    from .state import FileState, MirrorState, Op

log = logging.getLogger("sidecar.quick")

RACY_NS = 2_000_000_000
# Bumped whenever the documents a file becomes change shape: every record made
# before then stops matching, so the next start reads (and rewrites) everything.
MODEL = 1
_INT64 = 1 << 63
_HEX = frozenset("0123456789abcdef")
DRIFT_SAMPLE = 200

CLEAN, UNRECORDED, UNTRUSTED, CHANGED, MONGO_CHANGED = (
    "clean", "unrecorded", "untrusted", "changed", "mongo_changed")


def wall_ns() -> int:
    """The wall clock (a function, so a test can step it back)."""
    return time.time_ns()


def fingerprint(redact_keys: Iterable[str]) -> str:
    """What else decides the documents of a file: the model and the redaction."""
    text = f"{MODEL}|" + ",".join(sorted(k.lower() for k in redact_keys))
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def int64(value: int) -> int:
    """An unsigned 64-bit stat value (inode numbers on btrfs/NFS/XFS) as the int64
    BSON can hold, losslessly (two's complement)."""
    return value - (1 << 64) if value >= _INT64 else value


def _stat_key(size: int, mtime: int, ctime: int, ino: int, dev: int) -> bytes:
    packed = struct.pack("<5q", size, mtime, ctime, int64(ino), int64(dev))
    return hashlib.blake2b(packed, digest_size=8).digest()


def _hex8(value: Any) -> bytes | None:
    """The first 8 bytes of a lowercase hex sha256, or None (anything else)."""
    if type(value) is bytes and len(value) == 32:
        return value[:8]
    if type(value) is str and len(value) == 64 and _HEX.issuperset(value):
        return bytes.fromhex(value[:16])
    return None


def docs_hash(plan: FilePlan) -> str | None:
    """The hash of what MongoDB is given for a file, as the state load computes it
    back from the documents (None for hubs: their entries are always diffed)."""
    if plan.kind is Kind.HUB:
        return None
    if plan.kind in (Kind.EPISODE, Kind.SNAPSHOT):
        return plan.doc_hash
    return plan.content_hash


def state_docs(fs: FileState, state: MirrorState) -> Any:
    """The same hash, of what MongoDB holds now (computed from the content at load)."""
    if fs.kind == Kind.EPISODE.value:
        held = state.episodes.get(fs.doc_id) if fs.doc_id is not None else None
        return held[0] if held is not None else None
    if fs.kind == Kind.SNAPSHOT.value:
        held = state.snapshots.get(fs.doc_id) if fs.doc_id is not None else None
        return held[0] if held is not None else None
    return fs.content_sha


def record(plan: FilePlan, read: FileRead, cfg: str) -> dict | None:
    """The record of one read, for the file's manifest; None when the read carries
    no stat data (bytes handed over without a read)."""
    if not read.ino or not read.read_at:
        return None
    # What of the file is stored raw (FilePlan.raw_items without the per-entry ones,
    # not walked here: this runs for every read), for a report made without reading it.
    raw = [r for r in (LAYOUT if plan.raw is not None and plan.kind.structured else None, plan.stored_raw) if r]
    rec = {"size": read.size, "mtime_ns": read.mtime_ns, "ctime_ns": read.ctime_ns,
           "ino": int64(read.ino), "dev": int64(read.dev), "at": read.read_at, "sha256": read.sha256,
           "docs": docs_hash(plan), "cfg": cfg, "version": plan.version}
    if raw:
        rec["raw"] = raw
    return rec


def racy(rec: dict, now: int) -> bool:
    """Git's racily clean, and a record from the future (the clock went back)."""
    return max(rec["mtime_ns"], rec["ctime_ns"]) > rec["at"] - RACY_NS or rec["at"] > now


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and -_INT64 <= value < _INT64


def parse(raw: Any) -> dict | None:
    """A record read from MongoDB, every field's type checked; None when unusable."""
    if not isinstance(raw, dict):
        return None
    for name in ("size", "mtime_ns", "ctime_ns", "ino", "dev", "at", "version"):
        if not _int(raw.get(name)):
            return None
    if raw["size"] < 0 or _hex8(raw.get("sha256")) is None:
        return None
    docs = raw.get("docs")
    if docs is not None and _hex8(docs) is None:
        return None
    if not isinstance(raw.get("cfg"), str):
        return None
    extra = raw.get("raw")
    if extra is not None and not (isinstance(extra, list) and len(extra) <= 4
                                  and all(isinstance(r, str) and len(r) <= 40 for r in extra)):
        return None
    return raw


def record_key(raw: Any, cfg: str) -> tuple[bytes, int] | None:
    """(the stat key, the moment) of a record read from MongoDB that the quick check
    trusts (valid, made under ``cfg``, not racily clean), else None. Whether its moment
    is in the future is the caller's to ask, at the time it compares."""
    rec = parse(raw)
    if rec is None or rec["cfg"] != cfg or racy(rec, rec["at"]):
        return None
    return _value(rec)[:8], rec["at"]


def stat_key(st: FileRead | FileStat) -> bytes:
    """What of a file's stat data a record keeps (compared with ``clean_key``)."""
    return _stat_key(st.size, st.mtime_ns, st.ctime_ns, st.ino, st.dev)


def lstat_key(st: os.stat_result) -> bytes:
    """The same key, of ``os.stat`` data (``source.Prober.lstat``)."""
    return _stat_key(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


def _value(rec: dict) -> bytes:
    return (_stat_key(rec["size"], rec["mtime_ns"], rec["ctime_ns"], rec["ino"], rec["dev"])
            + (_hex8(rec.get("docs")) or b"\0" * 8) + _hex8(rec["sha256"]))


class Book:
    """The records of one scan (see the module's docstring), and what it found.

    ``read_all`` (``sync --checksum``): every file is read; the verdicts only say
    which reads found drift (a file the quick check would have skipped whose bytes
    or documents differ from the record)."""

    def __init__(self, cfg: str, read_all: bool = False, entries: MutableMapping[str, bytes] | None = None) -> None:
        self.cfg = cfg
        self.read_all = read_all
        # rel -> 24-byte value; b"": recorded, not trusted. A dict, or a table of the
        # local index (sidecar/localindex.py), dropped with the book (``release``).
        self._entries: MutableMapping[str, bytes] = entries if entries is not None else {}
        self._raw: dict[str, tuple[str, ...]] = {}  # the few files with stored-raw reasons
        self.counts: Counter[str] = Counter()
        self.drift: list[dict[str, Any]] = []
        self._current: tuple[str, str, bytes] | None = None  # (rel, verdict, entry) of the file being read

    def collect(self, rows: Iterable[Any]) -> Iterator[Any]:
        """Pass ``Store.iter_state``'s rows through, keeping each manifest's record."""
        now = wall_ns()
        batch: list[tuple[str, bytes]] = []  # handed over BATCH at a time: one transaction each
        try:
            for row in rows:
                raw = getattr(row, "stat", None)
                if raw is not None:
                    rec = parse(raw)
                    if rec is None:
                        self.counts["records_invalid"] += 1
                    elif rec["cfg"] != self.cfg or racy(rec, now):
                        batch.append((row.rel, b""))
                    else:
                        batch.append((row.rel, _value(rec)))
                        if rec.get("raw"):
                            self._raw[row.rel] = tuple(rec["raw"])
                    if len(batch) >= BATCH:
                        put_many(self._entries, batch)
                        batch = []
                yield row
            put_many(self._entries, batch)  # the rows are all through: before any scan takes one
        except BaseException:
            self.release()  # a load cut short: no scan will take the records
            raise

    def __len__(self) -> int:
        return len(self._entries)

    def release(self) -> None:
        """The scan is over: drop what is left of the records."""
        drop_tables(self._entries)
        self._entries = {}

    def trusted(self, rel: str) -> bool:
        """Whether a probe of ``rel`` could spare its read (else it is read at once)."""
        return not self.read_all and bool(self._entries.get(rel))

    def verdict(self, rel: str, st: FileRead | FileStat, state: MirrorState) -> str:
        """Whether ``rel``, whose stat data is ``st``, is clean (see the docstring)."""
        if self._current is not None and self._current[0] == rel:
            return self._current[1]  # asked again for the same read (the probe, then the read)
        entry = self._entries.pop(rel, None)
        verdict = self._verdict(rel, entry, st, state)
        self.counts[verdict] += 1
        self._current = (rel, verdict, entry or b"")
        return verdict

    def _verdict(self, rel: str, entry: bytes | None, st: Any, state: MirrorState) -> str:
        if entry is None:
            return UNRECORDED
        if not entry:
            return UNTRUSTED
        if stat_key(st) != entry[:8]:
            return CHANGED
        fs = state.files.get(rel)
        if fs is None or fs.deleted:
            return UNRECORDED
        if fs.kind != Kind.HUB.value and _hex8(state_docs(fs, state)) != entry[8:16]:
            return MONGO_CHANGED
        return CLEAN

    def skip(self, verdict: str) -> bool:
        return verdict == CLEAN and not self.read_all

    def stored_raw(self, rel: str) -> list[dict[str, str]]:
        return [{"path": rel, "reason": r} for r in self._raw.pop(rel, ())]

    def after_read(self, read: FileRead, plan: FilePlan, ops: list[Op]) -> bool:
        """A scanned file was read and diffed: note drift, and say whether its
        record needs the bookkeeping refresh (a ``stat`` op)."""
        cur, self._current = self._current, None
        if cur is None or cur[0] != read.rel:
            return False
        _, verdict, entry = cur
        content = [op for op in ops if op.action not in ("track", "stat")]
        if content and verdict in (CLEAN, MONGO_CHANGED):
            self.counts["drift"] += 1
            if len(self.drift) < DRIFT_SAMPLE:
                side = "mongo" if _hex8(read.sha256) == entry[16:] else "disk"
                self.drift.append({"path": read.rel, "side": side,
                                   "documents": sorted({op.entity for op in content})[:20]})
        if plan.stat is None or racy(plan.stat, plan.stat["at"]):
            return False  # no record to make, or one the next check would not trust
        if _value(plan.stat) == entry:
            return False
        self.counts["records_refreshed"] += 1
        return True

    def log_drift(self, count: Callable[[str], Any] | None = None) -> None:
        """One warning per drifted file (paths and document ids, never a value)."""
        for item in self.drift:
            log.warning("drift: %s differed from MongoDB (%s side): %s", item["path"], item["side"],
                        ", ".join(item["documents"]))
            if count is not None:
                count("drift")

    def report(self, files_read: int = 0, files_quick_checked: int = 0, bytes_read: int = 0) -> dict[str, Any]:
        """What the scan did (counts by verdict) and the drift it found: paths and
        document ids, never a value."""
        out: dict[str, Any] = {"checksum": self.read_all, "files_read": files_read,
                               "files_quick_checked": files_quick_checked, "bytes_read": bytes_read}
        out.update({k: self.counts.get(k, 0) for k in (CLEAN, UNRECORDED, UNTRUSTED, CHANGED, MONGO_CHANGED,
            "records_invalid", "records_refreshed")})
        out["drift"] = {"count": self.counts.get("drift", 0), "items": list(self.drift)}
        return out


def unrecorded(ops: list[Op], stale: list[Op], failed: list[Op]) -> list[Op]:
    """A record says the file's content is in MongoDB: none is written for a file
    one of whose documents MongoDB refused (``stale``) or did not take (``failed``)
    in the same apply. Its manifest still lands, without it; a refresh is not sent."""
    bad = {op.rel for op in stale} | {op.rel for op in failed}
    if not bad:
        return ops
    kept = []
    for op in ops:
        if op.rel not in bad:
            kept.append(op)
        elif op.action != "stat":
            meta = (op.doc or {}).get("_sidecar")
            if isinstance(meta, dict):
                meta.pop("stat", None)
            kept.append(op)
    return kept
