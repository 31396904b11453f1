"""Warm ``sync`` of the 10k-learner bench corpus (bench_sync.py's default corpus), A/B by PYTHONPATH:
a cold sync, then ``--warm N`` warm syncs (default 3: wall s each, the median, documents written,
whether the sync checkpoint was used where the code has one), and (where the code has it) 3 warm
``sync --checksum``. The first warm sync after the cold one checks in full (the cold one wrote, so it
leaves no checkpoint); ``warm_after_first_median_s`` is the median of the others."""
import inspect, json, shutil, statistics, sys, time
from pathlib import Path
ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent
sys.path.append(str(ROOT))
from testkit import corpus
from testkit.measure import free_port
from testkit.mongo import launch_secantus
from sidecar.config import Config
from sidecar.store import Store
from sidecar.sync import run_sync
WARM = int(sys.argv[sys.argv.index("--warm") + 1]) if "--warm" in sys.argv else 3
# --no-checkpoint: the sync checkpoint removed before each warm sync, so each checks in full (what a
# server without change streams gets, or one whose history no longer reaches the checkpoint)
NO_CHECKPOINT = "--no-checkpoint" in sys.argv
WORK = Path(sys.argv[1]); shutil.rmtree(WORK, ignore_errors=True); WORK.mkdir(parents=True)
port = free_port(); srv = launch_secantus(port, WORK / "db", WORK / "srv.log")
data = WORK / "data"; data.mkdir()
corpus.generate(data, 10_000, 2_000, 2_000, 50, seed=0)
time.sleep(3)  # older than the quick check's racy margin when first read
cfg = Config(runtime_data_dir=str(data), mongodb_url=f"mongodb://127.0.0.1:{port}/?directConnection=true",
             mongodb_db_name="ws")
store = Store(cfg)
def one(warm=False, **kw):
    if warm and NO_CHECKPOINT:
        store.db["memory_sidecar_meta"].delete_one({"_id": "sync_checkpoint"})
    t0 = time.monotonic(); rep, code = run_sync(cfg, store, report_path=WORK / "r.json", **kw)
    return time.monotonic() - t0, rep, code
cold, rep, code = one()
out = {"code": sys.modules["sidecar"].__file__, "no_checkpoint": NO_CHECKPOINT, "cold_s": round(cold, 2), "cold_exit": code}
warm = [one(warm=True) for _ in range(WARM)]
out["warm_s"] = [round(w[0], 2) for w in warm]
out["warm_median_s"] = round(statistics.median(w[0] for w in warm), 2)
if len(warm) > 1:
    out["warm_after_first_median_s"] = round(statistics.median(w[0] for w in warm[1:]), 2)
out["warm_checkpoint_used"] = [(w[1].get("checkpoint") or {}).get("used") for w in warm]
out["warm_writes"] = [w[1]["writes"]["total"] for w in warm]
out["warm_exit"] = [w[2] for w in warm]
out["warm_stages"] = warm[-1][1].get("stages")
out["warm_quick_check"] = {k: v for k, v in (warm[-1][1].get("quick_check") or {}).items() if k != "drift"}
if "checksum" in inspect.signature(run_sync).parameters:
    cs = [one(checksum=True) for _ in range(3)]
    out["checksum_s"] = [round(c[0], 2) for c in cs]
    out["checksum_median_s"] = round(statistics.median(c[0] for c in cs), 2)
    out["checksum_writes"] = [c[1]["writes"]["total"] for c in cs]
print(json.dumps(out))
store.close(); srv.terminate(); srv.wait(60)
