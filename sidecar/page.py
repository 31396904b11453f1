"""The status page (``GET /``): one self-contained HTML document from the status overview.

A pure function of the dict ``server.overview`` builds (the same one ``GET
/status`` answers and ``memory-sidecar status`` prints): no I/O, no external
assets (inline CSS, no script), works offline. It refreshes itself every
``REFRESH_S`` seconds. Every value that goes into the HTML passes through
``html.escape``: paths and keys come from the data dir, i.e. from whoever can
write a file there. Read-only: only GET links, no form, no button.
"""

from __future__ import annotations

from html import escape
from typing import Any

REFRESH_S = 5
EVENTS_SHOWN = 20
KIND_ORDER = ("hubs", "snapshot", "episodes", "files")

_CSS = """
:root { color-scheme: light; --ok: #1a7f37; --bad: #cf222e; --warn: #9a6700; --mute: #57606a;
        --line: #d0d7de; --bg: #f6f8fa; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0; color: #1f2328; }
header { padding: 14px 24px; border-bottom: 1px solid var(--line); display: flex; gap: 16px;
         align-items: center; flex-wrap: wrap; }
header h1 { font-size: 18px; margin: 0; }
main { padding: 8px 24px 24px; max-width: 1400px; }
h2 { font-size: 15px; margin: 22px 0 8px; }
.badge { display: inline-block; padding: 3px 10px; border-radius: 12px; font-weight: 600; color: #fff; }
.badge.ok { background: var(--ok); } .badge.bad { background: var(--bad); } .badge.warn { background: var(--warn); }
.mute { color: var(--mute); }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(210px, 1fr)); gap: 10px; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: 10px 12px; background: var(--bg); }
.card .k { color: var(--mute); font-size: 12px; text-transform: uppercase; letter-spacing: .04em; }
.card .v { font-size: 20px; font-weight: 600; }
.card .v.t { font-size: 15px; }
.card .s { font-size: 12px; color: var(--mute); overflow-wrap: anywhere; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: var(--bg); font-weight: 600; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
td.path, code { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 12px;
                overflow-wrap: anywhere; }
.yes { color: var(--ok); font-weight: 600; } .no { color: var(--bad); font-weight: 600; }
.note { font-size: 13px; color: var(--mute); margin: 4px 0 8px; }
.box { border-left: 3px solid var(--warn); background: #fff8c5; padding: 6px 10px; margin: 6px 0; font-size: 13px; }
footer { padding: 12px 24px; border-top: 1px solid var(--line); font-size: 12px; color: var(--mute); }
"""


def e(value: Any) -> str:
    """Text for HTML (element content and quoted attributes)."""
    return escape("" if value is None else str(value), quote=True)


def _yes_no(flag: Any, yes: str = "yes", no: str = "no") -> str:
    if flag is None:
        return '<span class="mute">–</span>'
    return f'<span class="yes">{e(yes)}</span>' if flag else f'<span class="no">{e(no)}</span>'


def _num(value: Any) -> str:
    return '<span class="mute">–</span>' if value is None else e(value)


def _card(key: str, value: str, sub: str = "", ident: str = "", small: bool = False) -> str:
    ident = f' id="{e(ident)}"' if ident else ""
    cls = "v t" if small else "v"
    return (f'<div class="card"{ident}><div class="k">{e(key)}</div><div class="{cls}">{value}</div>'
            f'<div class="s">{sub}</div></div>')


def _table(ident: str, head: list[str], rows: list[list[str]], numeric: set[int] = frozenset(),
           paths: set[int] = frozenset()) -> str:
    """``rows`` hold already-escaped HTML cells."""
    ths = "".join(f'<th{" class=n" if i in numeric else ""}>{e(h)}</th>' for i, h in enumerate(head))
    body = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            cls = "n" if i in numeric else "path" if i in paths else ""
            cells.append(f'<td class="{cls}">{cell}</td>' if cls else f"<td>{cell}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f'<table id="{e(ident)}"><thead><tr>{ths}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _header(o: dict[str, Any]) -> str:
    if o.get("ready"):
        badge = '<span class="badge ok" id="ready">READY</span>'
    else:
        badge = '<span class="badge bad" id="ready">NOT READY</span>'
    reason = f'<span id="reason">{e(o.get("reason"))}</span>' if o.get("reason") else ""
    return (f"<header><h1>Mentorix memory sidecar</h1>{badge}{reason}"
            f'<span class="mute">phase <b id="phase">{e(o.get("phase"))}</b> · watcher {e(o.get("watcher"))}'
            f' · v{e(o.get("version"))}</span></header>')


def _cards(o: dict[str, Any]) -> str:
    mongo = o.get("mongo") or {}
    connected = mongo.get("connected")
    mongo_sub = f'database <code>{e(mongo.get("db_name"))}</code>'
    if mongo.get("error"):
        mongo_sub += f"<br>{e(mongo['error'])}"
    mode = o.get("mode") or {}
    pending = o.get("pending") or {}
    mirrored = o.get("mirrored") or {}
    div = o.get("divergences") or {}
    problems = o.get("problems") or []
    cards = [
        _card("MongoDB", _yes_no(connected, "connected", "unreachable"), mongo_sub, "mongo"),
        _card("Mode", e(mode.get("active_mode")),
              f'MEMORY_STORE_BACKEND={e(mode.get("configured_backend"))}'
              f'{" · dual write" if mode.get("dual_write_enabled") else ""}'),
        _card("Pending", f'<span id="pending">{_num(pending.get("paths"))}</span>',
              f'lag {e(pending.get("lag_seconds"))} s · write in flight {e(pending.get("write_inflight_seconds"))} s',
              "pending-card"),
        _card("Mirrored files", f'<span id="mirrored-files">{_num(mirrored.get("files"))}</span>',
              f'{e(mirrored.get("hub_entries"))} hub entries in {e(mirrored.get("hubs"))} hubs · '
              f'{e(mirrored.get("episodes"))} episodes · {e(mirrored.get("snapshots"))} snapshots'),
        _card("Divergences held", f'<span id="divergence-count">{_num(div.get("count"))}</span>',
              f'{e(div.get("files", 0))} files, {e(div.get("entries", 0))} hub entries'),
        _card("Current problems", f'<span id="problem-count">{len(problems)}</span>',
              "files that cannot be mirrored now"),
        _card("Last write", e(_short_time(o.get("last_sync_at"))),
              f'last reconcile {e(_short_time(o.get("last_reconcile_at")))}', small=True),
    ]
    return '<div class="cards">' + "".join(cards) + "</div>"


def _short_time(iso: Any) -> str:
    if not iso:
        return "–"
    text = str(iso)
    return text[:19].replace("T", " ") + (" UTC" if text.endswith(("+00:00", "Z")) else "")


def _parity(o: dict[str, Any]) -> str:
    parity = o.get("parity")
    out = ["<h2>Parity (files vs. MongoDB)</h2>"]
    if not parity or "kinds" not in parity:
        out.append('<p class="note" id="parity-note">Not computed since the daemon started. The full comparison '
                   'reads every file and every document, so this page never runs it on its own: open '
                   '<a href="/parity">/parity</a> (or run <code>memory-sidecar parity</code>) and reload.</p>')
        if parity and parity.get("last_error"):
            err = parity["last_error"]
            out.append(f'<p class="box">Last attempt at {e(_short_time(err.get("at")))} failed: '
                       f'{e(err.get("error"))}</p>')
        return "".join(out)
    verdict = _yes_no(parity.get("all_match"), "all match", "mismatch")
    out.append(f'<p class="note" id="parity-note">{verdict} — from the last <a href="/parity">GET /parity</a>, '
               f'at {e(_short_time(parity.get("computed_at")))} ({e(parity.get("age_seconds"))} s ago). '
               "The page shows that cached result and never runs the full scan itself; open /parity to "
               "compare again. <i>pending</i>: its file is queued; <i>mismatch</i>: not explained by "
               "pending work.</p>")
    kinds = parity.get("kinds") or {}
    rows = []
    for name in [k for k in KIND_ORDER if k in kinds] + [k for k in kinds if k not in KIND_ORDER]:
        k = kinds[name]
        sample = "; ".join(f"{what}: " + ", ".join(k.get(what + "_keys") or [])
                           for what in ("missing", "extra", "different") if k.get(what + "_keys"))
        rows.append([e(name), _yes_no(k.get("match")), _num(k.get("files")), _num(k.get("bad_files")),
                     _num(k.get("entries")), _num(k.get("documents")), _num(k.get("missing")),
                     _num(k.get("extra")), _num(k.get("different")), _num(k.get("pending")),
                     _num(k.get("mismatch")), e(sample)])
    out.append(_table("parity", ["kind", "match", "files", "bad files", "entries", "documents", "missing",
                                 "extra", "different", "pending", "mismatch", "sample keys"],
                      rows, numeric=set(range(2, 11)), paths={11}))
    return "".join(out)


def _divergences(o: dict[str, Any]) -> str:
    div = o.get("divergences") or {}
    items = div.get("items") or []
    out = ["<h2>Held divergences</h2>"]
    if not items:
        out.append('<p class="note" id="divergences-none">None held.</p>')
        return "".join(out)
    out.append('<p class="box" id="accept-howto">MongoDB has data these files no longer have, and the sidecar '
               "did not see the removal happen, so it keeps MongoDB's copy. If the removal is intended, accept "
               "it (the removed documents go to <code>memory_tombstones</code>): "
               "<code>memory-sidecar divergences accept PATH</code> (or without PATH: all), or "
               "<code>POST /divergences/accept</code> with <code>Authorization: Bearer $SIDECAR_TOKEN</code> "
               'and the body <code>{"paths": [...]}</code>. Otherwise restore the file '
               "(<code>memory-sidecar restore</code>). This page changes nothing.</p>")
    rows = [[e(d.get("path")), e(d.get("what")), _num(d.get("count")), e(d.get("reason")),
             e(_short_time(d.get("first_seen"))), e(", ".join((d.get("keys") or [])[:10]))] for d in items]
    out.append(_table("divergences", ["path", "what", "count", "reason", "first seen", "keys (sample)"], rows,
                      numeric={2}, paths={0, 5}))
    if div.get("count", 0) > len(items):
        out.append(f'<p class="note">… and {e(div["count"] - len(items))} more (see /divergences).</p>')
    return "".join(out)


def _problems(o: dict[str, Any]) -> str:
    problems = o.get("problems") or []
    out = ["<h2>Current problems</h2>"]
    if not problems:
        out.append('<p class="note" id="problems-none">None: every file seen can be mirrored.</p>')
    else:
        out.append('<p class="note">Files that cannot be mirrored now (what MongoDB has for them is kept); '
                   "each clears when its file becomes good again.</p>")
        rows = [[e(p.get("path")), e(p.get("reason")), e(p.get("message")), _num(p.get("count")),
                 e(_short_time(p.get("last_seen")))] for p in problems]
        out.append(_table("problems", ["path", "reason", "message", "seen", "last seen"], rows, numeric={3},
                          paths={0}))
    errors = o.get("errors_by_kind") or {}
    if errors:
        rows = [[e(kind), e(n)] for kind, n in sorted(errors.items())]
        out.append("<h2>Errors since start, by kind</h2>")
        out.append(_table("errors", ["kind", "count"], rows, numeric={1}))
    return "".join(out)


def _events(o: dict[str, Any]) -> str:
    events = (o.get("events") or [])[:EVENTS_SHOWN]
    out = ["<h2>Last events</h2>",
           '<p class="note">What this daemon recorded, newest first (the full trail is the '
           "<code>memory_events</code> collection).</p>"]
    if not events:
        out.append('<p class="note" id="events-none">None since start.</p>')
        return "".join(out)
    rows = []
    for ev in events:
        detail = " · ".join(x for x in (f"reason {ev['reason']}" if ev.get("reason") else "",
                                        f"count {ev['count']}" if ev.get("count") is not None else "") if x)
        rows.append([e(_short_time(ev.get("created_at"))), e(ev.get("event_type")), e(ev.get("path")),
                     e(ev.get("source")), e(detail)])
    out.append(_table("events", ["time", "event", "path", "source", "detail"], rows, paths={2}))
    return "".join(out)


def _shim(o: dict[str, Any]) -> str:
    shim = o.get("shim") or {}
    out = ["<h2>Shim</h2>"]
    state = "listening" if shim.get("socket") else "not available (the watcher alone mirrors writes)"
    out.append(f'<p class="note">Socket: {e(state)}.</p>')
    outcomes = shim.get("outcomes") or {}
    server = shim.get("server") or {}
    if outcomes:
        out.append('<p class="note">Frames by outcome (<code>sidecar_shim_events_total</code>):</p>')
        out.append(_table("shim-outcomes", sorted(outcomes), [[e(outcomes[k]) for k in sorted(outcomes)]],
                          numeric=set(range(len(outcomes)))))
    else:
        out.append('<p class="note" id="shim-none">No frames yet.</p>')
    clients = shim.get("clients") or {}
    if clients.get("processes"):
        out.append('<p class="note">Sync-mode breakers, as last reported by the writing processes '
                   f'(<code>sidecar_shim_breakers_open</code>): {e(clients.get("breakers_open"))} of '
                   f'{e(clients.get("processes"))} open; {e(clients.get("unconfirmed"))} writes went on '
                   'unconfirmed (they are mirrored all the same).</p>')
        rows = [[e(c.get("pid")), e(c.get("breaker")), e(c.get("unconfirmed")), e(c.get("sync_failed")),
                 e(c.get("seen_seconds_ago"))] for c in clients.get("by_pid") or []]
        out.append(_table("shim-clients", ["pid", "breaker", "unconfirmed", "sync failed", "seen (s ago)"], rows,
                          numeric={0, 2, 3, 4}))
    if server:
        out.append('<p class="note">Socket server counters:</p>')
        out.append(_table("shim", list(server), [[e(v) for v in server.values()]],
                          numeric=set(range(len(server)))))
    writes = o.get("writes") or {}
    if writes:
        out.append("<h2>Documents written since start</h2>")
        out.append(_table("writes", ["collection", "documents"], [[e(c), e(n)] for c, n in sorted(writes.items())],
                          numeric={1}))
    return "".join(out)


def render(o: dict[str, Any]) -> str:
    """The page for one overview dict (``server.overview``)."""
    title = f'{"ready" if o.get("ready") else "NOT READY"} · memory sidecar'
    restore = o.get("restore") or {}
    extra = ""
    if restore.get("progress"):
        extra = f'<p class="box">Restoring missing files from MongoDB: {e(restore["progress"].get("done"))} written.</p>'
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="refresh" content="{REFRESH_S}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{e(title)}</title><style>{_CSS}</style></head><body>"
        + _header(o)
        + "<main>"
        + extra
        + _cards(o)
        + _parity(o)
        + _divergences(o)
        + _problems(o)
        + _events(o)
        + _shim(o)
        + "</main>"
        f'<footer>Generated {e(_short_time(o.get("generated_at")))}, refreshes every {REFRESH_S} s. '
        f'Data dir <code>{e(o.get("data_dir"))}</code>. JSON: <a href="/status">/status</a> · '
        '<a href="/memory/status">/memory/status</a> · <a href="/parity">/parity</a> (runs the full comparison) · '
        '<a href="/divergences">/divergences</a> · <a href="/metrics">/metrics</a> · '
        '<a href="/readyz">/readyz</a>. Read-only: nothing on this page changes state.</footer>'
        "</body></html>\n"
    )


# --- the same overview for a terminal (`memory-sidecar status`) -------------------------------------
def _t(value: Any) -> str:
    """Text for a terminal: control characters (an escape sequence in a file name) shown, not sent."""
    text = "–" if value is None else str(value)
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def _text_table(head: list[str], rows: list[list[Any]], indent: str = "  ") -> list[str]:
    cells = [[_t(h) for h in head]] + [[_t(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(head))]
    return [indent + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]


def render_text(o: dict[str, Any], events: int = 10) -> str:
    """A plain-text view of one overview dict: the page's sections as tables."""
    mongo = o.get("mongo") or {}
    mode = o.get("mode") or {}
    pending = o.get("pending") or {}
    mirrored = o.get("mirrored") or {}
    ready = "yes" if o.get("ready") else f"NO: {_t(o.get('reason'))}"
    conn = "connected" if mongo.get("connected") else "UNREACHABLE"
    if mongo.get("error"):
        conn += f": {_t(mongo['error'])}"
    lines = [
        f"ready        {ready}",
        f"phase        {_t(o.get('phase'))} (watcher {_t(o.get('watcher'))}, version {_t(o.get('version'))})",
        f"mode         {_t(mode.get('active_mode'))} (MEMORY_STORE_BACKEND={_t(mode.get('configured_backend'))}"
        f"{', dual write' if mode.get('dual_write_enabled') else ''})",
        f"mongodb      {conn}; database {_t(mongo.get('db_name'))}",
        f"pending      {_t(pending.get('paths'))} paths, lag {_t(pending.get('lag_seconds'))} s, "
        f"write in flight {_t(pending.get('write_inflight_seconds'))} s",
    ]
    if mirrored:
        lines.append(f"mirrored     {_t(mirrored.get('files'))} files, {_t(mirrored.get('hub_entries'))} hub entries "
                     f"in {_t(mirrored.get('hubs'))} hubs, {_t(mirrored.get('episodes'))} episodes, "
                     f"{_t(mirrored.get('snapshots'))} snapshots")
    lines.append(f"last write   {_t(_short_time(o.get('last_sync_at')))}; "
                 f"last reconcile {_t(_short_time(o.get('last_reconcile_at')))}")
    restore = o.get("restore") or {}
    if restore.get("progress"):
        lines.append(f"restoring    {_t(restore['progress'].get('done'))} files written so far")

    parity = o.get("parity")
    lines.append("")
    if not parity or "kinds" not in parity:
        lines.append("parity       not computed since the daemon started (the full scan runs on GET /parity "
                     "or `memory-sidecar parity`)")
        if parity and parity.get("last_error"):
            lines.append(f"             last attempt failed: {_t(parity['last_error'].get('error'))}")
    else:
        verdict = "all match" if parity.get("all_match") else "MISMATCH"
        lines.append(f"parity       {verdict} (the last GET /parity, {_t(_short_time(parity.get('computed_at')))}, "
                     f"{_t(parity.get('age_seconds'))} s ago)")
        kinds = parity.get("kinds") or {}
        names = [k for k in KIND_ORDER if k in kinds] + [k for k in kinds if k not in KIND_ORDER]
        cols = ["files", "bad_files", "entries", "documents", "missing", "extra", "different", "pending",
                "mismatch"]
        rows = [[n, "yes" if kinds[n].get("match") else "NO", *(kinds[n].get(c) for c in cols)] for n in names]
        lines += _text_table(["kind", "match", *cols], rows)

    div = o.get("divergences") or {}
    items = div.get("items") or []
    lines.append("")
    lines.append(f"divergences  {_t(div.get('count', 0))} held ({_t(div.get('files', 0))} files, "
                 f"{_t(div.get('entries', 0))} hub entries)")
    if items:
        lines += _text_table(["path", "what", "count", "reason", "keys (sample)"],
                             [[d.get("path"), d.get("what"), d.get("count"), d.get("reason"),
                               ", ".join((d.get("keys") or [])[:5])] for d in items])
        lines.append("  accept: memory-sidecar divergences accept PATH (or POST /divergences/accept with the token)")

    problems = o.get("problems") or []
    lines.append("")
    lines.append(f"problems     {len(problems)} now")
    if problems:
        lines += _text_table(["path", "reason", "message"],
                             [[p.get("path"), p.get("reason"), p.get("message")] for p in problems])
    errors = o.get("errors_by_kind") or {}
    if errors:
        lines.append("errors       " + ", ".join(f"{_t(k)} {_t(v)}" for k, v in sorted(errors.items())))

    evs = (o.get("events") or [])[:events]
    lines.append("")
    lines.append(f"events       last {len(evs)} (newest first)")
    if evs:
        lines += _text_table(["time", "event", "path", "source", "detail"],
                             [[_short_time(ev.get("created_at")), ev.get("event_type"), ev.get("path"),
                               ev.get("source"),
                               " ".join(x for x in (ev.get("reason") or "",
                                                    f"count {ev['count']}" if ev.get("count") is not None
                                                    else "") if x)]
                              for ev in evs])

    shim = o.get("shim") or {}
    lines.append("")
    outcomes = shim.get("outcomes") or {}
    server = shim.get("server") or {}
    lines.append("shim         " + ("socket listening" if shim.get("socket") else "no socket"))
    if outcomes:
        lines.append("  outcomes   " + ", ".join(f"{_t(k)} {_t(v)}" for k, v in sorted(outcomes.items())))
    clients = shim.get("clients") or {}
    if clients.get("processes"):
        lines.append(f"  breakers   {_t(clients.get('breakers_open'))} of {_t(clients.get('processes'))} open, "
                     f"{_t(clients.get('unconfirmed'))} writes unconfirmed")
    if server:
        lines.append("  server     " + ", ".join(f"{_t(k)} {_t(v)}" for k, v in server.items()))
    return "\n".join(lines) + "\n"
