"""set_redis_config {shard | all, timeout, maxclients, maxmemory_policy}: CONFIG SET, live, and the
same values written back to the cluster file so a restart keeps them.

`shard=all` changes every shard and writes `redis.<key>`; one shard writes that shard's own
override (`redis.shards[i].<key>`). The plan shows both diffs: each shard's old -> new value and
the cluster file's lines. Its fingerprint is each shard's current values and the file's current values at the keys it
changes, so a value changed by hand (live or in the file) makes the plan stale; a shard already at the new
value is not a change, so applying twice changes nothing the second time.
"""

from __future__ import annotations

from cluster import checks, writeback
from collectors.resp import RedisError
from controlplane.remediation.base import BadParams, Context, Draft, Outcome, Param, Unavailable

NAME = "set_redis_config"
WRITES_CLUSTER_FILE = True
VERIFY = ("leaked_clients",)
KEYS = ("timeout", "maxclients", "maxmemory_policy")
POLICIES = ("noeviction", "allkeys-lru", "allkeys-lfu", "volatile-lru", "volatile-lfu",
            "allkeys-random", "volatile-random", "volatile-ttl")


def _shards(cf) -> list[str]:
    return ["all"] + [s.name for s in cf.redis.shards]


PARAMS = {
    "shard": Param(str, required=True, choices=_shards, help="a shard, or all"),
    "timeout": Param(int, minimum=0, maximum=86400 * 365, help="seconds before Redis closes an idle client"),
    "maxclients": Param(int, minimum=16, maximum=1_000_000),
    "maxmemory_policy": Param(str, choices=POLICIES),
}


def subject(cf, params: dict) -> str:
    return "shard:all" if params["shard"] == "all" else f"shard:{params['shard']}"


def _redis_name(key: str) -> str:
    return key.replace("_", "-")


def _wanted(params: dict) -> dict:
    wanted = {k: params[k] for k in KEYS if params.get(k) is not None}
    if not wanted:
        raise BadParams("timeout", f"give at least one of {', '.join(KEYS)}")
    return wanted


def _targets(cf, shard: str) -> list[str]:
    return [s.name for s in cf.redis.shards] if shard == "all" else [shard]


def _current(ctx: Context, shard: str, keys) -> dict:
    out = {}
    for key in keys:
        try:
            reply = ctx.admin.call(shard, "CONFIG", "GET", _redis_name(key))
        except (OSError, RedisError) as exc:
            raise Unavailable(f"CONFIG GET {_redis_name(key)} on {shard} failed: {exc}") from None
        value = reply[1] if isinstance(reply, list) and len(reply) == 2 else None
        value = value.decode() if isinstance(value, bytes) else value
        out[key] = int(value) if key != "maxmemory_policy" and value is not None and value.isdigit() else value
    return out


def _file_changes(cf, params: dict, wanted: dict) -> dict:
    if params["shard"] == "all":
        return {f"redis.{k}": v for k, v in wanted.items()}
    index = next(i for i, s in enumerate(cf.redis.shards) if s.name == params["shard"])
    return {f"redis.shards.{index}.{k}": v for k, v in wanted.items()}


def plan(ctx: Context, params: dict) -> Draft:
    wanted = _wanted(params)
    diff, state, live_changes = [], {}, False
    for shard in _targets(ctx.cf, params["shard"]):
        now = _current(ctx, shard, wanted)
        state[shard] = now
        for key, value in wanted.items():
            if now[key] != value:
                live_changes = True
                diff.append(f"{shard}: CONFIG SET {_redis_name(key)} {now[key]} -> {value}")
    try:
        edit = writeback.plan_edit(ctx.cluster_path, _file_changes(ctx.cf, params, wanted))
    except writeback.WritebackError as exc:
        raise BadParams("shard", f"the cluster file cannot take this change: {exc}") from None
    diff += edit.diff.splitlines()
    state["cluster_file"] = writeback.current(edit)
    what = ", ".join(f"{k}={v}" for k, v in wanted.items())
    where = "every shard" if params["shard"] == "all" else params["shard"]
    policy = wanted.get("maxmemory_policy")
    evicts = policy is not None and checks.evicts_moderation(policy)
    warning = f" (warning: {checks.eviction_warning(policy)})" if evicts else ""
    return Draft(summary=f"set {what} on {where}, live and in {ctx.cluster_path.name}{warning}", diff=diff,
                 preconditions=[f"{where} answers CONFIG GET on the admin connection",
                                f"{ctx.cluster_path} still says what it says now at the keys changed"],
                 state=state, details={"edit": edit}, changes=live_changes or edit.changed)


def apply(ctx: Context, params: dict, draft: Draft) -> Outcome:
    wanted = _wanted(params)
    done = []
    for shard in _targets(ctx.cf, params["shard"]):
        for key, value in wanted.items():
            if draft.state[shard][key] == value:
                continue
            try:
                ctx.admin.call(shard, "CONFIG", "SET", _redis_name(key), str(value))
            except (OSError, RedisError) as exc:
                return Outcome(False, f"CONFIG SET {_redis_name(key)} on {shard} failed: {exc}", {"set": done})
            done.append(f"{shard} {_redis_name(key)}={value}")
    edit = draft.details["edit"]
    try:
        writeback.apply_edit(edit)
    except writeback.WritebackError as exc:
        return Outcome(False, f"set live ({', '.join(done) or 'nothing'}), but the cluster file was not "
                              f"written: {exc}", {"set": done})
    return Outcome(True, f"set {', '.join(done) or 'nothing live'}"
                         + (f"; {ctx.cluster_path.name} updated" if edit.changed else ""),
                   {"set": done, "cluster_file": edit.changed})
