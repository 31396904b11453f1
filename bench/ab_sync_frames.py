"""Daemon-side cost of a sync shim frame: on_shim(ack=True), in-process, N writes of a 10 kB hub."""
import asyncio, hashlib, json, statistics, sys, tempfile, threading, time
from pathlib import Path
ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent
sys.path.append(str(ROOT))  # testkit: the server launcher (the code measured is whatever PYTHONPATH selects)
from testkit.measure import free_port
from testkit.mongo import launch_secantus
from sidecar.config import Config
from sidecar.shimserver import ShimEvent
import sidecar, os
if os.path.exists(os.path.join(os.path.dirname(sidecar.__file__), "main.py")):
    from sidecar.main import Daemon
else:
    from sidecar.daemon import Daemon
print(sidecar.__file__, file=sys.stderr)
N = int(sys.argv[1]) if len(sys.argv) > 1 else 300
tmp = Path(tempfile.mkdtemp())
port = free_port()
srv = launch_secantus(port, tmp / "db", tmp / "srv.log")
data = tmp / "data"; (data / "structured_hubs").mkdir(parents=True)
cfg = Config(runtime_data_dir=str(data), mongodb_url=f"mongodb://127.0.0.1:{port}/?directConnection=true",
             mongodb_db_name="micro", sidecar_http_port=0, sidecar_socket=str(tmp / "s.sock"))
d = Daemon(cfg)
loop = asyncio.new_event_loop()
stop = None
def run():
    asyncio.set_event_loop(loop)
    async def main():
        global stop
        stop = asyncio.Event()
        await d.serve(stop)
    loop.run_until_complete(main())
t = threading.Thread(target=run, daemon=True); t.start()
while not d.status.ready: time.sleep(0.05)
d.watcher.stop()  # the shim path alone
rel = "structured_hubs/learner_preferences.json"
hub = {f"learner-{i}": {"score": i, "pad": "x" * 80} for i in range(100)}
lat = []
for n in range(N):
    hub["learner-0"]["score"] = n
    body = json.dumps(hub, indent=2).encode()
    (data / rel).write_bytes(body)
    ev = ShimEvent(op="write", path=rel, data=body, sha256=hashlib.sha256(body).hexdigest(),
                   mtime_ns=time.time_ns(), seq=n, pid=1, ack=True)
    t0 = time.perf_counter()
    out = asyncio.run_coroutine_threadsafe(d.on_shim(ev), loop).result(30)
    lat.append((time.perf_counter() - t0) * 1000)
    assert out in ("written", "unchanged", "stale"), out
    time.sleep(0.01)
lat.sort()
print(json.dumps({"n": N, "p50_ms": round(statistics.median(lat), 2), "p90_ms": round(lat[int(0.9 * N)], 2),
                  "p99_ms": round(lat[int(0.99 * N)], 2)}))
loop.call_soon_threadsafe(stop.set); t.join(60); srv.kill()
