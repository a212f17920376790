"""Change one HAProxy server's weight or state through the runtime API (`set server ...`).

These are the primitives a remediation applies (drain a shard's server, take it to maint, give
it back its weight); they moved here from collectors/haproxy.py, which only reads. Every name is
checked before anything is sent: a backend or server name able to carry a space, `;`, `/` or a
newline could smuggle a second runtime command into the first.

For an edge's server (be_edge_<cluster>, be_edge_ws_<cluster>) the edge itself is told too
(edge_drain.py): drain and maint make it RECONNECT its clients, after HAProxy stops sending it new
ones; ready makes it accept again, before HAProxy sends it any.
"""

from __future__ import annotations

import re
from pathlib import Path

from collectors import haproxy as hc
from collectors.haproxy_runtime import RuntimeAPIError, command
from controlplane.remediation import edge_drain
from controlplane.remediation.base import BadParams, Context, Draft, Outcome, Param, Unavailable

_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
SERVER_STATES = ("ready", "drain", "maint")


def _check_name(kind: str, value: str) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise ValueError(f"refusing {kind} name {value!r}: only [A-Za-z0-9_.:-] is allowed")
    return value


def _runtime_reply(reply: str, cmd: str) -> str:
    text = reply.strip()
    # Success is an empty reply; errors come back as text, never as a status code.
    if text:
        raise RuntimeAPIError(f"{cmd!r}: {text}")
    return text


def set_server_weight(sock: str | Path, backend: str, server: str, weight: int,
                      timeout: float = 5.0) -> None:
    _check_name("backend", backend)
    _check_name("server", server)
    if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 256:
        raise ValueError(f"refusing weight {weight!r}: an integer 0..256")
    cmd = f"set server {backend}/{server} weight {weight}"
    _runtime_reply(command(sock, cmd, timeout), cmd)


def set_server_state(sock: str | Path, backend: str, server: str, state: str,
                     timeout: float = 5.0) -> None:
    _check_name("backend", backend)
    _check_name("server", server)
    if state not in SERVER_STATES:
        raise ValueError(f"refusing state {state!r}: one of {', '.join(SERVER_STATES)}")
    cmd = f"set server {backend}/{server} state {state}"
    _runtime_reply(command(sock, cmd, timeout), cmd)


# -- the action: server_state {host, backend, server, state, weight} ------------------------------
# Runtime only, through each chat host's admin socket: no reload, so connected clients stay. The
# plan reports every chat host's runtime state of that server, and applies to `host` (one chat
# host) or to every chat host that has the backend (`host=all`, the usual case: a server is drained
# from every HAProxy in front of it). The cluster file has no key for a server's runtime state,
# so nothing is written back; the plan says so.

NAME = "server_state"
VERIFY = ("proxy_saturation",)
_MAINT, _DRAIN = 0x01 | 0x02 | 0x04 | 0x20 | 0x40, 0x08 | 0x10     # srv_admin_state bits


def _chat_hosts(cf) -> list[str]:
    return ["all"] + [h for h, _ in cf.chat_hosts()]


PARAMS = {
    "host": Param(str, default="all", choices=_chat_hosts, help="a chat host, or all"),
    "backend": Param(str, required=True, help="e.g. be_edge_main"),
    "server": Param(str, required=True, help="e.g. chat2"),
    "state": Param(str, choices=SERVER_STATES),
    "weight": Param(int, minimum=0, maximum=256),
}


def subject(cf, params: dict) -> str:
    return f"haproxy:{params['host']}"


def state_word(admin_state: int | None) -> str:
    if admin_state is None:
        return "unknown"
    return "maint" if admin_state & _MAINT else "drain" if admin_state & _DRAIN else "ready"


def _runtime(ctx: Context, host: str, backend: str, server: str) -> dict | None:
    try:
        text = command(ctx.run.haproxy_socket(host), f"show servers state {_check_name('backend', backend)}")
    except RuntimeAPIError as exc:
        if "Can't find backend" in str(exc) or "No such backend" in str(exc):
            return None
        raise Unavailable(f"{host}'s HAProxy runtime API: {exc}") from None
    if "Can't find backend" in text:
        return None
    row = next((r for r in hc.parse_servers_state(text).servers
                if r.get("be_name") == backend and r.get("srv_name") == server), None)
    if row is None:
        return None
    return {"state": state_word(row.get("srv_admin_state")), "weight": row.get("srv_uweight")}


def plan(ctx: Context, params: dict) -> Draft:
    backend, server = _check_name("backend", params["backend"]), _check_name("server", params["server"])
    if params["state"] is None and params["weight"] is None:
        raise BadParams("state", "give state (ready, drain, maint) or weight, or both")
    hosts = [h for h, _ in ctx.cf.chat_hosts()] if params["host"] == "all" else [params["host"]]
    now = {h: _runtime(ctx, h, backend, server) for h in hosts}
    present = {h: v for h, v in now.items() if v is not None}
    if not present:
        raise Unavailable(f"no chat host's HAProxy has server {backend}/{server}")
    diff, changes = [], False
    for h, v in now.items():
        if v is None:
            diff.append(f"  {h}: no {backend}/{server} here")
            continue
        after = {"state": params["state"] or v["state"], "weight": params["weight"] if params["weight"] is not None
                 else v["weight"]}
        if after != v:
            changes = True
            diff.append(f"- {h} {backend}/{server}: {v['state']} weight {v['weight']}")
            diff.append(f"+ {h} {backend}/{server}: {after['state']} weight {after['weight']}")
        else:
            diff.append(f"  {h} {backend}/{server}: {v['state']} weight {v['weight']} (already)")
    diff.append("  (runtime only: the cluster file has no key for a server's state; no reload)")
    edge = _edge(ctx, backend, server, params["state"])
    if edge is not None and not ctx.replanning:
        lines, edge_change, _ = edge_drain.plan_lines(ctx.cf, edge, edge_drain.wanted(params["state"]))
        diff += lines
        changes = changes or edge_change
    what = " ".join(x for x in (params["state"], f"weight {params['weight']}" if params["weight"] is not None
                                else None) if x)
    return Draft(summary=f"set {backend}/{server} {what} on {', '.join(present)}", diff=diff,
                 preconditions=[f"{h}'s HAProxy admin socket answers" for h in present],
                 state=now, details={"hosts": list(present), "edge": edge}, changes=changes)


def _edge(ctx: Context, backend: str, server: str, state: str | None) -> str | None:
    """The edge to tell too (chat/drain.py), when the server is an edge and the state changes."""
    return edge_drain.edge_of(ctx.cf, backend, server) if edge_drain.wanted(state) is not None else None


def apply(ctx: Context, params: dict, draft: Draft) -> Outcome:
    # An edge accepts again before HAProxy sends it clients, and is drained only once HAProxy
    # sends it no more: its RECONNECTed clients must land on another edge.
    # An edge that does not answer is down, so it holds no clients: HAProxy's part still applies.
    edge = draft.details.get("edge")
    said = []
    if edge is not None and params["state"] == "ready":
        said.append(_tell(ctx, edge, drain=False))
    done = []
    for h in draft.details["hosts"]:
        sock = ctx.run.haproxy_socket(h)
        try:
            if params["weight"] is not None:
                set_server_weight(sock, params["backend"], params["server"], params["weight"])
            if params["state"] is not None:
                set_server_state(sock, params["backend"], params["server"], params["state"])
        except (RuntimeAPIError, ValueError) as exc:
            return Outcome(False, f"{h}: {exc} (done: {', '.join(done) or 'none'})", {"hosts": done})
        done.append(h)
    if edge is not None and params["state"] != "ready":
        said.append(_tell(ctx, edge, drain=True))
    text = f"{params['backend']}/{params['server']} set on {', '.join(done)}"
    return Outcome(True, "; ".join([text, *said]), {"hosts": done, "edge": said or None})


def _tell(ctx: Context, edge: str, drain: bool) -> str:
    try:
        return edge_drain.apply(ctx.cf, edge, drain)
    except Unavailable as exc:
        return f"edge {edge} not told: {exc}"
