"""aiohttp status server: health, readiness, Mentorix-shaped status, parity, metrics.

Binds to loopback unless told otherwise. Endpoints that change state need
``SIDECAR_TOKEN`` (``Authorization: Bearer <token>``); with no token set they
are disabled. No response carries a payload value or a credential.
"""

from __future__ import annotations

import asyncio
import hmac
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from . import __version__
from .config import Config
from .status import Status


class DaemonView(Protocol):
    config: Config
    status: Status

    def parity_report(self) -> dict[str, Any]: ...

    def request_reconcile(self) -> None: ...


DAEMON = web.AppKey("daemon", object)


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
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    status = request.app[DAEMON].status
    if status.root_problem:
        return web.json_response({"ready": False, "reason": status.root_problem}, status=503)
    if status.lease_problem:
        return web.json_response({"ready": False, "reason": status.lease_problem}, status=503)
    stalled = status.write_stalled() if status.ready else None
    if status.ready and status.mongo_connected and stalled is None:
        return web.json_response({"ready": True})
    reason = status.not_ready_reason() if not status.ready else stalled or "mongodb unreachable"
    return web.json_response({"ready": False, "reason": reason}, status=503)


async def memory_status_view(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON]
    return web.json_response(memory_status(daemon.config, daemon.status))


async def parity_view(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON]
    from .store import MongoUnavailable

    try:
        report = await asyncio.get_running_loop().run_in_executor(None, daemon.parity_report)
    except MongoUnavailable as exc:
        return web.json_response({"error": daemon.config.scrub(str(exc))}, status=503)
    return web.json_response(report, dumps=_dumps)


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
