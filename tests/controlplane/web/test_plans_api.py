"""The remediation routes of the JSON API (/plans, /plans/{id}, /plans/{id}/apply,
/incidents/{id}/plan) on a live control plane: real redis-server, HAProxy and chat services, no
traffic. Every reply is checked against controlplane/web/openapi.json.

- bad input is a 400 naming the field or parameter, and stores no plan;
- a plan changes nothing (live config, cluster file);
- apply changes the shard live and in the cluster file, once: a second apply is a no-op;
- a plan whose state moved since it was made is refused (409) and marked failed;
- two applies on one subject at the same moment: one runs, the other gets 409;
- changing anything needs the token; unknown plans and incidents are 404s."""

from __future__ import annotations

import http.client
import json
import os
import secrets
import socket
import threading
import time
from urllib.parse import urlsplit

import pytest
import yaml

from collectors import redis as rc
from controlplane.remediation.kill_clients import parse_clients
from tests.conftest import live_controlplane, open_idle, redis_creds, wait_for
from tests.controlplane.web.test_api import ERROR, Reply, response_validator, schema_errors

PREFIX = "/api/v1"
TOKEN = "plans-" + secrets.token_urlsafe(24)
IDLE = 2500     # idle connections a kill has to get through: long enough for a second apply to meet it


# -- helpers --------------------------------------------------------------------------------------

def api(base: str, method: str, path: str, body=None, *, token: str | None = TOKEN, raw: bytes | None = None,
        timeout: float = 60) -> Reply:
    """One request to /api/v1`path`; `body` is sent as JSON, `raw` as is (both as application/json)."""
    u = urlsplit(base)
    headers = {}
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    if data is not None:
        headers["Content-Type"] = "application/json"
    if token is not None and method != "GET":
        headers["Authorization"] = f"Bearer {token}"
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        conn.request(method, PREFIX + path, body=data, headers=headers)
        r = conn.getresponse()
        return Reply(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
    finally:
        conn.close()


def documented(r: Reply, path: str, method: str = "get", status: int = 200):
    """The reply has this status and a body the document describes for it; returns the body."""
    assert r.status == status, r
    assert r.headers.get("content-type", "").startswith("application/json"), r.headers
    errors = schema_errors(response_validator(path, method, str(status)), r.json)
    assert not errors, f"{method.upper()} {path} {status} does not match the document:\n" + "\n".join(errors)
    return r.json


def error(r: Reply, status: int) -> str:
    """The reply is a JSON error of the documented shape with this status; returns its message."""
    assert r.status == status, r
    assert r.headers.get("content-type", "").startswith("application/json"), r.headers
    assert not schema_errors(ERROR, r.json), schema_errors(ERROR, r.json)
    assert r.json["error"]["status"] == status
    return r.json["error"]["message"]


def make_plan(base: str, action: str, **params) -> dict:
    return documented(api(base, "POST", "/plans", {"action": action, "params": params}), "/plans", "post", 201)


def apply(base: str, plan_id: str) -> Reply:
    return api(base, "POST", f"/plans/{plan_id}/apply")


def get_plan(base: str, plan_id: str) -> dict:
    return documented(api(base, "GET", f"/plans/{plan_id}"), "/plans/{plan_id}")


def text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value


def config_get(conn: rc.Conn, key: str) -> str:
    return text(conn.call("CONFIG", "GET", key)[1])


def shard_file_value(c, shard: str, key: str):
    doc = yaml.safe_load(c.config.read_text())
    return next(s for s in doc["redis"]["shards"] if s["name"] == shard).get(key)


# -- the live control plane -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def live():
    """A small cluster without traffic and its control plane, for the whole module; the control
    plane inherits our API token from the environment. Yields (RunningCluster, base URL)."""
    old = os.environ.get("CHATOPS_API_TOKEN")
    os.environ["CHATOPS_API_TOKEN"] = TOKEN
    try:
        with live_controlplane(traffic=False) as (c, base):
            wait_for(lambda: api(base, "GET", "/plans").status == 200, timeout=30, interval=0.2,
                     what="the control plane's API")
            yield c, base
    finally:
        if old is None:
            os.environ.pop("CHATOPS_API_TOKEN", None)
        else:
            os.environ["CHATOPS_API_TOKEN"] = old


@pytest.fixture
def shard0(live):
    """A direct connection to shard0 (not through HAProxy, not the control plane's)."""
    c, _ = live
    p = next(p for p in c.state["processes"] if p["name"] == "redis-shard0")
    conn = rc.Conn(p["address"], p["port"], auth=redis_creds())
    yield conn
    conn.close()


def plan_ids(base: str) -> set[str]:
    return {p["id"] for p in documented(api(base, "GET", "/plans?limit=1000"), "/plans")["plans"]}


# -- bad input ------------------------------------------------------------------------------------

def _cfg(**params):
    return {"action": "set_redis_config", "params": params}


BAD = [
    ("unknown action", {"action": "no_such_action", "params": {}}, "bad parameter action:"),
    ("missing shard", _cfg(timeout=60), "bad parameter shard:"),
    ("unknown shard", _cfg(shard="shard9", timeout=60), "bad parameter shard:"),
    ("negative timeout", _cfg(shard="shard0", timeout=-1), "bad parameter timeout:"),
    ("timeout not a number", _cfg(shard="shard0", timeout="abc"), "bad parameter timeout:"),
    ("float timeout", _cfg(shard="shard0", timeout=1.5), "bad parameter timeout:"),
    ("bool timeout", _cfg(shard="shard0", timeout=True), "bad parameter timeout:"),
    ("unknown parameter", _cfg(shard="shard0", timeout=60, foo=1), "bad parameter foo:"),
    ("params not an object", {"action": "set_redis_config", "params": [1]}, "bad parameter params:"),
    ("kill_clients without host", {"action": "kill_clients", "params": {"shard": "shard0"}}, "bad parameter host:"),
    ("no action", {"params": {"shard": "shard0"}}, "bad field action"),
    ("action not a string", {"action": 7}, "bad field action"),
    ("unknown body field", {"action": "set_redis_config", "params": {"shard": "shard0"}, "foo": 1},
     "bad field 'foo'"),
    ("steps not a list", {"steps": "set_redis_config"}, "bad field steps"),
    ("steps empty", {"steps": []}, "bad field steps"),
    ("step not an object", {"steps": ["set_redis_config"]}, "bad field steps"),
    ("step with an unknown key", {"steps": [{"action": "set_redis_config", "x": 1}]}, "bad field steps"),
    ("second step bad", {"steps": [{"action": "set_redis_config", "params": {"shard": "shard0", "timeout": 60}},
                                   {"action": "set_redis_config", "params": {"shard": "shard0", "timeout": -5}}]},
     "bad parameter timeout:"),
    ("body a list", [{"action": "set_redis_config"}], "the body must be a JSON object"),
    ("body a string", "set_redis_config", "the body must be a JSON object"),
]


@pytest.mark.parametrize("body,names", [(b, n) for _, b, n in BAD], ids=[i for i, _, _ in BAD])
def test_bad_input_gets_400_naming_the_field(live, body, names):
    _, base = live
    before = plan_ids(base)
    message = error(api(base, "POST", "/plans", body), 400)
    assert message.startswith(names), message
    assert "\n" not in message
    assert plan_ids(base) == before, "a refused plan was stored"


@pytest.mark.parametrize("raw", [b"", b"not json", b"{\"action\": ", b"null"])
def test_a_body_that_is_not_json_gets_400(live, raw):
    _, base = live
    assert error(api(base, "POST", "/plans", raw=raw), 400).startswith("the body must be a JSON object")


def test_bad_query_parameters_of_plans_get_400(live):
    _, base = live
    assert error(api(base, "GET", "/plans?limit=0"), 400).startswith("bad query parameter limit=")
    assert error(api(base, "GET", "/plans?foo=1"), 400).startswith("unknown query parameter 'foo'")
    assert error(api(base, "GET", "/plans/00000000?limit=5"), 400).startswith("unknown query parameter 'limit'")
    assert error(api(base, "POST", "/plans?x=1", _cfg(shard="shard0", timeout=60)), 400).startswith(
        "unknown query parameter 'x'")


# -- plan, apply ----------------------------------------------------------------------------------

def test_a_plan_has_no_side_effect(live, shard0):
    c, base = live
    before_live, before_file = config_get(shard0, "timeout"), c.config.read_bytes()
    wanted = 120 if before_live != "120" else 121
    plan = make_plan(base, "set_redis_config", shard="shard0", timeout=wanted)
    assert plan["state"] == "planned" and plan["action"] == "set_redis_config" and plan["subject"] == "shard:shard0"
    assert plan["changes"] is True and plan["result"] is None and plan["applied_at"] is None
    assert plan["created_by"].startswith("token:") and TOKEN not in json.dumps(plan)
    step = plan["steps"][0]
    assert step["params"] == {"shard": "shard0", "timeout": wanted, "maxclients": None, "maxmemory_policy": None}
    assert f"shard0: CONFIG SET timeout {before_live} -> {wanted}" in step["diff"]
    assert any(line.startswith("+") and f"timeout: {wanted}" in line for line in step["diff"]), step["diff"]

    # Nothing changed: not the shard, not the cluster file.
    assert config_get(shard0, "timeout") == before_live
    assert c.config.read_bytes() == before_file

    # It is stored as returned, listed, and has no audit record yet.
    stored = get_plan(base, plan["id"])
    assert {k: v for k, v in stored.items() if k != "audit"} == plan
    assert stored["audit"] == []
    listed = documented(api(base, "GET", "/plans?limit=5"), "/plans")["plans"]
    assert listed[0] == plan


def test_apply_works_once_and_a_second_apply_changes_nothing(live, shard0):
    c, base = live
    wanted = 120 if config_get(shard0, "timeout") != "120" else 121
    plan = make_plan(base, "set_redis_config", shard="shard0", timeout=wanted)

    first = documented(apply(base, plan["id"]), "/plans/{plan_id}/apply", "post")
    assert first["state"] == "applied", first
    assert first["result"]["ok"] is True and first["applied_at"] >= plan["created"]
    assert first["applied_by"].startswith("token:")
    assert config_get(shard0, "timeout") == str(wanted)
    assert shard_file_value(c, "shard0", "timeout") == wanted
    file_after = c.config.read_bytes()

    audit = get_plan(base, plan["id"])["audit"]
    assert [(a["action"], a["target"], a["result"]) for a in audit] == [
        ("remediation.set_redis_config", "shard:shard0", "ok")]
    assert audit[0]["detail"]["plan_id"] == plan["id"] and audit[0]["actor"].startswith("token:")

    second = documented(apply(base, plan["id"]), "/plans/{plan_id}/apply", "post")
    assert second["state"] == "applied" and second["applied_at"] == first["applied_at"]
    assert second["result"] == first["result"]
    again = get_plan(base, plan["id"])
    assert [a["id"] for a in again["audit"]] == [a["id"] for a in audit], "the second apply was audited"
    assert c.config.read_bytes() == file_after
    # Nothing watches this plan: no finding names shard0.
    v = wait_for(lambda: get_plan(base, plan["id"])["verification"], 10, 0.2, "the verification")
    assert v["state"] == "nothing_to_watch", v


def test_a_stale_plan_is_refused(live, shard0):
    c, base = live
    before = config_get(shard0, "timeout")
    wanted = 200 if before != "200" else 201
    plan = make_plan(base, "set_redis_config", shard="shard0", timeout=wanted)
    file_before = c.config.read_bytes()
    try:
        assert shard0.call("CONFIG", "SET", "timeout", "7") in ("OK", b"OK")   # by hand, after the plan
        message = error(apply(base, plan["id"]), 409)
        assert "changed since the plan was made" in message and "plan again" in message, message
        assert config_get(shard0, "timeout") == "7", "a stale plan changed the shard"
        assert c.config.read_bytes() == file_before
        stored = get_plan(base, plan["id"])
        assert stored["state"] == "failed"
        assert stored["result"]["ok"] is False and stored["result"]["stale"] is True
        assert [(a["action"], a["result"]) for a in stored["audit"]] == [("remediation.apply", "stale")]
    finally:
        shard0.call("CONFIG", "SET", "timeout", before)


# -- incidents ------------------------------------------------------------------------------------

def seed_incident(c, kind: str, subject: str, remediation=None, about=None) -> int:
    """An incident in the live control plane's database, written as the engine writes one."""
    from controlplane import incidents
    from controlplane.database import Database
    with Database(c.run / "controlplane.sqlite3") as db:
        f = db.upsert_finding(kind, subject, severity="warning", evidence={}, runbook=kind,
                              remediation=remediation, title=f"{kind} {subject} (seeded by test_plans_api)",
                              about=about or {})
        incidents.update(db, None, db.findings(open_only=True), [], time.time())
        return db.finding(f["id"])["incident_id"]


def test_an_incident_is_planned_from_its_remediation(live):
    c, base = live
    remediation = {"action": "kill_clients", "summary": "kill chat-testing's idle connections to shard1",
                   "params": {"shard": "shard1", "host": "chat-testing", "idle_over_s": 30}}
    incident = seed_incident(c, "leaked_clients", "chat-testing->shard1", remediation,
                             {"shard": "shard1", "host": "chat-testing"})
    plan = documented(api(base, "POST", f"/incidents/{incident}/plan"), "/incidents/{incident_id}/plan", "post", 201)
    assert plan["incident_id"] == incident and plan["state"] == "planned" and plan["subject"] == "shard:shard1"
    # The root cause's remediation: ours, or the detector's own when it found a leak there too.
    step = plan["steps"][0]
    assert step["action"] == "kill_clients", plan
    assert (step["params"]["shard"], step["params"]["host"]) == ("shard1", "chat-testing"), step["params"]


def test_an_incident_without_an_action_gets_409(live):
    c, base = live
    incident = seed_incident(c, "hot_shard", "shard0", None, {"shard": "shard0", "host": "redis1"})
    message = error(api(base, "POST", f"/incidents/{incident}/plan"), 409)
    assert "not an action chatops applies" in message, message


# -- two applies on one subject -------------------------------------------------------------------

def idle_connections(c, shard: str, n: int) -> list[socket.socket]:
    """`n` connections to `shard` through chat-testing's HAProxy listener (so the shard sees them
    from chat-testing's address), one PING each, then idle."""
    procs = {p["name"]: p for p in c.state["processes"]}
    testing = procs["haproxy-chat-testing"]["address"]
    port = 2000 + int(shard.removeprefix("shard"))
    return open_idle(testing, port, n)


def test_two_applies_on_one_subject_one_runs_the_other_gets_409(live):
    c, base = live
    procs = {p["name"]: p for p in c.state["processes"]}
    testing = procs["haproxy-chat-testing"]["address"]
    direct = rc.Conn(procs["redis-shard1"]["address"], procs["redis-shard1"]["port"], auth=redis_creds())
    socks = idle_connections(c, "shard1", IDLE)
    try:
        # The plans kill what is idle over 1 s: ours, and whatever chat-testing's services hold. One
        # of theirs that reconnects during the kill is fresh, so it does not count as left.
        def idle_enough():
            mine = [cl for cl in parse_clients(direct.call("CLIENT", "LIST"))
                    if cl["ip"] == testing and cl["idle"] > 1]
            return len(mine) >= IDLE
        wait_for(idle_enough, 15, 0.25, f"{IDLE} idle connections from chat-testing on shard1")
        a = make_plan(base, "kill_clients", shard="shard1", host="chat-testing", idle_over_s=1)
        b = make_plan(base, "kill_clients", shard="shard1", host="chat-testing", idle_over_s=1)
        assert a["subject"] == b["subject"] == "shard:shard1" and a["changes"] and b["changes"]
        assert int(a["steps"][0]["diff"][0].split()[1]) >= IDLE, a["steps"][0]["diff"]   # "- 2500 connections ..."

        barrier = threading.Barrier(2)
        replies: dict[str, Reply] = {}
        took: dict[str, float] = {}

        def go(plan_id: str) -> None:
            barrier.wait()
            started = time.perf_counter()
            replies[plan_id] = apply(base, plan_id)
            took[plan_id] = time.perf_counter() - started

        threads = [threading.Thread(target=go, args=(p["id"],)) for p in (a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        statuses = sorted(r.status for r in replies.values())
        assert statuses == [200, 409], (replies, took)
        winner = next(pid for pid, r in replies.items() if r.status == 200)
        loser = next(pid for pid, r in replies.items() if r.status == 409)
        done = documented(replies[winner], "/plans/{plan_id}/apply", "post")
        assert done["state"] == "applied", done
        kill = done["result"]["steps"][0]
        assert kill["ok"] and kill["changed"]["killed"] >= IDLE and kill["changed"]["left"] == 0, kill
        assert "another apply holds shard:shard1" in error(replies[loser], 409)

        # The refused plan was never claimed: it is still planned, without an audit record, and can
        # be applied now. Our connections are gone; at most a connection of chat-testing's own
        # services, reconnected after the first kill and idle since, is left for it.
        refused = get_plan(base, loser)
        assert refused["state"] == "planned" and refused["audit"] == []
        later = documented(apply(base, loser), "/plans/{plan_id}/apply", "post")
        assert later["state"] == "applied", later
        assert sum(s["changed"].get("killed", 0) for s in later["result"]["steps"]) < 20, later["result"]
        assert [(x["action"], x["result"]) for x in get_plan(base, winner)["audit"]] == [
            ("remediation.kill_clients", "ok")]
    finally:
        for s in socks:
            s.close()
        direct.close()


# -- auth, unknown names --------------------------------------------------------------------------

def test_changes_need_the_token(live):
    _, base = live
    plan = make_plan(base, "set_redis_config", shard="shard1", timeout=61)
    body = _cfg(shard="shard1", timeout=62)
    for token in (None, "not-the-token"):
        for path, sent in (("/plans", body), (f"/plans/{plan['id']}/apply", None), ("/incidents/1/plan", None),
                           ("/plans/00000000/apply", None), ("/incidents/999999/plan", None)):
            r = api(base, "POST", path, sent, token=token)
            error(r, 401)
            assert r.headers.get("www-authenticate", "").startswith("Bearer"), r.headers
            assert TOKEN not in r.raw.decode()
    assert get_plan(base, plan["id"])["state"] == "planned", "an anonymous apply applied"


@pytest.mark.parametrize("method,path", [
    ("GET", "/plans/00000000"), ("GET", "/plans/nothex!"), ("GET", "/plans/" + "a" * 300),
    ("POST", "/plans/00000000/apply"), ("POST", "/plans/XYZ/apply"),
    ("POST", "/incidents/999999/plan"), ("POST", f"/incidents/{2**63}/plan")])
def test_unknown_plans_and_incidents_get_404(live, method, path):
    _, base = live
    message = error(api(base, method, path), 404)
    assert "unknown" in message, message
