"""Where a path is relative to the data dir, and what a file inside holds.

Standard library only. ``DataDir`` answers, for a path the API used: is it
*spelled* inside the dir (``candidate``: lexical, what every write outside
pays), where is it really (``locate``/``resolve``: symlinks resolved, the
final component never followed), and what bytes does the file hold
(``read_back``, ``lstat_beneath``: no symlink followed on the way, so the
descriptor is inside by construction). ``plain_rel`` is the one prefix strip
and plain-spelling test; the short ``write_text`` route (``Shim._write_direct``)
spells the same checks inline, measured.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Any, Callable

from ._config import ShimConfig
from ._events import Stats

_READ_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
# Directories below the data dir are opened one by one, never through a
# symlink (O_NOFOLLOW + O_DIRECTORY fails on one): the descriptor is then known
# to be inside without asking /proc, the dearest call of the read-back.
_DIR_FLAGS = getattr(os, "O_PATH", 0) | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(
    os, "O_CLOEXEC", 0)
try:
    import posix as _posix

    _REAL_OS_OPEN: Any = _posix.open
except ImportError:  # pragma: no cover - not a POSIX system
    _REAL_OS_OPEN = None
_WALK = (
    _REAL_OS_OPEN is not None
    and hasattr(os, "O_PATH")
    and hasattr(os, "O_NOFOLLOW")
    and hasattr(os, "O_DIRECTORY")
    and os.open in getattr(os, "supports_dir_fd", ())
)


class DataDir:
    """The data dir as resolved at install time (``config.data_dir``) and as
    spelled (``config.data_dir_abs``). Counts symlinks it refuses in ``stats``."""

    def __init__(self, config: ShimConfig, stats: Stats) -> None:
        self.stats = stats
        self.real_dir = config.data_dir
        self.real_prefix = config.data_dir + "/"
        # str.startswith takes a tuple: one C call checks both spellings.
        self.prefixes = tuple(dict.fromkeys((self.real_prefix, config.data_dir_abs + "/")))
        self._use_proc = True

    # -- where is a path -------------------------------------------------------
    def plain_rel(self, path: str) -> str | None:
        """``path`` relative to the data dir if spelled plainly under it (no
        ``.``/``..``/empty parts), else None."""
        for prefix in self.prefixes:
            if path.startswith(prefix):
                rel = path[len(prefix):]
                break
        else:
            return None
        if not rel or rel[-1] == "/" or "//" in rel or "/." in rel or rel[0] == ".":
            # "." and ".." parts (and, rarely, a name starting with a dot,
            # which the read-back then handles)
            return None
        return rel

    def candidate(self, file: Any) -> str | None:
        """The absolute path if it is *spelled* inside the data dir, else None.

        Purely lexical (plus ``getcwd`` for a relative path): this is what
        every write outside the dir pays. Whether the file really is inside
        is decided on the descriptor at read-back time (``read_back``).
        """
        if file.__class__ is str:
            p = file
        elif isinstance(file, int):  # a descriptor (or bool): cannot map it
            return None
        else:
            p = os.fspath(file)
            if isinstance(p, bytes):
                p = os.fsdecode(p)
        if not p:
            return None
        if p[0] != "/":
            p = os.getcwd() + "/" + p
        if p.startswith(self.prefixes):
            return p
        # Only odd spellings ("//", "/./", "/../") deserve a second look.
        if ("//" in p or "/." in p) and os.path.normpath(p).startswith(self.prefixes):
            return p
        return None

    def locate(self, file: Any) -> tuple[str, str] | None:
        """(resolved path, posix path relative to the data dir) or None.

        For deletes and moves, decided before/after the call on the path:
        None for anything not inside the data dir, for a final component
        that is a symlink, and for the data dir itself.
        """
        p = self.candidate(file)
        return None if p is None else self.resolve(p)

    def resolve(self, p: str) -> tuple[str, str] | None:
        if "//" in p or "/." in p:
            # ".." must be resolved after symlinks, as the kernel does, so no
            # lexical shortcut: let realpath decide.
            parent, name = os.path.split(p)
            if not name or name in (".", ".."):
                return None
            return self._finish(os.path.realpath(parent), name)
        # Without "//" or "/." in the path, only the dir itself or a trailing
        # "/" is not plain (the name is empty then).
        rel = self.plain_rel(p)
        if rel is None:
            return None
        parts = rel.split("/")
        name = parts.pop()
        # The dir itself was resolved at install time; only what is below it
        # can hide a symlink. One lstat per level, realpath only on a link.
        current = self.real_dir
        for part in parts:
            current = current + "/" + part
            try:
                mode = os.lstat(current).st_mode
            except OSError:
                return None  # the real call will fail on the missing parent
            if stat.S_ISLNK(mode):
                return self._finish(os.path.realpath(self.real_dir + "/" + "/".join(parts)), name)
        return self._finish(current, name)

    def _finish(self, real_parent: str, name: str) -> tuple[str, str] | None:
        if real_parent != self.real_dir and not real_parent.startswith(self.real_prefix):
            return None
        full = real_parent + "/" + name
        try:
            if stat.S_ISLNK(os.lstat(full).st_mode):
                self.stats.inc("skipped_symlinks")
                return None
        except OSError:
            pass  # not there yet: a file about to be created
        return full, full[len(self.real_prefix):]

    # -- reading back -------------------------------------------------------------
    def _real_path_of(self, fd: int, path: str) -> str | None:
        """Where the open descriptor really is, if inside the data dir.

        The kernel knows (one readlink of /proc/self/fd/N); without /proc
        (other OSes, pyfakefs) the parent is resolved with lstat/realpath.
        """
        if self._use_proc:
            try:
                real = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                self._use_proc = False
            else:
                return real if real.startswith(self.real_prefix) else None
        loc = self.resolve(path)
        return None if loc is None else loc[0]

    def _open_beneath(self, path: str) -> tuple[int, str] | None:
        """(descriptor, relative path) of the file, reached without any symlink.

        The file is inside by construction (``_beneath``): no /proc lookup.
        None (take the slow path) for an unusual spelling or when a directory
        on the way is a symlink or missing; a symlinked final component
        raises ELOOP as usual.
        """
        rel = self.plain_rel(path)
        if rel is None:
            return None
        fd = self._beneath(rel, lambda name, dir_fd: os.open(name, _READ_FLAGS, dir_fd=dir_fd))
        return None if fd is None else (fd, rel)

    def _beneath(self, rel: str, call: Callable[[str, int | None], Any]) -> Any:
        """``call(name, dir_fd)`` on the last component of ``rel`` (plain, see
        ``plain_rel``) in its directory, reached through no symlink.

        Every directory below the data dir is opened one level at a time with
        ``O_PATH | O_DIRECTORY | O_NOFOLLOW``, which fails on a symlink; the
        data dir itself was resolved at install time. A top-level file gets
        its full path and no descriptor. None when a directory on the way is
        a symlink, missing or not a directory.
        """
        parts = rel.split("/")
        name = parts.pop()
        if not parts:
            return call(self.real_prefix + name, None)
        try:
            dfd = os.open(self.real_prefix + parts[0], _DIR_FLAGS)
        except OSError:
            return None
        try:
            for part in parts[1:]:
                try:
                    sub = os.open(part, _DIR_FLAGS, dir_fd=dfd)
                except OSError:
                    return None
                os.close(dfd)
                dfd = sub
            return call(name, dfd)
        finally:
            os.close(dfd)

    def read_back(self, path: str) -> tuple[str, bytes, int] | None:
        """(relative path, exact bytes, mtime_ns) of a regular file inside the dir."""
        try:
            # os.open is the real one unless a fake file system (pyfakefs)
            # stands in; then the generic way below.
            opened = self._open_beneath(path) if _WALK and os.open is _REAL_OS_OPEN else None
            if opened is None:
                fd, rel = os.open(path, _READ_FLAGS), None
            else:
                fd, rel = opened
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # O_NOFOLLOW: the name is a symlink
                self.stats.inc("skipped_symlinks")
                return None
            raise
        try:
            st = os.fstat(fd)
            # st_nlink 0: removed since; /proc would show "... (deleted)".
            if not stat.S_ISREG(st.st_mode) or st.st_nlink == 0:
                return None
            if rel is None:
                real = self._real_path_of(fd, path)
                if real is None:
                    return None
                rel = real[len(self.real_prefix):]
            size = st.st_size
            # One byte more than expected: a short read of a regular file
            # means EOF, so the usual case is a single read.
            data = os.read(fd, size + 1)
            if len(data) != size:
                # Changed under us (another writer): read to the end. The
                # mtime stays the one taken before reading, never newer than
                # the bytes, so a race can only make the event look older.
                chunks = [data]
                while data:
                    data = os.read(fd, 1 << 20)
                    chunks.append(data)
                data = b"".join(chunks)
            return rel, data, st.st_mtime_ns
        finally:
            os.close(fd)

    def lstat_beneath(self, rel: str) -> os.stat_result | None:
        """lstat of ``rel`` (plain, see ``plain_rel``) reached through no symlink.

        None when a directory on the way is a symlink or missing, or below
        the top level on a file system without ``O_PATH`` walks (pyfakefs);
        OSError when the file itself is missing.
        """
        if "/" in rel and not (_WALK and os.open is _REAL_OS_OPEN):
            return None
        return self._beneath(rel, lambda name, dir_fd: os.stat(name, dir_fd=dir_fd, follow_symlinks=False))
