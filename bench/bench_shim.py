"""Benchmark: what the in-process shim costs the API, and how fast its path lands in MongoDB.

Four measurements (issue 4, "Benchmark"), each variant in a fresh subprocess activated the
production way (``PYTHONPATH=shim/activate`` + ``SIDECAR_SHIM=async|sync|off``), so no
install/uninstall state can leak between variants:

1. Overhead of async mode on ``Path.write_text`` of a 10 kB hub JSON
   (``json.dumps(indent=2)`` of a realistic hub dict, one entry changed per call) into the
   data dir, against the same process without the shim:
   * **paced**: one call every ``--interval-ms`` (2 ms), like a request handler, so the shim's
     sender thread runs in the gaps; per-call latency of write_text, median and p90 (this is
     what a request pays);
   * **tight loop**: back-to-back calls, writes/s (on a single GIL-bound process the sender
     thread's CPU shows up here, which a paced API does not feel).
   Variants without the daemon: no shim, async with the sidecar down (nothing listening on
   the socket), async into a minimal sink (a process that reads and discards frames: the
   shim's own cost without the daemon's CPU competing). With the daemon up (SecantusDB +
   ``python -m sidecar run``): no shim (watcher only) and async (shim + watcher).
2. Reads (``open(p, "r").read()`` of a file in the data dir) and writes outside the dir
   (``Path.write_text`` of the same 10 kB), shim vs no shim.
3. Shim path latency, close → visible in MongoDB: a paced writer rewrites a 10 kB hub file
   (one learner entry changed, carrying a unique ``bench_seq``); a change stream
   (``db.watch()``) on the hub collection records when each marker arrives; each document's
   ``_sidecar.source`` says which path landed it (``shim`` or ``watch``). Twice: the product
   daemon (watcher still running: whichever path lands first is what the user gets), and the
   same daemon with its watcher stopped once ready (the shim path alone).
4. Sync mode: per-call latency of write_text returning (includes the MongoDB ack).

Rounds: variants alternate within a round and the whole thing is repeated ``--rounds`` times
(medians across rounds are reported; ratios are taken per round against the baseline of the
same round). Between runs the bench waits until the daemon and the server are idle again.
This is a 2-core machine shared by the writer, the daemon and SecantusDB (a Python server),
and it is noisy: read the figures as ±5-10 %.

    .venv/bin/python bench/bench_shim.py              # full run (~4-6 min)
    .venv/bin/python bench/bench_shim.py --quick      # smoke run (~1 min)

Results: tables on stdout and bench/out/bench_shim.json. A benchmark, not a test: nothing
here asserts timings (target lines say PASS or MISS).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # testkit/, the support package shared with the tests

from testkit.measure import code_version, cpu_seconds, pct, stop_process  # noqa: E402
from testkit.mongo import TestServer  # noqa: E402
from testkit.process import RUN, DaemonProcess, clean_env  # noqa: E402

OUT = ROOT / "bench" / "out"
ACTIVATE = ROOT / "shim" / "activate"

HUB_REL = "structured_hubs/learner_preferences.json"  # measurement 1, 2 (reads)
LAT_HUB = "operating_context"  # measurement 3, 4
LAT_REL = f"structured_hubs/{LAT_HUB}.json"
TARGET_SIZE = 10 * 1024
POOL = 64  # distinct payloads cycled through (each differs from the previous one)

# The shim path alone: the same daemon, in-process in its own process, whose watcher and
# root monitor are stopped (their public stop()) once it is ready. Measurement only.
SHIM_ONLY_DAEMON = [sys.executable, "-m", "testkit.daemon", "--no-watcher"]


# --- the payload ---------------------------------------------------------------------------------


def hub_dict(seed: int, size: int = TARGET_SIZE) -> tuple[dict[str, dict], list[str]]:
    """A learner_preferences-like hub: learner id → small dict, ~``size`` bytes as written."""
    import random

    from testkit import corpus

    rng = random.Random(seed)
    hub: dict[str, dict] = {}
    keys: list[str] = []
    while len(json.dumps(hub, indent=2)) < size:
        key = corpus._id(rng)
        value = corpus.hub_values(rng, len(keys))["learner_preferences"]
        value["bench_seq"] = -1
        hub[key] = value
        keys.append(key)
    return hub, keys


def payload_pool(seed: int = 1) -> list[str]:
    """POOL serialisations of one hub, each with one entry changed against the previous."""
    import random

    hub, keys = hub_dict(seed)
    rng = random.Random(seed + 1)
    out = []
    for i in range(POOL):
        hub[keys[i % len(keys)]]["last_score"] = round(rng.random(), 4)
        out.append(json.dumps(hub, indent=2))
    return out


# --- worker (a fresh "legacy API" process per variant) --------------------------------------------


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    import builtins

    perf = time.perf_counter
    perf_ns = time.perf_counter_ns
    shim_mod = sys.modules.get("shim") or sys.modules.get("mentorix_shim")
    installed = bool(getattr(builtins.open, "__mentorix_shim__", False))
    op = spec["op"]
    n, warm = spec["n"], spec["warm"]
    out: dict[str, Any] = {"op": op, "installed": installed}
    target = Path(spec["target"])

    watch = spec.get("watch_pids") or []

    def cpu_mark() -> tuple[float, float, float, float]:
        # wall, this process (all threads), this thread, the sidecar's processes
        return perf(), time.process_time(), time.thread_time(), sum(cpu_seconds(p) or 0.0 for p in watch)

    def cpu_report(m0: tuple[float, float, float, float], calls: int) -> None:
        m1 = cpu_mark()
        wall = m1[0] - m0[0]
        out["wall_s"] = wall
        # CPU of the shim's other threads (the sender) per call, and what the
        # sidecar (daemon + server) burnt meanwhile, as a share of one CPU.
        out["other_threads_cpu_us_per_call"] = ((m1[1] - m0[1]) - (m1[2] - m0[2])) / calls * 1e6
        out["sidecar_cpu_pct"] = (m1[3] - m0[3]) / wall * 100 if watch else None

    if op in ("write_paced", "write_tight", "outside_write", "sync_paced"):
        pool = payload_pool()
        write_text = target.write_text
        if op in ("write_paced", "sync_paced"):
            import random

            rng = random.Random(1)
            interval = spec["interval_s"]
            jitter = spec.get("jitter", 0.0)
            tcpu_ns = time.thread_time_ns
            lat = []
            cpu = []  # CPU of this thread per call: no preemption, no GIL waits in it
            late = 0
            due = perf() + 0.05
            m0 = None
            for i in range(warm + n):
                if i == warm:
                    m0 = cpu_mark()
                delay = due - perf()
                if delay > 0:
                    time.sleep(delay)
                data = pool[i % POOL]
                c0 = tcpu_ns()
                t0 = perf_ns()
                write_text(data, encoding="utf-8")
                t1 = perf_ns()
                c1 = tcpu_ns()
                if i >= warm:
                    lat.append(t1 - t0)
                    cpu.append(c1 - c0)
                # Jitter keeps the writer's phase from locking onto the shim's
                # own 2 ms timers (linger, poll): requests do not arrive on a grid.
                due += interval * (1.0 + jitter * (2.0 * rng.random() - 1.0))
                now = perf()
                if due < now:  # fell behind: no catch-up burst, like a request handler
                    late += 1
                    due = now + interval
            cpu_report(m0, n)
            out["lat_ns"] = lat
            out["cpu_ns"] = cpu
            out["late"] = late
        else:
            for i in range(warm):
                write_text(pool[i % POOL], encoding="utf-8")
            if op == "outside_write":
                lat = []
                for i in range(n):
                    data = pool[i % POOL]
                    t0 = perf_ns()
                    write_text(data, encoding="utf-8")
                    lat.append(perf_ns() - t0)
                out["lat_ns"] = lat
            m0 = cpu_mark()
            for i in range(n):
                write_text(pool[i % POOL], encoding="utf-8")
            cpu_report(m0, n)
            out["elapsed_s"] = out["wall_s"]
            out["ops_per_s"] = n / out["elapsed_s"]
    elif op == "read":
        name = str(target)
        for _ in range(warm):
            open(name, "r").read()
        lat = []
        for _ in range(n):
            t0 = perf_ns()
            open(name, "r").read()
            lat.append(perf_ns() - t0)
        out["lat_ns"] = lat
        t0 = perf()
        for _ in range(n):
            open(name, "r").read()
        out["elapsed_s"] = perf() - t0
        out["ops_per_s"] = n / out["elapsed_s"]
    elif op == "latency":
        # Close → visible: each write carries a unique marker in one learner's entry.
        hub, keys = hub_dict(spec["seed"])
        interval = spec["interval_s"]
        records = []
        due = perf() + 0.05
        for i in range(warm + n):
            key = keys[i % len(keys)]
            hub[key]["bench_seq"] = i
            data = json.dumps(hub, indent=2)
            delay = due - perf()
            if delay > 0:
                time.sleep(delay)
            target.write_text(data, encoding="utf-8")
            closed = time.time()
            if i >= warm:
                records.append((i, key, closed))
            due = max(due + interval, perf())
        out["records"] = records
    else:
        raise SystemExit(f"unknown op {op!r}")

    if shim_mod is not None and installed:
        t0 = perf()
        out["flushed"] = shim_mod.flush(30.0)
        out["flush_s"] = perf() - t0
        out["shim_stats"] = shim_mod.stats()
        cfg = shim_mod.config()
        out["shim_mode"] = cfg.mode if cfg else None
    out["cpu_s"] = time.process_time()
    return out


# --- a minimal sink: reads and discards frames (the shim's cost without the daemon's) ---------------


def sink_main(path: str) -> None:
    if os.path.exists(path):
        os.unlink(path)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    os.chmod(path, 0o600)
    srv.listen(16)

    def drain(conn: socket.socket) -> None:
        with conn:
            while conn.recv(1 << 20):
                pass

    while True:
        conn, _ = srv.accept()
        threading.Thread(target=drain, args=(conn,), daemon=True).start()


# --- processes ---------------------------------------------------------------------------------------


def fs_type(path: Path) -> str:
    """The file system type of the mount holding ``path`` (from /proc/mounts)."""
    best, kind = "", "?"
    try:
        real = os.path.realpath(path)
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            mnt = parts[1]
            if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                best, kind = mnt, parts[2]
    except OSError:
        pass
    return f"{kind} ({best})"


def shim_daemon(workdir: Path, data_dir: Path, socket_path: Path, url: str, db_name: str,
                watcher: bool = True) -> DaemonProcess:
    """``python -m sidecar run`` (or the shim-only daemon), configured by env only."""
    return DaemonProcess(workdir, data_dir, url, db_name, socket=socket_path,
                         log_name="daemon.log" if watcher else "daemon-shim-only.log",
                         cmd=RUN if watcher else SHIM_ONLY_DAEMON, defaults={"SIDECAR_LOG_LEVEL": "WARNING"})


def wait_quiet(pids: list[int], threshold: float = 0.04, window: float = 0.25, timeout: float = 90.0) -> float:
    """Wait until the given processes together use < threshold of a CPU for two windows."""
    t0 = time.monotonic()
    calm = 0
    while time.monotonic() - t0 < timeout:
        before = sum(cpu_seconds(p) or 0.0 for p in pids)
        time.sleep(window)
        used = (sum(cpu_seconds(p) or 0.0 for p in pids) - before) / window
        calm = calm + 1 if used < threshold else 0
        if calm >= 2:
            break
    return time.monotonic() - t0


def run_worker(spec: dict[str, Any], shim_mode: str, data_dir: Path, socket_path: Path,
               extra_env: dict[str, str] | None = None, cwd: Path | None = None) -> dict[str, Any]:
    env = clean_env()
    env["PYTHONPATH"] = str(ACTIVATE) + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else "")
    env.update(SIDECAR_SHIM=shim_mode, RUNTIME_DATA_DIR=str(data_dir), SIDECAR_SOCKET=str(socket_path))
    env.update(extra_env or {})
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)],
                          env=env, cwd=str(cwd or data_dir.parent), capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {spec['op']} ({shim_mode}) failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    expect = shim_mode in ("async", "sync")
    if result["installed"] != expect:
        raise RuntimeError(f"worker {spec['op']}: shim installed={result['installed']}, expected {expect}")
    return result


# --- statistics ---------------------------------------------------------------------------------------


def lat_summary_us(lat_ns: list[int]) -> dict[str, float]:
    us = [x / 1000 for x in lat_ns]
    return {"n": len(us), "p50": pct(us, .5), "p90": pct(us, .9), "p99": pct(us, .99),
            "mean": statistics.fmean(us), "min": min(us), "max": max(us)}


def lat_summary_ms(values_ms: list[float]) -> dict[str, Any]:
    if not values_ms:
        return {"n": 0}
    return {"n": len(values_ms), "p50": pct(values_ms, .5), "p90": pct(values_ms, .9),
            "p99": pct(values_ms, .99), "max": max(values_ms), "min": min(values_ms),
            "mean": statistics.fmean(values_ms)}


def med(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


# --- measurement 1 and 2: overhead -----------------------------------------------------------------


def overhead_phase(name: str, variants: list[tuple[str, str, Path]], ops: list[str], rounds: int,
                   specs: dict[str, dict], data_dir: Path, quiet_pids: list[int]) -> dict[str, Any]:
    """variants: (label, SIDECAR_SHIM, socket). The first is the baseline of each round."""
    runs: dict[str, dict[str, list[dict]]] = {op: {label: [] for label, _, _ in variants} for op in ops}
    for r in range(rounds):
        for op in ops:
            order = variants if r % 2 == 0 else list(reversed(variants))
            for label, mode, sock in order:
                if quiet_pids:
                    wait_quiet(quiet_pids)
                res = run_worker({**specs[op], "watch_pids": quiet_pids}, mode, data_dir, sock)
                summary: dict[str, Any] = {"ops_per_s": res.get("ops_per_s"), "late": res.get("late"),
                                           "shim_stats": res.get("shim_stats"), "flush_s": res.get("flush_s"),
                                           "sidecar_cpu_pct": res.get("sidecar_cpu_pct"),
                                           "other_threads_cpu_us_per_call": res.get("other_threads_cpu_us_per_call")}
                if "lat_ns" in res:
                    summary["lat_us"] = lat_summary_us(res["lat_ns"])
                if "cpu_ns" in res:
                    summary["cpu_us"] = lat_summary_us(res["cpu_ns"])
                runs[op][label].append(summary)
                print(f"  [{name}] round {r + 1}/{rounds} {op:<16} {label:<26} "
                      + (f"p50 {summary['lat_us']['p50']:7.1f} µs  p90 {summary['lat_us']['p90']:7.1f} µs  "
                         if "lat_us" in summary else "")
                      + (f"{summary['ops_per_s']:9.0f} ops/s" if summary["ops_per_s"] else ""), flush=True)
    base = variants[0][0]
    table: dict[str, Any] = {}
    for op in ops:
        table[op] = {}
        for label, _, _ in variants:
            rs = runs[op][label]
            row: dict[str, Any] = {}
            if rs[0].get("lat_us"):
                for q in ("p50", "p90", "p99"):
                    row[f"{q}_us"] = med([x["lat_us"][q] for x in rs])
                    row[f"{q}_ratio"] = med([x["lat_us"][q] / b["lat_us"][q] for x, b in zip(rs, runs[op][base])])
            if rs[0].get("cpu_us"):
                row["cpu_p50_us"] = med([x["cpu_us"]["p50"] for x in rs])
                row["cpu_p50_ratio"] = med([x["cpu_us"]["p50"] / b["cpu_us"]["p50"]
                                            for x, b in zip(rs, runs[op][base])])
            if rs[0].get("ops_per_s"):
                row["ops_per_s"] = med([x["ops_per_s"] for x in rs])
                # throughput ratio expressed as a cost: time per call vs the baseline
                row["tight_ratio"] = med([b["ops_per_s"] / x["ops_per_s"] for x, b in zip(rs, runs[op][base])])
            for key in ("sidecar_cpu_pct", "other_threads_cpu_us_per_call"):
                row[key] = med([x.get(key) for x in rs])
            stats = [x["shim_stats"] for x in rs if x.get("shim_stats")]
            if stats:
                row["shim_stats_total"] = {k: sum(s.get(k, 0) for s in stats) for k in stats[0]}
            row["late_total"] = sum(x.get("late") or 0 for x in rs)
            table[op][label] = row
    return {"rounds": runs, "table": table, "baseline": base}


# --- measurement 3: close → visible ----------------------------------------------------------------


class Observer(threading.Thread):
    """Change stream on the hub collection: (arrival wall time, _id, bench_seq, source)."""

    def __init__(self, url: str, db_name: str) -> None:
        super().__init__(daemon=True)
        self.url, self.db_name = url, db_name
        self.seen: list[tuple[float, str, int, str]] = []
        self.probes: list[float] = []
        self.ready = threading.Event()
        self.stop_flag = threading.Event()
        self.error: str | None = None

    def run(self) -> None:
        import pymongo

        client = pymongo.MongoClient(self.url, serverSelectionTimeoutMS=5000)
        db = client[self.db_name]
        try:
            pipeline = [{"$match": {"ns.coll": {"$in": ["memory_hubs", "bench_probe"]},
                                    "operationType": {"$in": ["insert", "replace", "update"]}}}]
            with db.watch(pipeline, full_document="updateLookup", max_await_time_ms=50) as stream:
                self.ready.set()
                while not self.stop_flag.is_set():
                    change = stream.try_next()
                    if change is None:
                        continue
                    now = time.time()
                    doc = change.get("fullDocument") or {}
                    if change["ns"]["coll"] == "bench_probe":
                        if "t0" in doc:
                            self.probes.append((now - doc["t0"]) * 1000)
                        continue
                    seq = (doc.get("payload") or {}).get("bench_seq")
                    if isinstance(seq, int) and seq >= 0:
                        source = (doc.get("_sidecar") or {}).get("source", "?")
                        self.seen.append((now, str(change["documentKey"]["_id"]), seq, source))
        except pymongo.errors.PyMongoError as exc:
            self.error = f"{type(exc).__name__}: {exc}"[:300]
            self.ready.set()
        finally:
            client.close()


def probe_observer(url: str, db_name: str, count: int = 40) -> None:
    """Inserts stamped with time.time(): how late the change stream itself reports."""
    import pymongo

    client = pymongo.MongoClient(url, serverSelectionTimeoutMS=5000)
    try:
        for i in range(count):
            client[db_name]["bench_probe"].insert_one({"_id": f"{time.time_ns()}-{i}", "t0": time.time()})
            time.sleep(0.02)
    finally:
        client.close()


def latency_run(label: str, daemon: DaemonProcess, server: TestServer, db_name: str, data_dir: Path, socket_path: Path,
                n: int, interval_ms: float, seed: int) -> dict[str, Any]:
    wait_quiet([daemon.proc.pid, server.proc.pid])
    obs = Observer(server.url, db_name)
    obs.start()
    if not obs.ready.wait(30) or obs.error:
        raise RuntimeError(f"change stream unavailable: {obs.error}")
    probe_observer(server.url, db_name)
    m0 = daemon.metrics()
    spec = {"op": "latency", "n": n, "warm": 30, "interval_s": interval_ms / 1000, "seed": seed,
            "target": str(data_dir / LAT_REL)}
    res = run_worker(spec, "async", data_dir, socket_path)
    records = res["records"]
    last = {key: seq for seq, key, _ in records}
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        have: dict[str, int] = {}
        for _t, doc_id, seq, _src in list(obs.seen):
            have[doc_id] = max(have.get(doc_id, -1), seq)
        if all(have.get(f"{LAT_HUB}/{k}", -1) >= s for k, s in last.items()):
            break
        time.sleep(0.05)
    probe_observer(server.url, db_name)
    obs.stop_flag.set()
    obs.join(5)
    m1 = daemon.metrics()

    by_doc: dict[str, list[tuple[float, int, str]]] = {}
    for t, doc_id, seq, src in obs.seen:
        by_doc.setdefault(doc_id, []).append((t, seq, src))
    for events in by_doc.values():
        events.sort()
    lat, lat_shim, lat_watch = [], [], []
    won = {"shim": 0, "watch": 0, "other": 0}
    lost = superseded = 0
    for seq, key, closed in records:
        hit = next(((t, s, src) for t, s, src in by_doc.get(f"{LAT_HUB}/{key}", ()) if s >= seq), None)
        if hit is None:
            lost += 1
            continue
        t, s, src = hit
        ms = (t - closed) * 1000
        lat.append(ms)
        if s != seq:
            superseded += 1
        if src == "shim":
            won["shim"] += 1
            lat_shim.append(ms)
        elif src == "watch":
            won["watch"] += 1
            lat_watch.append(ms)
        else:
            won["other"] += 1
    shim_events = {k.split('status="', 1)[1].rstrip('"}'): v - m0.get(k, 0)
                   for k, v in m1.items() if k.startswith("sidecar_shim_events_total{")}
    return {"label": label, "writes": len(records), "interval_ms": interval_ms, "latency_ms": lat_summary_ms(lat),
            "landed_by": won, "latency_when_shim_won_ms": lat_summary_ms(lat_shim),
            "latency_when_watcher_won_ms": lat_summary_ms(lat_watch), "lost": lost, "superseded": superseded,
            "observer_floor_ms": lat_summary_ms(obs.probes), "shim_stats": res.get("shim_stats"),
            "daemon_shim_events": shim_events}


def sync_run(label: str, daemon: DaemonProcess, server: TestServer, data_dir: Path, socket_path: Path, n: int,
             interval_ms: float) -> dict[str, Any]:
    wait_quiet([daemon.proc.pid, server.proc.pid])
    spec = {"op": "sync_paced", "n": n, "warm": 30, "interval_s": interval_ms / 1000,
            "target": str(data_dir / HUB_REL)}
    res = run_worker(spec, "sync", data_dir, socket_path, {"SIDECAR_SHIM_ON_FAILURE": "open"})
    lat = [x / 1e6 for x in res["lat_ns"]]
    return {"label": label, "writes": n, "interval_ms": interval_ms, "latency_ms": lat_summary_ms(lat),
            "shim_stats": res.get("shim_stats")}


# --- report ---------------------------------------------------------------------------------------------


def fmt(v: Any, spec: str = ".1f", none: str = "-") -> str:
    return none if v is None else format(v, spec)


def print_report(result: dict[str, Any]) -> None:
    if result["overhead"]:
        print_overhead(result)
    if result["latency"]:
        print_latency(result)
    print(f"data dir on {result['data_fs']}; load average at start {result['machine']['loadavg_at_start']}")
    code = result.get("code") or {}
    print(f"code: {code.get('head')}" + (" + uncommitted changes" if code.get("uncommitted_changes") else ""))
    print(f"machine: {result['machine']['cpus']} CPUs, {result['machine']['python']}; "
          f"written to {result['out']}")


def print_overhead(result: dict[str, Any]) -> None:
    a = result["args"]
    print()
    print(f"== 1. async overhead: Path.write_text of a {result['payload_bytes']} B hub JSON into the data dir "
          f"(median of {a['rounds']} rounds)")
    print(f"   paced: one call every {a['interval_ms']} ms ± {a['jitter'] * 100:.0f} %, {a['paced_n']} calls; "
          f"tight: {a['tight_n']} calls back to back")
    def pct_(v: Any) -> str:
        return "-" if v is None else f"{v:.0f} %"

    print(f"   {'variant':<26} {'p50':>9} {'p90':>9} {'x p50':>6} {'x p90':>6} {'CPU p50':>9} {'x CPU':>6} "
          f"{'sender':>9} {'sidecar':>8}")
    for phase in ("no_daemon", "daemon_up"):
        ph = result["overhead"][phase]["table"]
        for label, p in ph["write_paced"].items():
            sender = p.get("other_threads_cpu_us_per_call") if p.get("shim_stats_total") else None
            print(f"   {label:<26} {fmt(p['p50_us'])+' µs':>9} {fmt(p['p90_us'])+' µs':>9} "
                  f"{fmt(p['p50_ratio'], '.2f')+'x':>6} {fmt(p['p90_ratio'], '.2f')+'x':>6} "
                  f"{fmt(p.get('cpu_p50_us'))+' µs':>9} {fmt(p.get('cpu_p50_ratio'), '.2f')+'x':>6} "
                  f"{fmt(sender) + ' µs' if sender is not None else '-':>9} {pct_(p.get('sidecar_cpu_pct')):>8}")
    up = result["overhead"]["daemon_up"]["table"]["write_paced"]["async, sidecar up"]
    sink = result["overhead"]["no_daemon"]["table"]["write_paced"]["async, discard-only sink"]
    print(f"   target paced p50 ≤ 1.3x: into a discard-only sink {sink['p50_ratio']:.2f}x "
          f"({'PASS' if sink['p50_ratio'] <= 1.3 else 'MISS'}); with the daemon up {up['p50_ratio']:.2f}x "
          f"({'PASS' if up['p50_ratio'] <= 1.3 else 'MISS'})")
    print("   x = variant / no shim, same phase and round. CPU = this thread's CPU time per call (no preemption,")
    print("   no GIL wait in it). sender = CPU of the shim's sender thread per call (shares the GIL; runs in the")
    print("   gaps). sidecar = daemon + SecantusDB CPU while the calls ran, % of one core (2 cores in all).")
    print()
    print(f"   {'variant':<26} {'tight/s':>8} {'x tight':>8} | {'x p50 @' + fmt(a['slow_interval_ms'], 'g') + ' ms':>12} "
          f"{'sidecar':>8} | shim frames sent/dropped (all rounds)")
    for phase in ("no_daemon", "daemon_up"):
        ph = result["overhead"][phase]["table"]
        for label, t in ph["write_tight"].items():
            p = ph["write_paced"][label]
            slow = ph.get("write_paced_slow", {}).get(label)
            st, st_t = p.get("shim_stats_total"), t.get("shim_stats_total")
            drops = ""
            if st:
                d = st["dropped_queue_full"] + st["dropped_unavailable"]
                d_t = st_t["dropped_queue_full"] + st_t["dropped_unavailable"]
                drops = f"paced {st['sent']}/{d}, tight {st_t['sent']}/{d_t}"
            print(f"   {label:<26} {fmt(t['ops_per_s'], '.0f'):>8} {fmt(t['tight_ratio'], '.2f')+'x':>8} | "
                  f"{fmt(slow['p50_ratio'], '.2f') + 'x' if slow else '-':>12} "
                  f"{pct_(slow.get('sidecar_cpu_pct')) if slow else '-':>8} | {drops}")
    print("   tight: back-to-back calls, the sender thread's CPU competes for the API's GIL (x = time per call).")
    print()
    print("== 2. reads in the data dir and writes outside it (daemon up, async shim)")
    print(f"   {'operation':<42} {'no shim p50':>11} {'shim p50':>9} {'x p50':>6} {'x p90':>6} {'x tight':>8}")
    ph = result["overhead"]["daemon_up"]["table"]
    for op, what in (("read", 'open(p, "r").read(), 10 kB, in the data dir'),
                     ("outside_write", "Path.write_text 10 kB outside the dir")):
        b = ph[op]["no shim, daemon up"]
        s = ph[op]["async, sidecar up"]
        print(f"   {what:<42} {fmt(b['p50_us'])+' µs':>11} {fmt(s['p50_us'])+' µs':>9} "
              f"{fmt(s['p50_ratio'], '.2f')+'x':>6} {fmt(s['p90_ratio'], '.2f')+'x':>6} "
              f"{fmt(s['tight_ratio'], '.2f')+'x':>8}")


def print_latency(result: dict[str, Any]) -> None:
    print()
    print("== 3. async shim path: close → visible in MongoDB (change stream), 10 kB hub rewrite")
    print(f"   {'daemon':<34} {'writes':>6} {'p50':>8} {'p90':>8} {'p99':>8} {'max':>8}  landed by shim/watcher"
          f"  lost  obs. floor p50/p99")
    for run in result["latency"]:
        s = run["latency_ms"]
        f = run["observer_floor_ms"]
        print(f"   {run['label']:<34} {run['writes']:>6} {fmt(s.get('p50'))+' ms':>8} {fmt(s.get('p90'))+' ms':>8} "
              f"{fmt(s.get('p99'))+' ms':>8} {fmt(s.get('max'))+' ms':>8}  "
              f"{run['landed_by']['shim']:>5}/{run['landed_by']['watch']:<5}{'':>12} {run['lost']:>4}  "
              f"{fmt(f.get('p50'))}/{fmt(f.get('p99'))} ms")
    for run in result["latency"]:
        p99 = run["latency_ms"].get("p99")
        print(f"   target p99 ≤ 25 ms ({run['label']}): "
              f"{'PASS' if p99 is not None and p99 <= 25 else 'MISS'} ({fmt(p99)} ms)")
    print()
    print("== 4. sync mode: write_text returns after the MongoDB ack, 10 kB hub rewrite")
    print(f"   {'daemon':<34} {'writes':>6} {'p50':>8} {'p90':>8} {'p99':>8} {'max':>8}  sync ok/failed")
    for run in result["sync"]:
        s = run["latency_ms"]
        st = run["shim_stats"] or {}
        print(f"   {run['label']:<34} {run['writes']:>6} {fmt(s['p50'], '.2f')+' ms':>8} "
              f"{fmt(s['p90'], '.2f')+' ms':>8} {fmt(s['p99'], '.2f')+' ms':>8} {fmt(s['max'], '.2f')+' ms':>8}  "
              f"{st.get('sync_ok')}/{st.get('sync_failed')}")
    print()


# --- main -------------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--interval-ms", type=float, default=2.0, help="pacing of the overhead writes")
    ap.add_argument("--jitter", type=float, default=0.5,
                    help="pacing jitter: each gap is interval × U(1-j, 1+j) (0: a strict grid)")
    ap.add_argument("--paced-n", type=int, default=500)
    ap.add_argument("--tight-n", type=int, default=2000)
    ap.add_argument("--read-n", type=int, default=20000)
    ap.add_argument("--slow-interval-ms", type=float, default=20.0,
                    help="a second, slower pacing (sidecar up only): the daemon idles between writes")
    ap.add_argument("--slow-n", type=int, default=150)
    ap.add_argument("--latency-n", type=int, default=500)
    ap.add_argument("--latency-interval-ms", type=float, default=20.0)
    ap.add_argument("--sync-n", type=int, default=500)
    ap.add_argument("--sync-interval-ms", type=float, default=10.0)
    ap.add_argument("--quick", action="store_true", help="2 rounds, fewer calls: a smoke run")
    ap.add_argument("--data-root", default="/dev/shm" if os.access("/dev/shm", os.W_OK) else None,
                    help="where the data dir is created (default /dev/shm, a tmpfs: the shim's CPU cost is "
                         "not hidden behind disk time; pass a disk path to measure on the real file system)")
    ap.add_argument("--only", choices=("all", "overhead", "latency"), default="all",
                    help="overhead: measurements 1-2; latency: measurements 3-4")
    ap.add_argument("--out", type=Path, default=OUT / "bench_shim.json", help="where the JSON goes")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (logs) for inspection")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--sink", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    if args.sink:
        sink_main(args.sink)
        return
    if args.quick:
        args.rounds, args.paced_n, args.tight_n, args.read_n = 2, 400, 800, 5000
        args.latency_n, args.sync_n, args.slow_n = 200, 200, 100

    workdir = Path(tempfile.mkdtemp(prefix="bench_shim_"))
    data_root = Path(tempfile.mkdtemp(prefix="bench_shim_data_", dir=args.data_root))
    data_dir = data_root / "data" / "system"
    (data_dir / "structured_hubs").mkdir(parents=True)
    outside = data_root / "outside"
    outside.mkdir()
    pool = payload_pool()
    (data_dir / HUB_REL).write_text(pool[-1], encoding="utf-8")
    hub, _ = hub_dict(7)
    (data_dir / LAT_REL).write_text(json.dumps(hub, indent=2), encoding="utf-8")
    sock = workdir / "sidecar.sock"
    sink_sock = workdir / "sink.sock"
    dead_sock = workdir / "nobody-listens.sock"
    db_name = f"bench_shim_{os.getpid()}"

    common = {"warm": 100}
    specs = {
        "write_paced": {**common, "op": "write_paced", "n": args.paced_n, "interval_s": args.interval_ms / 1000,
                        "jitter": args.jitter, "target": str(data_dir / HUB_REL)},
        "write_tight": {**common, "op": "write_tight", "n": args.tight_n, "target": str(data_dir / HUB_REL)},
        "read": {"op": "read", "n": args.read_n, "warm": 500, "target": str(data_dir / HUB_REL)},
        "outside_write": {**common, "op": "outside_write", "n": args.tight_n,
                          "target": str(outside / "learner_preferences.json")},
        "write_paced_slow": {"warm": 30, "op": "write_paced", "n": args.slow_n, "jitter": args.jitter,
                             "interval_s": args.slow_interval_ms / 1000, "target": str(data_dir / HUB_REL)},
    }
    result: dict[str, Any] = {
        "args": vars(args), "payload_bytes": len(pool[0].encode()), "code": code_version(),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "loadavg_at_start": os.getloadavg()},
        "data_fs": fs_type(data_root),
        "overhead": {}, "latency": [], "sync": [],
    }
    started = time.monotonic()
    try:
        print(f"work dir {workdir}; payload {result['payload_bytes']} bytes", flush=True)
        if args.only != "latency":
            run_overhead(args, result, specs, workdir, data_dir, sock, sink_sock, dead_sock, db_name)
        if args.only != "overhead":
            run_latency(args, result, workdir, data_dir, sock, db_name)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
            shutil.rmtree(data_root, ignore_errors=True)
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    out = args.out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    result["out"] = str(out.relative_to(ROOT)) if out.is_relative_to(ROOT) else str(out)
    out.write_text(json.dumps(result, indent=2, default=str))
    print_report(result)


def run_overhead(args, result, specs, workdir, data_dir, sock, sink_sock, dead_sock, db_name) -> None:
    """Measurements 1 and 2."""
    sink = server = daemon = None
    try:
        # Phase 1: no daemon. The baseline, the sidecar down, and a discard-only sink.
        sink = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--sink", str(sink_sock)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(200):
            if sink_sock.exists():
                break
            time.sleep(0.02)
        result["overhead"]["no_daemon"] = overhead_phase(
            "no daemon",
            [("no shim, no daemon", "off", dead_sock), ("async, sidecar down", "async", dead_sock),
             ("async, discard-only sink", "async", sink_sock)],
            ["write_paced", "write_tight"], args.rounds, specs, data_dir, [sink.pid])
        stop_process(sink)
        sink = None

        # Phase 2: SecantusDB + the product daemon (watcher + shim socket).
        server = TestServer.in_dir(workdir)
        server.start()
        daemon = shim_daemon(workdir, data_dir, sock, server.url, db_name)
        ready_s = daemon.start().wait_ready(120)
        print(f"daemon ready in {ready_s:.1f}s", flush=True)
        result["overhead"]["daemon_up"] = overhead_phase(
            "daemon up",
            [("no shim, daemon up", "off", sock), ("async, sidecar up", "async", sock)],
            ["write_paced", "write_paced_slow", "write_tight", "read", "outside_write"], args.rounds, specs, data_dir,
            [daemon.proc.pid, server.proc.pid])

    finally:
        stop_process(sink)
        if daemon is not None:
            daemon.stop()
        if server is not None:
            server.stop()


def run_latency(args, result, workdir, data_dir, sock, db_name) -> None:
    """Measurements 3 and 4, each on a fresh server and database: the thousands of versions the
    overhead runs write make SecantusDB (a Python server) slower, and that is not the shim's path."""
    server = daemon = None
    try:
        for label, watcher in (("product (shim + watcher)", True), ("shim alone (watcher stopped)", False)):
            server = TestServer.in_dir(workdir, f"secantus-{'product' if watcher else 'shim-only'}")
            server.start()
            db = f"{db_name}_{'p' if watcher else 's'}"
            daemon = shim_daemon(workdir, data_dir, sock, server.url, db, watcher=watcher)
            daemon.start().wait_ready(120)
            print(f"latency, {label} ...", flush=True)
            result["latency"].append(latency_run(label, daemon, server, db, data_dir, sock,
                                                 args.latency_n, args.latency_interval_ms, 7))
            print(f"sync, {label} ...", flush=True)
            result["sync"].append(sync_run(label, daemon, server, data_dir, sock, args.sync_n, args.sync_interval_ms))
            daemon.stop()
            server.stop()
            daemon = server = None
    finally:
        if daemon is not None:
            daemon.stop()
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
