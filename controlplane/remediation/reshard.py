"""reshard {shard, to_shard, slots, fraction}: move slots, with their keys, from one shard to another,
live and losing nothing (controlplane/resharding/migrate.py has the protocol).

Which slots: given explicitly (`slots=0-99,512`), or chosen when the plan is made by the
load-aware planner from the per-slot load every clue measures right now (`resolve`). The chosen
slots are written into the plan's parameters, so the apply moves exactly the slots that were
reviewed, however the load has shifted since. A planner that would spread the load over several
shards makes one step per target.

The fingerprint is the ownership of every slot outside the move (and the shard list): someone
else's change makes the plan stale, while this plan's own progress does not, so applying a plan
whose migration was cut short (control plane killed, target down) finishes it.
"""

from __future__ import annotations

import hashlib
import random

from chat.sharding import SlotMap, describe_slots, parse_slots
from collectors.resp import Conn, RedisError
from controlplane.remediation.base import BadParams, Context, Draft, Outcome, Param, Unavailable
from controlplane.resharding import loads as slot_loads
from controlplane.resharding import migrate, planner, progress
from controlplane.resharding import slotmap as slotmaps

NAME = "reshard"
VERIFY = ("hot_shard",)
BYTES_SAMPLE = 200


def _shards(cf) -> list[str]:
    return [s.name for s in cf.redis.shards]


PARAMS = {
    "shard": Param(str, required=True, choices=_shards, help="the shard to move slots away from"),
    "to_shard": Param(str, choices=_shards, help="where they go (default: chosen by load)"),
    "slots": Param(str, help="slots to move, e.g. 0-99,512 (default: chosen by load)",
                   max_len=200_000),
    "fraction": Param(float, minimum=0.0, maximum=1.0, help="share of the shard's load to move, a hint"),
}


def subject(cf, params: dict) -> str:
    # Every change of the map is serialised: two moves planned against one map must not interleave.
    return "slotmap"


def _index(smap: SlotMap, name: str, param: str) -> int:
    try:
        return smap.names.index(name)
    except ValueError:
        raise BadParams(param, f"{name} is not in the slot map ({', '.join(smap.names)})") from None


def current_map(ctx: Context) -> SlotMap:
    """The slot map as it is now (file and shards' copies), or Unavailable saying why not."""
    with slotmaps.connections(ctx.cf) as conns:
        try:
            return slotmaps.load(ctx.cf, ctx.cluster_path, ctx.run, conns)
        except slotmaps.SlotMapError as exc:
            raise Unavailable(str(exc)) from None


def resolve(ctx: Context, params: dict) -> tuple[list[dict], list[str]]:
    """Choose the slots (and targets) from the load measured now, unless they were given."""
    if params.get("slots"):
        if not params.get("to_shard"):
            raise BadParams("to_shard", "is required when slots are given")
        return [params], []
    smap = current_map(ctx)
    source = _index(smap, params["shard"], "shard")
    targets = None
    if params.get("to_shard"):
        targets = [_index(smap, params["to_shard"], "to_shard")]
        if targets[0] == source:
            raise BadParams("to_shard", "is the shard the slots move away from")
    measured = slot_loads.measure(ctx.cf, smap, run=ctx.run)
    rates, where = measured.loads, "; ".join(measured.notes)
    # The detector may suggest fraction 0 (nothing measured to move): then balance by the load.
    chosen = planner.plan(rates, smap, source=source, targets=targets, fraction=params.get("fraction") or None)
    notes = [f"planner ({chosen.by}, {where}): {chosen.reason}"]
    notes.append("expected load per shard, before -> after: " + ", ".join(
        f"{n} {b:,.0f} -> {a:,.0f}" for n, b, a in zip(smap.names, chosen.load_before, chosen.load_after)))
    by_target: dict[int, list[int]] = {}
    for slot, _, to in chosen.moves:
        by_target.setdefault(to, []).append(slot)
    if not by_target:
        # A plan that changes nothing, with the planner's reason in its notes: after add_shard the
        # hot shard may already be balanced while its finding waits out its hold.
        return [{**params, "slots": NOTHING, "fraction": None}], notes
    steps = [{**params, "to_shard": smap.names[to], "slots": describe_slots(slots, limit=len(slots)),
              "fraction": None} for to, slots in sorted(by_target.items())]
    return steps, notes


def _inventory(conn: Conn, slots: list[int]) -> tuple[int, int]:
    """(keys, estimated bytes) in `slots` on the shard: a SCAN, and MEMORY USAGE on a sample."""
    found = migrate.scan_slots(conn, set(slots))
    keys = [k for ks in found.values() for k in ks]
    if not keys:
        return 0, 0
    sample = random.Random(0).sample(keys, min(BYTES_SAMPLE, len(keys)))
    sizes = conn.pipeline([("MEMORY", "USAGE", k) for k in sample])
    known = [s for s in sizes if isinstance(s, int)]
    return len(keys), int(sum(known) / len(known) * len(keys)) if known else 0


def _fingerprint_state(smap: SlotMap, moving: set[int], src: str, dst: str, slots_text: str) -> dict:
    outside = bytes(0 if s in moving else smap.shard_of_slot(s) + 1 for s in range(16384))
    return {"from": src, "to": dst, "slots": slots_text, "shards": list(smap.names),
            "others": hashlib.sha256(outside).hexdigest()[:16]}


NOTHING = "none"       # `slots` of a plan whose planner found nothing worth moving


def plan(ctx: Context, params: dict) -> Draft:
    if params.get("slots") == NOTHING:
        return Draft(summary=f"nothing to move from {params['shard']}: the load measured when the plan was made "
                             "needs no slot to move (the notes say why)", diff=[], state={"nothing": True},
                     changes=False)
    if not params.get("slots") or not params.get("to_shard"):
        raise BadParams("slots", "give slots and to_shard, or make the plan with `chatops plan reshard` so "
                                 "they are chosen by load")
    try:
        slots = parse_slots(params["slots"])
    except ValueError as exc:
        raise BadParams("slots", str(exc)) from None
    src, dst = params["shard"], params["to_shard"]
    if src == dst:
        raise BadParams("to_shard", "is the shard the slots move away from")
    smap = current_map(ctx)
    si, di = _index(smap, src, "shard"), _index(smap, dst, "to_shard")
    strays = [s for s in slots if smap.shard_of_slot(s) not in (si, di)]
    if strays:
        raise BadParams("slots", f"{describe_slots(strays)} belong to neither {src} nor {dst}")
    todo = [s for s in slots if smap.shard_of_slot(s) == si]
    state = _fingerprint_state(smap, set(slots), src, dst, params["slots"])
    if not todo:
        return Draft(summary=f"slots {describe_slots(slots)} are already on {dst}", diff=[], state=state,
                     details={"slots": slots}, changes=False)
    if ctx.replanning:
        # The apply's re-check: the counts only inform the reviewer, and the migration scans the
        # source itself; a second full SCAN of a million keys would only delay it.
        keys, nbytes = 0, 0
    else:
        try:
            with slotmaps.connect(ctx.cf, src) as conn:
                keys, nbytes = _inventory(conn, todo)
        except (OSError, RedisError) as exc:
            raise Unavailable(f"cannot count the keys to move on {src}: {exc}") from None
    seconds = planner.estimate_seconds(keys)
    diff = [f"move {len(todo)} slots ({describe_slots(todo)}) from {src} to {dst}",
            f"  {keys:,} keys, about {nbytes / 1e6:,.1f} MB, about {max(seconds, 0.1):,.1f} s at "
            f"{planner.KEYS_PER_S:,} keys/s",
            f"  slot map epoch {smap.epoch} -> {smap.epoch + 1}: {src} owns {smap.counts()[si] - len(todo)} slots, "
            f"{dst} {smap.counts()[di] + len(todo)}"]
    if len(todo) < len(slots):
        diff.append(f"  {len(slots) - len(todo)} of the slots are on {dst} already (an earlier apply moved them)")
    return Draft(summary=f"move {len(todo)} slots ({keys:,} keys) from {src} to {dst}", diff=diff,
                 preconditions=[f"{src} and {dst} answer", "no other change to the slot map since the plan"],
                 state=state, details={"slots": slots, "keys": keys, "bytes": nbytes})


def apply(ctx: Context, params: dict, draft: Draft) -> Outcome:
    slots = draft.details["slots"]
    short = describe_slots(slots)
    what = {"action": NAME, "from": params["shard"], "to": params["to_shard"], "slots": short}
    try:
        result = migrate.move_slots(ctx.cf, ctx.cluster_path, ctx.run, params["shard"], params["to_shard"], slots,
                                    on_progress=progress.reporter(ctx.run, what))
    except (migrate.MigrationError, slotmaps.SlotMapError) as exc:
        return Outcome(False, str(exc), {"slots": short})
    rate = result.keys_moved / result.seconds if result.seconds > 0 else 0.0
    detail = (f"moved {len(result.moved_slots)} slots, {result.keys_moved:,} keys from {params['shard']} to "
              f"{params['to_shard']} in {result.seconds:.1f} s ({rate:,.0f} keys/s); slot map epoch "
              f"{result.slot_map.epoch}")
    if result.resumed_slots:
        detail += f"; finished {result.resumed_slots} slots an earlier apply had left half moved"
    if result.publish_failed:
        detail += f"; not published to {', '.join(result.publish_failed)} (they redirect instead)"
    return Outcome(True, detail, {"slots": short, "keys": result.keys_moved,
                                  "epoch": result.slot_map.epoch})
