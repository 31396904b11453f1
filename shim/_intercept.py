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
data and the sender thread finishes it (``Shim.report_written``/``settle``), so
the API thread only queues it. Other writes spelled inside the dir get a thin
proxy that reports at close. Reading back opens every directory below the
data dir with ``O_NOFOLLOW | O_DIRECTORY`` and the file with ``O_NOFOLLOW``:
no symlink is followed, so the descriptor is inside by construction (one
extra ``open`` per directory level, none for a top-level file). A spelling
with ``.``/``..``/``//``, or a symlinked directory on the way, takes the
general route: open by path, ask the kernel where the descriptor is
(``/proc/self/fd/N``), and without /proc resolve the parent with ``lstat``
per component and ``realpath`` on a symlink. Deletes and moves are decided on
the path the same way, before (remove) or after (move) the call.

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
import io
import logging
import os
import pathlib
import stat
import threading
import time
from typing import Any, Callable

from ._breaker import Breaker
from ._codecs import _UNTRANSLATED, _codec_of, _known_payload, _plain_codec, _text_args
from ._config import ShimConfig
from ._datadir import DataDir
from ._events import Event, Stats, _bump, _mark, _tls
from ._ignore import rules_for
from ._protocol import REPORT_FORMAT
from ._proxy import FileProxy, _proxy_for

log = logging.getLogger("mentorix_shim")

# Every wrapper carries this attribute: install() in another copy of the
# package (e.g. loaded both by sitecustomize and by a plain import) sees it
# and does not patch a second time.
MARK = "__mentorix_shim__"
WARN_INTERVAL_S = 30.0
_BREAKER_OPEN = "circuit breaker open: the sidecar could not confirm a recent write"

def _is_write_mode(mode: Any) -> bool:
    return mode.__class__ is str and ("w" in mode or "a" in mode or "x" in mode or "+" in mode)


def _has_opener(args: tuple, kwargs: dict) -> bool:
    # io.open(file, mode, buffering, encoding, errors, newline, closefd, opener)
    return kwargs.get("opener") is not None or (len(args) >= 6 and args[5] is not None)


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
        self.breaker = Breaker(config.breaker_s)
        stats.breaker = self.breaker  # its openings are the "breaker_opened" counter
        self.active = False
        self.dir = DataDir(config, stats)
        self.prefixes = self.dir.prefixes  # read on every write spelled inside (_write_direct)
        self._ready: Callable[[], bool] = getattr(transport, "ready", None) or (lambda: True)
        # rel -> ignored? (the sidecar's own rules: built-in globs + SIDECAR_IGNORE)
        self.ignored = rules_for(config.ignore)
        self._patches: list[tuple[Any, str, bool, Any, Any]] = []
        # (CPython's Path.open, our io.open wrapper) when write_text/write_bytes
        # can take the short route (_write_direct); set by patch().
        self._direct: tuple[Any, Any] | None = None
        self._real_open: Any = None
        self._last_warning = float("-inf")
        self._warn_lock = threading.Lock()

    # -- reporting ---------------------------------------------------------------
    def report_write(self, path: str, suppress: bool = False) -> None:
        """Report the file at ``path`` (spelled inside the dir) as written."""
        if not self.active:
            return
        sync = self.sync
        try:
            # Ignored paths (an atomic writer's temp file, an editor's swap file,
            # SIDECAR_IGNORE) are never sent, nor even read back when the
            # spelling already says so; the resolved name is checked again below.
            lexical = self.dir.plain_rel(path)
            if lexical is not None and self.ignored(lexical):
                self.stats.inc("ignored")
                return
            if self._away():
                event = None
            else:
                snap = self.dir.read_back(path)
                if snap is None:
                    return
                rel, data, mtime_ns = snap
                if self.ignored(rel):
                    self.stats.inc("ignored")
                    return
                rel.encode("utf-8")  # the protocol is JSON: undecodable names stay with the watcher
                event = Event("write", rel, data, mtime_ns)
                self.stats.inc("writes")
        except Exception as exc:
            self.stats.inc("errors")
            if sync:
                self._sync_failed("write", path, path, f"could not read the file back ({type(exc).__name__})", suppress)
            return
        if event is None:  # no read-back, no event
            self._dropped("write", path, path, suppress)
            return
        self._deliver(event, path, suppress)

    def report_written(self, path: str, text: bool, data: Any, args: tuple, kwargs: dict) -> None:
        """Async report of ``path`` just written whole by a ``write_text`` /
        ``write_bytes`` call that returned: no read-back on the API thread.

        The event carries the call's own data (a reference: the API's str,
        not a copy); the sender thread encodes it and looks at the file for
        its mtime, without following symlinks (``settle``). Reading the file
        back is most of what reporting costs the API thread (two opens, a
        read, two closes), and the call's data are what the file holds unless
        it was written again meanwhile, which ``settle`` sees by the size and
        the daemon, which checks every async body against the file before
        using it, sees for sure. Calls whose bytes cannot be known for
        certain (default encoding, newline translation, ...) and unusual
        spellings take the read-back, as sync mode always does.
        """
        if not self.active:
            return
        try:
            known = _known_payload(text, data, args, kwargs)
            rel = None if known is None else self.dir.plain_rel(path)
        except Exception:
            self.stats.inc("errors")
            return
        if rel is None:
            # The read-back route (outside the try: in sync mode with
            # SIDECAR_SHIM_ON_FAILURE=closed it raises the documented OSError).
            self.report_write(path)
            return
        try:
            if self.ignored(rel):
                self.stats.inc("ignored")
                return
        except Exception:
            self.stats.inc("errors")
            return
        self._queue_written(path, rel, known[0], known[1])

    def _queue_written(self, full: str, rel: str, data: Any, codec: str | None) -> None:
        """Queue a write with the call's own bytes, no read-back (the sender settles it).

        In sync mode this is a write that does not wait (the breaker is open): counted
        unconfirmed, and with SIDECAR_SHIM_ON_FAILURE=closed it raises once queued.
        """
        try:
            if self.sync:
                self._unconfirmed_note()
            if not self._ready():
                self.stats.inc("dropped_unavailable")
            else:
                self.transport.deliver(Event("write", rel, data, None, self, codec), False)
        except Exception:
            self.stats.inc("errors")
        if self.sync:
            self._sync_failed("write", full, rel, _BREAKER_OPEN, False)

    def settle(self, event: Event) -> bool:
        """Finish a write event of ``report_written`` (on the sender thread).

        Encodes the text, then looks at the file without following any
        symlink: every directory below the data dir is opened with
        ``O_NOFOLLOW`` and the name is ``lstat``-ed in the last one. That gives
        the mtime, and the size says whether the file still holds this
        write's bytes (if not, it was written again since: that write's own
        event, or the watcher, reports it; "superseded"). A final component
        that is a symlink is never reported. When a directory on the way is
        a symlink the file is read back instead, which resolves where it
        really is and refuses anything outside the dir.
        """
        try:
            if event._codec is not None:
                # Cannot fail: the write itself encoded the same text this way.
                event.data = event.data.encode(event._codec)
                event._codec = None
            event.path.encode("utf-8")  # the protocol is JSON: undecodable names stay with the watcher
            try:
                st = self.dir.lstat_beneath(event.path)
            except OSError:
                self.stats.inc("superseded")  # removed, or a directory on the way replaced
                return False
            if st is None:
                try:
                    snap = self.dir.read_back(self.dir.real_prefix + event.path)
                except OSError:  # removed meanwhile
                    self.stats.inc("superseded")
                    return False
                if snap is None:  # a symlink, or not inside after all: never reported
                    return False
                if self.ignored(snap[0]):  # a symlinked directory led into an ignored one
                    self.stats.inc("ignored")
                    return False
                event.path, event.data, event.mtime_ns = snap
                self.stats.inc("writes")
                return True
        except Exception:
            self.stats.inc("errors")
            return False
        if stat.S_ISLNK(st.st_mode):
            self.stats.inc("skipped_symlinks")
            return False
        if not stat.S_ISREG(st.st_mode) or st.st_size != len(event.data):
            self.stats.inc("superseded")
            return False
        event.mtime_ns = st.st_mtime_ns
        self.stats.inc("writes")
        return True

    def report_delete(self, loc: tuple[str, str], suppress: bool = False) -> None:
        if not self.active:
            return
        full, rel = loc
        try:
            if self.ignored(rel):
                self.stats.inc("ignored")
                return
            if self._away():
                event = None
            else:
                rel.encode("utf-8")
                event = Event("delete", rel, None, None)
                self.stats.inc("deletes")
        except Exception:
            self.stats.inc("errors")
            return
        if event is None:
            self._dropped("delete", full, rel, suppress)
            return
        self._deliver(event, full, suppress)

    def _away(self) -> bool:
        """True: the sidecar is away (the sender is backing off; in sync mode, and
        this write or delete would not wait either: the breaker is open), so nothing
        is read back or built: the event is ``_dropped``."""
        return not self._ready() and (not self.sync or self.breaker.skips())

    def _dropped(self, op: str, full: str, rel: str, suppress: bool) -> None:
        """No event, the sidecar being away: the watcher mirrors the file. Called
        outside the caller's try: in sync mode with SIDECAR_SHIM_ON_FAILURE=closed
        this raises the documented OSError."""
        self.stats.inc("dropped_unavailable")
        if self.sync:
            self._unconfirmed(op, full, rel, suppress)

    def _deliver(self, event: Event, full: str, suppress: bool) -> None:
        if not self.sync:
            try:
                self.transport.deliver(event, False)
            except Exception:
                self.stats.inc("errors")
            return
        if not self.breaker.allow():
            # The sidecar could not confirm a moment ago: do not wait again until the
            # probe shows it can. The file is on disk; the async path (and the
            # watcher) still mirror it, unconfirmed.
            self._unconfirmed_note()  # before the frame goes: it carries the count
            try:
                self.transport.deliver(event, False)
            except Exception:
                self.stats.inc("errors")
            self._sync_failed(event.op, full, event.path, _BREAKER_OPEN, suppress)
            return
        try:
            self.transport.deliver(event, True)
        except Exception as exc:
            self.stats.inc("sync_failed")
            self.breaker.failure()
            self._note_breaker()
            self._sync_failed(event.op, full, event.path, str(exc) or type(exc).__name__, suppress)
            return
        self.breaker.success()
        self.stats.inc("sync_ok")

    def _unconfirmed_note(self) -> None:
        self.stats.inc("unconfirmed")
        self._note_breaker()

    def _unconfirmed(self, op: str, full: str, rel: str, suppress: bool) -> None:
        """A sync write or delete that did not wait (the breaker is open)."""
        self._unconfirmed_note()
        self._sync_failed(op, full, rel, _BREAKER_OPEN, suppress)

    def _note_breaker(self) -> None:
        """From now on, every frame's header carries the breaker's state and counts.

        Set the first time the breaker opens (never in async mode or before an
        outage: nothing is added to the hot path), so the sidecar shows writes it
        could not confirm in /memory/status and /metrics as soon as frames reach it
        again (async ones while the breaker is open, the probe when it is due).
        """
        if getattr(self.transport, "reporter", False) is None:
            try:
                self.transport.reporter = self.report_text
            except AttributeError:  # a transport without the attribute (tests)
                pass

    def report_text(self) -> str:
        """The ``shim`` key of a frame header (PROTOCOL.md), formatted."""
        counts = self.stats.snapshot()
        return REPORT_FORMAT % (
            self.breaker.view(), counts["unconfirmed"], counts["sync_failed"], counts["breaker_opened"])

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
        # shapes are spelled inline (candidate, _plain_rel, _known_codec).
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
