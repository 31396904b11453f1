"""``make run``: the sidecar on sample legacy data against an embedded MongoDB-wire server.

Starts SecantusDB (a dev-only dependency, run as a separate process, never
imported) on a free loopback port, copies the sample Mentorix files into
``.demo/data/system``, and runs ``memory-sidecar run`` on them until Ctrl-C
(or ``--seconds N``). Try, in another shell:

    open http://127.0.0.1:8787/ (the status page), or
    curl -s localhost:8787/memory/status; curl -s localhost:8787/parity; memory-sidecar status
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "tests" / "fixtures" / "legacy"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"embedded server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("embedded server did not start")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=ROOT / ".demo")
    ap.add_argument("--port", type=int, default=int(os.environ.get("SIDECAR_HTTP_PORT", 8787)))
    ap.add_argument("--seconds", type=float, default=0, help="stop after N seconds (0: until Ctrl-C)")
    args = ap.parse_args()
    data = args.dir / "data" / "system"
    if not data.exists():
        shutil.copytree(SAMPLES, data)
    mongo_port = _free_port()
    server_bin = Path(sys.executable).with_name("secantusd-py")
    storage = args.dir / "mongo"
    storage.mkdir(parents=True, exist_ok=True)
    # SIGTERM (e.g. from a test or a supervisor) must unwind like Ctrl-C so both
    # children are stopped, not orphaned.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    children: list[subprocess.Popen] = []
    log = open(args.dir / "secantus.log", "ab")
    try:
        mongo = subprocess.Popen([str(server_bin), "--host", "127.0.0.1", "--port", str(mongo_port),
                                  "--storage-path", str(storage), "--log-level", "WARNING"],
                                 stdout=log, stderr=subprocess.STDOUT)
        children.append(mongo)
        _wait_port(mongo_port, mongo)
        env = dict(os.environ, RUNTIME_DATA_DIR=str(data),
                   MONGODB_URL=f"mongodb://127.0.0.1:{mongo_port}/?directConnection=true",
                   SIDECAR_HTTP_PORT=str(args.port), SIDECAR_SOCKET=str(args.dir / "sidecar.sock"))
        print(f"embedded MongoDB-wire server on 127.0.0.1:{mongo_port}; data dir {data}", flush=True)
        print(f"status page: http://127.0.0.1:{args.port}/  (JSON: /status /memory/status /parity /metrics)",
              flush=True)
        sidecar = subprocess.Popen([sys.executable, "-m", "sidecar", "run"], env=env)
        children.insert(0, sidecar)
        try:
            return sidecar.wait(timeout=args.seconds or None)
        except subprocess.TimeoutExpired:
            return 0
    except KeyboardInterrupt:
        return 0
    finally:
        for child in children:  # the sidecar first: its final flush needs the server
            if child.poll() is None:
                child.terminate()
                try:
                    child.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    child.kill()
        log.close()

if __name__ == "__main__":
    sys.exit(main())
