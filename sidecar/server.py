"""aiohttp status server: a status page, health, readiness, Mentorix-shaped status, parity, metrics.

Binds to loopback unless told otherwise. Endpoints that change state need
``SIDECAR_TOKEN`` (``Authorization: Bearer <token>``); with no token set they
are disabled. No response carries a payload value or a credential.
"""

from __future__ import annotations

import asyncio
import hmac
from datetime import datetime, timezone
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from . import __version__
from .config import Config
from .status import Status
from .state import count_files


class DaemonView(Protocol):
    config: Config
    status: Status

    def parity_report(self) -> dict[str, Any]: ...

    def request_reconcile(self) -> None: ...


DAEMON = web.AppKey("daemon", object)
# The last GET /parity: {"report", "computed_at"} and/or {"error"} (a dict mutated in place).
LAST_PARITY = web.AppKey("last_parity", dict)


def memory_status(config: Config, status: Status) -> dict[str, Any]:
    backend = config.memory_store_backend
    if config.memory_dual_write:
        mode = "dual_write_file_read"
    else:
        mode = "mongo" if backend == "mongo" else "file"
    return {
        "configured_backend": backend,
        "active_mode": mode,
        "dual_write_enabled": config.memory_dual_write,
        "mongo": {"connected": status.mongo_connected, "db_name": config.mongodb_db_name,
                  "error": config.scrub(status.mongo_error) if status.mongo_error else None},
        "sidecar": {"version": __version__, "data_dir": str(config.data_dir), **status.snapshot()},
    }


async def healthz(request: web.Request) -> web.Response:
    failed = request.app[DAEMON].status.writer_failed
    if failed:  # nothing is mirrored any more: the liveness probe restarts the process
        return web.json_response({"status": "writer_failed", "reason": failed}, status=503)
    return web.json_response({"status": "ok"})


def readiness(status: Status) -> tuple[bool, str | None]:
    """What ``/readyz`` answers: ready, or not with the reason."""
    if status.writer_failed:
        return False, "the writer failed (restart needed): " + status.writer_failed
    if status.root_problem:
        return False, status.root_problem
    if status.lease_problem:
        return False, status.lease_problem
    stalled = status.write_stalled() if status.ready else None
    if status.ready and status.mongo_connected and stalled is None:
        return True, None
    return False, status.not_ready_reason() if not status.ready else stalled or "mongodb unreachable"


async def readyz(request: web.Request) -> web.Response:
    status = request.app[DAEMON].status
    ready, reason = readiness(status)
    if ready:
        return web.json_response({"ready": True})
    body: dict[str, Any] = {"ready": False, "reason": reason}
    if status.reconcile.running:  # mongo mode's start-up reconcile: how far it is
        body["reconcile"] = status.reconcile.snapshot()
    return web.json_response(body, status=503)


async def memory_status_view(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON]
    return web.json_response(memory_status(daemon.config, daemon.status))


async def parity_view(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON]
    from .store import MongoUnavailable

    last = request.app[LAST_PARITY]
    try:
        report = await asyncio.get_running_loop().run_in_executor(None, daemon.parity_report)
    except MongoUnavailable as exc:
        error = daemon.config.scrub(str(exc))
        last["error"] = {"at": _now_iso(), "error": error}
        return web.json_response({"error": error}, status=503)
    # Kept for the status page and `memory-sidecar status`: they show the last
    # full comparison instead of running one (it reads every file) per refresh.
    last["report"], last["computed_at"] = report, _now_iso()
    last.pop("error", None)
    return web.json_response(report, dumps=_dumps)


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat()


def _parity_summary(last: dict[str, Any]) -> dict[str, Any] | None:
    """The last ``GET /parity``, per kind the counts only (sample keys, checksums left out)."""
    if "report" not in last and "error" not in last:
        return None
    out: dict[str, Any] = {"source": "the last GET /parity (the page never runs the scan itself)"}
    if "error" in last:
        out["last_error"] = last["error"]
    report = last.get("report")
    if report is None:
        return out
    computed = datetime.fromisoformat(last["computed_at"])
    out["computed_at"] = last["computed_at"]
    out["age_seconds"] = round((datetime.now(timezone.utc) - computed).total_seconds(), 1)
    out["all_match"] = report.get("parity", {}).get("all_match")
    kinds: dict[str, Any] = {}
    for name, kind in report.get("kinds", {}).items():
        row = {k: kind.get(k) for k in ("match", "files", "bad_files", "entries", "documents", "pending",
                                        "mismatch")}
        for k in ("missing", "extra", "different"):
            row[k] = kind.get(k, {}).get("count", 0)
            row[k + "_keys"] = list(kind.get(k, {}).get("keys", []))[:5]
        kinds[name] = row
    out["kinds"] = kinds
    out["bad_input"] = len(report.get("bad_input", []))
    return out


def _mirrored(daemon: Any) -> dict[str, int] | None:
    """Counts of what the daemon holds as mirrored (its in-memory view of MongoDB): cheap, live."""
    state = getattr(daemon, "state", None)
    if state is None:
        return None
    live, deleted = count_files(state)
    return {
        "files": live,
        "deleted_files_recorded": deleted,
        "hub_entries": sum(len(entries) for entries in list(state.hubs.values())),
        "hubs": len(state.hubs),
        "episodes": len(state.episodes),
        "snapshots": len(state.snapshots),
    }


def overview(daemon: Any, last_parity: dict[str, Any]) -> dict[str, Any]:
    """Everything the status page and `memory-sidecar status` show, in one dict.
    Paths, keys, counts, reasons; never a payload value, never the MongoDB URL."""
    config, status = daemon.config, daemon.status
    ready, reason = readiness(status)
    snap = status.snapshot()
    shim = getattr(daemon, "shim", None)
    memory = memory_status(config, status)
    return {
        "generated_at": _now_iso(),
        "version": __version__,
        "ready": ready,
        "reason": reason,
        "phase": snap["phase"],
        "started_at": snap["started_at"],
        "watcher": snap["watcher"],
        "data_dir": str(config.data_dir),
        "mode": {k: memory[k] for k in ("configured_backend", "active_mode", "dual_write_enabled")},
        "mongo": memory["mongo"],
        "pending": {"paths": snap["pending"], "lag_seconds": snap["lag_seconds"],
                    "write_inflight_seconds": snap["write_inflight_seconds"]},
        "last_sync_at": snap["last_sync_at"],
        "last_reconcile_at": snap["last_reconcile_at"],
        "mirrored": _mirrored(daemon),
        "writes": status.writes_by_collection(),
        "parity": _parity_summary(last_parity),
        "divergences": snap["divergences"] or {"count": 0, "entries": 0, "files": 0, "items": []},
        "problems": snap["problems"],
        "errors_by_kind": snap["errors_by_kind"],
        "restore": {"restored_files": snap["restored_files"], "progress": snap["restore"]},
        "stale_refused": snap["stale_refused"],
        "events": status.recent_events(),
        "shim": {"socket": shim is not None, "outcomes": status.shim_outcomes(),
                 # what the snapshot already read from the socket server (the Status's shim source)
                 "server": (snap["shim"] or {}).get("frames"), "clients": (snap["shim"] or {}).get("clients")},
    }


async def status_json_view(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON]
    return web.json_response(overview(daemon, request.app[LAST_PARITY]), dumps=_dumps)


# The page shows only text: no script, style only inline, nothing loaded from anywhere.
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; "
                               "base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
}


async def page_view(request: web.Request) -> web.Response:
    from .page import render

    daemon = request.app[DAEMON]
    html = render(overview(daemon, request.app[LAST_PARITY]))
    return web.Response(text=html, content_type="text/html", charset="utf-8", headers=_PAGE_HEADERS)


async def metrics_view(request: web.Request) -> web.Response:
    body = request.app[DAEMON].status.metrics_text()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def _authorized(request: web.Request) -> web.Response | None:
    token = request.app[DAEMON].config.token
    if not token:
        return web.json_response({"error": "state-changing endpoints are disabled: set SIDECAR_TOKEN"},
                                 status=403)
    given = request.headers.get("Authorization", "")
    given = given[7:] if given.startswith("Bearer ") else request.headers.get("X-Sidecar-Token", "")
    if not hmac.compare_digest(given.encode(), token.encode()):
        return web.json_response({"error": "missing or wrong token"}, status=401)
    return None


async def reconcile_view(request: web.Request) -> web.Response:
    denied = _authorized(request)
    if denied is not None:
        return denied
    request.app[DAEMON].request_reconcile()
    return web.json_response({"accepted": True}, status=202)


async def divergences_view(request: web.Request) -> web.Response:
    status = request.app[DAEMON].status
    return web.json_response(status.divergences.summary() if status.divergences is not None else {"count": 0})


async def accept_view(request: web.Request) -> web.Response:
    denied = _authorized(request)
    if denied is not None:
        return denied
    daemon = request.app[DAEMON]
    paths = None
    if request.can_read_body:
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"error": "body must be JSON: {\"paths\": [...]}"}, status=400)
        if not isinstance(body, dict):
            return web.json_response({"error": "body must be a JSON object"}, status=400)
        paths = body.get("paths")
        if paths is not None and (not isinstance(paths, list) or not all(isinstance(p, str) for p in paths)):
            return web.json_response({"error": "paths must be a list of strings"}, status=400)
    from .store import MongoUnavailable

    try:
        result = await asyncio.get_running_loop().run_in_executor(None, daemon.accept_divergences, paths)
    except MongoUnavailable as exc:
        return web.json_response({"error": daemon.config.scrub(str(exc))}, status=503)
    return web.json_response(result)


def _dumps(obj: Any) -> str:
    import json

    return json.dumps(obj, default=str)


def build_app(daemon: DaemonView) -> web.Application:
    app = web.Application()
    app[DAEMON] = daemon
    app[LAST_PARITY] = {}
    app.router.add_get("/", page_view)
    app.router.add_get("/status", status_json_view)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/memory/status", memory_status_view)
    app.router.add_get("/parity", parity_view)
    app.router.add_get("/metrics", metrics_view)
    app.router.add_post("/reconcile", reconcile_view)
    app.router.add_get("/divergences", divergences_view)
    app.router.add_post("/divergences/accept", accept_view)
    return app


async def start(daemon: DaemonView) -> web.AppRunner:
    runner = web.AppRunner(build_app(daemon), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, daemon.config.sidecar_http_host, daemon.config.sidecar_http_port)
    await site.start()
    return runner


def bound_port(runner: web.AppRunner) -> int:
    """The port actually bound (useful with SIDECAR_HTTP_PORT=0 in tests)."""
    for site in runner.sites:
        server = getattr(site, "_server", None)
        if server and server.sockets:
            return server.sockets[0].getsockname()[1]
    raise RuntimeError("server not started")
