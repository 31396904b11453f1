"""``memory-sidecar doctor`` (issue 15 point 3): every check passing and failing."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections import namedtuple

import pytest

from sidecar import doctor
from sidecar.cli import main
from sidecar.store import Store

GIT = shutil.which("git")
needs_git = pytest.mark.skipif(GIT is None, reason="git not installed (Makefile `tools` installs it)")


def git(repo, *args):
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                   env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "t",
                        "GIT_COMMITTER_EMAIL": "t@x"})


@pytest.fixture
def api_repo(tmp_path):
    """An API repository holding the data dir (as Mentorix's default `data/system` does)."""
    repo = tmp_path / "api"
    (repo / "data" / "system").mkdir(parents=True)
    git(repo, "init", "-q")
    return repo


# --- git ---------------------------------------------------------------------------------------
@needs_git
def test_git_fails_when_the_data_dir_is_not_ignored(api_repo, make_config):
    config = make_config(runtime_data_dir=api_repo / "data" / "system")
    check = doctor.check_git(config)
    assert check.status == doctor.FAIL
    assert "not ignored" in check.message and "/data/system/" in check.message


@needs_git
def test_git_passes_when_ignored_even_before_the_dir_exists(api_repo, make_config):
    (api_repo / ".gitignore").write_text("data/\n")
    assert doctor.check_git(make_config(runtime_data_dir=api_repo / "data" / "system")).status == doctor.PASS
    # a data dir not created yet is judged by the pattern too
    assert doctor.check_git(make_config(runtime_data_dir=api_repo / "data" / "later")).status == doctor.PASS


@needs_git
def test_git_fails_when_files_are_tracked_even_if_ignored(api_repo, make_config):
    hub = api_repo / "data" / "system" / "structured_hubs" / "soft_identity.json"
    hub.parent.mkdir(parents=True)
    hub.write_text("{}")
    git(api_repo, "add", str(hub))
    git(api_repo, "commit", "-q", "-m", "oops")
    (api_repo / ".gitignore").write_text("data/\n")  # ignoring later does not untrack
    check = doctor.check_git(make_config(runtime_data_dir=api_repo / "data" / "system"))
    assert check.status == doctor.FAIL
    assert "1 file(s)" in check.message and "tracked" in check.message


@needs_git
def test_git_passes_outside_any_repository(tmp_path, make_config):
    check = doctor.check_git(make_config(runtime_data_dir=tmp_path / "plain" / "system"))
    assert check.status == doctor.PASS and "not inside a git repository" in check.message


def test_git_missing_binary_passes_with_a_note(make_config, monkeypatch):
    monkeypatch.setattr(doctor.shutil, "which", lambda name: None)
    check = doctor.check_git(make_config())
    assert check.status == doctor.PASS and "not installed" in check.message


# --- MongoDB, indexes, TTL -------------------------------------------------------------------
@pytest.mark.integration
def test_mongo_probe_write_is_acknowledged_and_removed(config, store, db):
    check = doctor.check_mongo(config, store)
    assert check.status == doctor.PASS, check.message
    assert "w=majority" in check.message
    assert db["memory_sidecar_meta"].count_documents({"kind": "doctor_probe"}) == 0


@pytest.mark.integration
def test_mongo_unreachable_fails_without_credentials(make_config):
    port = _closed_port()
    config = make_config(mongodb_url=f"mongodb://alice:s3cretpw@127.0.0.1:{port}/?directConnection=true",
                         sidecar_server_selection_timeout_ms=300)
    s = Store(config)
    try:
        check = doctor.check_mongo(config, s)
    finally:
        s.close()
    assert check.status == doctor.FAIL
    assert "s3cretpw" not in check.message and "alice" not in check.message and "***@" in check.message


def _closed_port() -> int:
    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        return sk.getsockname()[1]


@pytest.mark.integration
def test_indexes_missing_then_present(config, store, db):
    check = doctor.check_indexes(config, store)
    assert check.status == doctor.FAIL and "ux_hub_type_item_key missing" in check.message
    store.ensure_indexes()
    assert doctor.check_indexes(config, store).status == doctor.PASS


@pytest.mark.integration
def test_index_under_another_name_is_incompatible(config, store, db):
    store.ensure_indexes()
    db["memory_hubs"].drop_index("ix_hubs_learner_id")
    db["memory_hubs"].create_index([("learner_id", 1)], name="learner_id_1")
    check = doctor.check_indexes(config, store)
    assert check.status == doctor.FAIL
    assert "ix_hubs_learner_id missing" in check.message and "'learner_id_1'" in check.message


@pytest.mark.integration
def test_ttl_wrong_seconds_fails_then_passes_after_indexes(make_config, db):
    config = make_config(mongodb_episodes_ttl_days=7, sidecar_events_ttl_days=3)
    s = Store(config)
    try:
        s.ensure_indexes()
        assert doctor.check_ttl(config, s).status == doctor.PASS
        db.command("collMod", "episodic_memory", index={"name": "ix_episodes_updated_at_dt_ttl",
                                                         "expireAfterSeconds": 60})
        check = doctor.check_ttl(config, s)
        assert check.status == doctor.FAIL
        assert "expireAfterSeconds=60, expected 604800" in check.message
        s.ensure_indexes()
        assert doctor.check_ttl(config, s).status == doctor.PASS
    finally:
        s.close()


@pytest.mark.integration
def test_ttl_left_over_when_turned_off_and_missing_when_on(make_config, db):
    on = make_config(sidecar_events_ttl_days=3)
    off = make_config()
    s_on, s_off = Store(on), Store(off)
    try:
        s_off.ensure_indexes()
        check = doctor.check_ttl(on, s_on)
        assert check.status == doctor.FAIL and "ix_events_created_at_ttl missing" in check.message
        s_on.ensure_indexes()
        check = doctor.check_ttl(off, s_off)
        assert check.status == doctor.FAIL and "SIDECAR_EVENTS_TTL_DAYS=0" in check.message
    finally:
        s_on.close()
        s_off.close()


@pytest.mark.integration
def test_ttl_tombstones_dated_for_other_days(make_config, db):
    config = make_config(sidecar_tombstone_days=30)
    s = Store(config)
    try:
        s.ensure_indexes()
        db["memory_tombstones"].insert_one({"coll": "memory_hubs", "doc_id": "h/k", "days": 5})
        check = doctor.check_ttl(config, s)
        assert check.status == doctor.FAIL and "1 tombstone(s)" in check.message
    finally:
        s.close()


# --- socket, HTTP, disk -------------------------------------------------------------------------
def _socket_at(path, mode):
    path.parent.mkdir(parents=True, exist_ok=True)
    sk = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sk.bind(str(path))
    os.chmod(path, mode)
    return sk


def test_socket_owner_only_passes_world_writable_fails(make_config, tmp_path):
    path = tmp_path / "s" / "sidecar.sock"
    config = make_config(sidecar_socket=path)
    sk = _socket_at(path, 0o600)
    try:
        assert doctor.check_socket(config, True).status == doctor.PASS
        os.chmod(path, 0o666)
        check = doctor.check_socket(config, True)
        assert check.status == doctor.FAIL and "0666" in check.message
    finally:
        sk.close()


def test_socket_absent_warns_when_daemon_down_fails_when_up(make_config, tmp_path):
    config = make_config(sidecar_socket=tmp_path / "none.sock")
    assert doctor.check_socket(config, False).status == doctor.WARN
    assert doctor.check_socket(config, True).status == doctor.FAIL
    (tmp_path / "none.sock").write_text("")
    assert doctor.check_socket(config, False).status == doctor.FAIL  # not a socket


def test_http_loopback_or_token(make_config):
    assert doctor.check_http(make_config()).status == doctor.PASS
    assert doctor.check_http(make_config(sidecar_http_host="::1")).status == doctor.PASS
    assert doctor.check_http(make_config(sidecar_http_host="localhost")).status == doctor.PASS
    check = doctor.check_http(make_config(sidecar_http_host="0.0.0.0"))
    assert check.status == doctor.FAIL and "SIDECAR_TOKEN unset" in check.message
    check = doctor.check_http(make_config(sidecar_http_host="0.0.0.0", sidecar_token="tok-abcdef"))
    assert check.status == doctor.PASS and "tok-abcdef" not in check.message


Usage = namedtuple("Usage", "total used free")


def test_disk_space_low_warns(make_config):
    config = make_config()
    gib = 1 << 30
    assert doctor.check_disk(config, lambda p: Usage(100 * gib, 50 * gib, 50 * gib)).status == doctor.PASS
    low = doctor.check_disk(config, lambda p: Usage(100 * gib, 95 * gib, 5 * gib))  # 5 %
    assert low.status == doctor.WARN and "below" in low.message
    small = doctor.check_disk(config, lambda p: Usage(4 * gib, 3.5 * gib, gib // 2))  # 12 % but < 1 GiB
    assert small.status == doctor.WARN


def test_disk_real_usage_is_read(make_config):
    assert doctor.check_disk(make_config()).status in (doctor.PASS, doctor.WARN)


# --- the command -------------------------------------------------------------------------------
@pytest.mark.integration
def test_cli_doctor_exit_codes(mongo_url, db_name, data_dir, store, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(doctor.shutil, "disk_usage", lambda p: Usage(100 << 30, 10 << 30, 90 << 30))
    monkeypatch.setenv("SIDECAR_SOCKET", str(tmp_path / "absent.sock"))
    args = ["--data-dir", str(data_dir), "--mongodb-url", mongo_url, "--db-name", db_name, "doctor"]
    assert main(args) == 1  # no indexes yet
    out = capsys.readouterr().out
    assert "FAIL  indexes" in out
    store.ensure_indexes()
    assert main(args) == 0  # only the absent socket warns
    lines = capsys.readouterr().out.splitlines()
    statuses = {line.split()[1]: line.split()[0] for line in lines}
    assert statuses["socket"] == "WARN"
    assert statuses["mongodb"] == statuses["indexes"] == statuses["ttl"] == statuses["http"] == "PASS"
    assert set(statuses) == {"git", "mongodb", "indexes", "ttl", "socket", "http", "disk"}
    monkeypatch.setenv("SIDECAR_HTTP_HOST", "0.0.0.0")
    assert main(args) == 1
    assert "FAIL  http" in capsys.readouterr().out


@pytest.mark.integration
def test_beside_a_running_daemon_its_socket_and_lease_are_seen(running, monkeypatch):
    monkeypatch.setattr(doctor.shutil, "disk_usage", lambda p: Usage(100 << 30, 10 << 30, 90 << 30))
    d = running()
    config = d.config
    s = Store(config)
    try:
        assert doctor.daemon_running(s) is True
        checks = {c.name: c for c in doctor.run_checks(config, s)}
    finally:
        s.close()
    assert checks["socket"].status == doctor.PASS, checks["socket"].message
    assert "0600" in checks["socket"].message
    assert all(c.status == doctor.PASS for n, c in checks.items() if n != "git"), \
        {n: c.line() for n, c in checks.items()}
