"""Which incarnation of MongoDB's mirrored collections the mirror state was loaded from.

``mongorestore --drop`` (or any drop and re-create) into the running server gives the
collections new UUIDs (``Store.shape``): MongoDB is then not what the state says, and
a removal mirrored now would tombstone the dump's older value while newer files stay
unmirrored. The writer checks before any flush with removals and every ``PING_EVERY``
under load, and answers a change with a full reconcile (which loads the state again).

A restore is seen while it may still be running (its drops come first, then one
collection after another is re-created and filled). A reconcile that loaded MongoDB
then would hold half the dump, and what the restore brought after it would be unknown
to the state: a removal the API makes next would find nothing to tombstone and nothing
to hold. So the reconcile after a replacement first ``settle``s: it waits until the
mirrored collections (names, UUIDs, document counts) have not changed for ``QUIET_S``
(at most ``SETTLE_MAX_S``, then it goes on and says so), and after its load it looks
again (``moved_since_load``): any collection re-created, created or filled meanwhile
means another full reconcile after this one, at most ``RELOADS`` times in a row (a
writer that never stops, e.g. Mentorix's own store beside the sidecar, DESIGN §8, must
not keep it reconciling forever: then it goes on with what it loaded, and says so).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, ContextManager

log = logging.getLogger("sidecar.mirror")

QUIET_S = 1.0  # the mirrored collections unchanged this long: the restore is done
LOOK_S = 0.2  # how often ``settle`` looks
SETTLE_MAX_S = 120.0  # then the reconcile goes on (and says so): it never waits forever
RELOADS = 3  # full reconciles in a row after a load that MongoDB moved under


class Incarnation:
    def __init__(self, store: Any, status: Any, forget: Callable[[], None] = lambda: None,
                 timed: Callable[[], ContextManager[Any]] = contextlib.nullcontext) -> None:
        self.store = store
        self._timed = timed  # around each look (``Pending.writing``): a frozen server shows as a stalled write
        self.status = status
        self._forget = forget  # called with every replacement seen: what was seen of the files no longer holds
        self._identity: tuple[tuple[str, str, int], ...] | None = None  # (name, uuid, -1) when the state was loaded
        self._shape: tuple[tuple[str, str, int], ...] = ()  # and with the counts, when suspect
        self._checked = 0.0  # monotonic time of the last look
        self.suspect = False  # a replacement was seen and no reconcile has settled since
        self._reloads = 0  # reconciles asked in a row by ``moved_since_load``
        self._waited_out = False  # a settle ran to SETTLE_MAX_S since the replacement: not again
        self.settling = False  # a settle is waiting: nothing is written meanwhile (a sync frame is told at once)

    def load(self) -> None:
        """Taken just before the state is loaded: a restore after it shows."""
        self._identity = self._look()
        self._shape = self._look(counts=True) if self.suspect else ()
        self._checked = time.monotonic()

    def _look(self, counts: bool = False) -> tuple[tuple[str, str, int], ...]:
        with self._timed():
            return self.store.shape(counts=counts)

    def age(self) -> float:
        """Seconds since the last look."""
        return time.monotonic() - self._checked

    def replaced(self) -> bool:
        """True when a mirrored collection was dropped or re-created since the state was
        loaded (until the next full reconcile loads it again). Raises MongoUnavailable."""
        ident = self._look()
        self._checked = time.monotonic()
        old = {name: uuid for name, uuid, _ in self._identity or ()}
        new = {name: uuid for name, uuid, _ in ident}
        gone = sorted(name for name, uuid in old.items() if new.get(name) != uuid)
        if gone:
            log.warning("MongoDB's %s %s re-created or dropped since the sidecar loaded them (a restore from "
                        "a dump?): a full reconcile compares every file with it again", ", ".join(gone),
                        "was" if len(gone) == 1 else "were")
            self.status.error("collections_replaced")
            self.suspect, self._reloads, self._waited_out = True, 0, False
            self._forget()
            return True
        self._identity = ident  # collections created since (the first writes) join it
        return False

    def settle(self, pause: Callable[[float], None]) -> bool:
        """After a replacement (``suspect``): wait until MongoDB's mirrored collections stop
        changing. ``pause(seconds)`` waits (it raises to end the wait: the daemon stops).
        True once quiet (or nothing suspect), False after ``SETTLE_MAX_S`` (said; the later
        reconciles of the same replacement do not wait again). Raises MongoUnavailable."""
        if not self.suspect or self._waited_out:
            return True
        self.settling = True
        try:
            return self._settle(pause)
        finally:
            self.settling = False

    def _settle(self, pause: Callable[[float], None]) -> bool:
        start = time.monotonic()
        look, since = self._look(counts=True), start
        while True:
            now = time.monotonic()
            if now - since >= QUIET_S:
                return True
            if now - start >= SETTLE_MAX_S:
                log.warning("MongoDB's mirrored collections were still changing %.0f s after the sidecar saw them "
                            "re-created (a restore still running?): the full reconcile loads them as they are now",
                            now - start)
                self.status.error("collections_still_changing")
                self._waited_out = True
                return False
            pause(LOOK_S)
            again = self._look(counts=True)
            if again != look:
                look, since = again, time.monotonic()

    def moved_since_load(self) -> bool:
        """After a reconcile's load that followed a replacement: True (and still ``suspect``)
        when a mirrored collection was created, dropped, re-created or filled while it loaded
        (the sidecar does not write while it loads), so what was loaded may be half of a
        restore. Clears ``suspect`` otherwise. Raises MongoUnavailable."""
        if not self.suspect:
            return False
        if self._look(counts=True) == self._shape:
            self.suspect = False
            return False
        if self._reloads >= RELOADS:
            log.warning("MongoDB's mirrored collections kept changing through %d full reconciles after they were "
                        "re-created (another writer?): the sidecar goes on with what it loaded", self._reloads + 1)
            self.status.error("collections_still_changing")
            self.suspect = False
            return False
        self._reloads += 1
        log.warning("MongoDB's mirrored collections changed while the sidecar loaded them (a restore still "
                    "running?): another full reconcile follows this one")
        self.status.error("collections_replaced")
        self._forget()
        return True
