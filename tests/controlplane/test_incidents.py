"""Incidents: the root-cause chain on hand-written findings (the talk's outage), grouping, the
lifecycle through `update()` on a real SQLite database, and the API and pages on the real app
(findings inserted through the database, no scheduler)."""

from __future__ import annotations

import json
import re
import sqlite3
import time

import pytest

from controlplane import incidents
from controlplane.database import SCHEMA_VERSION, Database

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


def test_a_leak_of_idle_connections_never_explains_a_hot_shard():
    """The game day's tpp: a hot room heats shard1 while chat-testing leaks into it. The leak
    fills shard1's client table (maxclients, refused connections) but does no work: it is not why
    shard1 is hot, and the chain must not say so."""
    hot = finding(1, "hot_shard", "shard1", {"shard": "shard1", "host": "redis1"}, {"ops_per_s": 3756.0})
    leak = finding(2, "leaked_clients", "chat-testing->shard1",
                   {"host": "chat-testing", "cluster": "testing", "shard": "shard1"},
                   {"idle": 0, "growth": 601.0}, title="chat-testing opened 600 connections to shard1", first_seen=T0 + 5)
    full = finding(3, "leaked_clients", "shard1:maxclients", {"shard": "shard1"},
                   {"connected_clients": 700, "maxclients": 700}, first_seen=T0 + 8)
    assert not incidents.linked(hot, leak) and incidents.linked(full, leak)
    h = incidents.build_chain([hot, leak, full])
    assert h["root"]["finding_id"] == 2 and 1 in h["others"], h
    # Killed, the leak still reads as what it was at its worst (its peak), not "0 idle clients".
    leak.update(evidence={"idle": 0, "growth": 0.0}, peak=601.0)
    assert incidents.label(leak) == "601 idle clients from chat-testing on shard1"


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


def inc_id(d: Database) -> int:
    return d.incidents()[0]["id"]


def test_a_version_2_file_upgrades_to_the_current_schema(tmp_path):
    path = tmp_path / "old.sqlite3"
    with Database(path) as d:
        d.add_incident("old one")
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE plans")          # what versions 3 to 6 added
    conn.execute("ALTER TABLE incidents DROP COLUMN severity")
    conn.execute("ALTER TABLE incidents DROP COLUMN resolved_at")
    conn.execute("DROP TABLE silences")
    conn.execute("DROP INDEX alert_outbox_dedup")
    conn.execute("DROP INDEX alert_outbox_incident")
    for column in ("incident_id", "event", "dedup_key", "next_attempt", "rejected_at"):
        conn.execute(f"ALTER TABLE alert_outbox DROP COLUMN {column}")
    for column in ("peak", "live_title"):
        conn.execute(f"ALTER TABLE findings DROP COLUMN {column}")
    conn.execute("PRAGMA user_version = 2")
    conn.commit()
    conn.close()
    with Database(path) as d:
        assert d.schema_version() == SCHEMA_VERSION == 6
        assert d.plans() == []                # version 4's table is there, empty
        assert d.silences() == []             # and version 5's
        row = d.enqueue_alert("oncall", {"text": "x"}, incident_id=inc_id(d), event="opened", dedup_key="k")
        assert row["new"] and d.enqueue_alert("oncall", {"text": "y"}, dedup_key="k")["id"] == row["id"]
        inc = d.incidents()[0]
        assert inc["title"] == "old one" and inc["severity"] == "warning" and inc["resolved_at"] is None
        updated = d.update_incident(inc["id"], severity="critical", timeline=[{"ts": 1.0, "event": "x"}])
        assert updated["severity"] == "critical" and updated["timeline"][-1]["event"] == "x"
        with pytest.raises(ValueError):
            d.update_incident(inc["id"], severity="bad")
        with pytest.raises(KeyError):
            d.update_incident(999)
        assert d.findings(state="resolved") == []
        # and version 6's: an old finding's live title is its title
        f = d.upsert_finding("leaked_clients", "chat2->shard3", title="chat2 holds 9 idle", peak=9)
        assert f["live_title"] == f["title"] == "chat2 holds 9 idle" and f["peak"] == 9
        with pytest.raises(ValueError):
            d.findings(state="gone")


# -- the API and the pages, on the real app (no scheduler) ----------------------------------------

TOKEN = "test-incidents-token"
RUNBOOK = """# Leaked clients

A host holds **many idle connections** to a shard. Compare with [hot shard](hot_shard.md).

## Confirm

```sh
chatops inspect clients shard2 --by host
```

- idle `> 60 s`
- <script>alert(1)</script> [x](javascript:alert(1))
"""


@pytest.fixture
def app(tmp_path, monkeypatch, run_dir):
    from controlplane.web.app import create_app
    from tests.conftest import free_subnet, small_cluster, write_cluster
    monkeypatch.setenv("CHATOPS_API_TOKEN", TOKEN)
    books = tmp_path / "runbooks"
    books.mkdir()
    (books / "leaked_clients.md").write_text(RUNBOOK)
    (books / "Bad-Name.md").write_text("# not listed")
    cluster = write_cluster(tmp_path / "cluster.yaml", small_cluster(free_subnet()))
    a = create_app({"CLUSTER_FILE": str(cluster), "RUN_DIR": str(run_dir), "SCHEDULER": False,
                    "TESTING": True, "RUNBOOKS_DIR": str(books)})
    yield a
    a.extensions["chatops.db"].close()


def seed(app) -> tuple[int, int]:
    """The talk's findings, and an unrelated hot shard, through the database and update()."""
    db = app.extensions["chatops.db"]
    now = time.time()
    for k, f in enumerate(talk()):
        insert(db, f, now - 60 + k)
    insert(db, finding(0, "hot_shard", "shard0", {"shard": "shard0", "host": "redis1"}, {"cpu_percent": 95.0}), now)
    incidents.update(db, None, db.findings(open_only=True), [], now)
    by_subject = {f["subject"]: f["incident_id"] for f in db.findings()}
    return by_subject["edge-chat1"], by_subject["shard0"]


def api_get(client, target: str):
    from tests.controlplane.web.test_api import response_validator, schema_errors
    r = client.get(target)
    assert r.status_code == 200, r.get_data(as_text=True)
    path = re.sub(r"^/api/v1", "", target.split("?")[0])
    path = re.sub(r"^/incidents/\d+$", "/incidents/{incident_id}", path)
    path = re.sub(r"^/runbooks/\w+$", "/runbooks/{name}", path)
    errors = schema_errors(response_validator(path), r.json)
    assert not errors, errors
    return r.json


def test_api_lists_and_shows_incidents_as_documented(app):
    talk_id, other_id = seed(app)
    client = app.test_client()
    listed = api_get(client, "/api/v1/incidents")["incidents"]
    assert [i["id"] for i in listed] == [other_id, talk_id]          # newest first among the open
    talk_inc = next(i for i in listed if i["id"] == talk_id)
    assert talk_inc["findings"] == {"total": 4, "open": 4} and talk_inc["severity"] == "critical"
    assert talk_inc["root_cause"]["cause"] == "leaked clients from the testing cluster (chat-testing)"
    assert api_get(client, "/api/v1/incidents?state=resolved&limit=5")["incidents"] == []

    detail = api_get(client, f"/api/v1/incidents/{talk_id}")
    assert [link["subject"] for link in detail["chain"]] == ["edge-chat1", "clue-chat1", "shard2:maxclients",
                                                          "chat-testing->shard2"]
    assert detail["remediation"] == KILL_LEAK
    assert {"name": "leaked_clients", "exists": True} in detail["runbooks"]
    assert {"name": "ingestion_timeouts", "exists": False} in detail["runbooks"]
    assert [e["event"] for e in detail["timeline"]][:2] == ["opened", "finding_opened"]

    found = api_get(client, "/api/v1/findings?state=open&limit=10")["findings"]
    assert len(found) == 5 and all(f["state"] == "open" for f in found)
    assert api_get(client, "/api/v1/findings?state=resolved")["findings"] == []
    assert len(api_get(client, "/api/v1/findings")["findings"]) == 5


@pytest.mark.parametrize("target,status,word", [
    ("/api/v1/findings?state=acknowledged", 400, "state"),
    ("/api/v1/findings?state=bogus", 400, "state"),
    ("/api/v1/incidents?state=", 400, "state"),
    ("/api/v1/incidents?limit=0", 400, "limit"),
    ("/api/v1/incidents?since=5m", 400, "since"),
    ("/api/v1/incidents/999", 404, "incident"),
    ("/api/v1/incidents/99999999999999999999999", 404, "incident"),
    ("/api/v1/incidents/abc", 404, ""),
    ("/api/v1/runbooks/nope", 404, "leaked_clients"),
    ("/api/v1/runbooks/Bad-Name", 400, "runbook"),
    ("/api/v1/runbooks/x.md", 400, "runbook"),
    ("/api/v1/runbooks/..%2Fx", 400, ""),
    ("/api/v1/runbooks/../x", 404, ""),
    ("/api/v1/runbooks/%2e%2e", 400, "runbook"),
])
def test_api_bad_input_gets_a_json_error(app, target, status, word):
    from tests.controlplane.web.test_api import ERROR, schema_errors
    r = app.test_client().get(target)
    assert r.status_code in ((status, 404) if not word else (status,)), (target, r.status_code)
    assert r.is_json and not schema_errors(ERROR, r.json)
    assert word in r.json["error"]["message"]
    assert "Leaked clients" not in r.get_data(as_text=True)


def test_api_runbooks(app):
    client = app.test_client()
    assert api_get(client, "/api/v1/runbooks")["runbooks"] == [{"name": "leaked_clients", "title": "Leaked clients"}]
    doc = api_get(client, "/api/v1/runbooks/leaked_clients")
    assert doc["markdown"] == RUNBOOK


def test_acknowledge_needs_the_token_is_audited_and_only_once(app):
    from tests.controlplane.web.test_api import response_validator, schema_errors
    talk_id, _ = seed(app)
    client = app.test_client()
    url = f"/api/v1/incidents/{talk_id}/acknowledge"
    r = client.post(url)
    assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
    assert client.post(url, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert app.extensions["chatops.db"].incident(talk_id)["state"] == "open"
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    r = client.post(url, headers=bearer, json={"note": "looking at shard2"})
    assert r.status_code == 200, r.get_data(as_text=True)
    assert not schema_errors(response_validator("/incidents/{incident_id}/acknowledge", "post"), r.json)
    assert r.json["state"] == "acknowledged" and r.json["acknowledged_by"].startswith("token:")
    assert r.json["timeline"][-1]["note"] == "looking at shard2"
    audit = app.extensions["chatops.db"].audit(limit=5)
    assert (audit[0]["action"], audit[0]["target"], audit[0]["detail"]) == (
        "incident.acknowledged", f"incident/{talk_id}", {"from": "open", "to": "acknowledged", "note": "looking at shard2"})
    assert TOKEN not in json.dumps(audit)
    # not twice; unknown ids; bad bodies
    assert client.post(url, headers=bearer).status_code == 409
    assert client.post("/api/v1/incidents/999/acknowledge", headers=bearer).status_code == 404
    assert client.post(f"/api/v1/incidents/{talk_id}/resolve", headers=bearer,
                       json={"note": "x", "extra": 1}).status_code == 400
    assert client.post(f"/api/v1/incidents/{talk_id}/resolve", headers=bearer,
                       data="not json", content_type="text/plain").status_code == 400
    r = client.post(f"/api/v1/incidents/{talk_id}/resolve", headers=bearer)
    assert r.status_code == 200 and r.json["state"] == "resolved" and r.json["resolved_at"]
    assert client.post(f"/api/v1/incidents/{talk_id}/resolve", headers=bearer).status_code == 409
    assert client.post(url, headers=bearer).status_code == 409


def test_pages_show_the_chain_evidence_plan_timeline_and_runbook(app):
    talk_id, other_id = seed(app)
    client = app.test_client()
    page = client.get("/incidents")
    assert page.status_code == 200
    assert f'data-incident="{talk_id}" data-state="open" class="row-bad"' in page.text
    assert "leaked clients from the testing cluster" in page.text
    page = client.get(f"/incidents/{talk_id}")
    assert page.status_code == 200
    roles = re.findall(r'<li data-finding="\d+" data-role="([a-z ]+)"', page.text)
    assert roles == ["symptom", "cause", "cause", "root cause"]
    assert "2,311 idle clients from chat-testing" in page.text and "ECONNREFUSED" in page.text
    assert "<b>Plan:</b> Kill chat-testing&#39;s 2,311 idle clients" in page.text
    assert 'id="acknowledge"' in page.text and 'name="csrf_token"' in page.text
    assert "<strong>many idle connections</strong>" in page.text          # the runbook, rendered
    assert "<script>alert(1)</script>" not in page.text and "javascript:" not in page.text
    assert 'href="/runbooks/hot_shard"' in page.text
    assert "runbooks/ingestion_timeouts.md is not written yet" in page.text
    overview = client.get("/")
    assert 'id="incidents-badge">2 open' in overview.text and 'class="badge bad" id="incidents-badge"' in overview.text
    assert 'id="open-incidents">2 open' in overview.text
    # the Acknowledge button: anonymous -> log in; logged in without CSRF -> 400; with it -> done
    r = client.post(f"/incidents/{talk_id}/acknowledge")
    assert r.status_code == 302 and r.headers["Location"].startswith("/login")
    login = client.get("/login")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', login.text).group(1)
    assert client.post("/login", data={"token": TOKEN, "csrf_token": csrf}).status_code == 302
    assert client.post(f"/incidents/{talk_id}/acknowledge").status_code == 400
    page = client.get(f"/incidents/{talk_id}")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    r = client.post(f"/incidents/{talk_id}/acknowledge", data={"csrf_token": csrf})
    assert r.status_code == 303 and r.headers["Location"].endswith(f"/incidents/{talk_id}")
    db = app.extensions["chatops.db"]
    assert db.incident(talk_id)["state"] == "acknowledged"
    assert db.audit(limit=1)[0]["actor"].startswith("session:")
    assert client.post(f"/incidents/{talk_id}/acknowledge", data={"csrf_token": csrf}).status_code == 409
    page = client.get(f"/incidents/{talk_id}")
    assert 'id="acknowledge"' not in page.text and 'data-state="acknowledged"' in page.text


def test_pages_404_and_runbook_pages(app):
    client = app.test_client()
    assert client.get("/incidents").status_code == 200
    r = client.get("/incidents/7")
    assert r.status_code == 404 and "No incident named" in r.text
    assert client.get("/incidents/x").status_code == 404
    r = client.get("/runbooks/leaked_clients")
    assert r.status_code == 200 and "<h1>Leaked clients</h1>" in r.text
    assert '<pre><code class="language-sh">chatops inspect clients shard2 --by host\n</code></pre>' in r.text
    assert "&lt;script&gt;" in r.text and "<script>alert" not in r.text
    r = client.get("/runbooks/nope")
    assert r.status_code == 404 and 'href="/runbooks/leaked_clients"' in r.text
    assert client.get("/runbooks/Bad-Name").status_code == 404
    assert client.get("/runbooks").status_code == 200
