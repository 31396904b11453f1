"""Warm restart at N files: seconds to /readyz 200, to the start-up reconcile done, daemon CPU,
and bytes the daemon read (/proc/<pid>/io rchar, read_bytes) until the reconcile was done.
The daemon is ``python -m sidecar run`` from whatever PYTHONPATH selects (A/B of two checkouts)."""
import json, os, shutil, subprocess, sys, time, urllib.request
from pathlib import Path
ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent
sys.path.append(str(ROOT)); sys.path.append(str(ROOT / "bench"))
from testkit.measure import free_port, cpu_seconds
from testkit.mongo import launch_secantus
import bench_memory
N = int(sys.argv[1]); WORK = Path(sys.argv[2]); CODE = sys.argv[3]
def get(port, path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")
    except Exception:
        return 0, {}
def io(pid):
    out = {}
    for line in open(f"/proc/{pid}/io"):
        k, v = line.split(":"); out[k] = int(v)
    return out
def start(url, data, sock):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SIDECAR_", "MONGODB_", "MEMORY_", "RUNTIME_"))}
    env.update(PYTHONPATH=CODE, RUNTIME_DATA_DIR=str(data), MONGODB_URL=url, MONGODB_DB_NAME="warm",
               SIDECAR_HTTP_PORT=str(port), SIDECAR_SOCKET=str(sock))
    t0 = time.monotonic()
    p = subprocess.Popen([sys.executable, "-m", "sidecar", "run"], env=env, cwd=CODE,
                         stdout=open(WORK / "daemon.log", "ab"), stderr=subprocess.STDOUT)
    ready = done = None
    while done is None:
        code, body = get(port, "/readyz")
        now = time.monotonic() - t0
        if code == 200 and ready is None:
            ready = now
        if ready is not None:
            _, st = get(port, "/memory/status")
            side = st.get("sidecar", {})
            rec = side.get("reconcile")
            if side.get("last_reconcile_at") and (rec is None or not rec.get("running")):
                done = time.monotonic() - t0
        if now > 1800: raise SystemExit("timeout")
        time.sleep(0.05)
    stats = io(p.pid); cpu = cpu_seconds(p.pid)
    p.terminate(); p.wait(60)
    return {"ready_s": round(ready, 2), "reconcile_done_s": round(done, 2), "cpu_s": cpu,
            "rchar_mib": round(stats["rchar"] / 2**20, 1), "read_bytes_mib": round(stats["read_bytes"] / 2**20, 1)}
shutil.rmtree(WORK, ignore_errors=True); WORK.mkdir(parents=True)
port = free_port(); srv = launch_secantus(port, WORK / "db", WORK / "srv.log")
url = f"mongodb://127.0.0.1:{port}/?directConnection=true"
data = WORK / "data"; data.mkdir()
bench_memory.generate(data, N, 0.7, 1000, 0)
time.sleep(3)  # older than the quick check's 2 s racy margin at the cold start's reads
out = {"files": N, "code": CODE, "cold": start(url, data, WORK / "s.sock")}
out["warm1"] = start(url, data, WORK / "s.sock")
out["warm2"] = start(url, data, WORK / "s.sock")
print(json.dumps(out))
srv.terminate(); srv.wait(60)
