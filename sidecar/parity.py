"""Stage 6 (status): files vs. MongoDB, per kind, from the data itself.

The MongoDB side is hashed from the stored values (payloads, file fields,
content), not from the sidecar's own ``_sidecar.hash`` bookkeeping, so a
document changed behind the sidecar's back shows up as "different". Reports
name keys and paths, never values.
"""

from __future__ import annotations

import hashlib
from typing import Any

from .classify import Kind, episode_path, hub_path
from .diff import MirrorState
from .reconcile import SourceView
from .store import Store

SAMPLE = 20  # keys listed per category; counts are always complete
GENERIC_KINDS = [Kind.RUN.value, Kind.JOBS.value, Kind.OTHER.value]


def checksum(pairs: dict[str, str]) -> str:
    h = hashlib.sha256()
    for key in sorted(pairs):
        h.update(f"{key}\t{pairs[key]}\n".encode())
    return h.hexdigest()


def _compare(source: dict[str, str], mongo: dict[str, str], retained: set[str] = frozenset()) -> dict:
    missing = sorted(k for k in source if k not in mongo)
    extra = sorted(k for k in mongo if k not in source and k not in retained)
    different = sorted(k for k in source if k in mongo and mongo[k] != source[k])
    return {
        "entries": len(source),
        "documents": len(mongo),
        "missing": {"count": len(missing), "keys": missing[:SAMPLE]},
        "extra": {"count": len(extra), "keys": extra[:SAMPLE]},
        "different": {"count": len(different), "keys": different[:SAMPLE]},
        "retained_deleted": len([k for k in mongo if k in retained and k not in source]),
        "checksum_source": checksum(source),
        "checksum_mongo": checksum({k: v for k, v in mongo.items() if k in source}),
        "match": not (missing or extra or different),
        "_keys": set(missing) | set(extra) | set(different),
    }


def _split_pending(result: dict, pending: set[str] | None, path_of) -> None:
    """Keep "not mirrored yet" (its file is queued) apart from a real mismatch."""
    keys = result.pop("_keys")
    if pending is None:
        return
    waiting = sum(1 for k in keys if path_of(k) in pending)
    result["pending"] = waiting
    result["mismatch"] = len(keys) - waiting


def compute(store: Store, view: SourceView, pending: set[str] | None = None,
            state: MirrorState | None = None) -> dict[str, Any]:
    """Compare the files (``view``) with MongoDB (``state``, read now unless given:
    ``sync`` passes the state it just loaded and updated with acknowledged writes)."""
    state = state if state is not None else store.load_state()
    deleted = [(rel, fs) for rel, fs in state.files.items() if fs.deleted]
    retained_hubs = {fs.doc_id for _, fs in deleted if fs.kind == Kind.HUB.value}
    retained_runs = {str(fs.doc_id) for _, fs in deleted if fs.kind == Kind.EPISODE.value}

    src_hubs = {f"{t}/{k}": h for t, entries in view.hubs.items() for k, h in entries.items()}
    mongo_hub = {f"{t}/{k}": hs.hash for t, entries in state.hubs.items() for k, hs in entries.items()}
    # Entries of hub files we could not read are unknown on the source side:
    # they are neither missing nor extra, and the kind cannot match.
    skip_types = set(view.bad_hubs)
    hub_retained = {k for k in mongo_hub if k.split("/", 1)[0] in retained_hubs | skip_types}
    hubs = _compare(src_hubs, mongo_hub, hub_retained)
    bad_entries = sum(len(v) for v in view.hub_bad_entries.values())
    hubs.update(files=len(view.hubs) + len(view.bad_hubs), bad_files=len(view.bad_hubs),
                bad_entries=bad_entries)
    hubs["match"] = hubs["match"] and not view.bad_hubs and not bad_entries

    mongo_eps = {run_id: h for run_id, (h, _) in state.episodes.items()}
    episodes = _compare(view.episodes, mongo_eps, retained_runs)
    episodes.update(files=len(view.episodes) + len(view.bad_episodes), bad_files=len(view.bad_episodes))
    episodes["match"] = episodes["match"] and not view.bad_episodes

    snap_src = {view.snapshot[0]: view.snapshot[1]} if view.snapshot else {}
    snap_mongo = {}
    if view.snapshot and view.snapshot[0] in state.snapshots:
        snap_mongo[view.snapshot[0]] = state.snapshots[view.snapshot[0]]
    snapshot = _compare(snap_src, snap_mongo)
    snapshot.update(files=int(bool(view.snapshot) or view.snapshot_bad), bad_files=int(view.snapshot_bad),
                    history=len(state.snapshots))
    snapshot["match"] = snapshot["match"] and not view.snapshot_bad

    gen_mongo = {rel: fs.content_sha or "unreadable" for rel, fs in state.files.items()
                 if fs.kind in GENERIC_KINDS and not fs.deleted}
    files = _compare(view.files, gen_mongo, {rel for rel, _ in deleted} | view.bad_files)
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
            "hub_entries": len(mongo_hub),
            "has_snapshot": bool(snap_mongo),
            "episodes": len(mongo_eps),
            "files": len(gen_mongo),
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
    }
