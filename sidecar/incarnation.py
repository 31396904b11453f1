"""Which incarnation of MongoDB's mirrored collections the mirror state was loaded from.

``mongorestore --drop`` (or any drop and re-create) into the running server gives the
collections new UUIDs (``Store.identity``): MongoDB is then not what the state says, and
a removal mirrored now would tombstone the dump's older value while newer files stay
unmirrored. The writer checks before any flush with removals and every ``PING_EVERY``
under load, and answers a change with a full reconcile (which loads the state again).
"""

from __future__ import annotations

import logging
import time
from typing import Any

log = logging.getLogger("sidecar.mirror")


class Incarnation:
    def __init__(self, store: Any, status: Any) -> None:
        self.store = store
        self.status = status
        self._identity: tuple[tuple[str, str], ...] | None = None  # (name, uuid) when the state was loaded
        self._checked = 0.0  # monotonic time of the last look

    def load(self) -> None:
        """Taken just before the state is loaded: a restore after it shows."""
        self._identity = self.store.identity()
        self._checked = time.monotonic()

    def age(self) -> float:
        """Seconds since the last look."""
        return time.monotonic() - self._checked

    def replaced(self) -> bool:
        """True when a mirrored collection was dropped or re-created since the state was
        loaded (until the next full reconcile loads it again). Raises MongoUnavailable."""
        ident = self.store.identity()
        self._checked = time.monotonic()
        old = dict(self._identity or ())
        new = dict(ident)
        gone = sorted(name for name, uuid in old.items() if new.get(name) != uuid)
        if gone:
            log.warning("MongoDB's %s %s re-created or dropped since the sidecar loaded them (a restore from "
                        "a dump?): a full reconcile compares every file with it again", ", ".join(gone),
                        "was" if len(gone) == 1 else "were")
            self.status.error("collections_replaced")
            return True
        self._identity = ident  # collections created since (the first writes) join it
        return False
