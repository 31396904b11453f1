"""The deletion model's guard on a watched file seen gone (DESIGN §5).

A watched file's removal is mirrored only once it has stayed gone
``REMOVAL_SETTLE_S``, only if its directory and the data dir are still the ones
it was in (``rm -rf`` of a directory or of the data dir deletes the files first:
inside the settle window that is seen for what it is, a directory gone, and
held), and only while the removals seen within ``REMOVAL_WINDOW_S`` stay within
``SIDECAR_MAX_REMOVALS`` (a mass removal is held, file by file).
"""

from __future__ import annotations

import os
import time

from .config import Config
from .divergence import DIR_REPLACED, MASS_REMOVAL, Divergence
from .lineage import Lineage
from .pending import Pending
from .source import parent_ino
from .diff import MirrorState

REMOVAL_SETTLE_S = 1.0
# Every watched file seen gone within this window counts against
# SIDECAR_MAX_REMOVALS, whether it was mirrored, held or is still settling: a
# burst whose files mature in separate flushes, or a slow ``find -delete``, is
# still one mass removal.
REMOVAL_WINDOW_S = 60.0


class Removals:
    def __init__(self, config: Config, lineage: Lineage, pending: Pending) -> None:
        self.config = config
        self.lineage = lineage
        self.pending = pending
        self._vanished: dict[str, float] = {}  # watched files gone, settling (monotonic first seen)
        self._gone_seen: dict[str, float] = {}  # watched files seen gone (REMOVAL_WINDOW_S)
        self._root_id: tuple[int, int] | None = None  # the data dir the watched files were in

    def _root_now(self) -> tuple[int, int] | None:
        try:
            st = os.lstat(self.config.data_dir)
        except OSError:
            return None
        return (st.st_dev, st.st_ino)

    def note_root(self) -> None:
        """A full reconcile: the data dir as it is now is the one files are watched in."""
        if self._root_id is None:
            self._root_id = self._root_now()

    def root_replaced(self) -> None:
        self._vanished.clear()
        self._root_id = None

    def present(self, rel: str) -> None:
        """``rel`` is there (again): not settling."""
        self._vanished.pop(rel, None)

    def settle(self, vanished: list[str], taken: dict[str, float],
               state: MirrorState) -> tuple[list[str], list[Divergence]]:
        """Of the files seen gone: those whose removal may be mirrored now, and
        those held. The others are still settling (marked again in ``Pending``)."""
        now = time.monotonic()
        ready: list[str] = []
        for rel in vanished:
            first = self._vanished.setdefault(rel, now)
            self._gone_seen.setdefault(rel, first)
            wait = REMOVAL_SETTLE_S - (now - first)
            if wait > 0:
                self.pending.mark(rel, wait, taken.get(rel))
            else:
                ready.append(rel)
        if not ready:
            return [], []
        root_same = self._root_id is not None and self._root_now() == self._root_id
        keep: list[str] = []
        held: list[Divergence] = []
        for rel in ready:
            self._vanished.pop(rel, None)
            seen_dir = self.lineage.dir_ino(rel)
            if not root_same or seen_dir is None or parent_ino(self.config.data_dir, rel) != seen_dir:
                held.append(self._held(rel, DIR_REPLACED, state))
            else:
                keep.append(rel)
        for rel, seen in list(self._gone_seen.items()):
            if now - seen > REMOVAL_WINDOW_S:
                del self._gone_seen[rel]
        if len(set(self._gone_seen) | set(keep)) > self.config.sidecar_max_removals:
            held.extend(self._held(rel, MASS_REMOVAL, state) for rel in keep)
            return [], held
        return keep, held

    def _held(self, rel: str, reason: str, state: MirrorState) -> Divergence:
        self.lineage.forget(rel)
        prev = state.files.get(rel)
        return Divergence(rel, prev.kind if prev else "other", reason, missing_file=True)
