"""Stage 0: filesystem events (watchdog; inotify on Linux) → pending paths.

Close-after-write (IN_CLOSE_WRITE) makes a path ready at once; plain
create/modify events make it ready after a short quiet window (platforms
without close events, or a writer that keeps the file open). Directory moves
and deletions, and a kernel queue overflow, ask for a full reconcile: cheaper
to re-diff everything than to guess what was lost.

The overflow comes from watchdog's own callback for it (7.1+, see
``_OverflowWatchGroup``), not from its log text; ``pyproject.toml`` pins the
range that has it.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
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
from watchdog.observers.api import DEFAULT_OBSERVER_TIMEOUT, BaseObserver

from .classify import UnsafePath, classify, is_ignored, normalize
from .pending import Pending
from .rootwatch import RootId, root_identity
from .source import DataDirMissing, Skipped, walk
from .status import Status

log = logging.getLogger("sidecar.watcher")

EVENT_TYPES = [DirCreatedEvent, DirDeletedEvent, DirMovedEvent, FileClosedEvent, FileCreatedEvent,
               FileDeletedEvent, FileModifiedEvent, FileMovedEvent]
INOTIFY = Observer.__module__ == "watchdog.observers.inotify"  # Linux (the image); else no overflow to hook

if INOTIFY:
    from watchdog.observers.inotify import InotifyEmitter, InotifyWatchGroup
    from watchdog.observers.inotify_c import InotifyFD

    # The hook below is watchdog 7.1.0's (#654): older releases drop IN_Q_OVERFLOW
    # silently, and overflows would go unnoticed. pyproject.toml pins >=7.1.
    if not hasattr(InotifyWatchGroup, "on_queue_overflow"):
        raise ImportError("sidecar needs watchdog>=7.1 (InotifyWatchGroup.on_queue_overflow)")

    @dataclass
    class _OverflowWatchGroup(InotifyWatchGroup):
        """watchdog's inotify watch group, told of a kernel queue overflow.

        On IN_Q_OVERFLOW, watchdog (7.1.0) calls ``on_queue_overflow()`` of every
        ``WatchCallback`` (the Protocol in ``inotify_c``) on the inotify instance: the
        watch group drops its half-paired moves and re-adds its recursive watches. It
        queues no event and no handler method is called, so this callback is the one
        place to learn of it. Ours runs after that rebuild, so a reconcile started by
        it cannot miss a change the new watches did not see yet."""

        on_overflow: Callable[[], None] = field(default=lambda: None)

        def on_queue_overflow(self) -> None:
            try:
                super().on_queue_overflow()
            finally:
                self.on_overflow()

    class _OverflowEmitter(InotifyEmitter):
        """``InotifyEmitter`` with ``_OverflowWatchGroup`` as its watch group: its
        ``on_thread_start`` (watchdog 7.1.0) builds the group; the rest of the
        emitter (reading, event building, stop) is watchdog's, through ``_inotify``."""

        def __init__(self, *args, inotify_fd: InotifyFD, on_overflow: Callable[[], None], **kwargs) -> None:
            super().__init__(*args, inotify_fd=inotify_fd, **kwargs)
            self._sidecar_fd = inotify_fd
            self._sidecar_on_overflow = on_overflow

        def on_thread_start(self) -> None:
            self._inotify = _OverflowWatchGroup(
                self._sidecar_fd,
                os.fsencode(self.watch.path),
                is_recursive=self.watch.is_recursive,
                event_mask=self.get_event_mask_from_filter(),
                follow_symlink=self.watch.follow_symlink,
                on_overflow=self._sidecar_on_overflow,
            )

    class _OverflowObserver(BaseObserver):
        """watchdog's ``InotifyObserver`` (7.1.0: its own inotify instance, stopped
        with the observer) with ``_OverflowEmitter``; ``on_overflow`` reaches the
        emitter through BaseObserver's emitter keyword arguments."""

        def __init__(self, on_overflow: Callable[[], None]) -> None:
            self.inotify_fd = InotifyFD()
            self.inotify_fd.start()
            super().__init__(_OverflowEmitter, timeout=DEFAULT_OBSERVER_TIMEOUT,
                             inotify_fd=self.inotify_fd, on_overflow=on_overflow)

        def on_thread_stop(self) -> None:
            super().on_thread_stop()
            self.inotify_fd.stop()
            self.inotify_fd.join()


def _new_observer(on_overflow: Callable[[], None]) -> BaseObserver:
    return _OverflowObserver(on_overflow) if INOTIFY else Observer()


class Watcher(FileSystemEventHandler):
    def __init__(self, root: Path, ignore: tuple[str, ...], pending: Pending, status: Status,
                 quiet: float = 0.1, lineage_break=None) -> None:
        self.root = str(Path(root))
        self.ignore = ignore
        self.pending = pending
        self.status = status
        self.quiet = quiet
        # Called with a path created, deleted or renamed (sidecar/lineage.py): those
        # end a file's lineage, whatever inode number the next file gets.
        self.lineage_break = lineage_break or (lambda rel: None)
        self.observer: BaseObserver | None = None
        self._lock = threading.Lock()  # attach/detach (the root monitor) vs. stop (shutdown)
        # The directory the observer was attached to (lstat taken just before
        # scheduling: a swap in between is seen as a change, never missed).
        self.attached: RootId | None = None
        # watchdog reported the root itself deleted (its emitter stops then).
        self.root_deleted = threading.Event()
        self.on_root_suspect = None  # set by the root monitor: check the root now
        self._active = False  # between start() and stop(): only then may attach() watch

    # --- lifecycle -------------------------------------------------------------
    def start(self) -> None:
        self._active = True
        if not self.attach():
            log.warning("watcher: %s is not a directory to watch (the root monitor retries)", self.root)

    def attach(self) -> bool:
        """Watch the directory now at ``root`` with a fresh observer (dropping any old
        one, which may hold a deleted or moved-away inode). False if there is no
        real directory there: a symlink is never watched through."""
        with self._lock:
            self._detach()
            if not self._active:
                return False
            ident = root_identity(self.root)
            if ident is None or not ident.healthy:
                return False
            self.root_deleted.clear()
            observer = _new_observer(self.overflow)
            observer.name = "sidecar-watcher"
            try:
                observer.schedule(self, self.root, recursive=True, event_filter=EVENT_TYPES)
                observer.start()
            except OSError as exc:  # gone again between the lstat and the watch
                log.warning("watcher: cannot watch %s: %s", self.root, exc.strerror or exc)
                return False
            self.observer, self.attached = observer, ident
            self.status.watcher_state = "running"
            return True

    def detach(self) -> None:
        """Stop watching (the root is missing or a symlink); ``attach`` resumes."""
        with self._lock:
            self._detach()

    def _detach(self) -> None:
        if self.observer is not None:
            self.observer.stop()
            self.observer.join(timeout=10)
            self.observer = None
        self.attached = None
        self.status.watcher_state = "detached"

    def alive(self) -> bool:
        """The observer and its emitter threads still run (a deleted root stops the emitter)."""
        observer = self.observer
        if observer is None or not observer.is_alive():
            return False
        try:
            emitters = list(observer.emitters)
        except RuntimeError:  # changed while copied (being stopped): ask again next time
            return True
        return bool(emitters) and all(e.is_alive() for e in emitters)

    def stop(self) -> None:
        with self._lock:
            self._active = False
            self._detach()
        self.status.watcher_state = "stopped"

    def overflow(self) -> None:
        """The kernel dropped watch events (called on watchdog's inotify thread)."""
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
        if is_ignored(rel, self.ignore):  # also tests rel + "/" and the directories above
            self.status.ignored("watcher")
            return None
        return rel

    def _mark(self, rel: str | None, event: str, delay: float, breaks: bool = False) -> None:
        if rel is None:
            return
        if breaks:
            self.lineage_break(rel)
        self.status.events.labels(kind=classify(rel).value, event=event).inc()
        self.pending.mark(rel, delay)

    def dispatch(self, event: FileSystemEvent) -> None:
        try:
            self._dispatch(event)
        except Exception:  # never let one odd event stop the observer thread
            log.exception("watcher: could not handle a %s event", event.event_type)
            self.status.error("watcher_event")

    def _from_another_dir(self, event: FileSystemEvent) -> bool:
        """The watch follows an inode: after a move or swap of the data dir, its events
        name paths under root that are not the files there now. Drop them (reading the
        path would mirror, or delete, the wrong file) and have the monitor check now;
        its re-attach looks at the whole new directory anyway."""
        attached = self.attached
        if attached is None:
            return False
        now = root_identity(self.root)
        if now is not None and now.healthy and (now.dev, now.ino) == (attached.dev, attached.ino):
            return False
        if self.on_root_suspect is not None:
            self.on_root_suspect()
        return True

    def _dispatch(self, event: FileSystemEvent) -> None:
        if isinstance(event, DirDeletedEvent) and os.fsdecode(event.src_path) == self.root:
            # The data dir itself was deleted: watchdog stops watching; the root
            # monitor re-attaches (or reports it missing). Never from this thread:
            # stopping the observer joins it.
            self.root_deleted.set()
            if self.on_root_suspect is not None:
                self.on_root_suspect()
            return
        if self._from_another_dir(event):
            return
        src = self._rel(event.src_path)
        if isinstance(event, FileClosedEvent):
            self._mark(src, "closed", 0.0)
        elif isinstance(event, FileCreatedEvent):
            self._mark(src, event.event_type, self.quiet, breaks=True)
        elif isinstance(event, FileModifiedEvent):
            self._mark(src, event.event_type, self.quiet)
        elif isinstance(event, FileDeletedEvent):
            self._mark(src, "deleted", 0.0, breaks=True)
        elif isinstance(event, FileMovedEvent):
            self._mark(src, "moved_from", 0.0, breaks=True)
            self._mark(self._rel(event.dest_path), "moved_to", 0.0, breaks=True)
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
