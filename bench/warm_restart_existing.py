"""Warm restarts of the daemon on a data dir and a SecantusDB storage dir left by an earlier
``bench_memory.py --keep`` run (or any), the server started fresh first.

Why: at 500k files SecantusDB's own memory grows with every full read (the /parity child's,
the burst's) until the kernel's OOM killer ends it (24 GiB anon RSS on this 24 GiB machine,
during the third full read of one ``bench_memory.py`` run). Started again on the same
storage, the server serves the warm restarts; nothing about the sidecar changes (a Pod
restart keeps MongoDB as it is).

    .venv/bin/python bench/warm_restart_existing.py WORKDIR [--restarts 2] [--db bench]

WORKDIR holds ``data/system`` and ``secantus-data``. Per restart: seconds to /readyz 200 and
to the start-up reconcile done (nothing pending), daemon CPU, VmRSS/VmHWM at ready, at done
and after a settle, rchar until done (minus an empty-dir daemon's), the data-dir bytes and
files the reconcile read (the daemon's own count), the server's VmRSS. JSON to --json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import bench_memory as bm  # noqa: E402
from bench_latency import sidecar  # noqa: E402
from testkit.mongo import TestServer  # noqa: E402
from testkit.measure import proc_status  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("workdir", type=Path)
    ap.add_argument("--restarts", type=int, default=2)
    ap.add_argument("--db", default="bench")
    ap.add_argument("--settle", type=float, default=3.0)
    ap.add_argument("--json", type=Path, default=bm.OUT / "warm_restart_existing.json")
    args = ap.parse_args()
    data = args.workdir / "data" / "system"
    run_dir = args.workdir / "run-warm"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir()
    server = TestServer(args.workdir / "secantus-data", log_path=args.workdir / "secantus-warm.log")
    server.start()
    out: dict = {"files_on_disk": sum(1 for p in data.rglob("*") if p.is_file()), "restarts": []}
    try:
        empty = run_dir / "empty"
        empty.mkdir()
        d = sidecar(run_dir, empty, server.url, args.db + "_empty")
        base = bm.start_measured(d)
        base_io = base["io_at_reconciled"]
        d.stop()
        for n in range(args.restarts):
            d = sidecar(run_dir, data, server.url, args.db)
            w = bm.start_measured(d)
            bm.settle(d, args.settle)
            w["rss_after_settle_mib"] = bm.rss(d.pid)
            w["rchar_minus_empty_dir_mib"] = bm.read_mib(w["io_at_reconciled"], base_io, "rchar")
            w["server_vmrss_mib"] = bm.mib(proc_status(server.proc.pid).get("VmRSS")) if server.proc else None
            d.stop()
            for k in ("rss_timeline_mib", "reconcile_progress"):
                w.pop(k, None)
            out["restarts"].append(w)
            scan = w.get("scan") or {}
            print(f"warm restart {n + 1}: ready {w['ready_seconds']} s, done {w['reconciled_seconds']} s, "
                  f"CPU {w['cpu_seconds_to_reconciled']} s, VmRSS at ready {w['rss_at_ready_mib']}, at done "
                  f"{w['rss_at_reconciled_mib']}, settled {w['rss_after_settle_mib']}; rchar-empty "
                  f"{w['rchar_minus_empty_dir_mib']} MiB; data-dir read {scan.get('bytes_read')} B in "
                  f"{scan.get('files_read')} files, quick-checked {scan.get('files_quick_checked')}; "
                  f"server VmRSS {w['server_vmrss_mib']} MiB", flush=True)
    finally:
        server.stop()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2, default=str))
    print(f"JSON: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
