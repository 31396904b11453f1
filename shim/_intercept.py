"""Interception of file writes under the data dir.

What is patched, and why that is enough:

* ``builtins.open`` and ``io.open``: every ``open()`` call, and, on CPython
  3.11+, ``pathlib.Path.open`` / ``write_text`` / ``write_bytes``, which end
  in ``io.open``.
* ``os.replace`` / ``os.rename`` / ``os.remove`` / ``os.unlink``: atomic
  writers, deletes, and ``Path.replace`` / ``rename`` / ``unlink``, which
  call them.
* ``pathlib.Path.open`` / ``write_text`` / ``write_bytes`` / ``unlink`` /
  ``rename`` / ``replace`` as well, for Path implementations that do not go
  through ``io``/``os`` (pyfakefs does not, a future pathlib might not). A
  per-thread counter tells the outer (pathlib) wrapper whether an inner
  (io/os) wrapper already took the call, so each write is reported once.

Costs: a read-mode ``open`` pays one Python call and a few ``in`` tests on the
mode string. A write outside the data dir pays a string prefix test (plus a
``getcwd`` for relative paths). Only writes whose path starts with the data
dir are resolved, and then only the components below the data dir are
``lstat``-ed unless a symlink or a ``..`` forces a full ``realpath``.

Deliberately not seen (the sidecar's watcher covers all of them): integer
file descriptors given to ``open``; ``open(..., opener=...)`` and the
``dir_fd`` forms of the ``os`` calls (the path is relative to a descriptor we
cannot map cheaply); raw ``os.open``/``os.write``; ``Path.touch``;
``shutil.rmtree`` (uses ``dir_fd``); spellings of an absolute path that reach
the dir through a symlink outside it; files whose final component is a
symlink (never followed, by design).
"""

from __future__ import annotations

import builtins
import errno
import hashlib
import io
import itertools
import logging
import os
import pathlib
import stat
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from ._config import ShimConfig

log = logging.getLogger("mentorix_shim")

# Every wrapper carries this attribute: install() in another copy of the
# package (e.g. loaded both by sitecustomize and by a plain import) sees it
# and does not patch a second time.
MARK = "__mentorix_shim__"
WARN_INTERVAL_S = 30.0

COUNTERS = (
    "writes",  # write events built (after read-back)
    "deletes",  # delete events built
    "skipped_symlinks",  # writes/deletes not reported: final component is a symlink
    "sent",  # async frames written to the socket
    "dropped_queue_full",
    "dropped_unavailable",
    "sync_ok",
    "sync_failed",
    "errors",  # exceptions in the shim's own machinery (swallowed)
    "connect_attempts",
    "connect_failures",
    "send_failures",
)


class Stats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(COUNTERS, 0)

    def inc(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] = self._counts.get(name, 0) + n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def after_fork(self) -> None:
        # Another thread may have held the lock at fork time.
        self._lock = threading.Lock()


@dataclass(frozen=True, slots=True)
class Event:
    op: str  # "write" | "delete"
    path: str  # posix, relative to the resolved data dir
    data: bytes | None
    sha256: str | None
    mtime_ns: int | None
    seq: int
    pid: int

    def __repr__(self) -> str:  # never show file contents
        size = None if self.data is None else len(self.data)
        return f"Event(op={self.op!r}, path={self.path!r}, size={size}, seq={self.seq}, pid={self.pid})"


_seq = itertools.count(1)  # per process; next() on a count is atomic in CPython
_tls = threading.local()


def _bump() -> None:
    _tls.n = getattr(_tls, "n", 0) + 1


def _mark() -> int:
    return getattr(_tls, "n", 0)


def _is_write_mode(mode: Any) -> bool:
    return mode.__class__ is str and ("w" in mode or "a" in mode or "x" in mode or "+" in mode)


def _has_opener(args: tuple, kwargs: dict) -> bool:
    # io.open(file, mode, buffering, encoding, errors, newline, closefd, opener)
    return kwargs.get("opener") is not None or (len(args) >= 6 and args[5] is not None)


_READ_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


# ---------------------------------------------------------------------------
# file object proxy
# ---------------------------------------------------------------------------
class FileProxy:
    """Delegates everything to the real file object; reports once at close."""

    __slots__ = ("_shim_f", "_shim_loc", "_shim_owner", "_shim_done", "__weakref__")

    def __init__(self, f: Any, loc: tuple[str, str], owner: "Shim") -> None:
        object.__setattr__(self, "_shim_f", f)
        object.__setattr__(self, "_shim_loc", loc)
        object.__setattr__(self, "_shim_owner", owner)
        object.__setattr__(self, "_shim_done", False)

    # -- the hook ------------------------------------------------------------
    def _shim_finish(self, suppress: bool) -> None:
        if self._shim_done:
            return
        object.__setattr__(self, "_shim_done", True)
        self._shim_owner.emit("write", self._shim_loc, suppress=suppress)

    def close(self) -> None:
        try:
            self._shim_f.close()
        except BaseException:
            # The API sees the close failure itself; what reached the disk is
            # the watcher's business, not something to confirm.
            object.__setattr__(self, "_shim_done", True)
            raise
        self._shim_finish(False)

    def __enter__(self) -> "FileProxy":
        self._shim_f.__enter__()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> Any:
        try:
            result = self._shim_f.__exit__(exc_type, exc, tb)
        except BaseException:
            object.__setattr__(self, "_shim_done", True)
            raise
        # With an exception already on its way out, do not replace it by a
        # "not durable" error: the API is failing anyway.
        self._shim_finish(exc_type is not None)
        return result

    def __del__(self) -> None:
        try:
            if not self._shim_done:
                self._shim_f.close()
                self._shim_finish(True)
        except BaseException:
            pass

    # -- plain delegation (explicit for the hot methods) ---------------------
    def write(self, data: Any) -> Any:
        return self._shim_f.write(data)

    def writelines(self, lines: Any) -> None:
        return self._shim_f.writelines(lines)

    def flush(self) -> None:
        return self._shim_f.flush()

    def read(self, *args: Any) -> Any:
        return self._shim_f.read(*args)

    def readline(self, *args: Any) -> Any:
        return self._shim_f.readline(*args)

    def readlines(self, *args: Any) -> Any:
        return self._shim_f.readlines(*args)

    def seek(self, *args: Any) -> int:
        return self._shim_f.seek(*args)

    def tell(self) -> int:
        return self._shim_f.tell()

    def truncate(self, *args: Any) -> int:
        return self._shim_f.truncate(*args)

    def fileno(self) -> int:
        return self._shim_f.fileno()

    def __iter__(self) -> "FileProxy":
        iter(self._shim_f)  # raises on a closed file, like the original
        return self

    def __next__(self) -> Any:
        return next(self._shim_f)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._shim_f, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._shim_f, name, value)

    def __delattr__(self, name: str) -> None:
        delattr(self._shim_f, name)

    def __repr__(self) -> str:
        return repr(self._shim_f)

    def __dir__(self) -> list[str]:
        return dir(self._shim_f)


# isinstance(f, io.TextIOBase) etc. keep working for code that checks.
class TextFileProxy(FileProxy):
    __slots__ = ()


class BufferedFileProxy(FileProxy):
    __slots__ = ()


class RawFileProxy(FileProxy):
    __slots__ = ()


io.TextIOBase.register(TextFileProxy)
io.BufferedIOBase.register(BufferedFileProxy)
io.RawIOBase.register(RawFileProxy)


def _proxy_for(f: Any, loc: tuple[str, str], owner: "Shim") -> FileProxy:
    if isinstance(f, io.TextIOBase):
        return TextFileProxy(f, loc, owner)
    if isinstance(f, io.BufferedIOBase):
        return BufferedFileProxy(f, loc, owner)
    if isinstance(f, io.RawIOBase):
        return RawFileProxy(f, loc, owner)
    return FileProxy(f, loc, owner)


# ---------------------------------------------------------------------------
# the installed shim
# ---------------------------------------------------------------------------
class Shim:
    def __init__(self, config: ShimConfig, transport: Any, stats: Stats) -> None:
        self.config = config
        self.transport = transport
        self.stats = stats
        self.sync = config.mode == "sync"
        self.closed_on_failure = config.on_failure == "closed"
        self.active = False
        self.real_dir = config.data_dir
        self.real_prefix = config.data_dir + "/"
        # str.startswith takes a tuple: one C call checks both spellings.
        self.prefixes = tuple(dict.fromkeys((self.real_prefix, config.data_dir_abs + "/")))
        self._ready: Callable[[], bool] = getattr(transport, "ready", None) or (lambda: True)
        self._patches: list[tuple[Any, str, bool, Any, Any]] = []
        self._last_warning = float("-inf")
        self._warn_lock = threading.Lock()

    # -- where is a path -------------------------------------------------------
    def locate(self, file: Any) -> tuple[str, str] | None:
        """(resolved path, posix path relative to the data dir) or None.

        None for anything not a plain path inside the data dir, for a final
        component that is a symlink, and for the data dir itself.
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
        if not p.startswith(self.prefixes):
            # Only odd spellings ("//", "/./", "/../") deserve a second look.
            if "//" not in p and "/." not in p:
                return None
            if not os.path.normpath(p).startswith(self.prefixes):
                return None
        return self._resolve(p)

    def _resolve(self, p: str) -> tuple[str, str] | None:
        if "//" in p or "/." in p:
            # ".." must be resolved after symlinks, as the kernel does, so no
            # lexical shortcut: let realpath decide.
            parent, name = os.path.split(p)
            if not name or name in (".", ".."):
                return None
            return self._finish(os.path.realpath(parent), name)
        for prefix in self.prefixes:
            if p.startswith(prefix):
                rest = p[len(prefix):]
                break
        else:  # pragma: no cover - locate() checked the prefix
            return None
        parts = rest.split("/")
        name = parts.pop()
        if not name:
            return None
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
    @staticmethod
    def _snapshot(full: str) -> tuple[bytes, int] | None:
        """The file's bytes and the mtime_ns they belong to; None if not a regular file."""
        fd = os.open(full, _READ_FLAGS)
        try:
            for _attempt in range(3):
                before = os.fstat(fd)
                if not stat.S_ISREG(before.st_mode):
                    return None
                os.lseek(fd, 0, os.SEEK_SET)
                chunks = []
                # Until EOF, not until st_size: the file may have grown.
                want = before.st_size + 1
                while True:
                    chunk = os.read(fd, want)
                    if not chunk:
                        break
                    chunks.append(chunk)
                    want = 65536
                data = b"".join(chunks)
                after = os.fstat(fd)
                # A concurrent writer changed the file under us: read again.
                # The mtime taken before the read is never newer than the
                # bytes, so a race can only make an event look older.
                if after.st_mtime_ns == before.st_mtime_ns and after.st_size == len(data):
                    break
            return data, before.st_mtime_ns
        finally:
            os.close(fd)

    # -- reporting ---------------------------------------------------------------
    def emit(self, op: str, loc: tuple[str, str], suppress: bool = False) -> None:
        """Report one write or delete that already happened on disk."""
        if not self.active:
            return
        sync = self.sync
        full, rel = loc
        try:
            if not sync and not self._ready():
                self.stats.inc("dropped_unavailable")
                return
            rel.encode("utf-8")  # the protocol is JSON: undecodable names stay with the watcher
            if op == "write":
                snap = self._snapshot(full)
                if snap is None:
                    return
                data, mtime_ns = snap
                event = Event("write", rel, data, hashlib.sha256(data).hexdigest(), mtime_ns, next(_seq), os.getpid())
                self.stats.inc("writes")
            else:
                event = Event("delete", rel, None, None, None, next(_seq), os.getpid())
                self.stats.inc("deletes")
        except Exception as exc:
            self.stats.inc("errors")
            if sync:
                self._sync_failed(op, full, rel, f"could not read the file back ({type(exc).__name__})", suppress)
            return
        if not sync:
            try:
                self.transport.deliver(event, False)
            except Exception:
                self.stats.inc("errors")
            return
        try:
            self.transport.deliver(event, True)
        except Exception as exc:
            self.stats.inc("sync_failed")
            self._sync_failed(op, full, rel, str(exc) or type(exc).__name__, suppress)
            return
        self.stats.inc("sync_ok")

    def _sync_failed(self, op: str, full: str, rel: str, reason: str, suppress: bool) -> None:
        if self.closed_on_failure and not suppress:
            what = "write" if op == "write" else "delete"
            raise OSError(
                errno.EIO,
                f"mentorix shim: the {what} of {rel!r} reached the disk but was not confirmed "
                f"durable in MongoDB ({reason}); SIDECAR_SHIM_ON_FAILURE=closed",
                full,
            )
        now = time.monotonic()
        with self._warn_lock:
            if now - self._last_warning < WARN_INTERVAL_S:
                return
            self._last_warning = now
        # Path and reason only: never file contents.
        log.warning(
            "sidecar did not confirm the %s of %r (%s); continuing because "
            "SIDECAR_SHIM_ON_FAILURE=open (further warnings suppressed for %ds)",
            op,
            rel,
            reason,
            int(WARN_INTERVAL_S),
        )

    # -- wrappers ---------------------------------------------------------------------
    def _safe_locate(self, file: Any) -> tuple[str, str] | None:
        if not self.active:
            return None
        try:
            return self.locate(file)
        except Exception:
            # e.g. a path with a NUL byte: the real call raises its own error.
            self.stats.inc("errors")
            return None

    def _wrap_file(self, f: Any, loc: tuple[str, str]) -> Any:
        try:
            return _proxy_for(f, loc, self)
        except Exception:
            self.stats.inc("errors")
            return f

    def make_open(self, orig: Callable[..., Any]) -> Callable[..., Any]:
        shim = self

        def open(file: Any, mode: Any = "r", *args: Any, **kwargs: Any) -> Any:  # noqa: A001
            if mode.__class__ is not str or ("w" not in mode and "a" not in mode and "x" not in mode and "+" not in mode):
                return orig(file, mode, *args, **kwargs)
            _bump()
            loc = None if _has_opener(args, kwargs) else shim._safe_locate(file)
            f = orig(file, mode, *args, **kwargs)
            return f if loc is None else shim._wrap_file(f, loc)

        return _decorate(open, orig)

    def make_move(self, orig: Callable[..., Any]) -> Callable[..., Any]:
        shim = self

        def move(src: Any, dst: Any, *args: Any, **kwargs: Any) -> Any:
            if args or any(v is not None for v in kwargs.values()):
                return orig(src, dst, *args, **kwargs)  # dir_fd forms: not mappable
            _bump()
            result = orig(src, dst, *args, **kwargs)
            shim._after_move(src, dst)
            return result

        return _decorate(move, orig)

    def _after_move(self, src: Any, dst: Any) -> None:
        if not self.active:
            return
        try:
            dst_loc = self.locate(dst)
            src_loc = self.locate(src)
            moved_file = False
            if src_loc is not None or dst_loc is not None:
                moved_file = stat.S_ISREG(os.lstat(dst).st_mode)
        except Exception:
            self.stats.inc("errors")
            return
        if not moved_file:
            return  # a directory or a symlink: the watcher sees what is below
        if dst_loc is not None:
            self.emit("write", dst_loc)
        if src_loc is not None and src_loc != dst_loc:
            self.emit("delete", src_loc)

    def make_remove(self, orig: Callable[..., Any]) -> Callable[..., Any]:
        shim = self

        def remove(path: Any, *args: Any, **kwargs: Any) -> Any:
            if args or any(v is not None for v in kwargs.values()):
                return orig(path, *args, **kwargs)
            _bump()
            loc = shim._safe_locate(path)  # before: is the thing a symlink?
            result = orig(path, *args, **kwargs)
            if loc is not None:
                shim.emit("delete", loc)
            return result

        return _decorate(remove, orig)

    # pathlib (outer) wrappers: report only if no inner wrapper took the call.
    def make_path_open(self, orig: Callable[..., Any]) -> Callable[..., Any]:
        shim = self

        def path_open(self_: Any, mode: Any = "r", *args: Any, **kwargs: Any) -> Any:
            if not _is_write_mode(mode):
                return orig(self_, mode, *args, **kwargs)
            before = _mark()
            f = orig(self_, mode, *args, **kwargs)
            if isinstance(f, FileProxy) or _mark() != before:
                return f
            loc = shim._safe_locate(self_)
            return f if loc is None else shim._wrap_file(f, loc)

        return _decorate(path_open, orig)

    def make_path_write(self, orig: Callable[..., Any]) -> Callable[..., Any]:
        shim = self

        def path_write(self_: Any, data: Any, *args: Any, **kwargs: Any) -> Any:
            before = _mark()
            result = orig(self_, data, *args, **kwargs)
            if _mark() == before:
                loc = shim._safe_locate(self_)
                if loc is not None:
                    shim.emit("write", loc)
            return result

        return _decorate(path_write, orig)

    def make_path_unlink(self, orig: Callable[..., Any]) -> Callable[..., Any]:
        shim = self

        def path_unlink(self_: Any, *args: Any, **kwargs: Any) -> Any:
            before = _mark()
            loc = shim._safe_locate(self_)
            result = orig(self_, *args, **kwargs)
            if _mark() == before and loc is not None:
                shim.emit("delete", loc)
            return result

        return _decorate(path_unlink, orig)

    def make_path_move(self, orig: Callable[..., Any]) -> Callable[..., Any]:
        shim = self

        def path_move(self_: Any, target: Any, *args: Any, **kwargs: Any) -> Any:
            before = _mark()
            result = orig(self_, target, *args, **kwargs)
            if _mark() == before:
                shim._after_move(self_, target)
            return result

        return _decorate(path_move, orig)

    # -- patching ---------------------------------------------------------------------
    def _patch(self, target: Any, name: str, factory: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
        try:
            own = name in vars(target)
        except TypeError:  # an object without __dict__
            own = True
        original = getattr(target, name)
        replacement = factory(original)
        setattr(target, name, replacement)
        self._patches.append((target, name, own, original, replacement))

    def patch(self) -> None:
        """Patch the modules *this* module sees as os/io/pathlib.

        In production those are the real modules. Under pyfakefs they are
        its fake module objects (shared with the test code), so the shim
        composes with the fake file system instead of bypassing it.
        """
        try:
            # Both, even though they are one object in CPython: pathlib and
            # code doing `import io` look the name up on io.
            self._patch(builtins, "open", self.make_open)
            self._patch(io, "open", self.make_open)
            self._patch(os, "replace", self.make_move)
            self._patch(os, "rename", self.make_move)
            self._patch(os, "remove", self.make_remove)
            self._patch(os, "unlink", self.make_remove)
            path_cls = pathlib.Path
            self._patch(path_cls, "open", self.make_path_open)
            self._patch(path_cls, "write_text", self.make_path_write)
            self._patch(path_cls, "write_bytes", self.make_path_write)
            self._patch(path_cls, "unlink", self.make_path_unlink)
            self._patch(path_cls, "rename", self.make_path_move)
            self._patch(path_cls, "replace", self.make_path_move)
        except BaseException:
            self.unpatch()
            raise
        self.active = True

    def unpatch(self) -> None:
        self.active = False
        while self._patches:
            target, name, own, original, replacement = self._patches.pop()
            try:
                current = getattr(target, name, None)
                if current is not replacement:
                    # Someone patched over us; restoring would undo their work.
                    log.debug("not restoring %s.%s: replaced by someone else", target, name)
                    continue
                if own:
                    setattr(target, name, original)
                else:
                    delattr(target, name)
            except Exception:
                self.stats.inc("errors")


def _decorate(wrapper: Callable[..., Any], orig: Callable[..., Any]) -> Callable[..., Any]:
    # Not functools.wraps: copying __module__ from io/os would make tools
    # that match functions by module (pyfakefs does) mistake ours for theirs.
    wrapper.__name__ = getattr(orig, "__name__", wrapper.__name__)
    wrapper.__qualname__ = getattr(orig, "__qualname__", wrapper.__qualname__)
    wrapper.__doc__ = getattr(orig, "__doc__", None)
    wrapper.__wrapped__ = orig  # type: ignore[attr-defined]
    setattr(wrapper, MARK, True)
    return wrapper
