"""``memory-sidecar`` command line. The core never imports this module.

Exit codes: 0 success / parity holds; 1 parity mismatch (or bad input seen);
2 usage or configuration error (bad setting, missing data dir, restore target
not empty); 3 MongoDB unreachable; 4 another writer (a running daemon, another
sync) holds the single-writer lease; 5 (``status``) no daemon answers at the
status server's address. ``status`` exits 0 when the daemon is ready, 1 when
it is not.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .config import Config

EXIT_OK, EXIT_MISMATCH, EXIT_USAGE, EXIT_MONGO, EXIT_LEASE, EXIT_NO_DAEMON = 0, 1, 2, 3, 4, 5

log = logging.getLogger("sidecar")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="memory-sidecar",
        description="Mirror Mentorix's JSON memory files into MongoDB.",
        epilog="Settings come from the environment (RUNTIME_DATA_DIR, MONGODB_URL, MONGODB_DB_NAME, "
        "SIDECAR_*); flags override them.",
    )
    p.add_argument("--data-dir", help="data dir (RUNTIME_DATA_DIR)")
    p.add_argument("--mongodb-url", help="MongoDB URL (MONGODB_URL)")
    p.add_argument("--db-name", help="database name (MONGODB_DB_NAME)")
    p.add_argument("--backend", choices=["file", "mongo"], help="MEMORY_STORE_BACKEND")
    p.add_argument("--log-level", help="SIDECAR_LOG_LEVEL (INFO, DEBUG, ...)")
    p.add_argument("--log-format", choices=["text", "json"], help="SIDECAR_LOG_FORMAT")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="watch, restore what is missing (mongo mode), reconcile, mirror, serve status")
    run.add_argument("--host", help="SIDECAR_HTTP_HOST")
    run.add_argument("--port", type=int, help="SIDECAR_HTTP_PORT")

    s = sub.add_parser("sync", help="one-shot backfill and parity report (exit 1 on mismatch)")
    s.add_argument("--dry-run", action="store_true", help="compute and report, write nothing")
    s.add_argument("--report", type=Path, help="report path (default <data dir>/reports/...)")
    s.add_argument("--checksum", action="store_true",
                   help="read and hash every file (no quick check) and report what drifted on either side")

    r = sub.add_parser("restore", help="rebuild the files from MongoDB")
    r.add_argument("--out", type=Path, help="target dir (default: the data dir)")
    r.add_argument("--force", action="store_true", help="write into a non-empty target")
    r.add_argument("--dry-run", action="store_true", help="list what would be written")
    when = r.add_mutually_exclusive_group()
    when.add_argument("--include-deleted", action="store_true",
                      help="also restore what was deleted: files whose deletion was recorded, and "
                      "hub entries, episodes and files kept in memory_tombstones")
    when.add_argument("--as-of", metavar="ISO-TIME", type=_iso_time,
                      help="the files as they were at this time (ISO 8601, naive = UTC), as far as "
                      "memory_tombstones (kept SIDECAR_TOMBSTONE_DAYS) can say")

    dv = sub.add_parser("divergences", help="list held removals (exit 1 while any is held); "
                        "`divergences accept [PATH...]` applies them")
    dv.add_argument("action", nargs="?", choices=["accept"], help="apply the held removals")
    dv.add_argument("paths", nargs="*", help="with accept: only these paths (default: every one held)")

    st = sub.add_parser("status", help="the running daemon's status, read from its status server "
                        "(exit 0 ready, 1 not ready, 5 no daemon answers)")
    st.add_argument("--url", help="the status server (default: http://SIDECAR_HTTP_HOST:SIDECAR_HTTP_PORT)")
    st.add_argument("--json", action="store_true", help="print the raw JSON (GET /status)")
    st.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the answer (default 5)")

    sub.add_parser("parity", help="compare files and MongoDB, no writes (exit 1 on mismatch)")
    sub.add_parser("indexes", help="ensure the indexes and list them")
    sub.add_parser("config", help="print the effective settings (credentials hidden)")
    sub.add_parser("doctor", help="check git hygiene, MongoDB, indexes, TTLs, socket, HTTP binding, disk "
                   "(exit 1 if a check fails; warnings exit 0)")

    a = sub.add_parser("archive", help="export episodes older than a date to a .jsonl.gz "
                       "(--prune: then remove them from MongoDB, via the tombstones); --restore PATH puts "
                       "an archive back")
    a.add_argument("--before", type=_date, metavar="YYYY-MM-DD",
                   help="episodes whose updated_at is before this day (00:00 UTC)")
    a.add_argument("--out", type=Path, metavar="PATH.jsonl.gz", help="the archive file to write")
    a.add_argument("--prune", action="store_true",
                   help="after the archive is written, fsynced and verified, remove the archived episodes "
                   "(and their files' manifests) from MongoDB; never touches files on disk")
    a.add_argument("--restore", type=Path, metavar="PATH",
                   help="put the episodes of this archive back into MongoDB (a live document wins)")
    return p


def _iso_time(text: str) -> datetime:
    """``--as-of``: ISO 8601; a naive time is UTC (as Mentorix writes its timestamps)."""
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not an ISO 8601 time: {text[:60]!r} (e.g. 2026-02-21T05:29:24 or 2026-02-21T05:29:24+00:00)"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def _date(text: str) -> datetime:
    try:
        day = datetime.strptime(text.strip(), "%Y-%m-%d")
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date YYYY-MM-DD: {text[:40]!r}") from None
    return day.replace(tzinfo=timezone.utc)


def _config(args: argparse.Namespace) -> Config:
    overrides: dict[str, Any] = {}
    for flag, field in (
        ("data_dir", "runtime_data_dir"),
        ("mongodb_url", "mongodb_url"),
        ("db_name", "mongodb_db_name"),
        ("backend", "memory_store_backend"),
        ("log_level", "sidecar_log_level"),
        ("log_format", "sidecar_log_format"),
        ("host", "sidecar_http_host"),
        ("port", "sidecar_http_port"),
    ):
        value = getattr(args, flag, None)
        if value is not None:
            overrides[field] = value
    return Config(**overrides)


def _print(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


def _setup_logging(config: Config) -> None:
    from .logs import setup_logging

    setup_logging(config.sidecar_log_format, config.sidecar_log_level)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = _config(args)
    except ValidationError as exc:
        # Name the setting and the problem; never echo the value (it may be a secret).
        for err in exc.errors():
            name = ".".join(str(x) for x in err["loc"]).upper()
            print(f"memory-sidecar: invalid setting {name}: {err['msg']}", file=sys.stderr)
        return EXIT_USAGE
    _setup_logging(config)
    try:
        return _dispatch(args, config)
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace, config: Config) -> int:
    from .lease import LeaseHeld
    from .localindex import StateDirUnusable
    from .restore import RestoreRefused
    from .source import DataDirMissing, check_root
    from .store import MongoConfigError, MongoUnavailable

    if args.command == "config":
        from .config import describe

        _print(describe(config))
        return EXIT_OK
    if args.command == "status":
        return _status(args, config)
    try:
        if args.command == "doctor":
            from .doctor import exit_code, run_checks
            from .store import Store

            store = Store(config)
            try:
                checks = run_checks(config, store)
            finally:
                store.close()
            for check in checks:
                print(check.line())
            return exit_code(checks)
        if args.command == "run":
            from .daemon import run_daemon

            check_root(config.data_dir, must_exist=False)  # a missing one is created; a symlink is refused
            return run_daemon(config)
        return _one_shot(args, config)
    except DataDirMissing as exc:
        print(f"memory-sidecar: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    except StateDirUnusable as exc:
        print(f"memory-sidecar: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except RestoreRefused as exc:
        print(f"memory-sidecar: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except MongoConfigError as exc:
        print(f"memory-sidecar: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except LeaseHeld as exc:
        print(f"memory-sidecar: {exc}; stop it, wait, or let the daemon do it (POST /reconcile)",
              file=sys.stderr)
        return EXIT_LEASE
    except MongoUnavailable as exc:
        print(f"memory-sidecar: MongoDB unreachable at {config.safe_url}: {config.scrub(str(exc))}",
              file=sys.stderr)
        return EXIT_MONGO


def _daemon_url(config: Config) -> str:
    """The local daemon's status server, from SIDECAR_HTTP_HOST/PORT (a wildcard bind: loopback)."""
    host = config.sidecar_http_host if config.sidecar_http_host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 literal
    return f"http://{host}:{config.sidecar_http_port}"


def _status(args: argparse.Namespace, config: Config) -> int:
    """``memory-sidecar status``: GET /status of the running daemon, as a table or raw JSON."""
    import urllib.error
    import urllib.request

    from .page import render_text

    base = (args.url or _daemon_url(config)).rstrip("/")
    try:
        with urllib.request.urlopen(base + "/status", timeout=args.timeout) as resp:
            overview = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        print(f"memory-sidecar: {base}/status answered HTTP {exc.code}: is that a memory sidecar daemon "
              "(of this version)?", file=sys.stderr)
        return EXIT_NO_DAEMON
    except (urllib.error.URLError, OSError, ValueError) as exc:
        why = getattr(exc, "reason", None) or exc
        print(f"memory-sidecar: no daemon answers at {base} ({why}); is `memory-sidecar run` running, "
              "and are SIDECAR_HTTP_HOST/SIDECAR_HTTP_PORT (or --url) right?", file=sys.stderr)
        return EXIT_NO_DAEMON
    if not isinstance(overview, dict) or "ready" not in overview:
        print(f"memory-sidecar: {base}/status is not a memory sidecar status", file=sys.stderr)
        return EXIT_NO_DAEMON
    if args.json:
        _print(overview)
    else:
        sys.stdout.write(f"memory-sidecar at {base}\n" + render_text(overview))
    return EXIT_OK if overview["ready"] else EXIT_MISMATCH


def _ask_daemon_to_reconcile(config: Config) -> bool:
    """A running daemon re-reads MongoDB's state after an accept done beside it."""
    import urllib.error
    import urllib.request

    if not config.token:
        return False
    req = urllib.request.Request(f"{_daemon_url(config)}/reconcile", method="POST",
                                 headers={"Authorization": f"Bearer {config.token}"})
    try:
        with urllib.request.urlopen(req, timeout=2) as resp:
            return resp.status == 202
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _daemon_accept(config: Config, paths: list[str] | None) -> dict | None:
    """POST /divergences/accept to the local daemon; None when it cannot be asked."""
    import urllib.error
    import urllib.request

    if not config.token:
        return None
    body = json.dumps({"paths": paths} if paths else {}).encode()
    req = urllib.request.Request(f"{_daemon_url(config)}/divergences/accept", data=body,
                                 method="POST", headers={"Authorization": f"Bearer {config.token}",
                                                         "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return {"via_daemon": True, **json.loads(resp.read())}
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _one_shot(args: argparse.Namespace, config: Config) -> int:
    from .store import Store

    store = Store(config)
    try:
        if args.command == "sync":
            from .sync import run_sync

            report, code = run_sync(config, store, dry_run=args.dry_run, report_path=args.report,
                                    checksum=args.checksum)
            _print(report)
            return code
        if args.command == "parity":
            from .sync import run_parity

            report, code = run_parity(config, store)
            _print(report)
            return code
        if args.command == "divergences":
            from .sync import run_divergences

            if args.paths and args.action != "accept":
                print("memory-sidecar: paths are only taken by `divergences accept`", file=sys.stderr)
                return EXIT_USAGE
            from .lease import LeaseHeld

            accepting = args.action == "accept"
            try:
                report, code = run_divergences(config, store, accept=args.paths or None,
                                               accept_all=accepting and not args.paths)
            except LeaseHeld:
                # A daemon writes this database: it applies the accept itself.
                forwarded = _daemon_accept(config, args.paths or None)
                if forwarded is None:
                    raise
                _print(forwarded)
                return EXIT_OK
            if accepting:
                report["daemon_notified"] = _ask_daemon_to_reconcile(config)
            _print(report)
            return code
        if args.command == "indexes":
            store.ping()
            _print(store.ensure_indexes())
            return EXIT_OK
        if args.command == "archive":
            from .archive import run_archive_command

            return run_archive_command(config, store, args)
        if args.command == "restore":
            from .classify import is_ignored
            from .restore import restore

            from .sync import _progress

            store.ping()
            out = args.out or config.data_dir
            bar = _progress(None, "restoring")  # on a terminal only
            try:
                result = restore(store, out, force=args.force, dry_run=args.dry_run,
                                 include_deleted=args.include_deleted, as_of=args.as_of,
                                 ignore=lambda rel: is_ignored(rel, config.ignore_globs),
                                 progress=lambda _: bar.update(1))
            finally:
                bar.close()
            _print(result.as_dict(args.dry_run))
            return EXIT_OK if not result.skipped else EXIT_MISMATCH
        raise AssertionError(args.command)
    finally:
        store.close()
