"""sidecar/model.py HubMemo: the per-entry memo that spares re-checking unchanged
hub entries. Every plan it produces must equal the plan of the full checks
(entries, hashes, errors, format), and its format must reproduce the bytes."""

from __future__ import annotations

import json
import random

import pytest

from sidecar.model import HubMemo, build_plan
from sidecar.parse import render
from sidecar.source import FileRead, sha256_hex

HUB = "structured_hubs/learner_preferences.json"


def read(data: bytes, rel: str = HUB) -> FileRead:
    return FileRead(rel, data, sha256_hex(data), len(data), 1)


def dumps(payload, **kw) -> bytes:
    return json.dumps(payload, **kw).encode("utf-8")


def summary(plan):
    return (
        [(e.key, e.hash, e.value) for e in plan.entries],
        {k: e.reason for k, e in plan.entry_errors.items()},
        plan.fmt,
    )


def both(data: bytes, memo: HubMemo, redact=frozenset()):
    """The memo's plan and the full-check plan of the same bytes."""
    return build_plan(read(data), redact, None, memo), build_plan(read(data), redact)


def hub(n: int = 20) -> dict:
    return {f"learner_{i}": {"learner_id": f"learner_{i}", "pace": "normal", "topics": ["a", "b"],
                             "score": i * 1.5, "nested": {"x": [i, {"y": None}], "e": {}}}
            for i in range(n)}


def test_one_changed_entry_is_the_only_one_rechecked(monkeypatch):
    memo = HubMemo()
    payload = hub()
    build_plan(read(dumps(payload, indent=2)), memo=memo)
    payload["learner_7"]["score"] = 99
    checked = []
    import sidecar.model as model

    real = model._hash_checked
    monkeypatch.setattr(model, "_hash_checked", lambda v: checked.append(v) or real(v))
    data = dumps(payload, indent=2)
    fast = build_plan(read(data), memo=memo)
    assert checked == [payload["learner_7"]]
    monkeypatch.undo()
    assert summary(fast) == summary(build_plan(read(data)))
    assert render(payload, fast.fmt) == data


@pytest.mark.parametrize("kw", [
    {"indent": 2}, {"indent": 2, "ensure_ascii": False}, {"indent": 4}, {"indent": 4, "ensure_ascii": False},
])
@pytest.mark.parametrize("newline", [False, True])
def test_random_edit_sequences_match_the_full_checks(kw, newline):
    rng = random.Random(f"{kw}{newline}")
    memo = HubMemo()
    payload = hub(30)
    payload["learner_3"]["name"] = "Zoë 学生"
    for step in range(60):
        action = rng.choice(["edit", "edit", "add", "remove", "move", "bad", "unicode"])
        keys = list(payload)
        if action == "edit" and keys:
            payload[rng.choice(keys)]["score"] = rng.random()
        elif action == "add":
            payload[f"new_{step}"] = {"learner_id": f"new_{step}", "tags": ["t"] * rng.randrange(3)}
        elif action == "remove" and len(keys) > 1:
            del payload[rng.choice(keys)]
        elif action == "move" and keys:
            key = rng.choice(keys)
            payload[key] = payload.pop(key)
        elif action == "bad" and keys:
            payload[rng.choice(keys)]["big"] = 2**70  # an entry BSON cannot hold
        elif action == "unicode" and keys:
            payload[rng.choice(keys)]["note"] = "naïve ☃ \u2028 \"quoted\"\n,\n  \"fake\": 1"
        data = dumps(payload, **kw) + (b"\n" if newline else b"")
        fast, full = both(data, memo)
        assert summary(fast) == summary(full), (step, action)
        assert fast.fmt is not None and render(payload, fast.fmt) == data
    assert len(memo) == 1
    assert memo.hits == 59  # every version after the first came from the memo


def test_a_layout_the_memo_cannot_prove_falls_back_to_the_full_checks():
    memo = HubMemo()
    payload = hub(5)
    build_plan(read(dumps(payload, indent=2)), memo=memo)
    # One entry re-laid out by hand: valid JSON, same values, not json.dumps(indent=2).
    data = dumps(payload, indent=2).replace(b'"pace": "normal"', b'"pace":  "normal"', 1)
    hits = memo.hits
    fast, full = both(data, memo)
    assert memo.hits == hits
    assert summary(fast) == summary(full)
    assert fast.fmt is None  # no format reproduces these bytes: restore keeps them verbatim elsewhere
    # Another layout altogether, then back: always what the full checks say.
    for data in (dumps(payload, indent=4), dumps(payload), dumps(payload, indent=2) + b"\n",
                 dumps(payload, indent=2)):
        fast, full = both(data, memo)
        assert summary(fast) == summary(full)
        assert render(payload, fast.fmt) == data


def test_duplicate_keys_fall_back(monkeypatch):
    memo = HubMemo()
    build_plan(read(dumps({"a": 1, "b": 2}, indent=2)), memo=memo)
    data = b'{\n  "a": 1,\n  "b": 2,\n  "a": 3\n}'
    fast, full = both(data, memo)
    assert summary(fast) == summary(full)
    assert [e.key for e in fast.entries] == ["a", "b"] and fast.fmt is None


def test_redacted_entries_hash_their_redacted_value():
    memo = HubMemo()
    redact = frozenset({"token"})
    payload = {"a": {"token": "s3cret", "x": 1}, "b": {"token": "other", "x": 2}}
    build_plan(read(dumps(payload, indent=2)), redact, None, memo)
    payload["b"]["x"] = 3
    fast, full = both(dumps(payload, indent=2), memo, redact)
    assert summary(fast) == summary(full)
    assert all("s3cret" not in json.dumps(e.value) for e in fast.entries)


def test_forget_and_other_files_are_independent():
    memo = HubMemo()
    other = "structured_hubs/soft_identity.json"
    build_plan(read(dumps({"a": 1}, indent=2)), memo=memo)
    build_plan(read(dumps({"a": 2}, indent=2), other), memo=memo)
    assert len(memo) == 2
    memo.forget(HUB)
    assert len(memo) == 1
    plan = build_plan(read(dumps({"a": 1, "b": 5}, indent=2)), memo=memo)
    assert summary(plan) == summary(build_plan(read(dumps({"a": 1, "b": 5}, indent=2))))
