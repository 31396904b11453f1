"""Every setting is documented in .env.example, with the code's default where containers don't differ."""

from __future__ import annotations

import re

from testkit import ROOT
from sidecar.config import Config

# Values a container deliberately sets differently from the code default.
CONTAINER_VALUES = {"RUNTIME_DATA_DIR", "MONGODB_URL", "SIDECAR_HTTP_HOST", "SIDECAR_SOCKET", "SIDECAR_TOKEN"}


def _documented() -> dict[str, str]:
    text = (ROOT / ".env.example").read_text()
    return {m.group(1): m.group(2).strip() for m in re.finditer(r"^#?\s*([A-Z][A-Z0-9_]+)=(.*)$", text, re.M)}


def test_every_setting_is_in_env_example():
    documented = _documented()
    missing = [n.upper() for n in Config.model_fields if n.upper() not in documented]
    assert missing == []


def test_env_example_defaults_match_the_code():
    documented = _documented()
    defaults = Config(_env_file=None)
    for name in Config.model_fields:
        env = name.upper()
        if env in CONTAINER_VALUES:
            continue
        value = getattr(defaults, name)
        expected = ",".join(value) if isinstance(value, list) else str(value).lower() if isinstance(
            value, bool) else str(value)
        assert documented[env] == expected, env
