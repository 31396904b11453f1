"""Benchmark: one-shot `sync` vs. raw insert_many vs. the Mentorix per-entry upsert loop.

One run, one generated corpus (testkit/corpus.py, written exactly the way Mentorix writes
its files), and per repetition one server that every measurement of that repetition
shares. Each measurement below starts on a fresh database:

  c) per-entry     Mentorix's scripts/backfill_memory_to_mongo.py pattern: one
                   update_one($set, upsert) per hub entry, one replace_one(upsert)
                   per episode, one for the snapshot (the same documents, indexes
                   created first); measured on the first --loop-sample hub entries
                   (episodes in proportion) and extrapolated linearly, unless
                   --loop-sample 0. Runs first: on SecantusDB a single-document
                   upsert gets slower as the server accumulates data, so measuring it
                   first, on the smallest server, is the conservative choice.
  a) insert_many   the very documents the sidecar builds (from its own scan), unordered,
                   in batches of SIDECAR_BATCH_SIZE, into the same collections, indexes
                   created first (not timed)
  b) cold sync     run_sync() on an empty database: indexes, load state, scan, bulk
                   writes, events, parity re-read, report file
then on the database of (b):
  d) warm re-sync  nothing changed: must write 0 documents
  d2) 2nd warm     the same again: the first left the sync checkpoint (sidecar/checkpoint.py), so
                   nothing is read (the first one checks in full after the cold sync's 36k writes)
  e) one change    one entry of a 10k-entry hub file changed and the file rewritten the
                   way Mentorix does (json.dumps(indent=2)): must write 1 hub document

Besides wall time, each step records this process's CPU time and the server's (from
/proc), which stay comparable when other processes compete for the cores.

    .venv/bin/python bench/bench_sync.py                 # full size: 10k learners x 3 hubs
    .venv/bin/python bench/bench_sync.py --learners 1000 --episodes 200 --runs 200   # quick
    .venv/bin/python bench/bench_sync.py --repeat 3 --profile

Without --mongodb-url a SecantusDB server is started per repetition on a free loopback
port with a temporary storage dir, warmed up, and stopped after it. Results: a table on
stdout and bench/out/bench_sync.json (git-ignored). A benchmark, not a test: nothing here
asserts timings.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import os
import platform
import pstats
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # testkit/, the support package shared with the tests

import pymongo  # noqa: E402

from sidecar import sync as sync_mod  # noqa: E402
from sidecar.config import Config  # noqa: E402
from sidecar.names import EPISODES, EVENTS, FILES, HUBS, SNAPSHOTS  # noqa: E402
from sidecar.state import MirrorState  # noqa: E402
from sidecar.reconcile import Reconciler  # noqa: E402
from sidecar.store import Store  # noqa: E402
from testkit import corpus  # noqa: E402
from testkit.measure import code_version, loadavg  # noqa: E402
from testkit.mongo import TestServer  # noqa: E402

TARGET_COLD_VS_INSERT = 1.25
TARGET_LOOP_VS_WARM = 20.0
CHANGED_HUB = "learner_preferences"


# --- measuring ------------------------------------------------------------------------


class Clock:
    """Wall time, this process's CPU and the server's CPU over one block."""

    def __init__(self, server: TestServer | None) -> None:
        self.server = server
        self.result: dict[str, float | None] = {}

    @contextmanager
    def measure(self):
        s0 = self.server.cpu_seconds() if self.server else None
        c0 = time.process_time()
        t0 = time.perf_counter()
        yield self.result
        wall = time.perf_counter() - t0
        cpu = time.process_time() - c0
        s1 = self.server.cpu_seconds() if self.server else None
        self.result.update(seconds=wall, client_cpu_s=cpu,
                           server_cpu_s=(s1 - s0) if s0 is not None and s1 is not None else None)


def physical(config: Config, logical: str) -> str:
    return config.sidecar_files_collection if logical == FILES else logical


def body(doc: dict) -> dict:
    return {k: v for k, v in doc.items() if k != "_id"}


class Bench:
    def __init__(self, args: argparse.Namespace, data_dir: Path, work: Path, url: str,
                 server: TestServer | None) -> None:
        self.args = args
        self.data_dir = data_dir
        self.work = work
        self.url = url
        self.server = server
        self.prefix = f"bench_{uuid.uuid4().hex[:6]}"
        self.dbs: list[str] = []
        self.admin = pymongo.MongoClient(url, serverSelectionTimeoutMS=10_000)

    def config(self, db_name: str) -> Config:
        return Config(runtime_data_dir=self.data_dir, mongodb_url=self.url, mongodb_db_name=db_name)

    def fresh(self, what: str) -> tuple[Config, Store]:
        name = f"{self.prefix}_{what}_{len(self.dbs)}"
        self.dbs.append(name)
        cfg = self.config(name)
        store = Store(cfg)
        store.ping()
        return cfg, store

    def drop(self, store: Store) -> None:
        store.client.drop_database(store.db.name)
        store.close()

    def clock(self) -> Clock:
        return Clock(self.server)

    # --- the documents the sidecar would write -----------------------------------------
    def scan(self) -> tuple[list, float]:
        cfg = self.config("unused")
        t0 = time.perf_counter()
        ops, view = Reconciler(cfg).scan(MirrorState(), "bench")
        took = time.perf_counter() - t0
        if view.problems:
            raise SystemExit(f"corpus has bad input: {[p.message for p in view.problems[:5]]}")
        actions = {op.action for op in ops}
        if actions != {"insert"}:
            raise SystemExit(f"a scan against an empty state should only insert, got {actions}")
        if any(op.blob is not None for op in ops):
            raise SystemExit("corpus has GridFS content; the insert_many baseline does not model it")
        return ops, took

    # --- a) ------------------------------------------------------------------------
    def insert_many(self, ops: list) -> dict:
        cfg, store = self.fresh("insert")
        store.ensure_indexes()
        by_coll: dict[str, list[dict]] = {}
        for op in ops:
            by_coll.setdefault(physical(cfg, op.coll), []).append(op.doc)
        size = cfg.sidecar_batch_size
        clock = self.clock()
        with clock.measure():
            for name, docs in by_coll.items():
                coll = store.db[name]
                for start in range(0, len(docs), size):
                    coll.insert_many(docs[start:start + size], ordered=False)
        out = dict(clock.result, documents=len(ops),
                   by_collection={k: len(v) for k, v in by_coll.items()})
        self.drop(store)
        return out

    # --- b), d), e) --------------------------------------------------------------------
    def run_sync(self, cfg: Config, store: Store, label: str) -> dict:
        clock = self.clock()
        with clock.measure():
            report, code = sync_mod.run_sync(cfg, store, report_path=self.work / f"report_{label}.json")
        # The steps' wall time as sync times them itself (the report's "stages", sidecar/timers.py).
        return dict(clock.result, exit_code=code, writes=report["writes"], parity=report["parity"],
                    phases={k: round(v["total_s"], 4) for k, v in report["stages"].items()},
                    events=store.db[EVENTS].count_documents({}))

    def profile_syncs(self, top: int = 40) -> dict:
        """cProfile one extra cold sync and the warm re-sync after it (their own database)."""
        cfg, store = self.fresh("profile")
        out_dir = Path(self.args.out).parent
        out_dir.mkdir(parents=True, exist_ok=True)
        result = {}
        for label in ("cold", "warm"):
            settle()
            prof = cProfile.Profile()
            prof.enable()
            report, code = sync_mod.run_sync(cfg, store, report_path=self.work / f"report_profile_{label}.json")
            prof.disable()
            prof.dump_stats(str(out_dir / f"{label}_sync.prof"))
            texts = {}
            for key in ("cumulative", "tottime"):
                buf = io.StringIO()
                pstats.Stats(prof, stream=buf).strip_dirs().sort_stats(key).print_stats(top)
                texts[key] = buf.getvalue()
            text_path = out_dir / f"{label}_sync_profile.txt"
            text_path.write_text("\n".join(f"=== sorted by {k} ===\n{v}" for k, v in texts.items()))
            result[label] = {"exit_code": code, "prof": str(out_dir / f"{label}_sync.prof"), "text": str(text_path)}
        self.drop(store)
        return result

    # --- c) ------------------------------------------------------------------------
    def per_entry_loop(self, ops: list) -> dict:
        cfg, store = self.fresh("loop")
        store.ensure_indexes()  # a Mentorix Mongo store creates the same indexes first
        hubs_c, eps_c, snaps_c = store.db[HUBS], store.db[EPISODES], store.db[SNAPSHOTS]
        hub_docs = [op.doc for op in ops if op.coll == HUBS]
        ep_docs = [op.doc for op in ops if op.coll == EPISODES]
        snap_docs = [op.doc for op in ops if op.coll == SNAPSHOTS]
        sample = self.args.loop_sample
        if sample and sample < len(hub_docs):
            n_hub = sample
            n_ep = max(1, round(len(ep_docs) * sample / len(hub_docs))) if ep_docs else 0
        else:
            n_hub, n_ep = len(hub_docs), len(ep_docs)
        parts: dict[str, dict] = {}

        clock = self.clock()
        with clock.measure():
            for doc in hub_docs[:n_hub]:
                hubs_c.update_one({"hub_type": doc["hub_type"], "item_key": doc["item_key"]},
                                  {"$set": body(doc)}, upsert=True)
        parts["hubs"] = dict(clock.result, sampled=n_hub, total=len(hub_docs))
        clock = self.clock()
        with clock.measure():
            for doc in ep_docs[:n_ep]:
                eps_c.replace_one({"run_id": doc["run_id"]}, body(doc), upsert=True)
        parts["episodes"] = dict(clock.result, sampled=n_ep, total=len(ep_docs))
        clock = self.clock()
        with clock.measure():
            for doc in snap_docs:
                snaps_c.replace_one({"snapshot_id": doc["snapshot_id"]}, body(doc), upsert=True)
        parts["snapshot"] = dict(clock.result, sampled=len(snap_docs), total=len(snap_docs))
        self.drop(store)

        measured = sum(p["seconds"] for p in parts.values())
        estimate = 0.0
        for p in parts.values():
            if p["sampled"]:
                estimate += p["seconds"] * p["total"] / p["sampled"]
        extrapolated = any(p["sampled"] < p["total"] for p in parts.values())
        return {"seconds": estimate, "measured_seconds": measured, "extrapolated": extrapolated,
                "writes": sum(p["sampled"] for p in parts.values()),
                "documents": sum(p["total"] for p in parts.values()),
                "per_write_ms": 1000 * measured / max(1, sum(p["sampled"] for p in parts.values())),
                "parts": parts}

    # --- e) helper ------------------------------------------------------------------------
    def change_one_entry(self, rep: int) -> tuple[Path, bytes, str]:
        path = self.data_dir / "structured_hubs" / f"{CHANGED_HUB}.json"
        original = path.read_bytes()
        data = json.loads(original)
        keys = list(data)
        key = keys[(len(keys) // 2 + rep) % len(keys)]
        data[key] = dict(data[key], last_score=-1.0, bench_changed_at=datetime.now(timezone.utc).isoformat())
        path.write_text(json.dumps(data, indent=2), encoding="utf-8")  # the Mentorix write
        return path, original, key

    def fresh_ops(self, rep: int, r: dict) -> list:
        """The sidecar's documents, rebuilt per use so no large structure outlives its step."""
        ops, scan_s = self.scan()
        r.setdefault("scan_seconds", scan_s)
        log(f"[{rep}] sidecar scan: {len(ops)} ops in {scan_s:.2f}s")
        return ops

    def warm_up(self) -> None:
        """A new server is slow on its first requests; pay that before measuring."""
        db = self.admin[f"{self.prefix}_warmup"]
        coll = db["w"]
        coll.create_index([("t", 1), ("k", 1)], unique=True)
        coll.insert_many([{"t": "a", "k": str(i), "p": {"i": i}} for i in range(2000)], ordered=False)
        for i in range(300):
            coll.update_one({"t": "b", "k": str(i)}, {"$set": {"p": {"i": i}}}, upsert=True)
            coll.replace_one({"t": "c", "k": str(i)}, {"t": "c", "k": str(i)}, upsert=True)
        list(coll.find({}, {"t": 1, "k": 1}))
        self.admin.drop_database(db.name)

    def one_repetition(self, rep: int) -> dict:
        self.warm_up()
        r: dict[str, Any] = {"loadavg_before": loadavg()}
        ops = self.fresh_ops(rep, r)
        log(f"[{rep}] c) per-entry upsert loop"
            + (f" (sample of {self.args.loop_sample} hub entries)" if self.args.loop_sample else " (full)"))
        settle()
        r["per_entry_loop"] = self.per_entry_loop(ops)
        del ops
        pl = r["per_entry_loop"]
        log(f"[{rep}]    {pl['measured_seconds']:.2f}s for {pl['writes']} writes"
            f" ({pl['per_write_ms']:.2f} ms/write) -> {pl['seconds']:.1f}s for {pl['documents']}"
            + (" (extrapolated)" if pl["extrapolated"] else ""))
        ops = self.fresh_ops(rep, r)
        log(f"[{rep}] a) insert_many of {len(ops)} documents")
        settle()
        r["insert_many"] = self.insert_many(ops)
        del ops
        log(f"[{rep}]    {r['insert_many']['seconds']:.2f}s")

        log(f"[{rep}] b) cold sync")
        cfg, store = self.fresh("sync")
        settle()
        r["cold_sync"] = self.run_sync(cfg, store, "cold")
        log(f"[{rep}]    {r['cold_sync']['seconds']:.2f}s writes={r['cold_sync']['writes']['total']}"
            f" exit={r['cold_sync']['exit_code']}")

        log(f"[{rep}] d) warm re-sync")
        settle()
        r["warm_sync"] = self.run_sync(cfg, store, "warm")
        log(f"[{rep}]    {r['warm_sync']['seconds']:.2f}s writes={r['warm_sync']['writes']['total']}")

        log(f"[{rep}] d2) second warm re-sync (the sync checkpoint the first one left)")
        settle()
        r["warm2_sync"] = self.run_sync(cfg, store, "warm2")
        log(f"[{rep}]    {r['warm2_sync']['seconds']:.2f}s writes={r['warm2_sync']['writes']['total']}")

        log(f"[{rep}] e) one entry changed in {CHANGED_HUB}.json")
        path, original, key = self.change_one_entry(rep)
        events_before = store.db[EVENTS].count_documents({})
        settle()
        try:
            r["one_change"] = self.run_sync(cfg, store, "one_change")
        finally:
            path.write_text(original.decode("utf-8"), encoding="utf-8")
        r["one_change"]["events_written"] = r["one_change"]["events"] - events_before
        r["one_change"]["hub_entries_in_file"] = len(json.loads(original))
        w = r["one_change"]["writes"]
        log(f"[{rep}]    {r['one_change']['seconds']:.2f}s hubs_upserted={w['hubs_upserted']}"
            f" files_upserted={w['files_upserted']} total={w['total']}")
        self.drop(store)

        r["loadavg_after"] = loadavg()
        return r

    def cleanup(self) -> None:
        for name in self.dbs:
            try:
                self.admin.drop_database(name)
            except pymongo.errors.PyMongoError:
                pass
        self.admin.close()


# --- summary ---------------------------------------------------------------------------


def git_revision() -> dict[str, Any]:
    """The commit measured, and whether sidecar/ differed from it."""
    code = code_version(("sidecar",))
    return {"commit": code["head"] or None, "sidecar_modified": code["uncommitted_changes"]}


def settle() -> None:
    """Start each measurement with no garbage pending from the previous one."""
    gc.collect()


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def median(values: list[float]) -> float:
    return statistics.median(values)


def summarize(reps: list[dict]) -> dict:
    def med(path: tuple[str, ...]) -> float:
        vals = []
        for r in reps:
            v: Any = r
            for p in path:
                v = v[p]
            vals.append(v)
        return median(vals)

    insert = med(("insert_many", "seconds"))
    cold = med(("cold_sync", "seconds"))
    loop = med(("per_entry_loop", "seconds"))
    warm = med(("warm_sync", "seconds"))
    warm2 = med(("warm2_sync", "seconds"))
    one = med(("one_change", "seconds"))
    # Counts must hold in every repetition: report the worst one.
    warm_writes = max(r[k]["writes"]["total"] for r in reps for k in ("warm_sync", "warm2_sync"))
    one_w = [r["one_change"]["writes"] for r in reps]
    one_docs = max(w["hubs_upserted"] + w["episodes_upserted"] + w["snapshots_upserted"] for w in one_w)
    one_hubs = max(w["hubs_upserted"] for w in one_w)
    one_files = max(w["files_upserted"] for w in one_w)
    one_total = max(w["total"] for w in one_w)
    one_events = max(r["one_change"]["events_written"] for r in reps)
    extrapolated = any(r["per_entry_loop"]["extrapolated"] for r in reps)
    parity_ok = all(r[k]["exit_code"] == 0 for r in reps for k in ("cold_sync", "warm_sync", "warm2_sync",
                                                                     "one_change"))
    phases = {}
    for kind in ("cold_sync", "warm_sync", "one_change"):
        labels = reps[0][kind]["phases"].keys()
        phases[kind] = {lab: round(median([r[kind]["phases"].get(lab, 0.0) for r in reps]), 3) for lab in labels}
    rows = [
        {"metric": "cold sync / insert_many (wall time)", "value": cold / insert, "unit": "x",
         "target": f"<= {TARGET_COLD_VS_INSERT}x", "pass": cold / insert <= TARGET_COLD_VS_INSERT},
    ]
    if all(r[k]["server_cpu_s"] is not None for r in reps for k in ("cold_sync", "insert_many")):
        # CPU seconds (client + server) do not count time spent waiting for a core, so
        # they stay comparable when other processes load the machine.
        cpu = lambda k: median([r[k]["client_cpu_s"] + r[k]["server_cpu_s"] for r in reps])  # noqa: E731
        ratio = cpu("cold_sync") / cpu("insert_many")
        rows.append({"metric": "cold sync / insert_many (CPU s, client+server)", "value": ratio, "unit": "x",
                     "target": f"<= {TARGET_COLD_VS_INSERT}x", "pass": ratio <= TARGET_COLD_VS_INSERT})
    rows += [
        {"metric": "per-entry loop / warm re-sync" + (" (loop extrapolated)" if extrapolated else ""),
         "value": loop / warm, "unit": "x", "target": f">= {TARGET_LOOP_VS_WARM:g}x",
         "pass": loop / warm >= TARGET_LOOP_VS_WARM},
    ]
    rows += [
        {"metric": "per-entry loop / cold sync" + (" (loop extrapolated)" if extrapolated else ""),
         "value": loop / cold, "unit": "x", "target": "(info)", "pass": None},
        {"metric": "warm re-sync / second warm re-sync (the checkpoint)", "value": warm / warm2, "unit": "x",
         "target": "(info)", "pass": None},
        {"metric": "warm re-syncs: documents written", "value": warm_writes, "unit": "",
         "target": "0", "pass": warm_writes == 0},
        {"metric": "one change: hub documents written", "value": one_docs, "unit": "",
         "target": "1", "pass": one_docs == 1 and one_hubs == 1},
        {"metric": "one change: + file manifest / events", "value": f"{one_files} / {one_events}",
         "unit": "", "target": "(info)", "pass": None},
        {"metric": "parity after every sync (exit 0)", "value": "yes" if parity_ok else "NO", "unit": "",
         "target": "yes", "pass": parity_ok},
    ]
    seconds = {
        "insert_many": insert,
        "cold_sync": cold,
        "per_entry_loop" + ("_extrapolated" if extrapolated else ""): loop,
        "warm_sync": warm,
        "warm2_sync": warm2,
        "one_change_sync": one,
        "sidecar_scan_only": median([r["scan_seconds"] for r in reps]),
    }
    return {"rows": rows, "seconds": seconds, "phases": phases,
            "one_change_writes": {"hubs_upserted": one_hubs, "files_upserted": one_files,
                                  "total": one_total, "events": one_events},
            "loop_extrapolated": extrapolated}


def fmt_value(v: Any, unit: str) -> str:
    if isinstance(v, float):
        return f"{v:.2f}{unit}"
    return f"{v}{unit}"


def render_table(summary: dict, reps: list[dict]) -> str:
    lines = ["| metric | measured | target | result |", "|---|---:|---:|---|"]
    for row in summary["rows"]:
        res = "" if row["pass"] is None else ("PASS" if row["pass"] else "MISS")
        lines.append(f"| {row['metric']} | {fmt_value(row['value'], row['unit'])} | {row['target']} | {res} |")
    lines += ["", "| step | seconds (median) | client CPU s | server CPU s |", "|---|---:|---:|---:|"]

    def cpu(kind: str, key: str) -> str:
        vals = [r[kind].get(key) for r in reps]
        if any(v is None for v in vals):
            return "-"
        return f"{median(vals):.2f}"

    def loop_cpu(key: str) -> str:
        """CPU of the writes really made, scaled like the seconds when extrapolated."""
        vals = []
        for r in reps:
            total = 0.0
            for part in r["per_entry_loop"]["parts"].values():
                if part.get(key) is None:
                    return "-"
                if part["sampled"]:
                    total += part[key] * part["total"] / part["sampled"]
            vals.append(total)
        return f"{median(vals):.2f}"

    pl = reps[0]["per_entry_loop"]
    loop_label = "c) per-entry upsert loop"
    if summary["loop_extrapolated"]:
        loop_label += (f" — EXTRAPOLATED from {pl['writes']} measured writes"
                       f" ({median([r['per_entry_loop']['measured_seconds'] for r in reps]):.2f}s,"
                       f" {median([r['per_entry_loop']['per_write_ms'] for r in reps]):.2f} ms/write)"
                       f" to {pl['documents']}")
    else:
        loop_label += f" ({pl['documents']} writes)"
    s = summary["seconds"]
    loop_s = s.get("per_entry_loop_extrapolated", s.get("per_entry_loop"))
    lines += [
        f"| a) insert_many, same documents ({reps[0]['insert_many']['documents']}) | {s['insert_many']:.2f} "
        f"| {cpu('insert_many', 'client_cpu_s')} | {cpu('insert_many', 'server_cpu_s')} |",
        f"| b) cold sync (full backfill + parity report) | {s['cold_sync']:.2f} "
        f"| {cpu('cold_sync', 'client_cpu_s')} | {cpu('cold_sync', 'server_cpu_s')} |",
        f"| {loop_label} | {loop_s:.2f} | {loop_cpu('client_cpu_s')} | {loop_cpu('server_cpu_s')} |",
        f"| d) warm re-sync, nothing changed | {s['warm_sync']:.2f} "
        f"| {cpu('warm_sync', 'client_cpu_s')} | {cpu('warm_sync', 'server_cpu_s')} |",
        f"| d2) second warm re-sync (the sync checkpoint: nothing read) | {s['warm2_sync']:.2f} "
        f"| {cpu('warm2_sync', 'client_cpu_s')} | {cpu('warm2_sync', 'server_cpu_s')} |",
        f"| e) sync after one entry changed | {s['one_change_sync']:.2f} "
        f"| {cpu('one_change', 'client_cpu_s')} | {cpu('one_change', 'server_cpu_s')} |",
        f"| (info) sidecar scan only, no database (read+parse+hash+build docs) | {s['sidecar_scan_only']:.2f} | | |",
    ]
    lines += ["", "| stage of run_sync (its report's `stages`, median wall s) | cold | warm | one change |",
              "|---|---:|---:|---:|"]
    ph = summary["phases"]

    def cell(kind: str, label: str) -> str:
        return f"{ph[kind].get(label, 0.0):.2f}"

    for label in ph["cold_sync"]:
        lines.append(f"| {label} | {cell('cold_sync', label)} | {cell('warm_sync', label)} "
                     f"| {cell('one_change', label)} |")
    return "\n".join(lines)


# --- main -------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--learners", type=int, default=10_000, help="entries in each of the 3 hub files")
    ap.add_argument("--episodes", type=int, default=2_000)
    ap.add_argument("--runs", type=int, default=2_000)
    ap.add_argument("--jobs", type=int, default=50, help="entries in scheduled_jobs.json")
    ap.add_argument("--repeat", type=int, default=1, help="repetitions; the median is reported")
    ap.add_argument("--loop-sample", type=int, default=3000,
                    help="hub entries the per-entry loop really writes (episodes in proportion); "
                         "the rest is extrapolated linearly. 0 = write everything")
    ap.add_argument("--mongodb-url", help="use this server instead of starting SecantusDB")
    ap.add_argument("--profile", action="store_true",
                    help="also cProfile an extra cold sync and warm re-sync (bench/out/*_sync_profile.txt)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "bench_sync.json"))
    ap.add_argument("--seed", type=int, default=0)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench_sync_"))
    servers: list[TestServer] = []

    @contextmanager
    def session(label: str):
        """A Bench on the given URL, or on a SecantusDB started for this step alone."""
        server = None
        if args.mongodb_url:
            url = args.mongodb_url
        else:
            server = TestServer.in_dir(work / label)
            servers.append(server)
            server.start()
            url = server.url
            log(f"SecantusDB on 127.0.0.1:{server.port}, storage {server.storage}")
        bench = Bench(args, data_dir, work, url, server)
        try:
            yield bench
        finally:
            bench.cleanup()
            if server is not None:
                server.stop()
                shutil.rmtree(server.storage, ignore_errors=True)

    try:
        data_dir = work / "data" / "system"
        t0 = time.perf_counter()
        counts = corpus.generate(data_dir, args.learners, args.episodes, args.runs, args.jobs, seed=args.seed)
        log(f"corpus: {counts} in {time.perf_counter() - t0:.1f}s at {data_dir}")
        revision = git_revision()
        reps = []
        for rep in range(args.repeat):
            with session(f"rep{rep}") as bench:
                reps.append(bench.one_repetition(rep))
        profile = None
        if args.profile:
            with session("profile") as bench:
                profile = bench.profile_syncs()
        summary = summarize(reps)
        table = render_table(summary, reps)
        cmd = " ".join([".venv/bin/python", "bench/bench_sync.py", *(argv if argv is not None else sys.argv[1:])])
        header = (f"corpus: {args.learners} learners x 3 hubs, {args.episodes} episodes, {args.runs} run files, "
                  f"{args.jobs} scheduled jobs, 1 snapshot; {args.repeat} repetition(s), median; "
                  f"server: {'external (--mongodb-url)' if args.mongodb_url else 'SecantusDB on loopback, a fresh one per repetition'}; "
                  f"{os.cpu_count()} CPUs, Python {platform.python_version()}; load average before/after: "
                  f"{reps[0]['loadavg_before']} / {reps[-1]['loadavg_after']}; commit {revision['commit']}"
                  f"{' (sidecar/ modified)' if revision['sidecar_modified'] else ''}")
        print(f"\n$ {cmd}\n{header}\n")
        print(table)
        if profile:
            print(f"\ncProfile of an extra cold and warm sync: {profile['cold']['text']}, {profile['warm']['text']}")
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        result = {
            "command": cmd,
            "generated_at": datetime.now(timezone.utc).isoformat(),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "platform": platform.platform()},
            "revision": revision,
            "server": "external" if args.mongodb_url else "secantusdb, fresh per repetition",
            "corpus": dict(counts, learners=args.learners, jobs=args.jobs),
            "targets": {"cold_vs_insert_many_max": TARGET_COLD_VS_INSERT,
                        "loop_vs_warm_min": TARGET_LOOP_VS_WARM, "warm_writes": 0, "one_change_docs": 1},
            "summary": summary,
            "repetitions": reps,
            "profile": profile,
            "table_markdown": table,
        }
        out.write_text(json.dumps(result, indent=2, default=str))
        log(f"results: {out}")
        return 0
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
