"""What to notify now: Alertmanager's notification pipeline as named, pure stages over plain
rows, for each destination and each incident.

    route    does this destination want this incident? (min_severity, clusters)
    silence  is every finding it would report muted by an active silence?
    group    which one notification, if any, is due now? (group_wait, group_interval,
             repeat_interval, and what this destination was already sent: the dedup)

The input is what the database holds: incidents, their findings, the outbox's history for them
(`Database.alert_history`: what was decided already, whether or not it was delivered yet) and
the active silences. The output is a list of Decisions; the notifier writes each to the outbox
with its dedup key, so deciding twice (two ticks, or a restart) writes one row.

The rules, per (destination, incident):
- "opened": once the incident has been open `group_wait` (findings that arrive together go in
  one message). Routed only: severity >= min_severity (an incident that rises to it is sent
  then) and, with `clusters`, one of them (a finding naming no cluster belongs to every one).
  An incident resolved before that sends nothing, as in Alertmanager.
- then only the CURRENT state's event, at least `group_interval` after the previous notification
  of this incident to this destination: "resolved"; else "acknowledged"; else "severity" when
  the severity is above the highest this destination was told; else, while open (not
  acknowledged: someone is on it) and still routed, "repeat" every `repeat_interval`.
- a destination that never got "opened" gets nothing else about that incident.
- findings joining an open incident are not a notification by themselves: they are in the next
  one. Twenty findings in one incident make one message.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from cluster.durations import seconds
from controlplane.alerting import silences as silencing
from controlplane.alerting.message import dedup_key

RANK = {"info": 0, "warning": 1, "critical": 2}
# Events after which the destination knows the incident
KNOWN = ("opened", "severity", "acknowledged", "repeat")


@dataclass(frozen=True)
class Route:
    """A destination's routing and grouping, in seconds."""
    name: str
    min_severity: str = "warning"
    clusters: tuple[str, ...] | None = None
    group_wait: float = 30.0
    group_interval: float = 300.0
    repeat_interval: float = 14400.0

    @classmethod
    def of(cls, spec) -> Route:
        return cls(spec.name, spec.min_severity, tuple(spec.clusters) if spec.clusters is not None else None,
                   seconds(spec.group_wait), seconds(spec.group_interval), seconds(spec.repeat_interval))


@dataclass(frozen=True)
class Decision:
    destination: str
    incident_id: int
    event: str
    dedup_key: str
    why: str


# -- stage 1: route ---------------------------------------------------------------------------

def reported(incident: dict, findings: list[dict]) -> list[dict]:
    """The findings a notification reports: the open ones, or every one once resolved (or when
    none is open)."""
    if incident.get("state") == "resolved":
        return list(findings)
    return [f for f in findings if f.get("state") == "open"] or list(findings)


def routed(route: Route, incident: dict, findings: list[dict]) -> bool:
    if RANK.get(incident.get("severity") or "info", 0) < RANK[route.min_severity]:
        return False
    if route.clusters is None:
        return True
    fs = reported(incident, findings)
    if not fs:
        return True
    for f in fs:
        c = (f.get("about") or {}).get("cluster")
        if not c or c in route.clusters:         # no cluster named: a shard's, every cluster's
            return True
    return False


# -- stage 2: silence -------------------------------------------------------------------------

def muting(incident: dict, findings: list[dict], active: list[dict]) -> list[dict]:
    """The active silences that mute this incident's notification: each finding it would report
    (`reported`) is matched by one of them. Empty when one is not, or it reports none. The
    dashboard's "muted by" is this list."""
    fs = reported(incident, findings)
    if not fs or not active:
        return []
    hits = [silencing.silencing(f, active) for f in fs]
    if any(h is None for h in hits):
        return []
    return list({h["id"]: h for h in hits}.values())


def muted(incident: dict, findings: list[dict], active: list[dict]) -> bool:
    return bool(muting(incident, findings, active))


# -- stage 3: group and dedup -----------------------------------------------------------------

def due(route: Route, incident: dict, findings: list[dict], history: list[dict], now: float) -> Decision | None:
    """The one notification due now for this destination, or None. `history`: this
    destination's outbox rows for this incident (event, dedup_key, created, severity, state)."""
    iid = int(incident["id"])
    state = incident.get("state")
    mine = sorted(history, key=lambda r: r["id"])
    known = [r for r in mine if r.get("event") in KNOWN]

    def decision(event: str, extra=None, why: str = "") -> Decision:
        return Decision(route.name, iid, event, dedup_key(iid, event, extra), why)

    if not known:
        if state == "resolved":
            return None                      # resolved within group_wait, or never routed here
        if not routed(route, incident, findings):
            return None
        if now - float(incident["opened"]) < route.group_wait:
            return None
        return decision("opened", why="open for group_wait")
    if any(r.get("event") == "resolved" for r in mine):
        return None
    if now - max(float(r["created"]) for r in mine) < route.group_interval:
        return None
    if state == "resolved":
        return decision("resolved", why="resolved")
    told_ack = any(r.get("event") == "acknowledged" or r.get("state") == "acknowledged" for r in mine)
    if state == "acknowledged" and not told_ack:
        return decision("acknowledged", why="acknowledged")
    told = max((RANK.get(r.get("severity") or "info", 0) for r in known), default=0)
    sev = incident.get("severity") or "info"
    if RANK.get(sev, 0) > told:
        return decision("severity", sev, why=f"severity raised to {sev}")
    if state == "open" and routed(route, incident, findings) \
            and now - max(float(r["created"]) for r in mine) >= route.repeat_interval:
        n = sum(1 for r in mine if r.get("event") == "repeat") + 1
        return decision("repeat", n, why="still open after repeat_interval")
    return None


def decide(routes: Iterable[Route], incidents: Iterable[tuple[dict, list[dict]]], history: list[dict],
           active_silences: list[dict], now: float) -> list[Decision]:
    """Every notification due now: for each route and each (incident, findings), route ->
    silence -> group. `history`: outbox rows of these incidents, every destination's."""
    by_key: dict[tuple[str, int], list[dict]] = {}
    for r in history:
        if r.get("incident_id") is not None:
            by_key.setdefault((r["destination"], int(r["incident_id"])), []).append(r)
    routes = list(routes)
    out: list[Decision] = []
    for incident, findings in incidents:
        silenced = None                      # computed once per incident, when needed
        for route in routes:
            d = due(route, incident, findings, by_key.get((route.name, int(incident["id"])), []), now)
            if d is None:
                continue
            if silenced is None:
                silenced = muted(incident, findings, active_silences)
            if not silenced:
                out.append(d)
    return out
