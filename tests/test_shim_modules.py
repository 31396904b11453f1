"""The shim's layout: one module per subject, standard library only, a wire format
shared with the sidecar's server, and no import of the sidecar (issue 12 point 4)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shim import _protocol
from sidecar import shimclients, shimserver

ROOT = Path(__file__).resolve().parent.parent
SHIM_MODULES = sorted(p.stem for p in (ROOT / "shim").glob("*.py"))


def test_the_shim_loads_only_the_standard_library():
    # What the API's interpreter pays for `import shim`: every module it loads,
    # outside the shim itself, is part of the standard library; never the sidecar.
    program = (
        "import json, sys; before = set(sys.modules)\n"
        + "".join(f"import shim.{m}\n" for m in SHIM_MODULES if m != "__init__")
        + "import shim\n"
        "print(json.dumps(sorted(set(sys.modules) - before)))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("SIDECAR_SHIM", None)
    out = subprocess.run([sys.executable, "-c", program], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=60, check=True).stdout
    loaded = json.loads(out)
    assert "shim._protocol" in loaded and "shim._intercept" in loaded
    foreign = [m for m in loaded
               if m != "shim" and not m.startswith("shim.")
               and m.split(".")[0] not in sys.stdlib_module_names]
    assert foreign == []
    assert not [m for m in loaded if m == "sidecar" or m.startswith("sidecar.")]


@pytest.mark.parametrize("module, name", [
    *((shimserver, n) for n in ("PROTOCOL_VERSION", "MAX_HEADER", "MAX_BODY", "MAX_PATH", "OPS", "STATUSES", "OK")),
    *((shimclients, n) for n in ("BREAKER_STATES", "REPORT_COUNTS"))])
def test_the_server_takes_the_wire_format_from_the_protocol_module(module, name):
    assert getattr(module, name) is getattr(_protocol, name)
    assert shimserver._LEN is _protocol.LEN


def test_a_frame_the_client_encodes_is_one_the_server_accepts():
    class Event:  # what the client hands to the encoder
        op, path, data, sha256, mtime_ns, seq, pid = "write", 'dïr/"q".json', b"{}", "a" * 64, 5, 7, 42

    report = _protocol.REPORT_FORMAT % ("open", 3, 1, 1)
    raw = _protocol.encode_header(Event(), True, report)
    (n,) = _protocol.LEN.unpack(raw[:4])
    header = shimserver.parse_header(raw[4:4 + n])
    assert n == len(raw) - 4 and header["path"] == 'dïr/"q".json' and header["ack"] is True
    assert shimclients.parse_report(header["shim"]) == {"breaker": "open", "unconfirmed": 3, "sync_failed": 1,
                                                       "breaker_opened": 1}


@pytest.mark.parametrize("module", SHIM_MODULES)
def test_no_shim_module_is_over_500_lines(module):
    assert len((ROOT / "shim" / f"{module}.py").read_text(encoding="utf-8").splitlines()) <= 500
