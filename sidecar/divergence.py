"""Held divergences: removals the sidecar will not mirror on its own.

A divergence is something MongoDB holds that the data dir lacks, where the
sidecar did not see the removal happen as an edit of the file it was watching
(``sidecar/lineage.py``): a key missing from a re-created hub file, a file gone
while the sidecar was down, a directory or the data dir replaced, or a change
that removes more than ``SIDECAR_MAX_REMOVALS`` entries or files at once.
They are held (MongoDB keeps the data), listed (paths, keys, counts; never
values), counted, recorded as events, and applied only when an operator
accepts them (``memory-sidecar divergences accept``, ``POST
/divergences/accept``). In mongo mode they are resolved toward MongoDB instead:
the file gets the missing data back.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

# Reasons, in the words an operator reads them in.
NOTICED_AT_START = "noticed_at_reconcile"  # start-up, reconcile or sync: nobody saw it happen
RECREATED = "recreated"  # a new inode, or the file absent then present again
DIR_REPLACED = "directory_replaced"  # the file's directory (or the data dir) is another one now
MASS_REMOVAL = "mass_removal"  # more than SIDECAR_MAX_REMOVALS in one change
EMPTIED = "emptied"  # the edit would leave a hub with no entries at all
NOT_SEEN = "missing_before_watched_edit"
MONGO_IS_TRUTH = "mongo_mode"  # mongo mode: a key gone from a hub file is healed back, never removed  # already absent from the version the daemon watched

SAMPLE_KEYS = 50


@dataclass
class Divergence:
    path: str
    kind: str  # hub | episode | snapshot | run | ...
    reason: str
    missing_file: bool = False  # the whole file is gone (else: hub keys are)
    keys: list[str] = field(default_factory=list)
    first_seen: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat())

    @property
    def count(self) -> int:
        return 1 if self.missing_file else len(self.keys)

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "kind": self.kind,
            "reason": self.reason,
            "what": "file" if self.missing_file else "hub_entries",
            "count": self.count,
            "keys": sorted(self.keys)[:SAMPLE_KEYS],
            "first_seen": self.first_seen,
        }


def _totals(items: list[Divergence]) -> tuple[int, int]:
    """(files held missing, hub entries held) of ``items``."""
    return sum(1 for d in items if d.missing_file), sum(d.count for d in items if not d.missing_file)


class DivergenceBook:
    """The divergences held now, by path. Thread-safe; never holds a value."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[str, Divergence] = {}

    def hold(self, div: Divergence) -> bool:
        """Record what is held at ``div.path`` now (``div.keys`` is the whole set
        missing); True when something new is held (the caller logs and records it)."""
        with self._lock:
            prev = self._items.get(div.path)
            grew = True
            if prev is not None:
                div.first_seen = prev.first_seen
                if prev.missing_file == div.missing_file and set(div.keys) <= set(prev.keys):
                    grew = False
                    div.reason = prev.reason  # the first reason it was held for
            self._items[div.path] = div
            return grew

    def resolve(self, path: str, keys: set[str] | None = None) -> None:
        """The file has the data again (or it was accepted): drop ``keys`` or the whole entry."""
        with self._lock:
            prev = self._items.get(path)
            if prev is None:
                return
            if keys is None or prev.missing_file:
                del self._items[path]
                return
            prev.keys = [k for k in prev.keys if k not in keys]
            if not prev.keys:
                del self._items[path]

    def get(self, path: str) -> Divergence | None:
        with self._lock:
            return self._items.get(path)

    def items(self) -> list[Divergence]:
        with self._lock:
            return sorted(self._items.values(), key=lambda d: d.path)

    def gauges(self) -> tuple[int, int]:
        """(files held missing, hub entries held): the divergence gauges."""
        return _totals(self.items())

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def summary(self, limit: int = 200) -> dict[str, Any]:
        items = self.items()
        files, entries = _totals(items)
        return {
            "count": len(items),
            "entries": entries,
            "files": files,
            "items": [d.as_dict() for d in items[:limit]],
            "accept": "memory-sidecar divergences accept [PATH...] (or POST /divergences/accept with the token)",
        }
