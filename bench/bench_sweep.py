"""Benchmark sweep (issue 13 point 4): how start-up time, RSS and per-event cost grow with the files.

For each size in ``--sizes`` (default 5k, 50k, 500k files) this runs, each as its own process:

  memory   ``bench/bench_memory.py --files N`` (cold start to the reconcile done, a burst, GET /parity,
           a warm restart; RSS in every state, bytes read on the warm restart), JSON kept as
           ``bench/out/sweep_memory_<N>.json``
  latency  ``bench/bench_latency.py --prefill N'`` (N' = N minus the ~200 rotation files: about N files in the
           data dir): close -> visible p50/p99 at ``--rate`` writes/s for ``--seconds``, measured once the
           start-up reconcile is done, and the daemon's CPU per write; ``bench/out/sweep_latency_<N>.json``

The corpus shape at every size is issue 13's 500k one scaled: ``--episode-share`` 0.9 episodes / runs,
3 hubs x (N x ``--hub-entries-per-file``) entries (10k at 500k, 1000 at 50k, 100 at 5k).
Everything lands in ``bench/out/bench_sweep.json`` (rewritten after each step, so a partial sweep
survives), a table on stdout and a PNG (``bench/out/sweep.png``, copied to ``bench/sweep.png`` for
bench/README.md). ``--plot-only`` redraws table and PNG from the JSON.

    .venv/bin/python bench/bench_sweep.py                                    # 5k, 50k, 500k
    .venv/bin/python bench/bench_sweep.py --sizes 2000,5000 --seconds 5      # a quick proof
    .venv/bin/python bench/bench_sweep.py --sizes 500000 --merge             # add a size to the JSON
    .venv/bin/python bench/bench_sweep.py --plot-only                        # redraw

A benchmark, not a test: nothing asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
OUT = BENCH / "out"
sys.path.insert(0, str(ROOT))

from testkit.measure import code_version  # noqa: E402

TARGETS = {"warm_ready_s": 20.0, "rss_mib_50k": 100.0, "rss_mib_500k": 150.0, "p99_ms": 100.0}
LATENCY_ROTATION_FILES = 204  # bench_latency's own files: 200 episodes in rotation, 3 hubs, snapshot


def sizes_arg(text: str) -> list[int]:
    if text.strip().lower() in ("", "none"):
        return []
    return [int(x.replace("_", "").replace("k", "000")) for x in text.split(",") if x.strip()]


def hub_entries(args, size: int) -> int:
    return args.hub_entries or max(10, round(size * args.hub_entries_per_file))


def run_step(cmd: list[str], log: Path) -> dict[str, Any]:
    """One benchmark process; its output goes to the terminal and to ``log``."""
    print(f"\n$ {' '.join(cmd[1:])}", flush=True)
    t0 = time.monotonic()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write("  | " + line)
            sys.stdout.flush()
            f.write(line)
        rc = proc.wait()
    return {"cmd": cmd[1:], "rc": rc, "wall_seconds": round(time.monotonic() - t0, 1), "log": str(log)}


def memory_row(m: dict[str, Any]) -> dict[str, Any]:
    """The figures of one bench_memory.py JSON that the sweep shows."""
    c, b, w, p = m["cold_start"], m["burst"], m["warm_restart"], m.get("parity") or {}
    peaks = [v for v in (m.get("summary") or {}).get("vmhwm_by_state_mib", {}).values() if v is not None]
    return {
        "files": m["data"]["files_on_disk"], "generate_s": m["data"]["generate_seconds"],
        "cold_ready_s": c["ready_seconds"], "cold_done_s": c.get("reconciled_seconds"),
        "cold_cpu_s": c.get("cpu_seconds_to_reconciled"),
        "warm_ready_s": w["ready_seconds"], "warm_done_s": w.get("reconciled_seconds"),
        "warm_cpu_s": w.get("cpu_seconds_to_reconciled"),
        "warm_read_mib": (w.get("read_until_reconciled_mib") or {}).get("rchar_minus_empty_dir"),
        "warm_data_mib": data_mib(w),
        **warm2_row(m),
        "rss_empty_mib": m["baseline_empty_dir"]["rss_mib"]["VmRSS"],
        "rss_cold_mib": c["rss_after_settle_mib"]["VmRSS"], "rss_burst_mib": b["rss_after_mib"]["VmRSS"],
        "rss_parity_mib": (p.get("rss_after_mib") or b["rss_after_parity_request_mib"])["VmRSS"],
        "rss_warm_mib": w["rss_after_settle_mib"]["VmRSS"],
        "vmhwm_max_mib": max(peaks) if peaks else None,
        "parity_s": p.get("seconds"), "parity_all_match": p.get("all_match", b.get("parity_all_match")),
        "parity_with_child_mib": p.get("daemon_plus_child_peak_mib"),
        "target_mib": m.get("target_mib"), "verdict_rss": m.get("verdict_steady_rss"),
        "verdict_peak": m.get("verdict_peak_hwm"),
    }


def data_mib(start: dict[str, Any]) -> float | None:
    """Bytes of data-dir files the start-up reconcile read (the daemon's count, /memory/status last_scan)."""
    n = (start.get("scan") or {}).get("bytes_read")
    return round(n / 2**20, 2) if isinstance(n, int) else None


def warm2_row(m: dict[str, Any]) -> dict[str, Any]:
    """The last warm restart, when there were two or more (the quick check alone: the first one re-read
    the files the burst touched, racily clean)."""
    warms = m.get("warm_restarts") or []
    if len(warms) < 2:
        return {}
    w = warms[-1]
    return {"warm2_ready_s": w["ready_seconds"], "warm2_done_s": w.get("reconciled_seconds"),
            "warm2_cpu_s": w.get("cpu_seconds_to_reconciled"),
            "warm2_read_mib": (w.get("read_until_reconciled_mib") or {}).get("rchar_minus_empty_dir"),
            "warm2_data_mib": data_mib(w),
            "rss_warm2_mib": w["rss_after_settle_mib"]["VmRSS"]}


def latency_row(r: dict[str, Any]) -> dict[str, Any]:
    a = r["latency_ms"]["all"]
    cw = r.get("cpu_ms_per_write") or {}
    return {"lat_p50_ms": a.get("p50"), "lat_p99_ms": a.get("p99"), "lat_count": a.get("count"),
            "lost": r.get("lost"), "daemon_cpu_ms_per_write": cw.get("daemon"),
            "server_cpu_ms_per_write": cw.get("server"),
            "lat_reconciled_s": r.get("reconciled_seconds"),
            "writer_late_p99_ms": (r["writer"]["schedule_lateness_ms"] or {}).get("p99"),
            "machine_busy_pct": r["cpu_percent_of_one_core"].get("machine_total"),
            "lat_verdict": r.get("verdict")}


def save(result: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))


def sweep(args) -> dict[str, Any]:
    result: dict[str, Any] = {
        "benchmark": "bench_sweep", "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "code": code_version(),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "targets": TARGETS, "sizes": {}}
    if args.merge and args.json.exists():
        # Sizes run earlier (e.g. 5k and 50k, then 500k alone) stay in the table and the plot.
        result["sizes"] = json.loads(args.json.read_text()).get("sizes", {})
    latency_sizes = args.sizes if args.latency_sizes is None else args.latency_sizes
    common = [f"--daemon-env={kv}" for kv in args.daemon_env]
    if args.data_root:
        common.append(f"--data-root={args.data_root}")
    for size in args.sizes:
        row: dict[str, Any] = {"size": size, "hub_entries_per_file": hub_entries(args, size), "steps": {}}
        result["sizes"][str(size)] = row
        mem_json = OUT / f"sweep_memory_{size}.json"
        step = run_step([sys.executable, str(BENCH / "bench_memory.py"), "--files", str(size),
                         "--episode-share", str(args.episode_share), "--learners", str(hub_entries(args, size)),
                         "--burst", str(args.burst), "--warm-restarts", str(args.warm_restarts),
                         "--json", str(mem_json), *common],
                        OUT / f"sweep_memory_{size}.log")
        row["steps"]["memory"] = step
        if step["rc"] == 0:
            row.update(memory_row(json.loads(mem_json.read_text())))
        save(result, args.json)
        if size in latency_sizes:
            lat_json = OUT / f"sweep_latency_{size}.json"
            step = run_step([sys.executable, str(BENCH / "bench_latency.py"),
                             "--prefill", str(max(0, size - LATENCY_ROTATION_FILES)),
                             "--prefill-episode-share", str(args.episode_share),
                             "--rate", str(args.rate), "--seconds", str(args.seconds),
                             "--json", str(lat_json), *common], OUT / f"sweep_latency_{size}.log")
            row["steps"]["latency"] = step
            if step["rc"] == 0:
                row.update(latency_row(json.loads(lat_json.read_text())))
            save(result, args.json)
    return result


def fmt(v: Any, width: int) -> str:
    if v is None:
        return f"{'-':>{width}}"
    if isinstance(v, float):
        return f"{v:>{width}.1f}" if abs(v) >= 10 or v == 0 else f"{v:>{width}.2f}"
    return f"{v:>{width}}"


COLUMNS = [  # (header, key, width)
    ("files", "size", 8), ("cold s", "cold_done_s", 8), ("warm rdy s", "warm_ready_s", 11),
    ("warm done s", "warm_done_s", 12), ("RSS cold", "rss_cold_mib", 9), ("burst", "rss_burst_mib", 7),
    ("parity", "rss_parity_mib", 7), ("warm", "rss_warm_mib", 7), ("VmHWM", "vmhwm_max_mib", 7),
    ("+child", "parity_with_child_mib", 7), ("read MiB", "warm_read_mib", 9), ("data MiB", "warm_data_mib", 9),
    ("w2 rdy s", "warm2_ready_s", 9), ("w2 done s", "warm2_done_s", 10), ("w2 read", "warm2_read_mib", 8),
    ("w2 data", "warm2_data_mib", 8), ("p50 ms", "lat_p50_ms", 8),
    ("p99 ms", "lat_p99_ms", 8), ("CPU ms/w", "daemon_cpu_ms_per_write", 9),
]


def table(result: dict[str, Any]) -> None:
    rows = [result["sizes"][k] for k in sorted(result["sizes"], key=int)]
    print()
    print("issue 13 sweep: cold s = cold start until the start-up reconcile is done and nothing is pending; warm = "
          "restart on the same files and database (ready = /readyz 200, done = reconcile done); RSS = daemon VmRSS "
          "(MiB) after each state; VmHWM = highest peak of any state; +child = daemon + /parity child peak; "
          "read = warm restart rchar until done minus an empty-dir daemon's (MiB: data-dir files, the local state "
          "file's pages, sockets' polls); data = data-dir bytes the reconcile read (the daemon's own count); "
          "w2 = a second warm restart "
          "(the first re-reads what the burst touched: racily clean); p50/p99 = close -> visible at "
          f"{result['settings']['rate']:g} writes/s; CPU ms/w = daemon CPU per write")
    print("".join(f"{h:>{w}}" for h, _, w in COLUMNS))
    for r in rows:
        print("".join(fmt(r.get(k), w) for _, k, w in COLUMNS))
    for r in rows:
        bad = [f"{name} rc={s['rc']} (log {s['log']})" for name, s in r.get("steps", {}).items() if s["rc"] != 0]
        walls = ", ".join(f"{name} {s['wall_seconds']} s" for name, s in r.get("steps", {}).items())
        extra = (f"generate {r.get('generate_s')} s, parity {r.get('parity_s')} s (all_match "
                 f"{r.get('parity_all_match')}), RSS target {r.get('target_mib')} MiB: {r.get('verdict_rss')} / "
                 f"peak {r.get('verdict_peak')}")
        if "latency" in r.get("steps", {}):
            extra += (f"; latency: lost {r.get('lost')}, writer late p99 {r.get('writer_late_p99_ms')} ms, machine "
                      f"busy {r.get('machine_busy_pct')}% of one core (200% = both cores)")
        print(f"  {r['size']}: wall {walls}; {extra}" + (f"; FAILED: {'; '.join(bad)}" if bad else ""))


def plot(result: dict[str, Any], png: Path, copy_to: Path | None) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [result["sizes"][k] for k in sorted(result["sizes"], key=int)]

    def series(key: str) -> tuple[list[int], list[float]]:
        pts = [(r["size"], r[key]) for r in rows if r.get(key) is not None]
        return [p[0] for p in pts], [p[1] for p in pts]

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    panels = [
        (axes[0], "start-up (s)", [("cold start: reconcile done", "cold_done_s", "o-"),
                                   ("warm restart: /readyz 200", "warm_ready_s", "s-"),
                                   ("warm restart: reconcile done", "warm_done_s", "^-"),
                                   ("2nd warm restart: reconcile done", "warm2_done_s", "v--")],
         [(TARGETS["warm_ready_s"], "warm ready target 20 s")]),
        (axes[1], "daemon RSS (MiB)", [("cold start", "rss_cold_mib", "o-"), ("after burst", "rss_burst_mib", "s-"),
                                       ("after /parity", "rss_parity_mib", "d-"), ("warm restart", "rss_warm_mib", "^-"),
                                       ("peak (VmHWM)", "vmhwm_max_mib", "x--"),
                                       ("/parity: daemon + its child, peak", "parity_with_child_mib", "+:")],
         [(TARGETS["rss_mib_50k"], "100 MiB (<= 50k)"), (TARGETS["rss_mib_500k"], "150 MiB (500k)")]),
        (axes[2], "per event (ms)", [("close -> visible p50", "lat_p50_ms", "o-"),
                                     ("close -> visible p99", "lat_p99_ms", "s-"),
                                     ("daemon CPU per write", "daemon_cpu_ms_per_write", "^-")],
         [(TARGETS["p99_ms"], "p99 target 100 ms")]),
    ]
    for ax, title, lines, targets in panels:
        for label, key, style in lines:
            xs, ys = series(key)
            if xs:
                ax.plot(xs, ys, style, label=label)
        for y, label in targets:
            ax.axhline(y, color="grey", linestyle=":", linewidth=1)
            ax.annotate(label, (0.01, y), xycoords=("axes fraction", "data"), fontsize=7, color="grey",
                        va="bottom")
        ax.set_xscale("log")
        if title != "daemon RSS (MiB)":
            ax.set_yscale("log")
        ax.set_xlabel("files in the data dir")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    code = result.get("code") or {}
    fig.suptitle(f"issue 13 sweep, {result.get('when', '')} (code {code.get('head', '?')}"
                 f"{' + uncommitted changes' if code.get('uncommitted_changes') else ''}); "
                 f"{result['machine']['cpus']} shared CPUs", fontsize=9)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)
    plt.close(fig)
    print(f"\nPNG: {png}")
    if copy_to is not None:
        shutil.copyfile(png, copy_to)
        print(f"copied to {copy_to}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=sizes_arg, default=[5_000, 50_000, 500_000],
                    help="files in the data dir, comma-separated (default 5000,50000,500000)")
    ap.add_argument("--latency-sizes", type=sizes_arg, default=None,
                    help="sizes that also get a latency run (default: all of --sizes; 'none' for none)")
    ap.add_argument("--rate", type=float, default=200.0, help="latency: writes per second (default 200)")
    ap.add_argument("--seconds", type=float, default=20.0, help="latency: measured seconds (default 20)")
    ap.add_argument("--burst", type=int, default=5000, help="memory: writes in the burst (default 5000)")
    ap.add_argument("--warm-restarts", type=int, default=2, help="memory: warm restarts (default 2)")
    ap.add_argument("--episode-share", type=float, default=0.9, help="episodes vs runs (default 0.9)")
    ap.add_argument("--hub-entries-per-file", type=float, default=0.02,
                    help="entries per hub file as a share of the files (default 0.02: 10k at 500k)")
    ap.add_argument("--hub-entries", type=int, default=None, help="a fixed number of entries per hub file instead")
    ap.add_argument("--daemon-env", action="append", default=[], metavar="KEY=VALUE",
                    help="extra env for the daemon in every run (repeatable)")
    ap.add_argument("--data-root", type=Path, default=None,
                    help="where the runs' temp work dirs go (default: the system temp dir; e.g. /dev/shm)")
    ap.add_argument("--merge", action="store_true",
                    help="keep the sizes already in --json (the ones run now replace theirs): a sweep in pieces")
    ap.add_argument("--plot-only", action="store_true", help="redraw the table and PNG from --json")
    ap.add_argument("--json", type=Path, default=OUT / "bench_sweep.json")
    ap.add_argument("--png", type=Path, default=OUT / "sweep.png")
    ap.add_argument("--readme-png", default=str(BENCH / "sweep.png"),
                    help="where the PNG is copied for bench/README.md ('' for nowhere)")
    args = ap.parse_args()
    if args.plot_only:
        result = json.loads(args.json.read_text())
    else:
        result = sweep(args)
        save(result, args.json)
        print(f"\nJSON: {args.json}")
    table(result)
    plot(result, args.png, Path(args.readme_png) if args.readme_png else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
