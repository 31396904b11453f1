"""``memory-sidecar doctor``: operator checks, one pass/warn/fail line each.

Read-only except for one probe document in ``memory_sidecar_meta`` (written
with the configured write concern and deleted again). Exit code: 0 when nothing
failed (warnings included), 1 when a check failed. Never prints credentials:
the MongoDB URL is shown with its user info hidden, the token only as set/unset.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import stat
import subprocess
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from .config import Config
from .names import EPISODES, EVENTS, IX_TOMBSTONES_EXPIRE_AT_TTL, META, SNAPSHOTS, TOMBSTONES

PASS, WARN, FAIL = "pass", "warn", "fail"
# The data dir's file system: warn when less than this much (or this share) is free.
DISK_MIN_FREE_BYTES = 1 << 30  # 1 GiB
DISK_MIN_FREE_RATIO = 0.10
GIT_TIMEOUT_S = 10


@dataclass
class Check:
    name: str
    status: str
    message: str

    def line(self) -> str:
        return f"{self.status.upper():4}  {self.name:<12} {self.message}"


def _existing(path: Path) -> Path:
    """The path, or its nearest existing parent (a data dir not created yet)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


# --- the data dir and git ---------------------------------------------------------------
def check_git(config: Config, git: str | None = None) -> Check:
    """Runtime learner data must never be committed: the data dir must hold no
    tracked file and be ignored by the repository around it (if there is one)."""
    name = "git"
    git = git or shutil.which("git")
    if git is None:
        return Check(name, PASS, "git not installed: not checked")
    data = config.data_dir
    where = _existing(data)
    if where.is_file():
        where = where.parent

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([git, "-C", str(where), *args], capture_output=True, text=True,
                              timeout=GIT_TIMEOUT_S, env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"})
    try:
        top = run("rev-parse", "--show-toplevel")
        if top.returncode != 0:
            return Check(name, PASS, f"{data} is not inside a git repository")
        repo = Path(top.stdout.strip())
        tracked = run("ls-files", "-z", "--", str(data))
        files = [f for f in tracked.stdout.split("\0") if f]
        if files:
            return Check(name, FAIL, f"{len(files)} file(s) under {data} are tracked by the git repository "
                         f"{repo} (e.g. {files[0]}): `git rm -r --cached` them and ignore the dir")
        # A directory pattern (`data/`) matches the dir itself; a trailing slash lets
        # git check-ignore treat a data dir not created yet as a directory too.
        ignored = run("check-ignore", "-q", "--no-index", "--", str(data) + "/")
        if ignored.returncode == 0:
            return Check(name, PASS, f"{data} is ignored by the git repository {repo} and holds no tracked file")
        if ignored.returncode == 1:
            return Check(name, FAIL, f"{data} is inside the git repository {repo} but not ignored: add "
                         f"'{_rel_pattern(data, repo)}' to {repo}/.gitignore (learner data must never be committed)")
        return Check(name, WARN, f"git check-ignore failed ({ignored.stderr.strip()[:120]})")
    except (OSError, subprocess.SubprocessError) as exc:
        return Check(name, WARN, f"git could not be run: {type(exc).__name__}")


def _rel_pattern(data: Path, repo: Path) -> str:
    try:
        return "/" + str(data.resolve().relative_to(repo.resolve())) + "/"
    except (ValueError, OSError):
        return str(data) + "/"


# --- MongoDB ------------------------------------------------------------------------------
def check_mongo(config: Config, store) -> Check:
    """A real write + delete of a probe document, acknowledged with the configured
    write concern (the client is built with it, sidecar/store.py)."""
    import pymongo
    from pymongo.errors import PyMongoError

    name = "mongodb"
    w = config.write_concern_w
    probe = {"_id": f"doctor_probe:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}",
             "kind": "doctor_probe", "at": datetime.now(timezone.utc)}
    coll = store.db[META].with_options(write_concern=pymongo.WriteConcern(
        w=w, wtimeout=config.sidecar_write_timeout_ms or None))
    try:
        store.client.admin.command("ping")
        inserted = coll.insert_one(probe)
        deleted = coll.delete_one({"_id": probe["_id"]})
    except PyMongoError as exc:
        text = str(exc).split(", Timeout:")[0].split(" (configured timeouts")[0]
        return Check(name, FAIL, f"{config.safe_url}: {config.scrub(f'{type(exc).__name__}: {text}')[:300]}")
    if not (inserted.acknowledged and deleted.acknowledged and deleted.deleted_count == 1):
        return Check(name, FAIL, f"{config.safe_url}: the probe write was not acknowledged with w={w}")
    return Check(name, PASS, f"{config.safe_url} db {config.mongodb_db_name}: probe write and delete "
                 f"acknowledged with w={w}")


def _server_indexes(store) -> dict[str, dict[str, dict]]:
    """collection name → index name → spec, as the server lists them."""
    out: dict[str, dict[str, dict]] = {}
    for coll in store.coll.values():
        out[coll.name] = {spec["name"]: dict(spec) for spec in coll.list_indexes()}
    return out


def check_indexes(config: Config, store, indexes: dict | None = None) -> Check:
    """Every index of the plan (``Store.index_plan``: Mentorix's names) present with
    its keys and uniqueness; no other index on the same keys under another name.
    TTL indexes are ``check_ttl``'s."""
    name = "indexes"
    indexes = indexes if indexes is not None else _server_indexes(store)
    problems: list[str] = []
    for logical, keys, opts in store.index_plan():
        if "expireAfterSeconds" in opts:
            continue
        cname = store.coll[logical].name
        have = indexes.get(cname, {})
        spec = have.get(opts["name"])
        if spec is None:
            same = [n for n, s in have.items() if list(s["key"].items()) == [tuple(k) for k in keys]]
            problems.append(f"{cname}.{opts['name']} missing" + (
                f" (the same keys are indexed as {same[0]!r}: another name than Mentorix's)" if same else ""))
            continue
        if list(spec["key"].items()) != [tuple(k) for k in keys]:
            problems.append(f"{cname}.{opts['name']} has keys {list(spec['key'].items())}, expected {keys}")
        if bool(spec.get("unique", False)) != bool(opts.get("unique", False)):
            problems.append(f"{cname}.{opts['name']} unique={bool(spec.get('unique', False))}, "
                            f"expected {bool(opts.get('unique', False))}")
    if problems:
        return Check(name, FAIL, "; ".join(problems) + " (run `memory-sidecar indexes`)")
    count = sum(1 for _, _, o in store.index_plan() if "expireAfterSeconds" not in o)
    return Check(name, PASS, f"{count} indexes present with Mentorix's names, keys and uniqueness")


def check_ttl(config: Config, store, indexes: dict | None = None) -> Check:
    """The TTL indexes' expireAfterSeconds equal the configured days; a TTL turned
    off (0 days) has no index; tombstones carry expiries of the configured days."""
    name = "ttl"
    indexes = indexes if indexes is not None else _server_indexes(store)
    wanted = {opts["name"]: (store.coll[logical].name, opts["expireAfterSeconds"])
              for logical, _, opts in store.index_plan() if "expireAfterSeconds" in opts}
    problems, ok = [], []
    settings = {SNAPSHOTS: "MONGODB_SNAPSHOTS_TTL_DAYS", EPISODES: "MONGODB_EPISODES_TTL_DAYS",
                EVENTS: "SIDECAR_EVENTS_TTL_DAYS"}
    for logical, index in store.TTL_INDEXES.items():
        cname = store.coll[logical].name
        spec = indexes.get(cname, {}).get(index)
        if index in wanted:
            seconds = wanted[index][1]
            if spec is None:
                problems.append(f"{cname}.{index} missing ({settings[logical]}={seconds // 86400})")
            elif spec.get("expireAfterSeconds") != seconds:
                problems.append(f"{cname}.{index} expireAfterSeconds={spec.get('expireAfterSeconds')}, "
                                f"expected {seconds} ({settings[logical]}={seconds // 86400})")
            else:
                ok.append(f"{cname} {seconds // 86400} d")
        elif spec is not None:
            problems.append(f"{cname}.{index} exists (expireAfterSeconds={spec.get('expireAfterSeconds')}) "
                            f"but {settings[logical]}=0 (keep forever)")
        else:
            ok.append(f"{cname} kept forever")
    tname = store.coll[TOMBSTONES].name
    spec = indexes.get(tname, {}).get(IX_TOMBSTONES_EXPIRE_AT_TTL)
    days = config.sidecar_tombstone_days
    if spec is None or spec.get("expireAfterSeconds") != 0:
        problems.append(f"{tname}.{IX_TOMBSTONES_EXPIRE_AT_TTL} missing or not expireAfterSeconds=0")
    else:
        other = store.coll[TOMBSTONES].count_documents({"days": {"$ne": days}})
        if other:
            problems.append(f"{other} tombstone(s) dated for other days than SIDECAR_TOMBSTONE_DAYS={days}")
        else:
            ok.append(f"{tname} {days} d")
    if problems:
        return Check(name, FAIL, "; ".join(problems) + " (run `memory-sidecar indexes`, or start the daemon)")
    return Check(name, PASS, ", ".join(ok))


def daemon_running(store) -> bool:
    """A daemon holds the writer lease (not expired)."""
    doc = store.db[META].find_one({"_id": "writer_lease"})
    if not isinstance(doc, dict) or doc.get("kind") != "daemon":
        return False
    expires = doc.get("expires_at")
    return isinstance(expires, datetime) and expires > datetime.now(timezone.utc)


# --- local surfaces -------------------------------------------------------------------------
def check_socket(config: Config, running: bool | None) -> Check:
    """The shim socket is owner-only (the daemon creates it 0600): anyone who can
    connect can feed the mirror."""
    name = "socket"
    path = config.socket_path
    try:
        st = path.lstat()
    except FileNotFoundError:
        if running:
            return Check(name, FAIL, f"{path} is absent although a daemon holds the writer lease "
                         "(another host, or a different SIDECAR_SOCKET)")
        note = "the daemon is not running" if running is False else "the daemon's state is unknown"
        return Check(name, WARN, f"{path} is absent ({note})")
    except OSError as exc:
        return Check(name, FAIL, f"{path}: {exc.strerror}")
    if not stat.S_ISSOCK(st.st_mode):
        return Check(name, FAIL, f"{path} is not a socket")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        return Check(name, FAIL, f"{path} has mode {mode:04o}: group/others can connect (expected 0600)")
    if st.st_uid != os.geteuid():
        return Check(name, WARN, f"{path} mode {mode:04o}, owned by uid {st.st_uid}, not this user "
                     f"({os.geteuid()})")
    return Check(name, PASS, f"{path} mode {mode:04o}, owner only")


def _loopback(host: str) -> bool:
    if host.strip().lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def check_http(config: Config) -> Check:
    """The status server on loopback, or a token when it is reachable from outside
    (state-changing endpoints are disabled without one; read endpoints carry keys,
    paths and counts, never values)."""
    name = "http"
    host, port = config.sidecar_http_host, config.sidecar_http_port
    if _loopback(host):
        return Check(name, PASS, f"status server on {host}:{port} (loopback)")
    if config.token:
        return Check(name, PASS, f"status server on {host}:{port} (not loopback), SIDECAR_TOKEN set")
    return Check(name, FAIL, f"status server on {host}:{port} (not loopback) and SIDECAR_TOKEN unset: "
                 "bind SIDECAR_HTTP_HOST=127.0.0.1 or set a token")


def check_disk(config: Config, usage: Callable = None) -> Check:
    """Free space of the data dir's file system."""
    name = "disk"
    usage = usage or shutil.disk_usage
    where = _existing(config.data_dir)
    try:
        total, _, free = usage(where)
    except OSError as exc:
        return Check(name, WARN, f"{where}: {exc.strerror}")
    ratio = free / total if total else 0.0
    text = f"{where}: {free / (1 << 30):.1f} GiB free of {total / (1 << 30):.1f} GiB ({ratio:.0%})"
    if free < DISK_MIN_FREE_BYTES or ratio < DISK_MIN_FREE_RATIO:
        return Check(name, WARN, text + f" - below {DISK_MIN_FREE_BYTES >> 30} GiB or "
                     f"{DISK_MIN_FREE_RATIO:.0%} free")
    return Check(name, PASS, text)


# --- all of them -------------------------------------------------------------------------------
def run_checks(config: Config, store) -> list[Check]:
    checks = [check_git(config)]
    mongo = check_mongo(config, store)
    checks.append(mongo)
    running: bool | None = None
    if mongo.status == PASS:
        from pymongo.errors import PyMongoError

        try:
            indexes = _server_indexes(store)
            checks.append(check_indexes(config, store, indexes))
            checks.append(check_ttl(config, store, indexes))
            running = daemon_running(store)
        except PyMongoError as exc:
            checks.append(Check("indexes", FAIL, config.scrub(f"{type(exc).__name__}: {exc}")[:300]))
    else:
        checks.append(Check("indexes", WARN, "not checked: MongoDB unreachable"))
        checks.append(Check("ttl", WARN, "not checked: MongoDB unreachable"))
    checks.append(check_socket(config, running))
    checks.append(check_http(config))
    checks.append(check_disk(config))
    return checks


def exit_code(checks: list[Check]) -> int:
    return 1 if any(c.status == FAIL for c in checks) else 0
