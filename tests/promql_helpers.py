"""Helpers shared by the dashboard and alert-rule tests (not fixtures).

* ``metric_refs``: the metric names a PromQL expression reads, each with the
  functions it sits in (so a counter can be required to sit in ``rate()``).
* ``exported_series``: scrape a daemon's /metrics into ``{sample name: type}``.
* ``promtool``/``check_exprs``: validate expressions with Prometheus's own parser,
  offline (``promtool check rules`` on a temporary file of recording rules; there
  is no ``promtool check expr``).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

# Grafana's own variables are not PromQL; they stand in for durations.
GRAFANA_DURATIONS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}

_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
             "offset", "atan2", "inf", "nan", "start", "end"}
_LABEL_LISTS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_TOKEN = re.compile(r"""
    (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<number>(?:0x[0-9a-fA-F]+|\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)(?:ms|[smhdwy])?)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<punct>[(){}\[\],])
  | (?P<op>=~|!~|!=|==|<=|>=|[-+*/%^<>=@])
  | (?P<var>\$\w+|\$\{[^}]*\})
  | (?P<space>\s+)
""", re.VERBOSE)

COUNTER_FUNCS = {"rate", "irate", "increase", "resets"}
PROMTOOL_HINT = "promtool not found: `make tools` installs Debian's prometheus package (it ships /usr/bin/promtool)"


@dataclass(frozen=True)
class Ref:
    name: str
    functions: tuple[str, ...]  # enclosing function calls, outermost first
    presence: bool = False  # an operand of `unless` / `offset`: tests whether the series exists


def tokens(expr: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if m is None:
            raise ValueError(f"cannot tokenise PromQL at {pos}: {expr[pos:pos + 20]!r}")
        pos = m.end()
        if m.lastgroup != "space":
            out.append((m.lastgroup, m.group()))
    return out


def metric_refs(expr: str) -> list[Ref]:
    """Metric names read by ``expr`` (label matchers, label lists, ranges and
    function names are not metric names)."""
    toks = tokens(expr)
    refs: list[Ref] = []
    stack: list[str] = []  # one entry per open "(": the function name, "" for grouping, "#labels"
    pending_call: str | None = None  # aggregation written as `sum by (x) (...)`
    i = 0
    while i < len(toks):
        kind, text = toks[i]
        nxt = toks[i + 1][1] if i + 1 < len(toks) else None
        if text == "{":  # label matchers: skip to the closing brace
            while toks[i][1] != "}":
                i += 1
        elif text == "[":  # range or subquery duration
            while toks[i][1] != "]":
                i += 1
        elif text == "(":
            stack.append(pending_call or "")
            pending_call = None
        elif text == ")":
            stack.pop()
        elif kind == "ident" and stack and stack[-1] == "#labels":
            pass  # label name in by (...)/on (...)
        elif kind == "ident" and text in _LABEL_LISTS:
            if nxt == "(":
                stack.append("#labels")
                i += 1
        elif kind == "ident" and text in _KEYWORDS:
            pass
        elif kind == "ident" and nxt == "(":
            stack.append(text)
            i += 1
        elif kind == "ident" and nxt in _LABEL_LISTS:
            pending_call = text  # sum by (le) (...): the call's "(" comes after the label list
        elif kind == "ident":
            j = i + 1
            if j < len(toks) and toks[j][1] == "{":
                while toks[j][1] != "}":
                    j += 1
                j += 1
            after = toks[j][1] if j < len(toks) else None
            before = toks[i - 1][1] if i else None
            presence = before == "unless" or after in ("unless", "offset")
            refs.append(Ref(text, tuple(f for f in stack if f and f != "#labels"), presence))
        i += 1
    assert not stack, f"unbalanced parentheses in {expr!r}"
    return refs


def exported_series(metrics_text: str) -> dict[str, str]:
    """``{sample name: family type}`` of a /metrics body (``x_total`` -> counter, ``x_bucket`` -> histogram)."""
    out: dict[str, str] = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            out[sample.name] = family.type
    return out


def series_problems(refs: list[Ref], exported: dict[str, str]) -> list[str]:
    """Why each reference is wrong, if it is: not exported, or a counter read without rate()."""
    problems = []
    for ref in refs:
        kind = exported.get(ref.name)
        if kind is None:
            problems.append(f"{ref.name} is not exported by the daemon")
        elif kind in ("counter", "histogram") and not (set(ref.functions) & COUNTER_FUNCS) \
                and not ref.presence and not ref.name.endswith("_created"):
            # a bare counter is fine only as a test for a new series (`x unless x offset 10m`)
            problems.append(f"{ref.name} ({kind}) read without rate()/increase()")
        elif kind == "gauge" and set(ref.functions) & COUNTER_FUNCS:
            problems.append(f"{ref.name} (gauge) inside {sorted(set(ref.functions) & COUNTER_FUNCS)}")
        if ref.name.endswith("_bucket") and "histogram_quantile" not in ref.functions:
            problems.append(f"{ref.name}: buckets outside histogram_quantile()")
    return problems


def promtool() -> str:
    exe = shutil.which("promtool") or ("/usr/bin/promtool" if Path("/usr/bin/promtool").exists() else None)
    if exe is None:
        pytest.skip(PROMTOOL_HINT)
    return exe


def run_promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def check_exprs(exprs: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess:
    """``promtool check rules`` on ``exprs`` ({name: PromQL}) written as recording rules."""
    rules = [{"record": f"check:{re.sub(r'[^a-zA-Z0-9_]', '_', name)}", "expr": expr} for name, expr in exprs.items()]
    path = tmp_path / "exprs.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "exprs", "rules": rules}]}, sort_keys=False))
    return run_promtool("check", "rules", str(path))


def grafana_to_promql(expr: str) -> str:
    for var, value in GRAFANA_DURATIONS.items():
        expr = expr.replace(var, value)
    return expr


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives a file's headings (lowercase, punctuation dropped, spaces to '-')."""
    anchors: set[str] = set()
    in_code = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if in_code:
            continue
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            slug = re.sub(r"[^\w\- ]", "", m.group(1).lower().replace("`", "")).replace(" ", "-")
            base, n = slug, 1
            while slug in anchors:
                slug, n = f"{base}-{n}", n + 1
            anchors.add(slug)
    return anchors


def scrape_after_activity(d, data_dir: Path) -> str:
    """/metrics of a running daemon (``running()``) after real activity, so that the
    labelled series exist, not only their # TYPE lines: a write through the watcher,
    one through the shim's socket, a shim frame for an ignored path, a hub replaced
    by a copy without one key (a held divergence) and a bad file (an error)."""
    import json as _json

    from testkit.measure import wait_for
    from shim_helpers import connect, frame, header, read_reply

    hubs = data_dir / "structured_hubs"
    hubs.mkdir(exist_ok=True)
    prefs = hubs / "learner_preferences.json"
    prefs.write_text(_json.dumps({"learner-1": {"pace": "slow"}, "learner-9": {"pace": "fast"}}, indent=2))
    db = d.daemon.store.db
    wait_for(lambda: db.memory_hubs.find_one({"hub_type": "learner_preferences", "item_key": "learner-9"}), 10,
             what="the watched write to reach MongoDB")

    def shim_write(rel: str, body: bytes) -> str:
        with connect(d.daemon.config.socket_path) as s:
            s.sendall(frame(header(path=rel, _body=body), body))
            return read_reply(s)["status"]

    body = _json.dumps({"learner-2": {"tone": "warm"}}, indent=2).encode()
    (hubs / "operating_context.json").write_bytes(body)
    assert shim_write("structured_hubs/operating_context.json", body) in ("written", "unchanged")
    assert shim_write("reports/summary.json", b"{}") == "ignored"

    # A new inode without learner-9: the removal is held, not mirrored.
    tmp = prefs.with_name(prefs.name + ".new")
    tmp.write_text(_json.dumps({"learner-1": {"pace": "slow"}}, indent=2))
    tmp.replace(prefs)
    wait_for(lambda: d.get("/divergences").json()["count"], 10, what="the held divergence")

    (hubs / "soft_identity.json").write_text('{"learner-3": ')  # truncated: invalid_json once settled
    wait_for(lambda: d.daemon.status.error_counts.get("invalid_json"), 10, what="the bad file to be counted")
    text = d.get("/metrics").body.decode()
    for name in ("sidecar_writes_total", "sidecar_shim_events_total", "sidecar_errors_total",
                 "sidecar_bulk_write_seconds_bucket", "sidecar_divergences_total", "sidecar_ignored_total"):
        assert re.search(rf"^{name}\{{", text, re.MULTILINE), f"no {name} sample after the activity"
    return text
