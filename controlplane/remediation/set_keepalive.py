"""set_keepalive {service, host | cluster, keepalive, pool}: switch a chat service's upstream
keepalive and pool size at runtime -- the talk's second bug, an exchange opening a new HTTP
connection per request -- through each service's authenticated admin endpoint
(`PUT /v1/admin/upstream`, chat/service.py), which swaps its connection pool without a restart
and without dropping a message in flight.

For a whole cluster the change is also written back to the cluster file so a restart keeps it:
the exchange's `services.exchange.keepalive` / `pool_size`, the edges' pool to clue
`services.clue.client.pool_size`. A change on one host stays runtime only (a cluster-wide key
would change its peers at their next restart); the plan says so, as it does for settings the
file has no key for.
"""

from __future__ import annotations

from cluster import writeback
from collectors.services import service_port
from controlplane.remediation import service_admin
from controlplane.remediation.base import BadParams, Context, Draft, Outcome, Param, Unavailable

NAME = "set_keepalive"
WRITES_CLUSTER_FILE = True
VERIFY = ("connection_churn",)
SERVICES = ("exchange", "edge", "clue")
# service -> parameter -> the cluster-file key under clusters.<c>.services
FILE_KEYS = {"exchange": {"keepalive": "exchange.keepalive", "pool": "exchange.pool_size"},
             "edge": {"pool": "clue.client.pool_size"},
             "clue": {}}


def _chat_hosts(cf) -> list[str]:
    return [h for h, _ in cf.chat_hosts()]


def _clusters(cf) -> list[str]:
    return list(cf.clusters)


PARAMS = {
    "service": Param(str, required=True, choices=SERVICES),
    "host": Param(str, choices=_chat_hosts, help="one chat host"),
    "cluster": Param(str, choices=_clusters, help="every chat host of a cluster"),
    "keepalive": Param(bool),
    "pool": Param(int, minimum=1, maximum=1024),
}


def _scope(cf, params: dict) -> tuple[list[str], str | None]:
    if (params["host"] is None) == (params["cluster"] is None):
        raise BadParams("host", "give host (one chat host) or cluster (all of its hosts), not both")
    if params["host"]:
        return [params["host"]], None
    return list(cf.clusters[params["cluster"]].hosts), params["cluster"]


def subject(cf, params: dict) -> str:
    where = params.get("host") or f"cluster-{params.get('cluster')}"
    return f"service:{params['service']}-{where}"


def _call(ctx: Context, host: str, service: str, method: str, body: dict | None = None) -> dict:
    return service_admin.call(ctx.cf, host, service_port(ctx.cf, host, service), "/v1/admin/upstream", method,
                              f"{service}-{host}", body)


def _wanted(params: dict) -> dict:
    out = {}
    if params["keepalive"] is not None:
        out["keepalive"] = params["keepalive"]
    if params["pool"] is not None:
        out["pool_size"] = params["pool"]
    if not out:
        raise BadParams("keepalive", "give keepalive (true/false) or pool (1..1024), or both")
    return out


def plan(ctx: Context, params: dict) -> Draft:
    hosts, cluster = _scope(ctx.cf, params)
    wanted, service = _wanted(params), params["service"]
    state, diff, live = {}, [], False
    for host in hosts:
        ups = _call(ctx, host, service, "GET")["upstreams"]
        state[host] = ups
        for name, now in ups.items():
            after = {**now, **wanted}
            if after != now:
                live = True
                diff.append(f"- {service}-{host} {name}: keepalive={now['keepalive']} pool_size={now['pool_size']}")
                diff.append(f"+ {service}-{host} {name}: keepalive={after['keepalive']} pool_size={after['pool_size']}")
    edit, notes = None, []
    keys = FILE_KEYS[service]
    if cluster is not None:
        changes = {f"clusters.{cluster}.services.{keys[p]}": params[p] for p in ("keepalive", "pool")
                   if params[p] is not None and p in keys}
        unkept = [p for p in ("keepalive", "pool") if params[p] is not None and p not in keys]
        if unkept:
            notes.append(f"  (runtime only for {', '.join(unkept)}: the cluster file has no key for {service}'s)")
        if changes:
            try:
                edit = writeback.plan_edit(ctx.cluster_path, changes)
            except writeback.WritebackError as exc:
                raise BadParams("cluster", f"the cluster file cannot take this change: {exc}") from None
            diff += edit.diff.splitlines()
            state["cluster_file"] = writeback.current(edit)
    else:
        notes.append("  (runtime only: one host's change is not written to the cluster-wide keys)")
    where = params["host"] or f"every host of cluster {cluster}"
    what = ", ".join(f"{k}={v}" for k, v in wanted.items())
    return Draft(summary=f"set {service} upstream {what} on {where}, without a restart", diff=diff + notes,
                 preconditions=[f"{service}-{h} answers its admin endpoint" for h in hosts],
                 state=state, details={"hosts": hosts, "edit": edit},
                 changes=live or bool(edit and edit.changed))


def apply(ctx: Context, params: dict, draft: Draft) -> Outcome:
    wanted, service, done = _wanted(params), params["service"], []
    for host in draft.details["hosts"]:
        try:
            reply = _call(ctx, host, service, "PUT", wanted)
        except Unavailable as exc:
            return Outcome(False, f"{exc} (done: {', '.join(done) or 'none'})", {"hosts": done})
        done.append(f"{service}-{host}" + ("" if reply.get("changed") else " (already)"))
    edit = draft.details["edit"]
    if edit is not None:
        try:
            writeback.apply_edit(edit)
        except writeback.WritebackError as exc:
            return Outcome(False, f"switched {', '.join(done)}, but the cluster file was not written: {exc}",
                           {"hosts": done})
    return Outcome(True, f"switched {', '.join(done)}" + (f"; {ctx.cluster_path.name} updated"
                                                        if edit is not None and edit.changed else ""),
                   {"hosts": done, "cluster_file": bool(edit and edit.changed)})
