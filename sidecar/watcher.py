"""Stage 0: filesystem events (watchdog; inotify on Linux) → pending paths.

Close-after-write (IN_CLOSE_WRITE) makes a path ready at once; plain
create/modify events make it ready after a short quiet window (platforms
without close events, or a writer that keeps the file open). Directory moves
and deletions, and a kernel queue overflow, ask for a full reconcile: cheaper
to re-diff everything than to guess what was lost.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

from .classify import UnsafePath, classify, is_ignored, normalize
from .pending import Pending
from .source import DataDirMissing, Skipped, walk
from .status import Status

log = logging.getLogger("sidecar.watcher")

EVENT_TYPES = [DirCreatedEvent, DirDeletedEvent, DirMovedEvent, FileClosedEvent, FileCreatedEvent,
               FileDeletedEvent, FileModifiedEvent, FileMovedEvent]
OVERFLOW_TEXT = "queue overflowed"


class _OverflowHook(logging.Handler):
    """watchdog rebuilds its watches after an inotify overflow and only logs it;
    its log record is the one signal we get that events were lost."""

    def __init__(self, on_overflow) -> None:
        super().__init__(logging.WARNING)
        self.on_overflow = on_overflow

    def emit(self, record: logging.LogRecord) -> None:
        if OVERFLOW_TEXT in record.getMessage().lower():
            self.on_overflow()


class Watcher(FileSystemEventHandler):
    def __init__(self, root: Path, ignore: tuple[str, ...], pending: Pending, status: Status,
                 quiet: float = 0.1) -> None:
        self.root = str(Path(root))
        self.ignore = ignore
        self.pending = pending
        self.status = status
        self.quiet = quiet
        self.observer: Observer | None = None
        self._hook = _OverflowHook(self.overflow)

    # --- lifecycle -------------------------------------------------------------
    def start(self) -> None:
        self.observer = Observer()
        self.observer.name = "sidecar-watcher"
        self.observer.schedule(self, self.root, recursive=True, event_filter=EVENT_TYPES)
        # The hook must see watchdog's WARNING whatever SIDECAR_LOG_LEVEL is.
        wd_log = logging.getLogger("watchdog.observers")
        if wd_log.getEffectiveLevel() > logging.WARNING:
            wd_log.setLevel(logging.WARNING)
        wd_log.addHandler(self._hook)
        self.observer.start()
        self.status.watcher_state = "running"

    def stop(self) -> None:
        logging.getLogger("watchdog.observers").removeHandler(self._hook)
        if self.observer is not None:
            self.observer.stop()
            self.observer.join(timeout=10)
            self.observer = None
        self.status.watcher_state = "stopped"

    def overflow(self) -> None:
        self.status.error("watch_overflow")
        self.status.events.labels(kind="all", event="overflow").inc()
        self.pending.mark_full()

    # --- events ------------------------------------------------------------------
    def _rel(self, path: str | bytes) -> str | None:
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        rel = os.path.relpath(path, self.root)
        if rel == "." or rel.startswith(".."):
            return None
        try:
            rel = normalize(rel.replace(os.sep, "/"))
        except UnsafePath:
            return None
        if is_ignored(rel, self.ignore) or is_ignored(rel + "/", self.ignore):
            return None
        return rel

    def _mark(self, rel: str | None, event: str, delay: float) -> None:
        if rel is None:
            return
        self.status.events.labels(kind=classify(rel).value, event=event).inc()
        self.pending.mark(rel, delay)

    def dispatch(self, event: FileSystemEvent) -> None:
        try:
            self._dispatch(event)
        except Exception:  # never let one odd event stop the observer thread
            log.exception("watcher: could not handle a %s event", event.event_type)
            self.status.error("watcher_event")

    def _dispatch(self, event: FileSystemEvent) -> None:
        src = self._rel(event.src_path)
        if isinstance(event, FileClosedEvent):
            self._mark(src, "closed", 0.0)
        elif isinstance(event, (FileCreatedEvent, FileModifiedEvent)):
            self._mark(src, event.event_type, self.quiet)
        elif isinstance(event, FileDeletedEvent):
            self._mark(src, "deleted", 0.0)
        elif isinstance(event, FileMovedEvent):
            self._mark(src, "moved_from", 0.0)
            self._mark(self._rel(event.dest_path), "moved_to", 0.0)
        elif isinstance(event, DirCreatedEvent):
            self._scan_dir(src)
        elif isinstance(event, DirMovedEvent):
            self._scan_dir(self._rel(event.dest_path))
            if src is not None:
                self.pending.mark_full()  # files under the old name are gone
        elif isinstance(event, DirDeletedEvent) and src is not None:
            self.pending.mark_full()

    def _scan_dir(self, rel: str | None) -> None:
        """A directory appeared (created or moved in): files in it may predate its watch."""
        if rel is None:
            return
        try:
            for item in walk(Path(self.root), (), under=rel):
                # Globs are relative to the data dir, so match the full path here.
                self._mark(self._rel(os.path.join(self.root, item.rel if isinstance(item, Skipped) else item)),
                           "dir_scan", 0.0)
        except DataDirMissing:
            pass  # the data dir itself is gone or replaced: the root monitor sees to it
