"""The migration's status page (live) and its final report (a standalone HTML file).

``status_app(source)`` is an aiohttp sub-application; ``source()`` returns the
orchestrator's current state (plain or awaitable), a dict of this shape::

    {"plan": str, "phase": str, "mode": str | None, "journal_depth": int, "events": [str],
     "phases": [{"name", "state": pending|running|done|failed|skipped, "started", "finished"}],
     "progress": {"entities", "bytes", "rate", "ranges_done", "ranges_total"}}

Routes (relative to wherever the lead mounts the sub-application):

* ``GET /``             the live page: plan, current phase, progress bar, rate, ETA, journal
                         depth, mode, events, and the phase timeline as inline SVG. It polls
                         ``state.json`` and ``timeline.svg`` once a second and updates in place.
* ``GET /state.json``   the state exactly as ``source()`` returned it (503 with the reason if
                         ``source()`` raised).
* ``GET /timeline.svg`` the timeline alone, drawn at the moment of the request.
* ``GET /fleet.html``   the proxy panels alone: per instance requests/s, 5xx/s and p99
                         latency over time, the repair journals' depth over time and the share
                         of requests N2's endpoints served (the DNS hand-off's progress), from a
                         ``ProxyWatch`` scraping the proxies' own metrics (none: a note says so).

With a ``ProxyWatch``, ``state.json`` carries its snapshot under ``"fleet"``.

``render_report(state)`` returns a standalone HTML report: the same SVG timeline, a summary
and a per-phase table, for writing to a file when a migration ends.

What this module must never do: change the orchestrator's state (it only reads ``source()``),
load anything from outside the process (no CDN, no external fonts or scripts: a migration
runs on hosts that may have no route out), or let a malformed state crash the server --
missing or ill-typed fields are drawn as blanks.
"""

from __future__ import annotations

import html
import inspect
import json
import logging
import math
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from nxnw.proxy_watch import ProxyWatch

log = logging.getLogger(__name__)

STATE_COLOURS = {
    "pending": "#c7ccd6",
    "running": "#2d7ff9",
    "done": "#2fa36b",
    "failed": "#e5484d",
    "skipped": "#9aa3b2",
}
POLL_INTERVAL_SECONDS = 1.0

Source = Callable[[], Any]


# --- reading the state defensively ------------------------------------------------------

def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _phases(state: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for item in state.get("phases") or []:
        if not isinstance(item, dict):
            continue
        phase_state = item.get("state") if item.get("state") in STATE_COLOURS else "pending"
        out.append({"name": str(item.get("name", "?")), "state": phase_state,
                    "started": _num(item.get("started")), "finished": _num(item.get("finished"))})
    return out


def _progress(state: dict[str, Any]) -> dict[str, float]:
    raw = state.get("progress") if isinstance(state.get("progress"), dict) else {}
    return {k: _num(raw.get(k)) or 0.0 for k in ("entities", "bytes", "rate", "ranges_done", "ranges_total")}


# --- formatting (mirrored by the page's script: fmtBytes, fmtDuration) ------------------------

def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _fmt_time(epoch: float | None) -> str:
    if epoch is None:
        return "–"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _fmt_tick(seconds: float) -> str:
    if seconds < 60:
        return f"+{seconds:g} s"
    if seconds < 3600:
        return f"+{seconds / 60:g} min"
    return f"+{seconds / 3600:g} h"


# --- the timeline -------------------------------------------------------------------------

#: A generous width of one character of the 12 px label font, so no phase name is cut off.
LABEL_CHAR_PX = 7.6
TICK_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 28800, 86400)


def timeline_svg(phases: list[dict[str, Any]], now: float, width: int = 960) -> str:
    """One row per phase, one ``rect.bar`` per row spanning started → finished (or ``now``).

    A phase that never started keeps its row with a zero-width bar, so the bar count always
    equals the phase count. Colours are fill attributes, not CSS, so the SVG stays correct
    when copied out of the page.
    """
    longest = max((len(p["name"]) for p in phases), default=0)
    label_w, right_w, row_h, top, bottom = max(96, 20 + int(longest * LABEL_CHAR_PX)), 110, 26, 28, 8
    plot_w = width - label_w - right_w
    starts = [p["started"] for p in phases if p["started"] is not None]
    ends = [p["finished"] if p["finished"] is not None else now for p in phases if p["started"] is not None]
    t0 = min(starts) if starts else now
    span = max((max(ends) if ends else now) - t0, 1.0)
    step = next((s for s in TICK_STEPS if span / s <= 8), TICK_STEPS[-1])
    height = top + row_h * max(len(phases), 1) + bottom

    def x(t: float) -> float:
        return label_w + (t - t0) / span * plot_w

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="timeline" viewBox="0 0 {width} {height}" '
             f'width="100%" role="img" aria-label="phase timeline" font-family="system-ui, sans-serif" font-size="12">']
    tick = 0.0
    while tick <= span + 1e-9:
        tx = x(t0 + tick)
        parts.append(f'<line x1="{tx:.1f}" y1="{top - 6}" x2="{tx:.1f}" y2="{height - bottom}" stroke="#e4e7ec"/>'
                     f'<text x="{tx:.1f}" y="{top - 10}" text-anchor="middle" fill="#667085">{_fmt_tick(tick)}</text>')
        tick += step
    for i, p in enumerate(phases):
        y = top + i * row_h
        colour = STATE_COLOURS[p["state"]]
        name = html.escape(p["name"])
        parts.append(f'<rect class="track" x="{label_w}" y="{y + 4}" width="{plot_w}" height="{row_h - 8}" '
                     f'rx="3" fill="#f2f4f7"/>')
        weight = ' font-weight="600"' if p["state"] == "running" else ""
        parts.append(f'<text x="{label_w - 10}" y="{y + row_h / 2 + 4}" text-anchor="end" '
                     f'fill="{"#101828" if p["started"] is not None else "#98a2b3"}"{weight}>{name}</text>')
        if p["started"] is None:
            bx, bw, duration = float(label_w), 0.0, None
        else:
            end = p["finished"] if p["finished"] is not None else now
            bx, bw, duration = x(p["started"]), max((end - p["started"]) / span * plot_w, 3.0), end - p["started"]
        title = f'{name}: {p["state"]}' + ("" if duration is None else f", {_fmt_duration(duration)}")
        parts.append(f'<rect class="bar" data-phase="{name}" data-state="{p["state"]}" x="{bx:.1f}" y="{y + 4}" '
                     f'width="{bw:.1f}" height="{row_h - 8}" rx="3" fill="{colour}"><title>{title}</title></rect>')
        note = p["state"] if duration is None else f'{_fmt_duration(duration)}' + (" …" if p["state"] == "running" else "")
        if p["state"] == "failed":
            note = f"failed · {note}"
        parts.append(f'<text x="{min(bx + bw + 6, width - right_w + 6):.1f}" y="{y + row_h / 2 + 4}" '
                     f'fill="#475467">{html.escape(note)}</text>')
    if any(p["state"] == "running" for p in phases):
        parts.append(f'<line class="now" x1="{x(now):.1f}" y1="{top - 6}" x2="{x(now):.1f}" y2="{height - bottom}" '
                     f'stroke="#2d7ff9" stroke-dasharray="3 3"/>')
    parts.append("</svg>")
    return "".join(parts)


# --- the proxy fleet -----------------------------------------------------------------------

SIDE_COLOURS = {"n1": "#7a5af8", "n2": "#2fa36b"}


def _series(raw: Any, column: int) -> list[tuple[float, float]]:
    """(t, value) pairs of one column of a ``[[t, v1, v2…], …]`` series; bad rows skipped."""
    out = []
    for row in raw if isinstance(raw, list) else []:
        if isinstance(row, list) and len(row) > column:
            t, v = _num(row[0]), _num(row[column])
            if t is not None and v is not None:
                out.append((t, v))
    return out


def chart_svg(lines: list[tuple[str, str, list[tuple[float, float]]]], *, width: int, height: int,
              y_max: float | None = None, unit: str = "", label: str = "") -> str:
    """A small line chart: one ``polyline.series`` per (name, colour, points), newest at the right."""
    points = [pt for _, _, pts in lines for pt in pts]
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {width} {height}" width="{width}" '
             f'height="{height}" role="img" aria-label="{html.escape(label)}" font-family="system-ui, sans-serif" '
             f'font-size="10"><rect width="{width}" height="{height}" rx="4" fill="#f8f9fb"/>']
    if points:
        t0, t1 = min(t for t, _ in points), max(t for t, _ in points)
        peak = max(v for _, v in points)
        top = y_max if y_max is not None else (peak * 1.1 if peak > 0 else 1.0)
        span = max(t1 - t0, 1e-9)
        for name, colour, pts in lines:
            if not pts:
                continue
            coords = " ".join(f"{2 + (t - t0) / span * (width - 4):.1f},{height - 3 - min(v / top, 1.0) * (height - 14):.1f}"
                              for t, v in pts)
            parts.append(f'<polyline class="series" data-name="{html.escape(name)}" points="{coords}" fill="none" '
                         f'stroke="{colour}" stroke-width="1.5"/>')
        scale = f"{y_max:g}{unit}" if y_max is not None else f"max {peak:,.3g}{unit}"
        parts.append(f'<text x="{width - 4}" y="10" text-anchor="end" fill="#667085">{scale}</text>')
    else:
        parts.append(f'<text x="6" y="{height / 2 + 3}" fill="#98a2b3">no data yet</text>')
    parts.append("</svg>")
    return "".join(parts)


def _latest(pts: list[tuple[float, float]], fmt: str) -> str:
    return fmt.format(pts[-1][1]) if pts else "–"


def fleet_html(fleet: Any) -> str:
    """The proxy panels: a row per instance with its three series, then journal depth and N2's share."""
    if not isinstance(fleet, dict) or not fleet.get("instances"):
        return '<p class="note" id="fleet-empty">no proxy endpoints in the plan: nothing to watch</p>'
    rows = []
    for inst in fleet["instances"]:
        if not isinstance(inst, dict):
            continue
        side = "n2" if inst.get("side") == "n2" else "n1"
        colour = SIDE_COLOURS[side]
        series = inst.get("series")
        rps, eps, p99 = _series(series, 1), _series(series, 2), _series(series, 3)
        state = "up" if inst.get("up") else "down"
        title = html.escape(str(inst.get("error") or state))
        rows.append(
            f'<tr class="instance" data-url="{html.escape(str(inst.get("url", "?")))}" data-side="{side}" data-up="{state}">'
            f'<td><span class="dot" style="background:{"#2fa36b" if state == "up" else "#e5484d"}" title="{title}"></span>'
            f'{html.escape(str(inst.get("url", "?")))} <span class="badge">{side.upper()}</span></td>'
            f'<td class="num">{_latest(rps, "{:,.0f}")}</td><td>{chart_svg([("requests/s", colour, rps)], width=150, height=34, label="requests per second")}</td>'
            f'<td class="num">{_latest(eps, "{:,.2f}")}</td><td>{chart_svg([("5xx/s", "#e5484d", eps)], width=150, height=34, label="5xx per second")}</td>'
            f'<td class="num">{_latest(p99, "{:,.1f} ms")}</td><td>{chart_svg([("p99", "#f79009", p99)], width=150, height=34, unit=" ms", label="p99 latency")}</td></tr>')
    journal = fleet.get("journal")
    share = _series(fleet.get("n2_share"), 1)
    share_pct = [(t, v * 100) for t, v in share]
    return (
        '<table class="fleet"><tr><th>proxy</th><th>req/s</th><th></th><th>5xx/s</th><th></th><th>p99</th><th></th></tr>'
        + "".join(rows) + "</table>"
        '<div class="charts">'
        f'<div class="chart-box" id="journal-chart"><div class="k">repair journal depth (keys) · toward N2 '
        f'{_latest(_series(journal, 2), "{:,.0f}")} · toward N1 {_latest(_series(journal, 1), "{:,.0f}")}</div>'
        + chart_svg([("toward N2", SIDE_COLOURS["n2"], _series(journal, 2)), ("toward N1", SIDE_COLOURS["n1"], _series(journal, 1))],
                    width=480, height=90, label="repair journal depth")
        + f'</div><div class="chart-box" id="share-chart"><div class="k">requests served by N2\'s endpoints '
        f'(DNS hand-off) · {_latest(share_pct, "{:.0f} %")}</div>'
        + chart_svg([("N2 share", SIDE_COLOURS["n2"], share_pct)], width=480, height=90, y_max=100.0, unit=" %",
                    label="share of requests on N2")
        + "</div></div>")


# --- shared look ----------------------------------------------------------------------

CSS = """
:root { --ink:#101828; --muted:#667085; --line:#e4e7ec; --bg:#f8f9fb; --card:#fff; --accent:#2d7ff9; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color:var(--ink); background:var(--bg); }
header { display:flex; align-items:center; gap:16px; padding:14px 28px; background:#0f1a2e; color:#fff; }
header h1 { font-size:16px; margin:0; font-weight:600; letter-spacing:.2px; }
header .plan { color:#b8c4d9; }
header .spacer { flex:1; }
main { max-width:1080px; margin:0 auto; padding:24px 28px 40px; }
.badge { display:inline-block; padding:2px 10px; border-radius:999px; font-size:12px; font-weight:600; background:#e8f0fe; color:#1a56db; }
header .badge { background:#24324d; color:#dbe6ff; }
.hero { display:flex; align-items:baseline; gap:18px; margin-bottom:18px; }
.hero .label { color:var(--muted); text-transform:uppercase; font-size:12px; letter-spacing:.8px; }
.phase { font-size:40px; font-weight:700; letter-spacing:-.5px; }
.phase[data-state=failed] { color:#e5484d; } .phase[data-state=done] { color:#2fa36b; }
.cards { display:grid; grid-template-columns:repeat(auto-fit, minmax(150px, 1fr)); gap:12px; margin-bottom:18px; }
.card { background:var(--card); border:1px solid var(--line); border-radius:10px; padding:12px 14px; }
.card .k { color:var(--muted); font-size:12px; } .card .v { font-size:20px; font-weight:600; margin-top:2px; font-variant-numeric:tabular-nums; }
.panel { background:var(--card); border:1px solid var(--line); border-radius:10px; padding:14px 16px; margin-bottom:18px; }
.panel h2 { font-size:13px; margin:0 0 10px; color:var(--muted); text-transform:uppercase; letter-spacing:.8px; }
.bar-outer { height:14px; background:#eef1f5; border-radius:7px; overflow:hidden; }
.bar-inner { height:100%; width:0; background:linear-gradient(90deg, #2d7ff9, #5aa2ff); transition:width .6s ease; }
.progress-text { display:flex; justify-content:space-between; margin-top:6px; color:var(--muted); font-variant-numeric:tabular-nums; }
.bar[data-state=running] { animation:pulse 1.4s ease-in-out infinite; }
@keyframes pulse { 50% { opacity:.55; } }
ul.events { margin:0; padding:0; list-style:none; font-family:ui-monospace, SFMono-Regular, Menlo, monospace; font-size:12px; max-height:220px; overflow:auto; }
ul.events li { padding:1px 0; border-bottom:1px dashed #f0f2f5; }
table { border-collapse:collapse; width:100%; font-variant-numeric:tabular-nums; }
th, td { text-align:left; padding:6px 10px; border-bottom:1px solid var(--line); }
th { color:var(--muted); font-weight:500; font-size:12px; }
.dot { display:inline-block; width:9px; height:9px; border-radius:50%; margin-right:6px; vertical-align:0; }
footer { color:var(--muted); font-size:12px; }
table.fleet td { padding:3px 8px; vertical-align:middle; } td.num { text-align:right; white-space:nowrap; }
.charts { display:flex; flex-wrap:wrap; gap:16px; margin-top:12px; } .chart-box .k { color:var(--muted); font-size:12px; margin-bottom:4px; }
svg.chart { display:block; } p.note { color:var(--muted); margin:0; }
footer.lost { color:#e5484d; }
"""


def _state_dot(state: str) -> str:
    return f'<span class="dot" style="background:{STATE_COLOURS.get(state, "#ccc")}"></span>{html.escape(state)}'


# --- the live page --------------------------------------------------------------------

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>nxnw · migration status</title><style>__CSS__</style></head>
<body>
<header><h1>nxnw migration</h1><span class="plan" id="plan"></span><span class="spacer"></span>
<span>mode <span class="badge" id="mode">–</span></span></header>
<main>
<section class="hero"><span class="label">current phase</span><span class="phase" id="phase">–</span>
<span class="badge" id="phase-state"></span><span id="phase-elapsed" style="color:var(--muted)"></span></section>
<section class="panel"><h2>progress</h2>
<div class="bar-outer"><div class="bar-inner" id="progress-bar"></div></div>
<div class="progress-text"><span id="ranges">–</span><span id="eta">ETA –</span></div></section>
<section class="cards">
<div class="card"><div class="k">entities copied</div><div class="v" id="entities">–</div></div>
<div class="card"><div class="k">bytes copied</div><div class="v" id="bytes">–</div></div>
<div class="card"><div class="k">rate (entities/s)</div><div class="v" id="rate">–</div></div>
<div class="card"><div class="k">repair journal depth</div><div class="v" id="journal">–</div></div>
</section>
<section class="panel"><h2>timeline</h2><div id="timeline">__TIMELINE__</div></section>
<section class="panel"><h2>proxies</h2><div id="fleet">__FLEET__</div></section>
<section class="panel"><h2>events</h2><ul class="events" id="events"></ul></section>
<footer id="status">connecting…</footer>
</main>
<script type="application/json" id="initial-state">__STATE__</script>
<script>
"use strict";
const STATE_URL = __STATE_URL__, TIMELINE_URL = __TIMELINE_URL__, FLEET_URL = __FLEET_URL__, POLL_MS = __POLL_MS__;
let clockOffset = 0;  // server clock minus ours, from the Date header: phases carry server epochs
const $ = (id) => document.getElementById(id);
const num = (v) => (typeof v === "number" && isFinite(v)) ? v : 0;
function fmtBytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"]; let i = 0;
  while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return i === 0 ? n.toFixed(0) + " B" : n.toFixed(1) + " " + units[i];
}
function fmtDuration(s) {
  if (s == null || !isFinite(s)) return "–";
  s = Math.max(0, s);
  if (s < 60) return s.toFixed(1) + " s";
  const m = Math.floor(Math.round(s) / 60), sec = Math.round(s) % 60;
  if (m < 60) return m + " min " + String(sec).padStart(2, "0") + " s";
  return Math.floor(m / 60) + " h " + String(m % 60).padStart(2, "0") + " min";
}
function render(state) {
  const now = Date.now() / 1000 + clockOffset;
  const phases = Array.isArray(state.phases) ? state.phases : [];
  const current = phases.find((p) => p && p.name === state.phase) || {};
  $("plan").textContent = state.plan ? "plan " + state.plan : "";
  $("mode").textContent = state.mode || "–";
  $("phase").textContent = state.phase || "–";
  $("phase").dataset.state = current.state || "";
  $("phase-state").textContent = current.state || "";
  const started = typeof current.started === "number" ? current.started : null;
  const finished = typeof current.finished === "number" ? current.finished : null;
  $("phase-elapsed").textContent = started == null ? "" :
    (finished == null ? "for " : "took ") + fmtDuration((finished ?? now) - started);
  const p = state.progress || {};
  const done = num(p.ranges_done), total = num(p.ranges_total);
  const frac = total > 0 ? Math.min(1, done / total) : 0;
  $("progress-bar").style.width = (frac * 100).toFixed(1) + "%";
  $("ranges").textContent = total > 0 ? `${done} / ${total} ranges · ${(frac * 100).toFixed(1)} %` : "no ranges yet";
  let eta = "ETA –";
  if (total > 0 && done >= total) eta = "all ranges done";
  else if (done > 0 && started != null && finished == null) eta = "ETA " + fmtDuration((now - started) * (total - done) / done);
  $("eta").textContent = eta;
  $("entities").textContent = num(p.entities).toLocaleString("en");
  $("bytes").textContent = fmtBytes(num(p.bytes));
  $("rate").textContent = Math.round(num(p.rate)).toLocaleString("en");
  $("journal").textContent = num(state.journal_depth).toLocaleString("en");
  const events = Array.isArray(state.events) ? state.events.slice(-15).reverse() : [];
  $("events").replaceChildren(...events.map((e) => { const li = document.createElement("li"); li.textContent = String(e); return li; }));
}
function setStatus(text, lost) { const f = $("status"); f.textContent = text; f.className = lost ? "lost" : ""; }
async function tick() {
  try {
    const [s, t, f] = await Promise.all([fetch(STATE_URL, {cache: "no-store"}), fetch(TIMELINE_URL, {cache: "no-store"}),
                                         fetch(FLEET_URL, {cache: "no-store"})]);
    const date = Date.parse(s.headers.get("Date") || "");
    if (!isNaN(date)) clockOffset = (date - Date.now()) / 1000;
    const state = await s.json();
    if (!s.ok) throw new Error(state.reason || ("HTTP " + s.status));
    render(state);
    if (t.ok) $("timeline").innerHTML = await t.text();
    if (f.ok) $("fleet").innerHTML = await f.text();
    setStatus("live · updated " + new Date().toLocaleTimeString(), false);
  } catch (err) {
    setStatus("orchestrator unreachable: " + err.message + " · retrying", true);
  } finally {
    setTimeout(tick, POLL_MS);
  }
}
try { render(JSON.parse($("initial-state").textContent)); } catch (err) { setStatus("bad initial state: " + err.message, true); }
tick();
</script>
</body></html>
"""


def _script_json(value: Any) -> str:
    """JSON safe to place inside a <script> element (no "</script>" can close it early)."""
    return json.dumps(value, default=str).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_page(state: dict[str, Any], state_url: str, timeline_url: str, fleet_url: str,
                now: float | None = None) -> str:
    now = time.time() if now is None else now
    return _fill(PAGE, {
        "__CSS__": CSS,
        "__TIMELINE__": timeline_svg(_phases(state), now),
        "__FLEET__": fleet_html(state.get("fleet")),
        "__STATE_URL__": _script_json(state_url),
        "__TIMELINE_URL__": _script_json(timeline_url),
        "__FLEET_URL__": _script_json(fleet_url),
        "__POLL_MS__": str(int(POLL_INTERVAL_SECONDS * 1000)),
        "__STATE__": _script_json(state),
    })


def _fill(template: str, fields: dict[str, str]) -> str:
    """Substitute every ``__NAME__`` in one pass, so no value is ever re-scanned as a template."""
    return re.sub(r"__[A-Z_]+__", lambda m: fields.get(m.group(0), m.group(0)), template)


async def _read(source: Source, watch: ProxyWatch | None = None) -> dict[str, Any]:
    state = source()
    if inspect.isawaitable(state):
        state = await state
    if not isinstance(state, dict):
        raise TypeError(f"the state source returned {type(state).__name__}, not a dict: {state!r:.200}")
    return state if watch is None else {**state, "fleet": watch.snapshot()}


def status_app(source: Source, watch: ProxyWatch | None = None) -> web.Application:
    """The status sub-application; mount it with ``app.add_subapp("/status", status_app(...))``.

    ``watch`` (optional) is started and stopped with the application.
    """

    async def page(request: web.Request) -> web.Response:
        try:
            state = await _read(source, watch)
        except Exception:  # the page still loads; its script reports the reason on each poll
            log.exception("status page: the state source failed")
            state = {}
        router = request.app.router
        body = render_page(state, str(router["state"].url_for()), str(router["timeline"].url_for()),
                           str(router["fleet"].url_for()))
        return web.Response(text=body, content_type="text/html", headers={"Cache-Control": "no-store"})

    async def state_json(request: web.Request) -> web.Response:
        try:
            state = await _read(source, watch)
        except Exception as exc:
            log.exception("status page: the state source failed")
            return web.json_response({"error": "state unavailable", "reason": f"{type(exc).__name__}: {exc}"},
                                     status=503, headers={"Cache-Control": "no-store"})
        return web.json_response(state, dumps=lambda v: json.dumps(v, default=str),
                                 headers={"Cache-Control": "no-store"})

    async def timeline(request: web.Request) -> web.Response:
        try:
            state = await _read(source)
        except Exception as exc:
            log.exception("status page: the state source failed")
            return web.json_response({"error": "state unavailable", "reason": f"{type(exc).__name__}: {exc}"},
                                     status=503)
        return web.Response(text=timeline_svg(_phases(state), time.time()), content_type="image/svg+xml",
                            headers={"Cache-Control": "no-store"})

    async def fleet(request: web.Request) -> web.Response:
        return web.Response(text=fleet_html(None if watch is None else watch.snapshot()), content_type="text/html",
                            headers={"Cache-Control": "no-store"})

    app = web.Application()
    app.router.add_get("/", page, name="page")
    app.router.add_get("/state.json", state_json, name="state")
    app.router.add_get("/timeline.svg", timeline, name="timeline")
    app.router.add_get("/fleet.html", fleet, name="fleet")
    if watch is not None:
        async def start_watch(_: web.Application) -> None:
            await watch.start()

        async def stop_watch(_: web.Application) -> None:
            await watch.stop()

        app.on_startup.append(start_watch)
        app.on_cleanup.append(stop_watch)
    return app


# --- the final report -------------------------------------------------------------------

REPORT = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>nxnw · migration report · __PLAN__</title>
<style>__CSS__</style></head>
<body>
<header><h1>nxnw migration report</h1><span class="plan">plan __PLAN__</span><span class="spacer"></span>
<span>generated __GENERATED__</span></header>
<main>
<section class="hero"><span class="label">outcome</span><span class="phase" data-state="__OUTCOME_STATE__">__OUTCOME__</span>
<span class="badge">mode __MODE__</span></section>
<section class="cards">
<div class="card"><div class="k">total time</div><div class="v">__TOTAL__</div></div>
<div class="card"><div class="k">entities copied</div><div class="v">__ENTITIES__</div></div>
<div class="card"><div class="k">bytes copied</div><div class="v">__BYTES__</div></div>
<div class="card"><div class="k">last rate (entities/s)</div><div class="v">__RATE__</div></div>
<div class="card"><div class="k">ranges</div><div class="v">__RANGES__</div></div>
<div class="card"><div class="k">repair journal depth</div><div class="v">__JOURNAL__</div></div>
</section>
<section class="panel"><h2>timeline</h2>__TIMELINE__</section>
<section class="panel"><h2>proxies</h2>__FLEET__</section>
<section class="panel"><h2>phases</h2><table>
<tr><th>phase</th><th>state</th><th>started</th><th>finished</th><th>duration</th></tr>
__ROWS__
</table></section>
<section class="panel"><h2>events</h2><ul class="events">__EVENTS__</ul></section>
</main></body></html>
"""


def render_report(state: dict[str, Any], now: float | None = None) -> str:
    """A standalone HTML report of a migration (inline CSS and SVG, no script)."""
    now = time.time() if now is None else now
    phases = _phases(state)
    progress = _progress(state)
    rows = []
    for p in phases:
        end = p["finished"] if p["finished"] is not None else (now if p["state"] == "running" else None)
        duration = None if p["started"] is None or end is None else end - p["started"]
        rows.append(f'<tr class="phase-row" data-phase="{html.escape(p["name"])}"><td>{html.escape(p["name"])}</td>'
                    f'<td>{_state_dot(p["state"])}</td><td>{_fmt_time(p["started"])}</td>'
                    f'<td>{_fmt_time(p["finished"])}</td><td>{_fmt_duration(duration)}</td></tr>')
    starts = [p["started"] for p in phases if p["started"] is not None]
    ends = [p["finished"] for p in phases if p["finished"] is not None]
    total = (max(ends) - min(starts)) if starts and ends else None
    failed = next((p for p in phases if p["state"] == "failed"), None)
    rolled_back = any(p["name"] == "rollback" and p["state"] == "done" for p in phases)
    if failed is not None:
        outcome, outcome_state = f"failed in {failed['name']}", "failed"
    elif rolled_back:
        outcome, outcome_state = "rolled back", "failed"
    elif any(p["name"] == "complete" and p["state"] == "done" for p in phases):
        outcome, outcome_state = "complete", "done"
    else:
        outcome, outcome_state = f"stopped in {state.get('phase') or '–'}", ""
    events = [e for e in state.get("events") or []][-500:]
    ranges = f'{progress["ranges_done"]:.0f} / {progress["ranges_total"]:.0f}'
    fields = {
        "__CSS__": CSS,
        "__PLAN__": html.escape(str(state.get("plan") or "–")),
        "__GENERATED__": _fmt_time(now),
        "__OUTCOME__": html.escape(outcome),
        "__OUTCOME_STATE__": outcome_state,
        "__MODE__": html.escape(str(state.get("mode") or "–")),
        "__TOTAL__": _fmt_duration(total),
        "__ENTITIES__": f'{progress["entities"]:,.0f}',
        "__BYTES__": _fmt_bytes(progress["bytes"]),
        "__RATE__": f'{progress["rate"]:,.0f}',
        "__RANGES__": ranges,
        "__JOURNAL__": f'{_num(state.get("journal_depth")) or 0:,.0f}',
        "__TIMELINE__": timeline_svg(phases, now),
        "__FLEET__": fleet_html(state.get("fleet")),
        "__ROWS__": "\n".join(rows),
        "__EVENTS__": "".join(f"<li>{html.escape(str(e))}</li>" for e in events),
    }
    return _fill(REPORT, fields)
