"""Stage 4: diff a ``FilePlan`` against what was last mirrored → document ops.

What was last mirrored is the ``MirrorState`` (sidecar/state.py), the sidecar's
memory of MongoDB. It is state, not a log: however many times a file changes
before a flush, the diff yields at most one op per document.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

from .classify import Kind, episode_path
from .documents import episode_doc, hub_doc, hub_id, manifest_doc, snapshot_doc
from .model import FilePlan
from .names import EPISODES, FILES, HUBS, SNAPSHOTS
from .state import HubState, MirrorState, Op, unpack_hash


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
        prev_file.kind != plan.kind.value) or (  # e.g. an episode file now known as a copy
        # a generic file's content as MongoDB holds it (hashed from the document at load)
        not plan.kind.structured and prev_file.content_sha != plan.content_hash)
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
