"""Delivery gaps: canary messages some edge does not deliver, and where on their path they are lost.

The talk's "users don't see the same messages": no log showed it, only users did. The canary
(controlplane/sources/canary.py) is such a user on every edge of each watched room, and sends
one message through every edge each interval. A message sent through edge X crosses X's edge,
X's host's clue and exchange, and is then delivered by every edge Y: the path X->Y. This reads
what the canary recorded (source `canary`, target the room) and judges each path on the share of
its recent messages that were missed or late:

- a path is failing when, over its last `controlplane.canary.window` judged messages (10), at
  least `miss_share` × window (0.3 × 10 = 3) were missed, or delivered later than
  `thresholds.delivery_late_after` (2 s), or the canary was not in the room on Y (edge
  unreachable). A share, not a run: a path losing every other message never misses two in a row,
  yet fails 5 of 10. The window is the smoothing (one or two misses never open a finding), so a
  failing path fires at once, without `thresholds.hold`: dropping one message in two is found
  about 2 × 3 intervals + `delivery_late_after` + one scrape after it starts (~10 s by default);
- the failing paths are then named down to what they share:
  - every path into Y fails (from every sender): the receiving **edge Y** is at fault (or the
    exchanges' link to it): subject `<room>@<Y>`, service edge;
  - every path out of X fails (to every edge that still receives from others): the **sending
    host X's ingestion or exchange** lost them (edge X's call to clue, clue@X, exchange@X):
    subject `<room>@<X>->*`, service exchange;
  - both for one edge (a stopped edge neither passes on nor delivers): **edge X** itself,
    subject `<room>@<X>`;
  - a failing path neither explains: **the path X->Y** (exchange@X's link to edge Y), subject
    `<room>@<X>-><Y>`;
  - in a one-edge cluster the sending and delivering side cannot be told apart; it is reported
    as the edge, and says so;
- messages sent through X that no edge delivered wait for a possible refusal (clue's timeout +
  1 s) before they count; meanwhile (`path:<x>-><y>:awaiting`) they help name the fault -- a
  stopped edge is named as the edge at once, not first as the paths into it -- but never fire;
- an edge the canary cannot join and has no path data for yet fails on its own figures
  (`edge:<h>:missing` over the window);
- hysteresis: an open finding stays reported (not firing) while its paths still show any miss in
  their window, so it clears once `window` messages in a row got through;
- severity critical when the blamed paths delivered nothing in the window, else warning.

Evidence: the blamed paths' missed/judged counts and share, the other paths', the edge's
connection state, the missed messages with when the other edges got them. A canary that has
stopped writing (its newest point older than 3 canary intervals + `delivery_late_after`) is not
judged: stale figures prove nothing about the edges.
"""

from __future__ import annotations

import math

from cluster.durations import seconds
from controlplane.detectors.base import (
    USERS,
    Chart,
    Finding,
    Window,
    about,
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


def _path_series(via: str, edge: str, figure: str) -> str:
    return names.series(names.labelled("path", f"{via}->{edge}"), figure)


def _clean(e) -> bool:
    return isinstance(e, str) and bool(e) and e.strip() == e and ":" not in e and "->" not in e


def _edges(window: Window, room: str, detail: dict) -> list[str]:
    found = set(names.parts(window.names(SOURCE, room), "edge", "delivered_ratio"))
    edges = detail.get("edges")
    if isinstance(edges, dict):
        found |= set(edges)
    return sorted(e for e in found if _clean(e))


def _paths(window: Window, room: str, edges: list[str]) -> dict[tuple[str, str], list]:
    """(via, edge) -> the points of its `missed` count, for paths between known edges."""
    out = {}
    for part in names.parts(window.names(SOURCE, room), "path", "missed"):
        via, sep, edge = part.partition("->")
        if sep and via in edges and edge in edges:
            out[(via, edge)] = window.points(SOURCE, room, _path_series(via, edge, "missed"))
    return out


def blame(bad: set[tuple[str, str]], known: set[tuple[str, str]], edges: list[str],
          edge_bad: set[str] = frozenset()) -> list[tuple[str, str, list[tuple[str, str]]]]:
    """Name the failing paths down to what they share: [(what, subject part, paths)], what being
    edge | receiver | sender | path. `known`: the paths with judged messages; `edge_bad`: edges
    failing on their own figures with no path data into them (unreachable since the start)."""
    receivers = set()
    for y in edges:
        into = [(x, y) for x in edges if (x, y) in known]
        if (into and all(p in bad for p in into)) or (not into and y in edge_bad):
            receivers.add(y)
    senders = set()
    for x in edges:
        out = [(x, y) for y in edges if (x, y) in known and y not in receivers]
        if out and all(p in bad for p in out):
            senders.add(x)
    found = []
    for e in edges:
        if e in receivers:
            paths = sorted(p for p in bad if p[1] == e or (e in senders and p[0] == e))
            found.append(("edge" if e in senders or len(edges) == 1 else "receiver", e, paths))
        elif e in senders:
            found.append(("sender", e, sorted(p for p in bad if p[0] == e)))
    for x, y in sorted(bad):
        if x not in senders and y not in receivers:
            found.append(("path", f"{x}->{y}", [(x, y)]))
    return found


def _settled(what: str, part: str, known: set[tuple[str, str]], awaiting: dict) -> bool:
    """Whether a blame can no longer turn into a wider one. A path, or a receiving edge, is named
    only once no message is awaiting on the paths that would widen it (the sender's other paths;
    the receiver's own sending paths): a stopped edge swallows what is sent through it, and until
    those are judged the paths into it alone read as "one path" or "the receiver". A fault that
    really is one path or one receiver leaves nothing awaiting there: the other edges deliver."""
    if what == "path":
        x, _, y = part.partition("->")
        return not any(awaiting.get(p, 0) > 0 for p in known if p != (x, y) and (p[0] in (x, y)))
    if what == "receiver":
        return not any(awaiting.get(p, 0) > 0 for p in known if p[0] == part)
    return True


def _missed(detail: dict, paths: list[tuple[str, str]], late_after: float) -> tuple[list[dict], list[str]]:
    """The messages lost on `paths`, each with when the other edges got them."""
    out, lines = [], []
    messages = detail.get("messages")
    if not isinstance(messages, list):
        return out, lines
    wanted = set(paths)
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("edges"), dict) or not isinstance(m.get("seq"), int):
            continue
        via = m.get("via") if isinstance(m.get("via"), str) else ""
        for host, mine in sorted(m["edges"].items()):
            if (via, host) not in wanted and not (via == "" and any(p[1] == host for p in wanted)):
                continue
            if not isinstance(mine, dict) or mine.get("state") not in ("missing", "late", "not_connected",
                                                                        "not_counted"):
                continue
            others = {e: num(v.get("latency_s")) for e, v in m["edges"].items()
                      if e != host and isinstance(v, dict)}
            lat = num(mine.get("latency_s"))
            out.append({"seq": m["seq"], "sent_at": m.get("sent_at"), "via": via or None, "edge": host,
                        "state": mine["state"], "latency_s": lat, "others_latency_s": others})
            got = ", ".join(f"{e} +{v:.3f}s" if v is not None else f"{e} never" for e, v in sorted(others.items()))
            if others and all(v is None for v in others.values()):
                got += " (no edge delivered it)"
            when = f"+{lat:.3f}s (late)" if lat is not None else (
                "not in the room (edge unreachable)" if mine["state"] == "not_connected" else
                f"not within {late_after:g}s")
            lines.append(f"canary #{m['seq']} sent via {via or 'no edge (the canary was in the room nowhere)'}: "
                         f"{host} {when}; {got or 'no other edge'}")
    return out[-MAX_EXAMPLES:], lines[-MAX_EXAMPLES:]


def _last(points: list) -> float | None:
    return num(points[-1][1]) if points else None


def detect(window: Window, cf) -> list[Finding]:
    cfg = cf.controlplane.canary
    late = seconds(cf.controlplane.thresholds.delivery_late_after)
    stale_after = 3 * seconds(cfg.interval) + late
    need = max(1, math.ceil(cfg.miss_share * cfg.window - 1e-9))
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
        paths = _paths(window, room, edges)
        newest = [pts[-1][0] for pts in paths.values() if pts]
        newest += [pts[-1][0] for e in edges
                   for pts in [window.points(SOURCE, room, _edge_series(e, "missing"))] if pts]
        if not newest or window.now - max(newest) > stale_after:
            continue
        fresh = {p: pts for p, pts in paths.items() if pts and window.now - pts[-1][0] <= stale_after}
        known = {p for p, pts in fresh.items() if _last(pts) is not None}
        into = {y for _, y in known}
        edge_missing = {e: num(window.value(SOURCE, room, _edge_series(e, "missing"))) for e in edges}
        no_paths_bad = {e for e in edges if e not in into and (edge_missing[e] or 0) >= need}
        no_paths_some = {e for e in edges if e not in into and (edge_missing[e] or 0) > 0}
        missed = {p: _last(fresh[p]) for p in known}
        awaiting = {p: num(window.value(SOURCE, room, _path_series(p[0], p[1], "awaiting"))) or 0.0
                    for p in known}
        bad = {p for p in known if missed[p] >= need}
        # Messages awaiting a possible refusal count towards naming the fault, never towards
        # firing: a stopped edge's swallowed messages are judged only at clue's timeout + 1 s,
        # and without them the paths into it alone would first read as "one path".
        likely = {p for p in known if missed[p] + awaiting[p] >= need}
        strict = [(w, part, paths) for w, part, paths in blame(likely, known, edges, no_paths_bad)
                  if (not paths or any(p in bad for p in paths)) and _settled(w, part, known, awaiting)]
        relaxed = blame({p for p in known if missed[p] + awaiting[p] > 0}, known, edges, no_paths_some)
        # While an edge still shows misses both ways it is that edge's fault, still being
        # reported: the narrower name its recovery passes through (a resumed edge delivers again
        # before its backlog of swallowed sends is judged late: "sender") is not a new fault.
        wide = {part for what, part, _ in relaxed if what == "edge"}
        strict = [b for b in strict if b[0] == "edge" or not (set(b[1].split("->")) & wide)]
        firing_subjects = {(what, part) for what, part, _ in strict}
        reported = list(strict) + [r for r in relaxed if (r[0], r[1]) not in firing_subjects]
        for what, part, bad_paths in reported:
            firing = (what, part) in firing_subjects
            findings.append(_finding(window, cf, room, cluster, edges, fresh, detail, what, part, bad_paths,
                                     firing, need, late))
    return findings


WHAT = {
    "edge": "edge {e} (it neither passes on nor delivers)",
    "receiver": "the receiving edge {e}",
    "sender": "the sending host {e}'s ingestion or exchange (edge {e} -> clue@{e} -> exchange@{e})",
    "path": "the path {e} (exchange@{x}'s link to edge {y})",
}


def _finding(window: Window, cf, room: str, cluster: str, edges: list[str], fresh: dict, detail: dict,
             what: str, part: str, bad_paths: list[tuple[str, str]], firing: bool, need: int,
             late: float) -> Finding:
    cfg = cf.controlplane.canary

    def counts(p):
        missed = _last(fresh.get(p, []))
        judged = num(window.value(SOURCE, room, _path_series(p[0], p[1], "judged")))
        share = None if missed is None or not judged else round(missed / judged, 4)
        return {"missed": missed, "judged": judged, "missed_share": share}

    blamed = {f"{x}->{y}": counts((x, y)) for x, y in bad_paths}
    others = {f"{x}->{y}": counts((x, y)) for x, y in sorted(fresh) if (x, y) not in bad_paths}
    x, _, y = part.partition("->")
    host = x if what in ("sender", "path") else part
    connected = num(window.value(SOURCE, room, _edge_series(host, "connected")))
    edge_detail = (detail.get("edges") or {}).get(host) if isinstance(detail.get("edges"), dict) else None
    edge_detail = edge_detail if isinstance(edge_detail, dict) else {}
    missed_list, lines = _missed(detail, bad_paths or [(e, host) for e in edges] + [("", host)], late)
    shares = [c["missed_share"] for c in blamed.values() if c["missed_share"] is not None]
    if not blamed:                       # no path data: the edge's own figures
        ratio = num(window.value(SOURCE, room, _edge_series(host, "delivered_ratio")))
        shares = [] if ratio is None else [1.0 - ratio]
    share = max(shares) if shares else None
    nothing = bool(shares) and min(shares) >= 1.0
    unreachable = what in ("edge", "receiver") and connected == 0.0
    if what == "sender":
        title = f"Messages sent through {host} are lost for every edge in #{room}: {host}'s clue or exchange"
    elif what == "path":
        title = f"Messages from {x} are lost on their way to edge {y} in #{room}"
    elif unreachable:
        title = f"Edge {host} is unreachable in #{room}"
    elif what == "edge" and len(edges) > 1:
        title = f"Edge {host} neither passes on nor delivers canary messages in #{room}"
    else:
        title = f"Edge {host} misses canary messages from every edge in #{room}"
    if share is not None:
        title += f" ({share:.0%} of the last canary messages missed or late)"
    held = max((window.held_for(fresh.get(p, []), lambda v: v >= need) for p in bad_paths), default=0.0)
    blame_text = WHAT[what].format(e=part, x=x, y=y)
    if what in ("edge", "receiver") and len(edges) == 1:
        blame_text += "; with one edge, its ingestion and its delivery cannot be told apart"
    evidence = {
        "room": room, "cluster": cluster, "host": host, "blame": what, "blamed": blame_text,
        "paths": blamed, "other_paths": others,
        "window": cfg.window, "miss_share": cfg.miss_share, "missed_at_least": need,
        "late_after_s": late,
        "delivered_ratio": num(window.value(SOURCE, room, _edge_series(host, "delivered_ratio"))),
        "connected": None if connected is None else connected >= 1.0,
        "connection_error": edge_detail.get("error"),
        "held_s": round(held, 3),
        "missed": missed_list,
        "lines": lines,
    }
    if what in ("edge", "receiver"):
        service = "edge"
        summary = (f"Check edge {host}'s deliveries (its log, /metrics chat_edge_deliveries, the exchanges' "
                   f"i/o timeouts to it); restart edge-{host} if it is stuck")
        subject = f"{room}@{host}"
    else:
        service = "exchange"
        if what == "sender":
            summary = (f"Check what {host} accepts but does not fan out: clue-{host}'s "
                       f"chat_clue_exchange_errors, exchange-{host}'s received vs delivered counts and "
                       f"its log; restart exchange-{host} (then clue-{host}) if it is stuck")
        else:
            summary = (f"Check exchange-{host}'s deliveries to edge {y} (chat_exchange_deliveries{{edge=\"{y}\"}}, "
                       f"its i/o timeouts); restart exchange-{host} if its link to {y} is stuck")
        subject = f"{room}@{part}" if what == "path" else f"{room}@{host}->*"
    about_ = {"room": room, "host": host, "cluster": cluster or "", "service": service, "edge": host}
    if what == "path":
        about_["edge"] = y
    return Finding(
        kind=KIND, subject=subject,
        severity="critical" if nothing else "warning",
        title=title, evidence=evidence,
        remediation={"action": "restart_service", "summary": summary,
                     "params": {"host": host, "service": service}},
        firing=firing, held_s=held,
        about=about_,
    )


# -- in an incident: what users see, the top of every chain ---------------------------------------

def layer(f: dict) -> int:
    return USERS


def label(f: dict) -> str:
    room, host = about(f).get("room", ""), named_host(f)
    ev = f.get("evidence") if isinstance(f.get("evidence"), dict) else {}
    where = {"sender": f" sent through {host} (its clue or exchange)",
             "path": f" from {host} to edge {about(f).get('edge', '')}"}.get(ev.get("blame"),
                                                                           f" on {host}" if host else "")
    if room:
        return f"delivery gap in #{room.lstrip('#')}" + where
    return f"delivery gap on {host or f.get('subject')}"


def charts(f: dict) -> list[Chart]:
    return log_charts(f) + shard_charts(named_shard(f))
