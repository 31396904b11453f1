"""`make run`: the demo starts an embedded server, copies sample data and runs the daemon on it."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request

import pytest

from testkit import ROOT
from testkit.measure import free_port, wait_for

pytestmark = pytest.mark.integration


def test_make_run_demo_reaches_parity_on_sample_data(tmp_path):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "sidecar.demo", "--dir", str(tmp_path / "demo"),
                             "--port", str(port), "--seconds", "60"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        def parity():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/parity", timeout=10) as resp:
                    return json.loads(resp.read())
            except OSError:
                return None
        report = wait_for(lambda: (r := parity()) and r["parity"]["all_match"] and r, 45, 0.2, "demo parity")
        assert report["source_counts"]["hub_entries"] == 18
        assert (tmp_path / "demo" / "data" / "system" / "snapshot.json").exists()
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out.decode()[-2000:]
    assert f"status page: http://127.0.0.1:{port}/ " in out.decode()
