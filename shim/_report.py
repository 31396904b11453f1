"""Reporting a write or delete under the data dir, once the wrappers saw it.

Standard library only. ``Reporter`` (the half of ``Shim`` that is not a
wrapper) builds the event (reading the file back, or with the call's own bytes,
settled later on the sender thread), skips ignored paths and, with the sidecar
away, drops the event (the watcher mirrors the file). Async mode hands it to
the transport's queue; sync mode waits for the sidecar's confirmation behind
the circuit breaker (shim/_breaker.py) and applies SIDECAR_SHIM_ON_FAILURE
when it does not come.
"""

from __future__ import annotations

import errno
import logging
import stat
import threading
import time
from typing import Any, Callable

from ._breaker import Breaker
from ._codecs import _known_payload
from ._config import ShimConfig
from ._datadir import DataDir
from ._events import Event, Stats
from ._ignore import rules_for
from ._protocol import REPORT_FORMAT

log = logging.getLogger("mentorix_shim")

WARN_INTERVAL_S = 30.0
_BREAKER_OPEN = "circuit breaker open: the sidecar could not confirm a recent write"


class Reporter:
    """Reports writes and deletes under the data dir; ``Shim`` adds the wrappers.

    ``active`` is False until the wrappers are in place (and again after
    ``unpatch``): nothing is reported then.
    """

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
