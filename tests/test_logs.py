"""sidecar/logs.py: JSON lines, fields, idempotent setup, no payload/secret leaks."""

from __future__ import annotations

import io
import json
import logging

import pytest

from sidecar.logs import setup_logging


@pytest.fixture(autouse=True)
def _restore_root_logger():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)


def _ours(root: logging.Logger) -> list[logging.Handler]:
    return [h for h in root.handlers if getattr(h, "_mentorix_sidecar_handler", False)]


def test_json_lines_parse_and_carry_fields():
    buf = io.StringIO()
    setup_logging("json", "DEBUG", stream=buf)
    log = logging.getLogger("sidecar.test")
    log.info("mirrored %s", "hub", extra={"fields": {"path": "structured_hubs/a.json", "docs": 3}})
    log.debug("second")
    lines = buf.getvalue().splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])
    assert first["level"] == "INFO"
    assert first["logger"] == "sidecar.test"
    assert first["msg"] == "mirrored hub"
    assert first["path"] == "structured_hubs/a.json"
    assert first["docs"] == 3
    assert first["ts"].endswith("Z") and "T" in first["ts"]
    assert json.loads(lines[1])["msg"] == "second"


def test_json_exception_stays_one_line():
    buf = io.StringIO()
    setup_logging("json", stream=buf)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("x").exception("failed", extra={"fields": {"kind": "hubs"}})
    lines = buf.getvalue().splitlines()
    assert len(lines) == 1
    obj = json.loads(lines[0])
    assert obj["level"] == "ERROR" and obj["kind"] == "hubs"
    assert "RuntimeError: boom" in obj["exc"]


def test_field_colliding_with_core_key_does_not_replace_it():
    buf = io.StringIO()
    setup_logging("json", stream=buf)
    logging.getLogger("x").warning("real", extra={"fields": {"msg": "fake", "level": "x"}})
    obj = json.loads(buf.getvalue())
    assert obj["msg"] == "real" and obj["level"] == "WARNING"
    assert obj["field_msg"] == "fake" and obj["field_level"] == "x"


def test_unserialisable_field_does_not_break_logging():
    buf = io.StringIO()
    setup_logging("json", stream=buf)
    logging.getLogger("x").info("odd", extra={"fields": {"obj": object(), "b": b"\x00"}})
    obj = json.loads(buf.getvalue())
    assert obj["msg"] == "odd" and "obj" in obj


def test_setup_is_idempotent_and_keeps_foreign_handlers():
    root = logging.getLogger()
    foreign = logging.NullHandler()
    root.addHandler(foreign)
    buf = io.StringIO()
    for _ in range(3):
        setup_logging("json", stream=buf)
    setup_logging("text", stream=buf)
    assert len(_ours(root)) == 1
    assert foreign in root.handlers
    logging.getLogger("x").warning("once")
    assert buf.getvalue().count("once") == 1


def test_text_format_is_plain_with_fields():
    buf = io.StringIO()
    setup_logging("text", "INFO", stream=buf)
    logging.getLogger("sidecar.watch").info("seen", extra={"fields": {"path": "a.json"}})
    logging.getLogger("sidecar.watch").debug("hidden")
    out = buf.getvalue()
    assert "INFO sidecar.watch: seen path=a.json" in out
    assert "hidden" not in out
    with pytest.raises(json.JSONDecodeError):
        json.loads(out.splitlines()[0])


def test_level_is_applied_and_validated():
    buf = io.StringIO()
    setup_logging("json", "warning", stream=buf)
    logging.getLogger("x").info("no")
    logging.getLogger("x").warning("yes")
    assert [json.loads(line)["msg"] for line in buf.getvalue().splitlines()] == ["yes"]
    with pytest.raises(ValueError):
        setup_logging("json", "LOUD", stream=buf)
    with pytest.raises(ValueError):
        setup_logging("xml", "INFO", stream=buf)


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_mongodb_credentials_are_masked(fmt):
    buf = io.StringIO()
    setup_logging(fmt, stream=buf)
    logging.getLogger("x").error(
        "cannot reach mongodb://admin:s3cret@db:27017/?replicaSet=rs0",
        extra={"fields": {"url": "mongodb+srv://u:pw9@cluster.example"}},
    )
    out = buf.getvalue()
    assert "s3cret" not in out and "pw9" not in out
    assert "mongodb://***@db:27017" in out


def test_custom_scrub_is_applied_after_url_masking():
    buf = io.StringIO()
    setup_logging("json", stream=buf, scrub=lambda s: s.replace("hunter2", "***"))
    logging.getLogger("x").info("token hunter2 leaked")
    assert "hunter2" not in buf.getvalue()
