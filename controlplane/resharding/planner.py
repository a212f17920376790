"""The load-aware reshard planner: which slots to move, from which shard to which, chosen by load.

`redis-cli --cluster rebalance` and Codis's balance even out slot *counts*. That is right when
every slot is as busy as every other and wrong when one room's slot does a third of a shard's
work. This planner weighs each slot by its measured load (ops/s, clue's per-slot counters:
`loads.slot_rates`) and moves the fewest slots that bring the hot shard back near the mean.

Pure: loads and a SlotMap in, a `Plan` out, no I/O. One function, three modes:

- balance (the default): take from `source` (default: the busiest shard) until it is within
  `tolerance` of the mean shard load. Each slot goes to whichever allowed target is the least
  loaded at that moment.
- `fraction=f`: move f of the source's load (the hot_shard finding's suggested `fraction`).
- `fill=i`: fill shard i (a new, empty shard: add_shard) up to the mean. Each slot comes from
  whichever other shard is the busiest at that moment, so the old shards end up about even.

Rules shared by all modes:

- The mean is taken over every shard in the map, including an empty new one.
- No target ends above mean x (1 + tolerance), the *ceiling*: a plan must not create a new hot
  shard.
- A slot with no load is never moved by load: it would cost a migration and shift nothing.
- When no load was measured at all (every slot at 0: no traffic, or the counters were just
  reset), the plan balances slot *counts* instead (`by="slot count"`), aiming each shard at its
  fair share as `redis-cli --cluster rebalance` does. Tolerance does not apply there: a count has
  no noise to tolerate, so the ceiling is the fair share rounded up.

Why greedy, largest slot first: no k slots can shed more load than the k largest, so taking the
largest first gets the source under the ceiling in the fewest moves. Two refinements keep the same
count. First, the move that finishes the job takes the *smallest* slot that is big enough, so the
source does not drop far below the mean and the target takes no more than it must. Second, a slot
too big for every target's headroom is skipped for good, because headroom only shrinks as the plan
goes on. Without the ceiling this gives the fewest moves exactly. With it, the problem becomes bin
packing (NP-hard) and this is the usual first-fit-decreasing heuristic.

When the goal cannot be reached the plan says why in one sentence and keeps any moves that still
help (each move lowers the source and keeps its target under the ceiling). The usual reason is a
hot key: a slot whose load alone is above the ceiling. That slot pushes any shard holding it over
the ceiling, so moving it only moves the problem (runbooks/hot_key.md).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from numbers import Real
from typing import Any

from chat.sharding import SLOTS, SlotMap, describe_slots

__all__ = ["HOT_KEY_RUNBOOK", "KEYS_PER_S", "Plan", "estimate_seconds", "plan"]

HOT_KEY_RUNBOOK = "runbooks/hot_key.md"
# What migrate.move_slots sustained in bench/reshard.py on this 2-core machine, moving 500,000 of a
# shard's 1,000,000 keys while the chat carried 100 msgs/s to 100 receivers (92k keys/s, scan
# included); with both cores saturated by traffic it halves. For the plan's estimate only.
KEYS_PER_S = 90_000
_REL = 1e-9            # float slack: sums of many ops/s figures drift in the last bits

Move = tuple[int, int, int]          # (slot, from shard index, to shard index)


def _le(a: float, b: float) -> bool:
    return a <= b + _REL * max(1.0, abs(b))


@dataclass(frozen=True)
class Plan:
    """What to move and what it should achieve. Loads are in ops/s when `by == "load"`, in slots
    when `by == "slot count"`; lists are indexed by shard index, as in the SlotMap."""
    moves: list[Move]                # in the order chosen: heaviest first, so relief comes early
    achievable: bool
    reason: str                      # one human sentence: what the moves do, or why they cannot
    by: str                          # "load" | "slot count"
    mode: str                        # "balance" | "fraction" | "fill"
    load_before: list[float]
    load_after: list[float]
    mean: float
    ceiling: float                   # no target ends above this
    names: tuple[str, ...]
    keys: int | None = None          # keys in the moved slots, when key counts were given
    bytes: int | None = None         # their bytes, when given

    @property
    def unit(self) -> str:
        return "ops/s" if self.by == "load" else "slots"

    def slots_by_pair(self) -> dict[tuple[int, int], list[int]]:
        """{(from, to): [slots, sorted]}, pairs in index order."""
        out: dict[tuple[int, int], list[int]] = {}
        for slot, a, b in self.moves:
            out.setdefault((a, b), []).append(slot)
        return {pair: sorted(out[pair]) for pair in sorted(out)}

    def describe(self, limit: int = 5) -> list[str]:
        """One line per (from, to) pair: `shard0 -> shard2: 3 slots (5, 9-10)`."""
        return [f"{self.names[a]} -> {self.names[b]}: {_count(len(slots), 'slot')} "
                f"({describe_slots(slots, limit)})" for (a, b), slots in self.slots_by_pair().items()]

    def as_dict(self) -> dict[str, Any]:
        return {"moves": [list(m) for m in self.moves], "achievable": self.achievable, "reason": self.reason,
                "by": self.by, "mode": self.mode, "unit": self.unit, "load_before": self.load_before,
                "load_after": self.load_after, "mean": self.mean, "ceiling": self.ceiling,
                "names": list(self.names), "keys": self.keys, "bytes": self.bytes, "ranges": self.describe()}


def estimate_seconds(keys: int, keys_per_s: float = KEYS_PER_S) -> float:
    """How long migrating `keys` keys should take at `keys_per_s`."""
    if not isinstance(keys, int) or isinstance(keys, bool) or keys < 0:
        raise ValueError(f"keys must be a whole number >= 0, not {keys!r}")
    if not isinstance(keys_per_s, Real) or isinstance(keys_per_s, bool) or not keys_per_s > 0 \
            or not math.isfinite(keys_per_s):
        raise ValueError(f"keys_per_s must be a positive number, not {keys_per_s!r}")
    return keys / keys_per_s


# ---------------------------------------------------------------------------------------------
# Input checks: every bad value named, never a KeyError or a plan built on garbage
# ---------------------------------------------------------------------------------------------

def _slot_values(values: Mapping, what: str, *, whole: bool) -> dict[int, float]:
    if not isinstance(values, Mapping):
        raise ValueError(f"{what} must be a mapping of slot -> value, not {type(values).__name__}")
    out: dict[int, float] = {}
    for slot, v in values.items():
        if not isinstance(slot, int) or isinstance(slot, bool):
            raise ValueError(f"{what}: slot {slot!r} is not an integer")
        if not 0 <= slot < SLOTS:
            raise ValueError(f"{what}: slot {slot} is outside 0..{SLOTS - 1}")
        ok = isinstance(v, int) if whole else isinstance(v, Real)
        if not ok or isinstance(v, bool) or not math.isfinite(v) or v < 0:
            kind = "a whole number" if whole else "a finite number"
            raise ValueError(f"{what} of slot {slot} must be {kind} >= 0, not {v!r}")
        out[slot] = v if whole else float(v)
    return out


def _index(value: Any, n: int, what: str) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < n:
        raise ValueError(f"{what} must be a shard index in 0..{n - 1}, not {value!r}")
    return value


# ---------------------------------------------------------------------------------------------
# One shard's movable slots
# ---------------------------------------------------------------------------------------------

class _Queue:
    """A shard's slots with load, heaviest first (ties: lower slot first, so equal slots leave as
    contiguous ranges). `take(need, room)` hands out the next slot to move."""

    def __init__(self, weighted: list[tuple[float, int]]):
        weighted.sort(key=lambda x: (-x[0], x[1]))
        self.w = [w for w, _ in weighted]
        self.slot = [s for _, s in weighted]
        self.neg = [-w for w in self.w]          # ascending, for bisect
        self.gone = bytearray(len(weighted))
        self.i = 0                               # first slot not yet taken or skipped

    @property
    def top(self) -> tuple[float, int] | None:
        return (self.w[0], self.slot[0]) if self.w else None

    def take(self, need: float, room: float) -> tuple[int, float] | None:
        """The smallest slot with load >= `need` if one fits in `room`, else the largest that
        fits; None when none fits. Callers only ever shrink `room`, so a slot that does not fit
        now never will, and the cursor moves past it for good."""
        w, n = self.w, len(self.w)
        while self.i < n and (self.gone[self.i] or not _le(w[self.i], room)):
            self.i += 1
        if self.i == n:
            return None
        # Slots [0, b) have load >= need; the last of them not yet gone is the smallest that finishes.
        b = bisect.bisect_right(self.neg, -need + _REL * max(1.0, need))
        j = b - 1
        while j >= self.i and self.gone[j]:
            j -= 1
        if j >= self.i:
            pick = max(bisect.bisect_left(self.neg, self.neg[j]), self.i)   # first of its equals
            while self.gone[pick]:
                pick += 1
        else:
            pick = self.i
        self.gone[pick] = 1
        return self.slot[pick], w[pick]


# ---------------------------------------------------------------------------------------------
# The planner
# ---------------------------------------------------------------------------------------------

def plan(loads: Mapping[int, float], smap: SlotMap, *, source: int | None = None,
         targets: Iterable[int] | None = None, tolerance: float = 0.10, fraction: float | None = None,
         fill: int | None = None, keys: Mapping[int, int] | None = None,
         nbytes: Mapping[int, int] | None = None) -> Plan:
    """Plan a reshard of `smap` from per-slot `loads` (slot -> ops/s; absent slots are 0).

    balance (default): bring `source` (default: the busiest shard) within `tolerance` of the
    mean, moving to `targets` (default: every other shard). `fraction=f`: move f (0 < f <= 1) of
    the source's load instead. `fill=i`: fill shard i up to the mean from all the others (no
    `source`, `targets` or `fraction` with it). `keys` and `nbytes` (slot -> count) give the
    plan's key and byte totals. ValueError on any bad input.
    """
    if not isinstance(smap, SlotMap):
        raise ValueError(f"smap must be a SlotMap, not {type(smap).__name__}")
    n = smap.n_shards
    if n == 1:
        raise ValueError(f"the map has one shard ({smap.names[0]}): there is nowhere to move slots")
    slot_load = _slot_values(loads, "load", whole=False)
    key_counts = _slot_values(keys, "key count", whole=True) if keys is not None else None
    byte_counts = _slot_values(nbytes, "byte count", whole=True) if nbytes is not None else None
    if not isinstance(tolerance, Real) or isinstance(tolerance, bool) or not 0 <= tolerance <= 1:
        raise ValueError(f"tolerance must be a number in 0..1 (0.10 is 10 %), not {tolerance!r}")
    source, fill = _index(source, n, "source"), _index(fill, n, "fill")
    if fraction is not None and (not isinstance(fraction, Real) or isinstance(fraction, bool)
                                 or not 0 < fraction <= 1):
        raise ValueError(f"fraction must be a number in (0, 1], not {fraction!r}")
    if fill is not None and (source is not None or targets is not None or fraction is not None):
        raise ValueError("fill takes from every other shard: give it without source, targets or fraction")
    target_set: list[int] | None = None
    if targets is not None:
        if isinstance(targets, (str, bytes)) or not isinstance(targets, Iterable):
            raise ValueError(f"targets must be shard indexes, not {targets!r}")
        target_set = sorted({_index(t, n, "each target") for t in targets})
        if not target_set:
            raise ValueError("targets is empty: name at least one shard that may receive slots")

    owners = [smap.shard_of_slot(s) for s in range(SLOTS)]
    total = math.fsum(slot_load.values())
    by = "load" if total > 0 else "slot count"
    weights = ({s: v for s, v in slot_load.items() if v > 0} if by == "load"
               else dict.fromkeys(range(SLOTS), 1.0))
    before = [0.0] * n
    for s, w in weights.items():
        before[owners[s]] += w
    mean = math.fsum(before) / n
    if by == "load":
        ceiling, floor = mean * (1 + tolerance), mean * (1 - tolerance)
    else:
        ceiling, floor = float(math.ceil(mean)), float(math.floor(mean))

    def queue(shard: int) -> _Queue:
        return _Queue([(w, s) for s, w in weights.items() if owners[s] == shard])

    ctx = _Ctx(smap.names, by, mean, ceiling, floor, tolerance, before)
    if fill is not None:
        moves, reason, ok = _fill(ctx, fill, queue)
        mode = "fill"
    else:
        if source is None:
            source = max(range(n), key=lambda i: (before[i], -i))
        if target_set is None:
            target_set = [i for i in range(n) if i != source]
        elif source in target_set:
            raise ValueError(f"shard {source} ({smap.names[source]}) cannot be both the source and a target")
        mode = "fraction" if fraction is not None else "balance"
        moves, reason, ok = _from_source(ctx, source, target_set, fraction, queue(source))
    if by == "slot count":
        reason = ("No load was measured (every slot at 0 ops/s), so this plan balances slot counts as "
                  f"redis-cli --cluster rebalance does: {reason[0].lower()}{reason[1:]}")
    moves = _contiguous(moves, weights)
    moved = [s for s, _, _ in moves]
    return Plan(moves, ok, reason, by, mode, before, ctx.load, mean, ceiling, smap.names,
                sum(key_counts.get(s, 0) for s in moved) if key_counts is not None else None,
                sum(byte_counts.get(s, 0) for s in moved) if byte_counts is not None else None)


def _contiguous(moves: list[Move], weights: Mapping[int, float]) -> list[Move]:
    """The same moves, with equal-load slots from one source dealt to their targets in slot order.

    Sending each slot to the least-loaded target alternates between targets when slots weigh the
    same (every slot, when balancing counts), which leaves ranges like 0, 2, 4, ... on one target
    and 1, 3, 5, ... on the other. Equal-load slots from the same source can be swapped without
    changing any shard's load, so each target gets one contiguous block of them instead. That is
    fewer ranges for an operator to read and fewer for the migration to walk.
    """
    groups: dict[tuple[int, float], list[int]] = {}
    for k, (slot, a, _) in enumerate(moves):
        groups.setdefault((a, weights[slot]), []).append(k)
    out = list(moves)
    for (a, _), idx in groups.items():
        dealt = zip(sorted(moves[k][2] for k in idx), sorted(moves[k][0] for k in idx))
        for k, (t, slot) in zip(idx, dealt):
            out[k] = (slot, a, t)
    return out


@dataclass
class _Ctx:
    names: tuple[str, ...]
    by: str
    mean: float
    ceiling: float
    floor: float
    tolerance: float
    before: list[float]

    def __post_init__(self) -> None:
        self.load = list(self.before)            # updated move by move

    def num(self, x: float) -> str:
        if self.by != "load" or abs(x) >= 100 or x == int(x):
            return f"{x:,.0f}"
        return f"{x:,.1f}"

    def amount(self, x: float) -> str:
        return f"{self.num(x)} {'ops/s' if self.by == 'load' else 'slots'}"

    def goal(self) -> str:
        if self.by == "load":
            return f"within {self.tolerance:.0%} of the mean {self.amount(self.mean)}"
        return f"at most its fair share of {self.num(self.ceiling)} slots"

    def hot_slot(self, shard: int, q: _Queue) -> str | None:
        """The hot-key sentence when `shard`'s heaviest slot alone is above the ceiling."""
        top = q.top
        if self.by != "load" or top is None or _le(top[0], self.ceiling):
            return None
        w, slot = top
        return (f"Slot {slot} alone carries {w / self.before[shard]:.0%} of {self.names[shard]}'s load "
                f"({self.amount(w)}, above the {self.amount(self.ceiling)} ceiling for any shard): a hot "
                f"key, and moving its slot only moves the problem (see {HOT_KEY_RUNBOOK})")

    def names_of(self, shards: Iterable[int]) -> str:
        return ", ".join(self.names[i] for i in sorted(set(shards)))


def _count(k: int, word: str) -> str:
    return f"{k:,} {word}{'' if k == 1 else 's'}"


def _from_source(ctx: _Ctx, src: int, targets: list[int], fraction: float | None,
                 q: _Queue) -> tuple[list[Move], str, bool]:
    """balance (fraction None) or fraction mode: one source, slots to the least-loaded target."""
    load, ceiling = ctx.load, ctx.ceiling
    start = load[src]
    goal = fraction * start if fraction is not None else None   # load to move, fraction mode
    moves: list[Move] = []
    moved = 0.0

    def need() -> float:
        return goal - moved if goal is not None else load[src] - ceiling

    while not _le(need(), 0.0):
        t = min(targets, key=lambda i: (load[i], i))
        room = ceiling - load[t]
        if _le(room, 0.0):
            break
        got = q.take(need(), room)
        if got is None:
            break
        slot, w = got
        moves.append((slot, src, t))
        load[src] -= w
        load[t] += w
        moved += w
    name, reached = ctx.names[src], _le(need(), 0.0)
    to = ctx.names_of(t for _, _, t in moves)
    what = "its load" if ctx.by == "load" else "its slots"
    if goal is not None:
        if not moves and reached:
            return moves, f"{name} has no load to move: nothing to do.", True
        done = (f"moving {_count(len(moves), 'slot')} from {name} to {to} moves {ctx.amount(moved)}, "
                f"{moved / start:.0%} of {what} (asked: {fraction:.0%})") if moves else "nothing can move"
        if reached:
            return moves, f"{done[0].upper()}{done[1:]}, leaving {name} at {ctx.amount(load[src])}.", True
        why = ctx.hot_slot(src, q) or _headroom(ctx, targets, goal, "move")
        return moves, f"{why}; so {done}.", False
    if not moves and reached:
        return moves, f"{name} carries {ctx.amount(start)}, already {ctx.goal()}: nothing to move.", True
    done = (f"moving {_count(len(moves), 'slot')} ({moved / start:.0%} of {what}) from {name} to {to} "
            f"brings it from {ctx.num(start)} to {ctx.amount(load[src])}")
    if reached:
        return moves, f"{done[0].upper()}{done[1:]}, {ctx.goal()}.", True
    partial = f"; {done}, still above the {ctx.amount(ceiling)} ceiling" if moves else ""
    why = ctx.hot_slot(src, q)
    if why is None:
        why = _headroom(ctx, targets, start - ceiling, "shed")
    return moves, f"{why}{partial}.", False


def _headroom(ctx: _Ctx, targets: list[int], wanted: float, verb: str) -> str:
    """Why the targets could not take `wanted`: too little headroom in all, or slots too coarse."""
    room = math.fsum(max(0.0, ctx.ceiling - ctx.before[t]) for t in targets)
    names = ctx.names_of(targets)
    if room < wanted and not _le(wanted, room):
        return (f"The targets lack headroom: {names} can take only {ctx.amount(room)} more below the "
                f"{ctx.amount(ctx.ceiling)} ceiling, and the plan needed to {verb} {ctx.amount(wanted)} "
                f"(allow more targets or add a shard)")
    left = max(0.0, max(ctx.ceiling - ctx.load[t] for t in targets))
    return (f"The slots are too coarse: no remaining slot fits the {ctx.amount(left)} of headroom "
            f"left on {names} below the {ctx.amount(ctx.ceiling)} ceiling")


def _fill(ctx: _Ctx, dst: int, queue) -> tuple[list[Move], str, bool]:
    """fill mode: bring `dst` up to the mean, each slot from the busiest other shard that has one
    that fits; then keep going while a source is above the ceiling and `dst` has room."""
    load, ceiling, mean = ctx.load, ctx.ceiling, ctx.mean
    sources = [i for i in range(len(load)) if i != dst]
    queues = {i: queue(i) for i in sources}
    moves: list[Move] = []
    while True:
        short = mean - load[dst]
        room = ceiling - load[dst]
        if _le(room, 0.0):
            break
        got = None
        for s in sorted(sources, key=lambda i: (-load[i], i)):
            need = short if not _le(short, 0.0) else load[s] - ceiling
            if _le(need, 0.0):
                break          # dst is at the mean and no source (busiest first) is above the ceiling
            got = queues[s].take(need, room)
            if got is not None:
                break
        if got is None:
            break
        slot, w = got
        moves.append((slot, s, dst))
        load[s] -= w
        load[dst] += w
    name = ctx.names[dst]
    busiest = max(sources, key=lambda i: (load[i], -i))
    filled = _le(ctx.floor, load[dst])
    if not moves and filled and _le(load[busiest], ceiling):
        return moves, (f"{name} already carries {ctx.amount(load[dst])} (mean {ctx.amount(mean)}): nothing "
                       "to move."), True
    done = (f"moving {_count(len(moves), 'slot')} from {ctx.names_of(s for _, s, _ in moves)} to {name} "
            f"brings it from {ctx.num(ctx.before[dst])} to {ctx.amount(load[dst])} (mean "
            f"{ctx.amount(mean)})")
    if filled and _le(load[busiest], ceiling):
        return moves, (f"{done[0].upper()}{done[1:]}, and leaves the busiest shard, {ctx.names[busiest]}, "
                       f"at {ctx.amount(load[busiest])}."), True
    partial = f"; {done}" if moves else ""
    hot = next((h for h in (ctx.hot_slot(i, queues[i]) for i in sorted(sources, key=lambda i: -load[i])
                            if not _le(load[i], ceiling)) if h), None)
    if hot:
        return moves, f"{hot}{partial}.", False
    if not filled:
        return moves, (f"The other shards' remaining slots are too coarse to fill {name} further below the "
                       f"{ctx.amount(ceiling)} ceiling{partial}."), False
    over = [i for i in sources if not _le(load[i], ceiling)]
    one = len(over) == 1
    return moves, (f"{ctx.names_of(over)} {'stays' if one else 'stay'} above the {ctx.amount(ceiling)} "
                   f"ceiling once {name} is full (the busiest, {ctx.names[busiest]}, at "
                   f"{ctx.amount(load[busiest])}){partial}: reshard {'it' if one else 'them'} onto the other "
                   "shards as well."), False
