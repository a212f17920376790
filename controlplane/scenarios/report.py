"""The game day report: one self-contained HTML page (inline CSS, JS and SVG; nothing fetched),
rendered from a run's record alone, so a recorded run renders the same page as a live one.

Side by side: the talk's timeline and this run's (each fault, finding, root cause named, plan
applied, finding resolved), the plans, delivery completeness and p99 latency over time as an
SVG chart with the faults marked, and the verdict against the targets. The record itself is
embedded as JSON, so the page is also the run's data."""

from __future__ import annotations

import html
import json

from controlplane.scenarios.runner import analyse

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px;color:#1d2330;background:#fafbfc}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}
.sub{color:#5b6475}.cols{display:grid;grid-template-columns:1fr 2fr;gap:24px}
table{border-collapse:collapse;width:100%;background:#fff}td,th{border-bottom:1px solid #e3e6eb;padding:4px 8px;
text-align:left;vertical-align:top}th{background:#f0f2f5;font-weight:600}
.ok{color:#137333;font-weight:600}.bad{color:#b3261e;font-weight:600}.na{color:#5b6475}
tr.fault td{background:#fff4e5}tr.finding td{background:#fdecea}tr.resolved td,tr.applied td{background:#e6f4ea}
tr.named td,tr.root_cause td{background:#e8f0fe}tr.undo td{background:#f3f3f3}
svg{background:#fff;border:1px solid #e3e6eb}.legend span{margin-right:14px}
#tip{position:fixed;pointer-events:none;background:#1d2330;color:#fff;padding:3px 6px;border-radius:3px;
font-size:12px;display:none}
"""

JS = """
(function(){
  var tip=document.getElementById('tip');
  document.querySelectorAll('svg [data-tip]').forEach(function(el){
    el.addEventListener('mousemove',function(ev){tip.textContent=el.getAttribute('data-tip');
      tip.style.left=(ev.clientX+12)+'px';tip.style.top=(ev.clientY+12)+'px';tip.style.display='block';});
    el.addEventListener('mouseleave',function(){tip.style.display='none';});
  });
  var rows=document.querySelectorAll('#timeline tbody tr');
  document.getElementById('count').textContent=rows.length+' events';
})();
"""

W, H, PAD = 900, 260, 44


def _e(v) -> str:
    return html.escape(str(v), quote=True)


def _fmt(v, unit="") -> str:
    if v is None:
        return "&ndash;"
    return f"{v:g}{unit}" if isinstance(v, (int, float)) else _e(v)


def chart(record: dict, result: dict) -> str:
    series = (record.get("loadgen") or {}).get("series") or record.get("series") or []
    t0 = record.get("started") or (series[0]["t"] if series else 0)
    end = max([p["t"] for p in series] + [record.get("ended") or t0 + 1])
    span = max(end - t0, 1.0)
    p99s = [p["p99_ms"] for p in series if p.get("p99_ms") is not None]
    pmax = max(p99s + [10.0]) * 1.1

    def x(t):
        return PAD + (t - t0) / span * (W - 2 * PAD)

    def y_c(c):                   # completeness 0..1 -> the left axis
        return H - PAD + (PAD * 2 - H) * c

    def y_p(ms):
        return H - PAD - (H - 2 * PAD) * ms / pmax
    parts = [f'<svg id="chart" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" '
             f'aria-label="completeness and p99 latency over time">']
    for frac in (0, 0.5, 1):
        yy = y_c(frac)
        parts.append(f'<line x1="{PAD}" x2="{W - PAD}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#e3e6eb"/>'
                     f'<text x="4" y="{yy + 4:.1f}" font-size="11" fill="#137333">{frac:.0%}</text>'
                     f'<text x="{W - PAD + 4}" y="{yy + 4:.1f}" font-size="11" fill="#7b1fa2">'
                     f'{pmax * frac:.0f}ms</text>')
    for row in record["faults"]:
        if row.get("began"):
            xx = x(row["began"])
            parts.append(f'<line class="fault-mark" x1="{xx:.1f}" x2="{xx:.1f}" y1="{PAD / 2}" y2="{H - PAD}" '
                         f'stroke="#e8710a" stroke-dasharray="4 3" data-tip="{_e(row["name"])} began"/>'
                         f'<text x="{xx + 3:.1f}" y="{PAD / 2 + 10}" font-size="11" fill="#e8710a">'
                         f'{_e(row["name"])}</text>')
    if result.get("fixed_at"):
        xx = x(result["fixed_at"])
        parts.append(f'<line class="fixed-mark" x1="{xx:.1f}" x2="{xx:.1f}" y1="{PAD / 2}" y2="{H - PAD}" '
                     f'stroke="#137333" data-tip="every fixable finding resolved"/>')
    comp = [(p["t"], p["completeness"]) for p in series if p.get("completeness") is not None]
    p99 = [(p["t"], p["p99_ms"]) for p in series if p.get("p99_ms") is not None]
    if comp:
        pts = " ".join(f"{x(t):.1f},{y_c(c):.1f}" for t, c in comp)
        parts.append(f'<polyline id="completeness" fill="none" stroke="#137333" stroke-width="2" points="{pts}"/>')
    if p99:
        pts = " ".join(f"{x(t):.1f},{y_p(v):.1f}" for t, v in p99)
        parts.append(f'<polyline id="p99" fill="none" stroke="#7b1fa2" stroke-width="1.5" points="{pts}"/>')
    for t, c in comp:
        parts.append(f'<circle cx="{x(t):.1f}" cy="{y_c(c):.1f}" r="2.5" fill="#137333" '
                     f'data-tip="+{t - t0:.0f}s completeness {c:.4f}"/>')
    for sec in range(0, int(span) + 1, max(10, int(span / 8) // 10 * 10 or 10)):
        parts.append(f'<text x="{x(t0 + sec):.1f}" y="{H - PAD + 16}" font-size="11" fill="#5b6475" '
                     f'text-anchor="middle">+{sec}s</text>')
    if not series:
        parts.append(f'<text x="{W / 2}" y="{H / 2}" text-anchor="middle" fill="#5b6475">'
                     'no load generator series in this record</text>')
    parts.append("</svg>")
    return "".join(parts)


def render(record: dict) -> str:
    r = analyse(record)
    v = r["verdict"]
    t0 = record.get("started") or 0
    out = ["<!doctype html><html lang=en><head><meta charset=utf-8>",
           f"<title>game day: {_e(record['scenario'])}</title><style>{CSS}</style></head><body>",
           f"<h1>Game day: {_e(record['scenario'])} <span class=sub>(--fix {_e(record['fix'])})</span></h1>",
           f"<div class=sub>{_e(record.get('summary'))}</div>"]
    if record.get("error"):
        out.append(f"<p class=bad>The run stopped early: {_e(record['error'])}</p>")
    overall = v.get("met")
    out.append(f'<h2>Verdict: <span id="verdict" class="{"ok" if overall else "bad"}">'
               f'{"every target met" if overall else "targets missed"}</span></h2>')
    out.append("<table id=targets><tr><th>figure</th><th>this run</th><th>target</th><th></th></tr>")
    for key, row in v.items():
        if not isinstance(row, dict):
            continue
        mark = ('<span class=na>not judged</span>' if row["met"] is None else
                '<span class=ok>met</span>' if row["met"] else '<span class=bad>missed</span>')
        out.append(f"<tr><td>{_e(key)}</td><td>{_fmt(row['value'])}</td><td>{_e(row['op'])} "
                   f"{_fmt(row['target'])}</td><td>{mark}</td></tr>")
    out.append("</table>")
    out.append("<h2>Faults</h2><table id=faults><tr><th>fault</th><th>began</th><th>detect_s</th>"
               "<th>root_cause_s</th><th>fixed_s</th><th>fixed by the control plane's plans</th></tr>")
    for f in r["faults"]:
        began = f"+{f['began'] - t0:.1f}s" if f.get("began") else "not injected"
        own = "&ndash;" if not f["fixable"] else ("yes" if f["fixed_by_own_plans"] else "no")
        out.append(f"<tr><td><b>{_e(f['name'])}</b><br><span class=sub>{_e(f['title'])}</span></td>"
                   f"<td>{began}</td><td>{_fmt(f['detect_s'])}</td><td>{_fmt(f['root_cause_s'])}</td>"
                   f"<td>{_fmt(f['fixed_s']) if f['fixable'] else 'no fix exists'}</td><td>{own}</td></tr>")
    out.append("</table>")
    out.append("<h2>Delivery completeness and p99 latency</h2><div class=legend>"
               "<span style='color:#137333'>&#9632; completeness (per second, left)</span>"
               "<span style='color:#7b1fa2'>&#9632; p99 latency (right)</span>"
               "<span style='color:#e8710a'>&#9482; fault began</span>"
               "<span style='color:#137333'>| fixed</span></div>")
    out.append(chart(record, r))
    out.append(f"<p>completeness over the {30} s after the fix: <b id=after>{_fmt(r['completeness_after'])}</b>"
               "</p>")
    out.append("<h2>Timelines</h2><div class=cols><div><h3>The talk (2014)</h3>"
               "<table id=talk><tr><th>when</th><th>what</th></tr>")
    for when, what in record.get("talk_timeline") or []:
        out.append(f"<tr><td>{_e(when)}</td><td>{_e(what)}</td></tr>")
    out.append("</table></div><div><h3>This run <span id=count class=sub></span></h3>"
               "<table id=timeline><thead><tr><th>t</th><th>event</th></tr></thead><tbody>")
    for e in r["events"]:
        out.append(f"<tr class='{_e(e['what'])}'><td>+{e['t']:.1f}s</td><td>{_e(e['text'])}</td></tr>")
    out.append("</tbody></table></div></div>")
    out.append("<h2>Plans</h2><table id=plans><tr><th>plan</th><th>action</th><th>subject</th><th>by</th>"
               "<th>state</th><th>applied</th><th>its findings resolved</th></tr>")
    for p in r["plans"]:
        rel = (lambda a: f"+{a - t0:.1f}s" if a else "&ndash;")
        out.append(f"<tr><td>{_e(p['id'])}</td><td>{_e(p['action'])}</td><td>{_e(p['subject'])}</td>"
                   f"<td>{_e(p['created_by'])}</td><td>{_e(p['state'])}</td><td>{rel(p['applied_at'])}</td>"
                   f"<td>{rel(p['resolved_at'])}</td></tr>")
    if not r["plans"]:
        out.append("<tr><td colspan=7 class=sub>no plan was made during the run</td></tr>")
    out.append("</table>")
    if r["false_finding_titles"]:
        out.append("<h2>Findings that match no injected fault</h2><ul>" +
                   "".join(f"<li>{_e(t)}</li>" for t in r["false_finding_titles"]) + "</ul>")
    out.append("<h2>Undone</h2><ul id=undone>" + "".join(f"<li>{_e(x)}</li>" for x in record.get("undone") or [])
               + "</ul>")
    if record.get("notes"):
        out.append("<h2>Notes</h2><ul>" + "".join(f"<li>{_e(x)}</li>" for x in record["notes"]) + "</ul>")
    data = json.dumps(record, default=str).replace("</", "<\\/")
    out.append(f'<script type="application/json" id="record">{data}</script>')
    out.append(f"<div id=tip></div><script>{JS}</script></body></html>")
    return "\n".join(out)
