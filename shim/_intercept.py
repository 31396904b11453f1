"""Interception of file writes under the data dir.

What is patched, and why that is enough:

* ``builtins.open`` and ``io.open``: every ``open()`` call, and, on CPython
  3.11+, ``pathlib.Path.open`` / ``write_text`` / ``write_bytes``, which end
  in ``io.open``.
* ``os.replace`` / ``os.rename`` / ``os.remove`` / ``os.unlink``: atomic
  writers, deletes, and ``Path.replace`` / ``rename`` / ``unlink``, which
  call them.
* ``pathlib.Path.write_text`` / ``write_bytes`` / ``unlink`` / ``rename`` /
  ``replace``, and ``Path.open`` unless it is plain ``io.open`` (CPython's),
  for Path implementations that do not go through ``io``/``os`` (pyfakefs
  does not, a future pathlib might not). A per-thread counter tells the outer
  (pathlib) wrapper whether an inner (io/os) wrapper already took the call,
  so each write is reported once.

Costs (the Mentorix write is ``Path.write_text``, so that path is the tuned
one): a read-mode ``open`` pays one Python call and a few ``in`` tests on the
mode string. A write outside the data dir pays a string prefix test (plus a
``getcwd`` for a relative path). ``write_text``/``write_bytes`` inside the dir
report right after the call returns (the file is closed by then): the inner
``io.open`` wrapper sees a per-thread marker and hands back the bare file, so
write and close stay in C; in async mode the event then carries the call's own
data and the sender thread finishes it (``Reporter.report_written``/``settle``),
so the API thread only queues it. Other writes spelled inside the dir get a
thin proxy that reports at close. Reading back opens every directory below the
data dir with ``O_NOFOLLOW | O_DIRECTORY`` and the file with ``O_NOFOLLOW``:
no symlink is followed, so the descriptor is inside by construction (one
extra ``open`` per directory level, none for a top-level file). A spelling
with ``.``/``..``/``//``, or a symlinked directory on the way, takes the
general route: open by path, ask the kernel where the descriptor is
(``/proc/self/fd/N``), and without /proc resolve the parent with ``lstat``
per component and ``realpath`` on a symlink. Deletes and moves are decided on
the path the same way, before (remove) or after (move) the call.

This module holds the wrappers and patch/unpatch; the rest of the shim, by
subject: ``_report.py`` (building, dropping and delivering events, the sync
policy), ``_datadir.py`` (where a path is, reading a file back), ``_proxy.py``
(the file proxy), ``_codecs.py`` (a call's bytes without a read-back),
``_events.py`` (counters, events), ``_transport.py`` and ``_protocol.py`` (the
socket and the wire format), ``_breaker.py``, ``_ignore.py``, ``_config.py``.

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
import io
import logging
import os
import pathlib
import stat
from typing import Any, Callable

from ._codecs import _UNTRANSLATED, _codec_of, _plain_codec, _text_args
from ._config import ShimConfig
from ._events import Event, Stats, _bump, _mark, _tls
from ._proxy import FileProxy, _proxy_for
from ._report import Reporter

log = logging.getLogger("mentorix_shim")

# Every wrapper carries this attribute: install() in another copy of the
# package (e.g. loaded both by sitecustomize and by a plain import) sees it
# and does not patch a second time.
MARK = "__mentorix_shim__"


def _is_write_mode(mode: Any) -> bool:
    return mode.__class__ is str and ("w" in mode or "a" in mode or "x" in mode or "+" in mode)


def _has_opener(args: tuple, kwargs: dict) -> bool:
    # io.open(file, mode, buffering, encoding, errors, newline, closefd, opener)
    return kwargs.get("opener") is not None or (len(args) >= 6 and args[5] is not None)


# ---------------------------------------------------------------------------
# the installed shim
# ---------------------------------------------------------------------------
class Shim(Reporter):
    def __init__(self, config: ShimConfig, transport: Any, stats: Stats) -> None:
        super().__init__(config, transport, stats)
        self._patches: list[tuple[Any, str, bool, Any, Any]] = []
        # (CPython's Path.open, our io.open wrapper) when write_text/write_bytes
        # can take the short route (_write_direct); set by patch().
        self._direct: tuple[Any, Any] | None = None
        self._real_open: Any = None

    # -- wrappers ---------------------------------------------------------------------
    def _safe_locate(self, file: Any) -> tuple[str, str] | None:
        if not self.active:
            return None
        try:
            return self.dir.locate(file)
        except Exception:
            # e.g. a path with a NUL byte: the real call raises its own error.
            self.stats.inc("errors")
            return None

    def _safe_candidate(self, file: Any) -> str | None:
        if not self.active:
            return None
        try:
            return self.dir.candidate(file)
        except Exception:
            self.stats.inc("errors")
            return None

    def _wrap_file(self, f: Any, path: str) -> Any:
        try:
            return _proxy_for(f, path, self)
        except Exception:
            self.stats.inc("errors")
            return f

    def make_open(self, orig: Callable[..., Any]) -> Callable[..., Any]:
        shim = self

        def open(file: Any, mode: Any = "r", *args: Any, **kwargs: Any) -> Any:  # noqa: A001
            if mode.__class__ is not str or ("w" not in mode and "a" not in mode and "x" not in mode and "+" not in mode):
                return orig(file, mode, *args, **kwargs)
            tls = _tls
            tls.n = getattr(tls, "n", 0) + 1  # _bump(), inlined: this is the hot path
            defer = getattr(tls, "defer", None)
            if defer is not None and file is defer[1]:
                # The file of a Path.write_text/write_bytes call in progress
                # (CPython passes the Path itself): that wrapper has already
                # decided inside/outside and, inside, reports once the call
                # returns, so no proxy is needed and write/close stay in C.
                if defer[2]:
                    defer[0] = True
                return orig(file, mode, *args, **kwargs)
            path = None if _has_opener(args, kwargs) else shim._safe_candidate(file)
            f = orig(file, mode, *args, **kwargs)
            return f if path is None else shim._wrap_file(f, path)

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
            dst_path = self.dir.candidate(dst)
            src_loc = self.dir.locate(src)
            moved_file = False
            if src_loc is not None or dst_path is not None:
                moved_file = stat.S_ISREG(os.lstat(dst).st_mode)
        except Exception:
            self.stats.inc("errors")
            return
        if not moved_file:
            return  # a directory or a symlink: the watcher sees what is below
        if dst_path is not None:
            self.report_write(dst_path)
        if src_loc is not None and (dst_path is None or self.dir.locate(dst_path) != src_loc):
            self.report_delete(src_loc)

    def make_remove(self, orig: Callable[..., Any]) -> Callable[..., Any]:
        shim = self

        def remove(path: Any, *args: Any, **kwargs: Any) -> Any:
            if args or any(v is not None for v in kwargs.values()):
                return orig(path, *args, **kwargs)
            _bump()
            loc = shim._safe_locate(path)  # before: is the thing a symlink?
            result = orig(path, *args, **kwargs)
            if loc is not None:
                shim.report_delete(loc)
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
            defer = getattr(_tls, "defer", None)
            if defer is not None and self_ is defer[1]:  # reported by write_text/write_bytes
                if defer[2]:
                    defer[0] = True
                return f
            path = shim._safe_candidate(self_)
            return f if path is None else shim._wrap_file(f, path)

        return _decorate(path_open, orig)

    def make_path_write(self, orig: Callable[..., Any]) -> Callable[..., Any]:
        shim = self
        text = getattr(orig, "__name__", "") != "write_bytes"
        direct = self._direct

        def path_write(self_: Any, data: Any, *args: Any, **kwargs: Any) -> Any:
            if direct is not None and self_.__class__.open is direct[0] and io.open is direct[1]:
                # CPython's own pathlib (Path.open is io.open) and our io.open
                # wrapper still in place: take the short route when it applies.
                done = shim._write_direct(self_, text, data, args, kwargs)
                if done is not None:
                    return done[0]
            # The whole open-write-close happens inside this call. The inner
            # open wrapper (CPython's pathlib goes through io.open) recognises
            # the Path in ``defer`` and, instead of deciding again or proxying
            # the file, passes it through (outside) or leaves the report to
            # this wrapper, after the call (inside; the file is closed then).
            path = shim._safe_candidate(self_)
            tls = _tls
            outer = getattr(tls, "defer", None)
            defer = tls.defer = [False, self_, path is not None]
            if path is None:
                try:
                    return orig(self_, data, *args, **kwargs)
                finally:
                    tls.defer = outer
            before = getattr(tls, "n", 0)
            try:
                result = orig(self_, data, *args, **kwargs)
            except BaseException:
                tls.defer = outer
                if defer[0]:  # the file was opened (and truncated): report what is there
                    shim.report_write(path, suppress=True)
                raise
            tls.defer = outer
            # Not deferred to us: either no inner wrapper saw an open (another
            # Path implementation: report here), or one proxied the file
            # itself (it reports at close).
            if defer[0] or getattr(tls, "n", 0) == before:
                # In async mode the call's own bytes are what the file holds
                # (checked by size, and by the daemon against the file): no
                # read-back, the dearest part of reporting.
                if shim.sync and not shim.breaker.skips():
                    shim.report_write(path)
                else:  # async, or a sync write that would not wait (breaker open)
                    shim.report_written(path, text, data, args, kwargs)
            return result

        return _decorate(path_write, orig)

    def _write_direct(self, path_obj: Any, text: bool, data: Any, args: tuple, kwargs: dict) -> tuple[Any] | None:
        """``write_text``/``write_bytes`` of CPython's pathlib, done here: (result,).

        CPython's versions are "type check, then ``with self.open(...) as f:
        return f.write(data)``", and ``Path.open`` is ``io.open(self, ...)``;
        this opens with the original ``io.open`` itself, so the call skips
        three Python layers (write_text, Path.open, our io.open wrapper and
        its per-thread bookkeeping). Inside the dir (async mode, bytes known
        for certain) it then queues the event with the call's own data;
        outside it only writes. It is what the API thread runs for every
        Mentorix write, and on a mostly idle API each layer is paid with cold
        caches. None: not applicable (the default encoding, whose resolution
        may warn; sync mode or bytes not certain inside the dir; an unusual
        spelling): the caller takes the general route.
        """
        # Every Python call here is a cold frame on an idle API: the common
        # shapes are spelled inline (77cd55d, a write every 20 ms, API thread
        # only: 1.21-1.22x -> 1.12-1.16x over no shim): DataDir.candidate's
        # prefix test, DataDir.plain_rel (the prefix strip and plain-spelling
        # test; test_real_fs_the_short_route_and_plain_rel_agree keeps the two
        # in step), _known_codec, and Reporter._queue_written's async branch.
        try:
            if text:
                if data.__class__ is not str:
                    return None
                if not args and len(kwargs) == 1 and "encoding" in kwargs:  # write_text(s, encoding=...)
                    targs = (kwargs["encoding"], None, None)
                else:
                    targs = _text_args(args, kwargs)  # type: ignore[assignment]
                    if targs is None:
                        return None
                if targs[0] is None:
                    return None
            elif data.__class__ is not bytes or args or kwargs:
                return None
            p = None
            if self.active:
                # a Path caches its str form (what os.fspath returns)
                p = getattr(path_obj, "_str", None)
                if p.__class__ is not str or not p.startswith(self.prefixes):
                    p = self.dir.candidate(path_obj)
            if p is not None:
                if self.sync and not self.breaker.skips():
                    return None
                for prefix in self.prefixes:
                    if p.startswith(prefix):
                        rel = p[len(prefix):]
                        break
                else:  # pragma: no cover - candidate() checked the prefix
                    return None
                if not rel or rel[-1] == "/" or "//" in rel or "/." in rel or rel[0] == ".":
                    return None  # an unusual spelling: the general route resolves it
                codec = None
                if text:
                    if targs[1] not in (None, "strict") or targs[2] not in _UNTRANSLATED:
                        return None
                    codec = _codec_of.get(targs[0], False)
                    if codec is False:
                        codec = _plain_codec(targs[0])
                    if codec is None:
                        return None
        except Exception:
            self.stats.inc("errors")
            return None
        f = self._real_open(path_obj, "w", -1, *targs) if text else self._real_open(path_obj, "wb")
        if p is None:  # outside the dir: nothing to report
            with f:
                return (f.write(data),)
        try:
            with f:
                result = f.write(data)
        except BaseException:
            # Opened (so truncated): report what is there, as the general route does.
            self.report_write(p, suppress=True)
            raise
        try:
            if self.ignored(rel):
                self.stats.inc("ignored")
                return (result,)
            if not self.sync:  # the hot path: inline, no further call
                if not self._ready():
                    self.stats.inc("dropped_unavailable")
                else:
                    self.transport.deliver(Event("write", rel, data, None, self, codec), False)
                return (result,)
        except Exception:
            self.stats.inc("errors")
            return (result,)
        self._queue_written(p, rel, data, codec)  # sync with the breaker open: does not wait
        return (result,)

    def make_path_unlink(self, orig: Callable[..., Any]) -> Callable[..., Any]:
        shim = self

        def path_unlink(self_: Any, *args: Any, **kwargs: Any) -> Any:
            before = _mark()
            loc = shim._safe_locate(self_)
            result = orig(self_, *args, **kwargs)
            if _mark() == before and loc is not None:
                shim.report_delete(loc)
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
            self._real_open = io.open
            self._patch(builtins, "open", self.make_open)
            self._patch(io, "open", self.make_open)
            self._patch(os, "replace", self.make_move)
            self._patch(os, "rename", self.make_move)
            self._patch(os, "remove", self.make_remove)
            self._patch(os, "unlink", self.make_remove)
            path_cls = pathlib.Path
            # CPython's Path.open is io.open(self, ...): the io wrapper above
            # already sees it, and every Path.open would pay a second wrapper
            # for nothing. Other implementations (pyfakefs, a future pathlib)
            # get the pathlib wrapper.
            path_open = getattr(path_cls, "open", None)
            if _calls(path_open, "io", io, "open"):
                # Path.write_text/write_bytes may then open with io.open's
                # original themselves (_write_direct).
                self._direct = (path_open, io.open)
            else:
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


def _calls(func: Any, module_name: str, module: Any, attr: str) -> bool:
    """True if ``func`` is plain Python code calling ``module_name.attr`` on ``module``.

    Used to skip wrappers that would only duplicate an inner one; any doubt
    (a C function, another module object behind the name) answers False.
    """
    code = getattr(func, "__code__", None)
    globals_ = getattr(func, "__globals__", None)
    if code is None or not isinstance(globals_, dict):
        return False
    return globals_.get(module_name) is module and module_name in code.co_names and attr in code.co_names


def _decorate(wrapper: Callable[..., Any], orig: Callable[..., Any]) -> Callable[..., Any]:
    # Not functools.wraps: copying __module__ from io/os would make tools
    # that match functions by module (pyfakefs does) mistake ours for theirs.
    wrapper.__name__ = getattr(orig, "__name__", wrapper.__name__)
    wrapper.__qualname__ = getattr(orig, "__qualname__", wrapper.__qualname__)
    wrapper.__doc__ = getattr(orig, "__doc__", None)
    wrapper.__wrapped__ = orig  # type: ignore[attr-defined]
    setattr(wrapper, MARK, True)
    return wrapper
