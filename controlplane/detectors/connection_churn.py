"""Connection churn (missing keepalive): a service opens a new TCP connection for (nearly) every
request it makes -- the talk's second bug, `[exchange] i/o timeout` because the exchange did not
use HTTP keepalives.

Per chat service (source `service:<svc>-<host>`, controlplane/sources/service_figures.py): the ratio
connections_opened_per_s / requests_per_s at each scrape, judged only while requests_per_s >=
churn_min_requests_per_s (a handful of requests proves nothing; below it the ratio is unknown and
breaks the hold). Firing when the ratio has been >= churn_ratio for `hold`; reported, not firing,
while it is >= churn_ratio x clear_factor (hysteresis).

Subject `<service>-<host>` (e.g. `exchange-chat1`); about {service, host, cluster}. Title: "keepalive
disabled or pool too small". Evidence: both rates and their ratio, the exchange's
`chat_exchange_keepalive` and pool size, i/o timeouts/s, TIME_WAIT sockets towards the service's
upstreams (service source); for clue, whose Redis connections go through the host's HAProxy, also
HAProxy's session rate against clue's Redis command rate and the TIME_WAIT counts on the HAProxy
and Redis ports (process source); and example `[exchange] i/o timeout` lines from the logs source. Severity:
critical when i/o timeouts are happening too, else warning. Remediation: set_keepalive (or raise
pool_size when keepalive is already on), a cluster-file change.
"""

from __future__ import annotations

from typing import Any

from controlplane.detectors.base import (
    SERVICE,
    USERS,
    Chart,
    Finding,
    Serves,
    Window,
    judge,
    log_charts,
    log_groups,
    named_host,
    named_shard,
    num,
    service,
    shard_charts,
    thresholds,
)

KIND = "connection_churn"
TITLE = "keepalive disabled or pool too small"






def ratio_points(window: Window, target: str, min_requests: float) -> list[tuple[float, float | None]]:
    """connections opened per request at each scrape; None where either is unknown or requests
    are below `min_requests`."""
    reqs = dict(window.points("service", target, "requests_per_s"))
    out = []
    for t, c in window.points("service", target, "connections_opened_per_s"):
        r, c = num(reqs.get(t)), num(c)
        out.append((t, c / r if r is not None and c is not None and r >= min_requests and r > 0 else None))
    return out


def _r(v: float | None, nd: int = 3) -> float | None:
    return None if v is None else round(v, nd)


def _log_lines(window: Window, stem: str, kind: str) -> tuple[float | None, list[str]]:
    rate, lines = None, []
    for g in log_groups(window):
        if g.get("file") == stem and g.get("kind") == kind:
            if num(g.get("per_s")) is not None:
                rate = (rate or 0.0) + g["per_s"]
            lines += [str(x) for x in g.get("examples") or []]
    return rate, lines[-5:]


def _time_wait(window: Window, target: str) -> dict[str, int] | None:
    tw = window.data("service", target, "time_wait")
    return {str(k): int(v) for k, v in tw.items() if num(v) is not None} if isinstance(tw, dict) else None


def _process_time_wait(window: Window, host: str) -> dict[str, int]:
    """TIME_WAIT counts the process source saw on this host's HAProxy and on the Redis shards."""
    out = {}
    data = window.data("process", "local") or {}
    for p in (data.get("processes") if isinstance(data, dict) else None) or []:
        if not isinstance(p, dict) or num(p.get("time_wait")) is None:
            continue
        name = str(p.get("name"))
        if p.get("kind") == "redis" or name == f"haproxy-{host}":
            out[name] = int(p["time_wait"])
    return out


def _haproxy_vs_redis(window: Window, host: str) -> dict[str, Any]:
    """For clue: sessions/s the host's HAProxy accepts on its redis-* listeners against the Redis
    commands/s clue sends through them; near 1 means a connection per command."""
    sessions = None
    for name in window.names("haproxy", host):
        if name.startswith("redis-") and name.endswith("/FRONTEND:rate"):
            v = num(window.value("haproxy", host, name))
            if v is not None:
                sessions = (sessions or 0.0) + v
    ops = num(window.value("service", f"clue-{host}", "redis_ops_per_s"))
    return {"haproxy_sessions_per_s": _r(sessions), "redis_commands_per_s": _r(ops),
            "sessions_per_command": _r(sessions / ops) if sessions is not None and ops else None}


def detect(window: Window, cf) -> list[Finding]:
    th = thresholds(cf)
    out: list[Finding] = []
    for target in window.targets("service"):
        service, _, host = target.partition("-")
        if not host or window.up("service", target) is False:
            continue
        pts = ratio_points(window, target, th.churn_min_requests_per_s)
        firing, sustained, held = judge(window, pts, th.churn_ratio, cf)
        if not (firing or sustained):
            continue
        v = lambda name: num(window.value("service", target, name))   # noqa: E731
        keepalive = v("keepalive")
        io_timeouts = v("io_timeouts_per_s")
        ev: dict[str, Any] = {
            "requests_per_s": _r(v("requests_per_s")),
            "connections_opened_per_s": _r(v("connections_opened_per_s")),
            "connections_per_request": _r(pts[-1][1]),
            "churn_ratio": th.churn_ratio,
            "keepalive": keepalive,
            "pool_size": v("pool_size"),
            "io_timeouts_per_s": _r(io_timeouts),
            "time_wait_to_upstreams": _time_wait(window, target),
            "held_s": round(held, 1),
        }
        if service == "clue":           # its Redis connections go through the host's HAProxy
            ev["haproxy"] = _haproxy_vs_redis(window, host)
            ev["time_wait_haproxy_redis"] = _process_time_wait(window, host)
        log_rate, lines = _log_lines(window, f"{service}-{host}", "io_timeout")
        ev["io_timeout_lines_per_s"] = _r(log_rate)
        ev["lines"] = lines
        cluster = cf.cluster_of(host) or ""
        if service == "exchange" and keepalive == 0:
            summary = f"set clusters.{cluster}.services.exchange.keepalive: true and restart the exchange"
            remediation = {"action": "set_keepalive", "summary": summary,
                           "params": {"cluster": cluster, "service": service, "keepalive": True}}
        else:
            summary = (f"check {service}-{host}'s keepalive and raise its connection pool "
                       f"(pool_size {ev['pool_size']}) if requests wait for a connection")
            remediation = {"action": "raise_pool_size", "summary": summary,
                           "params": {"cluster": cluster, "service": service}}
        ratio = ev["connections_per_request"]
        title = (f"{target}: {TITLE} ({ev['connections_opened_per_s']} new connections/s for "
                 f"{ev['requests_per_s']} requests/s, {ratio} per request)")
        out.append(Finding(
            kind=KIND, subject=target,
            severity="critical" if (io_timeouts or 0) > 0 or (log_rate or 0) > 0 else "warning",
            title=title, evidence=ev, remediation=remediation, firing=firing, held_s=held,
            about={"service": service, "host": host, "cluster": cluster}, peak=ev["connections_opened_per_s"]))
    return out


# -- in an incident: a service (the exchange) between users and the edges -------------------------

def layer(f: dict) -> int:
    return SERVICE


def label(f: dict) -> str:
    host = named_host(f)
    return f"connection churn on {service(f) or f.get('subject')}" + (f" ({host})" if host else "")


def cause(f: dict) -> str:
    return f"keepalive disabled or pool too small on {service(f) or f.get('subject')}"


def serves(f: dict) -> Serves:
    return Serves(USERS, f"{service(f) or 'the service'} delivers to the edges of its cluster")


def charts(f: dict) -> list[Chart]:
    return log_charts(f) + shard_charts(named_shard(f))
