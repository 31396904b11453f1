"""Whole-dir and per-file reconciliation: files on disk vs. the mirror state.

``process_file`` is the per-path step shared by the one-shot ``sync`` and the
continuous daemon: read → parse/validate → diff → ops. It never raises for bad
input; problems come back as ``Problem`` records (a clear reason, never content).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from .classify import Kind, classify, episode_path, hub_type_of, is_ignored
from .config import Config
from .diff import deletion_ops, diff_plan, gone_keys
from .state import MirrorState, Op, pack_hash
from .divergence import (
    DIR_REPLACED,
    EMPTIED,
    MASS_REMOVAL,
    MONGO_IS_TRUTH,
    NOT_SEEN,
    NOTICED_AT_START,
    RECREATED,
    Divergence,
)
from .clock import Clock
from .lineage import Lineage
from .documents import hub_id
from .model import FilePlan, HubMemo, build_plan, utcnow
from .names import FILES, HUBS
from . import quick
from .parse import BadInput, loads
from .source import DataDirMissing, FileRead, Prober, SourceError, Skipped, exists, read_file, walk
from .localindex import LocalIndex, drop_tables

# Sources whose reads follow an event the daemon saw (a write it watched):
# only these can carry a removal as an edit of the lineage they continue.
WATCHED = frozenset({"watch", "shim"})


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
    # What is kept verbatim (BSON cannot hold it, or a layout the documents cannot
    # be rendered back into): path, key for hub entries, reason; never a value.
    stored_raw: list[dict[str, str]] = field(default_factory=list)
    present: set[str] = field(default_factory=set)
    fresh_volume: bool = False
    files_read: int = 0  # files whose content was read
    files_quick_checked: int = 0  # files the quick check found unchanged, not read (sidecar/quick.py)
    bytes_read: int = 0  # of the data dir's files, by this scan
    hashes: bool = True
    paths: bool = True  # record ``present`` (what deletion detection needs; parity does not)

    def release(self) -> None:
        """Drop the view's tables of the local index (paths seen, hashes)."""
        drop_tables(self.present, self.episodes, self.files)
        self.present, self.episodes, self.files = set(), {}, {}

    def saw(self, rel: str) -> None:
        if self.paths:
            self.present.add(rel)

    def add_plan(self, plan: FilePlan) -> None:
        if not self.hashes:
            return
        self.stored_raw.extend(plan.raw_items())
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


def _refresh(book: quick.Book, read: FileRead, plan: FilePlan, ops: list[Op]) -> list[Op]:
    """The bookkeeping op that refreshes a file's quick-check record, when the read
    found it out of date and no manifest write carries the new one."""
    if not book.after_read(read, plan, ops) or any(
            op.coll == FILES and op.action in ("insert", "update") for op in ops):
        return []
    return [Op(FILES, "stat", plan.rel, plan.version, plan.stat, rel=plan.rel)]


def _hub_keys_on_disk(read: FileRead) -> list[str]:
    value = loads(read.data)
    if not isinstance(value, dict):
        raise BadInput("not_object", "a hub file must be a JSON object")
    return list(value)


class Reconciler:
    """``index``: the local index (sidecar/localindex.py) the per-file memory of a
    scan goes to (lineage, the paths seen); None: dicts and sets (tests, small jobs).
    ``wants_resolved(rel)``: whether a file seen present is worth reporting in
    ``resolved`` (the daemon: only paths it holds a divergence for, not 500k)."""

    def __init__(self, config: Config, index: LocalIndex | None = None,
                 wants_resolved: Callable[[str], bool] | None = None) -> None:
        self.config = config
        self.root = config.data_dir
        self.index = index
        self.wants_resolved = wants_resolved or (lambda rel: True)
        self.redact = frozenset(k.lower() for k in config.sidecar_redact_keys)
        self.memo = HubMemo()
        self.lineage = Lineage(index)
        self.clock = Clock()
        self.max_removals = config.sidecar_max_removals
        self.cfg = quick.fingerprint(self.redact)  # what a quick-check record is only valid under
        # What the last calls found, drained by the caller (Mirror, sync):
        self.held: list[Divergence] = []  # removals not mirrored
        self.resolved: list[tuple[str, set[str] | None]] = []  # (path, keys present again | None: whole file)
        self.vanished: list[str] = []  # watched files gone: the caller decides (settle, guards)
        self.own_writes: dict[str, str] = {}  # rel -> sha256 of bytes the sidecar wrote itself (heal)

    def drain(self) -> tuple[list[Divergence], list[tuple[str, set[str] | None]], list[str]]:
        held, resolved, vanished = self.held, self.resolved, self.vanished
        self.held, self.resolved, self.vanished = [], [], []
        return held, resolved, vanished

    def _problem(self, rel: str, reason: str, message: str) -> Problem:
        return Problem(rel, reason, message, classify(rel).value)

    def process_file(
        self, rel: str, state: MirrorState, source: str, view: SourceView | None = None,
        now: datetime | None = None, read=None, view_only: bool = False, book: quick.Book | None = None,
    ) -> tuple[list[Op], list[Problem]]:
        """Ops that bring MongoDB in line with one file, and the problems seen.
        ``book``: a scan's quick-check records; the file's record is refreshed by a
        bookkeeping op when the read found it out of date."""
        now = now or utcnow()
        problems: list[Problem] = []
        token = self.lineage.token(rel)
        try:
            read = read or read_file(self.root, rel)
            if view is not None:
                view.files_read += 1
                view.bytes_read += read.size
            if book is not None and not view_only:
                book.verdict(rel, read, state)  # what the quick check would have said (drift)
        except DataDirMissing as exc:
            # The data dir itself is gone or not followed: that is never a deletion.
            problems.append(self._problem(rel, exc.reason, exc.message))
            return [], problems
        except SourceError as exc:
            if exc.reason == "vanished":
                if not view_only:
                    self.file_gone(rel, state, source)
                return [], []
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
            # The version is taken after the read: later reads get larger ones.
            plan = build_plan(read, self.redact, known, self.memo, version=self.clock.tick())
            plan.stat = quick.record(plan, read, self.cfg)
            remove = frozenset() if view_only else self._hub_removals(plan, read, state, source)
            ops = [] if view_only else diff_plan(plan, state, source, now, allow_empty_hub=True,
                                                 remove=remove)
            if book is not None and not view_only:
                ops.extend(_refresh(book, read, plan, ops))
        except BadInput as exc:
            problems.append(self._problem(rel, exc.reason, f"{rel}: {exc.message}"))
            if view is not None:
                view.add_bad(rel)
            return [], problems
        for key, exc in plan.entry_errors.items():
            problems.append(self._problem(rel, exc.reason, f"{rel}: entry {key!r}: {exc.message}"))
        if view is not None:
            view.add_plan(plan)
        if not view_only:
            self._observe(plan, read, token)
        return ops, problems

    # --- the deletion model (DESIGN §5; sidecar/lineage.py, sidecar/divergence.py) ---------
    def _why_not_lineage(self, read: FileRead, source: str) -> str | None:
        """None when ``read`` continues the lineage this daemon watched; else the reason."""
        if source not in WATCHED:
            return NOTICED_AT_START
        if self.lineage.same(read):
            return None
        seen_dir = self.lineage.dir_ino(read.rel)
        if seen_dir is not None and read.dir_ino and seen_dir != read.dir_ino:
            return DIR_REPLACED
        return RECREATED

    def _hub_removals(self, plan: FilePlan, read: FileRead, state: MirrorState, source: str) -> frozenset[str]:
        """Which of the keys MongoDB holds and the file lacks may be removed; the
        rest are held. An edit may only remove keys this daemon saw in the same
        inode's previous version, at most ``max_removals`` at once, and never all."""
        if plan.kind is not Kind.HUB:
            return frozenset()
        gone = gone_keys(plan, state)
        if not gone:
            self.resolved.append((plan.rel, None))
            return frozenset()
        reason = self._why_not_lineage(read, source)
        if reason is None and self.config.memory_store_backend == "mongo":
            # MongoDB is the truth: a key gone from the file (a backup copied over it
            # in place keeps the inode and looks like an edit) is put back, never
            # removed; an operator removes entries through MongoDB (or accept).
            reason = MONGO_IS_TRUTH
        removable: set[str] = set()
        if reason is None:
            seen = self.lineage.hub_keys(plan.rel)
            removable = {k for k in gone if k in seen}
            if len(removable) < len(gone):
                reason = NOT_SEEN  # the others were already missing from what we saw
            if removable and not plan.entries and not plan.entry_errors:
                reason, removable = EMPTIED, set()
            elif len(removable) > self.max_removals:
                reason, removable = MASS_REMOVAL, set()
        held = [k for k in gone if k not in removable]
        if held:
            self.held.append(Divergence(plan.rel, Kind.HUB.value, reason or RECREATED, keys=held))
        else:
            self.resolved.append((plan.rel, None))
        return frozenset(removable)

    def _observe(self, plan: FilePlan, read: FileRead, token: int) -> None:
        keys = None
        if plan.kind is Kind.HUB:
            keys = frozenset(e.key for e in plan.entries) | frozenset(plan.entry_errors)
        own = self.own_writes.get(plan.rel)
        keep = own is not None and own == read.sha256
        if own is not None and not keep:
            self.own_writes.pop(plan.rel, None)  # the writer has written since
        self.lineage.observe(read, keys, keep_keys=keep, token=token)
        if plan.kind is not Kind.HUB:
            self.present_again(plan.rel)

    def present_again(self, rel: str) -> None:
        """``rel`` is on disk: not a missing file any more."""
        if self.wants_resolved(rel):
            self.resolved.append((rel, None))

    def file_gone(self, rel: str, state: MirrorState, source: str) -> None:
        """A file MongoDB holds is not on disk. Held unless the daemon watched it go."""
        self.memo.forget(rel)
        prev = state.files.get(rel)
        if prev is None or prev.deleted:
            self.lineage.forget(rel)
            return
        if source in WATCHED and self.lineage.knows(rel):
            self.vanished.append(rel)  # the caller settles it and applies the guards
            return
        self.lineage.forget(rel)
        self.held.append(Divergence(rel, prev.kind, NOTICED_AT_START if source not in WATCHED else RECREATED,
                                    missing_file=True))

    def accept_ops(self, div: Divergence, state: MirrorState) -> list[Op] | None:
        """The ops that apply an accepted divergence, checked against the disk now
        (None when it no longer holds: the file or the keys came back)."""
        if div.missing_file:
            if exists(self.root, div.path):
                return None
            return self.removal_ops(div.path, state)
        try:
            on_disk = set(_hub_keys_on_disk(read_file(self.root, div.path)))
        except SourceError as exc:
            if exc.reason != "vanished":
                return None
            on_disk = set()
        except BadInput:
            return None
        base = state.hubs.get(hub_type_of(div.path), {})
        version = self.clock.tick()
        return [Op(HUBS, "delete", hub_id(hub_type_of(div.path), key), version, before=base[key].hash,
                   rel=div.path) for key in div.keys if key in base and key not in on_disk]

    def removal_ops(self, rel: str, state: MirrorState) -> list[Op]:
        """Mirror a file's removal (it passed the deletion model, or was accepted)."""
        self.memo.forget(rel)
        self.lineage.forget(rel)
        return deletion_ops(rel, state, self.config.sidecar_propagate_file_deletes, self.clock.tick())

    def _walk(self, no_root: list[DataDirMissing]):
        """The data dir's files; a root that cannot be opened ends the walk, noted in ``no_root``."""
        try:
            # a large directory's listing goes to the local index, sorted there (sidecar/source.py)
            spill = (lambda: self.index.map("listing")) if self.index is not None else None
            yield from walk(self.root, self.config.ignore_globs, spill=spill)
        except DataDirMissing as exc:
            no_root.append(exc)

    def scan(
        self, state: MirrorState, source: str, progress: Callable[[str], None] | None = None,
        flush: Callable[[list[Op]], None] | None = None, chunk: int = 1000, view_only: bool = False,
        hashes: bool = True, book: quick.Book | None = None,
    ) -> tuple[list[Op], SourceView]:
        """Diff the whole data dir against ``state``.

        ``view_only``: only the source side (for a parity check), no documents built.
        With ``flush``, ops are handed over every ``chunk`` files instead of all
        at the end, so a reconcile of a large dir never holds every document of
        it in memory at once (the daemon's start-up on 50k files).
        ``book``: the quick-check records (``quick.Book.collect`` of the rows
        ``state`` was built from): a file they say is unchanged is not read."""
        self.clock.observe(state.max_version)
        view = SourceView(hashes=hashes, paths=not view_only)
        if self.index is not None:  # the per-file part of the view out of the heap too
            if not view_only:
                view.present = self.index.set("present")
            if hashes:
                view.episodes, view.files = self.index.map("view_episodes"), self.index.map("view_files")
        skipped_dirs: list[str] = []
        no_root: list[DataDirMissing] = []
        try:
            with Prober(self.root) as prober:
                ops = self._scan_files(state, source, view, skipped_dirs, no_root, progress, flush, chunk,
                                       view_only, None if view_only else book, prober)
        except BaseException:
            view.release()
            raise
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
            # Nothing at all on disk while MongoDB holds files: a fresh volume.
            view.fresh_volume = True
            view.problems.append(Problem(".", "fresh_volume", (
                f"data dir is empty while MongoDB holds {len(gone)} files; "
                "treated as a fresh volume, nothing marked deleted (run restore)"), "other"))
        # A file missing at a reconcile is never a deletion: nobody saw it go.
        for rel in gone:
            self.file_gone(rel, state, "reconcile")
        return ops, view

    def _scan_files(self, state: MirrorState, source: str, view: SourceView, skipped_dirs: list[str],
                    no_root: list[DataDirMissing], progress, flush, chunk: int, view_only: bool,
                    book: quick.Book | None, prober: Prober) -> list[Op]:
        ops: list[Op] = []
        now = utcnow()
        for item in self._walk(no_root):
            if isinstance(item, Skipped):
                # Not followed, but not gone either: what it replaced stays mirrored.
                view.problems.append(self._problem(item.rel, item.reason, item.message))
                view.saw(item.rel)
                view.add_bad(item.rel)
                skipped_dirs.append(item.rel + "/")
                continue
            if book is not None and self._quick(item, state, view, book, prober):
                file_ops, problems = [], []
            else:
                file_ops, problems = self.process_file(item, state, source, view, now, view_only=view_only,
                                                       book=book)
            ops.extend(file_ops)
            view.problems.extend(problems)
            if progress:
                progress(item)
            if flush is not None and len(ops) >= chunk:
                flush(ops)
                ops = []
        return ops

    def _quick(self, rel: str, state: MirrorState, view: SourceView, book: quick.Book, prober: Prober) -> bool:
        """True when the quick check found ``rel`` unchanged: not read. Its lineage is
        observed all the same (inode, directory, generation: ``Prober``), so a watched
        removal of it later is mirrored as if it had been read. Hub files are always
        read (their lineage keeps the key set)."""
        if classify(rel) is Kind.HUB or not book.trusted(rel):
            return False  # the read says what the record would have said
        token = self.lineage.token(rel)
        try:
            st = prober.probe(rel)
        except SourceError:
            return False  # gone, a symlink, unreadable: the read says what it is
        if not book.skip(book.verdict(rel, st, state)):
            return False
        view.files_quick_checked += 1
        view.saw(rel)
        self.lineage.observe(st, token=token)
        self.present_again(rel)
        if view.hashes:
            _view_from_state(rel, state, view, book)
        return True


def _view_from_state(rel: str, state: MirrorState, view: SourceView, book: quick.Book) -> None:
    """The source side of a file not read: what its record says it holds, which is
    what MongoDB holds (the quick check compared the documents' hash)."""
    fs = state.files[rel]
    view.stored_raw.extend(book.stored_raw(rel))
    if fs.kind == Kind.EPISODE.value:
        view.episodes[fs.doc_id] = pack_hash(state.episodes[fs.doc_id][0])
    elif fs.kind == Kind.SNAPSHOT.value:
        view.snapshot = (fs.doc_id, pack_hash(state.snapshots[fs.doc_id][0]))
    else:
        view.files[rel] = pack_hash(fs.content_sha)
