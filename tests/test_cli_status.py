"""`memory-sidecar status` and the progress bars of the long one-shot commands (issue 14 point 4).

`status` reads the running daemon's status server (GET /status) and prints the
status page's sections as tables, or the raw JSON; its exit code says ready (0),
not ready (1) or no daemon (5). `sync`, `parity` and `restore` draw a bar on
stderr when it is a terminal (checked on a pty) and nothing otherwise.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time

import pytest

from testkit import ROOT
from testkit.measure import free_port, wait_for
from testkit.process import OWN_ENV_PREFIXES as _OWN_ENV_PREFIXES
from deletion_helpers import write_in_place
from sidecar.cli import EXIT_NO_DAEMON, main
from sidecar.page import render_text

SECRET = "S3CRET-cli-91ab"


# --- status ----------------------------------------------------------------------------------
@pytest.mark.integration
def test_status_of_a_ready_daemon_as_a_table_and_as_json(data_dir, running, capsys, monkeypatch):
    d = running(sidecar_events_payload="full")
    write_in_place(data_dir, "runs/run_cli-1.json", {"run_id": "cli-1", "note": SECRET})
    wait_for(lambda: d.daemon.store.db.memory_files.find_one({"_id": "runs/run_cli-1.json"}), 10,
             what="the write mirrored")
    wait_for(lambda: d.get("/status").json()["pending"]["paths"] == 0, 10, what="nothing pending")
    assert d.wait_parity()["parity"]["all_match"]

    # The default address: SIDECAR_HTTP_HOST/PORT, as the daemon's own config reads them.
    monkeypatch.setenv("SIDECAR_HTTP_HOST", "127.0.0.1")
    monkeypatch.setenv("SIDECAR_HTTP_PORT", str(d.daemon.http_port))
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == f"memory-sidecar at http://127.0.0.1:{d.daemon.http_port}"
    assert "ready        yes" in lines
    assert any(line.startswith("mongodb      connected; database ") for line in lines)
    assert any(line.startswith("mirrored     1 files") for line in lines)
    assert any(line.startswith("parity       all match (the last GET /parity") for line in lines)
    files_row = next(line.split() for line in lines if line.strip().startswith("files "))
    assert files_row[:3] == ["files", "yes", "1"]
    assert any("runs/run_cli-1.json" in line and "file_inserted" in line for line in lines)
    assert "divergences  0 held" in out and "problems     0 now" in out
    assert SECRET not in out

    assert main(["status", "--json", "--url", d.url]) == 0
    raw = json.loads(capsys.readouterr().out)
    assert set(raw) == set(d.get("/status").json())  # GET /status, as it is
    assert raw["ready"] is True and raw["parity"]["kinds"]["files"]["files"] == 1
    assert SECRET not in json.dumps(raw)


@pytest.mark.integration
def test_status_of_a_daemon_that_is_not_ready_exits_1_with_the_reason(data_dir, tmp_path, running, capsys):
    link = tmp_path / "link"
    link.symlink_to(data_dir)  # a data dir that is a symlink: never followed, not ready
    d = running(wait_ready=False, runtime_data_dir=link)
    wait_for(lambda: d.daemon.status.root_problem, 10, what="the root problem")
    assert main(["status", "--url", d.url]) == 1
    out = capsys.readouterr().out
    reason = d.get("/readyz").json()["reason"]
    assert f"ready        NO: {reason}" in out.splitlines()
    assert main(["status", "--json", "--url", d.url]) == 1
    assert json.loads(capsys.readouterr().out)["reason"] == reason


def test_status_without_a_daemon_exits_5(capsys):
    port = free_port()  # nothing listens there
    assert main(["status", "--url", f"http://127.0.0.1:{port}", "--timeout", "2"]) == EXIT_NO_DAEMON == 5
    err = capsys.readouterr().err
    assert f"no daemon answers at http://127.0.0.1:{port}" in err


def test_status_text_shows_control_characters_in_paths_instead_of_sending_them():
    evil = "runs/\x1b[2J\x1b]0;owned\x07.json"
    text = render_text({"ready": False, "reason": "x", "problems": [{"path": evil, "reason": "invalid_json",
                                                                    "message": evil}],
                        "events": [{"event_type": "file_inserted", "path": evil, "source": "watch"}],
                        "divergences": {"count": 1, "items": [{"path": evil, "keys": [evil]}]}})
    assert "\x1b" not in text and "\x07" not in text
    assert "runs/\\x1b[2J\\x1b]0;owned\\x07.json" in text


# --- progress bars: on a terminal only --------------------------------------------------------------
def _env(data_dir, mongo_url, db_name) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(_OWN_ENV_PREFIXES)}
    return {**base, "RUNTIME_DATA_DIR": str(data_dir), "MONGODB_URL": mongo_url, "MONGODB_DB_NAME": db_name,
            "SIDECAR_SERVER_SELECTION_TIMEOUT_MS": "2000", "PYTHONPATH": str(ROOT)}


def _on_pty(args: list[str], env: dict[str, str], timeout: float = 120) -> tuple[int, bytes]:
    """Run the CLI with stderr on a pseudo-terminal; (exit code, what it wrote there)."""
    master, slave = pty.openpty()
    # A terminal has a size (a fresh pty is 0x0, where tqdm draws nothing).
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "sidecar", *args], cwd=ROOT, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        return proc.wait(timeout=60), b"".join(chunks)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def _piped(args: list[str], env: dict[str, str]) -> tuple[int, bytes]:
    proc = subprocess.run([sys.executable, "-m", "sidecar", *args], cwd=ROOT, env=env,
                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          timeout=120, check=False)
    return proc.returncode, proc.stderr


COMMANDS = [  # (argv, the bar's label); sync first: restore needs the documents
    (["sync"], b"scanning"),
    (["parity"], b"comparing"),
    (["divergences"], b"scanning"),
    (["restore", "--out", "{out}"], b"restoring"),
]


@pytest.mark.integration
@pytest.mark.parametrize("terminal", [True, False], ids=["pty", "pipe"])
def test_long_commands_show_a_bar_on_a_terminal_and_are_quiet_otherwise(legacy_dir, mongo_url, db_name,
                                                                        tmp_path, terminal):
    env = _env(legacy_dir, mongo_url, db_name)
    for i, (argv, label) in enumerate(COMMANDS):
        argv = [a.replace("{out}", str(tmp_path / f"restored-{i}")) for a in argv]
        code, err = (_on_pty if terminal else _piped)(argv, env)
        assert code == 0, (argv, err.decode(errors="replace")[-2000:])
        if terminal:
            assert label in err and b"file" in err, (argv, err[-500:])
        else:
            assert label not in err and b"\r" not in err, (argv, err[-500:])
    assert (tmp_path / "restored-3" / "snapshot.json").exists()
