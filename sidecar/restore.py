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
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .classify import Kind, UnsafePath, episode_path, hub_path, normalize
from .diff import FILES
from .model import EPISODES, HUBS, SNAPSHOTS, file_fields
from .parse import render
from .store import Store

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


def hub_bytes(store: Store, hub_type: str, fmt: dict | None) -> bytes:
    """One hub file's bytes from its documents, entries in their recorded order."""
    docs = list(store.find(HUBS, {"hub_type": hub_type}, {"item_key": 1, "payload": 1, "_sidecar.pos": 1}))
    docs.sort(key=lambda d: (((d.get("_sidecar") or {}).get("pos") is None),
                             (d.get("_sidecar") or {}).get("pos") or 0, str(d.get("item_key"))))
    return render({str(d["item_key"]): d.get("payload") for d in docs}, fmt)


def plan_files(store: Store, include_deleted: bool = False) -> Iterator[tuple[str, Callable[[], bytes]]]:
    """(relative path, producer of its bytes) for every file MongoDB can rebuild."""
    seen_hubs: set[str] = set()
    seen_runs: set[str] = set()
    have_snapshot = False
    manifests = store.find(FILES, {}, {"content": 0, "raw": 0})
    for man in manifests:
        rel = man["_id"]
        kind = man.get("kind")
        if kind == Kind.HUB.value:
            seen_hubs.add(man.get("hub_type"))
        elif kind == Kind.EPISODE.value:
            seen_runs.add(str(man.get("doc_id")))
        elif kind == Kind.SNAPSHOT.value:
            have_snapshot = True
        if man.get("deleted_at") is not None and not include_deleted:
            continue
        yield rel, _producer(store, man)
    # Data that has no manifest: written by a Mongo-backed Mentorix directly.
    for hub_type in sorted({str(d.get("hub_type")) for d in store.find(HUBS, {}, {"hub_type": 1})} - seen_hubs):
        yield hub_path(hub_type), (lambda t=hub_type: hub_bytes(store, t, None))
    for doc in store.find(EPISODES, {}, {"run_id": 1}):
        run_id = str(doc.get("run_id"))
        if run_id not in seen_runs:
            yield episode_path(run_id), (lambda r=run_id: render(
                file_fields(store.find_one(EPISODES, {"run_id": r})), None))
    if not have_snapshot:
        latest = store.find_one(SNAPSHOTS, {}, sort=[("timestamp", -1)])
        if latest:
            yield "snapshot.json", (lambda: render(file_fields(latest), None))


def _producer(store: Store, man: dict) -> Callable[[], bytes]:
    kind, fmt, rel = man.get("kind"), man.get("format"), man["_id"]
    if kind == Kind.HUB.value:
        return lambda: hub_bytes(store, man.get("hub_type"), fmt)
    if kind == Kind.SNAPSHOT.value:
        def snapshot() -> bytes:
            doc = store.find_one(SNAPSHOTS, {"_id": man.get("doc_id")}) or store.find_one(
                SNAPSHOTS, {}, sort=[("timestamp", -1)])
            if doc is None:
                raise LookupError("no snapshot document")
            return render(file_fields(doc), fmt)
        return snapshot
    if kind == Kind.EPISODE.value:
        def episode() -> bytes:
            doc = store.find_one(EPISODES, {"run_id": man.get("doc_id")})
            if doc is None:
                raise LookupError("episode document missing")
            return render(file_fields(doc), fmt)
        return episode

    def generic() -> bytes:
        if man.get("encoding") == "gridfs":
            return store.read_blob(man.get("blob_id"))
        full = store.find_one(FILES, {"_id": rel})
        if full.get("raw") is not None:
            return bytes(full["raw"])
        return render(full.get("content"), fmt)
    return generic


def is_empty(out: Path, ignore: Callable[[str], bool] = lambda rel: False) -> bool:
    if not out.exists():
        return True
    for dirpath, dirnames, filenames in os.walk(out):
        for name in filenames:
            rel = os.path.relpath(os.path.join(dirpath, name), out).replace(os.sep, "/")
            if not ignore(rel):
                return False
    return True


def _safe_dir(out: Path, rel: str) -> Path:
    """Create rel's parent directories under out, refusing any symlink on the way."""
    current = out
    for part in rel.split("/")[:-1]:
        current = current / part
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            os.mkdir(current, 0o755)
            continue
        if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
            raise UnsafePath(f"{rel}: a parent is a symlink or not a directory")
    return current


def write_atomic(out: Path, rel: str, data: bytes) -> bool:
    """Write one file atomically. Returns False when it already had these bytes."""
    parent = _safe_dir(out, rel)
    target = out / rel
    try:
        st = os.lstat(target)
        if stat.S_ISLNK(st.st_mode):
            raise UnsafePath(f"{rel}: target is a symlink; not written through")
        if not stat.S_ISREG(st.st_mode):
            raise UnsafePath(f"{rel}: something other than a file is in the way")
        if st.st_size == len(data) and target.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    tmp = parent / f".sidecar-restore-{os.getpid()}-{os.urandom(4).hex()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dfd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return True


def write_new(out: Path, rel: str, data: bytes) -> bool:
    """Create ``rel`` with ``data`` only if nothing is there (False otherwise).

    The temp file is hard-linked into place, which fails if the name exists: a
    file the API created meanwhile is never overwritten by an older restore."""
    parent = _safe_dir(out, rel)
    target = out / rel
    if os.path.lexists(target):
        return False
    tmp = parent / f".sidecar-restore-{os.getpid()}-{os.urandom(4).hex()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, target, follow_symlinks=False)
        except FileExistsError:
            return False
    finally:
        tmp.unlink(missing_ok=True)
    dfd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return True


def clean_temp_files(out: Path) -> int:
    """Remove temp files a killed restore or heal left behind (ours only, by name)."""
    removed = 0
    for dirpath, dirnames, filenames in os.walk(out):
        for name in filenames:
            if name.startswith((".sidecar-restore-", ".sidecar-heal-")):
                path = os.path.join(dirpath, name)
                if not os.path.islink(path):
                    os.unlink(path)
                    removed += 1
    return removed


def restore(
    store: Store, out: Path, *, force: bool = False, dry_run: bool = False,
    include_deleted: bool = False, ignore: Callable[[str], bool] = lambda rel: False,
    only: Callable[[str], bool] | None = None, missing_only: bool = False,
    progress: Callable[[RestoreResult], None] | None = None,
) -> RestoreResult:
    """``missing_only``: write only the files that do not exist (mongo mode's start:
    "restore what is missing"); a file created meanwhile is never overwritten."""
    out = Path(out)
    if missing_only:
        force = True
    if not force and not is_empty(out, ignore):
        raise RestoreRefused(f"target {str(out)!r} is not empty; use --force to write into it")
    if not dry_run:
        out.mkdir(parents=True, exist_ok=True)
    result = RestoreResult()
    for rel, produce in plan_files(store, include_deleted):
        try:
            rel = normalize(rel)
            if only is not None and not only(rel):
                continue
            if ignore(rel):
                continue
            if missing_only and os.path.lexists(out / rel):
                continue
            data = produce()
        except (UnsafePath, LookupError) as exc:
            result.skipped.append({"path": str(rel), "reason": str(exc)})
            continue
        if dry_run:
            result.written.append(rel)
            result.bytes += len(data)
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
    write_new(Path(out), rel, _producer(store, man)())
    return True
