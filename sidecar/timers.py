"""Where the sidecar's time goes: one timer per stage of the data flow.

The daemon and ``sync`` time their own stages (read+plan+diff, bulk writes per
collection, events, the queue wait of a change) here, so an operator reads them
in ``/memory/status`` (``stages``) and ``/metrics`` (``sidecar_stage_seconds``)
and a benchmark reads the same figures instead of wrapping private functions.
Stage names are a fixed, small set (they are metric labels); a call costs a
``perf_counter`` pair, a lock and, with a registry, one histogram observation.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prometheus_client import CollectorRegistry, Histogram

from .names import EPISODES, FILES, HUBS, SNAPSHOTS

# What each stage times (the keys of ``Timers.snapshot()``).
STAGES = {
    "flush": "one writer flush of queued paths, end to end",
    "plan": "read + parse + hash + diff of the files of one flush",
    "write": "the bulk writes of one flush or reconcile chunk (Store.apply)",
    **{f"write.{coll}": f"bulk writes to {coll}" for coll in (HUBS, EPISODES, SNAPSHOTS)},
    f"write.{FILES}": "bulk writes to the files collection (manifests)",
    "events": "one insert of memory_events",
    "queue_wait": "from a path's first change to the flush that took it",
    "reconcile": "one full reconcile",
    "ensure_indexes": "index creation at start (sync)",
    "checkpoint": "asking whether anything changed since the last clean sync (sidecar/checkpoint.py)",
    "load_state": "reading the mirror state from MongoDB",
    "scan": "the walk + read + plan + diff of every file (sync, reconcile)",
    "report": "the parity report (sync)",
}


class Timers:
    """Calls, total and longest seconds per stage; optionally a Prometheus histogram."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self._lock = threading.Lock()
        self._rows: dict[str, list[float]] = {}  # stage -> [calls, total_s, max_s]
        self._hist = None
        if registry is not None:
            self._hist = Histogram("sidecar_stage_seconds", "Time spent per stage of the data flow",
                                   ["stage"], registry=registry,
                                   buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5,
                                            5, 10, 30, 120))

    def observe(self, stage: str, seconds: float) -> None:
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}")
        with self._lock:
            row = self._rows.get(stage)
            if row is None:
                self._rows[stage] = [1, seconds, seconds]
            else:
                row[0] += 1
                row[1] += seconds
                if seconds > row[2]:
                    row[2] = seconds
        if self._hist is not None:
            self._hist.labels(stage=stage).observe(seconds)

    @contextmanager
    def time(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.observe(stage, time.perf_counter() - t0)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {stage: {"calls": int(row[0]), "total_s": round(row[1], 6), "max_ms": round(row[2] * 1000, 3)}
                    for stage, row in sorted(self._rows.items())}
