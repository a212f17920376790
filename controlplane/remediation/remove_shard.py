"""remove_shard {name}: drain a shard's slots onto the others, then take it out of the cluster.

1. Every slot it owns moves (with its keys, live) to the other shards, each slot to the one with
   the least load at the time the plan was made (by slot count when no load was measured).
2. It leaves the cluster file; the local supervisor stops its redis-server.
3. The slot map without it is published, and every chat host's HAProxy is regenerated without its
   listener and reloaded hitlessly.

Only the last shard can be removed: a shard's index is its listener port (listener_base_port + i)
on every chat host, so removing one from the middle would renumber the others under live clients.
Drain a middle shard with `reshard` instead and leave it empty.
"""

from __future__ import annotations

from chat.sharding import SlotMap, describe_slots, parse_slots
from cluster import writeback
from controlplane.remediation import proxy_reload
from controlplane.remediation.base import BadParams, Context, Draft, Outcome, Param
from controlplane.remediation.reshard import current_map
from controlplane.resharding import loads as slot_loads
from controlplane.resharding import migrate, progress
from controlplane.resharding import slotmap as slotmaps

NAME = "remove_shard"
WRITES_CLUSTER_FILE = True
VERIFY = ()


def _shards(cf) -> list[str]:
    return [s.name for s in cf.redis.shards]


PARAMS = {
    "name": Param(str, required=True, help="the shard to remove (the last one)"),
    "moves": Param(str, help="where its slots go, as chosen when the plan was made: dst:slots;dst:slots",
                   max_len=200_000),
}


def subject(cf, params: dict) -> str:
    return "slotmap"


def _check(ctx: Context, params: dict) -> int:
    names = _shards(ctx.cf)
    if params["name"] not in names:
        raise BadParams("name", f"{params['name']} is not a shard ({', '.join(names)})")
    if len(names) == 1:
        raise BadParams("name", "the only shard cannot be removed")
    if params["name"] != names[-1]:
        raise BadParams("name", f"only the last shard ({names[-1]}) can be removed: a shard's index is its listener "
                                f"port on every chat host. Drain {params['name']} with reshard instead")
    return len(names) - 1


def spread(slots: list[int], loads: dict[int, float], smap: SlotMap, leaving: int) -> dict[int, list[int]]:
    """Where each of `slots` goes: a slot carrying load to the other shard with the least load so
    far (busiest slots first), so the drained shard's load spreads instead of piling up; a slot
    with no measured load to the shard with the fewest slots, so its keys spread too (by load
    alone, every idle slot would land on the one idlest shard)."""
    others = [i for i in range(smap.n_shards) if i != leaving]
    counts = smap.counts()
    weight = {i: 0.0 for i in others}
    for s in range(16384):
        owner = smap.shard_of_slot(s)
        if owner in weight:
            weight[owner] += loads.get(s, 0.0)
    out: dict[int, list[int]] = {i: [] for i in others}
    for s in sorted(slots, key=lambda x: -loads.get(x, 0.0)):
        load = loads.get(s, 0.0)
        to = min(others, key=lambda i: (weight[i], counts[i], i) if load > 0 else (counts[i], i))
        out[to].append(s)
        weight[to] += load
        counts[to] += 1
    return {i: sorted(v) for i, v in out.items() if v}


def resolve(ctx: Context, params: dict) -> tuple[list[dict], list[str]]:
    if params.get("moves"):
        return [params], []
    leaving = _check(ctx, params)
    smap = current_map(ctx)
    slots = smap.slots_of(leaving)
    loads = slot_loads.measure(ctx.cf, smap, run=ctx.run).loads
    chosen = spread(slots, loads, smap, leaving)
    moves = ";".join(f"{smap.names[i]}:{describe_slots(v, limit=len(v))}" for i, v in chosen.items())
    return [{**params, "moves": moves or "none"}], []


def _still_listening(ctx: Context, name: str) -> list[str]:
    """Chat hosts whose HAProxy config still has the shard's listener (an apply cut short before
    the reload)."""
    out = []
    for host, _ in ctx.cf.chat_hosts():
        try:
            text = ctx.run.haproxy_config(host).read_text()
        except OSError:
            continue
        if f"listen redis-{name}\n" in text:
            out.append(host)
    return out


def plan(ctx: Context, params: dict) -> Draft:
    names = _shards(ctx.cf)
    if params["name"] not in names:
        hosts = _still_listening(ctx, params["name"])
        return Draft(summary=f"{params['name']} is out of the cluster file" + (
                         f"; reload HAProxy on {', '.join(hosts)} without its listener" if hosts else ""),
                     diff=[f"HAProxy on {h}: remove listener redis-{params['name']}" for h in hosts],
                     state={"gone": True}, details={"moves": [], "reload_only": True}, changes=bool(hosts))
    leaving = _check(ctx, params)
    smap = current_map(ctx)
    moves: list[tuple[str, list[int]]] = []
    for part in (params.get("moves") or "none").split(";"):
        if part == "none":
            continue
        dst, _, text = part.partition(":")
        if dst not in names or dst == params["name"]:
            raise BadParams("moves", f"{dst!r} is not another shard")
        try:
            moves.append((dst, parse_slots(text)))
        except ValueError as exc:
            raise BadParams("moves", f"{dst}: {exc}") from None
    planned = {s for _, slots in moves for s in slots}
    owned = set(smap.slots_of(leaving))
    if owned - planned:
        raise BadParams("moves", f"{params['name']} owns slots the plan does not move "
                                 f"({describe_slots(owned - planned)}); plan again")
    try:
        edit = writeback.plan_edit(ctx.cluster_path, {f"redis.shards.{leaving}": writeback.REMOVE})
    except writeback.WritebackError as exc:
        raise BadParams("name", f"the cluster file cannot drop it: {exc}") from None
    diff = [f"move {len(slots)} slots from {params['name']} to {dst}: {describe_slots(slots)}"
            for dst, slots in moves if set(slots) & owned]
    diff += edit.diff.splitlines()
    diff.append(f"stop redis-server {params['name']} (the local supervisor, when the file changes)")
    diff.append(f"publish the slot map without {params['name']}; regenerate and reload HAProxy without "
                f"listener {ctx.cf.listener_port(leaving)} on every chat host")
    state = {"shards": names}
    return Draft(summary=f"drain and remove {params['name']} ({len(owned)} slots to move)", diff=diff,
                 preconditions=[f"{params['name']} is the last shard", "every shard answers"], state=state,
                 details={"edit": edit, "moves": moves, "index": leaving})


def _reload(ctx: Context, cf, did: list[str]) -> Outcome | None:
    for hp in proxy_reload.plan_reload(cf, ctx.run).hosts:
        r = proxy_reload._reload_host(ctx.run, hp)
        if not r.ok:
            return Outcome(False, "; ".join(did + [f"HAProxy on {hp.host}: {r.detail}"]), {"steps": did})
    did.append("HAProxy reloaded without its listener")
    return None


def apply(ctx: Context, params: dict, draft: Draft) -> Outcome:
    from cluster import clusterfile
    did: list[str] = []
    if draft.details.get("reload_only"):
        return _reload(ctx, ctx.cf, did) or Outcome(True, "; ".join(did), {"shard": params["name"], "steps": did})
    for dst, slots in draft.details["moves"]:
        what = {"action": NAME, "from": params["name"], "to": dst, "slots": describe_slots(slots)}
        try:
            result = migrate.move_slots(ctx.cf, ctx.cluster_path, ctx.run, params["name"], dst, slots,
                                        on_progress=progress.reporter(ctx.run, what))
        except (migrate.MigrationError, slotmaps.SlotMapError) as exc:
            return Outcome(False, "; ".join(did + [f"moving slots to {dst}: {exc}"]), {"steps": did})
        did.append(f"moved {len(slots)} slots ({result.keys_moved:,} keys) to {dst}")
    smap = current_map(ctx)
    if smap.counts()[draft.details["index"]]:
        return Outcome(False, "; ".join(did + [f"{params['name']} still owns slots; plan again"]), {"steps": did})
    # The map without it first, while the file still names it: clues drop its pool, and an apply
    # cut short here leaves a file and a map that still agree (it owns nothing) for the next one.
    with slotmaps.connections(ctx.cf) as conns:
        published = slotmaps.publish(ctx.cf, ctx.cluster_path, ctx.run, smap.shrunk(), conns)
    did.append(f"slot map epoch {published.slot_map.epoch} without {params['name']}")
    try:
        writeback.apply_edit(draft.details["edit"])
    except writeback.WritebackError as exc:
        return Outcome(False, "; ".join(did + [f"the cluster file was not changed: {exc}"]), {"steps": did})
    did.append(f"{ctx.cluster_path.name}: removed {params['name']}")
    cf = clusterfile.load(ctx.cluster_path).spec
    return _reload(ctx, cf, did) or Outcome(True, "; ".join(did), {"shard": params["name"], "steps": did})
