"""Per-slot load for the reshard planner: what clue counted, and what Redis's LFU counters say.

Two sources, each a pure part beside a thin fetch:

- **clue's counters** (`slot_rates`), the primary source. Every clue answers
  `GET /v1/stats/slots` (with the internal token, chat/service.py) with
  `{"epoch": e, "slots": [[slot, ops], ...]}`: Redis commands per slot
  since that clue started, nonzero slots only. Two reads `window_s` apart, differenced and
  divided by the time between them, give ops/s per slot. These are summed over every clue,
  because each clue counts only its own commands. This is exactly what the planner weighs: the
  commands the chat service sends, by slot.
- **LFU samples** (`lfu_samples`), the fallback for what clue cannot see: keys that other
  clients touch (a batch job, a bot straight to Redis). RANDOMKEY picks keys, OBJECT FREQ reads
  each key's LFU counter, and the counters are summed per slot. That only works under an `*-lfu`
  maxmemory-policy. An LFU counter is logarithmic and decays (one step per lfu-decay-time
  minute), so it ranks keys; it is not a rate. `hits` converts each counter to the accesses it
  likely took (hot_shard.lfu_hits) before summing, which makes slots comparable.

How they are combined (`combine`, pure; `measure` fetches both for the actions): take clue's
rates as they are. For each shard, the ops clue does not explain are the shard's own ops/s
(`workload_between`: total_commands_processed over the same window as clue's counters, less the
control plane's own commands; see hot_shard.own_ops) minus clue's rates for the slots that shard
owns. Not INFO's instantaneous_ops_per_sec: that is a rolling average of 100 ms samples, and the
collector's burst of up to 1,000 OBJECT FREQ in one pipeline lands in one sample, which read it
as thousands of ops/s of chat load and sent a plan after a phantom hot key. Spread that remainder over the sampled slots that clue did *not* count,
in proportion to their LFU `hits`. LFU must never rescale a slot clue counted: clue's count is a
measurement, and the LFU share is an estimate from a sample of at most n keys.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from chat.sharding import SLOTS, key_slot
from collectors.base import source_address
from collectors.redis import LFU_POLICIES, admin_auth, parse_config, parse_info
from collectors.redis import rates as info_rates
from collectors.resp import Conn, RedisError
from collectors.services import fetch, internal_token
from controlplane.detectors.hot_shard import COLLECTOR_COMMANDS, lfu_hits

__all__ = ["LfuSample", "Measured", "NoLoadData", "SlotLoads", "clue_targets", "combine", "lfu_samples",
           "measure", "parse_slot_stats", "rates_between", "slot_rates", "workload_between"]

PATH = "/v1/stats/slots"
UNSEEN_FLOOR = 100.0               # ops/s a shard does beyond clue's count before LFU spreads it
RESERVED_PREFIX = b"chatops:"        # the control plane's own keys (slot map, locks): not chat load


class NoLoadData(Exception):
    """No clue answered: there is nothing to plan by load. The message names every clue and why."""


@dataclass(frozen=True)
class SlotLoads:
    rates: dict[int, float]                  # slot -> ops/s, summed over the clues that answered
    window_s: float                          # the longest time between one clue's two reads
    answered: list[str] = field(default_factory=list)       # chat hosts whose clue answered twice
    failed: dict[str, str] = field(default_factory=dict)    # chat host -> error text
    restarted: list[str] = field(default_factory=list)      # counted from zero: the clue restarted
    epochs: dict[str, int] = field(default_factory=dict)    # chat host -> slot map epoch it had


@dataclass(frozen=True)
class LfuSample:
    freq: dict[int, int]                     # slot -> sum of sampled keys' OBJECT FREQ
    hits: dict[int, float]                   # slot -> sum of their estimated accesses (lfu_hits)
    sampled: int                             # distinct keys read
    policy: str | None
    note: str | None = None                  # why there is nothing, when there is nothing


# ---------------------------------------------------------------------------------------------
# clue's counters: pure
# ---------------------------------------------------------------------------------------------

# A real reply from clue on chat1 of tests/conftest.py's small_cluster, five seconds into
# `start_loadgen` (room lobby, slot 10294; the senders' user keys on 10379 and 14506):
#   {"epoch": 0, "slots": [[5110, 1], [9366, 1], [10294, 376], [10379, 47], [14506, 49]]}

def parse_slot_stats(text: str) -> tuple[int, dict[int, int]]:
    """(epoch, {slot: cumulative ops}) from /v1/stats/slots; ValueError for anything else."""
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{PATH} is not JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("slots"), list):
        raise ValueError(f"{PATH} must be an object with a 'slots' list")
    epoch = doc.get("epoch", 0)
    if not _whole(epoch):
        raise ValueError(f"{PATH}: epoch {epoch!r} is not a whole number")
    out: dict[int, int] = {}
    for row in doc["slots"]:
        if not (isinstance(row, list) and len(row) == 2 and _whole(row[0]) and _whole(row[1])):
            raise ValueError(f"{PATH}: {str(row)[:40]} is not a [slot, ops] pair of whole numbers")
        slot, ops = row
        if slot >= SLOTS:
            raise ValueError(f"{PATH}: slot {slot} is outside 0..{SLOTS - 1}")
        out[slot] = out.get(slot, 0) + ops
    return epoch, out


def _whole(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def rates_between(before: Mapping[int, int], after: Mapping[int, int],
                  seconds: float) -> tuple[dict[int, float], bool]:
    """ops/s per slot between two reads of one clue's cumulative counters, and whether the clue
    restarted in between.

    Counters only grow while a clue runs, so a slot that went down, or that disappeared, means
    the clue restarted. Then every counter of the second read started from zero and is all of
    it. That undercounts (the restart came part-way through the window), which beats a negative
    rate or a whole clue dropped."""
    if seconds <= 0:
        raise ValueError(f"seconds must be > 0, not {seconds!r}")
    restarted = any(after.get(slot, 0) < ops for slot, ops in before.items())
    out = {}
    for slot, ops in after.items():
        d = ops if restarted else ops - before.get(slot, 0)
        if d > 0:
            out[slot] = d / seconds
    return out, restarted


# ---------------------------------------------------------------------------------------------
# clue's counters: the fetch
# ---------------------------------------------------------------------------------------------

def clue_targets(cf) -> list[tuple[str, str, int]]:
    """(chat host, address, clue port) of every clue in the cluster file."""
    return [(host, cf.address(host), cf.clusters[cluster].services.clue.port)
            for host, cluster in cf.chat_hosts()]


def _read(address: str, port: int, timeout: float, src: str | None,
          token: str) -> tuple[float, int, dict[int, int]]:
    started = time.monotonic()
    epoch, counts = parse_slot_stats(fetch(address, port, PATH, timeout, src, token))
    # The counters were read somewhere during the request: take its middle.
    return (started + time.monotonic()) / 2, epoch, counts


def slot_rates(cf, window_s: float = 1.0, timeout: float = 2.0, run=None) -> SlotLoads:
    """Per-slot ops/s over about `window_s`, summed over every clue of the cluster file.

    Each clue is read twice, and its rate uses its own two read times, so a slow clue skews only
    itself. A clue that fails either read goes into `failed` with the error, and the rest still
    count. NoLoadData when none answered both reads. Reads are sequential: with the timeout
    bounding each, a hung clue delays the result but never blocks it. `run`: the run dir, whose
    secrets.env (profile local) has the internal token when the environment does not.
    """
    if not window_s > 0:
        raise ValueError(f"window_s must be > 0, not {window_s!r}")
    token, no_token = internal_token(cf, run)
    if token is None:
        raise NoLoadData(f"cannot read clue's {PATH} without the internal token: {no_token}")
    src = source_address(cf)
    targets = clue_targets(cf)
    first: dict[str, tuple[float, int, dict[int, int]]] = {}
    failed: dict[str, str] = {}
    began = time.monotonic()
    for host, address, port in targets:
        try:
            first[host] = _read(address, port, timeout, src, token)
        except (OSError, ValueError) as exc:       # refused, timed out, FetchError, bad JSON
            failed[host] = f"{type(exc).__name__}: {exc}"
    time.sleep(max(0.0, window_s - (time.monotonic() - began)))
    rates: dict[int, float] = {}
    answered, restarted, epochs, longest = [], [], {}, 0.0
    for host, address, port in targets:
        if host not in first:
            continue
        try:
            at, epoch, counts = _read(address, port, timeout, src, token)
        except (OSError, ValueError) as exc:
            failed[host] = f"{type(exc).__name__}: {exc}"
            continue
        t0, _, before = first[host]
        per_slot, reset = rates_between(before, counts, at - t0)
        for slot, r in per_slot.items():
            rates[slot] = rates.get(slot, 0.0) + r
        answered.append(host)
        epochs[host] = epoch
        longest = max(longest, at - t0)
        if reset:
            restarted.append(host)
    if not answered:
        detail = "; ".join(f"{h}: {e}" for h, e in failed.items()) or "the cluster file has no chat hosts"
        raise NoLoadData(f"no clue answered {PATH} twice, so there is no per-slot load to plan by ({detail})")
    return SlotLoads(rates, longest, answered, failed, restarted, epochs)


# ---------------------------------------------------------------------------------------------
# LFU samples
# ---------------------------------------------------------------------------------------------

def lfu_samples(conn: Conn, n: int = 200) -> LfuSample:
    """Sum OBJECT FREQ per slot over up to `n` RANDOMKEY picks on one shard (distinct keys only;
    `chatops:` keys skipped). Empty, with `note` saying why, unless the shard's maxmemory-policy is
    an LFU one: under any other policy Redis keeps no access counter and OBJECT FREQ is an error.

    Two pipelined round trips, n + the distinct keys commands: cheap next to a SCAN of the
    keyspace, and unbiased (SCAN walks hash buckets in order). A key deleted between the two
    trips answers an error in place and is left out."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a whole number >= 1, not {n!r}")
    policy = parse_config(conn.call("CONFIG", "GET", "maxmemory-policy")).get("maxmemory-policy")
    policy = None if policy is None else str(policy)
    if policy not in LFU_POLICIES:
        return LfuSample({}, {}, 0, policy, f"maxmemory-policy is {policy}; LFU counters need an *-lfu "
                                            f"policy ({' or '.join(LFU_POLICIES)})")
    picked = conn.pipeline([("RANDOMKEY",)] * n)
    # Distinct keys, in pick order: a key picked twice is read once.
    keys = list(dict.fromkeys(k for k in picked
                              if isinstance(k, bytes) and not k.startswith(RESERVED_PREFIX)))
    if not keys:
        empty = all(k is None for k in picked)
        return LfuSample({}, {}, 0, policy, "the shard has no keys" if empty else
                         f"no chat keys among {n} random picks (only {RESERVED_PREFIX.decode()} keys)")
    freq: dict[int, int] = {}
    hits: dict[int, float] = {}
    sampled = 0
    for key, f in zip(keys, conn.pipeline([("OBJECT", "FREQ", k) for k in keys])):
        if isinstance(f, RedisError) or not isinstance(f, int):
            continue
        slot = key_slot(key)
        freq[slot] = freq.get(slot, 0) + f
        hits[slot] = hits.get(slot, 0.0) + lfu_hits(f)
        sampled += 1
    return LfuSample(freq, hits, sampled, policy)



# ---------------------------------------------------------------------------------------------
# Both together, for a plan
# ---------------------------------------------------------------------------------------------

def combine(clue: Mapping[int, float], owners, shard_ops: Mapping[int, float],
            samples: Mapping[int, LfuSample]) -> tuple[dict[int, float], dict[int, float]]:
    """Per-slot load: clue's rates as they are, plus, on each shard, the ops/s clue does not explain
    (`shard_ops[i]` less clue's rates on the slots shard i owns, when that is at least
    UNSEEN_FLOOR and a tenth of the shard's ops) spread over the LFU-sampled slots clue did not
    count, in proportion to their `hits`. `owners(slot)` is the slot's shard index. Returns
    (loads, the part estimated from LFU by shard index)."""
    out = {s: float(v) for s, v in clue.items() if v > 0}
    counted: dict[int, float] = {}
    for slot, v in out.items():
        counted[owners(slot)] = counted.get(owners(slot), 0.0) + v
    estimated: dict[int, float] = {}
    for shard, sample in samples.items():
        rest = max(0.0, float(shard_ops.get(shard, 0.0)) - counted.get(shard, 0.0))
        if rest < max(UNSEEN_FLOOR, 0.1 * float(shard_ops.get(shard, 0.0))):
            # What the control plane's own scraping leaves in the figure (CLIENT LIST, the
            # connections it opens) and noise between the two sources: a remainder this small is
            # not load. (clue's counters include the guard's own commands: slotguard.OVERHEAD.)
            continue
        unseen = {slot: h for slot, h in sample.hits.items() if slot not in out and owners(slot) == shard and h > 0}
        total = sum(unseen.values())
        if rest <= 0 or total <= 0:
            continue
        for slot, h in unseen.items():
            out[slot] = rest * h / total
        estimated[shard] = rest
    return out, estimated


@dataclass
class Measured:
    loads: dict[int, float]
    notes: list[str]


def workload_between(prev: Mapping, cur: Mapping, dt: float) -> float | None:
    """A shard's ops/s between two parsed `INFO stats commandstats` replies `dt` seconds apart,
    less the commands the control plane sends itself (COLLECTOR_COMMANDS: OBJECT FREQ, SCAN,
    INFO...). None when the counters went backwards (a restart, CONFIG RESETSTAT)."""
    r = info_rates(prev, cur, dt)
    if r["ops_per_s"] is None:
        return None
    own = sum(v for k, v in r["calls_per_s"].items() if k in COLLECTOR_COMMANDS)
    return max(0.0, r["ops_per_s"] - own)


def _shard_info(cf, shard) -> tuple[float, dict]:
    with Conn(cf.address(shard.host), shard.port, 2.0, source_address(cf), admin_auth(cf)) as conn:
        info = parse_info(conn.call("INFO", "stats", "commandstats"))
    return time.monotonic(), info


def measure(cf, smap, window_s: float = 1.0, samples: int = 200, run=None) -> Measured:
    """What a plan weighs: clue's per-slot rates over `window_s`, completed by each shard's LFU
    samples for the load clue does not see. Never raises for a missing source: the notes say what
    was measured and what was not, and empty loads mean "plan by slot count"."""
    notes: list[str] = []
    shards = [(i, shard) for i, shard in enumerate(cf.redis.shards) if i < smap.n_shards]
    before: dict[int, tuple[float, dict]] = {}
    for index, shard in shards:
        try:
            before[index] = _shard_info(cf, shard)
        except (OSError, RedisError) as exc:
            notes.append(f"{shard.name}: no ops/s ({exc})")
    try:
        clue = slot_rates(cf, window_s, run=run)
        notes.append(f"clue's per-slot counters on {len(clue.answered)} chat host(s) over {clue.window_s:.1f} s"
                     + (f"; not answering: {', '.join(clue.failed)}" if clue.failed else ""))
        rates = clue.rates
    except NoLoadData as exc:
        notes.append(f"no clue answered ({exc})")
        rates = {}
    shard_ops: dict[int, float] = {}
    sampled: dict[int, LfuSample] = {}
    for index, shard in shards:
        if index not in before:
            continue
        try:
            at, info = _shard_info(cf, shard)
            ops = workload_between(before[index][1], info, at - before[index][0])
            if ops is not None:
                shard_ops[index] = ops
            with Conn(cf.address(shard.host), shard.port, 2.0, source_address(cf), admin_auth(cf)) as conn:
                sample = lfu_samples(conn, samples)
        except (OSError, RedisError) as exc:
            notes.append(f"{shard.name}: no LFU sample ({exc})")
            continue
        if sample.note:
            notes.append(f"{shard.name}: no LFU sample ({sample.note})")
        else:
            sampled[index] = sample
    loads, estimated = combine(rates, smap.shard_of_slot, shard_ops, sampled)
    if estimated:
        notes.append("load clue does not see, spread by LFU samples: " + ", ".join(
            f"{smap.names[i]} {v:,.0f} ops/s" for i, v in sorted(estimated.items())))
    return Measured(loads, notes)
