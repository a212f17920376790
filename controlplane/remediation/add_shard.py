"""add_shard {name, host, port, move}: the talk's 2:56 pm fix as one planned, audited operation.

In 2014 adding a Redis shard took Puppet changes, HAProxy changes, copy-pasted Redis deploys and a
code change. Here, in order, each step verified before the next:

1. the shard is appended to the cluster file (validated as a whole before it replaces the old);
2. its redis-server starts: the local supervisor notices the file and starts it; we wait until it
   answers PING;
3. every chat host's HAProxy config is regenerated with the new listener (listener_base_port + i),
   checked with `haproxy -c`, and reloaded without dropping a connection;
4. the slot map grows by the shard (owning nothing) and is published, so every clue opens a pool
   to the new listener;
5. slots move to it from the other shards, chosen by load when the plan was made (`resolve`), so
   it ends near the mean load: the exact slots are in the plan.

Profile `remote` needs the Ansible playbook to start Redis on a real host; until it exists this
action refuses there rather than edit a file nothing would act on.
"""

from __future__ import annotations

import socket
import time

from chat.sharding import SlotMap, describe_slots, parse_slots
from cluster import writeback
from collectors.redis import find_shard
from controlplane.remediation import proxy_reload
from controlplane.remediation.base import BadParams, Context, Draft, Outcome, Param, Unavailable
from controlplane.resharding import loads as slot_loads
from controlplane.resharding import migrate, planner, progress
from controlplane.resharding import slotmap as slotmaps

NAME = "add_shard"
WRITES_CLUSTER_FILE = True
VERIFY = ("hot_shard",)
START_TIMEOUT_S = 30.0


def _hosts(cf) -> list[str]:
    chat = {h for h, _ in cf.chat_hosts()}
    return [h for h in cf.hosts if h not in chat]


PARAMS = {
    "name": Param(str, required=True, help="the new shard's name, e.g. shard4"),
    "host": Param(str, required=True, choices=_hosts, help="a Redis host of the cluster file"),
    "port": Param(int, required=True, minimum=1024, maximum=65535),
    "move": Param(bool, default=True, help="move slots to it, chosen by load (default true)"),
    "moves": Param(str, help="the slots to move, as chosen when the plan was made: src:slots;src:slots",
                   max_len=200_000),
}


def subject(cf, params: dict) -> str:
    return "slotmap"


def _shard_doc(params: dict) -> dict:
    return {"name": params["name"], "host": params["host"], "port": params["port"]}


def _check_new(ctx: Context, params: dict) -> None:
    names = [s.name for s in ctx.cf.redis.shards]
    if params["name"] in names:
        raise BadParams("name", f"{params['name']} is already a shard")
    if ctx.cf.profile != "local":
        raise BadParams("host", "profile remote: starting Redis on a real host needs the Ansible playbook, "
                                "which chatops does not ship yet; add the shard with your own tooling, then "
                                "reshard to it")


def _grown(ctx: Context, smap: SlotMap, name: str) -> SlotMap:
    return smap.grown((*smap.names, name)) if name not in smap.names else smap


def resolve(ctx: Context, params: dict) -> tuple[list[dict], list[str]]:
    """Choose now, by the load measured now, which slots the new shard will take."""
    if not params["move"] or params.get("moves"):
        return [params], []
    _check_new(ctx, params)
    with slotmaps.connections(ctx.cf) as conns:
        try:
            smap = _grown(ctx, slotmaps.load(ctx.cf, ctx.cluster_path, ctx.run, conns), params["name"])
        except slotmaps.SlotMapError as exc:
            raise Unavailable(str(exc)) from None
    measured = slot_loads.measure(ctx.cf, smap, run=ctx.run)
    rates, where = measured.loads, "; ".join(measured.notes)
    new = smap.n_shards - 1
    chosen = planner.plan(rates, smap, fill=new)
    moves = ";".join(f"{smap.names[a]}:{describe_slots(slots, limit=len(slots))}"
                     for (a, _), slots in chosen.slots_by_pair().items())
    notes = [f"planner ({chosen.by}, {where}): {chosen.reason}",
             "expected load per shard, before -> after: " + ", ".join(
                 f"{n} {b:,.0f} -> {a:,.0f}" for n, b, a in zip(smap.names, chosen.load_before, chosen.load_after))]
    return [{**params, "moves": moves or "none"}], notes


def _parse_moves(text: str | None, names: tuple[str, ...]) -> list[tuple[str, list[int]]]:
    if not text or text == "none":
        return []
    out = []
    for part in text.split(";"):
        src, _, slots = part.partition(":")
        if src not in names:
            raise BadParams("moves", f"{src!r} is not a shard")
        try:
            out.append((src, parse_slots(slots)))
        except ValueError as exc:
            raise BadParams("moves", f"{src}: {exc}") from None
    return out


def _answers(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def plan(ctx: Context, params: dict) -> Draft:
    entry = next((s for s in ctx.cf.redis.shards if s.name == params["name"]), None)
    done = entry is not None
    if not done:
        _check_new(ctx, params)
    elif (entry.host, entry.port) != (params["host"], params["port"]):
        raise BadParams("name", f"{params['name']} is already a shard, on {entry.host}:{entry.port}")
    index = len(ctx.cf.redis.shards) - (1 if done else 0)
    try:
        edit = writeback.plan_edit(ctx.cluster_path, {} if done else {f"redis.shards.{index}": _shard_doc(params)})
    except writeback.WritebackError as exc:
        raise BadParams("port", f"the cluster file cannot take this shard: {exc}") from None
    from cluster import clusterfile
    new_cf = clusterfile.parse(edit.new_text, source=str(ctx.cluster_path))
    reload_plan = proxy_reload.checked_plan(new_cf, ctx.run)
    names = tuple(s.name for s in new_cf.redis.shards)
    moves = _parse_moves(params.get("moves"), names) if params["move"] else []
    address = new_cf.address(params["host"])
    diff = edit.diff.splitlines()
    diff.append(f"start redis-server {params['name']} on {params['host']} ({address}:{params['port']}) "
                "(the local supervisor starts it when the file changes)")
    diff.append(f"HAProxy on {len(reload_plan.hosts)} chat host(s): listener redis-{params['name']} on port "
                f"{new_cf.listener_port(index)}, checked with haproxy -c, hitless reload")
    diff += ["  " + ln for ln in reload_plan.describe().splitlines() if ln.startswith(("==", "+", "-"))
             and not ln.startswith(("+++", "---"))]
    diff.append(f"publish the slot map with {params['name']} (owning no slot yet)")
    total = 0
    for src, slots in moves:
        total += len(slots)
        diff.append(f"move {len(slots)} slots from {src} to {params['name']}: {describe_slots(slots)}")
    if not moves:
        diff.append(f"no slots move ({'move=false' if not params['move'] else 'the planner chose none'}); "
                    f"reshard to {params['name']} later")
    # What the plan depends on, and what this plan's own apply does not change: the other shards.
    # So an apply cut short after writing the file (the shard did not start, a reload failed, the
    # control plane died) is finished by applying the same plan again.
    state = {"other_shards": [(s.name, s.host, s.port) for s in ctx.cf.redis.shards if s.name != params["name"]]}
    summary = f"add {params['name']} on {params['host']}:{params['port']}" + (
        f" and move {total} slots to it" if total else "")
    return Draft(summary=summary, diff=diff,
                 preconditions=["the rendered HAProxy configs pass haproxy -c", "the supervisor is running"],
                 state=state, details={"edit": edit, "moves": moves, "index": index},
                 changes=not done or bool(moves))


def apply(ctx: Context, params: dict, draft: Draft) -> Outcome:
    from cluster import clusterfile
    edit, moves = draft.details["edit"], draft.details["moves"]
    did: list[str] = []
    # The map as it is, published and guarding every shard, before the file changes: once the
    # file names one more shard, "nothing published yet" would read as an even split over all
    # of them, which is not where the keys are.
    with slotmaps.connections(ctx.cf) as conns:
        try:
            smap = slotmaps.load(ctx.cf, ctx.cluster_path, ctx.run, conns)
            slotmaps.ensure_guards(smap, conns)
            if smap.epoch == 0:
                smap = slotmaps.publish(ctx.cf, ctx.cluster_path, ctx.run, smap, conns).slot_map
        except slotmaps.SlotMapError as exc:
            return Outcome(False, f"the slot map: {exc}")
    if edit.changed:
        try:
            writeback.apply_edit(edit)
        except writeback.WritebackError as exc:
            return Outcome(False, f"the cluster file was not changed: {exc}")
        did.append(f"{ctx.cluster_path.name}: added {params['name']}")
    cf = clusterfile.load(ctx.cluster_path).spec
    shard = find_shard(cf, params["name"])
    address = cf.address(shard.host)
    deadline = time.monotonic() + START_TIMEOUT_S
    while not _answers(address, shard.port):
        if time.monotonic() > deadline:
            return Outcome(False, f"{'; '.join(did)}; but {params['name']} did not answer on {address}:{shard.port} "
                                  f"within {START_TIMEOUT_S:.0f} s: is `chatops up` running? (its log says why)",
                           {"steps": did})
        time.sleep(0.1)
    did.append(f"{params['name']} answers on {address}:{shard.port}")
    reload_plan = proxy_reload.plan_reload(cf, ctx.run)
    for hp in reload_plan.hosts:
        r = proxy_reload._reload_host(ctx.run, hp)
        if not r.ok:
            return Outcome(False, f"{'; '.join(did)}; HAProxy on {hp.host}: {r.detail}", {"steps": did})
    did.append(f"HAProxy reloaded on {len(reload_plan.hosts)} host(s)")
    with slotmaps.connections(cf) as conns:
        try:
            smap = slotmaps.load(cf, ctx.cluster_path, ctx.run, conns)
            # The new shard is guarded from the start (owning nothing), so a client that writes
            # there by mistake is refused rather than served.
            slotmaps.ensure_guards(smap, conns)
            if not isinstance(slotmaps.shard_copies(conns).get(params["name"]), type(smap)):
                # The grown map, on every shard the new one included: clues open its pool now.
                smap = slotmaps.publish(cf, ctx.cluster_path, ctx.run, smap, conns).slot_map
        except slotmaps.SlotMapError as exc:
            return Outcome(False, f"{'; '.join(did)}; the slot map: {exc}", {"steps": did})
    did.append(f"slot map epoch {smap.epoch} names {params['name']}")
    keys = 0
    for src, slots in moves:
        what = {"action": NAME, "from": src, "to": params["name"], "slots": describe_slots(slots)}
        try:
            result = migrate.move_slots(cf, ctx.cluster_path, ctx.run, src, params["name"], slots,
                                        on_progress=progress.reporter(ctx.run, what))
        except (migrate.MigrationError, slotmaps.SlotMapError) as exc:
            return Outcome(False, f"{'; '.join(did)}; moving slots from {src}: {exc}", {"steps": did})
        keys += result.keys_moved
        did.append(f"moved {len(slots)} slots ({result.keys_moved:,} keys) from {src} in {result.seconds:.1f} s")
    return Outcome(True, "; ".join(did), {"shard": params["name"], "keys": keys, "steps": did})
