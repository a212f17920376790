"""The edge's side of `server_state` on an edge server: HAProxy's drain only keeps new clients
away, and IRC clients never leave by themselves, so the edge is also told to send its clients
Twitch's RECONNECT and close them over `services.edge.drain_period` (chat/drain.py); `ready` tells
it to accept again. Through the edge's admin route, `/v1/admin/drain` on its internal HTTP port,
with the control plane's API token as /v1/admin/upstream takes it.
"""

from __future__ import annotations

from controlplane.remediation import service_admin
from controlplane.remediation.base import Unavailable

PATH = "/v1/admin/drain"


def edge_of(cf, backend: str, server: str) -> str | None:
    """The chat host whose edge `backend/server` is (be_edge_<cluster> or be_edge_ws_<cluster>,
    server named after the host), or None for any other server (a Redis listener's)."""
    for prefix in ("be_edge_ws_", "be_edge_"):
        if backend.startswith(prefix):
            c = cf.clusters.get(backend[len(prefix):])
            if c is not None and server in c.hosts:
                return server
    return None


def wanted(state: str | None) -> bool | None:
    """True: drain the edge's clients; False: accept again; None: leave the edge alone (a weight)."""
    return None if state is None else state != "ready"


def call(cf, host: str, method: str) -> dict:
    port = cf.clusters[cf.cluster_of(host)].services.edge.http_port
    return service_admin.call(cf, host, port, PATH, method, f"edge-{host}")


def plan_lines(cf, host: str, drain: bool) -> tuple[list[str], bool, dict | None]:
    """The plan's diff lines for the edge, whether that is a change, and what the edge said."""
    period = cf.clusters[cf.cluster_of(host)].services.edge.drain_period
    try:
        now = call(cf, host, "GET")
    except Unavailable as exc:
        return [f"  edge {host}: cannot ask it ({exc}); the apply will try"], True, None
    if drain and not now["draining"] and now["listening"]:
        return [f"- edge {host}: accepting, {now['clients']} client(s)",
                f"+ edge {host}: stops accepting, sends RECONNECT to its {now['clients']} client(s), "
                f"closes those still there over {period} (services.edge.drain_period)"], True, now
    if not drain and not now["listening"]:
        return [f"- edge {host}: not accepting ({'draining' if now['draining'] else 'drained'})",
                f"+ edge {host}: accepts clients again"], True, now
    state = ("draining" if now["draining"] else "drained") if not now["listening"] else "accepting"
    return [f"  edge {host}: {state}, {now['clients']} client(s) (already)"], False, now


def apply(cf, host: str, drain: bool) -> str:
    """Tell the edge; returns the outcome's words."""
    if drain:
        r = call(cf, host, "POST")
        if r.get("started"):
            return (f"edge {host} sent RECONNECT to {r['drain_clients']} client(s), "
                    f"closing them over {r['drain_period']}")
        return f"edge {host} already draining ({r['clients']} client(s) left)"
    r = call(cf, host, "DELETE")
    return f"edge {host} accepts clients again" if r.get("ended") else f"edge {host} was accepting already"
