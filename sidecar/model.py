"""Stage 3: one file read → a ``FilePlan`` (what MongoDB should hold for it).
The documents a plan becomes, and the way back from documents to values, are
``sidecar/documents.py``'s.

Collections (DESIGN §3; their names in ``sidecar/names.py``, the documents
built by ``sidecar/documents.py``):
  memory_hubs        one document per hub entry, _id "<hub_type>/<item_key>"
  runtime_snapshots  one document per distinct snapshot, _id = content hash
  episodic_memory    one document per run, _id = run_id
  <files>            one manifest per file, _id = relative path; for generic
                     files it also holds the content (JSON, bytes or GridFS)
  memory_tombstones  one document per removed document (or replaced GridFS
                     blob): the removed document as it was, kept for
                     SIDECAR_TOMBSTONE_DAYS (TTL on expire_at)

Every document the sidecar writes carries ``_sidecar``: source path, content
hash, the source version (file mtime_ns) that guards against regressions, and
what restore needs (entry position, the file's own field order).

Stored raw (nothing the legacy writer or anyone else wrote is lost):
  - a hub entry, episode or snapshot whose value BSON cannot hold (an int past
    int64, a ``$``/``.``/NUL key, nesting past MAX_DEPTH, a lone surrogate)
    keeps the value's canonical JSON as bytes in ``_sidecar.raw`` (reason in
    ``_sidecar.stored_raw``); a hub entry's ``payload`` is then null, an
    episode/snapshot keeps the top-level fields that BSON can hold.
  - a file whose layout cannot be reproduced from its values (not written by
    json.dumps: ``1e400``, ``1E5``, odd spacing, duplicate keys...) keeps its
    bytes in its manifest's ``raw`` with ``docs_hash``, the hash of the
    documents they go with; restore writes them while the documents still
    have that hash (else it renders the documents: MongoDB moved on).
  - an episode file that is not its run's canonical file
    (``episodes/skeleton_<run_id>.json`` for the run_id its content names) is
    a generic file (kind ``episode_copy``): the run's ``episodic_memory``
    document belongs to the canonical file only.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import bson

from .classify import Kind, classify, episode_path, hub_type_of, run_id_from_name
from .parse import (
    MAX_DOC_BYTES,
    BadInput,
    canonical,
    detect_format,
    loads,
    may_hold_surrogates,
    render,
    validate,
    value_hash,
)
from .source import FileRead

log = logging.getLogger("sidecar.model")

REDACTED = "***REDACTED***"
# Generic content larger than this goes to GridFS rather than inline.
INLINE_MAX_BYTES = 8 * 1024 * 1024
# What ``validate`` refuses that is kept verbatim (stored raw) rather than refused.
RAW_REASONS = frozenset({"bad_key", "int_overflow", "too_deep", "bad_string"})
LAYOUT = "layout"  # the stored_raw reason of a file whose bytes the manifest keeps


class HubEntry:
    """One hub entry: key, value and content hash.

    An entry that came out of ``HubMemo`` unchanged carries its exact bytes
    instead of a parsed value and parses them only if the value is asked for:
    only changed entries are ever written, so the other values are not needed
    (and are not kept in memory between versions)."""

    __slots__ = ("key", "_value", "hash", "_raw", "_redact", "stored_raw")

    def __init__(self, key: str, value: Any, hash: str, raw: bytes | None = None,
                 redact_keys: frozenset[str] = frozenset(), stored_raw: str | None = None) -> None:
        self.key = key
        self._value = value
        self.hash = hash
        self._raw = raw  # the entry's bytes from after its key's opening quote (see _entry_bytes)
        self._redact = redact_keys
        # Why the value is kept as JSON bytes (BSON cannot hold it), or None.
        self.stored_raw = stored_raw

    @property
    def value(self) -> Any:
        if self._raw is None:
            return self._value
        return redact(json.loads(b'{"' + self._raw + b"}")[self.key], self._redact)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, HubEntry):
            return NotImplemented
        # canonical, not ==: NaN != NaN, and the same value must compare equal
        return (self.key, self.hash, self.stored_raw, canonical(self.value)) == (
            other.key, other.hash, other.stored_raw, canonical(other.value))

    __hash__ = None

    def __repr__(self) -> str:  # never the value
        return f"HubEntry(key={self.key!r}, hash={self.hash!r})"


@dataclass(slots=True)
class FilePlan:
    rel: str
    kind: Kind
    sha256: str
    size: int
    version: int
    fmt: dict[str, Any] | None = None
    hub_type: str | None = None
    entries: list[HubEntry] = field(default_factory=list)
    entry_errors: dict[str, BadInput] = field(default_factory=dict)
    doc_id: str | None = None
    obj: dict[str, Any] | None = None
    doc_hash: str | None = None
    # generic files
    encoding: str = "structured"  # structured | json | bytes | gridfs
    content: Any = None
    # Generic files: the bytes kept verbatim. Structured files: the file's bytes
    # when its layout cannot be rebuilt from the documents (see ``docs_hash``).
    raw: bytes | None = None
    docs_hash: str | None = None  # structured + raw: the hash of the documents the bytes go with
    stored_raw: str | None = None  # episode/snapshot/generic: why (part of) it is kept verbatim
    stat: dict[str, Any] | None = None  # the quick check's record of the read (sidecar/quick.py)

    @property
    def content_hash(self) -> str | None:
        """What parity compares for a generic file: the bytes' sha256 when they are
        stored verbatim, else the hash of the (possibly redacted) JSON content.
        A structured file: the sha256 of the bytes its manifest keeps, or None."""
        if self.kind.structured:
            return self.sha256 if self.raw is not None else None
        if self.encoding == "json" and self.raw is None:
            return value_hash(self.content)
        return self.sha256

    def raw_items(self) -> list[dict[str, str]]:
        """What is stored raw: path, key (hub entries), reason. Never a value."""
        out = []
        if self.raw is not None and self.kind.structured:
            out.append({"path": self.rel, "reason": LAYOUT})
        if self.stored_raw is not None:
            out.append({"path": self.rel, "reason": self.stored_raw})
        for e in self.entries:
            if e.stored_raw is not None:
                out.append({"path": self.rel, "key": e.key, "reason": e.stored_raw})
        return out


def redact(value: Any, keys: frozenset[str]) -> Any:
    if not keys:
        return value
    if isinstance(value, dict):
        return {
            k: (REDACTED if k.lower() in keys else redact(v, keys)) for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact(v, keys) for v in value]
    return value


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadInput("not_object", f"{what} must be a JSON object, found {type(value).__name__}")
    return value


# BSON can be ~8x larger than JSON (a 1-byte number in an array costs a type
# byte, an index key and 4-8 bytes), so anything whose JSON exceeds this gets
# its real BSON size measured; below it, it cannot reach the limit.
_BSON_CHECK_FROM = MAX_DOC_BYTES // 10


def _hash_checked(value: Any, raw: bool = False) -> str:
    """Content hash of a value that must fit in one BSON document (else BadInput).
    ``raw``: the value is to be kept as its canonical JSON bytes (stored raw)."""
    canon = canonical(value)
    if len(canon) > MAX_DOC_BYTES or (
        not raw and len(canon) > _BSON_CHECK_FROM and len(bson.encode({"v": value})) > MAX_DOC_BYTES
    ):
        raise BadInput("too_large", "content too large for one 16 MB BSON document")
    return hashlib.sha256(canon).hexdigest()


def _checked_entry(key: str, val: Any, strings: bool) -> tuple[str, str | None]:
    """(hash, stored_raw reason or None) of one hub entry's value; BadInput when
    it cannot be mirrored at all (too large)."""
    try:
        validate(val, strings)
    except BadInput as exc:
        if exc.reason not in RAW_REASONS:
            raise
        return _hash_checked(val, raw=True), exc.reason
    return _hash_checked(val), None


def hubs_hash(pairs: Any) -> str:
    """One hash over a hub's entries in file order ((key, value hash) pairs): what a
    raw-layout manifest's ``docs_hash`` is for a hub."""
    h = hashlib.sha256()
    for key, entry_hash in pairs:
        h.update(f"{key}\t{entry_hash}\n".encode("utf-8", "surrogatepass"))
    return h.hexdigest()


class HubMemo:
    """What the previous version of each hub file taught us, per entry.

    A learner signal rewrites a whole hub file to change one entry; proving the
    other entries unchanged by parsing, validating, hashing and re-rendering all
    of them (the format check) cost ~9 ms per 500-entry file. In an indented file
    every top-level entry is its own byte range (``,\n  "`` cannot occur deeper,
    where lines are indented further, nor inside a string, where newlines are
    escaped), rendered exactly as the entry alone would be. So the memo keeps,
    per file and for the format it was proven in, the previous version's entry
    byte ranges and what each one gave (an entry with its hash, or its error).
    Ranges equal to the previous version's at the same place from the start, or
    from the end, are the same entries; only the ranges in between (usually one)
    are parsed, validated, hashed and format-checked. It is a pure function of
    the bytes: whatever MongoDB holds, the memo can never go stale, only miss,
    and on a miss (another layout, a duplicate key, anything not provably the
    memo's format) the full checks run.
    """

    def __init__(self) -> None:
        # rel -> (format, entry byte ranges, HubEntry or (key, BadInput) per range)
        self._files: dict[str, tuple[dict[str, Any], list[bytes], list[Any]]] = {}
        self.hits = 0  # plans made from the memo (the tests check it is really used)

    def __len__(self) -> int:
        return len(self._files)

    def forget(self, rel: str) -> None:
        self._files.pop(rel, None)

    def plan_entries(self, plan: FilePlan, data: bytes, redact_keys: frozenset[str]) -> bool:
        """Fill ``plan.entries``/``entry_errors``/``fmt`` from the memo; False (plan
        untouched) when the file cannot be proven to keep the memo's format."""
        known = self._files.get(plan.rel)
        if known is None:
            return False
        fmt, old_parts, old_items = known
        parts = _entry_bytes(data, fmt)
        if parts is None:
            return False
        n, m = len(parts), len(old_parts)
        lim = min(n, m)
        i = 0
        while i < lim and parts[i] == old_parts[i]:
            i += 1
        j = 0
        while j < lim - i and parts[n - 1 - j] == old_parts[m - 1 - j]:
            j += 1
        fresh: list[Any] = []
        head = _entry_head(fmt["indent"])
        entry_fmt = dict(fmt, newline=False)
        for part in parts[i:n - j]:
            # Changed bytes: the full checks, for this entry alone. Anything odd
            # (not one key, not JSON, not this layout) goes to the full path,
            # which gives the proper error.
            try:
                obj = json.loads(b'{"' + part + b"}")
            except (ValueError, RecursionError):
                return False
            if len(obj) != 1:
                return False
            (key, raw_val), = obj.items()
            if render({key: raw_val}, entry_fmt) != head + part + b"\n}":
                return False
            val = redact(raw_val, redact_keys)
            try:
                entry_hash, why = _checked_entry(key, val, may_hold_surrogates(part))
                fresh.append(HubEntry(key, None, entry_hash, part, redact_keys, why))
            except BadInput as exc:
                fresh.append((key, exc))
        items = old_items[:i] + fresh + old_items[m - j:]
        keys = [it.key if type(it) is HubEntry else it[0] for it in items]
        if len(set(keys)) != len(keys):
            return False  # a duplicate key: json.loads keeps the last one; the full path decides
        plan.entries = [it for it in items if type(it) is HubEntry]
        plan.entry_errors = {it[0]: it[1] for it in items if type(it) is not HubEntry}
        plan.fmt = fmt
        self._files[plan.rel] = (fmt, parts, items)
        self.hits += 1
        return True

    def learn(self, plan: FilePlan, value: dict[str, Any], data: bytes,
              redact_keys: frozenset[str]) -> None:
        """Record a fully checked plan (its format proven for the whole file)."""
        fmt = plan.fmt
        parts = _entry_bytes(data, fmt) if fmt is not None else None
        if parts is None or len(parts) != len(value):
            self._files.pop(plan.rel, None)
            return
        known = {e.key: e for e in plan.entries}
        items: list[Any] = [
            HubEntry(key, None, known[key].hash, part, redact_keys, known[key].stored_raw) if key in known
            else (key, plan.entry_errors[key])
            for key, part in zip(value, parts)
        ]
        self._files[plan.rel] = (fmt, parts, items)


def _entry_head(indent: int) -> bytes:
    """What precedes the first entry's key (its opening quote included)."""
    return b"{\n" + b" " * indent + b'"'


def _entry_bytes(data: bytes, fmt: dict[str, Any]) -> list[bytes] | None:
    """Each top-level entry's bytes (after its key's opening quote) of an indented
    hub file, or None when the file is not laid out as ``fmt`` says."""
    indent = fmt.get("indent")
    if not isinstance(indent, int) or indent <= 0 or fmt.get("compact"):
        return None
    pad = b" " * indent
    head = _entry_head(indent)
    tail = b"\n}\n" if fmt.get("newline") else b"\n}"
    if not data.startswith(head) or not data.endswith(tail) or len(data) < len(head) + len(tail):
        return None
    return data[len(head):len(data) - len(tail)].split(b",\n" + pad + b'"')


def build_plan(read: FileRead, redact_keys: frozenset[str] = frozenset(),
               known_fmt: dict[str, Any] | None = None, memo: HubMemo | None = None,
               version: int | None = None) -> FilePlan:
    """Parse and validate one file. Raises BadInput when nothing may be mirrored.

    ``known_fmt``: the format recorded when these very bytes were mirrored
    (same sha256), which spares re-detecting it on every reconcile. (Values are
    still validated: that decides what is stored raw.)
    ``memo``: per-entry knowledge of earlier versions of hub files (HubMemo).
    ``version``: the read's place in the sidecar's order of reads (sidecar/clock.py);
    the mtime only stands in where no clock is at hand (unit tests)."""
    kind = classify(read.rel)
    plan = FilePlan(read.rel, kind, read.sha256, read.size, read.mtime_ns if version is None else version)
    detect = (lambda value, data: known_fmt) if known_fmt is not None else detect_format
    strings = may_hold_surrogates(read.data)
    if kind is Kind.HUB:
        plan.hub_type = hub_type_of(read.rel)
        if memo is not None and memo.plan_entries(plan, read.data, redact_keys):
            return plan
        value = _object(loads(read.data), "a hub file")
        redacted = False
        for key, raw_val in value.items():
            val = redact(raw_val, redact_keys)
            redacted = redacted or (val is not raw_val and canonical(val) != canonical(raw_val))
            try:
                entry_hash, why = _checked_entry(key, val, strings)
            except BadInput as exc:
                plan.entry_errors[key] = exc
                continue
            plan.entries.append(HubEntry(key, val, entry_hash, stored_raw=why))
        plan.fmt = detect(value, read.data)
        if plan.fmt is None and not redacted:
            # Not a layout the documents can be rendered back into: keep the bytes.
            plan.raw = read.data
            plan.docs_hash = hubs_hash((e.key, e.hash) for e in plan.entries)
        if memo is not None:
            memo.learn(plan, value, read.data, redact_keys)
    elif kind in (Kind.SNAPSHOT, Kind.EPISODE):
        value = _object(loads(read.data), f"{kind.value} file")
        obj = redact(value, redact_keys)
        if kind is Kind.EPISODE:
            run_id = str(obj.get("run_id") or run_id_from_name(read.rel))
            if read.rel != episode_path(run_id):
                # Not its run's canonical file (a backup copy, or a name that says
                # another run): the run's document belongs to the canonical file;
                # this one is kept as a generic file. A pure function of path and
                # content, so every path in (watch, shim, sync) agrees.
                plan.kind = Kind.EPISODE_COPY
                _plan_generic(plan, read, redact_keys, detect, value)
                return plan
        try:
            validate(obj, strings)
        except BadInput as exc:
            if exc.reason not in RAW_REASONS:
                raise
            plan.stored_raw = exc.reason
        plan.doc_hash = _hash_checked(obj, raw=plan.stored_raw is not None)
        plan.obj = obj
        plan.fmt = detect(value, read.data)
        if plan.fmt is None and canonical(obj) == canonical(value):
            plan.raw = read.data  # (not when redacted: the bytes would carry the secret)
            plan.docs_hash = plan.doc_hash
        if kind is Kind.SNAPSHOT:
            plan.doc_id = plan.doc_hash
        else:
            plan.doc_id = run_id
    else:
        _plan_generic(plan, read, redact_keys, detect)
    return plan


_UNPARSED = object()


def _plan_generic(plan: FilePlan, read: FileRead, redact_keys: frozenset[str], detect=None,
                  value: Any = _UNPARSED) -> None:
    detect = detect or detect_format
    if read.size > INLINE_MAX_BYTES:
        if read.rel.endswith(".json") and value is _UNPARSED:
            loads(read.data)  # a half-written big JSON file must not replace a good one
        plan.encoding = "gridfs"
        plan.raw = read.data
        return
    if not read.rel.endswith(".json"):
        plan.encoding = "bytes"
        plan.raw = read.data
        return
    if value is _UNPARSED:
        value = loads(read.data)  # empty / truncated JSON is bad input, never mirrored
    try:
        validate(value, may_hold_surrogates(read.data))
    except BadInput as exc:
        # Valid JSON that BSON cannot hold as-is: keep it verbatim, nothing lost.
        plan.encoding = "bytes"
        plan.raw = read.data
        plan.stored_raw = exc.reason
        return
    plan.encoding = "json"
    plan.fmt = detect(value, read.data)
    plan.content = redact(value, redact_keys)
    if plan.content is not value and canonical(plan.content) != canonical(value):
        plan.raw = None  # redacted: the verbatim bytes would carry the secret
    elif plan.fmt is None:
        plan.raw = read.data  # JSON, but not a layout we can reproduce byte for byte
        plan.stored_raw = LAYOUT


# --- timestamps (documents: sidecar/documents.py) ----------------------------


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def parse_iso(text: Any) -> datetime | None:
    """Mentorix writes naive UTC ISO timestamps; give them a timezone."""
    if not isinstance(text, str):
        return None
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)
