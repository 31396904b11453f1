"""Benchmark: resident memory of the daemon watching 50k files, and its start-up time.

Processes (all on this machine, sharing its CPUs):
  server  SecantusDB (``secantusd-py``) on a free loopback port, fresh storage dir
  daemon  ``python -m sidecar run`` as a subprocess (env only), fresh data dir

Steps:
  0. baseline: the daemon on an *empty* data dir (what the imports and threads cost; its
     /proc/<pid>/io rchar is subtracted from the others': "bytes read" = beyond the imports)
  1. generate --files small files the way Mentorix writes them (``json.dumps(indent=2)`` text):
     episode skeletons in ``episodes/``, run contexts in ``runs/`` (one directory each, as
     Mentorix keeps them), three hub files of --learners (--hub-entries) entries, snapshot,
     scheduled jobs; then wait until the newest file is older than the quick check's racy margin
  2. cold start: empty database; time to /readyz 200 (phases from /readyz reasons), then to the
     start-up reconcile done with nothing pending (file mode: readiness comes first) = the
     cold start time; RSS sampled all along (peak = VmHWM)
  3. RSS (VmRSS, VmHWM, RssAnon from /proc/<pid>/status) at ready, at reconcile done, + a settle
  4. a burst of --burst further writes (rewritten episodes + learner signals + new
     files), wait until the daemon has nothing pending and the last write is in
     MongoDB, RSS again (VmHWM reset before: the burst's own peak)
  4b. GET /parity (a full scan): its time, the daemon's RSS after and peak during it (VmHWM
     reset before), and the peak of the child process the daemon computes it in
  5. warm restart: stop the daemon, start it again on the same files and database
     (the usual Pod restart): to ready, to the reconcile done, RSS, and bytes read until done

500k files as in issue 13 (450k episodes, 50k runs, 3 hubs x 10k entries):
``--files 500000 --episode-share 0.9 --learners 10000``.

Target: VmRSS of the running daemon ≤ 100 MiB up to 50k files, ≤ 150 MiB beyond (issue 13: 500k)
in every state (cold start, burst, /parity, warm restart); VmHWM (the peaks) against it too. ``--profile`` adds child
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
import threading
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

TARGET_MIB = 100.0  # up to 50k files
TARGET_500K_MIB = 150.0  # beyond (issue 13 point 3: 500k files)
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


_s = json.encoder.encode_basestring_ascii  # a JSON string literal (C): ids are ASCII anyway
AGENTS = ("planner", "tutor", "critic")
TOOLS = ("retrieve", "explain", "quiz")


def episode_text(rng: random.Random, run_id: str, when: datetime) -> str:
    """``json.dumps(small_episode(...), indent=2)``, byte for byte and with the same draws from
    ``rng``, spelled out: the stdlib's indenting encoder is pure Python, a third of the time
    of writing 500k files. ``generate`` checks the equality on its first files."""
    n = rng.randint(2, 4)
    agents = [rng.choice(AGENTS) for _ in range(n)]
    concept = rng.choice(corpus.CONCEPTS)
    nodes = ",\n".join(f'    {{\n      "id": "n{i}",\n      "agent": "{a}",\n      "status": "completed"\n    }}'
                       for i, a in enumerate(agents))
    edges = ",\n".join(f'    {{\n      "from": "n{i}",\n      "to": "n{i + 1}"\n    }}' for i in range(n - 1))
    return (f'{{\n  "run_id": {_s(run_id)},\n  "query": "Explain {concept}",\n  "status": "completed",\n'
            f'  "updated_at": "{when.replace(tzinfo=None).isoformat()}",\n  "nodes": [\n{nodes}\n  ],\n'
            f'  "edges": [\n{edges}\n  ]\n}}')


def run_text(rng: random.Random, run_id: str, when: datetime) -> str:
    """``json.dumps(small_run(...), indent=2)``, the same way."""
    learner = corpus._id(rng)
    tools = [rng.choice(TOOLS) for _ in range(2)]
    steps = ",\n".join(f'    {{\n      "step": {i},\n      "tool": "{t}"\n    }}' for i, t in enumerate(tools))
    return (f'{{\n  "run_id": {_s(run_id)},\n  "learner_id": "{learner}",\n'
            f'  "started_at": "{when.replace(tzinfo=None).isoformat()}",\n  "steps": [\n{steps}\n  ]\n}}')


def _checked(text_fn, dict_fn, rng: random.Random, run_id: str, when: datetime) -> str:
    """text_fn's output, asserted equal to json.dumps(dict_fn(...), indent=2) from the same rng state."""
    twin = random.Random()
    twin.setstate(rng.getstate())
    text = text_fn(rng, run_id, when)
    if text != json.dumps(dict_fn(twin, run_id, when), indent=2) or twin.getstate() != rng.getstate():
        raise AssertionError(f"{text_fn.__name__} no longer matches json.dumps(indent=2)")
    return text


def write_bulk(root: Path, n_ep: int, n_run: int, rng: random.Random, base: datetime) -> list[str]:
    """n_ep episode skeletons in ``episodes/`` and n_run run files in ``runs/`` (one directory
    each, as Mentorix keeps them); the episodes' run ids. Written the way Mentorix writes
    (``Path.write_text`` of ``json.dumps(indent=2)`` text, no trailing newline)."""
    (root / "episodes").mkdir(parents=True, exist_ok=True)
    (root / "runs").mkdir(parents=True, exist_ok=True)
    episode_ids = []
    for i in range(n_ep):
        run_id = corpus._id(rng)
        episode_ids.append(run_id)
        when = base + timedelta(seconds=i)
        text = _checked(episode_text, small_episode, rng, run_id, when) if i < 20 else episode_text(rng, run_id, when)
        (root / "episodes" / f"skeleton_{run_id}.json").write_text(text, encoding="utf-8")
    for i in range(n_run):
        run_id = corpus._id(rng)
        when = base + timedelta(seconds=i)
        text = _checked(run_text, small_run, rng, run_id, when) if i < 20 else run_text(rng, run_id, when)
        (root / "runs" / f"run_{run_id}.json").write_text(text, encoding="utf-8")
    return episode_ids


def generate(root: Path, files: int, episode_share: float, learners: int, seed: int) -> dict[str, Any]:
    """``files`` files in total: 3 hubs (``learners`` entries each) + snapshot + jobs + episodes + runs.
    The issue-13 shape at 500k: ``generate(root, 500_000, 0.9, 10_000, seed)`` (450k episodes, 50k runs,
    3 hubs x 10k entries). Same seed, same files as before the text writers."""
    rng = random.Random(seed)
    base = datetime(2026, 2, 1, tzinfo=timezone.utc)
    rest = max(0, files - 5)
    n_ep = int(rest * episode_share)
    n_run = rest - n_ep
    learner_ids = [corpus._id(rng) for _ in range(learners)]
    episode_ids = write_bulk(root, n_ep, n_run, rng, base)
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


def proc_io(pid: int | None) -> dict[str, int] | None:
    """/proc/<pid>/io: rchar = bytes the process got from read()-like system calls (files, sockets,
    pipes, inotify: from the page cache or not), read_bytes = what the storage layer fetched for it."""
    try:
        with open(f"/proc/{pid}/io") as f:
            return {k: int(v) for k, v in (line.split(":") for line in f)}
    except (OSError, ValueError):
        return None


def reset_hwm(pid: int | None) -> bool:
    """Reset the process's VmHWM to its current RSS (``echo 5 > /proc/<pid>/clear_refs``, Linux >= 4.0),
    so that the next VmHWM read is the peak of the step that follows, not of the process's life."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def child_pids(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return out


def is_reconciled(side: dict[str, Any]) -> bool:
    """The start-up reconcile is done (``last_reconcile_at`` set, ``reconcile.running`` false) and
    nothing is pending: what "cold start done" / "warm reconcile done" mean here."""
    rec = side.get("reconcile") or {}
    return bool(side.get("last_reconcile_at")) and not rec.get("running") and side.get("pending") == 0


def start_measured(daemon: DaemonProcess, timeout: float = 7200) -> dict[str, Any]:
    """Start the daemon; sample its RSS while it starts; return timings and the RSS timeline:
    to ``/readyz`` 200 (``ready_seconds``), then on to the start-up reconcile done with nothing
    pending (``reconciled_seconds``; in file mode readiness comes first). At both: daemon CPU,
    /proc/<pid>/io, RSS; the reconcile block of ``/memory/status`` when done."""
    samples: list[tuple[float, float]] = []
    progress: list[tuple[float, Any, Any]] = []

    def sample() -> None:
        if daemon.proc and daemon.proc.poll() is None:
            try:
                samples.append((round(time.monotonic() - daemon.started_at, 2),
                                mib(proc_status(daemon.pid).get("VmRSS"))))
            except OSError:
                pass
    daemon.start()
    ready_s = daemon.wait_ready(timeout=timeout, on_poll=sample)
    cpu = cpu_seconds(daemon.pid)
    out: dict[str, Any] = {"ready_seconds": round(ready_s, 2),
                           "cpu_seconds_to_ready": round(cpu, 2) if cpu is not None else None,
                           "io_at_ready": proc_io(daemon.pid), "rss_at_ready_mib": rss(daemon.pid)}
    deadline = time.monotonic() + timeout
    side: dict[str, Any] = {}
    while time.monotonic() < deadline:
        if daemon.proc.poll() is not None:
            raise RuntimeError(f"daemon exited ({daemon.proc.returncode}):\n{daemon.log_tail()}")
        sample()
        side = status_json(daemon).get("sidecar", {})
        rec = side.get("reconcile") or {}
        progress.append((round(time.monotonic() - daemon.started_at, 1), rec.get("checked"), rec.get("total")))
        if is_reconciled(side):
            break
        # 0.1 s resolution for short starts, 0.5 s past 20 s (a 500k cold start: ~13 min of polls).
        time.sleep(0.1 if time.monotonic() - daemon.started_at < 20 else 0.5)
    else:
        raise RuntimeError(f"the start-up reconcile was not done after {timeout} s")
    done_s = time.monotonic() - daemon.started_at
    cpu = cpu_seconds(daemon.pid)
    out.update(reconciled_seconds=round(done_s, 2), cpu_seconds_to_reconciled=round(cpu, 2) if cpu is not None else None,
               io_at_reconciled=proc_io(daemon.pid), rss_at_reconciled_mib=rss(daemon.pid),
               reconcile=side.get("reconcile"), phases_first_seen_s={k: round(v, 2) for k, v in daemon.phases.items()})
    # The daemon's own count of what its reconcile read from the data dir (quick check: files
    # read / quick-checked, bytes read); rchar also counts its local state file and sockets.
    scan = side.get("last_scan") or {}
    out["scan"] = {k: scan.get(k) for k in ("files_read", "files_quick_checked", "bytes_read", "clean",
                                            "unrecorded", "untrusted", "changed", "mongo_changed")}
    # Keep readable timelines: at most ~40 points.
    out["rss_timeline_mib"] = samples[::max(1, len(samples) // 40)]
    out["reconcile_progress"] = progress[::max(1, len(progress) // 40)]
    return out


def parity_measured(daemon: DaemonProcess, timeout: float = 3600) -> dict[str, Any]:
    """GET /parity, timed, with the RSS around it. The daemon computes it in a short-lived child
    process (``python -m sidecar.parityscan``): in a Pod that child counts against the container's
    memory too, so its peak is sampled (every 50 ms, its VmHWM) and reported beside the daemon's."""
    hwm_reset = reset_hwm(daemon.pid)
    peak = {"daemon_vmrss": 0.0, "child_vmhwm": 0.0, "sum": 0.0, "anon_sum": 0.0}
    seen: set[int] = set()
    stop = threading.Event()

    def sampler() -> None:
        while not stop.is_set():
            try:
                mine = proc_status(daemon.pid)
            except OSError:
                break
            d = mine.get("VmRSS", 0) / MIB
            kids = kids_anon = 0.0
            for c in child_pids(daemon.pid):
                seen.add(c)
                try:
                    theirs = proc_status(c)
                except OSError:
                    continue
                kids += theirs.get("VmHWM", 0) / MIB
                kids_anon += theirs.get("RssAnon", 0) / MIB
            peak["daemon_vmrss"] = max(peak["daemon_vmrss"], d)
            peak["child_vmhwm"] = max(peak["child_vmhwm"], kids)
            peak["sum"] = max(peak["sum"], d + kids)
            peak["anon_sum"] = max(peak["anon_sum"], mine.get("RssAnon", 0) / MIB + kids_anon)
            stop.wait(0.05)
    th = threading.Thread(target=sampler, daemon=True)
    th.start()
    t0 = time.monotonic()
    resp = daemon.get("/parity", timeout=timeout)
    took = time.monotonic() - t0
    stop.set()
    th.join(5)
    body = resp.json() if resp is not None and resp.status == 200 else {}
    after = rss(daemon.pid)
    return {"seconds": round(took, 2), "status": resp.status if resp is not None else None,
            "all_match": body.get("parity", {}).get("all_match"), "rss_after_mib": after,
            "daemon_vmhwm_during_mib": after["VmHWM"] if hwm_reset else None, "hwm_reset": hwm_reset,
            "daemon_vmrss_peak_sampled_mib": round(peak["daemon_vmrss"], 1),
            "child_peak_mib": round(peak["child_vmhwm"], 1), "child_processes_seen": len(seen),
            "daemon_plus_child_peak_mib": round(peak["sum"], 1),
            # RSS sums count the shared file-backed pages (libpython, .so files) twice; RssAnon does not.
            "daemon_plus_child_anon_peak_mib": round(peak["anon_sum"], 1)}


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


def target_for(files: int) -> float:
    """Issue 13 point 3: <= 100 MiB up to 50k files (as before), <= 150 MiB at 500k."""
    return TARGET_MIB if files <= 50_000 else TARGET_500K_MIB


def read_mib(io: dict[str, int] | None, base: dict[str, int] | None, key: str) -> float | None:
    if not io:
        return None
    return round((io[key] - ((base or {}).get(key, 0))) / 1048576, 2)


def run(args) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="bench-memory-", dir=args.data_root))
    server = TestServer.in_dir(work)
    daemon: DaemonProcess | None = None
    target = args.target_mib or target_for(args.files)
    result: dict[str, Any] = {
        "benchmark": "bench_memory", "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "inotify_max_user_watches": int(Path("/proc/sys/fs/inotify/max_user_watches").read_text()),
                    "work_dir": str(work),
                    "note": "server and daemon share these CPUs (and whatever else runs on the machine)"},
        "code": code_version(),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "json"},
        "target_mib": target}
    extra = dict(kv.split("=", 1) for kv in args.daemon_env)
    try:
        server.start()
        # 0. baseline: empty data dir (also the rchar of the imports, subtracted below)
        empty = work / "empty" / "data" / "system"
        empty.mkdir(parents=True)
        daemon = sidecar(work / "empty", empty, server.url, args.db + "_empty", extra)
        start = start_measured(daemon)
        settle(daemon, args.settle)
        result["baseline_empty_dir"] = {"startup": start, "rss_mib": rss(daemon.pid)}
        daemon.stop()
        daemon = None
        base_io = start["io_at_reconciled"]
        print(f"baseline (empty data dir): VmRSS {result['baseline_empty_dir']['rss_mib']['VmRSS']} MiB, "
              f"rchar {read_mib(base_io, None, 'rchar')} MiB", flush=True)

        # 1. the files
        data_dir = work / "data" / "system"
        t0 = time.monotonic()
        gen = generate(data_dir, args.files, args.episode_share, args.learners, args.seed)
        gen_s = time.monotonic() - t0
        nfiles, ndirs, used = disk_usage(data_dir)
        result["data"] = {k: v for k, v in gen.items() if not k.endswith("_ids")}
        result["data"].update(files_on_disk=nfiles, directories=ndirs, disk_mib=round(used / 1048576, 1),
                              generate_seconds=round(gen_s, 1))
        print(f"generated {nfiles} files in {ndirs} directories ({used / 1048576:.0f} MiB on disk) "
              f"in {result['data']['generate_seconds']} s", flush=True)
        # The newest file must be older than the quick check's racy margin (2 s) when the cold start
        # records it, or the warm restart rightly reads it again (git's racy-clean rule).
        time.sleep(max(0.0, args.racy_wait - (time.monotonic() - t0 - gen_s)))

        # 2-3. cold start
        run_dir = work / "run"
        run_dir.mkdir()
        daemon = sidecar(run_dir, data_dir, server.url, args.db, extra)
        print("cold start (empty database: the start-up reconcile mirrors every file) ...", flush=True)
        cold = start_measured(daemon)
        print(f"  ready in {cold['ready_seconds']} s, reconcile done (nothing pending) in "
              f"{cold['reconciled_seconds']} s", flush=True)
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

        # 4. burst (VmHWM reset first: the peak reported is the burst's own)
        print(f"burst of {args.burst} writes ...", flush=True)
        hwm_reset = reset_hwm(daemon.pid)
        b = burst(data_dir, gen, args.burst, args.seed)
        b["mirrored_after_seconds"] = wait_mirrored(daemon, server.url, args.db, b.pop("last_seq"), 1800)
        settle(daemon, args.settle)
        b["rss_after_mib"] = rss(daemon.pid)
        b["vmhwm_during_mib"] = b["rss_after_mib"]["VmHWM"] if hwm_reset else None
        # 4b. GET /parity (a full scan)
        print("GET /parity ...", flush=True)
        par = parity_measured(daemon)
        print(f"  {par['seconds']} s, all_match {par['all_match']}", flush=True)
        b["parity_all_match"] = par["all_match"]
        b["rss_after_parity_request_mib"] = par["rss_after_mib"]
        result["burst"] = b
        result["parity"] = par
        daemon.stop()
        daemon = None

        # 5. warm restart(s). The first one follows the burst: files the daemon mirrored within the quick
        # check's racy margin of their mtime (every file the burst touched: it mirrors in milliseconds) are
        # racily clean and rightly read again; its reconcile records them anew, so a second restart shows
        # the quick check alone.
        cold["read_until_reconciled_mib"] = {
            "rchar_minus_empty_dir": read_mib(cold["io_at_reconciled"], base_io, "rchar"),
            "read_bytes": read_mib(cold["io_at_reconciled"], None, "read_bytes")}
        warms = []
        for n in range(max(1, args.warm_restarts)):
            print(f"warm restart {n + 1} (same files, database already in sync) ...", flush=True)
            daemon = sidecar(run_dir, data_dir, server.url, args.db, extra)
            w = start_measured(daemon)
            print(f"  ready in {w['ready_seconds']} s, reconcile done in {w['reconciled_seconds']} s", flush=True)
            settle(daemon, args.settle)
            w["rss_after_settle_mib"] = rss(daemon.pid)
            # What the daemon read until its reconcile was done, minus what a daemon on an empty data dir
            # read in this run (the interpreter's imports, its first MongoDB answers).
            w["read_until_reconciled_mib"] = {
                "rchar_minus_empty_dir": read_mib(w["io_at_reconciled"], base_io, "rchar"),
                "read_bytes": read_mib(w["io_at_reconciled"], None, "read_bytes"),
                "rchar_raw": read_mib(w["io_at_reconciled"], None, "rchar"),
                "empty_dir_rchar": read_mib(base_io, None, "rchar")}
            warms.append(w)
            daemon.stop()
            daemon = None
        warm = warms[0]
        result["warm_restart"] = warm
        result["warm_restarts"] = warms
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

        last = warms[-1]
        states = {"cold_reconciled": cold["rss_at_reconciled_mib"]["VmRSS"],
                  "cold_settled": cold["rss_after_settle_mib"]["VmRSS"],
                  "burst": b["rss_after_mib"]["VmRSS"], "parity": par["rss_after_mib"]["VmRSS"],
                  "warm_reconciled": warm["rss_at_reconciled_mib"]["VmRSS"],
                  "warm_settled": warm["rss_after_settle_mib"]["VmRSS"],
                  "last_warm_settled": last["rss_after_settle_mib"]["VmRSS"]}
        peaks = {"cold": cold["rss_at_reconciled_mib"]["VmHWM"], "burst": b["vmhwm_during_mib"],
                 "parity": par["daemon_vmhwm_during_mib"], "warm": warm["rss_after_settle_mib"]["VmHWM"],
                 "last_warm": last["rss_after_settle_mib"]["VmHWM"]}
        result["summary"] = {"vmrss_by_state_mib": states, "vmhwm_by_state_mib": peaks,
                             "parity_daemon_plus_child_peak_mib": par["daemon_plus_child_peak_mib"]}
        result["verdict_steady_rss"] = "PASS" if max(states.values()) <= target else "MISS"
        known = [v for v in peaks.values() if v is not None]
        result["verdict_peak_hwm"] = "PASS" if known and max(known) <= target else "MISS"
        result["verdict_parity_with_child"] = "PASS" if par["daemon_plus_child_peak_mib"] <= target else "MISS"
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
    print(f"{'':<46}{'VmRSS':>9}{'VmHWM':>9}{'RssAnon':>9}  MiB")

    def row(label: str, m: dict[str, Any], hwm: Any = "") -> None:
        peak = m["VmHWM"] if hwm == "" else hwm
        print(f"{label:<46}{m['VmRSS']:>9}{fmt(peak):>9}{m['RssAnon']:>9}")
    row("baseline: empty data dir, after ready", r["baseline_empty_dir"]["rss_mib"])
    c = r["cold_start"]
    row("cold start: at ready", c["rss_at_ready_mib"])
    row("cold start: reconcile done", c["rss_at_reconciled_mib"])
    row(f"cold start: done + {r['settings']['settle']:g} s", c["rss_after_settle_mib"])
    b = r["burst"]
    row(f"after a burst of {b['writes']} writes (peak: burst's)", b["rss_after_mib"], b.get("vmhwm_during_mib"))
    p = r.get("parity") or {}
    if p:
        row("after a GET /parity (peak: the request's)", p["rss_after_mib"], p.get("daemon_vmhwm_during_mib"))
    w = r["warm_restart"]
    row("warm restart: at ready", w["rss_at_ready_mib"])
    row("warm restart: reconcile done", w["rss_at_reconciled_mib"])
    row(f"warm restart: done + {r['settings']['settle']:g} s", w["rss_after_settle_mib"])
    for i, x in enumerate((r.get("warm_restarts") or [])[1:], 2):
        row(f"warm restart {i}: done + {r['settings']['settle']:g} s", x["rss_after_settle_mib"])
    t = r["target_mib"]
    print(f"target VmRSS <= {t:.0f} MiB in every state: {r['verdict_steady_rss']};  peaks (VmHWM) <= {t:.0f} MiB: "
          f"{r['verdict_peak_hwm']}")
    if p:
        print(f"/parity: {p['seconds']} s, all_match {p['all_match']}; computed in a child process: its peak "
              f"{p['child_peak_mib']} MiB, daemon + child peak {p['daemon_plus_child_peak_mib']} MiB "
              f"(<= {t:.0f}: {r['verdict_parity_with_child']}; shared libraries counted twice; anonymous memory "
              f"only: {p.get('daemon_plus_child_anon_peak_mib')} MiB)")
    print()
    print(f"{'start-up':<24}{'ready s':>9}{'done s':>9}{'CPU s':>8}{'read MiB':>10}{'data MiB':>10}"
          f"{'files rd':>9}   phases first seen (s)")
    warms = r.get("warm_restarts") or [w]
    for label, s in (("empty dir", r["baseline_empty_dir"]["startup"]), ("cold (empty database)", c),
                     *((f"warm restart {i + 1}", x) for i, x in enumerate(warms))):
        read = (s.get("read_until_reconciled_mib") or {}).get("rchar_minus_empty_dir")
        scan = s.get("scan") or {}
        data = round(scan["bytes_read"] / 2**20, 2) if isinstance(scan.get("bytes_read"), int) else None
        print(f"{label:<24}{s['ready_seconds']:>9}{fmt(s.get('reconciled_seconds')):>9}"
              f"{fmt(s.get('cpu_seconds_to_reconciled')):>8}{fmt(read):>10}{fmt(data):>10}"
              f"{fmt(scan.get('files_read')):>9}   "
              + ", ".join(f"{k} {v}" for k, v in s["phases_first_seen_s"].items()))
    print("  done = the start-up reconcile finished and nothing pending; CPU = daemon CPU until then; read = rchar "
          "until then minus the empty-dir daemon's (imports): data-dir files, the local state file's pages "
          "(sidecar/localindex.py), the bench's HTTP polls, inotify; data = bytes of data-dir files the "
          "reconcile read (the daemon's own count, /memory/status last_scan), files rd = files it read")
    rb = w.get("read_until_reconciled_mib") or {}
    print(f"  warm restart /proc/<pid>/io: rchar {rb.get('rchar_raw')} MiB raw ({rb.get('empty_dir_rchar')} MiB for "
          f"the empty-dir daemon), read_bytes {rb.get('read_bytes')} MiB "
          "(storage layer, not subtracted: ~0 when the files are in the page cache)")
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
    ap.add_argument("--learners", "--hub-entries", dest="learners", type=int, default=1000,
                    help="entries per hub file (default 1000; the issue's 500k shape: 10000)")
    ap.add_argument("--burst", type=int, default=5000, help="writes after ready (default 5000)")
    ap.add_argument("--settle", type=float, default=3.0, help="seconds to wait before reading RSS")
    ap.add_argument("--profile", action="store_true",
                    help="add two child runs of a warm start: allocator accounting (pymalloc, glibc, "
                         "MirrorState size) and tracemalloc (top allocation sites)")
    ap.add_argument("--profile-cold", action="store_true", help="with --profile: the same for a cold start")
    ap.add_argument("--frames", type=int, default=1, help="tracemalloc frames per allocation (default 1)")
    ap.add_argument("--daemon-env", action="append", default=[], metavar="KEY=VALUE",
                    help="extra env for the daemon, e.g. PYTHONMALLOC=malloc (repeatable; an experiment knob)")
    ap.add_argument("--warm-restarts", type=int, default=1,
                    help="warm restarts after the burst (default 1; the first re-reads the files the burst "
                         "touched, racily clean by the quick check's rule; a second shows the quick check alone)")
    ap.add_argument("--racy-wait", type=float, default=3.0,
                    help="seconds between the last generated file and the cold start (default 3: older than "
                         "the quick check's 2 s racy margin, so the warm restart need not re-read it)")
    ap.add_argument("--target-mib", type=float, default=None,
                    help=f"RSS target (default {TARGET_MIB:g} MiB up to 50k files, {TARGET_500K_MIB:g} beyond)")
    ap.add_argument("--data-root", type=Path, default=None,
                    help="where the temp work dir (data dir, database, logs) goes (default: the system temp "
                         "dir, as in every figure in bench/README.md; e.g. /dev/shm for tmpfs)")
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
