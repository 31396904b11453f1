"""Rebuild the data dir from MongoDB, byte-identical to what was mirrored.

Manifests say which files existed and how they were formatted; hub files are
re-assembled from their entries in their original order. Data that Mentorix's
own Mongo store wrote (no manifest) is restored too, in the legacy layout.
Every file is written atomically (temp file, fsync, rename) and never through a
symlink.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .classify import Kind, UnsafePath, classify, episode_path, hub_path, normalize
from .documents import entry_value, file_fields
from .model import hubs_hash
from .names import EPISODES, FILES, HUBS, SNAPSHOTS
from .parse import render, value_hash
from .diskwrite import is_empty, write_atomic, write_new
from .source import SourceError
from .store import Store
from .history import Chosen, Tombstones, TombstoneUnusable, latest_snapshot, usable

log = logging.getLogger("sidecar.restore")


class RestoreRefused(Exception):
    pass


@dataclass
class RestoreResult:
    written: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    bytes: int = 0

    def as_dict(self, dry_run: bool) -> dict:
        return {
            "dry_run": dry_run,
            "files_written": len(self.written),
            "files_unchanged": len(self.unchanged),
            "bytes": self.bytes,
            "skipped": self.skipped,
            "paths": self.written[:50],
        }


def _pos(doc: dict) -> int | None:
    meta = doc.get("_sidecar")
    pos = meta.get("pos") if isinstance(meta, dict) else None
    return pos if isinstance(pos, int) and not isinstance(pos, bool) else None


def hub_bytes(store: Store, hub_type: str, fmt: dict | None, tombs: Tombstones | None = None,
              kept: Callable[[str], bytes | None] | None = None) -> bytes:
    """One hub file's bytes from its documents, entries in their recorded order.
    With ``tombs``, removed entries are merged back at their recorded position.
    ``kept(docs_hash)``: the file's verbatim bytes (a layout the documents cannot
    be rendered back into) if they go with documents of that hash, else None."""
    docs = list(store.find(HUBS, {"hub_type": hub_type},
                           {"item_key": 1, "payload": 1, "_sidecar.pos": 1, "_sidecar.raw": 1}))
    if tombs is not None and tombs.active:
        docs = tombs.merge_hub(hub_type, docs)
    docs.sort(key=lambda d: (_pos(d) is None, _pos(d) or 0, str(d.get("item_key"))))
    values = {str(d["item_key"]): entry_value(d) for d in docs}
    if kept is not None:
        data = kept(hubs_hash((k, value_hash(v)) for k, v in values.items()))
        if data is not None:
            return data
    return render(values, fmt if isinstance(fmt, dict) else None)


def _kept_bytes(store: Store, man: dict, tombs: Tombstones, chosen: Chosen | None):
    """For a structured file whose manifest keeps its bytes (``docs_hash``): a
    function giving them when the documents still hash to ``docs_hash`` (else
    None: MongoDB moved on since, its documents are rendered instead)."""
    want = man.get("docs_hash")
    if not isinstance(want, str):
        return None

    def kept(have: str) -> bytes | None:
        if have != want:
            return None
        full = tombs.full(chosen) if chosen is not None else store.find_one(FILES, {"_id": man["_id"]})
        raw = (full or {}).get("raw")
        if not isinstance(raw, bytes) or (full or {}).get("docs_hash") != want:
            return None
        return bytes(raw)
    return kept


def plan_files(store: Store, include_deleted: bool = False, as_of: datetime | None = None,
               skipped: list[dict[str, str]] | None = None) -> Iterator[tuple[str, Callable[[], bytes]]]:
    """(relative path, producer of its bytes) for every file MongoDB can rebuild.

    ``include_deleted``/``as_of``: see ``Tombstones``; what cannot be used is
    appended to ``skipped``."""
    tombs = Tombstones(store, include_deleted, as_of, skipped)
    seen_hubs: set[str] = set()
    seen_runs: set[str] = set()
    have_snapshot = False
    live_rels: set[str] = set()
    manifests = store.find(FILES, {}, {"content": 0, "raw": 0})

    def effective() -> Iterator[tuple[dict, Chosen | None]]:
        for man in manifests:
            chosen = tombs.manifests.get(man["_id"]) if tombs.active else None
            if chosen is not None:
                live_rels.add(man["_id"])
                if tombs.as_of is not None:
                    yield chosen.doc, chosen  # what the file was at as_of
                    continue
            yield man, None
        for rel in sorted(set(tombs.manifests) - live_rels):
            chosen = tombs.manifests[rel]
            yield chosen.doc, chosen

    for man, chosen in effective():
        rel = man["_id"]
        kind = man.get("kind")
        if kind == Kind.HUB.value:
            seen_hubs.add(man.get("hub_type"))
        elif kind == Kind.EPISODE.value:
            seen_runs.add(str(man.get("doc_id")))
        elif kind == Kind.SNAPSHOT.value:
            have_snapshot = True
        if not usable(man, tombs, include_deleted):
            continue
        produce = _producer(store, man, tombs, chosen)
        if chosen is not None:
            produce.tid = chosen.tid  # type: ignore[attr-defined]  # named when skipped
        yield rel, produce
    # Data that has no manifest: written by a Mongo-backed Mentorix directly.
    hub_types = {str(d.get("hub_type")) for d in store.find(HUBS, {}, {"hub_type": 1})} | set(tombs.hubs)
    for hub_type in sorted(hub_types - seen_hubs):
        yield hub_path(hub_type), (lambda t=hub_type: hub_bytes(store, t, None, tombs))
    live_runs = set()
    for doc in store.find(EPISODES, {}, {"run_id": 1}):
        run_id = str(doc.get("run_id"))
        live_runs.add(run_id)
        if run_id not in seen_runs:
            yield episode_path(run_id), (lambda r=run_id: _episode_bytes(tombs, r, None))
    for run_id in sorted(set(tombs.episodes) - seen_runs - live_runs):
        path = tombs.episodes[run_id].path
        rel = path if isinstance(path, str) and classify(path) is Kind.EPISODE else episode_path(run_id)
        yield rel, (lambda r=run_id: _episode_bytes(tombs, r, None))
    if not have_snapshot:
        latest = latest_snapshot(store)
        if latest:
            yield "snapshot.json", (lambda: render(file_fields(latest), None))


def _doc_bytes(doc: dict, fmt: Any, kept=None) -> bytes:
    fields = file_fields(doc)
    if kept is not None:
        data = kept(value_hash(fields))
        if data is not None:
            return data
    return render(fields, fmt if isinstance(fmt, dict) else None)


def _episode_bytes(tombs: Tombstones, run_id: str, fmt: Any, kept=None) -> bytes:
    doc = tombs.episode(run_id)
    if doc is None:
        raise LookupError("episode document missing")
    return _doc_bytes(doc, fmt, kept)


def _producer(store: Store, man: dict, tombs: Tombstones, chosen: Chosen | None = None) -> Callable[[], bytes]:
    kind, fmt, rel = man.get("kind"), man.get("format"), man["_id"]
    fmt = fmt if isinstance(fmt, dict) else None
    if kind in (Kind.HUB.value, Kind.SNAPSHOT.value, Kind.EPISODE.value):
        kept = _kept_bytes(store, man, tombs, chosen)
    if kind == Kind.HUB.value:
        return lambda: hub_bytes(store, man.get("hub_type"), fmt, tombs, kept)
    if kind == Kind.SNAPSHOT.value:
        def snapshot() -> bytes:
            doc = tombs.snapshot(man.get("doc_id")) or store.find_one(
                SNAPSHOTS, {}, sort=[("timestamp", -1)])
            if doc is None:
                raise LookupError("no snapshot document")
            return _doc_bytes(doc, fmt, kept)
        return snapshot
    if kind == Kind.EPISODE.value:
        return lambda: _episode_bytes(tombs, man.get("doc_id"), fmt, kept)

    def generic() -> bytes:
        try:
            return _generic()
        except LookupError as exc:
            if chosen is None or isinstance(exc, TombstoneUnusable):
                raise
            raise TombstoneUnusable(str(exc), chosen.tid) from None

    def _generic() -> bytes:
        full = tombs.full(chosen) if chosen is not None else None
        if (full or man).get("encoding") == "gridfs":
            blob_id = (full or man).get("blob_id")
            if blob_id is None or store.blob_sha256(blob_id) is None:
                raise LookupError("its GridFS blob is gone")
            return store.read_blob(blob_id)
        if full is None:
            full = store.find_one(FILES, {"_id": rel})
            if full is None:
                raise LookupError("manifest vanished")
        if full.get("raw") is not None:
            return bytes(full["raw"])
        if "content" not in full:
            raise LookupError("manifest holds no content")
        return render(full.get("content"), fmt)
    return generic


def restore(
    store: Store, out: Path, *, force: bool = False, dry_run: bool = False,
    include_deleted: bool = False, ignore: Callable[[str], bool] = lambda rel: False,
    only: Callable[[str], bool] | None = None, as_of: datetime | None = None,
    missing_only: bool = False, progress: Callable[[RestoreResult], None] | None = None,
) -> RestoreResult:
    """``include_deleted``: also what was deleted (recorded deletions, tombstones).
    ``as_of``: the files as they were at that instant (a naive time is UTC), as
    far as the tombstones (kept ``SIDECAR_TOMBSTONE_DAYS``) can say; it decides
    on its own what was deleted then, ``include_deleted`` adds nothing to it.
    ``missing_only``: write only the files that do not exist (mongo mode's start:
    "restore what is missing"); a file created meanwhile is never overwritten."""
    out = Path(out)
    if as_of is not None and as_of.tzinfo is None:
        as_of = as_of.replace(tzinfo=timezone.utc)
    if missing_only:
        force = True
    if not force and not is_empty(out, ignore):
        raise RestoreRefused(f"target {str(out)!r} is not empty; use --force to write into it")
    if not dry_run:
        out.mkdir(parents=True, exist_ok=True)
    result = RestoreResult()
    written: set[str] = set()
    for rel, produce in plan_files(store, include_deleted, as_of, result.skipped):
        try:
            rel = normalize(rel)
            if only is not None and not only(rel):
                continue
            if ignore(rel):
                continue
            if rel in written:
                continue  # two documents claim one file: the first (its manifest) holds it
            if missing_only and os.path.lexists(out / rel):
                continue
            data = produce()
        except (UnsafePath, LookupError, TypeError, ValueError, AttributeError) as exc:
            # TypeError & co.: documents written by someone else that cannot make a file.
            reason = str(exc) if isinstance(exc, (UnsafePath, LookupError)) else \
                f"cannot rebuild: {type(exc).__name__}"
            entry = {"path": str(rel), "reason": reason}
            tid = exc.tid if isinstance(exc, TombstoneUnusable) else getattr(produce, "tid", None)
            if tid is not None:
                entry["id"] = str(tid)
            result.skipped.append(entry)
            continue
        written.add(rel)
        if dry_run:
            result.written.append(rel)
            result.bytes += len(data)
            if progress is not None:
                progress(result)
            continue
        try:
            changed = write_new(out, rel, data) if missing_only else write_atomic(out, rel, data)
        except UnsafePath as exc:
            result.skipped.append({"path": rel, "reason": str(exc)})
            continue
        except OSError as exc:
            result.skipped.append({"path": rel, "reason": f"{rel}: {exc.strerror or type(exc).__name__}"})
            continue
        (result.written if changed else result.unchanged).append(rel)
        result.bytes += len(data) if changed else 0
        if progress is not None:
            progress(result)
    return result


def restore_file(store: Store, out: Path, rel: str) -> bool:
    """Put one missing file back from MongoDB (mongo mode's resolution of a held
    divergence). Only if nothing is at ``rel`` now, and only if its deletion was
    never accepted. True when MongoDB had it (written now, or there already)."""
    rel = normalize(rel)
    man = store.find_one(FILES, {"_id": rel})
    if not isinstance(man, dict) or man.get("deleted_at") is not None:
        return False
    write_new(Path(out), rel, _producer(store, man, Tombstones(store))())
    return True


class Refill:
    """Mongo mode (``MEMORY_STORE_BACKEND=mongo``): MongoDB is the source of truth,
    so a file that lost what MongoDB holds gets it back, written by the daemon
    while it runs: a hub missing entries is healed by compare-and-swap
    (``sidecar/heal.py``), a missing file is restored (``restore_file``)."""

    def __init__(self, store: Store, out: Path, healer: Any) -> None:
        self.store = store
        self.out = out
        self.healer = healer  # sidecar.heal.Healer

    def divergence(self, div: Any, fmt: dict | None) -> str:
        """Give a held divergence's file (``sidecar.divergence.Divergence``) MongoDB's
        data back: "restored", "retry" (mid-write or raced: look again) or "held"
        (could not: reported for now)."""
        rel = div.path
        try:
            if not div.missing_file:
                outcome = self.healer.heal_hub(rel, fmt)
                if outcome == "retry":
                    return "retry"
                if outcome != "missing":
                    return "restored"
            if restore_file(self.store, self.out, rel):
                log.info("restored %s from MongoDB (%s)", rel, div.reason)
            return "restored"
        except (UnsafePath, SourceError, LookupError, OSError, ValueError, TypeError, KeyError) as exc:
            log.warning("could not restore %s from MongoDB: %s", rel, type(exc).__name__)
            return "held"

    def broken_hub(self, rel: str, fmt: dict | None) -> bool:
        """A hub that stayed empty or unparsable through the re-checks (a torn
        ``write_text``) gets MongoDB's entries, by the same compare-and-swap as a
        heal (a writer finishing into the old inode meanwhile is merged back)."""
        try:
            outcome = self.healer.heal_hub(rel, fmt, broken_ok=True)
        except (SourceError, OSError, ValueError, TypeError) as exc:
            log.warning("could not heal %s from MongoDB: %s", rel, type(exc).__name__)
            return False
        if outcome == "healed":
            log.info("%s stayed unreadable; MongoDB's entries written back (mongo mode)", rel)
            return True
        return False
