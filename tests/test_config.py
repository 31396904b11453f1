"""Settings: Mentorix env names, SIDECAR_* names and defaults, CLI flags over env,
invalid values (exit 2, named, never echoed), credentials and token hidden,
key redaction."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from testkit import ROOT

from sidecar import cli
from sidecar.config import DEFAULT_IGNORE, Config, describe, redact_url
from sidecar.model import REDACTED

PASSWORD = "S3cretPassw0rd"
USER = "mentorixuser"
TOKEN = "tok-9f8e7d-S3cret"
CRED_URL = f"mongodb://{USER}:{PASSWORD}@db.example:27017/mentorix?authSource=admin"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """No setting leaks in from the environment the tests run in."""
    for name in Config.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
        monkeypatch.delenv(name, raising=False)


# --- env names and defaults ------------------------------------------------------------


def test_defaults():
    c = Config()
    assert c.runtime_data_dir == Path("data/system")
    assert c.data_dir == Path.cwd() / "data" / "system"
    assert c.mongodb_db_name == "mentorix"
    assert c.memory_store_backend == "file"
    assert c.memory_dual_write is False
    assert c.mongodb_snapshots_ttl_days == 0 and c.mongodb_episodes_ttl_days == 0
    assert c.sidecar_http_host == "127.0.0.1"
    assert c.sidecar_http_port == 8787
    assert c.token is None
    assert c.sidecar_ignore == [] and c.ignore_globs == DEFAULT_IGNORE
    assert c.sidecar_redact_keys == []
    assert c.sidecar_propagate_file_deletes is False
    assert c.write_concern_w == "majority"
    assert c.socket_path == c.data_dir.parent / ".memory-sidecar.sock"


def test_mentorix_env_names(monkeypatch, tmp_path):
    monkeypatch.setenv("RUNTIME_DATA_DIR", str(tmp_path / "system"))
    monkeypatch.setenv("MONGODB_URL", CRED_URL)
    monkeypatch.setenv("MONGODB_DB_NAME", "mentorix_prod")
    monkeypatch.setenv("MEMORY_STORE_BACKEND", "mongo")
    monkeypatch.setenv("MEMORY_DUAL_WRITE", "true")
    monkeypatch.setenv("MONGODB_SNAPSHOTS_TTL_DAYS", "3")
    monkeypatch.setenv("MONGODB_EPISODES_TTL_DAYS", "7")
    c = Config()
    assert c.data_dir == tmp_path / "system"
    assert c.url == CRED_URL
    assert c.mongodb_db_name == "mentorix_prod"
    assert c.memory_store_backend == "mongo"
    assert c.memory_dual_write is True
    assert (c.mongodb_snapshots_ttl_days, c.mongodb_episodes_ttl_days) == (3, 7)


def test_sidecar_env_names(monkeypatch, tmp_path):
    monkeypatch.setenv("SIDECAR_HTTP_HOST", "0.0.0.0")
    monkeypatch.setenv("SIDECAR_HTTP_PORT", "9999")
    monkeypatch.setenv("SIDECAR_SOCKET", str(tmp_path / "s.sock"))
    monkeypatch.setenv("SIDECAR_TOKEN", TOKEN)
    monkeypatch.setenv("SIDECAR_IGNORE", " cache/* , *.lock,,tmp/** ")
    monkeypatch.setenv("SIDECAR_REDACT_KEYS", "password, api_key,Token")
    monkeypatch.setenv("SIDECAR_PROPAGATE_FILE_DELETES", "true")
    c = Config()
    assert c.sidecar_http_host == "0.0.0.0" and c.sidecar_http_port == 9999
    assert c.socket_path == tmp_path / "s.sock"
    assert c.token == TOKEN
    assert c.sidecar_ignore == ["cache/*", "*.lock", "tmp/**"]
    assert c.ignore_globs == DEFAULT_IGNORE + ("cache/*", "*.lock", "tmp/**")
    assert c.sidecar_redact_keys == ["password", "api_key", "Token"]
    assert c.sidecar_propagate_file_deletes is True


@pytest.mark.parametrize("text, expected", [("1", True), ("yes", True), ("TRUE", True), ("on", True),
                                            ("0", False), ("false", False), ("no", False), ("off", False)])
def test_boolean_spellings(monkeypatch, text, expected):
    monkeypatch.setenv("SIDECAR_PROPAGATE_FILE_DELETES", text)
    monkeypatch.setenv("MEMORY_DUAL_WRITE", text)
    c = Config()
    assert c.sidecar_propagate_file_deletes is expected and c.memory_dual_write is expected


def test_empty_lists_from_env(monkeypatch):
    monkeypatch.setenv("SIDECAR_IGNORE", "")
    monkeypatch.setenv("SIDECAR_REDACT_KEYS", " , ")
    c = Config()
    assert c.sidecar_ignore == [] and c.sidecar_redact_keys == []


def test_cli_flags_override_env(monkeypatch, tmp_path):
    monkeypatch.setenv("RUNTIME_DATA_DIR", str(tmp_path / "env-dir"))
    monkeypatch.setenv("MONGODB_URL", "mongodb://env-host:27017")
    monkeypatch.setenv("MONGODB_DB_NAME", "env_db")
    monkeypatch.setenv("MEMORY_STORE_BACKEND", "file")
    monkeypatch.setenv("SIDECAR_HTTP_HOST", "10.0.0.1")
    monkeypatch.setenv("SIDECAR_HTTP_PORT", "1111")
    monkeypatch.setenv("SIDECAR_LOG_FORMAT", "text")
    monkeypatch.setenv("SIDECAR_TOKEN", TOKEN)
    args = cli._parser().parse_args([
        "--data-dir", str(tmp_path / "flag-dir"), "--mongodb-url", "mongodb://flag-host:27018",
        "--db-name", "flag_db", "--backend", "mongo", "--log-format", "json", "--log-level", "DEBUG",
        "run", "--host", "127.0.0.2", "--port", "2222"])
    c = cli._config(args)
    assert c.data_dir == tmp_path / "flag-dir"
    assert c.url == "mongodb://flag-host:27018"
    assert c.mongodb_db_name == "flag_db"
    assert c.memory_store_backend == "mongo"
    assert c.sidecar_log_format == "json" and c.sidecar_log_level == "DEBUG"
    assert c.sidecar_http_host == "127.0.0.2" and c.sidecar_http_port == 2222
    assert c.token == TOKEN  # not given as a flag: env still applies
    # without flags, env applies
    c = cli._config(cli._parser().parse_args(["sync"]))
    assert c.data_dir == tmp_path / "env-dir" and c.mongodb_db_name == "env_db"
    assert c.sidecar_http_port == 1111


# --- invalid values ----------------------------------------------------------------------


@pytest.mark.parametrize("name, value", [
    ("SIDECAR_HTTP_PORT", "S3cr3t-not-a-port"),
    ("SIDECAR_HTTP_PORT", "70000"),
    ("MEMORY_STORE_BACKEND", "S3cr3t-backend"),
    ("MEMORY_DUAL_WRITE", "S3cr3t-maybe"),
    ("MONGODB_SNAPSHOTS_TTL_DAYS", "-3"),
    ("MONGODB_EPISODES_TTL_DAYS", "S3cr3t-days"),
    ("SIDECAR_PROPAGATE_FILE_DELETES", "S3cr3t-sometimes"),
    ("SIDECAR_WRITE_CONCERN", "S3cr3t-wc"),
    ("SIDECAR_EVENTS_PAYLOAD", "S3cr3t-all"),
])
def test_invalid_env_value_exit_2_named_not_echoed(monkeypatch, capsys, name, value):
    monkeypatch.setenv(name, value)
    assert cli.main(["config"]) == 2
    captured = capsys.readouterr()
    assert f"invalid setting {name}" in captured.err
    assert value not in captured.err + captured.out
    assert captured.out == ""


def test_several_invalid_values_each_named(monkeypatch, capsys):
    monkeypatch.setenv("SIDECAR_HTTP_PORT", "x")
    monkeypatch.setenv("MEMORY_STORE_BACKEND", "y")
    assert cli.main(["sync"]) == 2
    err = capsys.readouterr().err
    assert "SIDECAR_HTTP_PORT" in err and "MEMORY_STORE_BACKEND" in err


def test_invalid_flag_value_exit_2(capsys):
    assert cli.main(["run", "--port", "70000"]) == 2  # refused before anything starts
    assert "invalid setting SIDECAR_HTTP_PORT" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        cli.main(["--backend", "S3cr3t", "sync"])  # argparse choices: usage error
    assert info.value.code == 2


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("SIDECAR_", "MONGODB_", "RUNTIME_"))}
    full.update(env)
    return subprocess.run([sys.executable, "-m", "sidecar", *args], cwd=ROOT, env=full,
                          capture_output=True, text=True, timeout=60)


def test_malformed_mongodb_url_is_a_usage_error(tmp_path):
    data = tmp_path / "d"
    data.mkdir()
    env = {"RUNTIME_DATA_DIR": str(data), "SIDECAR_SERVER_SELECTION_TIMEOUT_MS": "300"}
    for url in (f"mongodb://{USER}:p@ss{PASSWORD}@127.0.0.1/", f"mongodb://{USER}:{PASSWORD}@127.0.0.1:port/"):
        proc = run_cli("sync", env=dict(env, MONGODB_URL=url))
        output = proc.stdout + proc.stderr
        assert PASSWORD not in output and USER not in output
        assert "Traceback" not in output
        assert proc.returncode == 2 and "MONGODB_URL" in proc.stderr


# --- credentials and token never printed ----------------------------------------------------


def test_config_command_hides_credentials_and_token(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("MONGODB_URL", CRED_URL)
    monkeypatch.setenv("SIDECAR_TOKEN", TOKEN)
    monkeypatch.setenv("RUNTIME_DATA_DIR", str(tmp_path))
    assert cli.main(["config"]) == 0
    out = capsys.readouterr().out
    assert PASSWORD not in out and USER not in out and TOKEN not in out
    shown = json.loads(out)
    assert shown["MONGODB_URL"] == "mongodb://***@db.example:27017/mentorix?authSource=admin"
    assert shown["SIDECAR_TOKEN"] == "***"
    assert shown["RUNTIME_DATA_DIR"] == str(tmp_path)
    assert shown["SIDECAR_HTTP_HOST"] == "127.0.0.1" and shown["SIDECAR_HTTP_PORT"] == 8787
    assert {"MONGODB_DB_NAME", "MEMORY_STORE_BACKEND", "MEMORY_DUAL_WRITE", "MONGODB_SNAPSHOTS_TTL_DAYS",
            "MONGODB_EPISODES_TTL_DAYS", "SIDECAR_SOCKET", "SIDECAR_IGNORE", "SIDECAR_REDACT_KEYS",
            "SIDECAR_PROPAGATE_FILE_DELETES"} <= set(shown)


def test_describe_without_token_or_credentials():
    shown = describe(Config(mongodb_url="mongodb://localhost:27017"))
    assert shown["SIDECAR_TOKEN"] is None
    assert shown["MONGODB_URL"] == "mongodb://localhost:27017"


@pytest.mark.parametrize("url, expected", [
    (f"mongodb://{USER}:{PASSWORD}@h:27017/db", "mongodb://***@h:27017/db"),
    (f"mongodb+srv://{USER}:{PASSWORD}@cluster0.example.net/db?retryWrites=true",
     "mongodb+srv://***@cluster0.example.net/db?retryWrites=true"),
    (f"mongodb://{USER}:{PASSWORD}@h1:1,h2:2,h3:3/db?replicaSet=rs0", "mongodb://***@h1:1,h2:2,h3:3/db?replicaSet=rs0"),
    (f"MONGODB://{USER}:{PASSWORD}@H/", "MONGODB://***@H/"),
    (f"mongodb://{USER}@h/", "mongodb://***@h/"),
    (f"mongodb://{USER}:p%40ss%2F{PASSWORD}@h/", "mongodb://***@h/"),
    ("mongodb://h:27017/db", "mongodb://h:27017/db"),
])
def test_redact_url(url, expected):
    assert redact_url(url) == expected
    assert redact_url(f"error: could not reach {url} (after 3 tries)") == \
        f"error: could not reach {expected} (after 3 tries)"


def test_redact_url_password_with_unescaped_at(monkeypatch, capsys):
    url = f"mongodb://{USER}:p@ss{PASSWORD}@db.example/"
    assert PASSWORD not in redact_url(url)
    monkeypatch.setenv("MONGODB_URL", url)
    assert cli.main(["config"]) == 0
    assert PASSWORD not in capsys.readouterr().out


def test_scrub_removes_user_and_password_anywhere():
    c = Config(mongodb_url=CRED_URL)
    text = (f"Authentication failed for user '{USER}' with password {PASSWORD} "
            f"connecting to {CRED_URL}")
    scrubbed = c.scrub(text)
    assert USER not in scrubbed and PASSWORD not in scrubbed
    assert "mongodb://***@db.example:27017/mentorix?authSource=admin" in scrubbed
    assert c.safe_url == "mongodb://***@db.example:27017/mentorix?authSource=admin"
    assert Config(mongodb_url="mongodb://h/").scrub("nothing to hide") == "nothing to hide"


def test_repr_does_not_expose_secrets():
    c = Config(mongodb_url=CRED_URL, sidecar_token=TOKEN)
    assert PASSWORD not in repr(c) and TOKEN not in repr(c) and PASSWORD not in str(c)


# --- SIDECAR_IGNORE and SIDECAR_REDACT_KEYS in a real sync ------------------------------------


@pytest.mark.integration
def test_ignore_globs_from_env_apply_to_sync(monkeypatch, legacy_dir, mongo_url, db_name, store, db):
    from sidecar.sync import run_sync

    monkeypatch.setenv("SIDECAR_IGNORE", "cache/*,*.lock")
    (legacy_dir / "cache").mkdir()
    (legacy_dir / "cache" / "x.json").write_text("{}")
    (legacy_dir / "state.lock").write_text("1")
    (legacy_dir / "kept.txt").write_text("kept")
    config = Config(runtime_data_dir=legacy_dir, mongodb_url=mongo_url, mongodb_db_name=db_name)
    report, code = run_sync(config, store)
    assert code == 0
    paths = {d["_id"] for d in db[config.sidecar_files_collection].find({}, {"_id": 1})}
    assert "kept.txt" in paths
    assert not {"cache/x.json", "state.lock"} & paths


@pytest.mark.integration
def test_redact_keys_replace_values_in_mongodb(monkeypatch, legacy_dir, mongo_url, db_name, store, db, tmp_path):
    from sidecar.restore import restore
    from sidecar.sync import run_sync

    monkeypatch.setenv("SIDECAR_REDACT_KEYS", "password,API_KEY")
    hub = legacy_dir / "structured_hubs" / "learner_preferences.json"
    data = json.loads(hub.read_text())
    learner = next(iter(data))
    data[learner]["password"] = PASSWORD
    data[learner]["nested"] = {"Api_Key": "key-" + PASSWORD, "kept": "visible"}
    data[learner]["list"] = [{"PASSWORD": PASSWORD}]
    hub.write_text(json.dumps(data, indent=2))
    (legacy_dir / "episodes").mkdir()
    (legacy_dir / "episodes" / "skeleton_r1.json").write_text(
        json.dumps({"run_id": "r1", "nodes": [{"password": PASSWORD}]}, indent=2))
    config = Config(runtime_data_dir=legacy_dir, mongodb_url=mongo_url, mongodb_db_name=db_name)
    report, code = run_sync(config, store)
    assert code == 0, report["bad_input"]
    doc = db.memory_hubs.find_one({"hub_type": "learner_preferences", "item_key": learner})
    assert doc["payload"]["password"] == REDACTED
    assert doc["payload"]["nested"] == {"Api_Key": REDACTED, "kept": "visible"}
    assert doc["payload"]["list"] == [{"PASSWORD": REDACTED}]
    assert db.episodic_memory.find_one({"run_id": "r1"})["nodes"] == [{"password": REDACTED}]
    everything = json.dumps([list(db[n].find()) for n in db.list_collection_names()], default=str)
    assert PASSWORD not in everything
    # idempotent: the redacted form is what parity compares
    report, code = run_sync(config, store)
    assert code == 0 and report["writes"]["total"] == 0
    # restore writes the redacted value (the documented exception to byte identity)
    out = tmp_path / "restored"
    restore(store, out)
    restored = json.loads((out / "structured_hubs" / "learner_preferences.json").read_text())
    assert restored[learner]["password"] == REDACTED
    assert list(restored) == list(data)  # order kept


@pytest.mark.integration
def test_redact_keys_also_cover_generic_json_files(monkeypatch, legacy_dir, mongo_url, db_name, store, db):
    from sidecar.sync import run_sync

    monkeypatch.setenv("SIDECAR_REDACT_KEYS", "password")
    (legacy_dir / "runs").mkdir()
    (legacy_dir / "runs" / "run_r1.json").write_text(json.dumps({"run_id": "r1", "password": PASSWORD}, indent=2))
    config = Config(runtime_data_dir=legacy_dir, mongodb_url=mongo_url, mongodb_db_name=db_name)
    run_sync(config, store)
    everything = json.dumps([list(db[n].find()) for n in db.list_collection_names()], default=str)
    assert PASSWORD not in everything
