"""Stage 5, the write step: ops → MongoDB → the mirror state → events → status.

The one step every writer uses: the daemon's flushes and reconciles
(``sidecar/mirror.py``), ``sync`` and ``divergences accept`` (``sidecar/sync.py``).
The mirror state learns only what MongoDB acknowledged; an op MongoDB refused
for its own reasons (a document it cannot take) becomes a ``mongo_rejected``
problem of its file; the audit events of the acknowledged ops go through one
``EventOutbox``. ``MongoUnavailable`` propagates with nothing recorded: the
caller requeues, and the version guard makes the retry safe.
"""

from __future__ import annotations

import contextlib
import time
from datetime import datetime
from typing import Any

from .config import Config
from .events import EventOutbox, build_events
from .reconcile import Problem
from .state import MirrorState, Op, count_ops
from .store import ApplyResult, Store


class Writer:
    def __init__(self, config: Config, store: Store, state: MirrorState, status: Any = None,
                 pending: Any = None) -> None:
        self.config = config
        self.store = store
        self.state = state
        self.status = status  # sidecar.status.Status of a daemon, or None (sync)
        self._writing = pending.writing if pending is not None else contextlib.nullcontext
        self.outbox = EventOutbox(store, status, pending.writing if pending is not None else None)

    def write(self, ops: list[Op], source: str, problems: list[Problem], now: datetime,
              summarize_inserts: bool = False) -> tuple[ApplyResult, list[dict]]:
        """Send ``ops``; return the result and the events of what was acknowledged
        (not yet recorded: the caller adds its own and calls ``record``). Refused
        ops are appended to ``problems``. Raises MongoUnavailable."""
        result = ApplyResult()
        if not ops:
            return result, []
        started = time.monotonic()
        timed = self.status.timers.time("write") if self.status is not None else contextlib.nullcontext()
        with self._writing(), timed:
            result = self.store.apply(ops)
        self.state.apply(result)  # only what MongoDB acknowledged
        if self.status is not None:
            self.status.wrote(count_ops(result.applied), time.monotonic() - started)
            self.status.stale_refused += len(result.stale)
        for op, why in result.failed:
            problems.append(Problem(op.rel, "mongo_rejected", f"{op.rel}: {op.entity}: {why}", op.coll))
        events = build_events(result.applied, source, now, summarize_inserts=summarize_inserts,
                              full_payload=self.config.sidecar_events_payload == "full")
        return result, events

    def record(self, events: list[dict], defer: bool = False) -> None:
        """The audit trail: see ``EventOutbox.send``. Raises MongoUnavailable (kept)."""
        self.outbox.send(events, defer)
