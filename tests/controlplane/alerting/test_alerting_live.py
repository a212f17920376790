"""Alerts from a real control plane (`chatops up`: real Redis, HAProxy, chat services) to real
local HTTP receivers standing in for Slack and a webhook: a live leak makes one message on open
and one on resolve (a receiver down for two minutes: test_two_quiet_minutes.py); a SIGKILLed
control plane delivers what was pending once; the webhook's signature verifies with the guide's
recipe; no secret reaches a log, the output or an API response. One control plane for the
module; the tests run in file order."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from pathlib import Path

import pytest

from controlplane.database import Database
from tests.conftest import api_json, live_controlplane, open_idle, wait_for
from tests.controlplane.alerting.standin import StandIn
from tests.controlplane.alerting.test_destinations import documented_recipe

TOKEN = "T0LIVE/B0LIVE/liveSlackSecretToken9f3a"
HOOK_SECRET = "live-hook-secret-77c1e0"
API_TOKEN = "alerting-live-api-token-5b2d"
ENV = {"CHATOPS_TEST_SLACK_URL": None, "CHATOPS_TEST_HOOK_URL": None, "CHATOPS_TEST_HOOK_SECRET": HOOK_SECRET,
       "CHATOPS_API_TOKEN": API_TOKEN}
LEAK = 80


def _patch(doc: dict) -> None:
    doc["controlplane"]["thresholds"] = {"hold": "3s", "idle_client_after": "2s", "leaked_idle_clients": 50}
    timers = {"min_severity": "info", "group_wait": "1s", "group_interval": "1s"}
    doc["alerts"] = [
        {"name": "oncall-slack", "type": "slack", "url_env": "CHATOPS_TEST_SLACK_URL", **timers},
        {"name": "hooks", "type": "webhook", "url_env": "CHATOPS_TEST_HOOK_URL",
         "secret_env": "CHATOPS_TEST_HOOK_SECRET", **timers},
    ]


class Live:
    def __init__(self, c, base, slack, hook):
        self.c, self.base, self.slack, self.hook = c, base, slack, hook
        self.db = Database(c.run / "controlplane.sqlite3")
        self.seeded = 0

    def slack_keys(self) -> list[str]:
        """The dedup keys of the messages Slack's stand-in accepted, in arrival order."""
        return [key_of(r.json) for r in self.slack.delivered()]

    def outbox(self, destination: str, incident_ids) -> list[dict]:
        ids = set(incident_ids)
        return [r for r in self.db.alerts(limit=None) if r["destination"] == destination and r["incident_id"] in ids]

    def seed(self, name: str) -> int:
        """An open incident with one finding of a kind no detector runs (so only we change it)."""
        self.seeded += 1
        inc = self.db.add_incident(f"alerting test incident {name}", severity="warning")
        self.db.upsert_finding("alerting_test", f"{name}", severity="warning", evidence={"round": self.seeded},
                               title=f"alerting test finding {name}", about={"cluster": "main"},
                               incident_id=inc["id"])
        return inc["id"]

    def api(self, method: str, path: str):
        status, body = api_json(self.base, method, path, token=API_TOKEN, timeout=30)
        assert status < 300, (status, body)
        return body


def key_of(body: dict) -> str:
    """A Slack message's dedup key, from its context block (`chatops · incident/3/opened`)."""
    ctx = next(b for b in body["blocks"] if b["type"] == "context")
    return ctx["elements"][0]["text"].split(" · ", 1)[1]


@pytest.fixture(scope="module")
def live():
    slack, hook = StandIn().start(), StandIn().start()
    env = {**ENV, "CHATOPS_TEST_SLACK_URL": f"{slack.url}/services/{TOKEN}", "CHATOPS_TEST_HOOK_URL": f"{hook.url}/hook"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        with live_controlplane(traffic=False, patch=_patch) as (c, base):
            yield Live(c, base, slack, hook)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        slack.release()
        slack.stop()
        hook.stop()


# -- a: a live leak, one message on open and one on resolve -------------------------------------

def test_a_live_leak_sends_one_message_on_open_and_one_on_resolve(live):
    procs = {p["name"]: p for p in live.c.state["processes"]}
    socks = open_idle(procs["haproxy-chat-testing"]["address"], 2001, LEAK)
    try:
        def leak_incident():
            for f in live.db.findings(open_only=True):
                if f["kind"] == "leaked_clients" and f["subject"] == "chat-testing->shard1" and f["incident_id"]:
                    return f["incident_id"]
            return None
        iid = wait_for(leak_incident, 60, 0.5, "the leak's incident")
        wait_for(lambda: f"incident/{iid}/opened" in live.slack_keys(), 30, 0.2, "Slack's opened message")
    finally:
        for s in socks:
            s.close()
    wait_for(lambda: f"incident/{iid}/resolved" in live.slack_keys(), 60, 0.2, "Slack's resolved message")
    mine = [k for k in live.slack_keys() if k.startswith(f"incident/{iid}/")]
    assert mine[0] == f"incident/{iid}/opened" and mine[-1] == f"incident/{iid}/resolved", mine
    assert len(mine) == len(set(mine)), f"a notification arrived twice: {mine}"
    assert all(k.split("/")[2] in ("opened", "severity", "resolved") for k in mine), mine
    opened = next(r.json for r in live.slack.delivered() if key_of(r.json) == f"incident/{iid}/opened")
    flat = json.dumps(opened["blocks"])
    assert "leaked clients" in flat and "Root-cause chain" in flat and "Evidence" in flat
    assert "*idle*" in flat and "kill_clients" in flat, flat
    links = [e["url"] for b in opened["blocks"] if b["type"] == "actions" for e in b["elements"]]
    assert links == [f"{live.base}/incidents/{iid}", f"{live.base}/runbooks/leaked_clients"]
    assert opened["text"].startswith(("[WARNING] Opened:", "[CRITICAL] Opened:"))


# -- f: the webhook's signature, live ------------------------------------------------------------

def test_the_live_webhook_is_signed_as_the_guide_says(live):
    wait_for(lambda: live.hook.delivered(), 30, 0.2, "a webhook notification")
    namespace: dict = {}
    exec(documented_recipe(), namespace)  # noqa: S102 -- the guide's code, run as a receiver would
    for req in live.hook.delivered():
        assert namespace["verify"](HOOK_SECRET, req.body, req.headers["X-Chatops-Signature"])
        assert req.headers["X-Chatops-Dedup-Key"] == json.loads(req.body)["dedup_key"]
    keys = [r.headers["X-Chatops-Dedup-Key"] for r in live.hook.delivered()]
    assert len(keys) == len(set(keys))


# -- c: the receiver down for two minutes: tests/controlplane/test_two_quiet_minutes.py, which
# shares its two minutes with the detectors' quiet check

# -- d: SIGKILL with five notifications pending --------------------------------------------------

def test_a_sigkilled_control_plane_delivers_its_five_pending_notifications_once(live):
    before = len(live.slack.requests)
    live.slack.stop()
    ids = [live.seed(f"kill-{i}") for i in range(5)]
    outbox = lambda: live.outbox("oncall-slack", ids)
    wait_for(lambda: len(outbox()) == 5 and outbox()[0]["attempts"] >= 1, 30, 0.2,
             "five notifications pending, the first tried")
    pid = live.c.pid_of("controlplane")
    os.kill(pid, signal.SIGKILL)

    def restarted():
        try:
            state = live.c.state
            return next(p for p in state["processes"] if p["name"] == "controlplane")["pid"] not in (None, pid)
        except (TypeError, StopIteration, KeyError):      # state.json mid-rewrite
            return False
    wait_for(restarted, 30, 0.2, "the supervisor to restart the control plane")
    assert all(r["status"] in ("pending", "retrying") for r in outbox())
    live.slack.start()
    wait_for(lambda: all(r["status"] == "delivered" for r in outbox()), 90, 0.2, "the five delivered")
    got = [key_of(r.json) for r in live.slack.requests[before:] if r.answered == 200
           and int(key_of(r.json).split("/")[1]) in ids]
    assert got == [f"incident/{i}/opened" for i in ids], got


# -- b: twenty findings in one incident, one message --------------------------------------------

def test_twenty_findings_in_one_incident_make_one_message(live):
    alerts = [{"status": "firing", "labels": {"alertname": f"ChatopsTestAlert{i:02d}", "shard": "shard0",
                                              "severity": "warning"},
               "annotations": {"summary": f"test alert {i} on shard0"}, "startsAt": "2026-01-01T00:00:00Z",
               "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "http://prometheus.local:9090/graph",
               "fingerprint": f"{i:016x}"} for i in range(20)]
    payload = {"version": "4", "groupKey": "{}:{shard=\"shard0\"}", "truncatedAlerts": 0, "status": "firing",
               "receiver": "chatops", "groupLabels": {"shard": "shard0"}, "commonLabels": {"shard": "shard0"},
               "commonAnnotations": {}, "externalURL": "http://alertmanager.local:9093", "alerts": alerts}
    status, body = api_json(live.base, "POST", "/alerts/alertmanager", payload, token=API_TOKEN, timeout=30)
    assert status == 200 and body["firing"] == 20, body
    [iid] = body["incidents"]
    assert sum(1 for f in live.db.incident_findings(iid) if f["kind"] == "alertmanager") == 20
    wait_for(lambda: f"incident/{iid}/opened" in live.slack_keys(), 30, 0.2, "the incident's message")
    # Several group_intervals later, still that one message (nothing else happened to the incident).
    settle = time.monotonic() + 5
    wait_for(lambda: time.monotonic() > settle, 10, 0.2, "a few group intervals")
    mine = [k for k in live.slack_keys() if k.startswith(f"incident/{iid}/")]
    assert mine == [f"incident/{iid}/opened"], mine
    assert [r["event"] for r in live.outbox("oncall-slack", [iid])] == ["opened"]
    message = next(r.json for r in live.slack.delivered() if key_of(r.json) == f"incident/{iid}/opened")
    assert "20 open of 20" in json.dumps(message["blocks"])


# -- e: no secret anywhere -----------------------------------------------------------------------

def test_no_secret_in_logs_output_or_api_responses(live):
    secrets = [TOKEN.encode(), TOKEN.split("/")[-1].encode(), HOOK_SECRET.encode()]
    checked = 0
    for path in Path(live.c.run).rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            checked += 1
            for s in secrets:
                assert s not in data, f"a secret is in {path}"
    assert checked and any(p.suffix == ".log" or "log" in p.name for p in Path(live.c.run).rglob("*"))
    out = live.c.output().encode()
    assert out and not any(s in out for s in secrets), "a secret is in chatops up's output"
    assert b"disabled" not in out or b"CHATOPS_TEST" not in out
    ids = sorted({r["incident_id"] for r in live.db.alerts(limit=None) if r["incident_id"]})
    bodies = [urllib.request.urlopen(live.base + "/metrics", timeout=10).read()]
    for path in ["/overview", "/incidents?state=all", "/alerts", *(f"/incidents/{i}" for i in ids)]:
        with urllib.request.urlopen(f"{live.base}/api/v1{path}", timeout=10) as r:
            bodies.append(r.read())
    for body in bodies:
        for s in secrets:
            assert s not in body
    assert b"chatops_alert_notifications_total" in bodies[0]
