"""message.build: the destination-neutral notification, from a real Database's incident."""

from __future__ import annotations

import json

import pytest

from controlplane.alerting import message
from controlplane.database import Database
from tests.controlplane.alerting.helpers import cluster, dest, seed


@pytest.fixture
def db(tmp_path):
    with Database(tmp_path / "cp.sqlite3") as d:
        yield d


def test_the_notification_carries_chain_figures_line_plan_and_links(db):
    cf = cluster([dest()], public_url="https://chatops.example.com")
    iid = seed(db, severity="critical")
    m = message.build(db.incident(iid), db.incident_findings(iid), "opened", cf)
    assert m["incident_id"] == iid and m["event"] == "opened" and m["severity"] == "critical"
    assert m["state"] == "open" and m["clusters"] == ["testing"]
    assert m["dedup_key"] == f"incident/{iid}/opened"
    assert m["chain"][-1]["kind"] == "leaked_clients" and m["cause"] and m["summary"]
    figs = {f["name"]: f["text"] for f in m["figures"]}
    assert figs["count"] == "2,311" and figs["idle"] == "2,204"
    assert "thresholds" not in figs and "lines" not in figs
    assert m["example_line"].startswith("Mar 04 10:21:07 clue-chat1:")
    assert m["plan"] == {"action": "kill_clients", "summary": "Kill chat-testing's 2,204 idle connections to shard1"}
    assert m["links"] == {"incident": f"https://chatops.example.com/incidents/{iid}",
                          "runbook": "https://chatops.example.com/runbooks/leaked_clients"}
    assert (m["shard"], m["host"]) == ("shard1", "chat-testing")
    json.dumps(m)       # stored as the outbox payload


def test_links_default_to_the_listen_address(db):
    cf = cluster([dest()])
    iid = seed(db)
    m = message.build(db.incident(iid), db.incident_findings(iid), "resolved", cf)
    assert m["links"]["incident"] == f"http://127.0.0.100:5000/incidents/{iid}"


def test_no_secret_can_be_in_the_notification(db):
    cf = cluster([dest(secret_env="HOOK_SECRET")])
    iid = seed(db)
    m = json.dumps(message.build(db.incident(iid), db.incident_findings(iid), "opened", cf))
    assert "URL_SLACK" not in m and "HOOK_SECRET" not in m


def test_dedup_keys():
    assert message.dedup_key(7, "severity", "critical") == "incident/7/severity/critical"
    assert message.dedup_key(7, "repeat", 2) == "incident/7/repeat/2"
    with pytest.raises(ValueError, match="unknown notification event"):
        message.dedup_key(7, "bogus")


def test_an_incident_without_a_chain_still_makes_a_message(db):
    cf = cluster([dest()])
    inc = db.add_incident("something odd")
    m = message.build(inc, [], "opened", cf)
    assert m["chain"] == [] and m["figures"] == [] and m["plan"] is None and m["example_line"] is None
    assert m["links"]["runbook"] is None
