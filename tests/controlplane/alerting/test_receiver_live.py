"""`POST /api/v1/alerts/alertmanager` on a live control plane (real redis-server, HAProxy, chat
services; one control plane for the module): the recorded Alertmanager payload, re-addressed to
this cluster, opens findings that join chatops' own incident on the same shard; a resolved alert
resolves its finding and, alone, its incident; the token is required; bad payloads are 400s
naming the field and write nothing; each request is one audit record of counts."""

from __future__ import annotations

import copy
import http.client
import json
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.conftest import api_json, api_token, live_controlplane, open_idle, wait_for

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "alertmanager"
TOKEN = "receiver-live-token-0123456789"
LEAK = 60


def _patch(doc: dict) -> None:
    doc["controlplane"]["thresholds"] = {"hold": "3s", "idle_client_after": "2s", "leaked_idle_clients": 40}


@pytest.fixture(scope="module")
def live():
    with api_token(TOKEN), live_controlplane(traffic=False, patch=_patch) as (c, base):
        wait_for(lambda: get(base, "/findings")[0] == 200, 30, 0.2, "the control plane's API")
        yield c, base


def get(base: str, path: str):
    return api_json(base, "GET", path, token=TOKEN, timeout=30)


def post_raw(base: str, body: bytes, headers: dict | None = None):
    u = urlsplit(base)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    try:
        conn.request("POST", "/api/v1/alerts/alertmanager", body=body,
                     headers={"Content-Type": "application/json", **(headers or {})})
        r = conn.getresponse()
        return r.status, json.loads(r.read() or b"{}")
    finally:
        conn.close()


def send(base: str, payload: dict):
    return post_raw(base, json.dumps(payload).encode(), {"Authorization": f"Bearer {TOKEN}"})


def payload(status: str, alerts: list[dict]) -> dict:
    """The recorded firing payload with these alerts."""
    doc = json.loads((FIXTURES / "webhook_firing.json").read_text())
    doc["status"] = status
    doc["alerts"] = alerts
    return doc


def alert(status: str, labels: dict, summary: str = "") -> dict:
    base = copy.deepcopy(json.loads((FIXTURES / "webhook_firing.json").read_text())["alerts"][1])
    base["status"] = status
    base["labels"] = labels
    base["annotations"] = {"summary": summary} if summary else {}
    if status == "resolved":
        base["endsAt"] = base["startsAt"]
    return base


def shard_addr(c, shard: str) -> str:
    p = {p["name"]: p for p in c.state["processes"]}[f"redis-{shard}"]
    return f"redis://{p['address']}:{p['port']}"


def findings(base: str, kind: str) -> list[dict]:
    return [f for f in get(base, "/findings?state=all&limit=1000")[1]["findings"] if f["kind"] == kind]


def test_the_token_is_required(live):
    c, base = live
    body = json.dumps(payload("firing", [alert("firing", {"alertname": "X"})])).encode()
    status, doc = post_raw(base, body)
    assert status == 401 and "Bearer" in doc["error"]["message"]
    status, doc = post_raw(base, body, {"Authorization": "Bearer wrong"})
    assert status == 401 and doc["error"]["message"] == "invalid API token"
    assert findings(base, "alertmanager") == [] or all(f["subject"] != 'X{}' for f in findings(base, "alertmanager"))


@pytest.mark.parametrize("body,says", [
    (b"not json", "the body is not JSON"),
    (b'{"version": "3", "status": "firing", "alerts": []}', 'bad field version: must be "4"'),
    (json.dumps(payload("firing", [alert("firing", {"alertname": "Ok", "shard": "shard1"}),
                                   alert("firing", {"instance": "x"})])).encode(),
     "bad field alerts[1].labels.alertname: is missing or empty"),
    (json.dumps(payload("firing", [alert("firing", {"alertname": "Big", "v": "x" * 1025})])).encode(),
     "bad field alerts[0].labels.v: is longer than 1024 bytes"),
])
def test_a_bad_payload_is_a_400_naming_the_field_and_writes_nothing(live, body, says):
    c, base = live
    before = len(findings(base, "alertmanager"))
    status, doc = post_raw(base, body, {"Authorization": f"Bearer {TOKEN}"})
    assert status == 400, doc
    assert says in doc["error"]["message"] and "Alertmanager" in doc["error"]["message"]
    assert len(findings(base, "alertmanager")) == before       # not even the valid first alert


def test_a_resolved_alert_resolves_its_finding_and_its_lone_incident(live):
    c, base = live
    labels = {"alertname": "RedisReplicationBroken", "instance": shard_addr(c, "shard1"), "severity": "warning"}
    status, doc = send(base, payload("firing", [alert("firing", labels)]))
    assert status == 200, doc
    assert (doc["opened"], doc["updated"], doc["resolved"], doc["alerts"]) == (1, 0, 0, 1)
    assert len(doc["incidents"]) == 1
    iid = doc["incidents"][0]
    f = next(f for f in findings(base, "alertmanager") if f["subject"].startswith("RedisReplicationBroken{"))
    assert f["about"] == {"shard": "shard1", "host": "redis2"} and f["state"] == "open"
    assert f["evidence"]["labels"] == labels and f["layer"] == 4
    # the same alert again: refreshed, not opened twice
    status, doc = send(base, payload("firing", [alert("firing", labels)]))
    assert (status, doc["opened"], doc["updated"], doc["incidents"]) == (200, 0, 1, [iid])
    # several detection runs later it is still open: the engine leaves external findings alone
    runs = lambda: [j for j in get(base, "/jobs")[1]["jobs"] if j["id"] == "detect:all"][0]["runs"]  # noqa: E731
    n = runs()
    wait_for(lambda: runs() >= n + 2, 20, 0.2, "two detection runs")
    assert get(base, f"/incidents/{iid}")[1]["state"] == "open"
    status, doc = send(base, payload("resolved", [alert("resolved", labels)]))
    assert (status, doc["resolved"], doc["unknown"], doc["incidents"]) == (200, 1, 0, [iid])
    assert get(base, f"/incidents/{iid}")[1]["state"] == "resolved"
    # resolved again (Alertmanager repeats itself): nothing open to resolve
    status, doc = send(base, payload("resolved", [alert("resolved", labels)]))
    assert (status, doc["resolved"], doc["unknown"]) == (200, 0, 1)
    audit = [a for a in get(base, "/audit?limit=50")[1]["audit"] if a["action"] == "alerts.receive"]
    assert audit[0]["actor"].startswith("token:") and audit[0]["target"] == "alertmanager/chatops"
    assert audit[0]["detail"]["unknown"] == 1 and "labels" not in json.dumps(audit[0]["detail"])


def test_an_alert_on_a_shard_joins_chatops_own_incident_on_that_shard(live):
    c, base = live
    procs = {p["name"]: p for p in c.state["processes"]}
    testing = procs["haproxy-chat-testing"]["address"]
    socks = open_idle(testing, 2000, LEAK)          # chat-testing's listener for shard0: the leak
    try:
        leak = wait_for(lambda: next((f for f in findings(base, "leaked_clients")
                                      if f["subject"] == "chat-testing->shard0" and f["state"] == "open"
                                      and f["incident_id"]), None), 60, 0.5, "chatops' own leak finding")
        labels = {"alertname": "RedisTooManyConnections", "instance": shard_addr(c, "shard0"),
                  "job": "redis_exporter", "severity": "critical"}
        status, doc = send(base, payload("firing", [alert("firing", labels, "shard0 has too many clients")]))
        assert status == 200 and doc["opened"] == 1, doc
        assert doc["incidents"] == [leak["incident_id"]]
        inc = get(base, f"/incidents/{leak['incident_id']}")[1]
        kinds = {f["kind"] for f in inc["findings"]["items"]}
        assert {"leaked_clients", "alertmanager"} <= kinds
        assert inc["severity"] == "critical"
        status, doc = send(base, payload("resolved", [alert("resolved", labels)]))
        assert (status, doc["resolved"]) == (200, 1)
        # chatops' own finding is still open, so the incident is too
        assert get(base, f"/incidents/{leak['incident_id']}")[1]["state"] in ("open", "acknowledged")
    finally:
        for s in socks:
            s.close()
