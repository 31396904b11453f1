"""One plain HTTP request to a daemon on loopback, and its Prometheus text read as numbers."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass


@dataclass
class Response:
    status: int
    body: bytes

    def json(self):
        return json.loads(self.body)


def http(url: str, method: str = "GET", headers: dict | None = None, timeout: float = 30) -> Response | None:
    """One request; None when nothing answers (process not up yet, or gone)."""
    req = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return Response(resp.status, resp.read())
    except urllib.error.HTTPError as exc:
        return Response(exc.code, exc.read())
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def parse_metrics(text: str) -> dict[str, float]:
    """``/metrics`` as {sample name with labels: value}."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                pass
    return out
