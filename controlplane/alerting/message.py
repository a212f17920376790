"""One notification, independent of where it goes: built from an incident, its findings, the
event and the cluster file, and stored as the outbox row's payload. Every destination renders
this dict (Slack's Block Kit, the webhook's JSON body, an Alertmanager alert); none reads the
database. Pure: no clock, no I/O.

What it carries: the incident (id, title, severity, state, clusters), the root-cause chain with
its summary and cause, the root finding's top evidence figures and one example log line, the
suggested plan, links to the incident page and the runbook, and the dedup key. Never a
destination's URL or a secret: those are not known here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote

from controlplane.detectors.base import example_lines, fmt_number

EVENTS = ("opened", "severity", "acknowledged", "resolved", "repeat")
VERSION = 1


def dedup_key(incident_id: int, event: str, extra: str | int | None = None) -> str:
    """`incident/<id>/<event>[/<severity or n>]`: one per incident state, per destination."""
    if event not in EVENTS:
        raise ValueError(f"unknown notification event {event!r}; one of {', '.join(EVENTS)}")
    key = f"incident/{int(incident_id)}/{event}"
    return key if extra is None else f"{key}/{extra}"


def clusters_of(findings: Iterable[dict]) -> list[str]:
    """The clusters the findings name (a finding naming none belongs to every cluster and adds
    none here)."""
    out = set()
    for f in findings:
        c = (f.get("about") or {}).get("cluster")
        if isinstance(c, str) and c:
            out.add(c)
    return sorted(out)


def _root(incident: dict, findings: list[dict]) -> tuple[dict | None, dict | None]:
    """(the root link of the chain, the root finding's row) -- either may be missing."""
    rc = incident.get("root_cause") or {}
    link = rc.get("root") or ((rc.get("chain") or [None])[-1])
    if link is None:
        return None, (findings[-1] if findings else None)
    row = next((f for f in findings if f.get("id") == link.get("finding_id")), None)
    return link, row


def figures(link: dict | None, row: dict | None, limit: int = 6) -> list[dict[str, Any]]:
    """The root finding's top evidence figures: [{"name", "value", "text"}]. The database keeps
    evidence with its keys sorted, so the detector's order is gone; the top ones are the numbers
    the finding's title quotes, then the other numbers, then short words it is not already about."""
    if row is not None:
        raw = {k: v for k, v in (row.get("evidence") or {}).items()
               if k != "lines" and not isinstance(v, (dict, list, tuple))}
        title, about = str(row.get("title") or ""), set(map(str, (row.get("about") or {}).values()))
    else:
        raw, title, about = dict((link or {}).get("figures") or {}), str((link or {}).get("title") or ""), set()
    quoted, numbers, words = [], [], []
    for k, v in raw.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            (quoted if re.search(rf"(?<![\d.,]){re.escape(fmt_number(v))}(?![\d,])", title) else numbers).append(k)
        elif isinstance(v, str) and 0 < len(v) <= 80 and v not in about:
            words.append(k)
    keys = (quoted + numbers + words)[:limit]
    return [{"name": k, "value": raw[k], "text": fmt_number(raw[k])} for k in keys]


def example_line(chain: list[dict], row: dict | None) -> str | None:
    """One log line that shows the problem: the root finding's, else the nearest link's."""
    if row is not None:
        lines = example_lines(row, 1)
        if lines:
            return lines[0]
    for link in reversed(chain):
        if link.get("lines"):
            return str(link["lines"][0])[:300]
    return None


def build(incident: dict, findings: list[dict], event: str, cf, *, key: str | None = None) -> dict[str, Any]:
    """The notification of `event` for `incident` (a row of Database.incident) whose findings are
    `findings` (Database.incident_findings)."""
    iid = int(incident["id"])
    key = key or dedup_key(iid, event)
    rc = incident.get("root_cause") or {}
    chain = list(rc.get("chain") or [])
    link, row = _root(incident, findings)
    about = (row or {}).get("about") or {}
    public = cf.public_url().rstrip("/")
    runbook = (link or {}).get("runbook") or (row or {}).get("runbook") or (row or {}).get("kind")
    plan = rc.get("remediation") or (row or {}).get("remediation")
    open_n = sum(1 for f in findings if f.get("state") == "open")
    return {
        "version": VERSION,
        "incident_id": iid,
        "event": event,
        "dedup_key": key,
        "title": incident.get("title") or f"incident {iid}",
        "severity": incident.get("severity") or "warning",
        "state": incident.get("state"),
        "opened": incident.get("opened"),
        "resolved_at": incident.get("resolved_at"),
        "acknowledged_by": incident.get("acknowledged_by"),
        "clusters": clusters_of(findings),
        "shard": about.get("shard") or None,
        "host": about.get("host") or None,
        "summary": rc.get("summary") or "",
        "cause": rc.get("cause") or "",
        "chain": [{"label": x.get("label") or "", "title": x.get("title") or "", "role": x.get("role"),
                   "severity": x.get("severity"), "kind": x.get("kind"), "subject": x.get("subject"),
                   "because": x.get("because")} for x in chain],
        "figures": figures(link, row),
        "example_line": example_line(chain, row),
        "plan": {"action": plan.get("action"), "summary": plan.get("summary") or ""}
        if isinstance(plan, dict) and plan.get("action") else None,
        "findings": {"open": open_n, "total": len(findings)},
        "links": {"incident": f"{public}/incidents/{iid}",
                  "runbook": f"{public}/runbooks/{quote(str(runbook), safe='')}" if runbook else None},
    }


WORDS = {"opened": "Opened", "severity": "Severity raised", "acknowledged": "Acknowledged",
         "resolved": "Resolved", "repeat": "Still open"}


def headline(m: dict) -> str:
    """`[CRITICAL] Opened: <title>`: a plain one-line summary (Slack's fallback text, logs)."""
    return f"[{str(m.get('severity', '')).upper()}] {WORDS.get(m.get('event'), m.get('event'))}: {m.get('title')}"
