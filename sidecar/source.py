"""Reading the data dir safely: no symlinks followed, nothing outside the root.

Every read goes component by component with ``O_NOFOLLOW`` relative to an open
directory descriptor, so a symlink anywhere on the way (a file or a parent
directory) is refused instead of being resolved, and a path can never resolve
outside the root however it was produced.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .classify import is_ignored

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class SourceError(Exception):
    """A file that cannot be read as a regular file inside the data dir."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class DataDirMissing(SourceError):
    pass


@dataclass(frozen=True, slots=True)
class FileRead:
    rel: str
    data: bytes
    sha256: str
    size: int
    mtime_ns: int
    # The file's lineage: which inode held these bytes, in which directory inode
    # (see sidecar/lineage.py). 0 where unknown (bytes handed over without a read).
    dev: int = 0
    ino: int = 0
    dir_ino: int = 0


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_root(root: Path) -> Path:
    root = Path(root)
    if not root.exists():
        raise DataDirMissing("data_dir_missing", f"data dir {str(root)!r} does not exist")
    if not root.is_dir():
        raise DataDirMissing("data_dir_missing", f"data dir {str(root)!r} is not a directory")
    return root


def _open_parent(root: Path, rel: str) -> tuple[int, str]:
    """Open the directory holding ``rel`` without following links; return (fd, name)."""
    parts = rel.split("/")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts[:-1]:
            nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd, parts[-1]


def _translate(rel: str, exc: OSError) -> SourceError:
    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
        return SourceError("symlink", f"{rel}: is, or lies under, a symlink; not followed")
    if exc.errno == errno.ENOENT:
        return SourceError("vanished", f"{rel}: no longer exists")
    return SourceError("io_error", f"{rel}: {exc.strerror or exc.__class__.__name__}")


def read_file(root: Path, rel: str, attempts: int = 3) -> FileRead:
    """Read one file's exact bytes. Retries when the file changes while being read."""
    try:
        dir_fd, name = _open_parent(root, rel)
    except OSError as exc:
        raise _translate(rel, exc) from None
    try:
        for _ in range(attempts):
            try:
                fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
            except OSError as exc:
                raise _translate(rel, exc) from None
            try:
                before = os.fstat(fd)
                if not stat.S_ISREG(before.st_mode):
                    raise SourceError("not_regular", f"{rel}: not a regular file")
                chunks = []
                while True:
                    chunk = os.read(fd, 1 << 20)
                    if not chunk:
                        break
                    chunks.append(chunk)
                after = os.fstat(fd)
            finally:
                os.close(fd)
            data = b"".join(chunks)
            if (before.st_mtime_ns, before.st_size) == (after.st_mtime_ns, after.st_size) == (
                after.st_mtime_ns,
                len(data),
            ):
                return FileRead(rel, data, sha256_hex(data), len(data), after.st_mtime_ns,
                                after.st_dev, after.st_ino, os.fstat(dir_fd).st_ino)
        raise SourceError("unstable", f"{rel}: kept changing while being read")
    finally:
        os.close(dir_fd)


def exists(root: Path, rel: str) -> bool:
    try:
        dir_fd, name = _open_parent(root, rel)
    except OSError:
        return False
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        return stat.S_ISREG(st.st_mode)
    except OSError:
        return False
    finally:
        os.close(dir_fd)


@dataclass(frozen=True, slots=True)
class Skipped:
    rel: str
    reason: str
    message: str


def walk(root: Path, ignore: tuple[str, ...]) -> Iterator[str | Skipped]:
    """Yield the relative paths of regular files under root, sorted, never following links.

    Symlinks and special files are yielded as ``Skipped`` so callers can report them.
    """
    stack = [""]
    while stack:
        prefix = stack.pop()
        try:
            with os.scandir(root / prefix if prefix else root) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            yield Skipped(prefix or ".", "io_error", f"{prefix or '.'}: {exc.strerror}")
            continue
        subdirs = []
        for entry in entries:
            rel = f"{prefix}/{entry.name}" if prefix else entry.name
            if is_ignored(rel, ignore) or is_ignored(rel + "/", ignore):
                continue
            if entry.is_symlink():
                yield Skipped(rel, "symlink", f"{rel}: symlink not followed")
            elif entry.is_dir(follow_symlinks=False):
                subdirs.append(rel)
            elif entry.is_file(follow_symlinks=False):
                yield rel
            else:
                yield Skipped(rel, "not_regular", f"{rel}: not a regular file")
        stack.extend(reversed(subdirs))


def parent_ino(root: Path, rel: str) -> int | None:
    """The inode of the directory that holds ``rel`` now (links not followed), or
    None when that directory is gone: a file deletion is only an edit of the
    lineage the sidecar watched if its directory is still the one it saw."""
    try:
        fd, _ = _open_parent(root, rel)
    except OSError:
        return None
    try:
        return os.fstat(fd).st_ino
    finally:
        os.close(fd)
