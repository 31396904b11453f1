"""Stage 4: diff a ``FilePlan`` against what was last mirrored → document ops.

``MirrorState`` is the sidecar's memory of MongoDB (hashes, positions, versions),
loaded once from the database and kept current as writes are acknowledged. It is
state, not a log: however many times a file changes before a flush, it yields at
most one op per document.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .classify import Kind
from .model import (
    EPISODES,
    HUBS,
    SNAPSHOTS,
    FilePlan,
    episode_doc,
    hub_doc,
    hub_id,
    manifest_doc,
    snapshot_doc,
)

FILES = "files"  # logical name; the real collection name is a setting


@dataclass(slots=True)
class HubState:
    hash: str | None
    pos: int | None
    version: int | None


@dataclass(slots=True)
class FileState:
    sha256: str | None
    version: int | None
    kind: str
    deleted: bool = False
    doc_id: str | None = None
    fmt: dict | None = None
    # generic files: the stored content's hash (FilePlan.content_hash); parity compares it.
    content_sha: str | None = None


@dataclass
class MirrorState:
    hubs: dict[str, dict[str, HubState]] = field(default_factory=dict)
    episodes: dict[str, tuple[str | None, int | None]] = field(default_factory=dict)
    snapshots: dict[str, str | None] = field(default_factory=dict)  # snapshot_id -> content hash
    files: dict[str, FileState] = field(default_factory=dict)


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
    old = [base[k].pos for k in keys if k in base]
    first_new = next((i for i, k in enumerate(keys) if k not in base), len(keys))
    appended_only = all(k not in base for k in keys[first_new:])
    increasing = all(p is not None for p in old) and all(a < b for a, b in zip(old, old[1:]))
    if not (appended_only and increasing):
        return list(range(len(keys)))
    nxt = max((s.pos for s in base.values() if s.pos is not None), default=-1) + 1
    out = []
    for k in keys:
        if k in base:
            out.append(base[k].pos)
        else:
            out.append(nxt)
            nxt += 1
    return out


def diff_plan(
    plan: FilePlan, state: MirrorState, source: str, now: datetime, allow_empty_hub: bool = False
) -> list[Op]:
    ops: list[Op] = []
    if plan.kind is Kind.HUB:
        ops.extend(_diff_hub(plan, state, source, now, allow_empty_hub))
    elif plan.kind is Kind.SNAPSHOT:
        if plan.doc_id not in state.snapshots:
            doc = snapshot_doc(plan, source, now)
            ops.append(Op(SNAPSHOTS, "insert", plan.doc_id, plan.version, doc, after=plan.doc_hash))
    elif plan.kind is Kind.EPISODE:
        prev = state.episodes.get(plan.doc_id)
        if prev is None or prev[0] != plan.doc_hash:
            doc = episode_doc(plan, source, now)
            action = "insert" if prev is None else "update"
            ops.append(
                Op(EPISODES, action, plan.doc_id, plan.version, doc,
                   before=prev[0] if prev else None, after=plan.doc_hash)
            )
    prev_file = state.files.get(plan.rel)
    changed = prev_file is None or prev_file.deleted or prev_file.sha256 != plan.sha256
    if changed and plan.kind.structured and prev_file is not None and not prev_file.deleted and (
            prev_file.fmt == plan.fmt and prev_file.doc_id == (plan.doc_id or plan.hub_type)):
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


def _diff_hub(
    plan: FilePlan, state: MirrorState, source: str, now: datetime, allow_empty_hub: bool
) -> list[Op]:
    base = state.hubs.get(plan.hub_type, {})
    keys = [e.key for e in plan.entries]
    wanted = set(keys) | set(plan.entry_errors)
    gone = [k for k in base if k not in wanted]
    if not plan.entries and not plan.entry_errors and base and not allow_empty_hub:
        raise EmptyHubRefused(plan.rel, len(base))
    ops: list[Op] = []
    for entry, pos in zip(plan.entries, _positions(keys, base)):
        prev = base.get(entry.key)
        _id = hub_id(plan.hub_type, entry.key)
        if prev is None:
            ops.append(Op(HUBS, "insert", _id, plan.version, hub_doc(plan, entry, pos, source, now),
                          after=entry.hash, pos=pos))
        elif prev.hash != entry.hash:
            ops.append(Op(HUBS, "update", _id, plan.version, hub_doc(plan, entry, pos, source, now),
                          before=prev.hash, after=entry.hash, pos=pos))
        elif prev.pos != pos:
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
        state.snapshots[op.id] = op.after
    elif op.coll == EPISODES:
        if op.action == "delete":
            state.episodes.pop(op.id, None)
        else:
            state.episodes[op.id] = (op.after, op.version)
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
    elif prev.kind == Kind.EPISODE.value and prev.doc_id in state.episodes:
        ops.append(Op(EPISODES, "delete", prev.doc_id, version,
                      before=state.episodes[prev.doc_id][0], rel=rel))
    # Snapshot history is kept: each document is a point in time, not the file.
    ops.append(Op(FILES, "delete", rel, version, before=prev.sha256, rel=rel))
    return ops


def summarize(ops: list[Op]) -> dict[str, Any]:
    out: dict[str, int] = {}
    for op in ops:
        key = f"{op.coll}.{op.action}"
        out[key] = out.get(key, 0) + 1
    return out
