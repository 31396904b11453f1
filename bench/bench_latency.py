"""Benchmark: file-close → document visible in MongoDB, at a steady write rate.

Everything runs as separate processes on this machine, the way it would in a Pod:

  server    SecantusDB (``secantusd-py``) on a free loopback port, fresh storage dir
  daemon    ``python -m sidecar run`` (watcher → pending → batched writer), fresh data dir
  writer    a process writing exactly like Mentorix, ``Path.write_text(json.dumps(p, indent=2))``,
            paced by absolute deadlines (t0 + i/rate, never "sleep 1/rate"): episode files
            ``episodes/skeleton_<id>.json`` in rotation, plus learner signals (the three hub
            files rewritten, one entry changed in each). Every payload carries a unique
            ``bench_seq``; the close time is ``time.time()`` right after write_text returns.
  observer  a process holding a change stream on the database (``db.watch()``, insert and
            replace events, only the marker fields projected); the wall time the event carrying
            a marker arrives is when that write became visible. A probe thread inserts a
            timestamped document 5x/s straight into MongoDB: its insert → event time is the
            observation channel's own floor. ``--observer poll`` polls an indexed marker
            instead (the fallback when change streams are unavailable; it loads the server).

latency = visible - closed. A write counts as visible at the first change event for the
same document (episode run_id, or hub_type/item_key) carrying its marker *or a newer one*
(the sidecar mirrors state, not a log: two writes to one file before a flush are one
document write); such writes are counted as "superseded". "lost" = documents that do not
hold their last write once the load stops and a drain period passes (checked by a direct
read); "unobserved" = writes the observer never saw (0 with a change stream). Rotation
sizes make a file rewritten only every ~1.4 s (episodes) and a learner every ~25 s, so
superseding needs latencies above that.

Litestream is not installable here and is not run: its figures are the analytical ones for
its default 1 s sync interval (a write waits uniformly in [0, 1 s] for the next sync, plus
the upload): p50 ≈ 500 ms, p90 ≈ 900 ms, p99 ≈ 990 ms before upload time.

    .venv/bin/python bench/bench_latency.py                          # 200 writes/s for 30 s
    .venv/bin/python bench/bench_latency.py --rate 50 --seconds 15   # another rate
    .venv/bin/python bench/bench_latency.py --profile                # + the daemon's stage timers

Results: tables on stdout and bench/out/bench_latency.json. A benchmark, not a test:
nothing here asserts timings (the target line says PASS or MISS).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import random
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
sys.path.insert(0, str(ROOT))  # testkit/, the support package shared with the tests

import pymongo  # noqa: E402

from testkit import corpus  # noqa: E402
from testkit.measure import code_version, cpu_seconds, pct, proc_status, system_busy  # noqa: E402
from testkit.mongo import TestServer  # noqa: E402
from testkit.process import DaemonProcess  # noqa: E402

EPISODES = "episodic_memory"
HUBS = "memory_hubs"
PROBE = "bench_probe"
HUB_FILES = corpus.HUBS
TARGET_P99_MS = 100.0
# Litestream, default sync-interval 1 s: latency ~ U(0, 1 s) + upload (analytical, not measured).
LITESTREAM_MS = {"p50": 500.0, "p90": 900.0, "p99": 990.0, "max": 1000.0}


# --- processes we start -------------------------------------------------------------------


def sidecar(workdir: Path, data_dir: Path, url: str, db_name: str,
            extra_env: dict[str, str] | None = None) -> DaemonProcess:
    """``python -m sidecar run`` as a subprocess, configured by env only (product defaults)."""
    return DaemonProcess(workdir, data_dir, url, db_name, socket=workdir / "sidecar.sock", log_name="sidecar.log",
                         defaults={}, **(extra_env or {}))


def stage_table(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The daemon's own stage timers (``/memory/status`` ``sidecar.stages``, sidecar/timers.py),
    with the mean per call: what the daemon spent in flush, plan, write(.collection), events,
    queue_wait (a path's first change -> the flush that took it) and reconcile."""
    out = {}
    for name, t in sorted((status.get("sidecar") or {}).get("stages", {}).items()):
        calls = t.get("calls") or 0
        out[name] = {"calls": calls, "total_s": round(t["total_s"], 3),
                     "mean_ms": round(1000 * t["total_s"] / calls, 2) if calls else None, "max_ms": t["max_ms"]}
    return out


def bulk_histogram(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """sidecar_bulk_write_seconds over a window: count, mean, bucket-bound quantiles."""
    prefix = "sidecar_bulk_write_seconds"
    count = after.get(f"{prefix}_count", 0) - before.get(f"{prefix}_count", 0)
    total = after.get(f"{prefix}_sum", 0) - before.get(f"{prefix}_sum", 0)
    buckets = []
    for key, value in after.items():
        if key.startswith(f"{prefix}_bucket"):
            le = key.split('le="', 1)[1].split('"', 1)[0]
            bound = float("inf") if le == "+Inf" else float(le)
            buckets.append((bound, value - before.get(key, 0)))
    buckets.sort()

    def q(frac: float) -> float | None:
        for bound, cum in buckets:
            if count and cum >= frac * count:
                return bound
        return None
    writes = {k: after[k] - before.get(k, 0) for k in after if k.startswith("sidecar_writes_total")}
    return {"flushes": int(count), "mean_ms": round(1000 * total / count, 2) if count else None,
            "p50_le_ms": _ms(q(0.5)), "p90_le_ms": _ms(q(0.9)), "p99_le_ms": _ms(q(0.99)),
            "buckets": {str(b): int(c) for b, c in buckets},
            # sidecar_writes_total also counts "track" ops (state-only, nothing sent to MongoDB).
            "documents_written": int(sum(v for k, v in writes.items() if 'op="track"' not in k)),
            "writes_by_collection_op": {k.split("{", 1)[1].rstrip("}"): int(v) for k, v in writes.items() if v}}


def _ms(seconds: float | None) -> float | None:
    if seconds is None:
        return None
    return seconds if seconds == float("inf") else round(seconds * 1000, 2)


# --- the load -------------------------------------------------------------------------------


OLD_MTIME = 1_577_836_800  # 2020-01-01


def make_plan(args) -> dict[str, Any]:
    """Names, sizes and the write pattern, shared by set-up and the writer process."""
    rng = random.Random(args.seed)
    episode_ids = [corpus._id(rng) for _ in range(args.files)]
    learners = [corpus._id(rng) for _ in range(args.learners)]
    period = round(3 / args.hub_share) if args.hub_share > 0 else 0
    return {"episode_ids": episode_ids, "learners": learners, "period": max(period, 3) if period else 0,
            "seed": args.seed, "old_mtime": bool(getattr(args, "old_mtime", False))}


def kind_of(i: int, plan: dict[str, Any]) -> tuple[str, int]:
    """Write i of the schedule: ("episode", n) or ("hub", hub index); one learner signal
    = 3 consecutive hub writes, once per ``period`` writes."""
    period = plan["period"]
    if period:
        pos = i % period
        if pos >= period - 3:
            return "hub", pos - (period - 3)
    return "episode", 0


def seed_files(data_dir: Path, plan: dict[str, Any]) -> None:
    """The files exist before the daemon starts (its start-up reconcile mirrors them)."""
    rng = random.Random(plan["seed"])
    now = corpus.datetime.now(corpus.timezone.utc)
    for run_id in plan["episode_ids"]:
        corpus.write_json(data_dir / "episodes" / f"skeleton_{run_id}.json", corpus.episode(rng, run_id, now))
    for hub in HUB_FILES:
        data = {}
        for learner in plan["learners"]:
            data[learner] = corpus.hub_values(rng)[hub]
        corpus.write_json(data_dir / "structured_hubs" / f"{hub}.json", data)
    corpus.write_json(data_dir / "snapshot.json", {"timestamp": "2026-02-21T05:29:24.762951", "active_runs": []})


def writer_main(data_dir: str, plan: dict[str, Any], rate: float, total: int, warm_n: int, start_at, ready,
                result_path: str) -> None:
    """The legacy writer: own process, paced by absolute deadlines."""
    root = Path(data_dir)
    rng = random.Random(plan["seed"] + 1)
    hubs = {hub: json.loads((root / "structured_hubs" / f"{hub}.json").read_text()) for hub in HUB_FILES}
    episodes = {}
    for run_id in plan["episode_ids"]:
        episodes[run_id] = json.loads((root / "episodes" / f"skeleton_{run_id}.json").read_text())
    ep_ids, learners = plan["episode_ids"], plan["learners"]
    n_episode = n_signal = 0
    records = []  # (seq, kind, entity, sched, started, closed)
    signal_learner = None
    # Start half a second after set-up, so the schedule never begins with a catch-up burst.
    mono0 = time.monotonic() + 0.5
    wall0 = time.time() + 0.5
    start_at.value = wall0
    ready.set()
    cpu_at_warm = time.process_time()
    for seq in range(total):
        if seq == warm_n:
            cpu_at_warm = time.process_time()
        due = mono0 + seq / rate
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        started = time.monotonic()
        kind, hub_i = kind_of(seq, plan)
        if kind == "episode":
            run_id = ep_ids[n_episode % len(ep_ids)]
            n_episode += 1
            payload = episodes[run_id]
            payload["status"] = rng.choice(("running", "completed"))
            payload["updated_at"] = corpus.datetime.now(corpus.timezone.utc).replace(tzinfo=None).isoformat()
            payload["bench_seq"] = seq
            path = root / "episodes" / f"skeleton_{run_id}.json"
            entity = run_id
        else:
            hub = HUB_FILES[hub_i]
            if hub_i == 0:
                signal_learner = learners[n_signal % len(learners)]
                n_signal += 1
            value = corpus.hub_values(rng, n_signal)[hub]
            value["bench_seq"] = seq
            hubs[hub][signal_learner] = value
            payload = hubs[hub]
            path = root / "structured_hubs" / f"{hub}.json"
            entity = f"{hub}/{signal_learner}"
        if plan.get("old_mtime"):
            # A prepared file moved into place with a 2020 mtime (mv, cp -p, rsync -a, tar x):
            # newer content, older mtime. The temp name is ignored (*.tmp).
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(json.dumps(payload, indent=2), encoding="utf-8")
            os.utime(tmp, (OLD_MTIME, OLD_MTIME))
            os.replace(tmp, path)
        else:
            path.write_text(json.dumps(payload, indent=2), encoding="utf-8")
        closed = time.time()
        records.append((seq, kind, entity, wall0 + (due - mono0), started - due, closed))
    Path(result_path).write_text(json.dumps({"records": records, "cpu_s": time.process_time(),
                                             "cpu_measured_s": time.process_time() - cpu_at_warm}))


def observer_main(url: str, db_name: str, mode: str, ready, stop, result_path: str, window: int) -> None:
    """Change-stream (or polling) observer: records (arrival wall time, entity, seq)."""
    client = pymongo.MongoClient(url, serverSelectionTimeoutMS=5000, tz_aware=True)
    db = client[db_name]
    seen: list[tuple[float, str, str, int]] = []
    probes: list[tuple[float, float]] = []
    error = None
    used = mode
    try:
        if mode == "stream":
            # The sidecar writes entity documents with insert/replace, whose events carry the
            # whole document: no updateLookup needed; only the marker fields travel back.
            pipeline = [{"$match": {"ns.coll": {"$in": [EPISODES, HUBS, PROBE]},
                                    "operationType": {"$in": ["insert", "replace"]}}},
                        {"$project": {"ns.coll": 1, "documentKey": 1, "fullDocument.bench_seq": 1,
                                      "fullDocument.payload.bench_seq": 1, "fullDocument.t0": 1}}]
            try:
                stream = db.watch(pipeline, max_await_time_ms=100)
            except pymongo.errors.OperationFailure as exc:
                error = f"change streams unavailable ({exc}); polling instead"[:500]
                used = "poll"
            else:
                with stream:
                    ready.set()
                    while not stop.is_set():
                        change = stream.try_next()
                        if change is None:
                            continue
                        now = time.time()
                        doc = change.get("fullDocument") or {}
                        coll = change["ns"]["coll"]
                        if coll == PROBE:
                            probes.append((doc.get("t0", now), now))
                            continue
                        seq = doc.get("bench_seq") if coll == EPISODES else (doc.get("payload") or {}).get("bench_seq")
                        if isinstance(seq, int) and seq >= 0:
                            seen.append((now, coll, str(change["documentKey"]["_id"]), seq))
        if used == "poll":
            # Fallback: indexed marker, polled in a loop. Only documents whose marker is within
            # ``window`` writes of the newest seen are fetched, so a write that becomes visible
            # later than that, or is superseded between two polls, goes unobserved (counted).
            colls = {EPISODES: "bench_seq", HUBS: "payload.bench_seq"}
            for coll, field in colls.items():
                db[coll].create_index(field)
            last: dict[str, int] = {}
            hi = -1
            probe_hi = -1
            ready.set()
            while not stop.is_set():
                for coll, field in colls.items():
                    for doc in db[coll].find({field: {"$gt": hi - window}}, {field: 1}):
                        now = time.time()
                        seq = doc["bench_seq"] if coll == EPISODES else doc["payload"]["bench_seq"]
                        key = str(doc["_id"])
                        if last.get(key) != seq:
                            last[key] = seq
                            seen.append((now, coll, key, seq))
                            hi = max(hi, seq)
                for doc in db[PROBE].find({"_id": {"$gt": probe_hi}}):
                    probes.append((doc["t0"], time.time()))
                    probe_hi = max(probe_hi, doc["_id"])
    except pymongo.errors.PyMongoError as exc:
        error = f"{type(exc).__name__}: {exc}"[:500]
    finally:
        ready.set()
        Path(result_path).write_text(json.dumps({"seen": seen, "probes": probes, "error": error, "mode": used,
                                                 "cpu_s": time.process_time()}))
        client.close()


# --- analysis ----------------------------------------------------------------------------------


def summary(values_ms: list[float]) -> dict[str, Any]:
    if not values_ms:
        return {"count": 0}
    return {"count": len(values_ms), "p50": round(pct(values_ms, .5), 2), "p90": round(pct(values_ms, .9), 2),
            "p99": round(pct(values_ms, .99), 2), "max": round(max(values_ms), 2),
            "mean": round(statistics.fmean(values_ms), 2), "min": round(min(values_ms), 2)}


def match(records: list, seen: list) -> list[dict[str, Any]]:
    """Per write: visible = first event for its document with a marker >= its own."""
    by_entity: dict[str, list[tuple[float, int]]] = {}
    for t, _coll, key, seq in seen:
        by_entity.setdefault(key, []).append((t, seq))
    for events in by_entity.values():
        events.sort()
    out = []
    for seq, kind, entity, sched, late, closed in records:
        visible = exact = None
        for t, s in by_entity.get(entity, ()):
            if s >= seq:
                visible = t
                exact = s == seq
                break
        out.append({"seq": seq, "kind": kind, "closed": closed, "sched": sched, "late": late,
                    "visible": visible, "exact": exact})
    return out


def final_markers(records: list) -> dict[str, int]:
    last: dict[str, int] = {}
    for seq, _kind, entity, *_ in records:
        last[entity] = seq
    return last


def wait_final(url: str, db_name: str, last: dict[str, int], timeout: float) -> tuple[int, float]:
    """Poll MongoDB until every document holds its last marker; (missing, seconds waited)."""
    client = pymongo.MongoClient(url, serverSelectionTimeoutMS=5000)
    db = client[db_name]
    t0 = time.monotonic()
    missing = len(last)
    try:
        while True:
            have: dict[str, int] = {}
            for doc in db[EPISODES].find({"bench_seq": {"$exists": True}}, {"bench_seq": 1}):
                have[str(doc["_id"])] = doc["bench_seq"]
            for doc in db[HUBS].find({"payload.bench_seq": {"$exists": True}}, {"payload.bench_seq": 1}):
                have[str(doc["_id"])] = doc["payload"]["bench_seq"]
            missing = sum(1 for k, s in last.items() if have.get(k) != s)
            if not missing or time.monotonic() - t0 > timeout:
                return missing, time.monotonic() - t0
            time.sleep(0.2)
    finally:
        client.close()


def probe_loop(url: str, db_name: str, stop: threading.Event, every: float = 0.2) -> None:
    """Direct inserts into a probe collection: what the observation channel alone adds."""
    client = pymongo.MongoClient(url, serverSelectionTimeoutMS=5000)
    coll = client[db_name][PROBE]
    n = 0
    try:
        while not stop.wait(every):
            coll.insert_one({"_id": n, "t0": time.time()})
            n += 1
    except pymongo.errors.PyMongoError:
        pass
    finally:
        client.close()


def fmt(v: Any, unit: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.1f}{unit}"
    return f"{v}{unit}"


def prefill_files(data_dir: Path, args) -> dict[str, Any] | None:
    """``--prefill N``: N more files beside the rotation's, the shape bench_memory.py generates
    (episode skeletons and run files, ``--prefill-episode-share`` episodes), written before the
    daemon starts: the per-event cost with a large data dir (issue 13 point 5)."""
    if not args.prefill:
        return None
    from bench_memory import write_bulk  # here, not at the top: bench_memory imports this module
    n_ep = int(args.prefill * args.prefill_episode_share)
    t0 = time.monotonic()
    write_bulk(data_dir, n_ep, args.prefill - n_ep, random.Random(args.seed + 101),
               corpus.datetime(2026, 2, 1, tzinfo=corpus.timezone.utc))
    took = time.monotonic() - t0
    print(f"prefilled {args.prefill} files ({n_ep} episodes, {args.prefill - n_ep} runs) in {took:.1f} s", flush=True)
    return {"files": args.prefill, "episodes": n_ep, "runs": args.prefill - n_ep, "write_seconds": round(took, 1)}


def wait_reconciled(daemon: DaemonProcess, timeout: float) -> float:
    """Until the start-up reconcile is done and nothing is pending; seconds since the daemon started."""
    from bench_memory import is_reconciled
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon.proc.poll() is not None:
            raise RuntimeError(f"daemon exited ({daemon.proc.returncode}):\n{daemon.log_tail()}")
        resp = daemon.get("/memory/status")
        if resp is not None and resp.status == 200 and is_reconciled(resp.json().get("sidecar", {})):
            return time.monotonic() - daemon.started_at
        time.sleep(0.2)
    raise RuntimeError(f"the start-up reconcile was not done after {timeout} s")


# --- main -------------------------------------------------------------------------------------


def run(args) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="bench-latency-", dir=args.data_root))
    data_dir = work / "data" / "system"
    data_dir.mkdir(parents=True)
    server = TestServer.in_dir(work)
    daemon = None
    ctx = mp.get_context("spawn")
    procs: list[mp.Process] = []
    probe_stop = threading.Event()
    try:
        plan = make_plan(args)
        seed_files(data_dir, plan)
        prefill = prefill_files(data_dir, args)
        hub_bytes = (data_dir / "structured_hubs" / f"{HUB_FILES[0]}.json").stat().st_size
        ep_bytes = statistics.fmean((data_dir / "episodes" / f"skeleton_{r}.json").stat().st_size
                                    for r in plan["episode_ids"][:50])
        print(f"work dir {work}; {args.files} episode files (~{ep_bytes / 1024:.1f} KiB), "
              f"3 hub files x {args.learners} learners ({hub_bytes / 1024:.0f} KiB each)", flush=True)
        server.start()
        daemon_env = {"SIDECAR_LOG_LEVEL": args.daemon_log_level}
        daemon_env.update(kv.split("=", 1) for kv in args.daemon_env)
        daemon = sidecar(work, data_dir, server.url, args.db, daemon_env)
        daemon.start()
        startup_s = daemon.wait_ready(timeout=600)
        print(f"daemon ready in {startup_s:.2f} s", flush=True)
        reconciled_s = None
        if args.prefill:
            # Measure the steady state: the start-up reconcile of the prefilled files done, nothing pending.
            reconciled_s = wait_reconciled(daemon, args.prefill_timeout)
            print(f"start-up reconcile done, nothing pending, {reconciled_s:.1f} s after start", flush=True)

        ready, stop = ctx.Event(), ctx.Event()
        obs_path = work / "observer.json"
        observer = None
        if args.observer != "none":
            observer = ctx.Process(target=observer_main, name="bench-observer",
                                   args=(server.url, args.db, args.observer, ready, stop, str(obs_path),
                                         int(args.rate * 2)))
            observer.start()
            procs.append(observer)
            if not ready.wait(30):
                raise RuntimeError("observer did not start")
            prober = threading.Thread(target=probe_loop, args=(server.url, args.db, probe_stop), daemon=True)
            prober.start()

        warm_n = int(args.rate * args.warmup)
        total = warm_n + int(args.rate * args.seconds)
        writer_path = work / "writer.json"
        start_value, writer_ready = ctx.Value("d", 0.0), ctx.Event()
        writer = ctx.Process(target=writer_main, name="bench-writer",
                             args=(str(data_dir), plan, args.rate, total, warm_n, start_value, writer_ready,
                                   str(writer_path)))
        writer.start()
        procs.append(writer)
        if not writer_ready.wait(60):
            raise RuntimeError("writer did not start")
        start_at = start_value.value
        print(f"writing {total} files at {args.rate:g}/s ({args.warmup:g} s warm-up + {args.seconds:g} s "
              f"measured), observer: {args.observer}", flush=True)

        # CPU/metrics window = the measured part (after warm-up) of the writer's schedule.
        time.sleep(max(0.0, start_at + args.warmup - time.time()))
        pids = {"server": server.pid, "daemon": daemon.pid, "writer": writer.pid,
                "observer": observer.pid if observer else None}
        cpu0 = {k: cpu_seconds(p) for k, p in pids.items()}
        sys0 = system_busy()
        m0 = daemon.metrics()
        t_cpu0 = time.monotonic()
        rss_samples = []
        while writer.is_alive():
            writer.join(0.5)
            if daemon.proc.poll() is None:
                rss_samples.append(proc_status(daemon.pid).get("VmRSS", 0))
        t_cpu1 = time.monotonic()
        cpu1 = {k: cpu_seconds(p) for k, p in pids.items()}
        sys1 = system_busy()
        if writer.exitcode != 0:
            raise RuntimeError(f"writer exited with {writer.exitcode}")
        wdata = json.loads(writer_path.read_text())
        records = wdata["records"]

        missing, drain_s = wait_final(server.url, args.db, final_markers(records), args.drain)
        m1 = daemon.metrics()
        time.sleep(0.5)
        probe_stop.set()
        stop.set()
        if observer is not None:
            observer.join(30)
            odata = json.loads(obs_path.read_text())
        else:
            odata = {"seen": [], "probes": [], "error": None, "cpu_s": 0.0}
        if odata["error"]:
            print(f"observer error: {odata['error']}", flush=True)
        resp = daemon.get("/parity", timeout=120)
        parity = resp.json() if resp is not None and resp.status == 200 else {"error": resp and resp.status}
        resp = daemon.get("/memory/status")
        stages = stage_table(resp.json()) if resp is not None and resp.status == 200 else {}
        rss_after = proc_status(daemon.pid)
        daemon.stop()
        rows = match(records, odata["seen"])
        measured = [r for r in rows if r["seq"] >= warm_n]
        lat = {"all": [], "episode": [], "hub": []}
        unobserved = superseded = 0
        for r in measured:
            if observer is None:
                continue
            if r["visible"] is None:
                unobserved += 1
                continue
            if not r["exact"]:
                superseded += 1
            ms = (r["visible"] - r["closed"]) * 1000
            lat["all"].append(ms)
            lat[r["kind"]].append(ms)
        late_ms = [r["late"] * 1000 for r in measured]
        span = measured[-1]["closed"] - measured[0]["sched"] if measured else 0
        window = t_cpu1 - t_cpu0
        cpu = {k: round(100 * (cpu1[k] - cpu0[k]) / window, 1) if cpu0[k] is not None and cpu1[k] is not None
               else None for k in pids}
        cpu["writer"] = round(100 * wdata["cpu_measured_s"] / window, 1)
        busy = 100 * (sys1[0] - sys0[0]) / max(1, sys1[1] - sys0[1]) * os.cpu_count()
        cpu["machine_total"] = round(busy, 1)
        cpu["other_processes"] = round(busy - sum(v for k, v in cpu.items() if v is not None and k in pids), 1)
        probes = [(a - t0) * 1000 for t0, a in odata["probes"]]
        per_second = []
        if measured:
            t_first = measured[0]["sched"]
            buckets: dict[int, list[float]] = {}
            for r in measured:
                if r["visible"] is not None:
                    buckets.setdefault(int(r["sched"] - t_first), []).append((r["visible"] - r["closed"]) * 1000)
            per_second = [{"second": s, "count": len(v), "p50": round(pct(v, .5), 1), "p99": round(pct(v, .99), 1),
                           "max": round(max(v), 1)} for s, v in sorted(buckets.items())]
        result = {
            "benchmark": "bench_latency",
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "platform": platform.platform(), "loadavg_after": Path("/proc/loadavg").read_text().split()[:3],
                        "note": "server, daemon, writer and observer all share these CPUs"},
            "code": code_version(),
            "settings": {"rate": args.rate, "seconds": args.seconds, "warmup": args.warmup, "files": args.files,
                         "learners": args.learners, "hub_share": args.hub_share, "observer": args.observer,
                         "episode_file_bytes": round(ep_bytes), "hub_file_bytes": hub_bytes,
                         "daemon_log_level": args.daemon_log_level, "daemon_env": args.daemon_env,
                         "profile": args.profile, "prefill": args.prefill,
                         "prefill_episode_share": args.prefill_episode_share},
            "startup_seconds": round(startup_s, 3),
            "prefill": prefill,
            "reconciled_seconds": round(reconciled_s, 2) if reconciled_s is not None else None,
            # Daemon (and server) CPU over the measured window per measured write: the per-event cost.
            "cpu_ms_per_write": {k: (round(1000 * (cpu1[k] - cpu0[k]) / len(measured), 3)
                                     if measured and cpu0[k] is not None and cpu1[k] is not None else None)
                                 for k in ("daemon", "server")},
            "latency_ms": {k: summary(v) for k, v in lat.items()},
            # lost = documents that never got their last write (data missing after the drain);
            # unobserved = writes the observer never saw visible (a measurement gap; 0 with a
            # change stream); superseded = seen only through a newer write to the same document.
            "lost": missing,
            "unobserved": unobserved,
            "superseded": superseded,
            "final_markers_missing": missing,
            "drain_seconds": round(drain_s, 3),
            "writer": {"writes": len(measured), "achieved_rate": round(len(measured) / span, 1) if span else None,
                       "schedule_lateness_ms": summary(late_ms), "cpu_s": round(wdata["cpu_s"], 2)},
            "observer": {"events": len(odata["seen"]), "mode": odata.get("mode", args.observer),
                         "error": odata["error"], "cpu_s": round(odata["cpu_s"], 2),
                         "probe_insert_to_event_ms": summary(probes)},
            "cpu_percent_of_one_core": cpu,
            "daemon_rss_kib": {"max_during_run": max(rss_samples) if rss_samples else None,
                               "after": rss_after},
            "daemon_stages": stages,
            "daemon_bulk_write_seconds": bulk_histogram(m0, m1),
            "parity_all_match": parity.get("parity", {}).get("all_match"),
            "litestream_analytical_ms": LITESTREAM_MS,
            "target_p99_ms": TARGET_P99_MS,
            "per_second": per_second,
            "latencies_ms_sorted": [round(v, 2) for v in sorted(lat["all"])],
        }
        p99 = result["latency_ms"]["all"].get("p99")
        ok = p99 is not None and p99 <= TARGET_P99_MS and missing == 0 and unobserved == 0
        result["verdict"] = ("PASS" if ok else "MISS") if p99 is not None else "n/a"
        return result
    finally:
        probe_stop.set()
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(10)
        if daemon is not None:
            daemon.stop()
        server.stop()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def report(r: dict[str, Any]) -> None:
    s = r["settings"]
    print()
    if s["daemon_env"]:
        print(f"VARIANT: daemon env {s['daemon_env']}")
    print(f"file close -> visible in MongoDB ({s['rate']:g} writes/s for {s['seconds']:g} s after "
          f"{s['warmup']:g} s warm-up; observer: {s['observer']}; {r['machine']['cpus']} CPUs shared by "
          "server + daemon + writer + observer)")
    print(f"{'':<10}{'count':>7}{'p50':>9}{'p90':>9}{'p99':>9}{'max':>9}{'mean':>9}   (ms)")
    for name in ("all", "episode", "hub"):
        x = r["latency_ms"][name]
        if x["count"]:
            print(f"{name:<10}{x['count']:>7}{x['p50']:>9.1f}{x['p90']:>9.1f}{x['p99']:>9.1f}{x['max']:>9.1f}"
                  f"{x['mean']:>9.1f}")
    a = r["latency_ms"]["all"]
    if not a.get("count"):
        print(f"no latency measured (observer: {s['observer']}); documents missing their last marker after "
              f"{r['drain_seconds']:.1f} s: {r['final_markers_missing']}")
        a = {}
    print(f"lost writes (documents without their last write after a {r['drain_seconds']:.1f} s drain): {r['lost']}   "
          f"unobserved: {r['unobserved']}   superseded before a flush (seen via a newer write): {r['superseded']}   "
          f"/parity all_match: {r['parity_all_match']}")
    print()
    print("vs Litestream, default 1 s sync interval — ANALYTICAL figure (write waits U[0, 1 s] for the next "
          "sync, upload time not included), not a run: Litestream is not installable here")
    print(f"{'':<10}{'sidecar':>10}{'litestream':>12}{'ratio':>10}")
    for q in ("p50", "p90", "p99", "max"):
        mine, theirs = a.get(q), LITESTREAM_MS[q]
        ratio = f"{theirs / mine:.1f}x" if mine else "-"
        print(f"{q:<10}{fmt(mine):>10}{theirs:>12.0f}{ratio:>10}")
    verdict = r["verdict"]
    print(f"target p99 <= {TARGET_P99_MS:.0f} ms (0 lost, 0 unobserved): {verdict} (p99 {a.get('p99')} ms)")
    print()
    w = r["writer"]
    lw = w["schedule_lateness_ms"]
    print(f"writer: {w['writes']} writes, achieved {w['achieved_rate']}/s; start lateness vs its absolute deadline "
          f"p50 {fmt(lw.get('p50'))} / p99 {fmt(lw.get('p99'))} / max {fmt(lw.get('max'))} ms")
    o = r["observer"]
    pr = o["probe_insert_to_event_ms"]
    print(f"observer ({o['mode']}): {o['events']} marker events; channel floor (direct insert -> observed, n={pr['count']}): "
          f"p50 {fmt(pr.get('p50'))} / p99 {fmt(pr.get('p99'))} / max {fmt(pr.get('max'))} ms")
    c = r["cpu_percent_of_one_core"]
    print("CPU over the measured window, % of one core: " + ", ".join(f"{k} {fmt(v)}" for k, v in c.items())
          + f"  (machine has {r['machine']['cpus']} cores = {100 * r['machine']['cpus']}%)")
    b = r["daemon_bulk_write_seconds"]
    print(f"daemon /metrics sidecar_bulk_write_seconds (measured window): {b['flushes']} flushes, mean "
          f"{fmt(b['mean_ms'])} ms, p50 <= {fmt(b['p50_le_ms'])} ms, p90 <= {fmt(b['p90_le_ms'])} ms, "
          f"p99 <= {fmt(b['p99_le_ms'])} ms (bucket bounds); {b['documents_written']} documents written")
    cw = r.get("cpu_ms_per_write") or {}
    print(f"CPU per measured write: daemon {cw.get('daemon')} ms, server {cw.get('server')} ms")
    if r.get("prefill"):
        print(f"prefill: {r['prefill']['files']} files; start-up reconcile done {r['reconciled_seconds']} s after "
              "start (the measurement began after it)")
    rss = r["daemon_rss_kib"]
    print(f"daemon RSS during the run: max {fmt((rss['max_during_run'] or 0) / 1024)} MiB, "
          f"VmHWM {rss['after'].get('VmHWM', 0) / 1024:.1f} MiB; start-up {r['startup_seconds']} s")
    stages = r.get("daemon_stages")
    if stages and r["settings"]["profile"]:
        print("daemon stage timers (/memory/status stages, whole run incl. start-up; queue_wait = a path's "
              "first change -> the flush that took it):")
        print(f"  {'stage':<28}{'calls':>7}{'total s':>9}{'mean ms':>9}{'max ms':>9}")
        for name, t in stages.items():
            print(f"  {name:<28}{t['calls']:>7}{t['total_s']:>9.2f}{fmt(t['mean_ms']):>9}{t['max_ms']:>9.1f}")
    worst = sorted(r["per_second"], key=lambda x: -x["p99"])[:3]
    if worst:
        print("worst seconds by p99: " + "; ".join(f"t={x['second']}s p99 {x['p99']} ms max {x['max']} ms"
                                                   for x in worst))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=200.0, help="writes per second (default 200)")
    ap.add_argument("--seconds", type=float, default=30.0, help="measured duration (default 30)")
    ap.add_argument("--warmup", type=float, default=2.0, help="writes before the measured window (default 2 s)")
    ap.add_argument("--files", type=int, default=200, help="episode files in rotation (default 200)")
    ap.add_argument("--learners", type=int, default=500, help="entries per hub file (default 500)")
    ap.add_argument("--hub-share", type=float, default=0.3,
                    help="fraction of writes that are hub-file writes, as learner signals of 3 (default 0.3)")
    ap.add_argument("--observer", choices=("stream", "poll", "none"), default="stream",
                    help="how visibility is seen; 'none' = no observer (to measure what observing costs)")
    ap.add_argument("--drain", type=float, default=30.0, help="max wait for the last writes after the load")
    ap.add_argument("--db", default="bench")
    ap.add_argument("--daemon-log-level", default="INFO")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--old-mtime", action="store_true",
                    help="every write is a prepared file renamed into place with a 2020 mtime (issue 11)")
    ap.add_argument("--prefill", type=int, default=0, metavar="N",
                    help="N more files (bench_memory's episode skeletons and run files) in the data dir before "
                         "the daemon starts; the measurement starts once its start-up reconcile is done and "
                         "nothing is pending (default 0: none, and no such wait)")
    ap.add_argument("--prefill-episode-share", type=float, default=0.9,
                    help="episodes vs runs among the prefilled files (default 0.9, issue 13's 500k shape)")
    ap.add_argument("--prefill-timeout", type=float, default=3600.0,
                    help="max seconds to wait for the start-up reconcile of the prefilled files")
    ap.add_argument("--data-root", type=Path, default=None,
                    help="where the temp work dir goes (default: the system temp dir; e.g. /dev/shm)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (data, logs)")
    ap.add_argument("--profile", action="store_true",
                    help="print the daemon's own stage timers (/memory/status stages; always in the JSON)")
    ap.add_argument("--daemon-env", action="append", default=[], metavar="KEY=VALUE",
                    help="extra env for the daemon, e.g. SIDECAR_FLUSH_INTERVAL_MS=1 (repeatable)")
    ap.add_argument("--json", type=Path, default=OUT / "bench_latency.json")
    args = ap.parse_args()
    result = run(args)
    report(result)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(f"\nJSON: {args.json}")
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(main())
