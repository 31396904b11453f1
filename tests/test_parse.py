"""sidecar/parse.py: bytes → validated JSON, reason codes, exact formatting (pure, no server)."""

from __future__ import annotations

import json

import pytest

from sidecar.parse import (
    DEFAULT_FORMAT,
    INT64_MAX,
    INT64_MIN,
    MAX_DEPTH,
    BadInput,
    canonical,
    detect_format,
    loads,
    render,
    validate,
    value_hash,
)

SECRET = "TOP-SECRET-CONTENT-42"


def _reason(fn, *args) -> BadInput:
    with pytest.raises(BadInput) as info:
        fn(*args)
    exc = info.value
    assert exc.reason and exc.message
    assert SECRET not in exc.message and SECRET not in str(exc)
    return exc


# --- loads ---------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"   ", b"\n\t \n"])
def test_loads_empty_or_blank_is_empty(data):
    assert _reason(loads, data).reason == "empty"


@pytest.mark.parametrize("data", [
    b'{"a": ',
    b'{\n  "k": {\n    "secret": "' + SECRET.encode() + b'"\n  }',  # cut mid-write
    b'[1, 2',
    b'{"a": 1}}',
    SECRET.encode(),
])
def test_loads_truncated_or_garbage_is_invalid_json(data):
    exc = _reason(loads, data)
    assert exc.reason == "invalid_json"
    assert "line" in exc.message and "column" in exc.message


def test_loads_invalid_utf8_names_the_byte_offset_not_the_content():
    data = b'{"k": "' + SECRET.encode() + b'\xff\xfe"}'
    exc = _reason(loads, data)
    assert exc.reason == "invalid_utf8"
    assert str(data.index(b"\xff")) in exc.message


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_loads_reads_nan_and_infinity_as_python_writes_them(value):
    """json.dumps writes NaN/Infinity/-Infinity by default: they are doubles
    (BSON holds them), rendered back exactly, hashed the same every time."""
    data = json.dumps({"learner": {"score": value, "note": SECRET}}, indent=2).encode()
    parsed = loads(data)
    validate(parsed)
    fmt = detect_format(parsed, data)
    assert fmt == DEFAULT_FORMAT and render(parsed, fmt) == data
    assert value_hash(parsed) == value_hash(loads(data))  # NaN != NaN: the hash does not care


def test_loads_recursion_beyond_python_is_too_deep():
    depth = 100_000
    assert _reason(loads, (b"[" * depth) + (b"]" * depth)).reason == "too_deep"


def test_loads_keeps_key_order_and_unicode():
    data = json.dumps({"z": 1, "a": 2, "é": "ü"}, ensure_ascii=False).encode()
    value = loads(data)
    assert list(value) == ["z", "a", "é"] and value["é"] == "ü"


# --- validate ------------------------------------------------------------------


def _nest(depth: int, leaf=1):
    """``depth`` nested objects around ``leaf``."""
    value = leaf
    for _ in range(depth):
        value = {"n": value}
    return value


@pytest.mark.parametrize("value, reason", [
    ({"$set": 1}, "bad_key"),
    ({"ok": {"$where": "x"}}, "bad_key"),
    ({"ok": [{"a.b": 1}]}, "bad_key"),
    ({"a.b": SECRET}, "bad_key"),
    ({"nul\x00key": 1}, "bad_key"),
    ({"n": INT64_MAX + 1}, "int_overflow"),
    ({"n": [INT64_MIN - 1]}, "int_overflow"),
    (2**64, "int_overflow"),
    ([[-(2**70)]], "int_overflow"),
    (_nest(200), "too_deep"),
    ([_nest(MAX_DEPTH)], "too_deep"),
])
def test_validate_refuses_what_bson_cannot_hold(value, reason):
    assert _reason(validate, value).reason == reason


@pytest.mark.parametrize("value", [
    {"a$": 1, "b": {"c$d": [1, 2]}},  # '$' only refused at the start
    {"n": INT64_MAX, "m": INT64_MIN, "b": True, "f": 1.5e300},
    _nest(MAX_DEPTH),
    [],
    {},
    "text",
    None,
])
def test_validate_accepts_storable_values(value):
    validate(value)


def test_depth_limit_boundary():
    validate(_nest(MAX_DEPTH))
    with pytest.raises(BadInput):
        validate(_nest(MAX_DEPTH + 1))


# --- hashing -------------------------------------------------------------------


def test_value_hash_is_order_sensitive_and_stable():
    a = {"x": 1, "y": {"p": [1, 2], "q": "é"}}
    b = {"y": {"p": [1, 2], "q": "é"}, "x": 1}
    assert a == b  # equal as dicts...
    assert value_hash(a) != value_hash(b)  # ...but the order is part of the content
    assert value_hash(a) == value_hash(json.loads(json.dumps(a)))
    assert value_hash([1, 2]) != value_hash([2, 1])
    assert value_hash({"a": 1}) != value_hash({"a": 1.0})
    assert len(value_hash(a)) == 64


def test_canonical_is_compact_utf8():
    assert canonical({"a": [1, "é"]}) == '{"a":[1,"é"]}'.encode()


# --- format detection / render round trip ------------------------------------------

SAMPLE = {
    "31c31732-5a98-4f23-a675-c2d943ca0641": {"density": "high", "score": 0.35, "tags": ["a", "b"]},
    "naïve-ключ": {"nested": {"empty_list": [], "empty_obj": {}, "none": None, "flag": False}},
    "n": -12,
}


@pytest.mark.parametrize("dumps_kwargs", [
    {"indent": 2},  # the legacy writer
    {"indent": 2, "ensure_ascii": False},
    {"indent": 4},
    {"indent": 4, "ensure_ascii": False},
    {},
    {"ensure_ascii": False},
    {"separators": (",", ":")},
    {"separators": (",", ":"), "ensure_ascii": False},
])
@pytest.mark.parametrize("newline", [False, True])
def test_detect_format_then_render_is_byte_identical(dumps_kwargs, newline):
    data = (json.dumps(SAMPLE, **dumps_kwargs) + ("\n" if newline else "")).encode("utf-8")
    value = loads(data)
    fmt = detect_format(value, data)
    assert fmt is not None
    assert fmt["newline"] is newline
    assert render(value, fmt) == data


def test_legacy_writer_is_the_default_format():
    data = json.dumps(SAMPLE, indent=2).encode()
    assert detect_format(loads(data), data) == DEFAULT_FORMAT
    assert render(loads(data), None) == data


@pytest.mark.parametrize("data", [
    b'{"a":1, "b":2}',  # mixed separators
    b'{\n\t"a": 1\n}',  # tabs
    b'{"a": 1.0e3}',  # number spelling json.dumps would not produce
    b'\n{"a": 1}',  # leading whitespace
])
def test_unreproducible_layouts_are_detected_as_none(data):
    assert detect_format(loads(data), data) is None


def test_empty_object_formats():
    for data in (b"{}", b"{}\n", b"[]"):
        fmt = detect_format(loads(data), data)
        assert fmt is not None and render(loads(data), fmt) == data
