"""Leaked clients: a host holds many idle connections to a shard, or keeps opening connections that
do no work; and shards near maxclients or rejecting connections.

Per (shard, source host), from `clients:<shard>` (CLIENT LIST aggregated by host, every
scrape.client_list_interval):

- idle: `host:<host>:idle` (connections idle longer than idle_client_after) >= leaked_idle_clients;
- growth: `host:<host>:count` has grown by >= leaked_idle_clients above its lowest point earlier in
  the window, and the new connections do no work: the host's `unused` connections (nothing sent
  since they connected, collectors/clients.py) account for the growth (x clear_factor), or the
  shard's ops/s grew by less than one per new connection ("grows without matching commands").
  This sees a leak before its connections have been idle for idle_client_after. The first test
  alone is what finds a leak into a busy shard: a hot room swings the shard's ops/s by thousands
  while the leak grows, which hides the growth from the second.

Firing when either has held for `hold`; reported (not firing) while either is above the threshold
x clear_factor. Subject `<host>-><shard>`; about {host, shard, cluster}. The evidence has the host's
counts and cluster, the shard's `timeout` (0: Redis never closes an idle client, as in the talk),
connected clients against maxclients, and rejected connections/s. Severity: critical when the
shard is at maxclients_warn_ratio of maxclients or rejecting connections, else warning.
Remediation: kill_clients {shard, host, idle_over_s}, plus a `timeout` note when it is 0.

Per shard, from `redis:<shard>`: connected_clients >= maxclients_warn_ratio x maxclients, or
rejected_connections_per_s > 0, held for `hold`: subject `<shard>:maxclients`, critical when
rejecting (or at maxclients), else warning.

At maxclients Redis refuses the control plane's own connections too ("ERR max number of clients
reached"): INFO and CLIENT LIST go dark exactly when they matter. That refusal is itself the
strongest evidence: `clients:<shard>` down with that error counts as "at maxclients" (held as
long as it has been down), and the per-host series keep their last known values (marked `stale`
in the evidence) so a leak that filled the shard stays reported instead of vanishing with its data.
"""

from __future__ import annotations

from typing import Any

from cluster.durations import seconds
from controlplane.detectors.base import (
    LOAD,
    SHARD,
    Chart,
    Finding,
    Window,
    about,
    first_number,
    fmt_number,
    hold_s,
    named_host,
    named_shard,
    num,
)
from controlplane.detectors.hot_shard import (
    redis_data,
    shard_host,
    shard_names,
    summary,
)
from controlplane.sources import names

KIND = "leaked_clients"
IGNORED_HOSTS = ("controlplane",)      # our own collectors' connections
MAXCLIENTS_ERROR = "max number of clients"


def _host_series(host: str, figure: str) -> str:
    return names.series(names.labelled("host", host), figure)


def refused(window: Window, shard: str) -> bool:
    """The shard refuses the control plane's own connections: it is at maxclients."""
    if window.up("clients", shard) is not False:
        return False
    err = window.latest.get(f"clients:{shard}", {}).get("error")
    return isinstance(err, str) and MAXCLIENTS_ERROR in err


def _ffill(points: list) -> list:
    """Trailing unknown values replaced by the last known one (a refused shard's last CLIENT LIST)."""
    out, last = [], None
    for t, v in points:
        if num(v) is not None:
            last = v
        out.append((t, v if num(v) is not None else last))
    return out


def _judge(window: Window, cf, points: list, pred_hi, pred_lo, extra_s: float) -> tuple[bool, bool, float]:
    """(firing, sustained, held_s); `extra_s` accounts for a source scraped less often than the
    window's interval (a CLIENT LIST sample stands for its own interval)."""
    held = window.held_for(points, pred_hi)
    if held > 0:
        held += extra_s
    return held >= hold_s(cf), window.held_for(points, pred_lo) > 0, held


def _growth(points: list) -> list:
    """count minus its running minimum: how far the host's connections rose above their low."""
    out, low = [], None
    for t, v in points:
        v = num(v)
        if v is None:
            out.append((t, None))
            continue
        low = v if low is None else min(low, v)
        out.append((t, v - low))
    return out


def _absent_is_zero(points: list, totals: list) -> list:
    """A host missing from a CLIENT LIST that was read holds no connections: 0, not unknown.
    Without this a host's first connections (a leak from a host that never talked to the shard)
    would be its own low, and never count as growth."""
    read = {t for t, v in totals if num(v) is not None}
    return [(t, 0.0 if num(v) is None and t in read else v) for t, v in points]


def _mean_near(points: list, t0: float, t1: float) -> float | None:
    vals = [num(v) for t, v in points if t0 <= t <= t1 and num(v) is not None]
    return sum(vals) / len(vals) if vals else None


def _last_known(points: list) -> float | None:
    return next((num(v) for _, v in reversed(points) if num(v) is not None), None)


def _shard_state(window: Window, cf, shard: str) -> dict[str, Any]:
    config = redis_data(window, shard, "config")
    config = config if isinstance(config, dict) else {}
    connected = num(window.value("redis", shard, "connected_clients"))
    maxclients = num(window.value("redis", shard, "maxclients")) or num(config.get("maxclients"))
    timeout, timeout_from = config.get("timeout"), "CONFIG GET"
    if timeout is None:
        # CONFIG GET failed (a refused or broken shard): what the cluster file configures.
        timeout, timeout_from = cf.redis.timeout, "cluster file"
    is_refused = refused(window, shard)
    if is_refused:
        maxclients = maxclients or _last_known(window.points("redis", shard, "maxclients")) or float(cf.redis.maxclients)
        connected = connected if connected is not None else maxclients
    return {"shard": shard, "connected_clients": connected, "maxclients": maxclients,
            "maxclients_ratio": round(connected / maxclients, 3) if connected is not None and maxclients else None,
            "timeout": timeout, "timeout_from": timeout_from, "timeout_zero": timeout == 0,
            "rejected_connections_per_s": num(window.value("redis", shard, "rejected_connections_per_s")),
            "refusing_controlplane": is_refused}


def detect(window: Window, cf) -> list[Finding]:
    th = cf.controlplane.thresholds
    out: list[Finding] = []
    extra = max(0.0, seconds(cf.controlplane.scrape.client_list_interval) - window.interval_s)
    limit = float(th.leaked_idle_clients)
    factor = th.clear_factor
    for shard in shard_names(window, cf):
        state = _shard_state(window, cf, shard)
        near = _maxclients(window, cf, shard, state)
        if near is not None:
            out.append(near)
        stale = refused(window, shard)
        data = window.data("clients", shard)
        if stale:
            data = {}
        elif window.up("clients", shard) is False or not isinstance(data, dict):
            continue
        fill = _ffill if stale else (lambda pts: pts)
        by_host = [h for h in data.get("by_host") or [] if isinstance(h, dict) and isinstance(h.get("host"), str)]
        total = num(data.get("total")) if not stale else num(fill(window.points("clients", shard, "total"))[-1][1]
                                                              if window.points("clients", shard, "total") else None)
        idle_after = num(data.get("idle_after_s")) or seconds(th.idle_client_after)
        ops_pts = window.points("redis", shard, "ops_per_s")
        hosts = {h["host"]: h for h in by_host}
        # A host gone from the newest CLIENT LIST may still be in the series: it has no connections
        # now (or, when the shard refuses us, its last known counts are all there is).
        for name in names.parts(window.names("clients", shard), "host"):
            if stale:
                last = {f: fill(window.points("clients", shard, _host_series(name, f))) for f in ("count", "idle")}
                hosts.setdefault(name, {"host": name, "count": last["count"][-1][1] if last["count"] else 0,
                                        "idle_over": last["idle"][-1][1] if last["idle"] else 0, "stale": True})
            hosts.setdefault(name, {"host": name, "count": 0, "idle_over": 0})
        for name, h in sorted(hosts.items()):
            if name in IGNORED_HOSTS:
                continue
            idle_pts = fill(window.points("clients", shard, _host_series(name, "idle")))
            count_pts = fill(_absent_is_zero(window.points("clients", shard, _host_series(name, "count")),
                                             window.points("clients", shard, "total")))
            i_fire, i_keep, i_held = _judge(window, cf, idle_pts, lambda v: v >= limit,
                                            lambda v: v >= limit * factor, extra)
            growth = _growth(count_pts)
            g_fire = g_keep = False
            g_held = 0.0
            ops_growth = None
            grown = num(growth[-1][1]) if growth else None
            if grown is not None and grown >= limit * factor:
                # When did it start rising? The last time it sat at its low.
                low_t = next((t for t, v in reversed(growth) if v is not None and v == 0), growth[0][0])
                before = _mean_near(ops_pts, low_t - 5 * window.interval_s, low_t)
                now_ops = _mean_near(ops_pts, window.now - 3 * window.interval_s, window.now)
                if before is not None and now_ops is not None:
                    ops_growth = now_ops - before
                unused = num(fill(window.points("clients", shard, _host_series(name, "unused")))[-1][1]
                             if window.points("clients", shard, _host_series(name, "unused")) else None)
                idle_work = (unused is not None and unused >= grown * factor) \
                    or ops_growth is None or ops_growth < grown      # < 1 op/s per new connection
                if idle_work:
                    g_fire, g_keep, g_held = _judge(window, cf, growth, lambda v: v >= limit,
                                                    lambda v: v >= limit * factor, extra)
            if not (i_fire or i_keep or g_fire or g_keep):
                continue
            out.append(_finding(window, cf, shard, name, h, state, total, idle_after, i_fire or g_fire,
                                max(i_held, g_held), grown, ops_growth, data, by_idle=i_fire or i_keep))
    return out


def _finding(window, cf, shard, host, h, state, total, idle_after, firing, held, grown, ops_growth,
             data, by_idle: bool = True) -> Finding:
    th = cf.controlplane.thresholds
    cluster = h.get("cluster") if isinstance(h.get("cluster"), str) else cf.cluster_of(host)
    count, idle = num(h.get("count")) or 0, num(h.get("idle_over")) or 0
    examples = [c for c in data.get("most_idle") or [] if isinstance(c, dict) and c.get("host") == host][:3]
    rejecting = (state["rejected_connections_per_s"] or 0) > 0 or refused(window, shard)
    near_max = (state["maxclients_ratio"] is not None and state["maxclients_ratio"] >= th.maxclients_warn_ratio) \
        or refused(window, shard)
    evidence = {
        "host": host, "cluster": cluster, "shard": shard, "shard_host": shard_host(cf, shard),
        "count": int(count), "idle": int(idle), "idle_after_s": idle_after,
        "idle_long": num(h.get("idle_over_long")), "unused": num(h.get("unused")),
        "oldest_age_s": num(h.get("oldest_age_s")),
        "max_idle_s": num(h.get("max_idle_s")), "top_commands": h.get("top_commands") or [],
        "share_of_shard": round(count / total, 3) if total else None, "shard_total_clients": total,
        "growth": grown, "ops_per_s_growth": None if ops_growth is None else round(ops_growth, 1),
        "idle_series": summary(window.points("clients", shard, _host_series(host, "idle")), 60.0, window.now),
        "count_series": summary(window.points("clients", shard, _host_series(host, "count")), 60.0, window.now),
        "held_s": round(held, 1), "hold_s": hold_s(cf),
        "timeout": state["timeout"], "timeout_zero": state["timeout_zero"],
        "connected_clients": state["connected_clients"], "maxclients": state["maxclients"],
        "maxclients_ratio": state["maxclients_ratio"], "near_maxclients": near_max,
        "rejected_connections_per_s": state["rejected_connections_per_s"], "most_idle": examples,
        "refusing_controlplane": refused(window, shard),
        "stale": bool(h.get("stale")),
        "thresholds": {"leaked_idle_clients": th.leaked_idle_clients, "idle_client_after": th.idle_client_after,
                       "maxclients_warn_ratio": th.maxclients_warn_ratio, "hold": th.hold},
    }
    where = f"{host} ({cluster} cluster)" if cluster else host
    if idle >= th.leaked_idle_clients * th.clear_factor:
        title = (f"{where} holds {int(idle):,} idle connections to {shard} "
                 f"(of its {int(count):,}; idle > {idle_after:g}s)")
    else:
        title = (f"{where} opened {int(grown or 0):,} connections to {shard} that do no work "
                 f"(now {int(count):,})")
    if state["timeout_zero"]:
        title += "; timeout 0"
    notes = []
    if state["timeout_zero"]:
        notes.append(f"{shard} has `timeout 0`, so Redis never closes an idle client: set `redis.timeout` "
                     f"(e.g. 300) in the cluster file")
    if near_max or rejecting:
        notes.append(f"{shard} has {state['connected_clients']:.0f} of {state['maxclients']:.0f} clients"
                     + (", and is rejecting connections" if rejecting else ""))
    # A leak found by its growth is younger than idle_client_after: it can fire a CLIENT LIST
    # interval after the leak began, so its connections have done nothing for about that long.
    # Half an interval still catches all of them; a host's working connections are busier.
    half_interval = seconds(cf.controlplane.scrape.client_list_interval) / 2
    kill_idle = idle_after if by_idle else min(idle_after, max(1.0, half_interval))
    remediation = {
        "action": "kill_clients",
        "summary": (f"CLIENT KILL the connections from {host} to {shard} idle for more than {kill_idle:g}s, "
                    f"then find the leak in {where}." + (" " + "; ".join(notes) + "." if notes else "")),
        "params": {"shard": shard, "host": host, "idle_over_s": kill_idle},
    }
    severity = "critical" if near_max or rejecting else "warning"
    about = {"host": host, "shard": shard}
    if cluster:
        about["cluster"] = cluster
    return Finding(KIND, f"{host}->{shard}", severity, title, evidence, remediation, firing=firing,
                   held_s=round(held, 1), about=about,
                   peak=idle if idle >= th.leaked_idle_clients * th.clear_factor else grown)


def _maxclients(window: Window, cf, shard: str, state: dict) -> Finding | None:
    th = cf.controlplane.thresholds
    if window.up("redis", shard) is False:
        return None
    extra = max(0.0, seconds(cf.controlplane.scrape.client_list_interval) - window.interval_s)
    conn = window.points("redis", shard, "connected_clients")
    maxc = {t: num(v) for t, v in window.points("redis", shard, "maxclients")}
    fallback = state["maxclients"]
    ratio = []
    for t, v in conn:
        m = maxc.get(t) or fallback
        ratio.append((t, num(v) / m if num(v) is not None and m else None))
    r_fire, r_keep, r_held = _judge(window, cf, ratio, lambda v: v >= th.maxclients_warn_ratio,
                                    lambda v: v >= th.maxclients_warn_ratio * th.clear_factor, 0.0)
    rej = window.points("redis", shard, "rejected_connections_per_s")
    j_fire, j_keep, j_held = _judge(window, cf, rej, lambda v: v > 0, lambda v: v > 0, 0.0)
    f_fire = f_keep = False
    f_held = 0.0
    if state["refusing_controlplane"]:
        f_fire, f_keep, f_held = _judge(window, cf, window.points("clients", shard, "up"), lambda v: v == 0,
                                        lambda v: v == 0, extra)
        f_keep = True          # refused right now: at maxclients now
    if not (r_fire or r_keep or j_fire or j_keep or f_fire or f_keep):
        return None
    rejecting = (state["rejected_connections_per_s"] or 0) > 0 or state["refusing_controlplane"]
    at_max = state["maxclients_ratio"] is not None and state["maxclients_ratio"] >= 1.0
    top = _top_idle_host(window, cf, shard, stale=state["refusing_controlplane"])
    held = max(r_held, j_held, f_held)
    evidence = {"shard": shard, "shard_host": shard_host(cf, shard), **state,
                "connected_series": summary(conn, 60.0, window.now),
                "rejected_series": summary(rej, 60.0, window.now),
                "top_idle_host": top, "held_s": round(held, 1), "hold_s": hold_s(cf),
                "thresholds": {"maxclients_warn_ratio": th.maxclients_warn_ratio, "hold": th.hold}}
    if state["refusing_controlplane"]:
        evidence["error"] = window.latest.get(f"clients:{shard}", {}).get("error")
    cc, mc = state["connected_clients"], state["maxclients"]
    if state["refusing_controlplane"]:
        title = f"{shard} is at maxclients ({mc or 0:,.0f}): it refuses new connections, the control plane's too"
    else:
        title = f"{shard} is near maxclients: {cc or 0:,.0f} of {mc or 0:,.0f} clients"
        if (state["rejected_connections_per_s"] or 0) > 0:
            title += f", rejecting {state['rejected_connections_per_s']:.1f} connections/s"
    if top:
        title += f"; {top['idle']:,} idle from {top['host']}" + (f" ({top['cluster']} cluster)" if top.get("cluster") else "")
        remediation = {"action": "kill_clients",
                       "summary": f"CLIENT KILL the idle connections from {top['host']} to {shard}"
                                  + ("; set `redis.timeout` (it is 0)" if state["timeout_zero"] else "") + ".",
                       "params": {"shard": shard, "host": top["host"], "idle_over_s": top["idle_after_s"]}}
    else:
        remediation = {"action": "none", "summary": f"Find who holds {shard}'s connections "
                       f"(`chatops inspect clients {shard} --by host`) before raising maxclients.",
                       "params": {"shard": shard}}
    return Finding(KIND, f"{shard}:maxclients", "critical" if rejecting or at_max else "warning", title, evidence,
                   remediation, firing=r_fire or j_fire or f_fire, held_s=round(held, 1), about={"shard": shard},
                   peak=cc)


def _top_idle_host(window: Window, cf, shard: str, stale: bool = False) -> dict[str, Any] | None:
    data = window.data("clients", shard)
    rows = data.get("by_host") if isinstance(data, dict) else None
    idle_after = (num(data.get("idle_after_s")) if isinstance(data, dict) else None) \
        or seconds(cf.controlplane.thresholds.idle_client_after)
    if stale or not isinstance(rows, list):
        # No CLIENT LIST now: the hosts' last known counts from the series.
        rows = []
        for name in names.parts(window.names("clients", shard), "host", "idle"):
            rows.append({"host": name,
                         "idle_over": _last_known(window.points("clients", shard, _host_series(name, "idle"))),
                         "count": _last_known(window.points("clients", shard, _host_series(name, "count"))),
                         "cluster": None})
    best = None
    for h in rows:
        if not isinstance(h, dict) or h.get("host") in IGNORED_HOSTS or not num(h.get("idle_over")):
            continue
        if best is None or num(h.get("idle_over")) > num(best.get("idle_over")):
            best = h
    if best is None:
        return None
    return {"host": best.get("host"), "cluster": best.get("cluster") or cf.cluster_of(str(best.get("host"))),
            "idle": int(num(best.get("idle_over"))), "count": int(num(best.get("count")) or 0),
            "idle_after_s": idle_after, "stale": stale}


# -- in an incident: two shapes -- the shard at maxclients (the shard itself) and a host's leak
# (what loads the shard, the root cause in the talk) ---------------------------------------------

def is_maxclients(f: dict) -> bool:
    return str(f.get("subject", "")).endswith(":maxclients")


def layer(f: dict) -> int:
    return SHARD if is_maxclients(f) else LOAD


def idle(f: dict) -> bool:
    """A host's leak is connections that do nothing: it fills the shard's client table (the
    maxclients finding, refused connections downstream), it does not make the shard hot."""
    return not is_maxclients(f)


def _source(f: dict) -> str:
    return named_host(f) or str(f.get("subject", "")).split("->")[0]


def label(f: dict) -> str:
    ev, shard = f.get("evidence") or {}, named_shard(f) or ""
    # The worst figure the finding reached (its peak), not the live one: a leak being killed
    # must not read "0 idle clients" in the chain that explains what it did.
    peak = num(f.get("peak"))
    if is_maxclients(f):
        n, m = first_number(ev, "connected_clients", "clients"), first_number(ev, "maxclients")
        n = max(n, peak) if n is not None and peak is not None else n
        nums = f" ({fmt_number(n)} / {fmt_number(m)})" if n is not None and m is not None else ""
        return f"{shard or f.get('subject', '').split(':')[0]} at maxclients{nums}"
    found = [v for v in (peak, first_number(ev, "idle", "idle_clients", "idle_over", "count"), num(ev.get("growth")))
             if v is not None]
    idle = max(found) if found else None
    return (f"{fmt_number(idle)} idle clients from {_source(f)}" if idle is not None
            else f"idle clients from {_source(f)}") + (f" on {shard}" if shard else "")


def cause(f: dict) -> str:
    if is_maxclients(f):
        return label(f)
    ev_cluster = (f.get("evidence") or {}).get("cluster")
    cluster = about(f).get("cluster") or (ev_cluster if isinstance(ev_cluster, str) else None)
    host = _source(f)
    return f"leaked clients from the {cluster} cluster ({host})" if cluster else f"leaked clients from {host}"


def charts(f: dict) -> list[Chart]:
    shard = named_shard(f)
    if not shard:
        return []
    return [Chart("redis", shard, "ops_per_s", "ops/s", f"{shard} ops/s"),
            Chart("redis", shard, "connected_clients", "", f"{shard} connected clients"),
            Chart("clients", shard, "idle", "", f"{shard} idle clients"),
            Chart("redis", shard, "rejected_connections_per_s", "/s", f"{shard} rejected connections")]
