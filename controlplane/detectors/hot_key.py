"""Hot key: one key, or one slot (one hash tag), carries most of a hot shard's load.

Condition, per shard: the shard is hot by the hot_shard condition (hot_shard.heat >= 1, i.e. CPU
>= hot_shard_cpu_percent, or ops/s >= hot_shard_ops_factor x its peers' mean and >=
hot_shard_min_ops_per_s), AND its load is concentrated (hot_shard.key_load):

- from the shard's LFU samples (OBJECT FREQ, allkeys-lfu / volatile-lfu): each sampled key is
  weighted by the accesses its logarithmic counter stands for; keys are grouped by slot. The top
  slot's share of that weight is >= hot_key_share, and its counters could have absorbed
  hot_key_share of the shard's ops/s over the time the shard has been hot (a saturated counter,
  255, always could);
- or, when a `service:clue-*` source is present, from clue's counters: the busiest slot this
  shard owns carries >= hot_key_share of clue's ops to the shard.

Firing when the shard's heat has held for `hold` and the load is concentrated now; reported (not
firing) while the shard's heat stays >= clear_factor and the share >= hot_key_share x
clear_factor (hysteresis).

Subject: the key's prefix (`chat.sharding.key_prefix`: `{*}.rl.u.#`), the kind of key that is
hot, not the shard; `<prefix>@<shard>` if the same prefix is hot on two shards at once.
Severity: critical when the shard's CPU is >= 95 % of a core, else warning. Remediation: none
automatic; moving slots will not help (the slot moves whole, the key with it), splitting the key
or caching it locally in clue will.
"""

from __future__ import annotations

from controlplane.detectors.base import LOAD, Finding, Window, about, hold_s, named_shard, num
from controlplane.detectors.hot_shard import (
    CRITICAL_CPU,
    _held_mean,
    heat,
    key_load,
    shard_host,
    shard_names,
    summary,
    top_commands,
    workload_ops,
)

KIND = "hot_key"


def detect(window: Window, cf) -> list[Finding]:
    th = cf.controlplane.thresholds
    out: list[Finding] = []
    subjects: set[str] = set()
    for shard in shard_names(window, cf):
        h = heat(window, cf, shard)
        if h is None or not (h["firing"] or h["sustained"]):
            continue
        ops_pts = workload_ops(window, shard)
        ops_mean = _held_mean(ops_pts, h["held_s"], window.now, window.interval_s)
        keys = key_load(window, cf, shard, ops_mean, h["held_s"])
        if not keys["relaxed"]:
            continue
        prefix = keys.get("prefix") or f"slot {keys.get('slot')}"
        subject = prefix if prefix not in subjects else f"{prefix}@{shard}"
        subjects.add(subject)
        key = keys.get("key")
        share = keys.get("share") or 0.0
        cpu_now = num(window.value("redis", shard, "cpu_percent"))
        ops_now = num(ops_pts[-1][1]) if ops_pts else None
        firing = h["firing"] and keys["concentrated"]
        evidence = {
            "shard": shard, "host": shard_host(cf, shard), "key": key, "prefix": keys.get("prefix"),
            "slot": keys.get("slot"), "share": share, "source": keys["source"],
            "slot_keys": keys.get("slot_keys"), "slot_prefixes": keys.get("slot_prefixes"),
            "freq": keys.get("freq"), "est_accesses": keys.get("est_accesses"),
            "needed_accesses": keys.get("needed_accesses"), "saturated": keys.get("saturated"),
            "top_keys": keys.get("top_keys"), "sampled": keys.get("sampled"), "clue": keys.get("clue"),
            "shard_held_hot_s": round(h["held_s"], 1), "hold_s": hold_s(cf),
            "cpu_percent": summary(window.points("redis", shard, "cpu_percent"), 60.0, window.now),
            "ops_per_s": summary(ops_pts, 60.0, window.now), "top_commands": top_commands(window, shard),
            "moving_slots_helps": False,
            "thresholds": {"hot_key_share": th.hot_key_share, "hold": th.hold, "clear_factor": th.clear_factor},
        }
        what = f"key {key}" if key else f"slot {keys.get('slot')}"
        load = f"{ops_now:,.0f} ops/s" if ops_now is not None else "its load"
        title = (f"hot key {prefix}: {what} carries ~{round(100 * share)}% of {shard}'s sampled load "
                 f"({load}); moving slots will not help")
        remediation = {
            "action": "none",
            "summary": (f"Moving slots will not help: {what} lives in one slot ({keys.get('slot')}), which moves whole. "
                        f"Split the key (spread {prefix} over several keys or hash tags, e.g. per-user buckets) or "
                        "cache it locally in clue (a short-lived in-process copy, or batch its increments)."),
            "params": {"shard": shard, "key": key, "prefix": keys.get("prefix"), "slot": keys.get("slot")},
        }
        severity = "critical" if cpu_now is not None and cpu_now >= CRITICAL_CPU else "warning"
        about = {"shard": shard}
        if key:
            about["key"] = key
        out.append(Finding(KIND, subject, severity, title, evidence, remediation, firing=firing,
                           held_s=round(h["held_s"], 1) if keys["concentrated"] else 0.0, about=about,
                           peak=ops_now))
    return out


# -- in an incident: below its shard; charts: the shard's (the default) ----------------------------

def layer(f: dict) -> int:
    return LOAD


def label(f: dict) -> str:
    shard = named_shard(f)
    return f"hot key {about(f).get('key') or f.get('subject')}" + (f" on {shard}" if shard else "")


def cause(f: dict) -> str:
    return f"a hot key ({about(f).get('key') or f.get('subject')}): moving slots will not help"
