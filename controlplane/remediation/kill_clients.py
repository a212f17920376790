"""kill_clients {shard, host, idle_over_s}: close every connection one host holds to one shard.

The talk's fix, done by the engineers by hand with `CLIENT KILL`: the testing cluster's leaked,
idle connections filled a production shard. The kill goes over the control plane's admin
connection (admin.py), so it works when the shard is at maxclients and refuses everyone else.
Clients are picked from a fresh CLIENT LIST at apply time by their source address (the host's
loopback address locally) and, with `idle_over_s`, by idle time; they are killed by id in
pipelined batches, and the list is read again until none is left (at most three rounds: a
client that reconnects at once is not a leak).

The plan's fingerprint is the shard's run id and the host's address: a restarted shard or a host
moved to another address makes the plan stale. The number of clients is not in it -- a growing
leak must not make every plan stale before it can be applied.
"""

from __future__ import annotations

from typing import Any

from collectors.resp import RedisError
from controlplane.remediation.base import Context, Draft, Outcome, Param, Unavailable

NAME = "kill_clients"
VERIFY = ("leaked_clients",)
BATCH = 500
ROUNDS = 3
EXAMPLES = 8


def _shards(cf) -> list[str]:
    return [s.name for s in cf.redis.shards]


def _hosts(cf) -> list[str]:
    return list(cf.hosts)


PARAMS = {
    "shard": Param(str, required=True, choices=_shards, help="the shard, e.g. shard2"),
    "host": Param(str, required=True, choices=_hosts, help="the host whose connections to close"),
    "idle_over_s": Param(float, minimum=0, maximum=86400 * 365,
                         help="only connections idle this long or longer; all of them when absent"),
}


def subject(cf, params: dict) -> str:
    return f"shard:{params['shard']}"


def parse_clients(raw: bytes | str) -> list[dict[str, Any]]:
    """CLIENT LIST -> [{id, ip, addr, idle, age, name, cmd}], tolerant of fields it does not know
    and of '=' inside values (a client name may hold one).

        id=8 addr=127.0.1.9:55915 laddr=127.0.2.2:6379 fd=12 name= age=2 idle=2 flags=N ... cmd=get
    """
    out = []
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    for line in raw.splitlines():
        fields = dict(part.split("=", 1) for part in line.split(" ") if "=" in part)
        try:
            cid, addr = int(fields["id"]), fields["addr"]
            idle, age = int(fields.get("idle", "0")), int(fields.get("age", "0"))
        except (KeyError, ValueError):
            continue
        out.append({"id": cid, "addr": addr, "ip": addr.rpartition(":")[0].strip("[]"), "idle": idle, "age": age,
                    "name": fields.get("name", ""), "cmd": fields.get("cmd", "")})
    return out


def matching(clients: list[dict], ip: str, idle_over_s: float | None) -> list[dict]:
    """`ip`'s clients idle for `idle_over_s` or longer. CLIENT LIST floors idle to whole seconds,
    so `idle=2` is 2.0-2.99 s: compared with `>`, a leak the detector counted as idle after 2 s
    was left alone for another second, and a fix applied within that second (the detector sees a
    leak in its first CLIENT LIST) killed a third of it and reported nothing left."""
    return [c for c in clients if c["ip"] == ip and (idle_over_s is None or c["idle"] >= idle_over_s)
            and c["name"] != "chatops-admin"]


def _client_list(ctx: Context, shard: str) -> list[dict]:
    try:
        return parse_clients(ctx.admin.call(shard, "CLIENT", "LIST"))
    except (OSError, RedisError) as exc:
        raise Unavailable(f"CLIENT LIST on {shard} failed: {exc}") from None


def _run_id(ctx: Context, shard: str) -> str:
    try:
        info = ctx.admin.call(shard, "INFO", "server")
    except (OSError, RedisError) as exc:
        raise Unavailable(f"INFO on {shard} failed: {exc}") from None
    if isinstance(info, bytes):
        info = info.decode("utf-8", "replace")
    return next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("run_id:")), "")


def plan(ctx: Context, params: dict) -> Draft:
    shard, host, idle = params["shard"], params["host"], params["idle_over_s"]
    ip = ctx.cf.address(host)
    if host == "controlplane" or ip == ctx.cf.controlplane.listen.address:
        raise Unavailable("refusing to kill the control plane's own connections")
    clients = _client_list(ctx, shard)
    from_host = [c for c in clients if c["ip"] == ip]
    doomed = matching(clients, ip, idle)
    which = f"idle over {idle:g}s" if idle is not None else "all"
    summary = f"kill {len(doomed)} connections from {host} ({ip}) to {shard} ({which}, of {len(from_host)} " \
              f"from {host} and {len(clients)} on {shard})"
    diff = [f"- {len(doomed)} connections {host} -> {shard}"]
    diff += [f"    id={c['id']} addr={c['addr']} age={c['age']}s idle={c['idle']}s cmd={c['cmd'] or '-'}"
             for c in sorted(doomed, key=lambda c: -c["idle"])[:EXAMPLES]]
    if len(doomed) > EXAMPLES:
        diff.append(f"    ... and {len(doomed) - EXAMPLES} more")
    return Draft(summary=summary, diff=diff,
                 preconditions=[f"{shard} answers on the control plane's admin connection",
                                f"{host} is {ip}"],
                 state={"run_id": _run_id(ctx, shard), "ip": ip},
                 details={"count": len(doomed)}, changes=bool(doomed))


def apply(ctx: Context, params: dict, draft: Draft) -> Outcome:
    shard, ip, idle = params["shard"], draft.state["ip"], params["idle_over_s"]
    killed = 0
    left: list[dict] = []
    for _ in range(ROUNDS):
        left = matching(_client_list(ctx, shard), ip, idle)
        if not left:
            break
        for i in range(0, len(left), BATCH):
            batch = left[i:i + BATCH]
            try:
                with ctx.admin.connection(shard) as conn:
                    replies = conn.pipeline([("CLIENT", "KILL", "ID", str(c["id"])) for c in batch])
            except (OSError, RedisError) as exc:
                return Outcome(False, f"killed {killed}, then CLIENT KILL failed: {exc}", {"killed": killed})
            killed += sum(1 for r in replies if r == 1)
        left = matching(_client_list(ctx, shard), ip, idle)
    detail = f"killed {killed} connections from {params['host']} on {shard}; {len(left)} left"
    return Outcome(not left, detail, {"killed": killed, "left": len(left)})
