"""Benchmark: what one legacy learner signal costs the API while MongoDB or the sidecar is out (issue 16).

A "signal" is what Mentorix does per learner update: three hub files rewritten with
``Path.write_text`` (10 kB each, one entry changed). A fresh writer process per variant,
activated the production way (``PYTHONPATH=shim/activate`` + ``SIDECAR_SHIM=off|async|sync``,
``SIDECAR_SHIM_ON_FAILURE=open``, the default timeout 5000 ms and breaker 5000 ms unless
given), sends one signal every ``--interval-ms`` for ``--seconds`` and records the latency
of every ``write_text`` call. ``--rounds`` rounds per situation; the variants' order rotates
(round 0: sync first, so it meets the outage fresh), figures are medians over rounds and ratios
medians of per-round ratios (a single pass per variant was too noisy for a 1.3x line).

Five situations, in this order, each with the three variants (the no-shim run is the baseline
of that situation; during an outage sync runs first, so it meets the outage fresh):

1. normal: SecantusDB and ``python -m sidecar run`` up;
2. MongoDB killed (SIGKILL; the daemon's ping knows);
3. MongoDB frozen (SIGSTOP; nothing answers, nothing refuses);
4. the sidecar frozen (SIGSTOP: its socket accepts, nobody replies);
5. the sidecar killed (connection refused).

Reported per variant: per-call p50 / p90 / p99 / max, the ratio of p50 and p90 to the no-shim
run of the same situation, the number of calls that waited ≥ 1 s (a timeout), and the bound
of issue 16 for them: one per breaker period (``1 + seconds / breaker``). Plus the shim's own
counters (sync_ok, sync_failed, unconfirmed, breaker_opened).

    .venv/bin/python bench/bench_outage.py                          # ~9 min: 5 x 3 rounds x 3 x 10 s
    .venv/bin/python bench/bench_outage.py --rounds 1 --seconds 3   # smoke run

Results on stdout and in bench/out/bench_outage.json. A benchmark, not a test: nothing here
asserts timings (the target lines say PASS or MISS).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # testkit/, the support package shared with the tests

from bench_shim import ACTIVATE, hub_dict, shim_daemon, wait_quiet  # noqa: E402  (bench/ is on sys.path)
from testkit.measure import code_version, pct  # noqa: E402
from testkit.mongo import TestServer  # noqa: E402
from testkit.process import DaemonProcess, clean_env  # noqa: E402

OUT = ROOT / "bench" / "out"
HUBS = ("learner_preferences", "operating_context", "soft_identity")
POOL = 32
SLOW_S = 1.0  # a call that took this long waited for a timeout
SITUATIONS = ("normal", "mongodb_killed", "mongodb_frozen", "sidecar_frozen", "sidecar_killed")
VARIANTS = ("off", "async", "sync")


# --- the writer (a fresh "legacy API" process per variant) ---------------------------------------
def worker(spec: dict[str, Any]) -> dict[str, Any]:
    import builtins
    import random

    shim_mod = sys.modules.get("shim") or sys.modules.get("mentorix_shim")
    installed = bool(getattr(builtins.open, "__mentorix_shim__", False))
    data = Path(spec["data_dir"]) / "structured_hubs"
    pools = []
    for h, _name in enumerate(HUBS):
        hub, keys = hub_dict(100 + h)
        rng = random.Random(h)
        pool = []
        for i in range(POOL):
            hub[keys[i % len(keys)]]["last_score"] = round(rng.random(), 4)
            pool.append(json.dumps(hub, indent=2))
        pools.append(pool)
    targets = [data / f"{name}.json" for name in HUBS]
    perf_ns = time.perf_counter_ns
    interval = spec["interval_s"]
    lat: list[int] = []
    signals: list[int] = []
    t_end = time.perf_counter() + spec["seconds"]
    due = time.perf_counter()
    i = 0
    while time.perf_counter() < t_end:
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        s0 = perf_ns()
        for target, pool in zip(targets, pools):
            t0 = perf_ns()
            target.write_text(pool[i % POOL], encoding="utf-8")
            lat.append(perf_ns() - t0)
        signals.append(perf_ns() - s0)
        i += 1
        due = max(due + interval, time.perf_counter())  # no catch-up burst after a stall
    out: dict[str, Any] = {"installed": installed, "lat_ns": lat, "signal_ns": signals}
    if shim_mod is not None and installed:
        out["shim_stats"] = shim_mod.stats()
        out["breaker"] = shim_mod.breaker_state()
        shim_mod.flush(2.0)
    return out


def run_worker(spec: dict[str, Any], mode: str, data_dir: Path, socket_path: Path, env_extra: dict) -> dict:
    env = clean_env()
    env["PYTHONPATH"] = str(ACTIVATE)
    env.update(SIDECAR_SHIM=mode, RUNTIME_DATA_DIR=str(data_dir), SIDECAR_SOCKET=str(socket_path),
               SIDECAR_SHIM_ON_FAILURE="open", **env_extra)
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)],
                          env=env, cwd=str(data_dir.parent), capture_output=True, text=True,
                          timeout=spec["seconds"] + 120)
    if proc.returncode != 0:
        raise RuntimeError(f"writer ({mode}) failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if result["installed"] != (mode != "off"):
        raise RuntimeError(f"writer ({mode}): shim installed={result['installed']}")
    return result


def summary(lat_ns: list[int]) -> dict[str, Any]:
    ms = [x / 1e6 for x in lat_ns]
    return {"calls": len(ms), "p50_ms": pct(ms, .5), "p90_ms": pct(ms, .9), "p99_ms": pct(ms, .99),
            "max_ms": max(ms) if ms else None, "waited": sum(1 for x in ms if x >= SLOW_S * 1000)}


# --- the situations ------------------------------------------------------------------------------
def mongo_down_seen(daemon: DaemonProcess, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon.metrics().get("sidecar_mongo_up") == 0:
            return
        time.sleep(0.1)
    raise RuntimeError("the daemon did not notice MongoDB was down")


def enter(situation: str, server: TestServer, daemon: DaemonProcess) -> None:
    if situation == "mongodb_killed":
        server.proc.kill()
        server.proc.wait(30)
        mongo_down_seen(daemon)
    elif situation == "mongodb_frozen":
        os.kill(server.proc.pid, signal.SIGSTOP)
    elif situation == "sidecar_frozen":
        os.kill(daemon.proc.pid, signal.SIGSTOP)
    elif situation == "sidecar_killed":
        daemon.proc.kill()
        daemon.proc.wait(30)


def leave(situation: str, server: TestServer, daemon: DaemonProcess) -> None:
    if situation == "mongodb_killed":
        server.start()
    elif situation == "mongodb_frozen":
        os.kill(server.proc.pid, signal.SIGCONT)
    elif situation == "sidecar_frozen":
        os.kill(daemon.proc.pid, signal.SIGCONT)
    elif situation == "sidecar_killed":
        daemon.start()
    if situation != "normal":
        daemon.wait_ready(120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="writing time per variant and round")
    ap.add_argument("--rounds", type=int, default=3, help="rounds per situation (the variants' order rotates)")
    ap.add_argument("--interval-ms", type=float, default=20.0, help="one signal (3 writes) per interval")
    ap.add_argument("--timeout-ms", type=int, default=5000, help="SIDECAR_SHIM_TIMEOUT_MS")
    ap.add_argument("--breaker-ms", type=int, default=5000, help="SIDECAR_SHIM_BREAKER_MS")
    ap.add_argument("--out", default=str(OUT / "bench_outage.json"))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return

    work = Path(tempfile.mkdtemp(prefix="bench-outage-"))
    data_dir = work / "data" / "system"
    (data_dir / "structured_hubs").mkdir(parents=True)
    sock = work / "sidecar.sock"
    server = TestServer.in_dir(work)
    server.start()
    daemon = shim_daemon(work, data_dir, sock, server.url, "bench_outage")
    env_extra = {"SIDECAR_SHIM_TIMEOUT_MS": str(args.timeout_ms), "SIDECAR_SHIM_BREAKER_MS": str(args.breaker_ms)}
    spec = {"data_dir": str(data_dir), "seconds": args.seconds, "interval_s": args.interval_ms / 1000}
    result: dict[str, Any] = {"code": code_version(), "python": platform.python_version(),
                              "args": {k: v for k, v in vars(args).items() if k != "worker"}, "situations": {}}
    try:
        daemon.start().wait_ready(120)
        for situation in SITUATIONS:
            rows: dict[str, Any] = {}
            wait_quiet([p for p in (server.proc.pid, daemon.proc.pid)])
            enter(situation, server, daemon)
            rounds: list[dict[str, Any]] = []
            try:
                for k in range(args.rounds):
                    # Round 0 runs sync first: it meets the outage fresh (in "MongoDB frozen" the
                    # daemon has not yet seen a write stall, so its first write waits a full
                    # timeout). Later rounds rotate the order, so no variant is always last.
                    order = list(VARIANTS[::-1])
                    order = order[-k % 3:] + order[:-k % 3] if k else order
                    one: dict[str, Any] = {}
                    for mode in order:
                        r = run_worker(spec, mode, data_dir, sock, env_extra)
                        row = summary(r["lat_ns"])
                        row["shim"] = {key: r.get("shim_stats", {}).get(key) for key in
                                       ("sync_ok", "sync_failed", "unconfirmed", "breaker_opened",
                                        "sent", "dropped_unavailable", "dropped_queue_full")}
                        row["breaker_at_end"] = r.get("breaker")
                        one[mode] = row
                        print(f"{situation:15s} round {k} {mode:5s} p50 {row['p50_ms']:.3f} p90 {row['p90_ms']:.3f} "
                              f"p99 {row['p99_ms']:.3f} max {row['max_ms']:.1f} ms, waited {row['waited']}",
                              flush=True)
                    for mode in ("async", "sync"):
                        one[mode]["x_p50"] = one[mode]["p50_ms"] / one["off"]["p50_ms"]
                        one[mode]["x_p90"] = one[mode]["p90_ms"] / one["off"]["p90_ms"]
                    rounds.append(one)
            finally:
                leave(situation, server, daemon)
            rows = {}
            for mode in VARIANTS:
                runs = [one[mode] for one in rounds]
                agg: dict[str, Any] = {key: statistics.median(x[key] for x in runs)
                                       for key in ("p50_ms", "p90_ms", "p99_ms")}
                agg["max_ms"] = max(x["max_ms"] for x in runs)
                agg["waited"] = max(x["waited"] for x in runs)  # per run: the bound is per run
                agg["shim"] = {key: (sum(x["shim"][key] for x in runs) if runs[0]["shim"][key] is not None else None)
                               for key in runs[0]["shim"]}
                if mode != "off":
                    agg["x_p50"] = statistics.median(x["x_p50"] for x in runs)
                    agg["x_p90"] = statistics.median(x["x_p90"] for x in runs)
                agg["rounds"] = runs
                rows[mode] = agg
            result["situations"][situation] = rows
    finally:
        daemon.stop()
        server.stop()
    allowed = 1 + int(args.seconds * 1000 // args.breaker_ms)
    print()
    print(f"per write_text call, {args.rounds} rounds x {args.seconds:.0f} s per variant (medians of rounds; "
          f"x: median of per-round ratios; waited: the most in one run), one signal (3 files) every "
          f"{args.interval_ms:.0f} ms; timeout {args.timeout_ms} ms, breaker {args.breaker_ms} ms")
    print(f"{'situation':15s} {'mode':5s} {'p50 ms':>7s} {'x':>5s} {'p90 ms':>7s} {'x':>5s} {'p99 ms':>7s} "
          f"{'max ms':>8s} {'waited':>6s} {'ok':>5s} {'failed':>6s} {'unconf':>6s}")
    verdict = True
    for situation, rows in result["situations"].items():
        for mode in VARIANTS:
            r = rows[mode]
            sh = r["shim"]
            print(f"{situation:15s} {mode:5s} {r['p50_ms']:7.3f} {r.get('x_p50', 1.0):5.2f} {r['p90_ms']:7.3f} "
                  f"{r.get('x_p90', 1.0):5.2f} {r['p99_ms']:7.3f} {r['max_ms']:8.1f} {r['waited']:6d} "
                  f"{sh['sync_ok'] if sh['sync_ok'] is not None else '-':>5} "
                  f"{sh['sync_failed'] if sh['sync_failed'] is not None else '-':>6} "
                  f"{sh['unconfirmed'] if sh['unconfirmed'] is not None else '-':>6}")
        if situation != "normal":
            s = rows["sync"]
            ok = s["waited"] <= allowed and s["x_p50"] <= 1.3 and rows["async"]["x_p50"] <= 1.3
            verdict &= ok
            print(f"  target (sync: waited ≤ {allowed} per run, other calls ≤ 1.3x no shim at p50): "
                  f"{'PASS' if ok else 'MISS'}")
    result["target_met"] = verdict
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
