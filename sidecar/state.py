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
shared dict per format; in the daemon and ``sync`` the per-file part (files,
episodes) lives out of the heap (sidecar/localindex.py). The typed rows (``HubRow``...) are transient: they carry one
document from MongoDB (or one entry of a state, ``state_rows``) to whoever reads
it and are dropped.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, MutableMapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple, Union

from .classify import Kind
from .model import parse_iso
from .names import EPISODES, FILES, HUBS, SNAPSHOTS

from .localindex import BATCH, LocalIndex, drop_tables, put_many

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


# A format as a small int, for the local index (sidecar/localindex.py): 0 is None.
_FORMAT_LIST: list[dict[str, Any] | None] = [None]
_FORMAT_IDS: dict[int, int] = {}  # id() of a shared dict -> its index in _FORMAT_LIST
_FORMAT_LOCK = threading.Lock()


def format_number(fmt: dict[str, Any] | None) -> int:
    """The number of a format (``intern_format``'s shared dict), stable for the process."""
    fmt = intern_format(fmt)
    if fmt is None:
        return 0
    number = _FORMAT_IDS.get(id(fmt))
    if number is None:
        with _FORMAT_LOCK:
            number = _FORMAT_IDS.get(id(fmt))
            if number is None:
                _FORMAT_LIST.append(fmt)
                number = _FORMAT_IDS[id(fmt)] = len(_FORMAT_LIST) - 1
    return number


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

    def encode(self) -> tuple:
        """As the local index keeps it (``decode_file`` is the inverse). A value
        read from a foreign document that is not of a plain type is kept as a
        marker str that equals no hash (it is only ever compared)."""
        head = (_plain(self._sha), _plain_int(self.version), _plain(self.kind), bool(self.deleted),
                _plain(self.doc_id), format_number(self.fmt))
        return head if self._content is self._sha else head + (_plain(self._content),)

    __hash__ = None

    def __repr__(self) -> str:
        return (f"FileState(sha256={self.sha256!r}, version={self.version!r}, kind={self.kind!r}, "
                f"deleted={self.deleted!r}, doc_id={self.doc_id!r}, fmt={self.fmt!r}, "
                f"content_sha={self.content_sha!r})")


def _plain(value: Any) -> Any:
    kind = type(value)
    if kind is bytes or kind is str or value is None:
        return value
    if isinstance(value, str):
        return str(value)
    return f"<{kind.__name__}>"


def _plain_int(value: Any) -> Any:
    if value is None or type(value) is int:
        return value
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def encode_episode(value: tuple) -> tuple:
    return (_plain(value[0]), _plain_int(value[1]))


def decode_file(row: tuple) -> FileState:
    """A ``FileState.encode`` tuple back as the object."""
    fs = FileState.__new__(FileState)
    fs._sha, fs.version, kind, fs.deleted, fs.doc_id, fmt = row[:6]
    fs.kind = _KINDS.get(kind, kind)
    fs.fmt = _FORMAT_LIST[fmt]
    fs._content = row[6] if len(row) > 6 else fs._sha
    return fs


@dataclass
class MirrorState:
    """Hashes are kept packed (``pack_hash``): read them through ``HubState.hash``,
    ``FileState.sha256``/``content_sha`` or ``unpack_hash``, never compare them raw
    with hex strings."""

    hubs: dict[str, dict[str, HubState]] = field(default_factory=dict)
    # run_id -> (packed content hash, version)
    episodes: MutableMapping[str, tuple[bytes | str | None, int | None]] = field(default_factory=dict)
    # content hash (hex) -> (packed hash, its timestamp as an instant or None)
    snapshots: dict[str, tuple[bytes | str | None, datetime | None]] = field(default_factory=dict)
    # dicts, or (the daemon, ``sync``) tables of the local index (``build_state(rows, index)``)
    files: MutableMapping[str, FileState] = field(default_factory=dict)
    # The largest _sidecar.version MongoDB held when loaded: every version handed
    # out after it is larger (sidecar/clock.py).
    max_version: int = 0

    def apply(self, result: ApplyResult) -> None:
        """Record the ops MongoDB acknowledged (``Store.apply``'s result; the stale
        and failed ones change nothing)."""
        for op in result.applied:
            apply_to_state(self, op)

    def replace(self, fresh: MirrorState) -> None:
        """Become ``fresh`` (a reload from MongoDB; the writer holds this object),
        dropping the local-index tables held so far."""
        old = MirrorState(files=self.files, episodes=self.episodes)
        self.hubs, self.episodes, self.snapshots, self.files = fresh.hubs, fresh.episodes, fresh.snapshots, fresh.files
        self.max_version = fresh.max_version
        old.release()

    def release(self) -> None:
        """Drop the local index's tables of this state (a fresh one replaced it)."""
        drop_tables(self.files, self.episodes)


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
                state.files[op.id] = prev  # a table of the local index keeps a copy
        elif op.action == "track":
            prev = state.files.get(op.id)
            if prev:
                prev.sha256, prev.version = op.after, op.version
                state.files[op.id] = prev
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


def build_state(rows: Iterable[Row], index: LocalIndex | None = None) -> MirrorState:
    """The mirror state of what MongoDB holds (``Store.iter_state``'s rows): the
    baseline every diff starts from. With ``index``, the files and episodes (one
    per file: the bulk of it) go to new tables of that local index
    (sidecar/localindex.py) instead of dicts; a load cut short leaves none behind."""
    if index is None:
        state = MirrorState()
    else:
        state = MirrorState(files=index.map("files", FileState.encode, decode_file, tag=lambda fs: fs.deleted),
                            episodes=index.map("episodes", encode_episode, None))
    # In dicts, an episode file's manifest names its run_id, already a key of
    # state.episodes, usually with the same version: one object for each (at 50k
    # files, 35k duplicate strs and ints: ~3.6 MB). A local index keeps no objects.
    run_ids: dict[str, str] | None = {} if index is None else None
    top = 0
    file_rows: list[tuple[str, FileState]] = []
    episode_rows: list[tuple[str, tuple]] = []
    try:
        for row in rows:
            kind = type(row)
            version = getattr(row, "version", None)
            if isinstance(version, int) and not isinstance(version, bool) and version > top:
                top = version
            if kind is HubRow:
                hub = state.hubs.get(row.hub_type)
                if hub is None:
                    hub = state.hubs[row.hub_type] = {}
                hub[row.key] = HubState(row.digest, row.pos, row.version)
            elif kind is EpisodeRow:
                episode_rows.append((row.run_id, (row.digest, row.version)))
                if run_ids is not None:
                    run_ids[row.run_id] = row.run_id
                if len(episode_rows) >= BATCH:
                    put_many(state.episodes, episode_rows)
                    episode_rows = []
            elif kind is SnapshotRow:
                state.snapshots[row.snapshot_id] = (row.digest, row.instant)
            else:
                doc_id, version = row.doc_id, row.version
                if run_ids is not None and doc_id is not None and row.kind == Kind.EPISODE.value:
                    put_many(state.episodes, episode_rows)  # (episodes come first: they are all in)
                    episode_rows = []
                    doc_id = run_ids.get(doc_id, doc_id)
                    episode = state.episodes.get(doc_id)
                    if episode is not None and episode[1] == version:
                        version = episode[1]
                file_rows.append((row.rel, FileState(row.sha256, version, row.kind, row.deleted, doc_id,
                                                     row.fmt, row.content_sha)))
                if len(file_rows) >= BATCH:
                    put_many(state.files, file_rows)
                    file_rows = []
        put_many(state.episodes, episode_rows)
        put_many(state.files, file_rows)
    except BaseException:
        state.release()  # a load cut short (MongoDB lost, a stop) leaves no table behind
        raise
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


def count_files(state: MirrorState) -> tuple[int, int]:
    """(live manifests, manifests of deleted files): without decoding each one when
    the files are a table of the local index."""
    files = state.files
    counts = getattr(files, "counts", None)
    if counts is not None:
        total, deleted = counts()  # one statement: never a count of one table less another's
        return total - deleted, deleted
    values = list(files.values())  # one C-level copy under the GIL, safe while the writer changes it
    deleted = sum(1 for f in values if f.deleted)
    return len(values) - deleted, deleted


def count_ops(ops: list[Op]) -> dict[str, int]:
    """Ops by ``"<collection>.<action>"``: the one count of ops (the status's
    ``sidecar_writes_total``, sync's ``writes`` and ``planned_writes``)."""
    out: dict[str, int] = {}
    for op in ops:
        key = f"{op.coll}.{op.action}"
        out[key] = out.get(key, 0) + 1
    return out
