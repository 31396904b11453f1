"""Reading the data dir safely: no symlinks followed, nothing outside the root.

Every read goes component by component with ``O_NOFOLLOW`` relative to an open
directory descriptor, so a symlink anywhere on the way (a file or a parent
directory) is refused instead of being resolved, and a path can never resolve
outside the root however it was produced.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import os
import stat
import struct
import time

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    gen: int = 0  # the inode's generation (FS_IOC_GETVERSION): tells a reused inode number apart
    # The quick check's record (sidecar/quick.py): the inode's ctime, and the wall
    # clock just before the file was opened. 0 where unknown.
    ctime_ns: int = 0
    read_at: int = 0


@dataclass(frozen=True, slots=True)
class FileStat:
    """A file's stat data and lineage, without its content (``Prober``)."""

    rel: str
    size: int
    mtime_ns: int
    ctime_ns: int
    dev: int
    ino: int
    dir_ino: int
    gen: int


_FS_IOC_GETVERSION = 0x80087601  # _IOR('v', 1, long) on 64-bit Linux
_GEN_UNSUPPORTED: set[int] = set()  # st_dev values whose filesystem has no generation


def inode_generation(fd: int, dev: int | None = None) -> int:
    """The inode's generation number (ext4, tmpfs, xfs, btrfs bump it when an inode
    number is reused); 0 where the filesystem or platform has none."""
    try:
        dev = os.fstat(fd).st_dev if dev is None else dev
        if dev in _GEN_UNSUPPORTED:
            return 0
        return struct.unpack("l", fcntl.ioctl(fd, _FS_IOC_GETVERSION, b"\0" * 8))[0]
    except (OSError, NameError, struct.error):
        try:
            _GEN_UNSUPPORTED.add(os.fstat(fd).st_dev)
        except OSError:
            pass
        return 0


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_root(root: Path, must_exist: bool = True) -> Path:
    """The data dir must be a real directory: a symlink is refused, never followed.

    ``must_exist=False`` (the daemon, which creates a missing data dir) only
    refuses what is there and is not a directory."""
    root = Path(root)
    try:
        st = os.lstat(root)
    except FileNotFoundError:
        if not must_exist:
            return root
        raise DataDirMissing("data_dir_missing", f"data dir {str(root)!r} does not exist") from None
    except OSError as exc:
        raise DataDirMissing("data_dir_missing", f"data dir {str(root)!r}: {exc.strerror}") from None
    if stat.S_ISLNK(st.st_mode):
        raise DataDirMissing("data_dir_symlink", f"data dir {str(root)!r} is a symlink; refusing to follow it")
    if not stat.S_ISDIR(st.st_mode):
        raise DataDirMissing("data_dir_missing", f"data dir {str(root)!r} is not a directory")
    return root


def open_root(root: Path) -> int:
    """An fd on the data dir itself, opened with ``O_NOFOLLOW``: a root that is a
    symlink (or missing, or not a directory) raises ``DataDirMissing``, never the
    per-file ``vanished``: callers treat that as a deletion, and a missing root
    must never look like every file deleted."""
    try:
        return os.open(root, _DIR_FLAGS)
    except OSError as exc:
        try:
            is_link = stat.S_ISLNK(os.lstat(root).st_mode)
        except OSError:
            is_link = False
        if is_link or exc.errno == errno.ELOOP:
            raise DataDirMissing("data_dir_symlink",
                                 f"data dir {str(root)!r} is a symlink; not followed") from None
        if exc.errno == errno.ENOENT:
            raise DataDirMissing("data_dir_missing", f"data dir {str(root)!r} does not exist") from None
        if exc.errno == errno.ENOTDIR:
            raise DataDirMissing("data_dir_missing", f"data dir {str(root)!r} is not a directory") from None
        raise DataDirMissing("data_dir_missing",
                             f"data dir {str(root)!r} cannot be opened: {exc.strerror}") from None


def _open_parent(root: Path, rel: str) -> tuple[int, str]:
    """Open the directory holding ``rel`` without following links; return (fd, name).

    Raises ``DataDirMissing`` when the root itself cannot be opened, OSError
    for a component below it."""
    parts = rel.split("/")
    fd = open_root(root)
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


def _open_regular(dir_fd: int, name: str, rel: str) -> tuple[int, os.stat_result]:
    """``name`` in ``dir_fd`` opened without following a symlink, and its fstat; a
    ``SourceError`` unless it is a regular file (the descriptor is then closed)."""
    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        raise _translate(rel, exc) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SourceError("not_regular", f"{rel}: not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def printable(rel: str) -> str:
    """A path as it may be logged, stored or shown: a name that is not valid UTF-8 (Linux
    hands it over with lone surrogates) with those bytes as ``\\udcXX`` escapes."""
    return rel.encode("utf-8", "backslashreplace").decode("utf-8")


def read_file(root: Path, rel: str, attempts: int = 3) -> FileRead:
    """Read one file's exact bytes. Retries when the file changes while being read.
    A name that is not valid UTF-8 is refused (``bad_name``): MongoDB keys are UTF-8."""
    if printable(rel) != rel:
        raise SourceError("bad_name", f"{printable(rel)}: file name is not valid UTF-8; not mirrored")
    try:
        dir_fd, name = _open_parent(root, rel)
    except OSError as exc:
        raise _translate(rel, exc) from None
    try:
        for _ in range(attempts):
            read_at = time.time_ns()  # before the open: a write after it is racy (sidecar/quick.py)
            fd, before = _open_regular(dir_fd, name, rel)
            try:
                chunks = []
                while True:
                    chunk = os.read(fd, 1 << 20)
                    if not chunk:
                        break
                    chunks.append(chunk)
                after = os.fstat(fd)
                gen = inode_generation(fd, after.st_dev)
            finally:
                os.close(fd)
            data = b"".join(chunks)
            if (before.st_mtime_ns, before.st_size) == (after.st_mtime_ns, after.st_size) == (
                after.st_mtime_ns,
                len(data),
            ):
                return FileRead(rel, data, sha256_hex(data), len(data), after.st_mtime_ns,
                                after.st_dev, after.st_ino, os.fstat(dir_fd).st_ino, gen,
                                after.st_ctime_ns, read_at)
        raise SourceError("unstable", f"{rel}: kept changing while being read")
    finally:
        os.close(dir_fd)


class Prober:
    """Stat data and lineage of files without reading them (the quick check's
    skipped files still get their lineage observed, sidecar/reconcile.py): each
    file opened ``O_NOFOLLOW`` through the same component-by-component walk as a
    read, ``fstat``, the generation ioctl, closed. The directory of the last file
    stays open for the next one (a scan goes directory by directory)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._dir: tuple[str, int, int] | None = None  # (parent rel, fd, its inode)

    def __enter__(self) -> Prober:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._dir is not None:
            os.close(self._dir[1])
            self._dir = None

    def _parent(self, rel: str) -> tuple[int, int, str]:
        parent, _, name = rel.rpartition("/")
        if self._dir is None or self._dir[0] != parent:
            self.close()
            try:
                fd, _ = _open_parent(self.root, rel)
            except OSError as exc:
                raise _translate(rel, exc) from None
            try:
                self._dir = (parent, fd, os.fstat(fd).st_ino)
            except OSError:
                os.close(fd)
                raise
        return self._dir[1], self._dir[2], name

    def lstat(self, rel: str) -> os.stat_result:
        """The stat data of ``rel`` without opening it (a link is not followed): what the
        sync checkpoint compares. ``SourceError`` when gone or not a regular file."""
        dir_fd, _, name = self._parent(rel)
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except OSError as exc:
            raise _translate(rel, exc) from None
        if not stat.S_ISREG(st.st_mode):
            raise SourceError("not_regular", f"{printable(rel)} is not a regular file")
        return st

    def probe(self, rel: str) -> FileStat:
        """Raises ``SourceError`` (``vanished``, ``symlink``, ``not_regular``...) as a read would."""
        dir_fd, dir_ino, name = self._parent(rel)
        fd, st = _open_regular(dir_fd, name, rel)
        try:
            gen = inode_generation(fd, st.st_dev)
        finally:
            os.close(fd)
        return FileStat(rel, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_dev, st.st_ino, dir_ino, gen)


def probe_file(root: Path, rel: str) -> FileStat:
    """One file's stat data and lineage, its content not read (``Prober``)."""
    with Prober(root) as prober:
        return prober.probe(rel)


def exists(root: Path, rel: str) -> bool:
    try:
        dir_fd, name = _open_parent(root, rel)
    except (OSError, SourceError):
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


def walk(root: Path, ignore: tuple[str, ...], under: str = "",
         spill: Spill | None = None) -> Iterator[str | Skipped]:
    """Yield the relative paths of regular files under root, never following links: each
    directory's files in name order, then its subdirectories in name order. ``spill``:
    where a large directory's listing is kept (see ``SORTED_UP_TO``).

    Symlinks and special files are yielded as ``Skipped`` so callers can report them.
    The walk goes by directory fds (each one opened with ``O_NOFOLLOW`` relative
    to its parent's), so neither a root that is a symlink nor a subdirectory
    swapped for one between listing and descending is ever followed. A root that
    cannot be opened raises ``DataDirMissing``. ``under`` (a relative directory)
    walks only that part of the tree; paths stay relative to root.
    """
    fd = open_root(root)
    if under:
        try:
            for part in under.split("/"):
                nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = nfd
        except OSError as exc:
            os.close(fd)
            yield _skipped_dir(under, exc)
            return
    # (prefix, fd, names of its subdirectories still to descend into)
    stack: list[tuple[str, int, Iterator[str]]] = []
    prefix: str | None = under
    try:
        while prefix is not None:
            subdirs = yield from _list_dir(fd, prefix, ignore, spill)
            stack.append((prefix, fd, iter(subdirs)))
            fd, prefix = -1, None
            while stack and prefix is None:
                parent, parent_fd, names = stack[-1]
                name = next(names, None)
                if name is None:
                    stack.pop()
                    os.close(parent_fd)
                    continue
                rel = f"{parent}/{name}" if parent else name
                try:
                    fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
                except OSError as exc:
                    yield _skipped_dir(rel, exc)
                    continue
                prefix = rel
    finally:
        if fd >= 0 and all(fd != entry[1] for entry in stack):
            os.close(fd)
        for _, parent_fd, _ in stack:
            os.close(parent_fd)


def _skipped_dir(rel: str, exc: OSError) -> Skipped:
    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
        return Skipped(rel, "symlink", f"{rel}: is a symlink or no longer a directory; not followed")
    return Skipped(rel, "io_error", f"{rel}: {exc.strerror}")


# A directory of up to this many entries is listed in memory and walked in name order. A
# larger one (Mentorix's episodes/: one file per agent run, never deleted; 450k DirEntry
# objects sorted in memory held ~90 MiB for the whole scan of it) is listed into ``spill()``,
# a table of the local index (sidecar/localindex.py) that keeps it sorted on disk, and walked
# from there in name order: which also keeps a scan's lookups of the state in key order
# (its B-tree pages read once each, not once per file). Without ``spill`` (a walk of a few
# files: the watcher's, tests) it is walked in the order the filesystem lists it, the
# listing open meanwhile.
SORTED_UP_TO = 10_000
SPILL_BATCH = 5000
Spill = Callable[[], Any]  # a new, empty DiskMap: ``update_many``, ``items`` in key order, ``drop``


def _kind(entry: os.DirEntry) -> str:
    if entry.is_symlink():
        return "l"
    if entry.is_dir(follow_symlinks=False):
        return "d"
    return "f" if entry.is_file(follow_symlinks=False) else "o"


def _entries(fd: int, spill: Spill | None) -> Iterator[tuple[str, str]]:
    """One directory's (name, kind) in name order (see ``SORTED_UP_TO``)."""
    table = None
    try:
        with os.scandir(fd) as it:
            head = [(e.name, _kind(e)) for e in itertools.islice(it, SORTED_UP_TO + 1)]
            if len(head) <= SORTED_UP_TO:
                head.sort()
            elif spill is None:
                yield from head
                del head
                for e in it:
                    yield e.name, _kind(e)
                return
            else:
                table = spill()
                table.update_many(head)
                del head
                while batch := [(e.name, _kind(e)) for e in itertools.islice(it, SPILL_BATCH)]:
                    table.update_many(batch)
        # the directory is closed: the listing is the one taken now, as a sorted list would be
        yield from (head if table is None else table.items())
    finally:
        if table is not None:
            table.drop()


def _list_dir(fd: int, prefix: str, ignore: tuple[str, ...], spill: Spill | None = None):
    """Yield one directory's files and skipped entries; return its subdirectory names."""
    subdirs = []
    for entry in _guarded(_entries(fd, spill), prefix):
        if isinstance(entry, Skipped):
            yield entry
            break
        name, kind = entry
        rel = f"{prefix}/{name}" if prefix else name
        if is_ignored(rel, ignore) or is_ignored(rel + "/", ignore):
            continue
        if kind == "l":
            yield Skipped(rel, "symlink", f"{rel}: symlink not followed")
        elif kind == "d":
            subdirs.append(name)
        elif kind == "f":
            yield rel
        else:
            yield Skipped(rel, "not_regular", f"{rel}: not a regular file")
    return sorted(subdirs)


def _guarded(entries: Iterator[tuple[str, str]], prefix: str) -> Iterator[tuple[str, str] | Skipped]:
    """A directory's listing; an error reading it (at the open or part-way) ends it as a
    ``Skipped`` of the directory, so nothing under it is taken for gone."""
    try:
        yield from entries
    except OSError as exc:
        yield Skipped(prefix or ".", "io_error", f"{prefix or '.'}: {exc.strerror}")


def parent_ino(root: Path, rel: str) -> int | None:
    """The inode of the directory that holds ``rel`` now (links not followed), or
    None when that directory is gone: a file deletion is only an edit of the
    lineage the sidecar watched if its directory is still the one it saw."""
    try:
        fd, _ = _open_parent(root, rel)
    except (OSError, SourceError):
        return None
    try:
        return os.fstat(fd).st_ino
    finally:
        os.close(fd)
