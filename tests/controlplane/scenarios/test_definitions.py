"""The scenario definitions and the analysis of a run, on a recorded real run (data/: a `tpp
--fix auto` round of bench.gameday on the default cluster, evidence blobs dropped)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from controlplane import scenarios
from controlplane.scenarios.base import Expect
from controlplane.scenarios.runner import analyse

RECORD = Path(__file__).parent / "data" / "tpp-auto-record.json"


@pytest.fixture
def record() -> dict:
    return json.loads(RECORD.read_text())


def test_tpp_is_its_three_faults_in_the_talks_order():
    sc = scenarios.get("tpp")
    assert [f.name for f in sc.faults] == ["tpp-hot-room", "tpp-leak", "tpp-no-keepalive"]
    offsets = [at for at, _ in sc.steps]
    assert offsets == sorted(offsets) and offsets[0] == 0
    for name in ("tpp-hot-room", "tpp-leak", "tpp-no-keepalive"):
        assert [f.name for f in scenarios.get(name).faults] == [name]


def test_unknown_scenario_names_the_valid_ones():
    with pytest.raises(scenarios.ScenarioError, match="valid: tpp, tpp-hot-room"):
        scenarios.get("tpp-meteor")


def test_expect_matches_kind_and_subject_pattern():
    e = Expect("leaked_clients", "chat-testing->shard1")
    assert e.matches({"kind": "leaked_clients", "subject": "chat-testing->shard1"})
    assert not e.matches({"kind": "leaked_clients", "subject": "chat1->shard1"})
    assert not e.matches({"kind": "hot_shard", "subject": "chat-testing->shard1"})
    assert Expect("connection_churn", "exchange-*").matches({"kind": "connection_churn", "subject": "exchange-x"})


def test_recorded_run_is_analysed_into_every_figure(record):
    r = analyse(record)
    by = {f["name"]: f for f in r["faults"]}
    assert set(by) == {"tpp-hot-room", "tpp-leak", "tpp-no-keepalive"}
    assert all(f["detect_s"] is not None and f["detect_s"] < 15 for f in by.values())
    assert by["tpp-no-keepalive"]["fixed_by_own_plans"] and by["tpp-no-keepalive"]["fixed_s"] is not None
    assert not by["tpp-hot-room"]["fixable"]
    assert r["false_findings"] == 0
    assert r["completeness_after"] == 1.0
    # In this recording the exchange's churn joined the leak's chain, so its root cause was never
    # the missing keepalive: the verdict must say so rather than count the chain passing by.
    assert by["tpp-no-keepalive"]["root_cause_s"] is None
    assert r["verdict"]["root_cause_s"]["met"] is False and r["verdict"]["met"] is False
    kinds = {e["what"] for e in r["events"]}
    assert {"fault", "finding", "resolved", "plan", "applied", "root_cause", "undo"} <= kinds


def test_a_finding_no_fault_explains_is_a_false_finding(record):
    rec = copy.deepcopy(record)
    t = rec["started"] + 5
    rec["findings"].append({"id": 999999, "kind": "hot_shard", "subject": "shard3", "state": "open",
                            "first_seen": t, "resolved_at": None, "title": "shard3 hot"})
    r = analyse(rec)
    assert r["false_findings"] == 1 and "hot_shard shard3" in r["false_finding_titles"][0]
    assert r["verdict"]["false_findings"]["met"] is False


def test_fix_none_does_not_judge_the_fix(record):
    rec = copy.deepcopy(record)
    rec["fix"] = "none"
    v = analyse(rec)["verdict"]
    assert v["fixed_s"]["met"] is None and v["completeness_after"]["met"] is None
    assert "fixed_by_own_plans" not in v


def test_a_fix_applied_by_a_person_is_not_the_control_planes_own_under_auto(record):
    rec = copy.deepcopy(record)
    for p in rec["plans"]:
        p["created_by"] = "token:127.0.0.1"
    by = {f["name"]: f for f in analyse(rec)["faults"]}
    assert not by["tpp-no-keepalive"]["fixed_by_own_plans"]


def test_the_tpp_ramp_offers_a_tenth_then_the_full_rate():
    """The hot room's ramp (chat/loadgen.py --tpp --ramp): what is due is the integral of the rate."""
    from chat import loadgen
    from cluster import clusterfile
    cf = clusterfile.load(None).spec
    gen = loadgen.Generator(cf, loadgen.Options(clients=1, senders=1, rate=100, hot_room="twitchplayspokemon",
                                                tpp=True, ramp=20))
    assert gen.rate_at(0) == pytest.approx(10) and gen.rate_at(10) == pytest.approx(55)
    assert gen.rate_at(20) == gen.rate_at(60) == 100
    assert gen.offered_by(20) == pytest.approx(100 * 20 * 0.55)
    assert gen.offered_by(30) == pytest.approx(1100 + 1000)
    flat = loadgen.Generator(cf, loadgen.Options(clients=1, senders=1, rate=100, tpp=True, ramp=0))
    assert flat.offered_by(30) == pytest.approx(3000) and flat.rate_at(0) == 100
    opts, _ = loadgen.parse_args(["--tpp", "--hot-room", "twitchplayspokemon"])
    assert opts.ramp == loadgen.TPP_RAMP_S
    with pytest.raises(loadgen.LoadgenError, match="--ramp"):
        loadgen.Options(ramp=-1).check()
