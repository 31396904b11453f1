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
from .diff import FILES
from .model import EPISODES, HUBS, SNAPSHOTS, file_fields
from .parse import render, value_hash
from .reconcile import SourceView
from .source import sha256_hex
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


def mongo_hubs(store: Store) -> dict[str, str]:
    out = {}
    for doc in store.find(HUBS, {}, {"hub_type": 1, "item_key": 1, "payload": 1}):
        out[f"{doc.get('hub_type')}/{doc.get('item_key')}"] = value_hash(doc.get("payload"))
    return out


def mongo_episodes(store: Store) -> dict[str, str]:
    return {str(doc.get("run_id")): value_hash(file_fields(doc)) for doc in store.find(EPISODES)}


def mongo_generic(store: Store) -> dict[str, str]:
    """sha256 of what a restore would write, per generic file."""
    out = {}
    for doc in store.find(FILES, {"kind": {"$in": GENERIC_KINDS}, "deleted_at": None}):
        enc = doc.get("encoding")
        if doc.get("raw") is not None:
            out[doc["_id"]] = sha256_hex(bytes(doc["raw"]))
        elif enc == "json":
            out[doc["_id"]] = sha256_hex(render(doc.get("content"), doc.get("format")))
        elif enc == "gridfs":
            out[doc["_id"]] = store.blob_sha256(doc.get("blob_id")) or "missing-blob"
        else:
            out[doc["_id"]] = "unreadable"
    return out


def deleted_files(store: Store) -> list[dict]:
    rows = store.find(FILES, {"deleted_at": {"$ne": None}}, {"kind": 1, "doc_id": 1, "hub_type": 1})
    return list(rows)


def _split_pending(result: dict, pending: set[str] | None, path_of) -> None:
    """Keep "not mirrored yet" (its file is queued) apart from a real mismatch."""
    keys = result.pop("_keys")
    if pending is None:
        return
    waiting = sum(1 for k in keys if path_of(k) in pending)
    result["pending"] = waiting
    result["mismatch"] = len(keys) - waiting


def compute(store: Store, view: SourceView, pending: set[str] | None = None) -> dict[str, Any]:
    retained = deleted_files(store)
    retained_hubs = {d.get("hub_type") for d in retained if d.get("kind") == "hub"}
    retained_runs = {str(d.get("doc_id")) for d in retained if d.get("kind") == "episode"}

    src_hubs = {f"{t}/{k}": h for t, entries in view.hubs.items() for k, h in entries.items()}
    mongo_hub = mongo_hubs(store)
    # Entries of hub files we could not read are unknown on the source side:
    # they are neither missing nor extra, and the kind cannot match.
    skip_types = set(view.bad_hubs)
    hub_retained = {k for k in mongo_hub if k.split("/", 1)[0] in retained_hubs | skip_types}
    hubs = _compare(src_hubs, mongo_hub, hub_retained)
    bad_entries = sum(len(v) for v in view.hub_bad_entries.values())
    hubs.update(files=len(view.hubs) + len(view.bad_hubs), bad_files=len(view.bad_hubs),
                bad_entries=bad_entries)
    hubs["match"] = hubs["match"] and not view.bad_hubs and not bad_entries

    mongo_eps = mongo_episodes(store)
    episodes = _compare(view.episodes, mongo_eps, retained_runs)
    episodes.update(files=len(view.episodes) + len(view.bad_episodes), bad_files=len(view.bad_episodes))
    episodes["match"] = episodes["match"] and not view.bad_episodes

    snap_src = {view.snapshot[0]: view.snapshot[1]} if view.snapshot else {}
    snap_mongo: dict[str, str] = {}
    if view.snapshot:
        doc = store.find_one(SNAPSHOTS, {"_id": view.snapshot[0]})
        if doc:
            snap_mongo[view.snapshot[0]] = value_hash(file_fields(doc))
    snapshot = _compare(snap_src, snap_mongo)
    snapshot.update(files=int(bool(view.snapshot) or view.snapshot_bad), bad_files=int(view.snapshot_bad),
                    history=store.count(SNAPSHOTS))
    snapshot["match"] = snapshot["match"] and not view.snapshot_bad

    gen_mongo = mongo_generic(store)
    generic_retained = {d["_id"] for d in retained}
    files = _compare(view.files, gen_mongo, generic_retained | view.bad_files)
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
