"""The layout a newcomer reads (ARCHITECTURE.md): each stage in the module named
after it, none of them a 500-line knot, the test support never shipped."""

from __future__ import annotations

import re

import pytest

from testkit import ROOT

MODULES = sorted(p.relative_to(ROOT).as_posix() for d in ("sidecar", "shim") for p in (ROOT / d).glob("*.py"))


@pytest.mark.parametrize("module", MODULES)
def test_no_module_is_over_500_lines(module):
    assert len((ROOT / module).read_text(encoding="utf-8").splitlines()) <= 500


def test_every_sidecar_module_is_in_the_readme_or_architecture_map():
    docs = (ROOT / "README.md").read_text(encoding="utf-8") + (ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8")
    missing = [m for m in MODULES if m.startswith("sidecar/") and not m.endswith("__.py")
               and f"`{m.split('/')[1]}`" not in docs]
    assert missing == []


def test_the_image_ships_neither_tests_nor_their_support():
    copies = re.findall(r"^COPY\s+(?:--\S+\s+)*(.+)$", (ROOT / "Dockerfile").read_text(), re.M)
    shipped = " ".join(copies)
    assert "testkit" not in shipped and "tests" not in shipped and "bench" not in shipped
