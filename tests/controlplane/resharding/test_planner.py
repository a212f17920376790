"""The load-aware reshard planner, on its own: per-slot loads and a SlotMap in, a Plan out."""

from __future__ import annotations

import json
import math
import random

import pytest

from chat.sharding import SLOTS, SlotMap
from controlplane.resharding.planner import HOT_KEY_RUNBOOK, estimate_seconds, plan

EVEN3 = SlotMap.even(3)          # 0-5460, 5461-10922, 10923-16383


def split_map(*bounds: int) -> SlotMap:
    """Shard i owns slots [bounds[i-1], bounds[i]) (bounds[0] is 0's end): contiguous, uneven."""
    owners, start = [], 0
    for i, end in enumerate((*bounds, SLOTS)):
        owners += [i] * (end - start)
        start = end
    return SlotMap(owners, len(bounds) + 1)


def after(p, smap: SlotMap, loads: dict[int, float]) -> list[float]:
    """Each shard's load recomputed from the moves: the plan's own figures must agree."""
    owners = [smap.shard_of_slot(s) for s in range(SLOTS)]
    for slot, a, b in p.moves:
        assert owners[slot] == a, f"slot {slot} moved from {a} but is owned by {owners[slot]}"
        owners[slot] = b
    out = [0.0] * smap.n_shards
    for s, v in loads.items():
        out[owners[s]] += v
    return out


# ---------------------------------------------------------------------------------------------
# balance by load
# ---------------------------------------------------------------------------------------------

def test_hot_shard_spread_over_many_slots_moves_the_fewest_and_lands_within_tolerance():
    # shard0: 1000 slots at 3 ops/s; the others 1000 slots at 1 ops/s each. Mean 1666.7, ceiling
    # 1833.3: shard0 must shed 1166.7, i.e. ceil(1166.7 / 3) = 389 slots, no fewer possible.
    loads = {s: 3.0 for s in range(1000)}
    loads |= {s: 1.0 for s in range(5461, 6461)} | {s: 1.0 for s in range(10923, 11923)}
    p = plan(loads, EVEN3)
    assert p.by == "load" and p.mode == "balance" and p.achievable
    assert len(p.moves) == 389
    assert p.load_before == [3000.0, 1000.0, 1000.0]
    assert p.load_after == pytest.approx([3000 - 389 * 3, 1000 + 195 * 3, 1000 + 194 * 3])
    assert p.load_after == pytest.approx(after(p, EVEN3, loads))
    assert abs(p.load_after[0] - p.mean) <= 0.10 * p.mean
    assert max(p.load_after) == p.load_after[0] <= p.ceiling
    # Equal slots leave as one contiguous block per target.
    assert p.describe() == ["shard0 -> shard1: 195 slots (0-194)", "shard0 -> shard2: 194 slots (195-388)"]
    assert p.reason == ("Moving 389 slots (39% of its load) from shard0 to shard1, shard2 brings it from "
                        "3,000 to 1,833 ops/s, within 10% of the mean 1,667 ops/s.")


def test_largest_slots_go_first_and_the_last_move_takes_the_smallest_that_suffices():
    # shard0 = 10 slots at 50 + 500 at 1; shard1 = 0 (2 shards): mean 500, ceiling 550, shed 450:
    # nine 50s exactly, not a single 1-ops/s slot.
    loads = {s: 50.0 for s in range(10)} | {s: 1.0 for s in range(100, 600)}
    p = plan(loads, SlotMap.even(2))
    assert p.achievable and sorted(s for s, _, _ in p.moves) == list(range(9))
    assert p.load_after == pytest.approx([550.0, 450.0])
    # Need 20.7 with 40, 30, 25 and 5 on offer (tolerance 0.7: ceiling 79.3, room 59.3): one move,
    # the 25, so shard0 lands at 75 rather than 60.
    loads = {0: 40.0, 1: 30.0, 2: 25.0, 3: 5.0, 6000: 20.0, 12000: 20.0}
    p = plan(loads, EVEN3, tolerance=0.7)
    assert p.moves == [(2, 0, 1)] and p.achievable
    assert p.load_after == pytest.approx([75.0, 45.0, 20.0])


def test_nothing_to_move_when_already_within_tolerance():
    loads = {0: 105.0, 6000: 100.0, 12000: 95.0}
    p = plan(loads, EVEN3)
    assert p.moves == [] and p.achievable
    assert p.load_after == p.load_before == [105.0, 100.0, 95.0]
    assert p.reason == "shard0 carries 105 ops/s, already within 10% of the mean 100 ops/s: nothing to move."


# ---------------------------------------------------------------------------------------------
# hot key, headroom, targets
# ---------------------------------------------------------------------------------------------

def test_one_hot_slot_is_not_achievable_and_points_to_the_hot_key_runbook():
    # Slot 100 carries 800 of shard0's 1000 ops/s; mean 600, ceiling 660: any shard holding it is hot.
    loads = {100: 800.0} | {s: 2.0 for s in range(100)} | {s: 1.0 for s in range(9000, 9200)}
    p = plan(loads, SlotMap.even(2))
    assert not p.achievable
    assert "Slot 100 alone carries 80% of shard0's load (800 ops/s" in p.reason
    assert HOT_KEY_RUNBOOK in p.reason and "moving its slot only moves the problem" in p.reason
    # The best partial plan still helps: everything else leaves, the hot slot stays.
    assert 100 not in {s for s, _, _ in p.moves}
    assert sorted(s for s, _, _ in p.moves) == list(range(100))
    assert p.load_after == pytest.approx([800.0, 400.0])
    assert "brings it from 1,000 to 800 ops/s, still above the 660 ops/s ceiling" in p.reason


def test_targets_restriction_is_honoured_and_lack_of_headroom_is_said():
    loads = {s: 3.0 for s in range(1000)} | {s: 1.0 for s in range(5461, 6461)} | \
        {s: 1.0 for s in range(10923, 11423)}
    # shard0 3000, shard1 1000, shard2 500: mean 1500, ceiling 1650. shard2 alone has 1150 of room
    # and shard0 must shed 1350.
    p = plan(loads, EVEN3, targets=[2])
    assert {t for _, _, t in p.moves} == {2} and {a for _, a, _ in p.moves} == {0}
    assert not p.achievable
    assert p.load_after[1] == 1000.0
    assert p.load_after[2] <= p.ceiling and p.load_after[2] == pytest.approx(500 + 383 * 3)
    assert p.reason.startswith("The targets lack headroom: shard2 can take only 1,150 ops/s more below the "
                               "1,650 ops/s ceiling, and the plan needed to shed 1,350 ops/s")
    # With room enough on the one allowed target, everything goes there and the goal is met.
    loads = {s: 3.0 for s in range(1000)} | {s: 1.0 for s in range(5461, 8461)}
    p = plan(loads, EVEN3, targets=[2])          # 3000, 3000, 0: mean 2000, ceiling 2200
    assert p.achievable and {t for _, _, t in p.moves} == {2}
    assert p.load_after == pytest.approx([2199.0, 3000.0, 801.0])
    # source given: plan for it even though it is not the busiest.
    p = plan(loads, EVEN3, source=1, targets=[2])
    assert {a for _, a, _ in p.moves} == {1} and p.achievable


def test_targets_never_end_above_the_ceiling():
    rng = random.Random(20140714)
    for n in (2, 3, 5):
        smap = SlotMap.even(n)
        for _ in range(25):
            loads = {s: rng.choice([0.0, 0.5, 1.0, 2.0, 40.0]) * rng.random()
                     for s in rng.sample(range(SLOTS), 3000)}
            hot = rng.randrange(n)
            loads |= {s: rng.random() * 30 for s in smap.slots_of(hot)[:400]}
            tol = rng.choice([0.0, 0.05, 0.10, 0.25])
            p = plan(loads, smap, tolerance=tol)
            assert p.load_after == pytest.approx(after(p, smap, loads))
            src = max(range(n), key=lambda i: (p.load_before[i], -i))
            assert {a for _, a, _ in p.moves} <= {src}
            for t in {t for _, _, t in p.moves}:
                assert p.load_after[t] <= p.mean * (1 + tol) * (1 + 1e-9), (p.reason, t)
            assert p.load_after[src] <= p.load_before[src]
            if p.achievable:
                assert p.load_after[src] <= p.ceiling * (1 + 1e-9)
            # A coarse slot aimed at a target with little room is skipped, not squeezed in.
    loads = {s: 50.0 for s in range(20)} | {9000: 520.0}
    p = plan(loads, SlotMap.even(2))        # 1000 vs 520: mean 760, ceiling 836, room 316, shed 164
    assert p.load_after[1] <= p.ceiling and len(p.moves) == 4 and p.achievable


# ---------------------------------------------------------------------------------------------
# modes: fraction, fill (add_shard)
# ---------------------------------------------------------------------------------------------

def test_fraction_moves_that_share_of_the_source_load_to_the_target():
    loads = {s: 2.0 for s in range(1000)}
    p = plan(loads, EVEN3, source=0, targets=[1], fraction=0.25)
    assert p.mode == "fraction" and p.achievable
    assert len(p.moves) == 250 and {(a, t) for _, a, t in p.moves} == {(0, 1)}
    assert p.load_after == pytest.approx([1500.0, 500.0, 0.0])
    assert "(asked: 25%)" in p.reason
    # More than the target can take below the ceiling (mean 666.7, ceiling 733.3): partial, said so.
    p = plan(loads, EVEN3, source=0, targets=[1], fraction=0.9)
    assert not p.achievable and p.load_after[1] <= p.ceiling and len(p.moves) == 366
    assert "The targets lack headroom" in p.reason and "(asked: 90%)" in p.reason


def test_fill_a_new_empty_shard_brings_it_to_the_mean():
    grown = EVEN3.grown(("shard0", "shard1", "shard2", "shard3"))
    loads = {s: 2.0 for s in range(SLOTS)}
    p = plan(loads, grown, fill=3)
    assert p.mode == "fill" and p.achievable
    assert p.mean == 8192.0 and p.load_before == [10922.0, 10924.0, 10922.0, 0.0]
    assert p.load_after == [8192.0, 8192.0, 8192.0, 8192.0]
    assert p.describe() == ["shard0 -> shard3: 1,365 slots (0-1364)",
                            "shard1 -> shard3: 1,366 slots (5461-6826)",
                            "shard2 -> shard3: 1,365 slots (10923-12287)"]
    # Uneven old shards: whichever is busiest gives next, so all of them end at the mean.
    loads = {s: 3.0 for s in range(800)} | {s: 1.0 for s in range(5461, 7061)} | \
        {s: 2.0 for s in range(10923, 11923)}
    p = plan(loads, grown, fill=3)       # 2400, 1600, 2000, 0: mean 1500
    assert p.achievable
    assert p.load_after == pytest.approx([1500.0, 1500.0, 1500.0, 1500.0])
    assert p.describe() == ["shard0 -> shard3: 300 slots (0-299)", "shard1 -> shard3: 100 slots (5461-5560)",
                            "shard2 -> shard3: 250 slots (10923-11172)"]
    # 3000, 1000, 2000: 1700 above the ceiling (1650) on two shards, more than the new shard can take.
    loads = {s: 3.0 for s in range(1000)} | {s: 1.0 for s in range(5461, 6461)} | \
        {s: 2.0 for s in range(10923, 11923)}
    p = plan(loads, grown, fill=3)
    assert not p.achievable and p.load_after[3] <= p.ceiling and p.load_after[1] == 1000.0
    assert p.reason.startswith("shard0, shard2 stay above the 1,650 ops/s ceiling once shard3 is full (the "
                               "busiest, shard2, at 1,676 ops/s)")
    assert p.reason.endswith("reshard them onto the other shards as well.")


def test_fill_with_a_hot_slot_elsewhere_says_so():
    grown = SlotMap.even(2).grown(("shard0", "shard1", "shard2"))
    loads = {7: 900.0} | {s: 1.0 for s in range(100, 400)} | {s: 1.0 for s in range(9000, 9300)}
    p = plan(loads, grown, fill=2)       # 1200, 300, 0: mean 500, ceiling 550
    assert not p.achievable
    assert p.reason.startswith("Slot 7 alone carries 75% of shard0's load")
    assert 7 not in {s for s, _, _ in p.moves} and p.load_after[2] <= p.ceiling


# ---------------------------------------------------------------------------------------------
# no load measured: slot counts, as redis-cli --cluster rebalance
# ---------------------------------------------------------------------------------------------

def test_zero_load_falls_back_to_balancing_slot_counts():
    smap = split_map(8192, 12288)          # 8192, 4096, 4096 slots
    for loads in ({}, dict.fromkeys(range(SLOTS), 0.0)):
        p = plan(loads, smap)
        assert p.by == "slot count" and p.unit == "slots" and p.achievable
        assert p.reason.startswith("No load was measured (every slot at 0 ops/s), so this plan balances slot "
                                   "counts as redis-cli --cluster rebalance does: moving 2,730 slots")
        assert p.load_before == [8192.0, 4096.0, 4096.0]
        assert p.load_after == [5462.0, 5461.0, 5461.0]
        assert p.describe() == ["shard0 -> shard1: 1,365 slots (0-1364)",
                                "shard0 -> shard2: 1,365 slots (1365-2729)"]
    # An even map is already balanced by count.
    p = plan({}, EVEN3)
    assert p.moves == [] and p.achievable and p.by == "slot count"
    # A new shard gets its fair share of slots.
    p = plan({}, SlotMap.even(2).grown(("shard0", "shard1", "shard2")), fill=2)
    assert p.load_after == [5461.0, 5461.0, 5462.0] and p.achievable


# ---------------------------------------------------------------------------------------------
# totals, output, estimates
# ---------------------------------------------------------------------------------------------

def test_keys_and_bytes_totals_and_the_time_estimate():
    loads = {s: 3.0 for s in range(1000)} | {s: 1.0 for s in range(5461, 6461)} | \
        {s: 1.0 for s in range(10923, 11923)}
    keys = {s: 10 for s in range(SLOTS)} | {0: 1000}
    nbytes = {s: 100 for s in range(400)}
    p = plan(loads, EVEN3, keys=keys, nbytes=nbytes)
    assert p.keys == 10 * 388 + 1000 and p.bytes == 100 * 389
    assert plan(loads, EVEN3).keys is None
    assert estimate_seconds(p.keys) == pytest.approx(4880 / 90_000)
    assert estimate_seconds(250_000, keys_per_s=50_000) == 5.0
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="keys must be a whole number"):
            estimate_seconds(bad)
    with pytest.raises(ValueError, match="keys_per_s must be a positive number"):
        estimate_seconds(10, keys_per_s=0)
    d = json.loads(json.dumps(p.as_dict()))
    assert d["moves"][0] == list(p.moves[0]) and d["unit"] == "ops/s" and d["ranges"] == p.describe()


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    ({"loads": {5: -1.0}}, r"load of slot 5 must be a finite number >= 0, not -1.0"),
    ({"loads": {5: math.nan}}, r"load of slot 5 must be a finite number >= 0, not nan"),
    ({"loads": {5: "7"}}, r"load of slot 5 must be a finite number >= 0, not '7'"),
    ({"loads": {SLOTS: 1.0}}, r"load: slot 16384 is outside 0..16383"),
    ({"loads": {-1: 1.0}}, r"load: slot -1 is outside 0..16383"),
    ({"loads": {"5": 1.0}}, r"load: slot '5' is not an integer"),
    ({"loads": [1.0]}, r"load must be a mapping of slot -> value, not list"),
    ({"source": 3}, r"source must be a shard index in 0..2, not 3"),
    ({"source": -1}, r"source must be a shard index in 0..2, not -1"),
    ({"targets": [7]}, r"each target must be a shard index in 0..2, not 7"),
    ({"targets": []}, r"targets is empty"),
    ({"source": 1, "targets": [1, 2]}, r"shard 1 \(shard1\) cannot be both the source and a target"),
    ({"tolerance": -0.1}, r"tolerance must be a number in 0..1"),
    ({"fraction": 0}, r"fraction must be a number in \(0, 1\]"),
    ({"fraction": 1.5}, r"fraction must be a number in \(0, 1\]"),
    ({"fill": 1, "source": 0}, r"fill takes from every other shard"),
    ({"keys": {3: -2}}, r"key count of slot 3 must be a whole number >= 0, not -2"),
    ({"nbytes": {3: 1.5}}, r"byte count of slot 3 must be a whole number >= 0, not 1.5"),
])
def test_bad_input_is_refused_with_a_clear_message(kwargs, message):
    loads = kwargs.pop("loads", {0: 1.0})
    with pytest.raises(ValueError, match=message):
        plan(loads, EVEN3, **kwargs)


def test_a_single_shard_has_nowhere_to_move():
    with pytest.raises(ValueError, match="the map has one shard"):
        plan({0: 1.0}, SlotMap.even(1))
