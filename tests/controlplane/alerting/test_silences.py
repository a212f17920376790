"""Silences and the outbox through the real app (controlplane.web.app.create_app, its real SQLite
database, no schedule): POST/GET/DELETE /api/v1/silences need the token, are audited and refuse bad
bodies naming the field; GET /api/v1/alerts lists the outbox without payloads; an incident shows
its notifications and the silences muting it. Replies are checked against openapi.json."""

from __future__ import annotations

import time

import pytest

from controlplane import incidents
from tests.conftest import small_cluster, write_cluster
from tests.controlplane.web.test_api import response_validator, schema_errors

TOKEN = "silences-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def app(monkeypatch, tmp_path, run_dir):
    from controlplane.web.app import create_app
    monkeypatch.setenv("CHATOPS_API_TOKEN", TOKEN)
    cluster = write_cluster(tmp_path / "cluster.yaml", small_cluster("127.77.5"))
    app = create_app({"CLUSTER_FILE": str(cluster), "RUN_DIR": str(run_dir), "SCHEDULER": False, "TESTING": True})
    yield app
    app.extensions["chatops.db"].close()


@pytest.fixture
def client(app):
    return app.test_client()


def documented(r, path: str, method: str = "get", status: int = 200):
    assert r.status_code == status, r.get_data(as_text=True)
    errors = schema_errors(response_validator(path, method, str(status)), r.json)
    assert not errors, "\n".join(errors)
    return r.json


def test_add_list_and_expire_a_silence(app, client):
    r = client.post("/api/v1/silences", json={"matchers": ["cluster=testing", {"name": "shard", "op": "=~",
                                                                               "value": "shard[01]"}],
                                              "for": "2h", "comment": "load test on testing"}, headers=AUTH)
    s = documented(r, "/silences", "post", 201)
    assert s["state"] == "active" and s["text"] == "cluster=testing, shard=~shard[01]"
    assert 7190 < s["ends_at"] - time.time() <= 7200 and s["created_by"].startswith("token:")
    listed = documented(client.get("/api/v1/silences"), "/silences")["silences"]
    assert [x["id"] for x in listed] == [s["id"]]
    assert documented(client.get("/api/v1/silences?state=expired"), "/silences")["silences"] == []
    gone = documented(client.delete(f"/api/v1/silences/{s['id']}", headers=AUTH), "/silences/{silence_id}", "delete")
    assert gone["state"] == "expired" and gone["expired_by"].startswith("token:")
    again = client.delete(f"/api/v1/silences/{s['id']}", headers=AUTH)
    assert again.status_code == 409 and "already expired" in again.json["error"]["message"]
    assert client.delete("/api/v1/silences/999", headers=AUTH).status_code == 404
    assert client.delete(f"/api/v1/silences/{2**64}", headers=AUTH).status_code == 404
    actions = [(a["action"], a["target"]) for a in app.extensions["chatops.db"].audit()]
    assert actions[:2] == [("silence.expire", f"silence/{s['id']}"), ("silence.add", f"silence/{s['id']}")]


def test_ends_at_instead_of_for(client):
    end = time.time() + 600
    s = documented(client.post("/api/v1/silences", json={"matchers": ["severity=info"], "ends_at": end},
                               headers=AUTH), "/silences", "post", 201)
    assert s["ends_at"] == pytest.approx(end) and s["comment"] == ""


@pytest.mark.parametrize("body,says", [
    (None, "the body must be a JSON object"),
    ([], "the body must be a JSON object"),
    ({"matchers": ["cluster=testing"], "for": "2h", "why": "x"}, "bad field 'why'"),
    ({"for": "2h"}, "bad field matchers: a list"),
    ({"matchers": [], "for": "2h"}, "bad field matchers: a silence needs at least one matcher"),
    ({"matchers": ["cluster"], "for": "2h"}, "bad field matchers: matcher 'cluster' has no operator"),
    ({"matchers": ["shard=~("], "for": "2h"}, "bad regular expression"),
    ({"matchers": ["1x=a"], "for": "2h"}, "must be a label name"),
    ({"matchers": ["cluster=testing"]}, "bad field for: give how long"),
    ({"matchers": ["cluster=testing"], "for": "2h", "ends_at": 5}, "bad field for: give how long"),
    ({"matchers": ["cluster=testing"], "for": "two hours"}, "bad field for: a duration"),
    ({"matchers": ["cluster=testing"], "for": "0s"}, "bad field for: more than nothing"),
    ({"matchers": ["cluster=testing"], "for": "400d"}, "at most 365d"),
    ({"matchers": ["cluster=testing"], "ends_at": 5}, "bad field ends_at: in the future"),
    ({"matchers": ["cluster=testing"], "ends_at": "tomorrow"}, "bad field ends_at: epoch seconds"),
    ({"matchers": ["cluster=testing"], "ends_at": True}, "bad field ends_at: epoch seconds"),
    ({"matchers": ["cluster=testing"], "for": "2h", "comment": "a\nb"}, "bad field comment"),
    ({"matchers": ["cluster=testing"], "for": "2h", "comment": "x" * 501}, "bad field comment"),
])
def test_a_bad_silence_is_a_400_naming_the_field_and_stores_nothing(app, client, body, says):
    r = client.post("/api/v1/silences", json=body, headers=AUTH) if body is not None else client.post(
        "/api/v1/silences", data=b"not json", headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 400, r.get_data(as_text=True)
    assert says in r.json["error"]["message"]
    assert app.extensions["chatops.db"].silences() == []


def test_bad_state_filter_and_no_token(client):
    r = client.get("/api/v1/silences?state=open")
    assert r.status_code == 400 and "active, pending, expired, all" in r.json["error"]["message"]
    r = client.post("/api/v1/silences", json={"matchers": ["cluster=testing"], "for": "2h"})
    assert r.status_code == 401
    assert client.delete("/api/v1/silences/1").status_code == 401


def _incident(db, kind="leaked_clients", subject="chat-testing->shard0", about=None):
    f = db.upsert_finding(kind, subject, severity="warning", evidence={}, runbook=kind, title="leak",
                          about=about or {"host": "chat-testing", "shard": "shard0", "cluster": "testing"})
    incidents.update(db, None, db.findings(open_only=True), [], time.time())
    return db.finding(f["id"])["incident_id"]


def test_the_outbox_and_an_incidents_notifications(app, client):
    db = app.extensions["chatops.db"]
    iid = _incident(db)
    a = db.enqueue_alert("oncall-slack", {"text": "opened"}, incident_id=iid, event="opened",
                         dedup_key=f"{iid}:opened")
    db.mark_alert(a["id"], "failed", "HTTP 500 from the receiver", time.time() + 5)
    b = db.enqueue_alert("hooks", {"text": "opened"}, incident_id=iid, event="opened", dedup_key=f"{iid}:opened")
    db.mark_alert(b["id"], "delivered")
    outbox = documented(client.get("/api/v1/alerts"), "/alerts")["alerts"]
    assert [(x["destination"], x["status"], x["attempts"], x["last_error"]) for x in outbox] == [
        ("oncall-slack", "retrying", 1, "HTTP 500 from the receiver"), ("hooks", "delivered", 1, None)]
    assert all("payload" not in x for x in outbox)
    detail = documented(client.get(f"/api/v1/incidents/{iid}"), "/incidents/{incident_id}")
    assert [n["id"] for n in detail["notifications"]] == [a["id"], b["id"]]
    assert detail["muted_by"] == []


def test_an_incident_is_muted_only_when_every_open_finding_is_silenced(app, client):
    db = app.extensions["chatops.db"]
    iid = _incident(db)
    s = documented(client.post("/api/v1/silences", json={"matchers": ["cluster=testing"], "for": "1h"},
                               headers=AUTH), "/silences", "post", 201)
    detail = documented(client.get(f"/api/v1/incidents/{iid}"), "/incidents/{incident_id}")
    assert [m["id"] for m in detail["muted_by"]] == [s["id"]]
    # a finding of another cluster joins the incident (same shard): no longer all silenced
    db.upsert_finding("hot_shard", "shard0", severity="warning", evidence={}, runbook="hot_shard", title="hot",
                      about={"shard": "shard0"})
    incidents.update(db, None, db.findings(open_only=True), [], time.time())
    assert {f["incident_id"] for f in db.findings(open_only=True)} == {iid}
    assert client.get(f"/api/v1/incidents/{iid}").json["muted_by"] == []
    client.delete(f"/api/v1/silences/{s['id']}", headers=AUTH)
    assert client.get(f"/api/v1/incidents/{iid}").json["muted_by"] == []
