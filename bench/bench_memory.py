"""Benchmark: resident memory of the daemon watching 50k files, and its start-up time.

Processes (all on this machine, sharing its CPUs):
  server  SecantusDB (``secantusd-py``) on a free loopback port, fresh storage dir
  daemon  ``python -m sidecar run`` as a subprocess (env only), fresh data dir

Steps:
  0. baseline: the daemon on an *empty* data dir (what the imports and threads cost)
  1. generate --files small files the way Mentorix writes them (``json.dumps(indent=2)``):
     episode skeletons in ``episodes/``, run contexts in ``runs/``, three hub files,
     snapshot, scheduled jobs (a few directories: only directories get inotify watches)
  2. cold start: empty database, the start-up reconcile mirrors every file; time to
     /readyz 200 (phases from /readyz reasons) and RSS sampled all along (peak = VmHWM)
  3. RSS (VmRSS, VmHWM, RssAnon from /proc/<pid>/status) after ready + a short settle
  4. a burst of --burst further writes (rewritten episodes + learner signals + new
     files), wait until the daemon has nothing pending and the last write is in
     MongoDB, RSS again
  5. warm restart: stop the daemon, start it again on the same files and database
     (the usual Pod restart): start-up time and RSS after ready

Target: VmRSS of the running daemon ≤ 100 MB (MiB here) after ready, after the burst and
after a warm restart; VmHWM (the peak) is reported against it too. ``--profile`` adds child
runs of the same daemon (``bench/memory_child.py``: in-process through testkit's
``RunningDaemon``, nothing patched): one untraced, reporting the allocators' own account
(pymalloc arenas held vs live blocks, glibc heap in use vs free), the deep size of the
MirrorState and what gc.collect() + malloc_trim(0) give back; one under tracemalloc,
reporting the top allocation sites after ready and the traced peak of the start-up.

    .venv/bin/python bench/bench_memory.py                          # 50k files
    .venv/bin/python bench/bench_memory.py --files 5000 --burst 500 # quick
    .venv/bin/python bench/bench_memory.py --profile --profile-cold # + where the memory goes

Results: tables on stdout and bench/out/bench_memory.json. Not a test: nothing asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
sys.path.insert(0, str(ROOT))  # testkit/, the support package shared with the tests

import pymongo  # noqa: E402

from bench_latency import sidecar  # noqa: E402  (bench/ is on sys.path: the script's dir)
from testkit import corpus  # noqa: E402
from testkit.measure import code_version, cpu_seconds, free_port, proc_status  # noqa: E402
from testkit.mongo import TestServer  # noqa: E402
from testkit.process import DaemonProcess  # noqa: E402

TARGET_MIB = 100.0
MIB = 1024.0  # /proc/<pid>/status is in kB (KiB)


# --- the data ------------------------------------------------------------------------------


def small_episode(rng: random.Random, run_id: str, when: datetime, seq: int | None = None) -> dict:
    nodes = [{"id": f"n{i}", "agent": rng.choice(["planner", "tutor", "critic"]), "status": "completed"}
             for i in range(rng.randint(2, 4))]
    out = {"run_id": run_id, "query": f"Explain {rng.choice(corpus.CONCEPTS)}", "status": "completed",
           "updated_at": when.replace(tzinfo=None).isoformat(), "nodes": nodes,
           "edges": [{"from": a["id"], "to": b["id"]} for a, b in zip(nodes, nodes[1:])]}
    if seq is not None:
        out["bench_seq"] = seq
    return out


def small_run(rng: random.Random, run_id: str, when: datetime) -> dict:
    return {"run_id": run_id, "learner_id": corpus._id(rng), "started_at": when.replace(tzinfo=None).isoformat(),
            "steps": [{"step": i, "tool": rng.choice(["retrieve", "explain", "quiz"])} for i in range(2)]}


def generate(root: Path, files: int, episode_share: float, learners: int, seed: int) -> dict[str, Any]:
    """``files`` files in total: 3 hubs + snapshot + jobs + episodes + runs."""
    rng = random.Random(seed)
    base = datetime(2026, 2, 1, tzinfo=timezone.utc)
    rest = max(0, files - 5)
    n_ep = int(rest * episode_share)
    n_run = rest - n_ep
    episode_ids, learner_ids = [], [corpus._id(rng) for _ in range(learners)]
    for i in range(n_ep):
        run_id = corpus._id(rng)
        episode_ids.append(run_id)
        corpus.write_json(root / "episodes" / f"skeleton_{run_id}.json",
                          small_episode(rng, run_id, base + timedelta(seconds=i)))
    for i in range(n_run):
        run_id = corpus._id(rng)
        corpus.write_json(root / "runs" / f"run_{run_id}.json", small_run(rng, run_id, base + timedelta(seconds=i)))
    for hub in corpus.HUBS:
        corpus.write_json(root / "structured_hubs" / f"{hub}.json",
                          {lid: corpus.hub_values(rng, i)[hub] for i, lid in enumerate(learner_ids)})
    corpus.LegacyWriter(root, seed).save_jobs(20)
    corpus.write_json(root / "snapshot.json", {"timestamp": "2026-02-21T05:29:24.762951", "active_runs": []})
    return {"episodes": n_ep, "runs": n_run, "hub_files": 3, "hub_entries": 3 * learners, "other": 2,
            "total_files": n_ep + n_run + 5, "episode_ids": episode_ids, "learner_ids": learner_ids}


def disk_usage(root: Path) -> tuple[int, int, int]:
    """(files, directories, bytes on disk) under root."""
    nfiles = ndirs = used = 0
    for dirpath, dirnames, filenames in os.walk(root):
        ndirs += 1
        for name in filenames:
            st = os.lstat(os.path.join(dirpath, name))
            nfiles += 1
            used += st.st_blocks * 512
    return nfiles, ndirs, used


def inotify_watches(pid: int) -> int | None:
    """Number of inotify watches the process holds (from /proc/<pid>/fdinfo)."""
    total = 0
    found = False
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:inotify":
                    continue
                found = True
                with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                    total += sum(1 for line in f if line.startswith("inotify wd:"))
            except OSError:
                continue
    except OSError:
        return None
    return total if found else None


# --- measuring -------------------------------------------------------------------------------


def mib(kib: int | None) -> float | None:
    return None if kib is None else round(kib / MIB, 1)


def rss(pid: int) -> dict[str, float | None]:
    st = proc_status(pid)
    return {"VmRSS": mib(st.get("VmRSS")), "VmHWM": mib(st.get("VmHWM")), "RssAnon": mib(st.get("RssAnon")),
            "RssFile": mib(st.get("RssFile")), "VmSize": mib(st.get("VmSize")), "Threads": st.get("Threads")}


def status_json(daemon: DaemonProcess) -> dict[str, Any]:
    resp = daemon.get("/memory/status")
    return resp.json() if resp is not None and resp.status == 200 else {}


def start_measured(daemon: DaemonProcess) -> dict[str, Any]:
    """Start the daemon; sample its RSS while it starts; return timings and the RSS timeline."""
    samples: list[tuple[float, float]] = []

    def sample() -> None:
        if daemon.proc and daemon.proc.poll() is None:
            try:
                samples.append((round(time.monotonic() - daemon.started_at, 2),
                                mib(proc_status(daemon.pid).get("VmRSS"))))
            except OSError:
                pass
    daemon.start()
    ready_s = daemon.wait_ready(timeout=3600, on_poll=sample)
    cpu = cpu_seconds(daemon.pid)
    # Keep a readable timeline: at most ~40 points.
    step = max(1, len(samples) // 40)
    return {"ready_seconds": round(ready_s, 2), "phases_first_seen_s": {k: round(v, 2) for k, v in
                                                                         daemon.phases.items()},
            "cpu_seconds_to_ready": round(cpu, 2) if cpu is not None else None,
            "rss_timeline_mib": samples[::step]}


def settle(daemon: DaemonProcess, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.2)


def burst(root: Path, gen: dict[str, Any], n: int, seed: int) -> dict[str, Any]:
    """n further writes, as fast as this process can write them: 60% rewritten episodes,
    30% hub writes (learner signals), 10% new run files."""
    rng = random.Random(seed + 7)
    writer = corpus.LegacyWriter(root, seed)
    now = datetime.now(timezone.utc)
    t0 = time.monotonic()
    last_seq = {}
    i = 0
    while i < n:
        r = i % 10
        if r < 6:
            run_id = rng.choice(gen["episode_ids"])
            corpus.write_json(root / "episodes" / f"skeleton_{run_id}.json", small_episode(rng, run_id, now, seq=i))
            last_seq[run_id] = i
            i += 1
        elif r < 9:
            writer.learner_signal(rng.choice(gen["learner_ids"]), i)
            i += 3
        else:
            writer.save_run()
            i += 1
    return {"writes": i, "seconds": round(time.monotonic() - t0, 2), "last_seq": last_seq}


def wait_mirrored(daemon: DaemonProcess, url: str, db_name: str, last_seq: dict[str, int], timeout: float) -> float:
    """Until nothing is pending and every rewritten episode shows its last marker."""
    client = pymongo.MongoClient(url, serverSelectionTimeoutMS=5000)
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < timeout:
            sidecar = status_json(daemon).get("sidecar", {})
            if sidecar.get("pending") == 0:
                have = {d["_id"]: d.get("bench_seq") for d in client[db_name]["episodic_memory"].find(
                    {"bench_seq": {"$exists": True}}, {"bench_seq": 1})}
                if all(have.get(k) == s for k, s in last_seq.items()):
                    return round(time.monotonic() - t0, 2)
            time.sleep(0.25)
    finally:
        client.close()
    return -1.0


# --- the child runs (bench/memory_child.py) -----------------------------------------------------

def pymalloc_stats(text: str) -> dict[str, float]:
    """The summary of sys._debugmallocstats(): arenas held vs bytes in live blocks (MiB)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(" = ")
        if not sep:
            continue
        try:
            num = float(value.strip().replace(",", ""))
        except ValueError:
            continue
        key = key.strip("# ").strip()
        if "unused pools" in key:
            out["bytes in unused pools"] = round(num / 1048576, 1)
        elif key == "Total" and "Total" not in out:  # the first Total is the arenas'
            out["Total"] = round(num / 1048576, 1)
        elif line.startswith("#") and key.startswith(("arenas", "bytes in")):
            out[key] = round(num / 1048576, 1) if key.startswith("bytes") else int(num)
    return out


def profile_run(work: Path, data_dir: Path, url: str, db_name: str, frames: int,
                extra_env: dict[str, str]) -> dict[str, Any]:
    """The daemon under tracemalloc, in a child process; its start-up reconcile runs against ``db_name``."""
    probe = sidecar(work, data_dir, url, db_name, extra_env)  # for its env only
    env = dict(probe.env, BENCH_TRACE_FRAMES=str(frames), SIDECAR_LOG_LEVEL="WARNING",
               SIDECAR_HTTP_PORT=str(free_port()))
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "memory_child.py")], env=env, cwd=str(ROOT),
                          capture_output=True, text=True, timeout=7200)
    if proc.returncode != 0:
        return {"error": proc.stderr[-3000:]}
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["wall_seconds"] = round(time.monotonic() - t0, 1)
    err = proc.stderr
    if "@@pymalloc-begin" in err:
        out["pymalloc"] = pymalloc_stats(err.split("@@pymalloc-begin", 1)[1].split("@@pymalloc-end", 1)[0])
    return out


# --- main ------------------------------------------------------------------------------------------


def run(args) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    server = TestServer.in_dir(work)
    daemon: DaemonProcess | None = None
    result: dict[str, Any] = {
        "benchmark": "bench_memory", "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "inotify_max_user_watches": int(Path("/proc/sys/fs/inotify/max_user_watches").read_text()),
                    "note": "server and daemon share these CPUs (and whatever else runs on the machine)"},
        "code": code_version(),
        "settings": {k: v for k, v in vars(args).items() if k != "json"}, "target_mib": TARGET_MIB}
    extra = dict(kv.split("=", 1) for kv in args.daemon_env)
    try:
        server.start()
        # 0. baseline: empty data dir
        empty = work / "empty" / "data" / "system"
        empty.mkdir(parents=True)
        (work / "empty").mkdir(exist_ok=True)
        daemon = sidecar(work / "empty", empty, server.url, args.db + "_empty", extra)
        start = start_measured(daemon)
        settle(daemon, args.settle)
        result["baseline_empty_dir"] = {"startup": start, "rss_mib": rss(daemon.pid)}
        daemon.stop()
        daemon = None
        print(f"baseline (empty data dir): VmRSS {result['baseline_empty_dir']['rss_mib']['VmRSS']} MiB", flush=True)

        # 1. the files
        data_dir = work / "data" / "system"
        t0 = time.monotonic()
        gen = generate(data_dir, args.files, args.episode_share, args.learners, args.seed)
        nfiles, ndirs, used = disk_usage(data_dir)
        result["data"] = {k: v for k, v in gen.items() if not k.endswith("_ids")}
        result["data"].update(files_on_disk=nfiles, directories=ndirs, disk_mib=round(used / 1048576, 1),
                              generate_seconds=round(time.monotonic() - t0, 1))
        print(f"generated {nfiles} files in {ndirs} directories ({used / 1048576:.0f} MiB on disk) "
              f"in {result['data']['generate_seconds']} s", flush=True)

        # 2-3. cold start
        run_dir = work / "run"
        run_dir.mkdir()
        daemon = sidecar(run_dir, data_dir, server.url, args.db, extra)
        print("cold start (empty database: the start-up reconcile mirrors every file) ...", flush=True)
        cold = start_measured(daemon)
        print(f"  ready in {cold['ready_seconds']} s", flush=True)
        cold["rss_at_ready_mib"] = rss(daemon.pid)
        settle(daemon, args.settle)
        cold["rss_after_settle_mib"] = rss(daemon.pid)
        cold["inotify_watches"] = inotify_watches(daemon.pid)
        st = status_json(daemon).get("sidecar", {})
        cold["status"] = {k: st.get(k) for k in ("pending", "errors_by_kind", "phase")}
        client = pymongo.MongoClient(server.url)
        cold["documents_in_mongodb"] = {name: client[args.db][name].estimated_document_count()
                                        for name in client[args.db].list_collection_names()}
        client.close()
        result["cold_start"] = cold

        # 4. burst
        print(f"burst of {args.burst} writes ...", flush=True)
        b = burst(data_dir, gen, args.burst, args.seed)
        b["mirrored_after_seconds"] = wait_mirrored(daemon, server.url, args.db, b.pop("last_seq"), 600)
        settle(daemon, args.settle)
        b["rss_after_mib"] = rss(daemon.pid)
        resp = daemon.get("/parity", timeout=600)
        b["parity_all_match"] = (resp.json().get("parity", {}).get("all_match")
                                 if resp is not None and resp.status == 200 else None)
        b["rss_after_parity_request_mib"] = rss(daemon.pid)
        result["burst"] = b
        daemon.stop()
        daemon = None

        # 5. warm restart
        print("warm restart (same files, database already in sync) ...", flush=True)
        daemon = sidecar(run_dir, data_dir, server.url, args.db, extra)
        warm = start_measured(daemon)
        settle(daemon, args.settle)
        warm["rss_after_settle_mib"] = rss(daemon.pid)
        result["warm_restart"] = warm
        daemon.stop()
        daemon = None
        result["server_rss_mib"] = rss(server.pid)

        if args.profile:
            runs = [("warm", args.db)]
            if args.profile_cold:
                runs.append(("cold", None))
            for label, db in runs:
                for mode, frames in (("accounting", 0), ("tracemalloc", args.frames)):
                    name = db or f"{args.db}_cold_{mode}"
                    print(f"profile: {label} start, {mode} ...", flush=True)
                    result[f"profile_{label}_{mode}"] = profile_run(work / "run", data_dir, server.url, name,
                                                                    frames, extra)

        steady = [result["cold_start"]["rss_after_settle_mib"]["VmRSS"], result["burst"]["rss_after_mib"]["VmRSS"],
                  result["warm_restart"]["rss_after_settle_mib"]["VmRSS"]]
        result["verdict_steady_rss"] = "PASS" if max(steady) <= TARGET_MIB else "MISS"
        peak = result["burst"]["rss_after_parity_request_mib"]["VmHWM"]
        result["verdict_peak_hwm"] = "PASS" if peak is not None and peak <= TARGET_MIB else "MISS"
        return result
    finally:
        if daemon is not None:
            daemon.stop()
        server.stop()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def report(r: dict[str, Any]) -> None:
    print()
    if r["settings"]["daemon_env"]:
        print(f"daemon env: {' '.join(r['settings']['daemon_env'])}")
    d = r["data"]
    print(f"daemon watching {d['files_on_disk']} files in {d['directories']} directories "
          f"({d['episodes']} episodes, {d['runs']} runs, 3 hub files x {r['settings']['learners']} learners, "
          f"snapshot, jobs; {d['disk_mib']} MiB on disk); {r['machine']['cpus']} CPUs shared with the server")
    print(f"{'':<44}{'VmRSS':>9}{'VmHWM':>9}{'RssAnon':>9}  MiB")

    def row(label: str, m: dict[str, Any]) -> None:
        print(f"{label:<44}{m['VmRSS']:>9}{m['VmHWM']:>9}{m['RssAnon']:>9}")
    row("baseline: empty data dir, after ready", r["baseline_empty_dir"]["rss_mib"])
    c = r["cold_start"]
    row("cold start: at ready", c["rss_at_ready_mib"])
    row(f"cold start: ready + {r['settings']['settle']:g} s", c["rss_after_settle_mib"])
    b = r["burst"]
    row(f"after a burst of {b['writes']} writes", b["rss_after_mib"])
    row("after a GET /parity (full scan)", b["rss_after_parity_request_mib"])
    w = r["warm_restart"]
    row(f"warm restart: ready + {r['settings']['settle']:g} s", w["rss_after_settle_mib"])
    print(f"target VmRSS <= {TARGET_MIB:.0f} MiB while running (after ready / after the burst / warm restart): "
          f"{r['verdict_steady_rss']};  peak during start-up (VmHWM) <= {TARGET_MIB:.0f} MiB: {r['verdict_peak_hwm']}")
    print()
    print(f"{'start-up':<24}{'to ready s':>11}{'daemon CPU s':>14}   phases first seen (s)")
    for label, s in (("empty dir", r["baseline_empty_dir"]["startup"]), ("cold (empty database)", c),
                     ("warm restart", w)):
        print(f"{label:<24}{s['ready_seconds']:>11}{fmt(s['cpu_seconds_to_ready']):>14}   "
              + ", ".join(f"{k} {v}" for k, v in s["phases_first_seen_s"].items()))
    print(f"burst: {b['writes']} writes in {b['seconds']} s, mirrored {b['mirrored_after_seconds']} s after the last "
          f"one; /parity all_match: {b['parity_all_match']}")
    print(f"inotify watches held by the daemon: {c['inotify_watches']} (one per directory; "
          f"fs.inotify.max_user_watches = {r['machine']['inotify_max_user_watches']})")
    print(f"documents in MongoDB after the cold start: {c['documents_in_mongodb']}")
    print(f"SecantusDB server RSS (not the target): {r['server_rss_mib']['VmRSS']} MiB")
    for key in ("profile_warm_accounting", "profile_cold_accounting"):
        p = r.get(key)
        if not p:
            continue
        print()
        if "error" in p:
            print(f"{key}: failed: {p['error'][-500:]}")
            continue
        k = p["proc_after_ready_kib"]
        print(f"{key} (no tracing; same daemon started in a child process): ready in {p['ready_seconds']} s; "
              f"VmRSS {mib(k['VmRSS'])} MiB (anon {mib(k['RssAnon'])}, file-backed {mib(k['RssFile'])}), "
              f"VmHWM {mib(k['VmHWM'])} MiB")
        pm = p.get("pymalloc") or {}
        if pm:
            print(f"  pymalloc (Python objects <= 512 B): {pm.get('Total')} MiB held in "
                  f"{pm.get('arenas allocated current')} arenas (high-water {pm.get('arenas highwater mark')}); "
                  f"live blocks {pm.get('bytes in allocated blocks')} MiB, free inside held arenas "
                  f"{round((pm.get('bytes in available blocks') or 0) + (pm.get('bytes in unused pools') or 0), 1)} MiB")
        m = p.get("mallinfo")
        if m:
            print(f"  glibc malloc (larger objects, C buffers): heap {m['heap_mib']} MiB + mmapped {m['mmapped_mib']} "
                  f"MiB; in use {m['in_use_mib']} MiB, free inside the heap {m['free_in_heap_mib']} MiB")
        g, t = p["after_gc_kib"], p.get("after_malloc_trim_kib")
        print(f"  after gc.collect(): VmRSS {mib(g['VmRSS'])} MiB;"
              + (f" after malloc_trim(0): VmRSS {mib(t['VmRSS'])} MiB" if t else ""))
        print(f"  MirrorState deep size (MiB): {p['mirror_state_mib']}  entries: {p['mirror_state_entries']}")
    for key in ("profile_warm_tracemalloc", "profile_cold_tracemalloc"):
        p = r.get(key)
        if not p:
            continue
        print()
        if "error" in p:
            print(f"{key}: failed: {p['error'][-500:]}")
            continue
        k = p["proc_after_ready_kib"]
        print(f"{key} ({r['settings']['frames']} frame(s); RSS under tracing is inflated by tracemalloc's own "
              f"tables): ready in {p['ready_seconds']} s; live Python allocations now {p['traced_current_mib']} MiB, "
              f"peak during start-up {p['traced_peak_mib']} MiB")
        print(f"  MirrorState deep size (MiB): {p['mirror_state_mib']}  entries: {p['mirror_state_entries']}")
        print("  traced memory by package (MiB): " + ", ".join(f"{k} {v}" for k, v in
                                                              list(p["by_package_mib"].items())[:10]))
        print("  top allocation sites after ready:")
        for line in p["top_lines"][:10]:
            print(f"    {line['mib']:>7} MiB {line['blocks']:>8} blocks  {line['where']}")
        for tb in p.get("top_tracebacks", []):
            print(f"    {tb['mib']:>7} MiB {tb['blocks']:>8} blocks  " + " <- ".join(reversed(tb["frames"])))


def fmt(v: Any) -> str:
    return "-" if v is None else str(v)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=50_000, help="files in the data dir (default 50000)")
    ap.add_argument("--episode-share", type=float, default=0.7, help="episodes vs runs (default 0.7)")
    ap.add_argument("--learners", type=int, default=1000, help="entries per hub file (default 1000)")
    ap.add_argument("--burst", type=int, default=5000, help="writes after ready (default 5000)")
    ap.add_argument("--settle", type=float, default=3.0, help="seconds to wait before reading RSS")
    ap.add_argument("--profile", action="store_true",
                    help="add two child runs of a warm start: allocator accounting (pymalloc, glibc, "
                         "MirrorState size) and tracemalloc (top allocation sites)")
    ap.add_argument("--profile-cold", action="store_true", help="with --profile: the same for a cold start")
    ap.add_argument("--frames", type=int, default=1, help="tracemalloc frames per allocation (default 1)")
    ap.add_argument("--daemon-env", action="append", default=[], metavar="KEY=VALUE",
                    help="extra env for the daemon, e.g. PYTHONMALLOC=malloc (repeatable; an experiment knob)")
    ap.add_argument("--db", default="bench")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--json", type=Path, default=OUT / "bench_memory.json")
    args = ap.parse_args()
    result = run(args)
    report(result)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(f"\nJSON: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
