"""Stage 4: diff a ``FilePlan`` against what was last mirrored → document ops.

``MirrorState`` is the sidecar's memory of MongoDB (hashes, positions, versions),
loaded once from the database and kept current as writes are acknowledged. It is
state, not a log: however many times a file changes before a flush, it yields at
most one op per document.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .classify import Kind, episode_path
from .model import (
    EPISODES,
    HUBS,
    SNAPSHOTS,
    FilePlan,
    episode_doc,
    hub_doc,
    hub_id,
    manifest_doc,
    parse_iso,
    snapshot_doc,
)

FILES = "files"  # logical name; the real collection name is a setting


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
    file's content hash, usually equal to its sha256, shares that object."""

    __slots__ = ("_sha", "version", "kind", "deleted", "doc_id", "fmt", "_content")

    def __init__(self, sha256: str | bytes | None, version: int | None, kind: str,
                 deleted: bool = False, doc_id: str | None = None, fmt: dict | None = None,
                 content_sha: str | bytes | None = None) -> None:
        self._sha = pack_hash(sha256)
        self.version = version
        self.kind = _KINDS.get(kind, kind)
        self.deleted = deleted
        self.doc_id = doc_id
        self.fmt = fmt
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


@dataclass(slots=True)
class Op:
    coll: str  # HUBS | SNAPSHOTS | EPISODES | FILES
    action: str  # insert | update | delete | setpos | mark_deleted | track (state only)
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


class EmptyHubRefused(Exception):
    """A hub file that parses as {} while MongoDB holds entries for it."""

    def __init__(self, rel: str, held: int) -> None:
        super().__init__(
            f"{rel}: file holds no entries but MongoDB holds {held}; not wiping them "
            "(a fresh volume re-creates hubs as {}; restore instead)"
        )
        self.rel = rel
        self.held = held


def _positions(keys: list[str], base: dict[str, HubState]) -> list[int]:
    """Keep old positions when the order is unchanged and new keys were appended
    (the legacy writer's pattern), so an edit never rewrites its neighbours."""
    old: list[int] = []
    first_new = len(keys)
    get = base.get
    for i, k in enumerate(keys):
        s = get(k)
        if s is None:
            if first_new == len(keys):
                first_new = i
        elif first_new != len(keys) or s.pos is None:
            return list(range(len(keys)))  # an old key after a new one, or no position
        else:
            old.append(s.pos)
    if any(a >= b for a, b in zip(old, old[1:])):
        return list(range(len(keys)))
    if first_new == len(keys):
        return old
    nxt = max((s.pos for s in base.values() if s.pos is not None), default=-1) + 1
    return old + list(range(nxt, nxt + len(keys) - first_new))


def diff_plan(
    plan: FilePlan, state: MirrorState, source: str, now: datetime, allow_empty_hub: bool = False,
    remove: Collection[str] = frozenset(),
) -> list[Op]:
    """``remove``: the hub keys missing from the file whose removal may be mirrored
    (the deletion model decides which: ``sidecar/lineage.py``). Every other key
    MongoDB holds and the file lacks is left alone: nothing is removed by default."""
    ops: list[Op] = []
    if plan.kind is Kind.HUB:
        ops.extend(_diff_hub(plan, state, source, now, allow_empty_hub, remove))
    elif plan.kind is Kind.SNAPSHOT:
        if plan.doc_id not in state.snapshots:
            doc = snapshot_doc(plan, source, now)
            ops.append(Op(SNAPSHOTS, "insert", plan.doc_id, plan.version, doc, after=plan.doc_hash))
    elif plan.kind is Kind.EPISODE:
        prev = state.episodes.get(plan.doc_id)
        before = unpack_hash(prev[0]) if prev is not None else None
        if prev is None or before != plan.doc_hash:
            doc = episode_doc(plan, source, now)
            action = "insert" if prev is None else "update"
            ops.append(
                Op(EPISODES, action, plan.doc_id, plan.version, doc, before=before, after=plan.doc_hash)
            )
    prev_file = state.files.get(plan.rel)
    if plan.kind is Kind.EPISODE_COPY and prev_file is not None and not prev_file.deleted and (
            prev_file.kind == Kind.EPISODE.value and prev_file.doc_id in state.episodes
            and not _live(state, episode_path(prev_file.doc_id))):
        # Mirrored before run_id collisions were told apart, this copy was recorded
        # as its run's owner, and no canonical file claims the document: its content
        # now lives in the copy's manifest, so the document leaves (tombstoned, like
        # every removal) rather than restore writing a canonical file that never
        # existed. (A canonical file mirrored in the same batch wins: its write
        # changes the document, and the store then refuses this delete as stale.)
        ops.append(Op(EPISODES, "delete", prev_file.doc_id, plan.version,
                      before=unpack_hash(state.episodes[prev_file.doc_id][0])))
    changed = prev_file is None or prev_file.deleted or prev_file.sha256 != plan.sha256 or (
        prev_file.kind != plan.kind.value)  # e.g. an episode file now known as a copy
    if changed and plan.kind.structured and prev_file is not None and not prev_file.deleted and (
            prev_file.kind == plan.kind.value
            and prev_file.fmt == plan.fmt and prev_file.doc_id == (plan.doc_id or plan.hub_type)
            # a manifest keeping the file's bytes (stored raw) holds content: rewritten
            and plan.raw is None and prev_file.content_sha is None):
        # A structured file's manifest only says where its documents are and how
        # to format them; its content lives in the entity documents. Rewriting it
        # on every edit would double the writes of the continuous mirror, so only
        # the in-memory state learns the new sha256 ("track" sends nothing).
        ops.append(Op(FILES, "track", plan.rel, plan.version, None, before=prev_file.sha256,
                      after=plan.sha256, rel=plan.rel))
    elif changed:
        doc = manifest_doc(plan, source, now)
        ops.append(
            Op(FILES, "insert" if prev_file is None else "update", plan.rel, plan.version, doc,
               before=prev_file.sha256 if prev_file else None, after=plan.sha256, rel=plan.rel,
               blob=plan.raw if plan.encoding == "gridfs" else None, content_sha=plan.content_hash)
        )
    for op in ops:
        op.rel = plan.rel
    return ops


def gone_keys(plan: FilePlan, state: MirrorState) -> list[str]:
    """Keys MongoDB holds for this hub that the file does not (bad entries count as present)."""
    base = state.hubs.get(plan.hub_type, {})
    if not base:
        return []
    wanted = {e.key for e in plan.entries}
    wanted.update(plan.entry_errors)
    return [k for k in base if k not in wanted]


def _diff_hub(
    plan: FilePlan, state: MirrorState, source: str, now: datetime, allow_empty_hub: bool,
    remove: Collection[str],
) -> list[Op]:
    base = state.hubs.get(plan.hub_type, {})
    keys = [e.key for e in plan.entries]
    gone = [k for k in gone_keys(plan, state) if k in remove]
    if not plan.entries and not plan.entry_errors and base and not allow_empty_hub:
        raise EmptyHubRefused(plan.rel, len(base))
    ops: list[Op] = []
    get = base.get
    for entry, pos in zip(plan.entries, _positions(keys, base)):
        prev = get(entry.key)
        if prev is None:
            ops.append(Op(HUBS, "insert", hub_id(plan.hub_type, entry.key), plan.version,
                          hub_doc(plan, entry, pos, source, now), after=entry.hash, pos=pos))
            continue
        packed = prev._hash  # compared without the hex property: this runs for every entry
        if (packed.hex() if type(packed) is bytes else packed) != entry.hash:
            ops.append(Op(HUBS, "update", hub_id(plan.hub_type, entry.key), plan.version,
                          hub_doc(plan, entry, pos, source, now), before=prev.hash, after=entry.hash,
                          pos=pos))
        elif prev.pos != pos:
            _id = hub_id(plan.hub_type, entry.key)
            ops.append(Op(HUBS, "setpos", _id, plan.version, None, before=prev.hash,
                          after=prev.hash, pos=pos))
    for key in gone:
        ops.append(Op(HUBS, "delete", hub_id(plan.hub_type, key), plan.version,
                      before=base[key].hash))
    return ops


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
        else:
            doc = op.doc or {}
            state.files[op.id] = FileState(op.after, op.version, doc.get("kind", "other"),
                                           False, doc.get("doc_id") or doc.get("hub_type"),
                                           doc.get("format"), op.content_sha)


def deletion_ops(rel: str, state: MirrorState, propagate: bool, version: int) -> list[Op]:
    """A file vanished from the data dir: always recorded; data removed only if propagating."""
    prev = state.files.get(rel)
    if prev is None or prev.deleted:
        return []
    if not propagate:
        return [Op(FILES, "mark_deleted", rel, version, before=prev.sha256, rel=rel)]
    ops: list[Op] = []
    if prev.kind == Kind.HUB.value and prev.doc_id:
        for key, hs in state.hubs.get(prev.doc_id, {}).items():
            ops.append(Op(HUBS, "delete", hub_id(prev.doc_id, key), version, before=hs.hash, rel=rel))
    elif prev.kind == Kind.EPISODE.value and prev.doc_id in state.episodes and (
            rel == episode_path(prev.doc_id) or not _live(state, episode_path(prev.doc_id))):
        # The run's document belongs to its canonical file: a file mirrored before
        # run_id collisions were told apart may still be recorded as its owner.
        ops.append(Op(EPISODES, "delete", prev.doc_id, version,
                      before=unpack_hash(state.episodes[prev.doc_id][0]), rel=rel))
    # Snapshot history is kept: each document is a point in time, not the file.
    ops.append(Op(FILES, "delete", rel, version, before=prev.sha256, rel=rel))
    return ops


def _live(state: MirrorState, rel: str) -> bool:
    fs = state.files.get(rel)
    return fs is not None and not fs.deleted


def summarize(ops: list[Op]) -> dict[str, Any]:
    out: dict[str, int] = {}
    for op in ops:
        key = f"{op.coll}.{op.action}"
        out[key] = out.get(key, 0) + 1
    return out
