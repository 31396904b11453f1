"""Stage 6 (status): files vs. MongoDB, per kind, from the data itself.

The MongoDB side is hashed from the stored values (payloads, file fields,
content), not from the sidecar's own ``_sidecar.hash`` bookkeeping, so a
document changed behind the sidecar's back shows up as "different". Reports
name keys and paths, never values.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Iterable, Mapping, MutableSet
from typing import Any

from .classify import Kind, episode_path, hub_path
from .localindex import DiskMap, DiskSet
from .reconcile import SourceView
from .state import EpisodeRow, HubRow, MirrorState, SnapshotRow, pack_hash, state_rows, unpack_hash
from .store import Store

SAMPLE = 20  # keys listed per category; counts are always complete
# An episode file that is not its run's canonical file is a generic file too.
GENERIC_KINDS = [Kind.RUN.value, Kind.JOBS.value, Kind.OTHER.value, Kind.EPISODE_COPY.value]


def checksum(pairs: Mapping[str, Any]) -> str:
    return _checksum_sorted(_sorted_items(pairs))


def _sorted_items(pairs: Mapping[str, Any]) -> Iterable[tuple[str, Any]]:
    """In key order; a table of the local index already iterates so (SQLite's
    binary order of UTF-8 is code point order, as ``sorted``)."""
    if isinstance(pairs, DiskMap):
        return pairs.items()
    return ((key, pairs[key]) for key in sorted(pairs))


def _checksum_sorted(items: Iterable[tuple[str, Any]]) -> str:
    """Over key and hex hash per line (hashes are compared as digests, reported as hex)."""
    h = hashlib.sha256()
    for key, value in items:
        h.update(f"{key}\t{unpack_hash(value)}\n".encode())
    return h.hexdigest()


class _Tally:
    """One kind's comparison, fed one MongoDB row at a time.

    Only what differs from the source side is kept (keys not seen yet, different
    values, keys outside the source), never a second key → hash map of what
    MongoDB holds: a ``/parity`` on 50k files used to hold a whole second mirror
    state for the length of the request. A key seen twice counts once, the last
    value wins (as the dicts it replaces did)."""

    def __init__(self, source: Mapping[str, Any]) -> None:
        self.source = source
        if isinstance(source, DiskMap):  # 450k episodes: the keys not seen yet stay out of the heap too
            self.unseen: MutableSet[str] = source.index.set("unseen")
            self.unseen.fill_from(source)
        else:
            self.unseen = set(source)
        self.different: dict[str, str] = {}
        self.outside: set[str] = set()

    def add(self, key: str, value: str | None) -> None:
        if key in self.source:
            self.unseen.discard(key)
            if value != self.source[key]:
                self.different[key] = value
            else:
                self.different.pop(key, None)
        else:
            self.outside.add(key)

    def result(self, retained: Callable[[str], bool] = lambda key: False) -> dict:
        source, unseen = self.source, self.unseen
        missing = len(unseen)
        missing_sample = list(itertools.islice(unseen, SAMPLE)) if isinstance(unseen, DiskSet) \
            else sorted(unseen)[:SAMPLE]
        extra = sorted(k for k in self.outside if not retained(k))
        different = sorted(self.different)
        out = {
            "entries": len(source),
            "documents": len(source) - missing + len(self.outside),
            "missing": {"count": missing, "keys": missing_sample},
            "extra": {"count": len(extra), "keys": extra[:SAMPLE]},
            "different": {"count": len(different), "keys": different[:SAMPLE]},
            "retained_deleted": len(self.outside) - len(extra),
            "checksum_source": checksum(source),
            # MongoDB's values for the keys both sides have, in key order.
            "checksum_mongo": _checksum_sorted(
                (k, self.different.get(k, v)) for k, v in _sorted_items(source) if k not in unseen),
            "match": not (missing or extra or different),
            # every key that differs (the three are disjoint), for _split_pending
            "_keys": (missing + len(extra) + len(different), lambda: itertools.chain(unseen, extra, different)),
        }
        return out


def _split_pending(result: dict, pending: set[str] | None, path_of) -> None:
    """Keep "not mirrored yet" (its file is queued) apart from a real mismatch."""
    count, keys = result.pop("_keys")
    if pending is None:
        return
    waiting = sum(1 for k in keys() if path_of(k) in pending) if pending else 0
    result["pending"] = waiting
    result["mismatch"] = count - waiting


def compute(store: Store, view: SourceView, pending: set[str] | None = None,
            state: MirrorState | None = None) -> dict[str, Any]:
    """Compare the files (``view``) with MongoDB (``state``, read now unless given:
    ``sync`` passes the state it just loaded and updated with acknowledged writes).
    Read now, MongoDB's documents are compared as they stream in."""
    rows = state_rows(state) if state is not None else store.iter_state()

    src_hubs = {f"{t}/{k}": h for t, entries in view.hubs.items() for k, h in entries.items()}
    snap_src = {view.snapshot[0]: view.snapshot[1]} if view.snapshot else {}
    hubs_t, eps_t, snap_t, files_t = _Tally(src_hubs), _Tally(view.episodes), _Tally(snap_src), _Tally(view.files)
    retained_hubs: set[str] = set()
    retained_runs: set[str] = set()
    deleted_rels: set[str] = set()
    snapshot_history = 0
    latest: tuple | None = None
    for row in rows:
        kind = type(row)
        if kind is HubRow:
            hubs_t.add(f"{row.hub_type}/{row.key}", pack_hash(row.digest))
        elif kind is EpisodeRow:
            eps_t.add(row.run_id, pack_hash(row.digest))
        elif kind is SnapshotRow:
            snapshot_history += 1
            # The current snapshot is the newest by instant, whoever wrote it (as
            # Mentorix reads it: find_one(sort timestamp -1)); the others are history.
            when = row.instant
            if latest is None or (when is not None and (latest[0] is None or when > latest[0])):
                latest = (when, row.snapshot_id, row.digest)
        else:  # FileRow
            if row.deleted:
                deleted_rels.add(row.rel)
                if row.kind == Kind.HUB.value:
                    retained_hubs.add(row.doc_id)
                elif row.kind == Kind.EPISODE.value:
                    retained_runs.add(str(row.doc_id))
            elif row.kind in GENERIC_KINDS:
                files_t.add(row.rel, pack_hash(row.content_sha) or "unreadable")

    if latest is not None and snap_src:
        # Compared under the file's key: a newer snapshot written by someone else is "different".
        snap_t.add(next(iter(snap_src)), pack_hash(latest[2]))

    # Entries of hub files we could not read are unknown on the source side:
    # they are neither missing nor extra, and the kind cannot match.
    skip_types = retained_hubs | set(view.bad_hubs)
    hubs = hubs_t.result(lambda k: k.split("/", 1)[0] in skip_types)
    bad_entries = sum(len(v) for v in view.hub_bad_entries.values())
    hubs.update(files=len(view.hubs) + len(view.bad_hubs), bad_files=len(view.bad_hubs),
                bad_entries=bad_entries)
    hubs["match"] = hubs["match"] and not view.bad_hubs and not bad_entries

    episodes = eps_t.result(retained_runs.__contains__)
    episodes.update(files=len(view.episodes) + len(view.bad_episodes), bad_files=len(view.bad_episodes))
    episodes["match"] = episodes["match"] and not view.bad_episodes

    snapshot = snap_t.result()
    snapshot.update(files=int(bool(view.snapshot) or view.snapshot_bad), bad_files=int(view.snapshot_bad),
                    history=snapshot_history)
    snapshot["match"] = snapshot["match"] and not view.snapshot_bad

    retained_files = deleted_rels | view.bad_files
    files = files_t.result(retained_files.__contains__)
    files.update(files=len(view.files) + len(view.bad_files), bad_files=len(view.bad_files))
    files["match"] = files["match"] and not view.bad_files

    kinds = {"hubs": hubs, "snapshot": snapshot, "episodes": episodes, "files": files}
    _split_pending(hubs, pending, lambda k: hub_path(k.split("/", 1)[0]))
    _split_pending(snapshot, pending, lambda k: "snapshot.json")
    _split_pending(episodes, pending, lambda k: view.episode_paths.get(k, episode_path(k)))
    _split_pending(files, pending, lambda k: k)
    return {
        "source_counts": {
            "hub_entries": len(src_hubs),
            "has_snapshot": bool(view.snapshot),
            "episodes": len(view.episodes),
            "files": len(view.files),
        },
        "mongo_counts": {
            "hub_entries": hubs["documents"],
            "has_snapshot": snapshot["documents"] > 0,
            "episodes": episodes["documents"],
            "files": files["documents"],
        },
        "checksums": {
            "source": {k: v["checksum_source"] for k, v in kinds.items()},
            "mongo_subset": {k: v["checksum_mongo"] for k, v in kinds.items()},
        },
        "parity": {
            "hubs_match": hubs["match"],
            "snapshot_match": snapshot["match"],
            "episodes_match": episodes["match"],
            "files_match": files["match"],
            "all_match": all(v["match"] for v in kinds.values()),
        },
        "kinds": kinds,
        # Mirrored, but kept verbatim (not a mismatch): what, never a value.
        "stored_raw": {
            "count": len(view.stored_raw),
            "by_reason": _by_reason(view.stored_raw),
            "items": view.stored_raw[:200],
        },
    }


def _by_reason(items: list[dict[str, str]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        out[item["reason"]] = out.get(item["reason"], 0) + 1
    return out
