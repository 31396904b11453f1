"""The watched root: notices the data dir itself being deleted, re-created,
replaced or turned into a symlink, and keeps the watcher on the right directory.

An inotify watch is on an inode, not on a path. After ``rm -rf D; mkdir D`` the
watch is on the deleted directory (watchdog's emitter sees IN_DELETE_SELF and
stops itself; the observer thread stays alive doing nothing), and after a
volume swap (``mv D D.old; mv new D``) it follows ``D.old`` and reports its
events under ``D``'s paths. Nothing in the event stream says so reliably, so
this monitor polls ``lstat(root)`` every ``SIDECAR_ROOT_CHECK_MS`` (and at once
when the watcher reports the root deleted) and compares it with the directory
the watcher attached to. Its one job: tell the daemon what happened
(``on_change(event)``) and re-attach or detach the watcher.

Events: ``missing`` (nothing at the path), ``symlink`` (a symlink or anything
that is not a directory: never followed, mirroring stops), ``replaced`` (a
directory that is not the one watched: re-attached), ``restored`` (a directory
again after ``missing``/``symlink``: re-attached).
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from collections.abc import Callable
from typing import NamedTuple, Protocol

log = logging.getLogger("sidecar.rootwatch")


class RootId(NamedTuple):
    dev: int
    ino: int
    is_dir: bool
    is_symlink: bool

    @property
    def healthy(self) -> bool:
        return self.is_dir and not self.is_symlink


def root_identity(path: str | os.PathLike) -> RootId | None:
    """What is at ``path`` now, without following it; None when nothing is."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError:
        return None  # e.g. a parent gone or unreadable: no usable data dir either way
    return RootId(st.st_dev, st.st_ino, stat.S_ISDIR(st.st_mode), stat.S_ISLNK(st.st_mode))


class Attachable(Protocol):
    """What the monitor needs from the watcher (sidecar/watcher.py)."""

    root: str
    attached: RootId | None
    root_deleted: threading.Event

    def attach(self) -> bool: ...

    def detach(self) -> None: ...

    def alive(self) -> bool: ...


class RootMonitor:
    def __init__(self, watcher: Attachable, interval: float, on_change: Callable[[str], None]) -> None:
        self.watcher = watcher
        self.interval = interval
        self.on_change = on_change
        # "ok": the watcher is attached to the directory at root (or will be
        # re-attached at the next check); "missing" / "symlink": it is detached.
        self.state = "ok"
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    # --- lifecycle -------------------------------------------------------------
    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="sidecar-rootwatch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def poke(self) -> None:
        """Check now (the watcher saw the root deleted). Safe from any thread."""
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.check()
            except Exception:  # never let one odd check stop the monitor
                log.exception("root monitor: check failed")
            self._wake.wait(self.interval)
            self._wake.clear()

    # --- one check -----------------------------------------------------------------
    def check(self) -> str | None:
        """Compare the root with the watched directory; act; return the event fired, if any."""
        now = root_identity(self.watcher.root)
        if now is None or not now.healthy:
            new = "missing" if now is None else "symlink"
            if self.state == new:
                return None
            self.watcher.detach()  # stop watching the old inode; never watch through a link
            self.state = new
            log.error("data dir %s %s", self.watcher.root,
                      "is missing" if new == "missing" else "is a symlink or not a directory; not followed")
            return self._fire(new)
        if self.state != "ok":
            if not self.watcher.attach():
                return None  # changed again under our feet: the next check sees what it is now
            self.state = "ok"
            log.warning("data dir %s is a directory again: watching it as a new lineage", self.watcher.root)
            return self._fire("restored")
        attached = self.watcher.attached
        moved = attached is None or (attached.dev, attached.ino) != (now.dev, now.ino)
        # A deleted root stops watchdog's emitter; the inode number may well be
        # reused by the directory created in its place, so that counts too.
        if moved or self.watcher.root_deleted.is_set() or not self.watcher.alive():
            if not self.watcher.attach():
                return None
            log.warning("data dir %s was replaced: re-attached the watcher to the new directory",
                        self.watcher.root)
            return self._fire("replaced")
        return None

    def _fire(self, event: str) -> str:
        try:
            self.on_change(event)
        except Exception:
            log.exception("root monitor: the %s callback failed", event)
        return event
