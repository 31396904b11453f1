"""One-shot backfill: reconcile the whole data dir, then report parity.

The report keeps the Mentorix backfill report's fields (``source_counts``,
``mongo_counts``, ``writes``, ``checksums``, ``parity``) and adds per-kind
detail and every bad input seen.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from tqdm import tqdm

from . import checkpoint, parity, quick
from .config import Config
from .names import EPISODES, FILES, HUBS, SNAPSHOTS
from .localindex import LocalIndex
from .state import Op, build_state, count_ops
from .events import note_event
from .model import utcnow
from .divergence import Divergence, DivergenceBook
from .lease import Lease
from .reconcile import Problem, Reconciler, SourceView
from .diskwrite import write_atomic
from .source import check_root
from .store import ApplyResult, Store
from .timers import Timers
from .writer import Writer

log = logging.getLogger("sidecar.sync")

REPORT_REL = "reports/memory_backfill_report.json"


def writes_summary(result: ApplyResult | None) -> dict[str, int]:
    """The report's ``writes``, in the Mentorix backfill report's terms."""
    count = count_ops(result.applied if result else [])
    get = lambda coll, action: count.get(f"{coll}.{action}", 0)  # noqa: E731
    upserts = lambda coll: get(coll, "insert") + get(coll, "update")  # noqa: E731
    return {
        "hubs_upserted": upserts(HUBS),
        "snapshots_upserted": upserts(SNAPSHOTS),
        "episodes_upserted": upserts(EPISODES),
        "files_upserted": upserts(FILES),
        "hubs_deleted": get(HUBS, "delete"),
        "episodes_deleted": get(EPISODES, "delete"),
        "files_deleted": get(FILES, "delete"),
        "file_deletions_recorded": get(FILES, "mark_deleted"),
        "positions_updated": get(HUBS, "setpos"),
        # Bookkeeping, not content: a manifest's quick-check record refreshed (sidecar/quick.py).
        "stat_records_refreshed": get(FILES, "stat"),
        "stale_refused": len(result.stale) if result else 0,
        "failed": len(result.failed) if result else 0,
        "total": sum(n for key, n in count.items() if not key.endswith((".track", ".stat"))),
    }


def _progress(total: int | None, desc: str) -> tqdm:
    """A bar on stderr for a long one-shot command, only on a terminal (quiet in scripts and logs)."""
    return tqdm(total=total, desc=desc, unit="file", disable=not sys.stderr.isatty(), leave=False)


def _scan(rec: Reconciler, state, source: str, desc: str, **kw):
    """``rec.scan`` with a progress bar (the file count is only known once walked)."""
    bar = _progress(None, desc)
    try:
        return rec.scan(state, source, progress=lambda rel: bar.update(1), **kw)
    finally:
        bar.close()


def run_sync(config: Config, store: Store, *, dry_run: bool = False, report_path: Path | None = None,
             checksum: bool = False) -> tuple[dict[str, Any], int]:
    """``checksum``: read and hash every file (no quick check, sidecar/quick.py) and
    report what drifted on either side since the files were last mirrored."""
    started = time.monotonic()
    root = check_root(config.data_dir)
    store.ping()
    timers = Timers()
    if not dry_run:
        with timers.time("ensure_indexes"):
            store.ensure_indexes()
    lease = None
    if not dry_run:
        lease = Lease(store, "sync", config.sidecar_lease_ttl_s)
        lease.acquire()  # LeaseHeld: a daemon (or another sync) writes this database now
    try:
        return _sync(config, store, root, started, dry_run, report_path, lease, timers, checksum)
    finally:
        if lease is not None:
            lease.release()


def _sync(config: Config, store: Store, root: Path, started: float, dry_run: bool,
          report_path: Path | None, lease, timers: Timers, checksum: bool = False) -> tuple[dict[str, Any], int]:
    # The per-file state out of the heap, as the daemon keeps it (sidecar/localindex.py).
    index = LocalIndex(config.sidecar_state_dir or None)
    try:
        return _sync_indexed(config, store, root, started, dry_run, report_path, lease, timers, checksum, index)
    finally:
        index.close()


def _sync_indexed(config: Config, store: Store, root: Path, started: float, dry_run: bool,
                  report_path: Path | None, lease, timers: Timers, checksum: bool,
                  index: LocalIndex) -> tuple[dict[str, Any], int]:
    # Nothing changed on either side since the last clean sync: its parity stands
    # (sidecar/checkpoint.py). --checksum always reads everything; --dry-run writes
    # nothing, not even the checkpoint's fence, so it checks in full.
    outcome = checkpoint.Outcome(None, "--checksum reads everything" if checksum else "--dry-run checks in full")
    if not checksum and not dry_run:
        with timers.time("checkpoint"):
            outcome = checkpoint.check(config, store, root, index)
        if outcome.report is not None:
            return _unchanged(config, store, outcome, started, report_path, timers)
        log.info("full sync: %s", outcome.reason)
    # The point the next checkpoint starts from, taken before anything is read.
    point = None if dry_run else outcome.point or checkpoint.now_point(store)
    rec = Reconciler(config, index, wants_resolved=lambda rel: False)  # sync holds no divergence book
    book = quick.Book(rec.cfg, read_all=checksum, entries=index.map("quick"))
    with timers.time("load_state"):
        state = build_state(book.collect(store.iter_state()), index)
    bar = _progress(None, "scanning")  # the file count is only known once walked

    def progress(rel: str) -> None:
        bar.update(1)
        if lease is not None:
            lease.ensure()  # a long scan keeps its lease

    with timers.time("scan"):
        ops, view = rec.scan(state, "sync", progress=progress, book=book)
    bar.close()
    held, _, _ = rec.drain()
    result: ApplyResult | None = None
    if not dry_run:
        writer = Writer(config, store, state)
        now = utcnow()
        with timers.time("write"):
            result, events = writer.write(ops, "sync", view.problems, now, summarize_inserts=True)
        events += [note_event("bad_input", p.path, "sync", now, reason=p.reason) for p in view.problems]
        events += [note_event("divergence_held", d.path, "sync", now, reason=d.reason, count=d.count,
                              keys=sorted(d.keys)[:50]) for d in held]
        # What was written verbatim this time (BSON cannot hold it, or a layout
        # the documents cannot be rendered back into): path, key, reason.
        written = {op.rel for op in result.applied if op.action != "stat"}
        events += [note_event("stored_raw", item["path"], "sync", now, reason=item["reason"],
                              **({"key": item["key"]} if "key" in item else {}))
                   for item in view.stored_raw if item["path"] in written]
        with timers.time("events"):
            writer.record(events)
    book.log_drift()
    for d in held:
        log.warning("divergence held: %s (%s, %d); MongoDB keeps the data", d.path, d.reason, d.count)
    for p in view.problems:
        log.warning("bad input: %s (%s)", p.message, p.reason)
    if view.stored_raw:
        log.info("%d files or entries are stored raw (kept verbatim; see the report's stored_raw)",
                 len(view.stored_raw))
    # The write path never deletes a GridFS blob; the ones no manifest and no
    # (unexpired) tombstone names any more go here.
    blobs_collected = 0 if dry_run else store.gc_blobs()
    with timers.time("report"):
        report = build_report(config, store, view, result, dry_run, ops, state)
    report["divergences"] = _summary(held)
    report["quick_check"] = book.report(view.files_read, view.files_quick_checked, view.bytes_read)
    report["blobs_collected"] = blobs_collected
    not_saved = "--dry-run" if dry_run else "no change-stream point"
    if point is not None and not dry_run:
        not_saved = "not clean (a mismatch, refused or failed writes, held, bad or foreign input)"
        if checkpoint.clean(report, result, held, view, store, blobs_collected):
            point, not_saved = checkpoint.accounted(store, point, result.applied if result else [])
            if point is not None:
                not_saved = checkpoint.save(config, store, point, report)
    report["checkpoint"] = {"used": False, "reason": outcome.reason, "saved": not not_saved,
                            **({"not_saved": not_saved} if not_saved else {})}
    report["stages"] = timers.snapshot()  # seconds per step (sidecar/timers.py)
    report["duration_s"] = round(time.monotonic() - started, 3)
    path = report_path or root / REPORT_REL
    _write_report(path, report)
    report["report_path"] = str(path)
    return report, (0 if report["parity"]["all_match"] else 1)


def _unchanged(config: Config, store: Store, outcome: checkpoint.Outcome, started: float,
               report_path: Path | None, timers: Timers) -> tuple[dict[str, Any], int]:
    """The report of a sync that found nothing changed since the checkpoint: its
    parity, no file read, nothing written (sidecar/checkpoint.py); the checkpoint
    moves on to the point just asked."""
    report: dict[str, Any] = {
        "generated_at": utcnow().isoformat(),
        "dry_run": False,
        "data_dir": str(config.data_dir),
        "db_name": config.mongodb_db_name,
    }
    report.update(outcome.report or {})
    report["writes"] = writes_summary(None)
    report["bad_input"] = {"count": 0, "by_reason": {}, "items": []}
    report["fresh_volume"] = False
    report["foreign_documents"] = []
    report["divergences"] = _summary([])
    book = quick.Book(quick.fingerprint(config.sidecar_redact_keys))
    book.counts[quick.CLEAN] = outcome.files
    report["quick_check"] = book.report(0, outcome.files, 0)
    report["blobs_collected"] = 0
    moved = checkpoint.move_on(config, store, outcome)
    report["checkpoint"] = {"used": True, "since": outcome.since.isoformat() if outcome.since else None,
                            "reason": None, "saved": moved}
    report["stages"] = timers.snapshot()
    report["duration_s"] = round(time.monotonic() - started, 3)
    path = report_path or Path(config.data_dir) / REPORT_REL
    _write_report(path, report)
    report["report_path"] = str(path)
    return report, 0


def build_report(config: Config, store: Store, view: SourceView, result: ApplyResult | None,
                 dry_run: bool, ops: list[Op], state) -> dict[str, Any]:
    report: dict[str, Any] = {
        "generated_at": utcnow().isoformat(),
        "dry_run": dry_run,
        "data_dir": str(config.data_dir),
        "db_name": config.mongodb_db_name,
    }
    # The state was read from MongoDB at the start and updated with every
    # acknowledged write (w=majority by default): no second full read needed.
    report.update(parity.compute(store, view, state=state))
    report["writes"] = writes_summary(result)
    if dry_run:
        report["planned_writes"] = count_ops(ops)
    report["bad_input"] = {
        "count": len(view.problems),
        "by_reason": dict(Counter(p.reason for p in view.problems)),
        "items": [p.as_dict() for p in view.problems[:200]],
    }
    report["fresh_volume"] = view.fresh_volume
    # Documents in MongoDB that someone else wrote in a shape we cannot use: skipped.
    report["foreign_documents"] = list(store.foreign_skipped)
    return report


def _write_report(path: Path, report: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path.parent, path.name, json.dumps(report, indent=2, default=str).encode())


def _summary(held: list[Divergence]) -> dict[str, Any]:
    book = DivergenceBook()
    for div in held:
        book.hold(div)
    return book.summary()


def find_divergences(config: Config, store: Store) -> tuple[Reconciler, Any, list[Divergence]]:
    """What MongoDB holds that the data dir lacks, read now: every such removal is
    held (this process saw none of them happen)."""
    check_root(config.data_dir)
    store.ping()
    state = build_state(store.iter_state())
    rec = Reconciler(config)
    _scan(rec, state, "divergences", "scanning", view_only=False, hashes=False)
    held, _, _ = rec.drain()
    return rec, state, held


def run_divergences(config: Config, store: Store, accept: list[str] | None = None,
                    accept_all: bool = False) -> tuple[dict[str, Any], int]:
    """``memory-sidecar divergences [accept [PATH...]]``. Listing exits 1 while any is held."""
    if not accept and not accept_all:
        held = find_divergences(config, store)[2]
        return _summary(held), (1 if held else 0)
    check_root(config.data_dir)
    store.ping()
    lease = Lease(store, "divergences accept", config.sidecar_lease_ttl_s)
    lease.acquire()  # LeaseHeld: the CLI hands the accept to the daemon that holds it
    try:
        # Read under the lease: nothing changes MongoDB behind our back now.
        rec, state, held = find_divergences(config, store)
        return _accept(config, store, rec, state, held, accept, accept_all)
    finally:
        lease.release()


def _accept(config: Config, store: Store, rec: Reconciler, state, held: list[Divergence],
            accept: list[str] | None, accept_all: bool) -> tuple[dict[str, Any], int]:
    wanted = None if accept_all else set(accept or [])
    chosen = [d for d in held if wanted is None or d.path in wanted]
    unknown = sorted(wanted - {d.path for d in held}) if wanted is not None else []
    ops: list[Op] = []
    accepted: list[Divergence] = []
    for div in chosen:
        div_ops = rec.accept_ops(div, state)
        if div_ops is not None:
            ops.extend(div_ops)
            accepted.append(div)
    problems: list[Problem] = []
    writer = Writer(config, store, state)
    now = utcnow()
    result, events = writer.write(ops, "accept", problems, now)
    events += [note_event("divergence_accepted", d.path, "accept", now, reason=d.reason, count=d.count,
                          keys=sorted(d.keys)[:50]) for d in accepted]
    writer.record(events)
    report = {
        "accepted": [d.path for d in accepted],
        "not_held": unknown,
        "writes": writes_summary(result),
        "failed": [p.as_dict() for p in problems],
    }
    return report, (0 if not unknown and not problems else 1)


def run_parity(config: Config, store: Store) -> tuple[dict[str, Any], int]:
    """Parity only: the same comparison as sync, no writes, no report file."""
    check_root(config.data_dir)
    store.ping()
    state = build_state(store.iter_state())
    rec = Reconciler(config)
    ops, view = _scan(rec, state, "parity", "comparing")
    held, _, _ = rec.drain()
    report = build_report(config, store, view, None, True, ops, state)
    report["divergences"] = _summary(held)
    report.pop("planned_writes", None)
    report["pending_writes"] = len(ops)
    return report, (0 if report["parity"]["all_match"] else 1)
