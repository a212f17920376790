"""Push to an Alertmanager: `POST <url>/api/v2/alerts` with one alert per incident, so a team
that already routes through Alertmanager gets chatops' incidents there, with its own routes,
inhibitions and silences.

An Alertmanager alert is a lease, not an event: it stays firing until its `endsAt`, and a client
that wants it to keep firing sends it again before then (Prometheus re-sends every evaluation,
with endsAt a few intervals ahead). So an open incident is pushed with endsAt = now + 5 minutes
through the outbox on each state change, and re-pushed every 60 s by the notifier (best effort,
not through the outbox: a missed refresh is made good by the next one, and a refresh is no new
notification); if chatops stops, the alert resolves itself 5 minutes later rather than firing
forever. A resolved incident is pushed once with endsAt = its resolution time, which resolves
the alert at once. Alertmanager identifies the alert by its labels, so every push of one
incident has the same labels.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from typing import Any, ClassVar

from controlplane.alerting.destination import NETWORK_ERRORS, Destination, Result, classify
from controlplane.alerting.webhook import USER_AGENT, post

LEASE_S = 300.0            # endsAt of an open incident: this far ahead of each push
REFRESH_S = 60.0           # how often open incidents are pushed again


def iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(float(ts), dt.UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def alert(m: dict, now: float) -> dict:
    """One Alertmanager alert (API v2 postableAlert) for a notification."""
    labels = {"alertname": "ChatopsIncident", "incident": str(m["incident_id"]),
              "severity": str(m.get("severity") or "warning"), "source": "chatops"}
    if m.get("clusters"):
        labels["cluster"] = ",".join(m["clusters"])
    for k in ("shard", "host"):
        if m.get(k):
            labels[k] = str(m[k])
    description = m.get("summary") or ""
    if m.get("plan"):
        description += f"\nSuggested plan: {m['plan']['action']}: {m['plan'].get('summary') or ''}"
    annotations = {"summary": str(m.get("title") or ""), "description": description.strip()}
    if m["links"].get("runbook"):
        annotations["runbook_url"] = m["links"]["runbook"]
    starts = float(m.get("opened") or now)
    if m.get("state") == "resolved" and m.get("resolved_at"):
        ends = max(float(m["resolved_at"]), starts + 0.001)     # Alertmanager wants start < end
    else:
        ends = now + LEASE_S
    return {"labels": labels, "annotations": annotations, "generatorURL": m["links"]["incident"],
            "startsAt": iso(starts), "endsAt": iso(ends)}


class Alertmanager(Destination):
    type = "alertmanager"
    schema: ClassVar[dict[str, Any]] = {"url_env": "the Alertmanager's base URL (http://alertmanager:9093)", "secret_env": None}

    def endpoint(self) -> str:
        return self.url.rstrip("/") + "/api/v2/alerts"

    def send(self, payload: dict, now: float | None = None) -> Result:
        raw = json.dumps([alert(payload, time.time() if now is None else now)]).encode()
        try:
            status, text, headers = post(self.endpoint(), raw, {"Content-Type": "application/json",
                                                                "User-Agent": USER_AGENT}, self.timeout)
        except NETWORK_ERRORS as exc:
            return self.failed(exc)
        return classify(status, text, headers, self)
