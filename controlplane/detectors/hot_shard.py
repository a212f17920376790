"""Hot shard: one shard does far more work than its peers, or burns its core, while peers idle.

Condition, per shard, at every ops/CPU sample of the window (figures of `redis:<shard>`):

    heat = max(cpu_percent / hot_shard_cpu_percent,
               min(ops_per_s / (hot_shard_ops_factor x mean ops_per_s of the peers),
                   ops_per_s / hot_shard_min_ops_per_s))

ops_per_s is the shard's workload: the control plane's own commands (OBJECT FREQ of up to 1,000
sampled keys a scrape, SCAN, INFO...) are taken off (`own_ops`).

The shard is hot while heat >= 1 (firing once that held for `hold`), and stays reported while
heat >= clear_factor (hysteresis). Peers are the other shards that are up; the peers' mean
takes each peer's sample nearest in time (an idle peer counts as 1 op/s, so a lone busy shard
next to idle ones is hot by ops once it reaches hot_shard_min_ops_per_s). "While peers have
headroom": when every peer is itself at or above hot_shard_cpu_percent the cluster as a whole is
saturated, which is not one hot shard, and nothing is reported. A shard without peers is judged
by CPU alone.

Severity: critical when the shard's CPU is at 95 % of a core or more, else warning.

Whether resharding (moving slots to a cooler shard) would help is read from the shard's LFU
samples (`hotkeys`, OBJECT FREQ of up to 1,000 SCANned keys, top 10 kept): see `key_load`. When
one key, or one slot (one hash tag: a room's or a user's keys), plausibly carries
hot_key_share of the shard's load, moving slots cannot split it: the remediation is "none" and the
evidence points to the hot_key finding. When the load is spread, the remediation is "reshard".
When the samples are unavailable (not an LFU policy, a failed section), the evidence says so and
resharding is suggested with that caveat.
"""

from __future__ import annotations

import bisect
from typing import Any

from controlplane.detectors.base import SHARD, Chart, Finding, Window, floor, hold_s, named_shard, num

KIND = "hot_shard"

CRITICAL_CPU = 95.0          # % of one core: the talk's "single Redis at 99% CPU"
IDLE_PEER_OPS = 1.0          # an idle peer's ops/s floor, so the ratio stays finite
LFU_INIT = 5                 # Redis's LFU_INIT_VAL: a new key's counter
LFU_MAX = 255
LFU_LOG_FACTOR = 10          # Redis's default lfu-log-factor (CONFIG GET does not fetch it)


# ---------------------------------------------------------------------------------------------
# small, None-safe helpers
# ---------------------------------------------------------------------------------------------



def summary(points: list, seconds: float | None = None, now: float | None = None) -> dict[str, Any]:
    """{now, mean, max, min, n} of a series' known values (None when there are none)."""
    if seconds is not None and now is not None:
        points = [p for p in points if p[0] >= now - seconds]
    vals = [v for _, v in points if num(v) is not None]
    if not vals:
        return {"now": None, "mean": None, "max": None, "min": None, "n": 0}
    last = points[-1][1] if points and num(points[-1][1]) is not None else None
    return {"now": _r(last), "mean": _r(sum(vals) / len(vals)), "max": _r(max(vals)),
            "min": _r(min(vals)), "n": len(vals)}


def _r(v: float | None, digits: int = 2) -> float | None:
    return None if v is None else round(v, digits)


def shard_names(window: Window, cf) -> list[str]:
    names = [s.name for s in cf.redis.shards]
    return names + [t for t in window.targets("redis") if t not in names]


def shard_host(cf, shard: str) -> str:
    return next((s.host for s in cf.redis.shards if s.name == shard), "")


def redis_data(window: Window, shard: str, part: str) -> Any:
    """One part of the shard's newest data (info, config, hotkeys, address...), or None."""
    return window.data("redis", shard, part)


def detail(window: Window, source: str, target: str) -> dict[str, Any]:
    d = window.detail(source, target)
    return d if isinstance(d, dict) else {}


# What the control plane's own collectors send every scrape (OBJECT FREQ is one call per sampled
# key): not the shard's workload.
COLLECTOR_COMMANDS = frozenset({"object|freq", "scan", "info", "config|get", "slowlog|get", "latency|latest",
                                "client|list"})


def own_ops(window: Window, shard: str) -> float:
    """ops/s the control plane itself adds to the shard: the collector's OBJECT FREQ of every
    sampled key (up to 1,000 a scrape), SCAN, INFO... They count in total_commands_processed, so
    a shard with many keys would look ~1,000 ops/s busier than an empty peer. From the newest
    calls/s; without them, the LFU sample size per interval."""
    calls = detail(window, "redis", shard).get("calls_per_s")
    if isinstance(calls, dict) and calls:
        return sum(num(v) or 0.0 for k, v in calls.items() if str(k) in COLLECTOR_COMMANDS)
    hk = redis_data(window, shard, "hotkeys")
    sampled = num(hk.get("sampled")) if isinstance(hk, dict) else None
    return (sampled or 0.0) / window.interval_s


def workload_ops(window: Window, shard: str) -> list:
    """The shard's ops/s series less the control plane's own commands (never below 0). Once per
    window: each shard's heat reads every peer's."""
    key = ("workload_ops", shard)
    if key not in window.memo:
        own = own_ops(window, shard)
        window.memo[key] = [(t, None if num(v) is None else max(0.0, num(v) - own))
                            for t, v in window.points("redis", shard, "ops_per_s")]
    return window.memo[key]


def _tail(points: list, since: float) -> list:
    """The points from the last one before `since` on: all that `_nearest` can pick for a time
    within tolerance of the newest."""
    i = bisect.bisect_left(points, since, key=lambda p: p[0])
    return points[max(0, i - 1):]


def _nearest(points: list, ts: list[float], tolerance: float) -> list[float | None]:
    """For each of `ts` (ascending), the value of the sample nearest to it within `tolerance`
    (the earlier of two as near), or None: one walk of both lists, where a binary search per
    time made the heat series quadratic-ish in the window's length."""
    out: list[float | None] = []
    n, i = len(points), 0
    for t in ts:
        while i < n and points[i][0] < t:          # where bisect_left would put t
            i += 1
        best, gap = None, tolerance
        if i > 0 and abs(points[i - 1][0] - t) <= gap:
            best, gap = i - 1, abs(points[i - 1][0] - t)
        if i < n and abs(points[i][0] - t) <= tolerance and (best is None or abs(points[i][0] - t) < gap):
            best = i
        out.append(num(points[best][1]) if best is not None else None)
    return out


# ---------------------------------------------------------------------------------------------
# heat: the hot-shard condition as one normalised series (>= 1: hot)
# ---------------------------------------------------------------------------------------------

def heat(window: Window, cf, shard: str) -> dict[str, Any] | None:
    """The shard's heat series and what it is made of; None when the shard is down or unknown.

    Returns {"points", "firing", "sustained", "held_s", "peers", "peer_mean_ops", "cpu", "ops",
    "why"}: `firing` when heat >= 1 has held for `hold`, `sustained` when heat >= clear_factor
    now. `points` is the newest point alone when that one settles all three (below both 1 and
    clear_factor: neither firing nor sustained). Worked out once per window (hot_shard and hot_key
    both ask); treat it as read-only."""
    got = window.memo.get(("heat", shard))
    if got is None or got[0] is not cf:        # worked out for this cluster file, not another
        got = window.memo[("heat", shard)] = (cf, _heat(window, cf, shard))
    return got[1]


def _heat(window: Window, cf, shard: str) -> dict[str, Any] | None:
    th = cf.controlplane.thresholds
    if window.up("redis", shard) is False:
        return None
    cpu = window.points("redis", shard, "cpu_percent")
    ops = workload_ops(window, shard)
    if not cpu and not ops:
        return None
    peers = [p for p in shard_names(window, cf) if p != shard and window.up("redis", p) is not False
             and (window.points("redis", p, "ops_per_s") or window.points("redis", p, "cpu_percent"))]
    # "Peers have headroom": at least one peer below the CPU threshold now (or no peers at all).
    peer_cpu_now = {p: num(window.value("redis", p, "cpu_percent")) for p in peers}
    if peers and all(v is not None and v >= th.hot_shard_cpu_percent for v in peer_cpu_now.values()):
        return {"points": [], "firing": False, "sustained": False, "held_s": 0.0, "peers": peers,
                "peer_mean_ops": None, "why": "every peer is as busy: the cluster is saturated, not one shard"}
    tol = 1.5 * window.interval_s
    times = sorted({t for t, _ in cpu} | {t for t, _ in ops})
    peer_ops = [workload_ops(window, p) for p in peers]

    def score(c: float | None, o: float | None, peer_vals) -> tuple[float | None, str | None, float | None]:
        """(heat, why, peers' mean ops) at one time, from the values nearest to it."""
        scores, why, mean = [], None, None
        if c is not None:
            scores.append(c / th.hot_shard_cpu_percent)
            why = "cpu"
        if o is not None and peers:
            vals = [v for v in peer_vals if v is not None]
            if vals:
                mean = sum(vals) / len(vals)
                by_ops = min(o / (th.hot_shard_ops_factor * max(mean, IDLE_PEER_OPS)),
                             o / th.hot_shard_min_ops_per_s if th.hot_shard_min_ops_per_s > 0 else float("inf"))
                scores.append(by_ops)
                if by_ops > (scores[0] if c is not None else -1):
                    why = "ops"
        return (max(scores) if scores else None), why, mean

    factor = th.clear_factor
    # The newest heat first, from each series' last points: below both 1 and clear_factor (the
    # usual pass) it settles firing, sustained and held, and the rest is not worked out.
    t = times[-1]
    now, why, mean = score(_nearest(_tail(cpu, t - tol), [t], tol / 3)[0],
                           _nearest(_tail(ops, t - tol), [t], tol / 3)[0],
                           [_nearest(_tail(pts, t - tol), [t], tol)[0] for pts in peer_ops])
    if now is None or now < floor(1.0, cf):
        return {"points": [(t, now)], "firing": False, "sustained": False, "held_s": 0.0, "peers": peers,
                "peer_mean_ops": mean, "why": why if now is not None else None, "heat_now": now}
    cpu_at, ops_at = _nearest(cpu, times, tol / 3), _nearest(ops, times, tol / 3)
    peers_at = list(zip(*(_nearest(pts, times, tol) for pts in peer_ops))) if peers else []
    points, last_peer_mean, last_why = [], None, None
    for k, t in enumerate(times):
        value, why, mean = score(cpu_at[k], ops_at[k], peers_at[k] if peers else ())
        if mean is not None:
            last_peer_mean = mean
        points.append((t, value))
        if value is not None:
            last_why = why
    held = window.held_for(points, lambda v: v >= 1.0)
    relaxed = window.held_for(points, lambda v: v >= factor)
    return {"points": points, "firing": held >= hold_s(cf), "sustained": relaxed > 0, "held_s": held,
            "peers": peers, "peer_mean_ops": last_peer_mean, "why": last_why,
            "heat_now": points[-1][1] if points else None}


# ---------------------------------------------------------------------------------------------
# key_load: does one key or one slot carry the shard's load? (LFU samples, clue's counters)
# ---------------------------------------------------------------------------------------------

def lfu_hits(freq: int) -> float:
    """Expected accesses behind an LFU counter: Redis increments a counter c >= 5 with
    probability 1 / ((c - 5) x lfu_log_factor + 1), so reaching c takes about
    (c - 5) + factor x (c - 5)(c - 6) / 2 accesses (~311,000 at the 255 ceiling)."""
    c = max(0, min(int(freq), LFU_MAX) - LFU_INIT)
    return c + LFU_LOG_FACTOR * c * (c - 1) / 2


def key_load(window: Window, cf, shard: str, ops_mean: float | None, held_s: float) -> dict[str, Any]:
    """Where the shard's load goes, from its LFU samples (and clue's per-slot counters if seen).

    Weights each sampled key by `lfu_hits(freq)` (+1), groups keys by slot (one hash tag = one
    slot = what a reshard moves as a unit). The top slot is "concentrated" when its share of the
    sampled weight is >= hot_key_share AND its counters could have carried that share of the
    shard's ops over the time the shard has been hot (a counter is cumulative, so a key that
    was merely busy for a long time cannot pass for today's hot key; a saturated counter
    always passes). `relaxed` is the same test at threshold x clear_factor.
    """
    from chat.sharding import key_prefix, key_slot

    th = cf.controlplane.thresholds
    out: dict[str, Any] = {"source": None, "concentrated": False, "relaxed": False}
    hk = redis_data(window, shard, "hotkeys")
    samples = []        # (key as shown, freq, slot, kind)
    if isinstance(hk, dict) and not hk.get("skipped"):
        for k in hk.get("keys") or []:
            if isinstance(k, dict) and isinstance(k.get("key"), str) and num(k.get("freq")) is not None:
                # A redacted key (collectors/redact.py) carries the slot and kind of its real name.
                if isinstance(k.get("slot"), int):
                    samples.append((k["key"], int(k["freq"]), k["slot"], k.get("prefix")))
                else:
                    samples.append((k["key"], int(k["freq"]), key_slot(k["key"]), key_prefix(k["key"])))
    elif isinstance(hk, dict):
        out["unavailable"] = str(hk.get("skipped"))
    else:
        out["unavailable"] = "no LFU samples in the newest scrape"
    clue = _clue_slots(window, cf, shard)
    if clue:
        out["clue"] = clue
    if not samples:
        if clue and clue.get("top_slot_share", 0) >= th.hot_key_share:
            out.update(source="clue", concentrated=True, relaxed=True, slot=clue["top_slot"],
                       share=clue["top_slot_share"], prefix=clue.get("top_prefix"), key=None)
        elif clue and clue.get("top_slot_share", 0) >= th.hot_key_share * th.clear_factor:
            out.update(source="clue", relaxed=True, slot=clue["top_slot"], share=clue["top_slot_share"],
                       prefix=clue.get("top_prefix"), key=None)
        elif clue:
            out["source"] = "clue"
        return out
    out["source"] = "lfu"
    out["sampled"] = hk.get("sampled")
    weights = [(key, freq, lfu_hits(freq) + 1.0, slot, prefix) for key, freq, slot, prefix in samples]
    total = sum(w[2] for w in weights)
    slots: dict[int, list] = {}
    for w in weights:
        slots.setdefault(w[3], []).append(w)
    top_keys = sorted(weights, key=lambda x: -x[2])
    out["top_keys"] = [{"key": k, "freq": f, "prefix": p, "slot": s, "est_accesses": round(w - 1.0),
                        "share": _r(w / total, 3)} for k, f, w, s, p in top_keys[:5]]
    top_slot, members = max(slots.items(), key=lambda kv: sum(m[2] for m in kv[1]))
    slot_w = sum(m[2] for m in members)
    members.sort(key=lambda x: -x[2])
    key, freq, key_w, _, key_kind = members[0]
    share = slot_w / total
    saturated = any(m[1] >= LFU_MAX for m in members)
    # What the slot must have absorbed to carry `share` of the shard's ops since the shard got hot.
    span = max(held_s, window.interval_s)
    needed = th.hot_key_share * (ops_mean or 0.0) * span
    carried = slot_w - len(members)
    out.update(slot=top_slot, key=key, freq=freq, prefix=key_kind, share=_r(share, 3),
               key_share=_r(key_w / total, 3), slot_keys=[m[0] for m in members[:5]],
               slot_prefixes=sorted({m[4] or "<redacted>" for m in members}),
               est_accesses=round(carried), needed_accesses=round(needed), saturated=saturated,
               distinct_slots=len(slots))

    def passes(factor: float) -> bool:
        return share >= th.hot_key_share * factor and (saturated or carried >= needed * factor)

    out["concentrated"], out["relaxed"] = passes(1.0), passes(th.clear_factor)
    if not out["relaxed"] and clue and clue.get("top_slot_share", 0) >= th.hot_key_share:
        out.update(source="clue", concentrated=True, relaxed=True, slot=clue["top_slot"],
                   share=clue["top_slot_share"], prefix=clue.get("top_prefix") or out.get("prefix"))
    return out


def _clue_slots(window: Window, cf, shard: str) -> dict[str, Any] | None:
    """clue's cumulative counters (`/v1/stats/keys`): the busiest slot this shard owns, as a share
    of clue's ops to this shard, summed over every clue seen; None when no clue source is there."""
    try:
        from chat.sharding import SlotMap
        names = [s.name for s in cf.redis.shards]
        index = names.index(shard)
        smap = SlotMap.even(len(names))
    except (ValueError, ImportError):
        return None
    slot_ops: dict[int, float] = {}
    shard_ops = 0.0
    prefixes: dict[str, float] = {}
    seen = False
    for target in window.targets("service"):
        if not target.startswith("clue"):
            continue
        d = detail(window, "service", target)
        stats = d.get("stats") if isinstance(d.get("stats"), dict) else d
        if not isinstance(stats, dict):
            continue
        by_shard = stats.get("ops_by_shard")
        if isinstance(by_shard, dict) and num(by_shard.get(shard)) is not None:
            shard_ops += num(by_shard.get(shard))
            seen = True
        # Where each slot lives by the clue's own (live) map; the even split only for a clue
        # too old to say.
        owners = stats.get("top_slot_shards") if isinstance(stats.get("top_slot_shards"), dict) else {}
        for row in stats.get("top_slots") or []:
            if isinstance(row, (list, tuple)) and len(row) == 2 and isinstance(row[0], int) and num(row[1]) is not None:
                owner = owners.get(str(row[0]))
                on_shard = owner == shard if owner is not None else smap.shard_of_slot(row[0]) == index
                if 0 <= row[0] < 16384 and on_shard:
                    slot_ops[row[0]] = slot_ops.get(row[0], 0.0) + num(row[1])
        for p, n in (stats.get("ops_by_prefix") or {}).items() if isinstance(stats.get("ops_by_prefix"), dict) else ():
            if num(n) is not None:
                prefixes[str(p)] = prefixes.get(str(p), 0.0) + num(n)
    if not seen or not slot_ops or shard_ops <= 0:
        return None
    slot, n = max(slot_ops.items(), key=lambda kv: kv[1])
    total_prefix = sum(prefixes.values())
    top_prefix = max(prefixes.items(), key=lambda kv: kv[1]) if prefixes else (None, 0)
    return {"top_slot": slot, "top_slot_ops": n, "shard_ops": shard_ops, "top_slot_share": _r(n / shard_ops, 3),
            "top_prefix": top_prefix[0],
            "top_prefix_share": _r(top_prefix[1] / total_prefix, 3) if total_prefix else None}


# ---------------------------------------------------------------------------------------------
# the detector
# ---------------------------------------------------------------------------------------------

def top_commands(window: Window, shard: str, n: int = 5) -> list[list]:
    """The shard's busiest commands (calls/s), leaving out the control plane's own."""
    calls = detail(window, "redis", shard).get("calls_per_s")
    if not isinstance(calls, dict):
        return []
    rows = [(str(k), num(v)) for k, v in calls.items() if num(v) is not None and str(k) not in COLLECTOR_COMMANDS]
    return [[k, round(v, 1)] for k, v in sorted(rows, key=lambda kv: -kv[1])[:n]]


def _held_mean(points: list, held_s: float, now: float, interval: float) -> float | None:
    vals = [num(v) for t, v in points if t >= now - max(held_s, interval) - interval / 2 and num(v) is not None]
    return sum(vals) / len(vals) if vals else None


def detect(window: Window, cf) -> list[Finding]:
    th = cf.controlplane.thresholds
    out: list[Finding] = []
    for shard in shard_names(window, cf):
        h = heat(window, cf, shard)
        if h is None or not (h["firing"] or h["sustained"]):
            continue
        host = shard_host(cf, shard)
        ops_pts = workload_ops(window, shard)
        cpu_pts = window.points("redis", shard, "cpu_percent")
        cpu_now = num(window.value("redis", shard, "cpu_percent"))
        ops_now = num(ops_pts[-1][1]) if ops_pts else None
        span = max(h["held_s"], 60.0)
        keys = key_load(window, cf, shard, _held_mean(ops_pts, h["held_s"], window.now, window.interval_s),
                        h["held_s"])
        if keys["source"] is None:
            helps = None
            why = f"key spread unknown ({keys.get('unavailable')}); confirm with `chatops inspect redis {shard}`"
        elif keys["relaxed"]:
            helps = False
            what = f"key {keys['key']}" if keys.get("key") else f"slot {keys.get('slot')}"
            why = (f"one slot carries ~{round(100 * (keys.get('share') or 0))}% of the sampled load "
                   f"({what}, prefix {keys.get('prefix')}): moving slots moves the problem; see the hot_key finding")
        else:
            helps = True
            why = (f"the load is spread: the busiest slot carries ~{round(100 * (keys.get('share') or 0))}% of the "
                   f"sampled load over {keys.get('distinct_slots', '?')} slots")
        peers = {p: {"ops_per_s": summary(workload_ops(window, p), span, window.now),
                     "cpu_percent": summary(window.points("redis", p, "cpu_percent"), span, window.now)}
                 for p in h["peers"]}
        coolest = min(h["peers"], key=lambda p: num(window.value("redis", p, "cpu_percent")) or 0.0) if h["peers"] else None
        peer_mean = h.get("peer_mean_ops")
        ratio = (ops_now / max(peer_mean, IDLE_PEER_OPS)) if ops_now is not None and peer_mean is not None else None
        severity = "critical" if cpu_now is not None and cpu_now >= CRITICAL_CPU else "warning"
        evidence = {
            "shard": shard, "host": host, "address": redis_data(window, shard, "address"),
            "by": h.get("why"), "heat": _r(h.get("heat_now"), 3), "held_s": round(h["held_s"], 1),
            "hold_s": hold_s(cf),
            "cpu_percent": summary(cpu_pts, span, window.now), "ops_per_s": summary(ops_pts, span, window.now),
            "controlplane_ops_per_s": _r(own_ops(window, shard)),
            "peer_mean_ops_per_s": _r(peer_mean), "ops_vs_peers": _r(ratio), "peers": peers,
            "top_commands": top_commands(window, shard),
            "keys": keys, "resharding_helps": helps, "resharding_why": why,
            "thresholds": {"hot_shard_cpu_percent": th.hot_shard_cpu_percent,
                           "hot_shard_ops_factor": th.hot_shard_ops_factor,
                           "hot_shard_min_ops_per_s": th.hot_shard_min_ops_per_s, "hold": th.hold,
                           "clear_factor": th.clear_factor},
        }
        bits = []
        if cpu_now is not None:
            bits.append(f"CPU {cpu_now:.0f}% of a core")
        if ops_now is not None:
            bits.append(f"{ops_now:,.0f} ops/s" + (f", {ratio:.0f}x its peers" if ratio is not None else ""))
        title = f"{shard} is hot: {', '.join(bits)}"
        if helps is False:
            title += f"; one key dominates ({keys.get('prefix')}), resharding will not help"
            remediation = {"action": "none", "summary": f"Resharding {shard} will not help: {why}. Split the "
                           "key or cache it locally (runbooks/hot_key.md).",
                           "params": {"shard": shard, "see": "hot_key", "prefix": keys.get("prefix")}}
        else:
            remediation = {"action": "reshard",
                           "summary": f"Move slots from {shard} to {coolest or 'a new shard'}: {why}.",
                           "params": {"shard": shard, "to_shard": coolest, "fraction": _move_fraction(ops_now, peer_mean,
                                                                                                     len(h["peers"]))}}
        out.append(Finding(KIND, shard, severity, title, evidence, remediation, firing=h["firing"],
                           held_s=round(h["held_s"], 1), about={"shard": shard, "host": host},
                           peak=num(h.get("heat_now"))))
    return out


def _move_fraction(ops: float | None, peer_mean: float | None, n_peers: int) -> float | None:
    """The share of the hot shard's slots to move so its ops meet the cluster mean (by ops)."""
    if ops is None or peer_mean is None or ops <= 0:
        return None
    mean_all = (ops + peer_mean * n_peers) / (n_peers + 1)
    return round(max(0.0, min(1.0, (ops - mean_all) / ops)), 2)


# -- in an incident -------------------------------------------------------------------------------

def layer(f: dict) -> int:
    return SHARD


def label(f: dict) -> str:
    return f"{named_shard(f) or f.get('subject')} hot"


def busy(f: dict) -> bool:
    return True


def cause(f: dict) -> str:
    return f"{named_shard(f) or f.get('subject')} overloaded"


def charts(f: dict) -> list[Chart]:
    shard = named_shard(f)
    if not shard:
        return []
    return [Chart("redis", shard, "ops_per_s", "ops/s", f"{shard} ops/s"),
            Chart("redis", shard, "cpu_percent", "%", f"{shard} CPU, % of one core"),
            Chart("redis", shard, "connected_clients", "", f"{shard} connected clients")]
