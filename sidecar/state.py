"""What the mirror believes MongoDB holds, and its one way of changing.

``MirrorState`` is the sidecar's memory of MongoDB (hashes, positions, versions):
built once from the rows ``Store.iter_state`` reads (``build_state``) and kept
current as writes are acknowledged (``MirrorState.apply`` of ``Store.apply``'s
result, op by op through ``apply_to_state``). It is state, not a log: however
many times a file changes before a flush, it yields at most one op per document
(``sidecar/diff.py``). ``Op`` is the unit of change.

Memory: at 50k files the state is most of the daemon's memory (~0.8 KiB per
file, bench/README.md), so what it holds is kept small: hashes as 32-byte
digests (``pack_hash``), ``__slots__`` objects, one shared str per kind, one
shared dict per format, one shared str/int per run_id and version that a
manifest repeats. The typed rows (``HubRow``...) are transient: they carry one
document from MongoDB (or one entry of a state, ``state_rows``) to whoever reads
it and are dropped.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple, Union

from .classify import Kind
from .model import parse_iso
from .names import EPISODES, FILES, HUBS, SNAPSHOTS

if TYPE_CHECKING:
    from .store import ApplyResult


def pack_hash(value: Any) -> Any:
    """A lowercase hex sha256 (how hashes travel: plans, ops, documents) → its
    32-byte digest, which is how the mirror state keeps it (a 64-character str
    costs 113 bytes, the digest 65; at 50k files that is several MB).

    Anything else (None, bytes already, a value read from a document that is not
    a lowercase hex digest) is kept as it is, so ``unpack_hash(pack_hash(v)) == v``
    always holds and comparisons with hex values stay exact."""
    if type(value) is str and len(value) == 64:
        try:
            digest = bytes.fromhex(value)
        except ValueError:
            return value
        # fromhex also takes upper case and spaces: those would not round-trip.
        return digest if len(digest) == 32 and digest.hex() == value else value
    return value


def unpack_hash(value: Any) -> Any:
    """The inverse of ``pack_hash``: a digest → lowercase hex; anything else as it is."""
    return value.hex() if type(value) is bytes else value


# One str object per kind, whichever document or plan it came from (a decoded
# BSON string is a new object per document: 50k copies of "episode").
_KINDS = {k.value: k.value for k in Kind}

_FORMATS: dict[tuple, dict[str, Any]] = {}
# id() of the shared dicts (kept alive by _FORMATS, so an id is never reused): one
# already shared is recognised without building its key (a load interns each twice).
_SHARED: set[int] = set()


def intern_format(fmt: dict[str, Any] | None) -> dict[str, Any] | None:
    """One shared dict per distinct format: the mirror state keeps one per file,
    and 50k copies of the same four keys would cost tens of MB. TypeError when a
    value is unhashable (a manifest written by someone else)."""
    if fmt is None or id(fmt) in _SHARED:
        return fmt
    key = tuple(sorted(fmt.items()))
    shared = _FORMATS.get(key)
    if shared is None:
        shared = _FORMATS.setdefault(key, dict(fmt))  # atomic: two threads share the winner
        _SHARED.add(id(shared))
    return shared


class HubState:
    """One hub entry as mirrored: content hash (kept as a digest), position, version."""

    __slots__ = ("_hash", "pos", "version")

    def __init__(self, hash: str | bytes | None, pos: int | None, version: int | None) -> None:
        self._hash = pack_hash(hash)
        self.pos = pos
        self.version = version

    @property
    def hash(self) -> str | None:
        return unpack_hash(self._hash)

    @hash.setter
    def hash(self, value: str | bytes | None) -> None:
        self._hash = pack_hash(value)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, HubState):
            return NotImplemented
        return (self._hash, self.pos, self.version) == (other._hash, other.pos, other.version)

    __hash__ = None  # mutable, like the dataclass it replaces

    def __repr__(self) -> str:
        return f"HubState(hash={self.hash!r}, pos={self.pos!r}, version={self.version!r})"


class FileState:
    """One file as mirrored (its manifest). ``sha256`` and ``content_sha`` read and
    write lowercase hex as before; inside they are 32-byte digests, and a generic
    file's content hash, usually equal to its sha256, shares that object. ``kind``
    and ``fmt`` are the shared objects (``_KINDS``, ``intern_format``)."""

    __slots__ = ("_sha", "version", "kind", "deleted", "doc_id", "fmt", "_content")

    def __init__(self, sha256: str | bytes | None, version: int | None, kind: str,
                 deleted: bool = False, doc_id: str | None = None, fmt: dict | None = None,
                 content_sha: str | bytes | None = None) -> None:
        self._sha = pack_hash(sha256)
        self.version = version
        self.kind = _KINDS.get(kind, kind)
        self.deleted = deleted
        self.doc_id = doc_id
        self.fmt = intern_format(fmt)
        # generic files: the stored content's hash (FilePlan.content_hash); parity compares it.
        self.content_sha = content_sha

    @property
    def sha256(self) -> str | None:
        return unpack_hash(self._sha)

    @sha256.setter
    def sha256(self, value: str | bytes | None) -> None:
        self._sha = pack_hash(value)

    @property
    def content_sha(self) -> str | None:
        return unpack_hash(self._content)

    @content_sha.setter
    def content_sha(self, value: str | bytes | None) -> None:
        packed = pack_hash(value)
        self._content = self._sha if packed is not None and packed == self._sha else packed

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FileState):
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in self.__slots__)

    __hash__ = None

    def __repr__(self) -> str:
        return (f"FileState(sha256={self.sha256!r}, version={self.version!r}, kind={self.kind!r}, "
                f"deleted={self.deleted!r}, doc_id={self.doc_id!r}, fmt={self.fmt!r}, "
                f"content_sha={self.content_sha!r})")


@dataclass
class MirrorState:
    """Hashes are kept packed (``pack_hash``): read them through ``HubState.hash``,
    ``FileState.sha256``/``content_sha`` or ``unpack_hash``, never compare them raw
    with hex strings."""

    hubs: dict[str, dict[str, HubState]] = field(default_factory=dict)
    # run_id -> (packed content hash, version)
    episodes: dict[str, tuple[bytes | str | None, int | None]] = field(default_factory=dict)
    # content hash (hex) -> (packed hash, its timestamp as an instant or None)
    snapshots: dict[str, tuple[bytes | str | None, datetime | None]] = field(default_factory=dict)
    files: dict[str, FileState] = field(default_factory=dict)
    # The largest _sidecar.version MongoDB held when loaded: every version handed
    # out after it is larger (sidecar/clock.py).
    max_version: int = 0

    def apply(self, result: ApplyResult) -> None:
        """Record the ops MongoDB acknowledged (``Store.apply``'s result; the stale
        and failed ones change nothing)."""
        for op in result.applied:
            apply_to_state(self, op)


@dataclass(slots=True)
class Op:
    coll: str  # HUBS | SNAPSHOTS | EPISODES | FILES
    # insert | update | delete | setpos | mark_deleted | track (state only) | stat (a record's refresh)
    action: str
    id: str
    version: int
    doc: dict | None = None
    before: str | None = None
    after: str | None = None
    pos: int | None = None
    rel: str = ""
    blob: bytes | None = None  # GridFS content for FILES ops
    content_sha: str | None = None  # FILES ops: FilePlan.content_hash

    @property
    def entity(self) -> str:
        return f"{self.coll}:{self.id}"


def apply_to_state(state: MirrorState, op: Op) -> None:
    """Record an acknowledged op in the mirror state."""
    if op.coll == HUBS:
        hub_type, key = op.id.split("/", 1)
        hub = state.hubs.setdefault(hub_type, {})
        if op.action == "delete":
            hub.pop(key, None)
        else:
            prev = hub.get(key)
            hub[key] = HubState(op.after, op.pos, op.version if op.action != "setpos" or prev is None
                                else prev.version)
    elif op.coll == SNAPSHOTS:
        state.snapshots[op.id] = (pack_hash(op.after), parse_iso((op.doc or {}).get("timestamp")))
    elif op.coll == EPISODES:
        if op.action == "delete":
            state.episodes.pop(op.id, None)
        else:
            state.episodes[op.id] = (pack_hash(op.after), op.version)
    elif op.coll == FILES:
        if op.action == "delete":
            state.files.pop(op.id, None)
        elif op.action == "mark_deleted":
            prev = state.files.get(op.id)
            if prev:
                prev.deleted = True
        elif op.action == "track":
            prev = state.files.get(op.id)
            if prev:
                prev.sha256, prev.version = op.after, op.version
        elif op.action == "stat":
            pass  # a manifest's quick-check record: not kept in the state
        else:
            doc = op.doc or {}
            state.files[op.id] = FileState(op.after, op.version, doc.get("kind", "other"),
                                           False, doc.get("doc_id") or doc.get("hub_type"),
                                           doc.get("format"), op.content_sha)


# --- rows: one document of MongoDB (or one entry of a state) ----------------------------
# Hashes packed (``pack_hash``) or as found. Store.iter_state yields them, build_state
# and parity.compute read them, state_rows gives a state back as them.


class HubRow(NamedTuple):
    hub_type: str
    key: str
    digest: bytes | str | None
    pos: int | None
    version: int | None


class EpisodeRow(NamedTuple):
    run_id: str
    digest: bytes | str | None
    version: int | None


class SnapshotRow(NamedTuple):
    snapshot_id: str  # the content hash, hex
    digest: bytes | str | None
    instant: datetime | None  # its ``timestamp``, parsed


class FileRow(NamedTuple):
    """A manifest: what ``FileState`` keeps of it."""

    rel: str
    sha256: bytes | str | None
    version: int | None
    kind: str
    deleted: bool
    doc_id: str | None
    fmt: dict[str, Any] | None
    content_sha: bytes | str | None
    # ``_sidecar.stat`` as found (the quick check's record, sidecar/quick.py): read
    # by ``quick.Book.collect`` for one scan, never kept in the state.
    stat: Any = None


Row = Union[HubRow, EpisodeRow, SnapshotRow, FileRow]


def build_state(rows: Iterable[Row]) -> MirrorState:
    """The mirror state of what MongoDB holds (``Store.iter_state``'s rows): the
    baseline every diff starts from."""
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
    for row in rows:
        kind = type(row)
        if kind is HubRow:
            hub = state.hubs.get(row.hub_type)
            if hub is None:
                hub = state.hubs[row.hub_type] = {}
            hub[row.key] = HubState(row.digest, row.pos, row.version)
            seen(row.version)
        elif kind is EpisodeRow:
            state.episodes[row.run_id] = (row.digest, row.version)
            seen(row.version)
            run_ids[row.run_id] = row.run_id
        elif kind is SnapshotRow:
            state.snapshots[row.snapshot_id] = (row.digest, row.instant)
        else:
            doc_id, version = row.doc_id, row.version
            if doc_id is not None and row.kind == Kind.EPISODE.value:
                doc_id = run_ids.get(doc_id, doc_id)
                episode = state.episodes.get(doc_id)
                if episode is not None and episode[1] == version:
                    version = episode[1]
            state.files[row.rel] = FileState(row.sha256, version, row.kind, row.deleted, doc_id,
                                             row.fmt, row.content_sha)
            seen(version)
    state.max_version = top
    return state


def state_rows(state: MirrorState) -> Iterator[Row]:
    """A mirror state as the rows ``Store.iter_state`` reads from MongoDB."""
    for hub_type, entries in state.hubs.items():
        for key, hs in entries.items():
            yield HubRow(hub_type, key, hs._hash, hs.pos, hs.version)
    for run_id, (digest, version) in state.episodes.items():
        yield EpisodeRow(run_id, digest, version)
    for snap_id, (digest, instant) in state.snapshots.items():
        yield SnapshotRow(snap_id, digest, instant)
    for rel, fs in state.files.items():
        yield FileRow(rel, fs._sha, fs.version, fs.kind, fs.deleted, fs.doc_id, fs.fmt, fs._content)


def count_ops(ops: list[Op]) -> dict[str, int]:
    """Ops by ``"<collection>.<action>"``: the one count of ops (the status's
    ``sidecar_writes_total``, sync's ``writes`` and ``planned_writes``)."""
    out: dict[str, int] = {}
    for op in ops:
        key = f"{op.coll}.{op.action}"
        out[key] = out.get(key, 0) + 1
    return out
