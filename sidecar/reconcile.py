"""Whole-dir and per-file reconciliation: files on disk vs. the mirror state.

``process_file`` is the per-path step shared by the one-shot ``sync`` and the
continuous daemon: read → parse/validate → diff → ops. It never raises for bad
input; problems come back as ``Problem`` records (a clear reason, never content).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from .classify import Kind, classify, episode_path, hub_type_of, is_ignored
from .config import Config
from .diff import EmptyHubRefused, MirrorState, Op, deletion_ops, diff_plan, pack_hash
from .model import FilePlan, HubMemo, build_plan, utcnow
from .parse import BadInput
from .source import DataDirMissing, SourceError, Skipped, read_file, walk


@dataclass(frozen=True, slots=True)
class Problem:
    path: str
    reason: str
    message: str
    kind: str

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.reason, "message": self.message, "kind": self.kind}


@dataclass
class SourceView:
    """What the files say, as hashes: the source side of a parity check.

    Hashes are kept as 32-byte digests (``pack_hash``): at 50k files a view of
    hex strings cost ~2.5 MB more, for the length of a ``/parity`` call.
    ``hashes=False`` (the daemon's reconcile, which only needs the problems and
    the paths present) records no hashes at all."""

    hubs: dict[str, dict[str, bytes]] = field(default_factory=dict)
    hub_bad_entries: dict[str, list[str]] = field(default_factory=dict)
    bad_hubs: set[str] = field(default_factory=set)
    episodes: dict[str, bytes] = field(default_factory=dict)
    # Only episodes whose file is not ``episode_path(run_id)`` (the usual name).
    episode_paths: dict[str, str] = field(default_factory=dict)
    bad_episodes: set[str] = field(default_factory=set)
    snapshot: tuple[str, bytes] | None = None
    snapshot_bad: bool = False
    files: dict[str, bytes] = field(default_factory=dict)
    bad_files: set[str] = field(default_factory=set)
    problems: list[Problem] = field(default_factory=list)
    present: set[str] = field(default_factory=set)
    fresh_volume: bool = False
    hashes: bool = True
    paths: bool = True  # record ``present`` (what deletion detection needs; parity does not)

    def saw(self, rel: str) -> None:
        if self.paths:
            self.present.add(rel)

    def add_plan(self, plan: FilePlan) -> None:
        if not self.hashes:
            return
        if plan.kind is Kind.HUB:
            self.hubs[plan.hub_type] = {e.key: pack_hash(e.hash) for e in plan.entries}
            if plan.entry_errors:
                self.hub_bad_entries[plan.hub_type] = list(plan.entry_errors)
        elif plan.kind is Kind.EPISODE:
            self.episodes[plan.doc_id] = pack_hash(plan.doc_hash)
            if plan.rel != episode_path(plan.doc_id):
                self.episode_paths[plan.doc_id] = plan.rel
        elif plan.kind is Kind.SNAPSHOT:
            self.snapshot = (plan.doc_id, pack_hash(plan.doc_hash))
        else:
            self.files[plan.rel] = pack_hash(plan.content_hash)

    def add_bad(self, rel: str) -> None:
        kind = classify(rel)
        if kind is Kind.HUB:
            self.bad_hubs.add(hub_type_of(rel))
        elif kind is Kind.EPISODE:
            self.bad_episodes.add(rel)
        elif kind is Kind.SNAPSHOT:
            self.snapshot_bad = True
        else:
            self.bad_files.add(rel)


class Reconciler:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.root = config.data_dir
        self.redact = frozenset(k.lower() for k in config.sidecar_redact_keys)
        self.memo = HubMemo()

    def _problem(self, rel: str, reason: str, message: str) -> Problem:
        return Problem(rel, reason, message, classify(rel).value)

    def process_file(
        self, rel: str, state: MirrorState, source: str, view: SourceView | None = None,
        now: datetime | None = None, read=None, view_only: bool = False,
    ) -> tuple[list[Op], list[Problem]]:
        """Ops that bring MongoDB in line with one file, and the problems seen."""
        now = now or utcnow()
        problems: list[Problem] = []
        try:
            read = read or read_file(self.root, rel)
        except SourceError as exc:
            if exc.reason == "vanished":
                return self.deleted(rel, state), []
            problems.append(self._problem(rel, exc.reason, exc.message))
            if view is not None:
                view.saw(rel)
                view.add_bad(rel)
            return [], problems
        if view is not None:
            view.saw(rel)
        try:
            prior = state.files.get(rel)
            known = prior.fmt if prior and not prior.deleted and prior.sha256 == read.sha256 else None
            plan = build_plan(read, self.redact, known, self.memo)
            ops = [] if view_only else diff_plan(plan, state, source, now)
        except BadInput as exc:
            problems.append(self._problem(rel, exc.reason, f"{rel}: {exc.message}"))
            if view is not None:
                view.add_bad(rel)
            return [], problems
        except EmptyHubRefused as exc:
            problems.append(self._problem(rel, "empty_hub_refused", str(exc)))
            if view is not None:
                view.add_bad(rel)
            return [], problems
        for key, exc in plan.entry_errors.items():
            problems.append(self._problem(rel, exc.reason, f"{rel}: entry {key!r}: {exc.message}"))
        if view is not None:
            view.add_plan(plan)
        return ops, problems

    def deleted(self, rel: str, state: MirrorState) -> list[Op]:
        self.memo.forget(rel)
        return deletion_ops(rel, state, self.config.sidecar_propagate_file_deletes, time.time_ns())

    def _walk(self, no_root: list[DataDirMissing]):
        """The data dir's files; a root that cannot be opened ends the walk, noted in ``no_root``."""
        try:
            yield from walk(self.root, self.config.ignore_globs)
        except DataDirMissing as exc:
            no_root.append(exc)

    def scan(
        self, state: MirrorState, source: str, progress: Callable[[str], None] | None = None,
        flush: Callable[[list[Op]], None] | None = None, chunk: int = 1000, view_only: bool = False,
        hashes: bool = True,
    ) -> tuple[list[Op], SourceView]:
        """Diff the whole data dir against ``state``.

        ``view_only``: only the source side (for a parity check), no documents built.
        With ``flush``, ops are handed over every ``chunk`` files instead of all
        at the end, so a reconcile of a large dir never holds every document of
        it in memory at once (the daemon's start-up on 50k files)."""
        view = SourceView(hashes=hashes, paths=not view_only)
        ops: list[Op] = []
        now = utcnow()
        skipped_dirs: list[str] = []
        no_root: list[DataDirMissing] = []
        for item in self._walk(no_root):
            if isinstance(item, Skipped):
                # Not followed, but not gone either: what it replaced stays mirrored.
                view.problems.append(self._problem(item.rel, item.reason, item.message))
                view.saw(item.rel)
                view.add_bad(item.rel)
                skipped_dirs.append(item.rel + "/")
                continue
            file_ops, problems = self.process_file(item, state, source, view, now, view_only=view_only)
            ops.extend(file_ops)
            view.problems.extend(problems)
            if progress:
                progress(item)
            if flush is not None and len(ops) >= chunk:
                flush(ops)
                ops = []
        if no_root:
            # No data dir to look at (missing, or a symlink that is not followed):
            # nothing can be told about any file, least of all that it is gone.
            view.problems.append(Problem(".", no_root[0].reason, no_root[0].message, "other"))
            return [], view
        if view_only:
            return [], view
        gone = [
            rel for rel, fs in state.files.items()
            if not fs.deleted and rel not in view.present
            and not rel.startswith(tuple(skipped_dirs))
            and not is_ignored(rel, self.config.ignore_globs)
        ]
        if gone and not view.present:
            # Nothing at all on disk while MongoDB holds files: a fresh volume, not
            # a mass deletion. Record nothing as deleted; restore fills the dir.
            view.fresh_volume = True
            view.problems.append(Problem(".", "fresh_volume", (
                f"data dir is empty while MongoDB holds {len(gone)} files; "
                "treated as a fresh volume, nothing marked deleted (run restore)"), "other"))
        else:
            for rel in gone:
                ops.extend(self.deleted(rel, state))
        return ops, view

