"""Writing files into the data dir: atomically (temp file, fsync, rename), or
create-only (a hard link that fails if the name exists), never through a
symlink on the way, and the clean-up of what a killed writer left behind.

Used by restore, heal, the sync report and the daemon's mongo mode.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

from .classify import UnsafePath


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
    """Create rel's parent directories under out, refusing any symlink on the way
    (``out`` itself included: a data dir replaced by a symlink is never written through)."""
    if os.path.islink(out):
        raise UnsafePath(f"{rel}: the target dir is a symlink; not written through")
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
    tmp = _temp_with(parent, data)
    try:
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(parent)
    return True


def _temp_with(parent: Path, data: bytes) -> Path:
    """A new temp file beside the target holding ``data``, fsynced (ignored by name: ``.sidecar-*``)."""
    tmp = parent / f".sidecar-restore-{os.getpid()}-{os.urandom(4).hex()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _fsync_dir(parent: Path) -> None:
    dfd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def write_new(out: Path, rel: str, data: bytes) -> bool:
    """Create ``rel`` with ``data`` only if nothing is there (False otherwise).

    The temp file is hard-linked into place, which fails if the name exists: a
    file the API created meanwhile is never overwritten by an older restore."""
    parent = _safe_dir(out, rel)
    target = out / rel
    if os.path.lexists(target):
        return False
    tmp = _temp_with(parent, data)
    try:
        try:
            os.link(tmp, target, follow_symlinks=False)
        except FileExistsError:
            return False
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(parent)
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
