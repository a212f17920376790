"""Incidents: the root-cause chain on hand-written findings (the talk's outage), grouping, the
lifecycle through `update()` on a real SQLite database, and the API and pages on the real app
(findings inserted through the database, no scheduler)."""

from __future__ import annotations

import sqlite3

import pytest

from controlplane import incidents
from controlplane.database import Database

T0 = 1_700_000_000.0


def finding(fid: int, kind: str, subject: str, about: dict, evidence: dict | None = None, *,
            severity: str = "warning", first_seen: float = T0, state: str = "open", title: str = "",
            remediation: dict | None = None, resolved_at: float | None = None) -> dict:
    """A finding row as Database.findings() returns it."""
    return {"id": fid, "kind": kind, "subject": subject, "severity": severity, "state": state,
            "first_seen": first_seen, "last_seen": first_seen + 30, "evidence": evidence or {},
            "runbook": kind, "remediation": remediation, "incident_id": None, "title": title or subject,
            "about": about, "resolved_at": resolved_at}


KILL_LEAK = {"action": "kill_idle_clients", "summary": "Kill chat-testing's 2,311 idle clients on shard2 "
             "and set timeout 300 on the shard", "params": {"host": "chat-testing", "shard": "shard2"}}


def talk() -> list[dict]:
    """The 2014 outage as findings, in the order the detectors might report them (not the chain's)."""
    return [
        finding(4, "leaked_clients", "chat-testing->shard2",
                {"host": "chat-testing", "cluster": "testing", "shard": "shard2"},
                {"idle": 2311, "count": 2012, "idle_after_s": 60, "lines": ["id=7 addr=127.0.9.9:4242 idle=7200"]},
                severity="critical", first_seen=T0 + 5, title="chat-testing holds 2,311 idle clients on shard2",
                remediation=KILL_LEAK),
        finding(1, "ingestion_timeouts", "edge-chat1", {"service": "edge", "host": "chat1", "cluster": "main"},
                {"per_s": 4.2, "baseline_per_s": 0.0,
                 "lines": ["Feb 18 06:54:04 edge: [clue] Timed out (after 5s) while writing request for: privmsg"]},
                first_seen=T0 + 20, title="edge-chat1: [clue] Timed out 4.2/s"),
        finding(3, "leaked_clients", "shard2:maxclients", {"shard": "shard2"},
                {"connected_clients": 3021, "maxclients": 3021, "rejected_connections_per_s": 12.5},
                severity="critical", first_seen=T0 + 10, title="shard2 at maxclients"),
        finding(2, "ingestion_timeouts", "clue-chat1", {"service": "clue", "host": "chat1", "cluster": "main"},
                {"per_s": 9.0, "lines": ["Feb 18 06:54:04 clue: [redis] Connect error on fd 10: ECONNREFUSED"]},
                first_seen=T0 + 15, title="clue-chat1: ECONNREFUSED 9/s"),
    ]


# -- the chain (pure) -----------------------------------------------------------------------------

def test_the_talks_chain_runs_upstream_to_downstream_to_leaked_clients_from_testing():
    h = incidents.build_chain(talk())
    assert [x["finding_id"] for x in h["chain"]] == [1, 2, 3, 4]
    assert [x["kind"] for x in h["chain"]] == ["ingestion_timeouts", "ingestion_timeouts",
                                              "leaked_clients", "leaked_clients"]
    assert [x["role"] for x in h["chain"]] == ["symptom", "cause", "cause", "root cause"]
    assert h["root"]["finding_id"] == 4
    assert h["cause"] == "leaked clients from the testing cluster (chat-testing)"
    assert h["summary"] == ("edge timeouts on chat1 → clue connection refused on chat1 → "
                            "shard2 at maxclients (3,021 / 3,021) → 2,311 idle clients from chat-testing on shard2 → "
                            "root cause: leaked clients from the testing cluster (chat-testing)")
    assert h["remediation"] == KILL_LEAK and h["others"] == []
    # each link cites its evidence: the finding, its title and its key figures
    edge, clue, full, leak = h["chain"]
    assert edge["figures"] == {"per_s": 4.2, "baseline_per_s": 0.0}
    assert "Timed out (after 5s)" in edge["lines"][0]
    assert "ECONNREFUSED" in clue["lines"][0] and clue["because"] == "both on chat1"
    assert full["figures"]["connected_clients"] == 3021 and full["title"] == "shard2 at maxclients"
    assert leak["figures"]["idle"] == 2311 and leak["because"] == "both on shard2"
    assert leak["runbook"] == "leaked_clients"


def test_a_saturated_proxy_listener_sits_between_clue_and_the_shard():
    fs = talk() + [finding(5, "proxy_saturation", "chat1:redis-shard2",
                           {"host": "chat1", "cluster": "main", "service": "redis-shard2"},
                           {"econ_per_s": 30.0}, first_seen=T0 + 12)]
    h = incidents.build_chain(fs)
    assert [x["finding_id"] for x in h["chain"]] == [1, 2, 5, 3, 4]
    assert h["chain"][2]["label"] == "HAProxy on chat1 saturated (redis-shard2)"
    assert h["chain"][2]["because"] == "both on chat1"


def test_a_hot_key_is_the_root_under_a_hot_shard_and_other_shards_stay_off_the_chain():
    fs = [finding(1, "hot_shard", "shard1", {"shard": "shard1", "host": "redis2"}, {"cpu_percent": 97.0}),
          finding(2, "hot_key", "shard1:ratelimit:lobby", {"shard": "shard1", "key": "ratelimit:lobby:*"},
                  {"share": 0.91}, remediation={"action": "split_key", "summary": "split it", "params": {}}),
          finding(3, "ingestion_timeouts", "clue-chat1", {"service": "clue", "host": "chat1", "cluster": "main"},
                  {"per_s": 1.0})]
    h = incidents.build_chain(fs)
    assert [x["finding_id"] for x in h["chain"]] == [3, 1, 2]
    assert h["cause"].startswith("a hot key (ratelimit:lobby:*)")
    assert h["remediation"]["action"] == "split_key"
    # a finding on another shard never explains one on shard1
    other = finding(4, "leaked_clients", "chat-testing->shard0", {"host": "chat-testing", "shard": "shard0"},
                    {"idle": 900})
    assert not incidents.linked(fs[0], other)
    assert 4 not in [x["finding_id"] for x in incidents.build_chain(fs + [other])["chain"]]


def test_missing_keepalive_explains_a_delivery_gap_in_its_own_cluster_only():
    gap = finding(1, "delivery_gap", "lobby@chat1", {"room": "lobby", "host": "chat1", "cluster": "main",
                                                     "service": "edge"}, {"missing": 12, "late_s": 4.0})
    churn = finding(2, "connection_churn", "exchange-main", {"service": "exchange", "host": "chat1",
                                                             "cluster": "main"},
                    {"new_conn_per_s": 40.0, "requests_per_s": 41.0})
    elsewhere = dict(churn, id=3, about={"service": "exchange", "host": "chat9", "cluster": "testing"})
    h = incidents.build_chain([gap, churn])
    assert [x["finding_id"] for x in h["chain"]] == [1, 2]
    assert h["cause"] == "keepalive disabled or pool too small on exchange"
    assert h["summary"].startswith("delivery gap in #lobby on chat1 → connection churn on exchange")
    assert not incidents.related(gap, elsewhere)


def test_one_finding_is_its_own_root_and_no_finding_is_no_chain():
    h = incidents.build_chain([finding(1, "hot_shard", "shard0", {"shard": "shard0"}, {"cpu_percent": 99.0})])
    assert h["root"]["finding_id"] == 1 and h["summary"] == "shard0 hot → root cause: shard0 overloaded"
    assert incidents.build_chain([])["root"] is None


def test_hostile_evidence_does_not_break_the_chain():
    f = finding(1, "leaked_clients", "x->y", {"host": "x", "shard": "y"},
                {"idle": "lots", "nested": {"a": 1}, "lines": "not a list", "big": "z" * 500, "ok": True})
    h = incidents.build_chain([f])
    assert h["chain"][0]["figures"] == {"idle": "lots", "ok": True}
    assert h["chain"][0]["lines"] == [] and h["chain"][0]["label"] == "idle clients from x on y"


# -- grouping (pure) ------------------------------------------------------------------------------

def test_related_findings_form_one_group_and_unrelated_ones_their_own():
    fs = talk() + [
        finding(10, "hot_shard", "shard0", {"shard": "shard0", "host": "redis1"}, {"cpu_percent": 95.0}),
        finding(11, "connection_churn", "exchange-testing", {"service": "exchange", "host": "chat-testing2",
                                                             "cluster": "testing"}, {}),
    ]
    groups = sorted(sorted(f["id"] for f in g) for g in incidents.group(fs, now=T0 + 60))
    assert groups == [[1, 2, 3, 4], [10], [11]]


def test_findings_far_apart_in_time_are_not_related():
    a = finding(1, "hot_shard", "shard0", {"shard": "shard0"}, state="resolved", resolved_at=T0 + 60)
    b = finding(2, "hot_key", "shard0:k", {"shard": "shard0", "key": "k"}, first_seen=T0 + 60 + incidents.GAP_S + 1)
    assert not incidents.related(a, b, now=b["first_seen"])
    b["first_seen"] = T0 + 60 + incidents.GAP_S - 1
    assert incidents.related(a, b, now=b["first_seen"])


# -- update() on a real database ------------------------------------------------------------------

@pytest.fixture
def db(tmp_path):
    d = Database(tmp_path / "cp.sqlite3")
    yield d
    d.close()


def insert(db: Database, f: dict, seen: float) -> dict:
    return db.upsert_finding(f["kind"], f["subject"], severity=f["severity"], evidence=f["evidence"],
                             runbook=f["runbook"], remediation=f["remediation"], seen=seen,
                             title=f["title"], about=f["about"])


def test_update_groups_records_the_timeline_and_resolves_when_all_findings_resolve(db):
    by_subject = {f["subject"]: f for f in talk()}
    # the leak and the full shard first: one incident
    leak = insert(db, by_subject["chat-testing->shard2"], T0 + 5)
    insert(db, by_subject["shard2:maxclients"], T0 + 10)
    changed = incidents.update(db, None, db.findings(open_only=True), [], T0 + 10)
    assert len(changed) == 1 and changed[0]["state"] == "open"
    iid = changed[0]["id"]
    assert changed[0]["opened"] == T0 + 5 and changed[0]["severity"] == "critical"
    assert {f["incident_id"] for f in db.findings()} == {iid}
    # then the symptoms upstream join it; an unrelated hot shard opens its own incident
    insert(db, by_subject["clue-chat1"], T0 + 15)
    insert(db, by_subject["edge-chat1"], T0 + 20)
    other = insert(db, finding(0, "hot_shard", "shard0", {"shard": "shard0", "host": "redis1"},
                               {"cpu_percent": 95.0}), T0 + 20)
    incidents.update(db, None, db.findings(open_only=True), [], T0 + 20)
    assert len(db.incidents()) == 2
    inc = db.incident(iid)
    assert [f["subject"] for f in db.incident_findings(iid)] == [
        "chat-testing->shard2", "shard2:maxclients", "clue-chat1", "edge-chat1"]
    assert db.finding(other["id"])["incident_id"] != iid
    assert inc["root_cause"]["root"]["finding_id"] == leak["id"]
    assert inc["root_cause"]["summary"].endswith("root cause: leaked clients from the testing cluster (chat-testing)")
    assert inc["title"] == "edge timeouts on chat1, caused by leaked clients from the testing cluster (chat-testing)"
    events = [(e["event"], e.get("subject")) for e in inc["timeline"]]
    assert events[:3] == [("opened", None), ("finding_opened", "chat-testing->shard2"),
                          ("finding_opened", "shard2:maxclients")]
    assert ("finding_opened", "edge-chat1") in events
    assert [e for e in inc["timeline"] if e["event"] == "hypothesis"][-1]["root_finding_id"] == leak["id"]

    # acknowledged stays acknowledged while findings resolve one by one
    db.set_incident_state(iid, "acknowledged", "token:127.0.0.1")
    gone = db.upsert_finding("ingestion_timeouts", "edge-chat1", state="resolved", seen=T0 + 40)
    incidents.update(db, None, db.findings(open_only=True), [gone], T0 + 40)
    inc = db.incident(iid)
    assert inc["state"] == "acknowledged"
    assert inc["timeline"][-1]["event"] == "finding_resolved" and inc["timeline"][-1]["subject"] == "edge-chat1"
    # the last one resolving resolves the incident, on its timeline and in the audit
    rest = [db.upsert_finding(f["kind"], f["subject"], state="resolved", seen=T0 + 50)
            for f in db.incident_findings(iid) if f["state"] == "open"]
    changed = incidents.update(db, None, db.findings(open_only=True), rest, T0 + 50)
    inc = db.incident(iid)
    assert inc["state"] == "resolved" and inc["resolved_at"] == T0 + 50
    assert inc["timeline"][-1]["event"] == "resolved" and inc["timeline"][-1]["actor"] == "detection"
    assert [i["id"] for i in changed] == [iid]
    assert [(a["actor"], a["target"]) for a in db.audit() if a["action"] == "incident.resolved"] == [
        ("detection", f"incident/{iid}")]
    assert db.incident(db.finding(other["id"])["incident_id"])["state"] == "open"
    # a later finding on the same shard opens a new incident, never joins a resolved one
    insert(db, by_subject["shard2:maxclients"], T0 + 60)
    incidents.update(db, None, db.findings(open_only=True), [], T0 + 60)
    assert len(db.incidents()) == 3 and db.incidents(limit=1)[0]["state"] == "open"


def test_update_with_nothing_writes_nothing(db):
    assert incidents.update(db, None, [], [], T0) == []
    assert db.incidents() == [] and db.audit() == []


def test_schema_3_upgrades_a_version_2_file(tmp_path):
    path = tmp_path / "old.sqlite3"
    with Database(path) as d:
        d.add_incident("old one")
    conn = sqlite3.connect(path)
    conn.execute("ALTER TABLE incidents DROP COLUMN severity")
    conn.execute("ALTER TABLE incidents DROP COLUMN resolved_at")
    conn.execute("PRAGMA user_version = 2")
    conn.commit()
    conn.close()
    with Database(path) as d:
        assert d.schema_version() == 3
        inc = d.incidents()[0]
        assert inc["title"] == "old one" and inc["severity"] == "warning" and inc["resolved_at"] is None
        updated = d.update_incident(inc["id"], severity="critical", timeline=[{"ts": 1.0, "event": "x"}])
        assert updated["severity"] == "critical" and updated["timeline"][-1]["event"] == "x"
        with pytest.raises(ValueError):
            d.update_incident(inc["id"], severity="bad")
        with pytest.raises(KeyError):
            d.update_incident(999)
        assert d.findings(state="resolved") == []
        with pytest.raises(ValueError):
            d.findings(state="gone")
