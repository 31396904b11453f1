"""The status page (``GET /``, issue 14 point 1): rendered by the daemon, read in a real browser.

The browser test starts a daemon on loopback, loads the page in headless
Chromium (``--dump-dom``: the DOM after the browser parsed it, so an injected
element would be there), and reads what it shows after a real write, a held
divergence and a bad hub file whose name is markup. A screenshot is kept as
a test artifact (``tests/artifacts/status-page.png``, ignored by git).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import pytest

from testkit import ROOT
from testkit.measure import wait_for
from testkit.http import http
from deletion_helpers import HUB, keys_in_mongo, write_in_place, write_new_inode
from sidecar.page import render

ARTIFACTS = ROOT / "tests" / "artifacts"
SECRET = "S3CRET-payload-7f1c2e"  # a payload value: must never reach the page
HOSTILE_HUB = "structured_hubs/<img src=x onerror=alert(1)>.json"
HOSTILE_FILE = "runs/<script>alert(1)</script>.json"  # a directory named "<script>alert(1)<"
CHROMIUM_TIMEOUT = 90


# --- reading a page -------------------------------------------------------------------------
class Dom(HTMLParser):
    """Text by element id, tables (by id) as rows of cell texts, and every tag seen."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.text: dict[str, str] = {}
        self.tables: dict[str, list[list[str]]] = {}
        self._open: list[tuple[str, str | None]] = []
        self._table: str | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        ident = dict(attrs).get("id")
        if tag in ("meta", "br", "link", "img", "input"):
            return
        self._open.append((tag, ident))
        if ident:
            self.text[ident] = ""
        if tag == "table":
            self._table = ident
            self.tables[ident] = []
        elif tag == "tr" and self._table:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None and self._table:
            self.tables[self._table].append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None
        while self._open:
            if self._open.pop()[0] == tag:
                break

    def handle_data(self, data):
        for _, ident in self._open:
            if ident:
                self.text[ident] += data
        if self._cell is not None:
            self._cell.append(data)

    def rows(self, table: str) -> list[dict[str, str]]:
        """A table's body rows as dicts keyed by the header cells."""
        head, *body = self.tables[table]
        return [dict(zip(head, row)) for row in body]


# --- the browser --------------------------------------------------------------------------------
def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("chromium not found: `make tools` installs Debian's `chromium` (as root, with apt-get)")


def browse(url: str, tmp_path: Path, *extra: str) -> str:
    """One headless Chromium run, bounded; its stdout (the DOM with --dump-dom)."""
    profile = tmp_path / f"chromium-profile-{len(list(tmp_path.glob('chromium-profile-*')))}"
    cmd = [chromium(), "--headless", "--disable-gpu", "--no-sandbox", "--disable-dev-shm-usage",
           "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--mute-audio",
           f"--user-data-dir={profile}", *extra, url]
    proc = subprocess.run(cmd, capture_output=True, timeout=CHROMIUM_TIMEOUT, check=False)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]
    return proc.stdout.decode()


def dump_dom(url: str, tmp_path: Path) -> Dom:
    html = browse(url, tmp_path, "--dump-dom")
    assert "Mentorix memory sidecar" in html, html[:2000]
    return Dom(html)


def screenshot(url: str, tmp_path: Path, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    out = ARTIFACTS / name
    out.unlink(missing_ok=True)
    browse(url, tmp_path, f"--screenshot={out}", "--window-size=1280,1500", "--hide-scrollbars")
    assert out.exists() and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print(f"status page screenshot: {out}")
    return out


def problems(d) -> dict[str, dict]:
    return {p["path"]: p for p in d.get("/memory/status").json()["sidecar"]["problems"]}


# --- in a real browser ------------------------------------------------------------------------
@pytest.mark.integration
def test_the_page_in_a_browser_after_a_write_a_divergence_and_a_bad_file(data_dir, running, tmp_path):
    chromium()
    write_in_place(data_dir, HUB, {"l0": {"score": 0}, "l1": {"score": 1}, "l2": {"score": 2}})
    d = running(sidecar_events_payload="full")  # events carry payloads: the page must still show none
    db = d.daemon.store.db
    url = d.url + "/"

    # A real write: a run file and a hub entry, both holding a distinctive payload value.
    write_in_place(data_dir, "runs/run_page-1.json", {"run_id": "page-1", "note": SECRET})
    write_in_place(data_dir, HUB, {"l0": {"score": 0}, "l1": {"score": 1}, "l2": {"score": 2},
                                   "l3": {"secret": SECRET}})
    write_in_place(data_dir, HOSTILE_FILE, {"note": SECRET})
    wait_for(lambda: db.memory_files.find_one({"_id": "runs/run_page-1.json"})
             and db.memory_files.find_one({"_id": HOSTILE_FILE}) and "l3" in keys_in_mongo(db),
             10, what="the writes to be mirrored")
    wait_for(lambda: d.get("/status").json()["pending"]["paths"] == 0, 10, what="nothing pending")
    # Before any GET /parity the page says it has no comparison and does not run one.
    dom = dump_dom(url, tmp_path)
    assert "Not computed since the daemon started" in dom.text["parity-note"]
    assert "parity" not in dom.tables
    report = d.wait_parity()
    assert report["parity"]["all_match"]
    computed_at = d.get("/status").json()["parity"]["computed_at"]

    dom = dump_dom(url, tmp_path)
    assert dom.text["ready"] == "READY"
    assert dom.text["phase"] == "running"
    assert "connected" in dom.text["mongo"] and d.daemon.config.mongodb_db_name in dom.text["mongo"]
    assert dom.text["pending"] == "0"
    # Every file mirrored (its manifest): the hub, the run file and the hostile-named one.
    assert dom.text["mirrored-files"] == "3"
    parity = {row["kind"]: row for row in dom.rows("parity")}  # "files": the generic kind (runs/...)
    assert parity["files"]["files"] == "2" and parity["files"]["documents"] == "2"
    assert parity["files"]["match"] == "yes" and parity["files"]["missing"] == "0"
    assert parity["hubs"]["entries"] == "4" and parity["hubs"]["documents"] == "4"
    assert "all match" in dom.text["parity-note"] and "cached" in dom.text["parity-note"]
    events = dom.rows("events")
    assert any(e["path"] == "runs/run_page-1.json" for e in events), events
    # The markup in a path is text in the browser, not an element.
    assert any(e["path"] == HOSTILE_FILE for e in events), events
    assert "script" not in dom.tags and "img" not in dom.tags
    assert "form" not in dom.tags and "button" not in dom.tags and "input" not in dom.tags

    # A held divergence: the hub re-created (new inode) without l1.
    write_new_inode(data_dir, HUB, {"l0": {"score": 0}, "l2": {"score": 2}, "l3": {"secret": SECRET}})
    wait_for(lambda: d.get("/divergences").json()["count"] == 1, 10, what="the divergence held")
    # A bad hub file (invalid JSON) whose name is markup.
    (data_dir / HOSTILE_HUB).write_text('{"k": {"v": "' + SECRET + '"')
    wait_for(lambda: HOSTILE_HUB in problems(d), 10, what="the bad hub file's problem")

    dom = dump_dom(url, tmp_path)
    rows = {row["path"]: row for row in dom.rows("problems")}
    assert rows[HOSTILE_HUB]["reason"] == "invalid_json"
    assert "invalid or truncated JSON" in rows[HOSTILE_HUB]["message"]
    assert dom.text["problem-count"] == "1"
    held = {row["path"]: row for row in dom.rows("divergences")}
    assert held[HUB]["keys (sample)"] == "l1" and held[HUB]["reason"] == "recreated"
    assert "memory-sidecar divergences accept PATH" in dom.text["accept-howto"]
    assert "POST /divergences/accept" in dom.text["accept-howto"]
    assert "img" not in dom.tags and "script" not in dom.tags
    # Still the cached comparison: the page loads ran no scan of their own (a new one
    # would count the bad hub file and the held entry).
    assert {r["kind"]: r for r in dom.rows("parity")}["hubs"]["bad files"] == "0"
    assert d.get("/status").json()["parity"]["computed_at"] == computed_at
    shot = screenshot(url, tmp_path, "status-page.png")
    assert shot.stat().st_size > 10_000

    # Never a payload value, never the URL: not in the page as served, nor in its JSON.
    served = http(url)
    assert served.status == 200 and served.body.decode().count("<script") == 0
    for body in (served.body.decode(), d.get("/status").body.decode(), browse(url, tmp_path, "--dump-dom")):
        assert SECRET not in body
        assert d.daemon.config.url not in body


# --- the HTML itself (no browser) ------------------------------------------------------------------
HOSTILE = '<script>alert("x")</script>&<img src=x onerror=alert(1)>'


def hostile_overview() -> dict:
    """Every text field the page shows set to markup."""
    kind = {"match": False, "files": 1, "bad_files": 1, "entries": 2, "documents": 1, "pending": 0, "mismatch": 1,
            "missing": 1, "extra": 0, "different": 0, "missing_keys": [HOSTILE], "extra_keys": [],
            "different_keys": []}
    return {
        "generated_at": HOSTILE, "version": HOSTILE, "ready": False, "reason": HOSTILE, "phase": HOSTILE,
        "watcher": HOSTILE, "data_dir": HOSTILE,
        "mode": {"configured_backend": HOSTILE, "active_mode": HOSTILE, "dual_write_enabled": True},
        "mongo": {"connected": False, "db_name": HOSTILE, "error": HOSTILE},
        "pending": {"paths": 3, "lag_seconds": HOSTILE, "write_inflight_seconds": 0},
        "last_sync_at": HOSTILE, "last_reconcile_at": None,
        "mirrored": {"files": 1, "hub_entries": HOSTILE, "hubs": 1, "episodes": 0, "snapshots": 0},
        "writes": {HOSTILE: 1},
        "parity": {"computed_at": "2026-01-01T00:00:00+00:00", "age_seconds": 1, "all_match": False,
                   "kinds": {"files": kind, HOSTILE: kind}},
        "divergences": {"count": 2, "entries": 1, "files": 1, "items": [
            {"path": HOSTILE, "what": HOSTILE, "count": 1, "reason": HOSTILE, "first_seen": HOSTILE,
             "keys": [HOSTILE]}]},
        "problems": [{"path": HOSTILE, "reason": HOSTILE, "message": HOSTILE, "count": 1, "last_seen": HOSTILE}],
        "errors_by_kind": {HOSTILE: 2},
        "restore": {"restored_files": 0, "progress": {"done": HOSTILE}},
        "events": [{"created_at": HOSTILE, "event_type": HOSTILE, "path": HOSTILE, "source": HOSTILE,
                    "reason": HOSTILE, "count": 1}],
        "shim": {"socket": True, "outcomes": {HOSTILE: 1}, "server": {HOSTILE: 1}},
    }


def test_every_field_is_escaped():
    html = render(hostile_overview())
    dom = Dom(html)
    assert "<script" not in html and "<img" not in html and 'alert("x")' not in html
    assert "script" not in dom.tags and "img" not in dom.tags
    assert html.count("&lt;script&gt;") >= 15  # each field, as text
    assert dom.rows("problems")[0]["path"] == HOSTILE
    assert dom.text["reason"] == HOSTILE


def test_the_page_is_self_contained_read_only_and_refreshes():
    html = render(hostile_overview())
    dom = Dom(html)
    assert '<meta http-equiv="refresh" content="5">' in html
    for tag in ("form", "button", "input", "script", "link", "iframe", "img"):
        assert tag not in dom.tags
    assert "http://" not in html and "https://" not in html and "src=" not in html.replace("src=x", "")
    assert "<style>" in html


def test_a_page_with_nothing_yet():
    html = render({"ready": False, "reason": "starting: connecting", "phase": "connecting"})
    dom = Dom(html)
    assert dom.text["ready"] == "NOT READY" and dom.text["reason"] == "starting: connecting"
    assert "Not computed" in dom.text["parity-note"]
    assert "divergences-none" in dom.text and "problems-none" in dom.text and "events-none" in dom.text


@pytest.mark.integration
def test_the_served_page_and_its_json(data_dir, running):
    d = running()
    with urllib.request.urlopen(d.url + "/", timeout=30) as raw:
        assert raw.headers["Content-Type"].startswith("text/html")
        # Defence in depth behind the escaping: nothing may run or load, even if markup got through.
        assert "default-src 'none'" in raw.headers["Content-Security-Policy"]
        assert raw.headers["Cache-Control"] == "no-store"
    resp = http(d.url + "/")
    assert resp.status == 200
    body = resp.body.decode()
    assert body.startswith("<!DOCTYPE html>") and "READY" in body
    status = d.get("/status").json()
    assert status["ready"] is True and status["reason"] is None and status["parity"] is None
    assert set(status["mongo"]) == {"connected", "db_name", "error"}
    assert json.dumps(status).count(d.daemon.config.url) == 0
    # GET /parity fills the page's cached comparison; /parity's own shape is unchanged.
    report = d.get("/parity").json()
    assert {"kinds", "parity", "pending", "divergences"} <= set(report)
    status = d.get("/status").json()
    assert status["parity"]["all_match"] is True and "files" in status["parity"]["kinds"]
