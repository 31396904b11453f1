"""Stage 7: what the daemon knows about itself — metrics and status fields.

One ``Status`` per daemon, with its own Prometheus registry (so tests can run
several daemons in one process). Problems are kept per path and cleared when
the file becomes good again: the status shows what is wrong *now*, the
counters show what has happened. Nothing here ever holds a payload value.
"""

from __future__ import annotations

import threading
import time
from collections import Counter as PlainCounter
from collections import deque
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .timers import Timers

if TYPE_CHECKING:
    from .divergence import DivergenceBook
    from .pending import Pending
    from .shimserver import ShimServer

MAX_PROBLEMS = 200
RECENT_EVENTS = 50  # the status page's "last events" (the full trail is memory_events)
# What of an event the status page shows: never before/after (hashes, or the
# payload itself with SIDECAR_EVENTS_PAYLOAD=full), never the sample keys.
_EVENT_FIELDS = ("event_type", "path", "source", "reason", "count")


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat()


class ReconcileProgress:
    """The full reconcile under way (or the last one): files checked of the total, and
    an ETA. The total is MongoDB's count of live file manifests when it began (read with
    the state the reconcile loads anyway: no second walk of the data dir): exact on a
    warm restart, an estimate otherwise, none on a cold start (no ETA then). Counted by
    the writer thread (sidecar/fullpass.py), read at each view."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.running = False
        self.stage: str | None = None  # "loading" (what MongoDB holds), then "scanning" (the files)
        self.checked = 0
        self.total: int | None = None
        self.started_at: str | None = None
        self.finished_at: str | None = None
        self.last_duration_s: float | None = None
        self._t0 = self._t_scan = 0.0
        self._checked_g = Gauge("sidecar_reconcile_files_checked",
                                "Files the full reconcile under way has checked (the last one's, once done)",
                                registry=registry)
        self._total_g = Gauge("sidecar_reconcile_files_total",
                              "Files the full reconcile expects to check: MongoDB's live file manifests "
                              "(0: unknown, e.g. a cold start)", registry=registry)
        self._running_g = Gauge("sidecar_reconcile_running", "1 while a full reconcile runs", registry=registry)

    def begin(self) -> None:
        self.checked, self.total, self.stage = 0, None, "loading"
        self._t0 = time.monotonic()
        self.started_at, self.finished_at = _now_iso(), None
        self.running = True

    def scanning(self, total: int) -> None:
        self.total, self.stage = total or None, "scanning"
        self._t_scan = time.monotonic()

    def end(self) -> None:
        if self.running:
            self.running, self.stage = False, None
            self.last_duration_s = round(time.monotonic() - self._t0, 3)
            self.finished_at = _now_iso()

    def snapshot(self) -> dict[str, Any]:
        checked, total, running, stage = self.checked, self.total, self.running, self.stage
        now = time.monotonic()
        eta = None
        if stage == "scanning" and total and 0 < checked < total:
            eta = round((total - checked) * (now - self._t_scan) / checked, 1)
        total = max(total, checked) if total else None
        self._checked_g.set(checked)
        self._total_g.set(total or 0)
        self._running_g.set(1 if running else 0)
        elapsed = round(now - self._t0, 3) if running else self.last_duration_s
        return {"running": running, "stage": stage, "checked": checked, "total": total,
                "total_from": "mongodb_manifests", "eta_s": eta, "elapsed_s": elapsed,
                "started_at": self.started_at, "finished_at": self.finished_at}


class Status:
    """``pending``, ``divergences``, ``shim``: where the live figures are read at each
    view (the change queue, the held divergences, the shim socket server's report);
    each may be left out (a test's bare ``Status()``: those figures stay 0 / none).
    ``write_stall_s``: ``/readyz`` is 503 while one MongoDB write has waited longer."""

    def __init__(self, *, pending: Pending | None = None, divergences: DivergenceBook | None = None,
                 shim: ShimServer | None = None, write_stall_s: float | None = None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.events = Counter("sidecar_events_total", "Filesystem/shim events seen", ["kind", "event"], registry=r)
        self.writes = Counter("sidecar_writes_total", "Documents written to MongoDB", ["collection", "op"],
                              registry=r)
        self.errors = Counter("sidecar_errors_total", "Errors by kind (bad input reasons, mongo, ...)",
                              ["kind"], registry=r)
        self.bulk_seconds = Histogram("sidecar_bulk_write_seconds", "Latency of one flush to MongoDB",
                                      buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10),
                                      registry=r)
        self.pending = Gauge("sidecar_pending_changes", "Paths changed on disk but not yet mirrored", registry=r)
        self.lag = Gauge("sidecar_lag_seconds", "Age of the oldest unmirrored change", registry=r)
        self.write_inflight = Gauge("sidecar_write_inflight_seconds",
                                    "How long the oldest MongoDB write under way has been waiting (0: none)",
                                    registry=r)
        self.mongo_up = Gauge("sidecar_mongo_up", "1 when MongoDB answered the last operation", registry=r)
        self.ready_gauge = Gauge("sidecar_ready", "1 when the daemon is ready", registry=r)
        self.divergences_held = Gauge("sidecar_divergences_held",
                                      "Removals held, not mirrored (files missing, hub entries missing)",
                                      ["what"], registry=r)
        self.divergences_total = Counter("sidecar_divergences_total", "Divergences held, by reason",
                                         ["reason"], registry=r)
        self.shim_events = Counter("sidecar_shim_events_total", "Shim frames by outcome", ["status"], registry=r)
        self.ignored_total = Counter("sidecar_ignored_total",
                                     "Paths not mirrored because they match the ignore rules, by where they came in",
                                     ["source"], registry=r)
        self.root_ok = Gauge("sidecar_root_ok", "1 when the data dir is a real directory being watched",
                             registry=r)
        self.root_ok.set(1)
        self.timers = Timers(r)  # sidecar_stage_seconds; "stages" in the status
        self.reconcile = ReconcileProgress(r)  # "reconcile" in the status
        # From the shim socket server (sidecar/shimserver.py), read at each view.
        self.shim_bad_frames = Counter("sidecar_shim_bad_frames_total",
                                       "Shim frames refused as breaking the protocol", registry=r)
        self.shim_processes = Gauge("sidecar_shim_processes",
                                    "Writing processes whose shim reported its breaker (last 15 min)", registry=r)
        self.shim_breakers_open = Gauge("sidecar_shim_breakers_open",
                                        "Writing processes whose sync breaker was last reported not closed",
                                        registry=r)
        self.shim_unconfirmed = Gauge("sidecar_shim_unconfirmed_writes",
                                      "Sync writes that went on unconfirmed (breaker open), as last reported "
                                      "by each writing process, summed", registry=r)
        self._shim_bad_seen = 0
        self._lock = threading.Lock()
        self.started_at = _now_iso()
        self.ready = False
        self.phase = "starting"
        self.watcher_state = "stopped"
        self.mongo_connected = False
        self.mongo_error: str | None = None
        self.last_sync_at: str | None = None
        self.last_reconcile_at: str | None = None
        # The last full reconcile's quick check (sidecar/quick.py ``Book.report``): files and
        # bytes read, files quick-checked, counts by verdict, drift (paths, never values).
        self.last_scan: dict | None = None
        self.restored_files = 0
        # Why the data dir cannot be watched now (missing, a symlink), or None.
        self.root_problem: str | None = None
        self.lease_problem: str | None = None
        # The writer thread ended on an unexpected error after start-up (e.g. the local
        # state file's disk full): not ready, and /healthz 503 so the liveness probe restarts it.
        self.writer_failed: str | None = None
        self.startup_error: str | None = None  # an unexpected start-up failure (logged with its traceback)  # another writer holds the lease (sidecar/lease.py)
        self.error_counts: PlainCounter[str] = PlainCounter()
        self.problems: dict[str, dict[str, Any]] = {}
        self.stale_refused = 0
        # The pending queue, read live at each view so it is never stale; also the age
        # of the oldest MongoDB write under way (Pending.write_age).
        self._queue = pending
        # /readyz is 503 while one write has waited longer than this (SIDECAR_WRITE_STALL_S).
        self.write_stall_s = write_stall_s
        # The held divergences (sidecar/divergence.py).
        self.divergences = divergences
        self.restore_progress: dict[str, int] | None = None
        # The shim socket server (its report: frame counters, the writers' breakers).
        self._shim = shim
        self._shim_view: dict[str, Any] | None = None
        # The gauges' last values, kept plain for the snapshot.
        self._pending_count = 0
        self._lag_s = 0.0
        self._write_inflight_s = 0.0
        self._recent_events: deque[dict[str, Any]] = deque(maxlen=RECENT_EVENTS)
        self._reconcile_view: dict[str, Any] = {}

    # --- updates ---------------------------------------------------------------
    def set_ready(self, ready: bool) -> None:
        self.ready = ready
        self._ready_gauge()

    def set_root_problem(self, reason: str | None) -> None:
        """The data dir cannot be watched (``reason``), or can again (None): /readyz follows."""
        self.root_problem = reason
        self.root_ok.set(0 if reason else 1)
        self._ready_gauge()

    def _ready_gauge(self) -> None:
        self.ready_gauge.set(1 if self.ready and not self.root_problem else 0)

    def set_mongo(self, ok: bool, error: str | None = None) -> None:
        self.mongo_connected = ok
        self.mongo_error = None if ok else error
        self.mongo_up.set(1 if ok else 0)

    def error(self, kind: str) -> None:
        with self._lock:
            self.error_counts[kind] += 1
        self.errors.labels(kind=kind).inc()

    def problem(self, path: str, reason: str, message: str) -> bool:
        """Record a current problem; True when it is new for that path."""
        self.error(reason)
        with self._lock:
            prev = self.problems.get(path)
            if prev and prev["reason"] == reason:
                prev["count"] += 1
                prev["last_seen"] = _now_iso()
                return False
            if len(self.problems) >= MAX_PROBLEMS and path not in self.problems:
                return True
            self.problems[path] = {"path": path, "reason": reason, "message": message, "count": 1,
                                   "first_seen": _now_iso(), "last_seen": _now_iso()}
            return True

    def clear_problem(self, path: str) -> None:
        with self._lock:
            self.problems.pop(path, None)

    def wrote(self, counts: dict[str, int], seconds: float) -> None:
        for key, n in counts.items():
            coll, op = key.split(".", 1)
            self.writes.labels(collection=coll, op=op).inc(n)
        self.bulk_seconds.observe(seconds)
        self.last_sync_at = _now_iso()

    def ignored(self, source: str) -> None:
        """A path matching the ignore rules came in (watcher event, shim frame): dropped."""
        self.ignored_total.labels(source=source).inc()

    def divergence(self, reason: str) -> None:
        self.divergences_total.labels(reason=reason).inc()

    def set_divergences(self, files: int, entries: int) -> None:
        self.divergences_held.labels(what="files").set(files)
        self.divergences_held.labels(what="hub_entries").set(entries)

    def not_ready_reason(self) -> str:
        if self.startup_error:
            return "start-up failed: " + self.startup_error
        if self.phase == "restoring" and self.restore_progress:
            p = self.restore_progress
            return f"starting: restoring missing files from MongoDB ({p['done']} written)"
        return "starting: " + self.phase

    def saw_events(self, events: list[dict[str, Any]]) -> None:
        """Keep the last few events the daemon built (type, path, source, reason,
        count, time; nothing else) for the status page."""
        with self._lock:
            for ev in events:
                item = {k: ev[k] for k in _EVENT_FIELDS if ev.get(k) is not None}
                when = ev.get("created_at")
                item["created_at"] = when.isoformat() if isinstance(when, datetime) else str(when)
                self._recent_events.append(item)

    def recent_events(self) -> list[dict[str, Any]]:
        """Newest first."""
        with self._lock:
            return list(reversed(self._recent_events))

    def shim_outcomes(self) -> dict[str, int]:
        """``sidecar_shim_events_total`` by status."""
        out: dict[str, int] = {}
        for metric in self.shim_events.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total"):
                    out[sample.labels["status"]] = int(sample.value)
        return out

    def writes_by_collection(self) -> dict[str, int]:
        """``sidecar_writes_total`` summed per collection."""
        out: dict[str, int] = {}
        for metric in self.writes.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total"):
                    coll = sample.labels["collection"]
                    out[coll] = out.get(coll, 0) + int(sample.value)
        return out

    def set_pending(self, count: int, lag: float) -> None:
        self._pending_count, self._lag_s = count, lag
        self.pending.set(count)
        self.lag.set(lag)

    def write_age(self) -> float:
        age = self._queue.write_age() if self._queue is not None else 0.0
        self._write_inflight_s = age
        self.write_inflight.set(age)
        return age

    def write_stalled(self) -> str | None:
        """Why /readyz is 503 while a MongoDB write hangs (a frozen server), or None."""
        age = self.write_age()
        if self.write_stall_s is not None and age > self.write_stall_s:
            return f"mongodb write stalled for {age:.1f} s"
        return None

    # --- views -------------------------------------------------------------------
    def _refresh(self) -> None:
        self._reconcile_view = self.reconcile.snapshot()  # also sets its gauges
        if self._queue is not None:
            self.set_pending(len(self._queue), self._queue.oldest_age())
        self.write_age()
        if self._shim is not None:
            view = self._shim.report()
            with self._lock:
                bad = int(view["frames"].get("bad_frames", 0))
                if bad > self._shim_bad_seen:
                    self.shim_bad_frames.inc(bad - self._shim_bad_seen)
                    self._shim_bad_seen = bad
            clients = view["clients"]
            self.shim_processes.set(clients["processes"])
            self.shim_breakers_open.set(clients["breakers_open"])
            self.shim_unconfirmed.set(clients["unconfirmed"])
            self._shim_view = view

    def metrics_text(self) -> bytes:
        self._refresh()
        return generate_latest(self.registry)

    def snapshot(self) -> dict[str, Any]:
        self._refresh()
        with self._lock:
            problems = sorted(self.problems.values(), key=lambda p: p["path"])
            errors = dict(self.error_counts)
        return {
            "ready": self.ready,
            "phase": self.phase,
            "started_at": self.started_at,
            "watcher": self.watcher_state,
            "root_problem": self.root_problem,
            "lease_problem": self.lease_problem,
            "startup_error": self.startup_error,
            "writer_failed": self.writer_failed,
            "pending": int(self._pending_count),
            "lag_seconds": round(float(self._lag_s), 3),
            "write_inflight_seconds": round(float(self._write_inflight_s), 3),
            "last_sync_at": self.last_sync_at,
            "last_reconcile_at": self.last_reconcile_at,
            "last_scan": self.last_scan,
            "restored_files": self.restored_files,
            "stale_refused": self.stale_refused,
            "errors_by_kind": errors,
            "problems": problems,
            "divergences": self.divergences.summary() if self.divergences is not None else None,
            "restore": self.restore_progress,
            "shim": self._shim_view,
            "stages": self.timers.snapshot(),
            "reconcile": self._reconcile_view,
        }

