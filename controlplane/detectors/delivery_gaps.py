"""Delivery gaps: an edge that does not deliver the messages the other edges deliver.

The talk's "users don't see the same messages": no log showed it, only users did. The canary
(controlplane/sources/canary.py) is such a user on every edge of each watched room; this reads what it
recorded (source `canary`, target the room) and reports, per edge:

- condition: `edge:<h>:delivered_ratio` < 1 -- over the canary's last few judged messages the
  edge missed one, delivered it later than `thresholds.delivery_late_after` (a late delivery
  counts as not delivered, so "latency above delivery_late_after" is the same condition), or the
  canary could not be in the room on that edge (edge unreachable);
- firing when the condition has held for `thresholds.hold`; the finding stays open (hysteresis)
  while any point of the last `hold` still shows it, so it clears only after a whole `hold` of
  every message on time;
- severity critical when the edge delivered nothing (ratio 0) for the whole `hold`, else warning.

Subject `<room>@<edge host>`. Evidence: the edge's ratio, latencies and connection state, the
messages it missed with when the other edges got them, and the other edges' ratios. A canary that
has stopped writing (its newest point older than 3 canary intervals + `delivery_late_after`) is
not judged: stale figures prove nothing about the edges.
"""

from __future__ import annotations

from cluster.durations import seconds
from controlplane.detectors.base import (
    USERS,
    Chart,
    Finding,
    Window,
    about,
    hold_s,
    log_charts,
    named_host,
    named_shard,
    num,
    shard_charts,
)
from controlplane.sources import names

KIND = "delivery_gap"
SOURCE = "canary"
MAX_EXAMPLES = 5




def _edge_series(edge: str, figure: str) -> str:
    return names.series(names.labelled("edge", edge), figure)



def _edges(window: Window, room: str, detail: dict) -> list[str]:
    found = set(names.parts(window.names(SOURCE, room), "edge", "delivered_ratio"))
    edges = detail.get("edges")
    if isinstance(edges, dict):
        found |= {e for e in edges if isinstance(e, str)}
    return sorted(e for e in found if e and e.strip() == e and ":" not in e)


def _missed(detail: dict, host: str, late_after: float) -> tuple[list[dict], list[str]]:
    """The messages this edge missed or got late, each with when the other edges got them."""
    out, lines = [], []
    messages = detail.get("messages")
    if not isinstance(messages, list):
        return out, lines
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("edges"), dict) or not isinstance(m.get("seq"), int):
            continue
        mine = m["edges"].get(host)
        if not isinstance(mine, dict) or mine.get("state") not in ("missing", "late", "not_connected"):
            continue
        others = {e: num(v.get("latency_s")) for e, v in m["edges"].items()
                  if e != host and isinstance(v, dict)}
        item = {"seq": m.get("seq"), "sent_at": m.get("sent_at"), "via": m.get("via"),
                "state": mine["state"], "latency_s": num(mine.get("latency_s")), "others_latency_s": others}
        out.append(item)
        got = ", ".join(f"{e} +{lat:.3f}s" if lat is not None else f"{e} never" for e, lat in sorted(others.items()))
        if m.get("via") == host and others and all(v is None for v in others.values()):
            got += " (no edge delivered it: swallowed by the edge it was sent through)"
        when = f"+{item['latency_s']:.3f}s (late)" if item["latency_s"] is not None else (
            "not in the room (edge unreachable)" if mine["state"] == "not_connected" else
            f"not within {late_after:g}s")
        via = m.get("via") or "no edge (the canary was in the room nowhere)"
        lines.append(f"canary #{m.get('seq')} sent via {via}: {host} {when}; {got or 'no other edge'}")
    return out[-MAX_EXAMPLES:], lines[-MAX_EXAMPLES:]


def detect(window: Window, cf) -> list[Finding]:
    th = cf.controlplane.thresholds
    hold = hold_s(cf)
    late = seconds(th.delivery_late_after)
    stale_after = 3 * seconds(cf.controlplane.canary.interval) + late
    findings: list[Finding] = []
    for room in window.targets(SOURCE):
        detail = window.detail(SOURCE, room)
        detail = detail if isinstance(detail, dict) else {}
        cluster = detail.get("cluster") if isinstance(detail.get("cluster"), str) else None
        if cluster is None:
            try:
                cluster = cf.cluster_of_room(room)
            except Exception:
                cluster = ""
        edges = _edges(window, room, detail)
        for host in edges:
            ratio_pts = [(t, num(v)) for t, v in window.points(SOURCE, room, _edge_series(host, "delivered_ratio"))]
            if not ratio_pts or window.now - ratio_pts[-1][0] > stale_after:
                continue
            held = window.held_for(ratio_pts, lambda v: v < 1.0)
            firing = held >= hold
            sustained = any(v is not None and v < 1.0 for t, v in ratio_pts if t >= window.now - hold)
            if not firing and not sustained:
                continue
            nothing = window.held_for(ratio_pts, lambda v: v <= 0.0) >= hold
            ratio = ratio_pts[-1][1]
            connected = num(window.value(SOURCE, room, _edge_series(host, "connected")))
            edge_detail = (detail.get("edges") or {}).get(host) if isinstance(detail.get("edges"), dict) else None
            edge_detail = edge_detail if isinstance(edge_detail, dict) else {}
            missed, lines = _missed(detail, host, late)
            others = {e: num(window.value(SOURCE, room, _edge_series(e, "delivered_ratio"))) for e in edges if e != host}
            unreachable = connected == 0.0
            what = ("is unreachable" if unreachable else
                    "delivers no canary message" if nothing else "misses or delays canary messages")
            title = f"Edge {host} {what} in #{room}"
            if ratio is not None:
                title += f" ({ratio:.0%} of the last canary messages on time)"
            evidence = {
                "room": room, "host": host, "cluster": cluster,
                "delivered_ratio": ratio,
                "ratio_over_messages": detail.get("ratio_messages"),
                "missing": num(window.value(SOURCE, room, _edge_series(host, "missing"))),
                "latency_p50_s": num(window.value(SOURCE, room, _edge_series(host, "latency_s"))),
                "latency_max_s": num(window.value(SOURCE, room, _edge_series(host, "latency_max_s"))),
                "late_after_s": late,
                "connected": None if connected is None else connected >= 1.0,
                "connection_error": edge_detail.get("error"),
                "held_s": round(held, 3),
                "missed": missed,
                "other_edges_ratio": others,
                "lines": lines,
            }
            findings.append(Finding(
                kind=KIND, subject=f"{room}@{host}",
                severity="critical" if nothing else "warning",
                title=title, evidence=evidence,
                remediation={"action": "restart_service",
                             "summary": f"Check edge {host}'s deliveries (its log, /metrics "
                                        f"chat_edge_deliveries, the exchange's i/o timeouts to it); "
                                        f"restart edge-{host} if it is stuck",
                             "params": {"host": host, "service": "edge"}},
                firing=firing, held_s=held,
                about={"room": room, "host": host, "cluster": cluster or "", "service": "edge", "edge": host},
            ))
    return findings


# -- in an incident: what users see, the top of every chain ---------------------------------------

def layer(f: dict) -> int:
    return USERS


def label(f: dict) -> str:
    room, host = about(f).get("room", ""), named_host(f)
    if room:
        return f"delivery gap in #{room.lstrip('#')}" + (f" on {host}" if host else "")
    return f"delivery gap on {host or f.get('subject')}"


def charts(f: dict) -> list[Chart]:
    return log_charts(f) + shard_charts(named_shard(f))
