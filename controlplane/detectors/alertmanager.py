"""Alerts received from an Alertmanager (controlplane/alerting/receiver.py), as findings.

Nothing here detects: these findings arrive through `POST /api/v1/alerts/alertmanager` and
`Engine.ingest`, and leave when Alertmanager says the alert is resolved. `EXTERNAL = True` tells
the engine so: it never resolves them because its own detectors did not report them. What this
module declares is how they sit in incidents, by the same rules as chatops' own findings:

- layer: SHARD when the alert names a shard and is not about a chat host (a redis_exporter alert
  on the shard's address); PROXY otherwise (a chat host's HAProxy listener, or a host alone);
- shard and host: what the receiver mapped from the alert's labels and `instance` (`about`);
- label: `<alertname> on <shard (host)>`, as the alert says it.

So an alert on shard2 shares an incident with chatops' own finding on shard2.
"""

from __future__ import annotations

from controlplane.detectors.base import PROXY, SHARD, Finding, Window, about, named_shard

KIND = "alertmanager"
EXTERNAL = True          # findings come from outside; the engine's runs leave them alone


def detect(window: Window, cf) -> list[Finding]:
    return []


def _chat_host(f: dict) -> bool:
    a = about(f)
    return bool(a.get("host")) and bool(a.get("cluster"))     # chat hosts belong to a cluster


def layer(f: dict) -> int:
    return SHARD if named_shard(f) and not _chat_host(f) else PROXY


def label(f: dict) -> str:
    ev = f.get("evidence") or {}
    name = ev.get("alertname") if isinstance(ev, dict) else None
    a = about(f)
    where = (f"{a['shard']} ({a['host']})" if a.get("shard") and a.get("host")
             else a.get("shard") or a.get("host") or (ev.get("instance") if isinstance(ev, dict) else None))
    if not isinstance(name, str) or not name:
        return str(f.get("title") or f.get("subject") or KIND)
    return f"Alertmanager: {name}" + (f" on {where}" if where else "")
