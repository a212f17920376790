"""relocate_shard {name, host, port}: move a shard to another Redis host and port, live, losing no
write. This moves a hot shard off a host whose CPU is shared.

The local supervisor keys the Redis processes it runs by (name, address, port), and a shard's
primary (`redis-shard0`) and its replica (`redis-shard0-replica`) are different names: a replica
cannot become the primary's process in place. Were the cluster file to say "shard0 is at the
replica's address" while the data lives in the replica, the supervisor would start an empty primary
there and stop the replica, losing the shard. So the data goes through a replica on a second port
of the target host (`via_port`) and lands in the primary's own process, in two hops:

1. `redis.shards[i].replica = {host, via_port}` is written; the supervisor starts it as a replica of
   the primary. We wait until it answers and its sync is done (role:slave, master_link_status:up,
   master_sync_in_progress:0).
2. Switch to it: CLIENT PAUSE WRITE on the primary (bounded by Redis itself, and lifted in
   `finally`), wait until the replica's offset equals the primary's, compare DBSIZE, REPLICAOF NO ONE
   on the replica and at once make the old primary its replica (so that no write can land on the
   old one even if its pause ran out: anything still connected there gets READONLY, never a write
   into a dead end), point every chat host's listener at the new one (runtime API `set server`),
   `shutdown sessions server` so pooled connections reconnect there, CLIENT UNPAUSE.
3. The shard's host and port become the target in the file (the via replica stays): the supervisor
   starts the shard's process there and stops the old primary. It is made a replica of the via
   process (REPLICAOF) and synced.
4. Switch to it, exactly as in 2.
5. The replica entry is removed from the file (the supervisor stops the via process), and every
   chat host's HAProxy config is regenerated, checked and reloaded hitlessly, so the config on disk
   says what the runtime was told.
6. Verify: the shard answers as role:master, every chat host's listener reaches that very process
   (its run_id), the key count matches and a sample of keys taken before the move is there.

Each step is checked before the next. An apply that stopped half way is resumed by applying again:
the phase is read from the file (1: replica written, 3: shard moved, 5: replica removed) and from
the live roles and runtime addresses (a switch already made is finished, not repeated).

A replica the shard already has on the target host serves as the via replica when its port is given
as `via_port` (the file is then as after step 1). Every chat host's HAProxy lock and the slot map's
are held during the apply: between the first switch and the final reload, a reload by another apply
would send a listener back to the old primary, and a slot migration writes to the shards by address.

Refused: profile `remote` (starting Redis on a real host needs the Ansible playbook, not shipped
yet), the place the shard already is, a target port the file already uses on that host (the
cluster file's own checks say so), and a shard that already has a replica other than this move's.
"""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import dataclass, field

from cluster import checks, clusterfile, writeback
from cluster.loopback import port_free
from collectors import haproxy as haproxy_stats
from collectors.base import source_address
from collectors.haproxy_runtime import RuntimeAPIError, command
from collectors.redis import admin_auth, parse_info
from collectors.resp import Conn, RedisError
from controlplane.haproxy import config as haproxy_config
from controlplane.remediation import proxy_reload
from controlplane.remediation.base import (
    BadParams,
    Context,
    Draft,
    Outcome,
    Param,
    RemediationError,
    StalePlan,
    Unavailable,
)
from controlplane.remediation.server_state import _check_name

log = logging.getLogger(__name__)

NAME = "relocate_shard"
WRITES_CLUSTER_FILE = True
# Between the first switch and the final reload the listeners' runtime addresses are ahead of the
# configs on disk: a reload by another apply meanwhile would point a chat host back at the old
# primary (READONLY by then). Every chat host's lock keeps those out until this is done, and the
# slot map's keeps a slot migration (which writes to the shards by address) from running across
# the switch.
ALSO_LOCKS = ("haproxy:all", "slotmap")
VERIFY = ("hot_shard",)

START_TIMEOUT_S = 30.0    # for the supervisor to start a process the file now names
SYNC_TIMEOUT_S = 120.0    # a full sync: Redis waits 5 s (repl-diskless-sync-delay), then transfers
PAUSE_MS = 5000           # CLIENT PAUSE's own bound: writes resume by themselves after this
CATCH_UP_S = 2.0          # how long the replica may take to reach the paused primary's offset
RUNTIME_TIMEOUT_S = 1.0   # each HAProxy runtime command during the pause
STOP_WAIT_S = 15.0        # for the supervisor to stop a process the file no longer names
CONN_TIMEOUT_S = 5.0
SAMPLE_KEYS = 100         # keys looked up again on the shard's new process after the move
VIA_CANDIDATES = 100      # ports tried after `port` when choosing the via port


class RelocateError(RemediationError):
    """A step did not complete; what was done before it stays done, and applying again resumes."""


def _hosts(cf) -> list[str]:
    chat = {h for h, _ in cf.chat_hosts()}
    return [h for h in cf.hosts if h not in chat]


def _shards(cf) -> list[str]:
    return [s.name for s in cf.redis.shards]


PARAMS = {
    "name": Param(str, required=True, choices=_shards, help="the shard to move"),
    "host": Param(str, required=True, choices=_hosts, help="the Redis host it moves to"),
    "port": Param(int, required=True, minimum=1024, maximum=65535, help="its port there"),
    "via_port": Param(int, minimum=1024, maximum=65535,
                      help="a free port on host for the replica the data passes through (default: chosen "
                           "when the plan is made)"),
    "from": Param(str, help="host:port of the shard when the plan was made (set when the plan is made)"),
}


def subject(cf, params: dict) -> str:
    return f"shard:{params['name']}"


@dataclass(frozen=True)
class Place:
    host: str
    address: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def endpoint(self) -> tuple[str, int]:
        return (self.address, self.port)


def _place(cf, host: str, port: int) -> Place:
    return Place(host, cf.address(host), port)


# -- reading the cluster file -----------------------------------------------------------------------

def _refuse_remote(cf) -> None:
    if cf.profile != "local":
        raise BadParams("host", "profile remote: starting Redis on a real host needs the Ansible playbook, which "
                                "chatops does not ship yet; move the shard with your own tooling, then write "
                                "the cluster file and `chatops proxy reload`")


def _shard(cf, name: str):
    for i, s in enumerate(cf.redis.shards):
        if s.name == name:
            return i, s
    raise BadParams("name", f"{name!r} is not a shard ({', '.join(_shards(cf))})")


def _parse_from(cf, text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if host not in cf.hosts or not port.isdigit():
        raise BadParams("from", f"{text[:60]!r} is not host:port of a host in the cluster file")
    return host, int(port)


def _used(cf) -> set[tuple[str, int]]:
    return {(cf.address(h), p) for _, h, p in checks._sockets(cf)}


def _choose_via(cf, host: str, port: int) -> int:
    address, used = cf.address(host), _used(cf)
    for candidate in range(port + 1, min(65536, port + 1 + VIA_CANDIDATES)):
        if (address, candidate) not in used and port_free(address, candidate):
            return candidate
    raise BadParams("via_port", f"no free port in {port + 1}..{port + VIA_CANDIDATES} on {host}; give one")


# The phases, read from the file: where the apply stands.
START, REPLICA, MOVED, WRITTEN = "start", "replica written", "shard moved", "replica removed"


def _phase(cf, params: dict, i: int, shard, origin: tuple[str, int] | None) -> str:
    host, port, via = params["host"], params["port"], params["via_port"]
    replica = (shard.replica.host, shard.replica.port) if shard.replica else None
    here = (shard.host, shard.port)
    if here == (host, port):
        if replica is None:
            return WRITTEN
        if replica == (host, via):
            return MOVED
    elif origin is not None and here != origin:
        raise StalePlan(f"{params['name']} is now on {here[0]}:{here[1]}, not on {origin[0]}:{origin[1]} where it "
                        "was when the plan was made; plan again")
    elif replica is None:
        return START
    elif replica == (host, via):
        return REPLICA
    if replica == (host, port):
        raise BadParams("port", f"{params['name']}'s replica already runs at {host}:{port}. The supervisor runs a "
                                "shard's primary and its replica as different processes, so that replica cannot "
                                "become the primary in place: move the shard to another port of "
                                f"{host} with via_port={port} (that replica then carries the data on the way), or "
                                f"remove redis.shards.{i}.replica from the cluster file and plan again")
    raise BadParams("name", f"{params['name']} already has a replica, on {replica[0]}:{replica[1]}; this move passes "
                            "the data through a replica of its own and the cluster file holds one per shard: "
                            f"remove redis.shards.{i}.replica from the cluster file (the supervisor stops it) and "
                            f"plan again" + (f", or give via_port={replica[1]} to use it on the way"
                                             if replica[0] == host else ""))


def _edit(ctx: Context, changes: dict, param: str, what: str) -> writeback.Edit:
    try:
        return writeback.plan_edit(ctx.cluster_path, changes)
    except writeback.WritebackError as exc:
        raise BadParams(param, f"the cluster file cannot take {what}: {exc}") from None


# -- HAProxy's runtime API -------------------------------------------------------------------------

def _backend(shard: str) -> tuple[str, str]:
    return _check_name("backend", f"redis-{shard}"), _check_name("server", shard)


def _runtime_addr(ctx: Context, host: str, shard: str) -> tuple[str, int]:
    backend, server = _backend(shard)
    text = command(ctx.run.haproxy_socket(host), f"show servers state {backend}")
    row = next((r for r in haproxy_stats.parse_servers_state(text).servers
                if r.get("be_name") == backend and r.get("srv_name") == server), None)
    if row is None:
        raise RuntimeAPIError(f"{host}'s HAProxy has no server {backend}/{server}: {text.strip()[:200]}")
    return str(row["srv_addr"]), int(row["srv_port"])


def _point(ctx: Context, host: str, shard: str, to: Place, timeout: float = 5.0) -> None:
    backend, server = _backend(shard)
    cmd = f"set server {backend}/{server} addr {to.address} port {to.port}"
    reply = command(ctx.run.haproxy_socket(host), cmd, timeout).strip()
    # It answers what changed ("IP changed from ... to ..."), or that nothing had to.
    if reply and "changed" not in reply and "no need to change" not in reply:
        raise RuntimeAPIError(f"{host}: {cmd!r}: {reply[:200]}")


def _drop_sessions(ctx: Context, host: str, shard: str, timeout: float = 5.0) -> None:
    backend, server = _backend(shard)
    cmd = f"shutdown sessions server {backend}/{server}"
    reply = command(ctx.run.haproxy_socket(host), cmd, timeout).strip()
    if reply:
        raise RuntimeAPIError(f"{host}: {cmd!r}: {reply[:200]}")


def _runtime(ctx: Context, cf, shard: str) -> dict[str, tuple[str, int]]:
    out = {}
    for host, _ in cf.chat_hosts():
        try:
            out[host] = _runtime_addr(ctx, host, shard)
        except RuntimeAPIError as exc:
            raise Unavailable(f"{host}'s HAProxy runtime API: {exc}") from None
    return out


# -- Redis -----------------------------------------------------------------------------------------

def _conn(cf, place: Place, timeout: float = CONN_TIMEOUT_S) -> Conn:
    return Conn(place.address, place.port, timeout, source_address(cf), admin_auth(cf))


def _replication(conn: Conn) -> dict:
    return parse_info(conn.call("INFO", "replication")).get("replication", {})


def _answers(place: Place) -> bool:
    try:
        with socket.create_connection(place.endpoint, timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _wait(predicate, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


def _replica_of(info: dict, place: Place) -> bool:
    return (info.get("role") == "slave" and str(info.get("master_host")) == place.address
            and info.get("master_port") == place.port)


def _synced(info: dict, primary: Place) -> bool:
    return (_replica_of(info, primary) and info.get("master_link_status") == "up"
            and info.get("master_sync_in_progress") == 0)


@dataclass
class Progress:
    did: list[str] = field(default_factory=list)
    pauses_ms: list[float] = field(default_factory=list)
    keys_at_switch: int | None = None

    def add(self, line: str) -> None:
        log.info("relocate_shard: %s", line)
        self.did.append(line)


def _hop(ctx: Context, cf, shard: str, src: Place, dst: Place, p: Progress) -> None:
    """Carry the shard's data from `src` (its primary now) to `dst` and make `dst` the primary every
    chat host's listener reaches. Finishes a switch an earlier apply left half made."""
    if not _wait(lambda: _answers(dst), START_TIMEOUT_S):
        raise RelocateError(f"{dst} ({dst.address}:{dst.port}) did not answer within {START_TIMEOUT_S:.0f} s: "
                            "is `chatops up` running? (its log says why)")
    hosts = [h for h, _ in cf.chat_hosts()]
    runtime = _runtime(ctx, cf, shard)
    with _conn(cf, dst) as d:
        info = _replication(d)
        if info.get("role") == "master" and dst.endpoint in runtime.values():
            _finish_switch(ctx, cf, shard, src, dst, runtime, p)
            return
        if not _replica_of(info, src):
            d.call("REPLICAOF", src.address, str(src.port))
            p.add(f"REPLICAOF {src} on {dst}")
        deadline = time.monotonic() + SYNC_TIMEOUT_S
        while not _synced(info, src):
            if time.monotonic() > deadline:
                raise RelocateError(
                    f"{dst} did not finish its sync from {src} within {SYNC_TIMEOUT_S:.0f} s: role "
                    f"{info.get('role')}, master_link_status {info.get('master_link_status')}, "
                    f"master_sync_in_progress {info.get('master_sync_in_progress')} (its log in the run "
                    "directory says why)")
            time.sleep(0.1)
            info = _replication(d)
            if info.get("role") == "master":      # restarted by the supervisor as an empty primary
                d.call("REPLICAOF", src.address, str(src.port))
        p.add(f"{dst} is a replica of {src}, synced")
    _switch(ctx, cf, shard, src, dst, hosts, p)


def _switch(ctx: Context, cf, shard: str, src: Place, dst: Place, hosts: list[str], p: Progress) -> None:
    problems: list[str] = []
    with _conn(cf, src, timeout=2.0) as s, _conn(cf, dst, timeout=2.0) as d:
        # First let the replica reach the offset the primary has now, writes flowing, so that the
        # pause waits only for the last few writes; a replica that cannot is caught by the bound below.
        now = _replication(s).get("master_repl_offset")
        if isinstance(now, int):
            _wait(lambda: (_replication(d).get("slave_repl_offset") or 0) >= now, 5 * CATCH_UP_S, 0.005)
        started = time.monotonic()
        s.call("CLIENT", "PAUSE", str(PAUSE_MS), "WRITE")
        try:
            deadline = started + CATCH_UP_S
            while True:
                primary = _replication(s).get("master_repl_offset")
                got = _replication(d).get("slave_repl_offset")
                if isinstance(primary, int) and got == primary:
                    break
                if time.monotonic() > deadline:
                    raise RelocateError(f"{dst} was at offset {got} of {src}'s {primary} after {CATCH_UP_S:g} s of "
                                        "paused writes; nothing was switched, writes resumed")
                time.sleep(0.001)
            caught_up = (time.monotonic() - started) * 1000
            src_keys, dst_keys = s.call("DBSIZE"), d.call("DBSIZE")
            if src_keys != dst_keys:
                raise RelocateError(f"at the same offset {src} has {src_keys} keys and {dst} {dst_keys}; nothing "
                                    "was switched, writes resumed")
            if time.monotonic() - started > PAUSE_MS / 1000 - 1.0:
                raise RelocateError(f"{src}'s pause would end before the switch; nothing was switched, writes resumed")
            # From here until `src` follows `dst`, `src` must take no write: it is paused, and it
            # follows `dst` right after the promotion, before anything else can take time, so that
            # even a pause ended by its bound cannot let a write land where nothing reads it.
            d.call("REPLICAOF", "NO", "ONE")
            s.call("REPLICAOF", dst.address, str(dst.port))
            pointed = []
            for h in hosts:
                try:
                    _point(ctx, h, shard, dst, timeout=RUNTIME_TIMEOUT_S)
                    pointed.append(h)
                except RuntimeAPIError as exc:
                    problems.append(str(exc))
            for h in pointed:
                try:
                    _drop_sessions(ctx, h, shard, timeout=RUNTIME_TIMEOUT_S)
                except RuntimeAPIError as exc:
                    problems.append(str(exc))
        finally:
            paused = (time.monotonic() - started) * 1000
            try:
                s.call("CLIENT", "UNPAUSE")
            except (OSError, RedisError) as exc:
                log.warning("CLIENT UNPAUSE on %s failed (the pause ends by itself after %d ms): %s",
                            src, PAUSE_MS, exc)
    p.pauses_ms.append(round(paused, 1))
    p.keys_at_switch = dst_keys
    p.add(f"switched {shard} from {src} to {dst}: writes paused {paused:.1f} ms ({caught_up:.1f} ms of it for the "
          f"replica to reach offset {primary}), {dst_keys} keys; "
          f"{src} is now its replica; {len(pointed)} of {len(hosts)} listener(s) point at {dst}")
    if problems:
        raise RelocateError("; ".join(problems) + f" (a listener still at {src} gets READONLY for writes; apply "
                            "again to finish the switch)")


def _finish_switch(ctx: Context, cf, shard: str, src: Place, dst: Place,
                   runtime: dict[str, tuple[str, int]], p: Progress) -> None:
    """An earlier apply promoted `dst` and pointed at least one listener at it: point the rest."""
    late = [h for h, addr in runtime.items() if addr != dst.endpoint]
    for h in late:
        try:
            _point(ctx, h, shard, dst)
            _drop_sessions(ctx, h, shard)
        except RuntimeAPIError as exc:
            raise RelocateError(f"finishing the switch to {dst}: {exc}") from None
    if _answers(src):
        with _conn(cf, src) as s:
            if not _replica_of(_replication(s), dst):
                s.call("REPLICAOF", dst.address, str(dst.port))
            s.call("CLIENT", "UNPAUSE")
    p.add(f"the switch to {dst} was already made" + (f"; pointed {', '.join(late)} at it" if late else ""))


def _sample(cf, place: Place) -> dict[str, int]:
    """Up to SAMPLE_KEYS random keys and their PTTL, to look up again after the move."""
    with _conn(cf, place) as c:
        keys = {k for k in c.pipeline([("RANDOMKEY",)] * SAMPLE_KEYS) if isinstance(k, bytes)}
        ordered = sorted(keys)
        ttls = c.pipeline([("PTTL", k) for k in ordered])
    return {k.decode("utf-8", "replace"): t for k, t in zip(ordered, ttls) if isinstance(t, int) and t != -2}


# -- the action ---------------------------------------------------------------------------------------

def resolve(ctx: Context, params: dict) -> tuple[list[dict], list[str]]:
    """Fix where the shard is now and the via port, so the apply moves what was reviewed."""
    cf = ctx.cf
    _refuse_remote(cf)
    _i, shard = _shard(cf, params["name"])
    out, notes = dict(params), []
    here = (shard.host, shard.port)
    if out.get("from") is None and here != (params["host"], params["port"]):
        out["from"] = f"{shard.host}:{shard.port}"
    if here == (params["host"], params["port"]) and shard.replica is None:
        # A plan that stopped after writing the file is finished by applying that plan again.
        raise BadParams("port", f"{params['name']} is already on {params['host']}:{params['port']} (if a chat "
                                "host's HAProxy still points elsewhere, `chatops proxy reload` it)")
    if out.get("via_port") is None:
        out["via_port"] = _choose_via(cf, params["host"], params["port"])
        notes.append(f"the data passes through a replica on {params['host']}:{out['via_port']}, a port free now")
    return [out], notes


def plan(ctx: Context, params: dict) -> Draft:
    cf = ctx.cf
    _refuse_remote(cf)
    name, host, port = params["name"], params["host"], params["port"]
    i, shard = _shard(cf, name)
    if params.get("via_port") is None:
        params = {**params, "via_port": _choose_via(cf, host, port)}
    via = params["via_port"]
    if via == port:
        raise BadParams("via_port", "must differ from port: the data passes through a second process")
    origin = _parse_from(cf, params["from"]) if params.get("from") else None
    phase = _phase(cf, params, i, shard, origin)
    if origin is None and phase in (START, REPLICA):
        origin = (shard.host, shard.port)
    target, through = _place(cf, host, port), _place(cf, host, via)
    source = _place(cf, *origin) if origin else None

    # The file as it will end: the shard at the target, no replica. Its checks refuse a port taken.
    net = {f"redis.shards.{i}.host": host, f"redis.shards.{i}.port": port}
    if shard.replica is not None:
        net[f"redis.shards.{i}.replica"] = writeback.REMOVE
    final_edit = _edit(ctx, net, "port", f"{name} on {host}:{port}")
    first_edit = None
    if phase == START:
        first_edit = _edit(ctx, {f"redis.shards.{i}.replica": {"host": host, "port": via}}, "via_port",
                           f"a replica of {name} on {host}:{via}")
        if not port_free(through.address, via):
            raise BadParams("via_port", f"{through.address}:{via} ({host}) is in use by a process the cluster file "
                                        "does not name; choose another via_port")
    if phase in (START, REPLICA) and not port_free(target.address, port):
        raise BadParams("port", f"{target.address}:{port} ({host}) is in use by a process the cluster file does "
                                "not name")
    final_cf = clusterfile.parse(final_edit.new_text, source=str(ctx.cluster_path))
    reload_plan = proxy_reload.checked_plan(final_cf, ctx.run)
    runtime = _runtime(ctx, cf, name)

    order = [START, REPLICA, MOVED, WRITTEN]
    at = order.index(phase)

    def mark(done_at: str, switched_to: Place | None = None) -> str:
        """` (done)` once the file says the apply got past this step; a switch the runtime shows
        made (by an apply that stopped before writing the file) is finished, not repeated."""
        if at >= order.index(done_at):
            return " (done)"
        if switched_to is not None and order.index(done_at) == at + 1 and switched_to.endpoint in runtime.values():
            return " (made by an earlier apply; finished, not repeated)"
        return ""

    backend, server = _backend(name)
    src_text = str(source) if source else "its primary"
    switch = (f"CLIENT PAUSE {PAUSE_MS} WRITE on {{src}}; wait until {{dst}}'s offset equals it (at most "
              f"{CATCH_UP_S:g} s) and compare DBSIZE; REPLICAOF NO ONE on {{dst}}; REPLICAOF {{dst}} on {{src}}; "
              f"on every chat host `set server {backend}/{server} addr {{addr}}`, then "
              f"`shutdown sessions server {backend}/{server}`; CLIENT UNPAUSE")
    diff = [(f"# {name} moves from {src_text} to {target}, its data passing through a replica on {through} "
            "(a replica's process cannot become the primary's in place: the supervisor runs them under "
            "different names)"),
            (f"1. cluster file: a replica of {name} on {through}; the supervisor starts it as a replica of "
            f"{src_text}{mark(REPLICA)}")]
    if first_edit is not None:
        diff += ["   " + ln for ln in first_edit.diff.splitlines()]
    diff += [
        (f"2. wait until {through} answers and its sync is done (role:slave, master_link_status:up, "
        f"master_sync_in_progress:0; at most {SYNC_TIMEOUT_S:.0f} s){mark(MOVED, through)}"),
        "3. switch: " + switch.format(src=src_text, dst=through, addr=f"{through.address} port {via}")
        + mark(MOVED, through),
        (f"4. cluster file: {name} on {target}, replica {through} kept; the supervisor starts {target} and stops "
        f"{src_text}{mark(MOVED)}"),
        f"5. REPLICAOF {through} on {target}; wait for its sync{mark(WRITTEN, target)}",
        "6. switch: " + switch.format(src=through, dst=target, addr=f"{target.address} port {port}")
        + mark(WRITTEN, target),
        f"7. cluster file: the replica entry removed; the supervisor stops {through}{mark(WRITTEN)}",
        "   net change of the cluster file:",
    ]
    diff += ["   " + ln for ln in final_edit.diff.splitlines()]
    diff.append(f"8. HAProxy on {len(reload_plan.hosts)} chat host(s): regenerate, haproxy -c, hitless reload")
    diff += ["   " + ln for ln in reload_plan.describe().splitlines()
             if ln.startswith(("==", "+", "-")) and not ln.startswith(("+++", "---"))]
    for h, (addr, p) in runtime.items():
        state = "already there" if (addr, p) == target.endpoint else f"-> {target.address}:{port} at step 6"
        diff.append(f"   {h} runtime: {backend}/{server} at {addr}:{p} {state}")
    diff.append(f"9. verify: {target} answers as role:master, every chat host's listener reaches it, its keys "
                "match the count at the switch and a sample taken before the move")

    stale_hosts = [h.host for h in reload_plan.hosts if h.changed]
    stale_runtime = [h for h, addr in runtime.items() if addr != target.endpoint]
    changes = phase != WRITTEN or bool(stale_hosts or stale_runtime)
    if not changes:
        diff.insert(0, f"# nothing to do: {name} is on {target} and every chat host's HAProxy says so")
    state = {"shard": name, "index": i, "shards": _shards(cf), "from": params.get("from"), "to": str(target),
             "via": via}
    summary = f"relocate {name} from {src_text} to {target}"
    return Draft(summary=summary, diff=diff,
                 preconditions=[("`chatops up` is running (its supervisor starts and stops the Redis processes "
                                "the cluster file names)"), "Redis >= 6.2 (CLIENT PAUSE WRITE)",
                                "every chat host's HAProxy admin socket answers",
                                "the regenerated HAProxy configs pass haproxy -c"],
                 state=state,
                 details={"phase": phase, "index": i, "source": source, "target": target, "through": through,
                          "first_edit": first_edit},
                 changes=changes)


def _write(ctx: Context, changes: dict, p: Progress, what: str):
    try:
        writeback.apply_edit(writeback.plan_edit(ctx.cluster_path, changes))
    except writeback.WritebackError as exc:
        raise RelocateError(f"the cluster file was not changed ({what}): {exc}") from None
    p.add(f"{ctx.cluster_path.name}: {what}")
    return _follow(ctx)


def _follow(ctx: Context):
    """The file as it is now; the running control plane takes it at once (its admin connections and
    scrapes follow the shard), not only when the whole move is over."""
    cf = clusterfile.load(ctx.cluster_path).spec
    if ctx.on_cluster_change is not None:
        ctx.on_cluster_change(cf)
    return cf


def _gone(place: Place) -> bool:
    return _wait(lambda: not _answers(place), STOP_WAIT_S, 0.1)


def apply(ctx: Context, params: dict, draft: Draft) -> Outcome:
    d = draft.details
    phase, i = d["phase"], d["index"]
    source, target, through = d["source"], d["target"], d["through"]
    name = params["name"]
    p = Progress()
    sample: dict[str, int] = {}
    started = time.monotonic()
    try:
        cf = ctx.cf
        if phase == START:
            sample = _sample(cf, source)
            edit = d["first_edit"]
            try:
                writeback.apply_edit(edit)
            except writeback.WritebackError as exc:
                return Outcome(False, f"the cluster file was not changed: {exc}")
            p.add(f"{ctx.cluster_path.name}: replica of {name} on {through}")
            cf = _follow(ctx)
        if phase in (START, REPLICA):
            if not sample and _answers(source):
                sample = _sample(cf, source)
            _hop(ctx, cf, name, source, through, p)
            cf = _write(ctx, {f"redis.shards.{i}.host": target.host, f"redis.shards.{i}.port": target.port}, p,
                        f"{name} on {target}, replica {through} kept")
        if phase in (START, REPLICA, MOVED):
            if not sample and _answers(through):
                sample = _sample(cf, through)
            _hop(ctx, cf, name, through, target, p)
            cf = _write(ctx, {f"redis.shards.{i}.replica": writeback.REMOVE}, p, "replica entry removed")
        reload_plan = proxy_reload.plan_reload(cf, ctx.run)
        for hp in reload_plan.hosts:
            r = proxy_reload._reload_host(ctx.run, hp)
            if not r.ok:
                raise RelocateError(f"HAProxy on {hp.host}: {r.detail}")
        p.add(f"HAProxy regenerated, checked and reloaded on {len(reload_plan.hosts)} chat host(s)")
        verified = _verify(ctx, cf, name, i, target, sample, started, p)
        old = [pl for pl in (source, through) if pl is not None and pl.endpoint != target.endpoint]
        left = [str(pl) for pl in old if not _gone(pl)]
        p.add(f"still answering: {', '.join(left)} (is `chatops up` following the cluster file? its log says)"
              if left else f"the supervisor stopped {' and '.join(map(str, old))}")
    except (RelocateError, StalePlan, Unavailable) as exc:
        return Outcome(False, "; ".join(p.did + [str(exc)]), {"steps": p.did, "pauses_ms": p.pauses_ms})
    except (OSError, RedisError, RuntimeAPIError, clusterfile.ClusterFileError, proxy_reload.PlanError,
            haproxy_config.RenderError) as exc:
        return Outcome(False, "; ".join(p.did + [f"{type(exc).__name__}: {exc}; apply again to resume"]),
                       {"steps": p.did, "pauses_ms": p.pauses_ms})
    return Outcome(True, "; ".join(p.did), {"shard": name, "from": str(source) if source else None,
                                             "to": str(target), "via": str(through), "pauses_ms": p.pauses_ms,
                                             **verified, "steps": p.did})


def _verify(ctx: Context, cf, name: str, i: int, target: Place, sample: dict[str, int], started: float,
            p: Progress) -> dict:
    with _conn(cf, target) as c:
        info = _replication(c)
        if info.get("role") != "master":
            raise RelocateError(f"{target} answers as role:{info.get('role')}, not master")
        run_id = parse_info(c.call("INFO", "server")).get("server", {}).get("run_id")
        keys = c.call("DBSIZE")
        present = c.pipeline([("EXISTS", k) for k in sample]) if sample else []
    for h, _ in cf.chat_hosts():
        listener = Place(h, cf.address(h), cf.listener_port(i))
        try:
            with _conn(cf, listener) as c:
                if c.call("PING") != "PONG":
                    raise RelocateError(f"{h}'s listener :{listener.port} did not answer PONG")
                seen = parse_info(c.call("INFO", "server")).get("server", {}).get("run_id")
        except (OSError, RedisError) as exc:
            raise RelocateError(f"{h}'s listener {listener.address}:{listener.port} for {name}: {exc}") from None
        if seen != run_id:
            raise RelocateError(f"{h}'s listener :{listener.port} reaches another Redis (run_id {seen}), not {target}")
    # Keys that could not have expired meanwhile must be there; those with a short TTL may be gone.
    elapsed_ms = (time.monotonic() - started) * 1000
    durable = [k for k, t in sample.items() if t == -1 or t > elapsed_ms + 60_000]
    found = {k for k, n in zip(sample, present) if n == 1}
    missing = [k for k in durable if k not in found]
    if durable and len(missing) > len(durable) // 10:
        raise RelocateError(f"{len(missing)} of {len(durable)} keys sampled before the move are not on {target} "
                            f"(e.g. {missing[0]!r})")
    p.add(f"verified: {target} is master with {keys} keys ({p.keys_at_switch} at the switch), reached through "
          f"{len(cf.chat_hosts())} listener(s); {len(found)} of {len(sample)} sampled keys present")
    return {"keys": keys, "keys_at_switch": p.keys_at_switch, "sampled": len(sample), "sampled_present": len(found)}
