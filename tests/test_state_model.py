"""One home for the state model (issue 12, acceptance 2).

``sidecar/state.py`` owns the mirror state and its two ways of changing (built
from MongoDB's rows, updated with acknowledged ops); ``Store`` reads rows and
returns write results and never touches a state; one error translation in
``Store``; every collection and index name spelled once, in ``sidecar/names.py``.
"""

from __future__ import annotations

import ast
import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

from sidecar import names, store as store_mod
from sidecar.classify import Kind
from sidecar.diff import deletion_ops, diff_plan
from sidecar.model import build_plan
from sidecar.reconcile import Reconciler
from sidecar.source import FileRead, sha256_hex
from sidecar.state import (
    EpisodeRow,
    FileRow,
    HubRow,
    MirrorState,
    SnapshotRow,
    build_state,
    state_rows,
)
from sidecar.store import ApplyResult
from sidecar.sync import run_sync

NOW = datetime(2026, 2, 21, 5, 29, 24, tzinfo=timezone.utc)
SIDECAR = Path(__file__).resolve().parent.parent / "sidecar"


def plan_of(rel: str, value, version: int = 1):
    data = json.dumps(value, indent=2).encode()
    return build_plan(FileRead(rel, data, sha256_hex(data), len(data), version))


def applied_state() -> MirrorState:
    """A state with every kind of entry, built the way the daemon builds it."""
    state = MirrorState()
    files = {
        "structured_hubs/soft_identity_hub.json": {"a": 1, "b": [2]},
        "episodes/skeleton_r1.json": {"run_id": "r1", "x": 1},
        "snapshot.json": {"timestamp": "2026-02-21T05:29:24", "n": 1},
        "runs/run_1.json": {"k": "v"},
        "runs/run_2.json": {"k": "w"},
    }
    for version, (rel, value) in enumerate(files.items(), 1):
        state.apply(ApplyResult(applied=diff_plan(plan_of(rel, value, version), state, "t", NOW)))
    state.apply(ApplyResult(applied=deletion_ops("runs/run_2.json", state, propagate=False, version=9)))
    return state


def test_a_state_learns_only_the_acknowledged_ops():
    state = MirrorState()
    ops = [diff_plan(plan_of(f"runs/run_{i}.json", {"i": i}), state, "t", NOW)[0] for i in range(3)]
    state.apply(ApplyResult(applied=[ops[0]], stale=[ops[1]], failed=[(ops[2], "code 2: refused")]))
    assert set(state.files) == {"runs/run_0.json"}
    assert state.files["runs/run_0.json"].sha256 == ops[0].after


def test_the_rows_of_a_state_build_the_same_state():
    state = applied_state()
    assert state.hubs and state.episodes and state.snapshots and state.files["runs/run_2.json"].deleted
    rows = list(state_rows(state))
    assert {type(row) for row in rows} == {HubRow, EpisodeRow, SnapshotRow, FileRow}
    again = build_state(rows)
    assert (again.hubs, again.episodes, again.snapshots, again.files) == (
        state.hubs, state.episodes, state.snapshots, state.files)
    assert again.max_version == max(fs.version for fs in state.files.values())
    # the shared objects survive the trip: one dict for the one format, one str per kind
    assert len(again.files) == 5 and len({id(fs.fmt) for fs in again.files.values()}) == 1
    assert again.files["runs/run_1.json"].kind is again.files["runs/run_2.json"].kind is Kind.RUN.value


@pytest.mark.integration
def test_store_reads_typed_rows_and_writes_without_touching_the_state(legacy_dir, config, store):
    (legacy_dir / "runs").mkdir(exist_ok=True)
    (legacy_dir / "runs" / "run_1.json").write_text(json.dumps({"k": 1}, indent=2))
    report, code = run_sync(config, store)
    assert code == 0 and report["writes"]["total"] > 0
    rows = list(store.iter_state())
    assert {type(row) for row in rows} <= {HubRow, EpisodeRow, SnapshotRow, FileRow}
    assert any(type(row) is FileRow and row.rel == "runs/run_1.json" for row in rows)
    state = build_state(rows)

    (legacy_dir / "runs" / "run_1.json").write_text(json.dumps({"k": 2}, indent=2))
    ops, _ = Reconciler(config).scan(state, "test")
    assert [(op.coll, op.id) for op in ops] == [(names.FILES, "runs/run_1.json")]
    before = list(state_rows(state))
    result = store.apply(ops)
    assert result.applied == ops and not result.stale and not result.failed
    assert list(state_rows(state)) == before  # the store keeps no state and changes none
    state.apply(result)
    assert state.files == build_state(store.iter_state()).files


@pytest.mark.integration
def test_a_manifest_whose_format_cannot_be_shared_is_skipped_as_foreign(store, db):
    db[store.files_name].insert_one({"_id": "runs/odd_format.json", "kind": "run", "encoding": "json",
                                     "content": {}, "deleted_at": None, "format": {"indent": [2]}})
    state = build_state(store.iter_state())
    assert "runs/odd_format.json" not in state.files
    assert [d["_id"] for d in store.foreign_skipped] == [repr("runs/odd_format.json")]


def _source(module: str) -> ast.Module:
    return ast.parse((SIDECAR / module).read_text(), module)


def test_store_has_one_error_translation_and_builds_no_state():
    handlers = [node for module in ("store.py", "tombstones.py", "indexes.py")
                for node in ast.walk(_source(module))
                if isinstance(node, ast.ExceptHandler) and node.type is not None
                and "PyMongoError" in ast.unparse(node.type)]
    assert len(handlers) == 1  # Store._mongo_errors
    for name in ("MirrorState", "HubState", "FileState", "apply_to_state", "build_state"):
        assert not hasattr(store_mod, name), name
    assert list(__import__("inspect").signature(store_mod.Store.apply).parameters) == ["self", "ops"]


def test_collection_and_index_names_are_spelled_only_in_names_py():
    # FILES ("files") is a logical name and an ordinary word (report keys): not searched.
    spelled = {value for key, value in vars(names).items()
               if key.isupper() and isinstance(value, str) and key != "FILES"}
    assert len(spelled) == 20
    found = []
    for path in sorted(SIDECAR.glob("*.py")):
        if path.name == "names.py":
            continue
        tree = ast.parse(path.read_text(), path.name)
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                      and node.body and isinstance(node.body[0], ast.Expr)
                      and isinstance(node.body[0].value, ast.Constant)}
        found += [f"{path.name}:{node.lineno}: {node.value}" for node in ast.walk(tree)
                  if isinstance(node, ast.Constant) and node.value in spelled and id(node) not in docstrings]
    assert found == []
