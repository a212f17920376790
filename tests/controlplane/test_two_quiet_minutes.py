"""Two minutes of normal traffic, on the default thresholds, checked for two things at once.

1. No detector fires. The cluster is the shipped one's shape in small (two clusters, two
   shards), with the load generator `chatops up --traffic` runs and the control plane's canary on
   its defaults -- in its own room of each cluster (#chatops_canary_main,
   #chatops_canary_testing), one message through every edge each second, every path judged on
   its last 10 messages (3 missed or late fail one) -- beside the load generator's traffic in the
   users' rooms; scraping every second, so the detectors see 120 windows. A false page at 3 a.m.
   costs trust that a real one then lacks.
2. A Slack receiver down for those two minutes (a real HTTP stand-in, stopped: connection
   refused), then back, gets every notification once, in the outbox's order.

Both need two minutes of a running control plane and neither disturbs the other: the incidents
the outage test opens carry findings of a kind no detector runs, which the quiet check leaves out.
Sharing the wait keeps the suite inside its time budget. One fixture runs the two minutes and
records what happened; each test judges its own part."""

from __future__ import annotations

import json
import time
import urllib.request
from dataclasses import dataclass, field

import pytest

from controlplane.database import Database
from tests.conftest import api_json, api_token, env_var, live_controlplane, wait_for
from tests.controlplane.alerting.standin import StandIn

QUIET_S = 120.0
SEEDED_KIND = "alerting_test"          # no detector has this kind: only the test opens or closes it
SLACK_TOKEN = "T0QUIET/B0QUIET/quietSlackSecretToken41d2"
API_TOKEN = "quiet-minutes-api-token-7e0a"


def _patch(doc: dict) -> None:
    # Detection stays on its defaults; only where alerts go is set, with short grouping timers.
    doc["alerts"] = [{"name": "oncall-slack", "type": "slack", "url_env": "CHATOPS_TEST_SLACK_URL",
                      "min_severity": "info", "group_wait": "1s", "group_interval": "1s"}]


def key_of(body: dict) -> str:
    """A Slack message's dedup key, from its context block (`chatops · incident/3/opened`)."""
    ctx = next(b for b in body["blocks"] if b["type"] == "context")
    return ctx["elements"][0]["text"].split(" · ", 1)[1]


@dataclass
class Minutes:
    findings: list[dict] = field(default_factory=list)      # every finding a detector opened
    detect: dict = field(default_factory=dict)               # the detect job after the two minutes
    broken: list[str] = field(default_factory=list)          # detectors that raised
    ids: list[int] = field(default_factory=list)             # the outage's incidents
    outbox: list[dict] = field(default_factory=list)         # their Slack notifications, delivered
    pending_at_end: list[str] = field(default_factory=list)  # their states just before the restart
    got: list[str] = field(default_factory=list)             # dedup keys Slack accepted, in order


def _get(base: str, path: str):
    with urllib.request.urlopen(f"{base}{path}", timeout=5) as r:
        return r.read().decode()


@pytest.fixture(scope="module")
def minutes():
    slack = StandIn().start()
    out = Minutes()
    try:
        with env_var("CHATOPS_TEST_SLACK_URL", f"{slack.url}/services/{SLACK_TOKEN}"), api_token(API_TOKEN), \
                live_controlplane(traffic=True, patch=_patch) as (c, base):
            def detecting():
                jobs = {j["id"]: j for j in json.loads(_get(base, "/api/v1/jobs"))["jobs"]}
                return jobs.get("detect:all", {}).get("runs", 0) >= 3 and all(j["runs"] >= 1 for j in jobs.values())
            wait_for(detecting, 30, 0.5, "the detection job to run")
            db = Database(c.run / "controlplane.sqlite3")
            try:
                started = time.monotonic()
                before = len(slack.requests)
                slack.stop()
                assert slack.refuses()
                ids = []
                for i in range(3):
                    inc = db.add_incident(f"outage test incident {i}", severity="warning")
                    db.upsert_finding(SEEDED_KIND, f"outage-{i}", severity="warning", title=f"outage test {i}",
                                      about={"cluster": "main"}, incident_id=inc["id"])
                    ids.append(inc["id"])
                out.ids = ids

                def outbox():
                    return [r for r in db.alerts(limit=None) if r["destination"] == "oncall-slack"
                            and r["incident_id"] in ids]

                def api(path):
                    status, body = api_json(base, "POST", path, token=API_TOKEN, timeout=30)
                    assert status < 300, (status, body)

                wait_for(lambda: len(outbox()) == 3, 30, 0.2, "three opened notifications in the outbox")
                api(f"/incidents/{ids[0]}/acknowledge")
                api(f"/incidents/{ids[1]}/resolve")
                wait_for(lambda: len(outbox()) == 5, 30, 0.2, "the acknowledged and the resolved in the outbox")
                wait_for(lambda: any(r["attempts"] >= 2 for r in outbox()), 30, 0.2,
                         "retries while the receiver is down")
                seen: dict[int, dict] = {}
                while time.monotonic() - started < QUIET_S:
                    for f in db.findings():
                        if f["kind"] != SEEDED_KIND:
                            seen.setdefault(f["id"], f)
                    time.sleep(min(5.0, max(0.0, QUIET_S - (time.monotonic() - started))))
                out.findings = list(seen.values()) + [f for f in db.findings()
                                                      if f["kind"] != SEEDED_KIND and f["id"] not in seen]
                out.detect = {j["id"]: j for j in json.loads(_get(base, "/api/v1/jobs"))["jobs"]}["detect:all"]
                out.broken = [ln for ln in _get(base, "/metrics").splitlines()
                              if ln.startswith("chatops_source_section_errors{") and 'source="detect"' in ln]
                out.pending_at_end = [r["status"] for r in outbox()]
                slack.start()
                wait_for(lambda: all(r["status"] == "delivered" for r in outbox()), 60, 0.2,
                         "every notification delivered")
                out.outbox = outbox()
                out.got = [key_of(r.json) for r in slack.requests[before:] if r.answered == 200
                           and int(key_of(r.json).split("/")[1]) in ids]
            finally:
                db.close()
        yield out
    finally:
        slack.release()
        slack.stop()


def test_normal_traffic_opens_no_finding(minutes):
    assert minutes.findings == [], [(f["kind"], f["subject"], f["title"], f["evidence"]) for f in minutes.findings]
    assert minutes.detect["runs"] >= QUIET_S * 0.8 and minutes.detect["last_error"] is None, minutes.detect
    # A detector that raised would be quiet too: the engine reports it as a section error.
    assert minutes.broken == []


def test_a_receiver_down_for_two_minutes_gets_every_notification_once_in_order(minutes):
    ids, got = minutes.ids, minutes.got
    assert minutes.pending_at_end and all(s in ("pending", "retrying") for s in minutes.pending_at_end), \
        minutes.pending_at_end
    assert got == [r["dedup_key"] for r in minutes.outbox], "not every notification once, in the outbox's order"
    assert sorted(k.split("/", 2)[2] for k in got) == ["acknowledged", "opened", "opened", "opened", "resolved"]
    assert got.index(f"incident/{ids[1]}/opened") < got.index(f"incident/{ids[1]}/resolved")
    assert got.index(f"incident/{ids[0]}/opened") < got.index(f"incident/{ids[0]}/acknowledged")
