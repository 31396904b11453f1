"""Warm ``sync`` of the 10k-learner bench corpus (bench_sync.py's default corpus), A/B by PYTHONPATH:
a cold sync, then 3 warm syncs (median wall s, documents written), and (where the code has it) a
warm ``sync --checksum``."""
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
WORK = Path(sys.argv[1]); shutil.rmtree(WORK, ignore_errors=True); WORK.mkdir(parents=True)
port = free_port(); srv = launch_secantus(port, WORK / "db", WORK / "srv.log")
data = WORK / "data"; data.mkdir()
corpus.generate(data, 10_000, 2_000, 2_000, 50, seed=0)
time.sleep(3)  # older than the quick check's racy margin when first read
cfg = Config(runtime_data_dir=str(data), mongodb_url=f"mongodb://127.0.0.1:{port}/?directConnection=true",
             mongodb_db_name="ws")
store = Store(cfg)
def one(**kw):
    t0 = time.monotonic(); rep, code = run_sync(cfg, store, report_path=WORK / "r.json", **kw)
    return time.monotonic() - t0, rep, code
cold, rep, code = one()
out = {"code": sys.modules["sidecar"].__file__, "cold_s": round(cold, 2), "cold_exit": code}
warm = [one() for _ in range(3)]
out["warm_s"] = [round(w[0], 2) for w in warm]
out["warm_median_s"] = round(statistics.median(w[0] for w in warm), 2)
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
