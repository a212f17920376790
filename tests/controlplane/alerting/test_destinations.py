"""Each destination type against a real local HTTP server (the stand-in), and Alertmanager's
against a real Alertmanager: what is sent, and how each answer becomes a delivery result."""

from __future__ import annotations

import email.utils
import hashlib
import hmac
import json
import socket
import subprocess
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

from controlplane.alerting import TYPES, message
from controlplane.alerting.destination import BadDestination, retry_after, scrub
from controlplane.database import Database
from tests.conftest import require, wait_for
from tests.controlplane.alerting.helpers import cluster, dest, seed
from tests.controlplane.alerting.standin import StandIn

TOKEN = "T0001/B0002/XyZsecretTokenValue123"
SECRET = "hook-secret-4f1d2c"


@pytest.fixture
def standin():
    s = StandIn().start()
    yield s
    s.stop()


@pytest.fixture
def note(tmp_path):
    cf = cluster([dest()], public_url="https://chatops.example.com")
    with Database(tmp_path / "cp.sqlite3") as db:
        iid = seed(db, severity="critical")
        yield message.build(db.incident(iid), db.incident_findings(iid), "opened", cf)


def build(kind: str, url: str, secret: str | None = None, timeout: float = 10.0):
    spec = cluster([dest("d", kind, **({"secret_env": "SECRET_D"} if secret else {}))]).alerts[0]
    return TYPES[kind].from_env(spec, {"URL_D": url, **({"SECRET_D": secret} if secret else {})}, timeout)


# -- Slack ----------------------------------------------------------------------------------------

def test_slack_sends_block_kit_with_evidence_plan_and_links(standin, note):
    slack = build("slack", f"{standin.url}/services/{TOKEN}")
    r = slack.send(note)
    assert r.delivered and r.status == 200
    [req] = standin.requests
    assert req.path == f"/services/{TOKEN}" and req.headers["Content-Type"].startswith("application/json")
    body = req.json
    assert body["text"].startswith("[CRITICAL] Opened:")
    kinds = [b["type"] for b in body["blocks"]]
    assert kinds[0] == "header" and "actions" in kinds and "context" in kinds
    flat = json.dumps(body["blocks"])
    assert "2,204" in flat and "kill_clients" in flat and "clue-chat1" in flat
    assert "Root-cause chain" in flat and "leaked clients" in flat
    buttons = next(b for b in body["blocks"] if b["type"] == "actions")["elements"]
    assert [b["url"] for b in buttons] == [note["links"]["incident"], note["links"]["runbook"]]


@pytest.mark.parametrize("mode, outcome", [("fail", "retry"), ("reject", "rejected")])
def test_slack_answers_map_to_retry_or_rejected(standin, note, mode, outcome):
    standin.mode = mode
    standin.reject_body = "invalid_blocks"
    r = build("slack", f"{standin.url}/services/{TOKEN}").send(note)
    assert r.outcome == outcome and r.error.startswith(f"HTTP {r.status}")
    if mode == "reject":
        assert r.status == 400 and "invalid_blocks" in r.error
    assert len(standin.requests) == 1          # the SDK's own retries are off


def test_slack_429_honours_retry_after_in_seconds_and_as_a_date(standin, note):
    standin.mode = "throttle"
    standin.retry_after = "7"
    r = build("slack", f"{standin.url}/services/{TOKEN}").send(note)
    assert r.outcome == "retry" and r.status == 429 and r.retry_after == 7.0
    standin.retry_after = email.utils.formatdate(time.time() + 120, usegmt=True)
    r = build("slack", f"{standin.url}/services/{TOKEN}").send(note)
    assert r.outcome == "retry" and 100 <= r.retry_after <= 121


def test_slack_timeout_and_refused_connection_are_retried_and_scrubbed(standin, note):
    standin.mode = "hang"
    r = build("slack", f"{standin.url}/services/{TOKEN}", timeout=0.5).send(note)
    assert r.outcome == "retry" and r.status is None and "timed out" in r.error.lower()
    standin.release()
    standin.stop()
    r = build("slack", f"{standin.url}/services/{TOKEN}").send(note)
    assert r.outcome == "retry" and "refused" in r.error.lower()
    assert TOKEN not in r.error


def test_a_receiver_echoing_the_url_has_it_scrubbed(standin, note):
    standin.mode = "reject"
    standin.reject_body = f"no such hook: /services/{TOKEN}"
    r = build("slack", f"{standin.url}/services/{TOKEN}").send(note)
    assert r.outcome == "rejected" and TOKEN not in r.error and "<redacted>" in r.error


# -- the webhook ----------------------------------------------------------------------------------

def verify(secret: str, body: bytes, header: str) -> bool:
    """docs/alerting.md's recipe, verbatim."""
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, header)


def documented_recipe() -> str:
    text = (Path(__file__).resolve().parents[3] / "docs" / "alerting.md").read_text()
    start = text.rindex("```python\n", 0, text.index("def verify(")) + len("```python\n")
    return textwrap.dedent(text[start:text.index("```", start)])


def test_webhook_signature_verifies_with_the_documented_recipe(standin, note):
    hook = build("webhook", f"{standin.url}/hooks/chatops", SECRET)
    assert hook.send(note).delivered
    [req] = standin.requests
    assert req.headers["Content-Type"] == "application/json"
    assert req.headers["X-Chatops-Dedup-Key"] == note["dedup_key"]
    assert req.headers["X-Chatops-Event"] == "opened"
    assert json.loads(req.body) == note
    namespace: dict = {}
    exec(documented_recipe(), namespace)  # noqa: S102 -- the guide's code, run as a receiver would
    assert namespace["verify"](SECRET, req.body, req.headers["X-Chatops-Signature"])
    assert verify(SECRET, req.body, req.headers["X-Chatops-Signature"])
    assert not namespace["verify"](SECRET, req.body + b" ", req.headers["X-Chatops-Signature"])
    assert not namespace["verify"]("other-secret", req.body, req.headers["X-Chatops-Signature"])


def test_webhook_without_a_secret_sends_no_signature(standin, note):
    assert build("webhook", f"{standin.url}/hook").send(note).delivered
    assert "X-Chatops-Signature" not in standin.requests[0].headers


def test_webhook_5xx_is_retried_4xx_rejected(standin, note):
    hook = build("webhook", f"{standin.url}/hook", SECRET)
    standin.mode = "fail"
    assert hook.send(note).outcome == "retry"
    standin.mode = "reject"
    assert hook.send(note).outcome == "rejected"


# -- configuration --------------------------------------------------------------------------------

def test_a_destination_needs_its_variables_and_names_them_never_their_values():
    spec = cluster([dest("d", "webhook", secret_env="SECRET_D")]).alerts[0]
    with pytest.raises(BadDestination, match="URL_D is not set"):
        TYPES["webhook"].from_env(spec, {})
    with pytest.raises(BadDestination, match="SECRET_D is not set"):
        TYPES["webhook"].from_env(spec, {"URL_D": "https://example.com/x"})
    with pytest.raises(BadDestination, match="URL_D is not an http") as exc:
        TYPES["webhook"].from_env(spec, {"URL_D": "ftp://example.com/verysecretpath", "SECRET_D": "s"})
    assert "verysecretpath" not in str(exc.value)
    slack = cluster([dest("d", "slack", secret_env="SECRET_D")]).alerts[0]
    with pytest.raises(BadDestination, match="secret_env is not used"):
        TYPES["slack"].from_env(slack, {"URL_D": "https://hooks.slack.com/x", "SECRET_D": "s"})


def test_retry_after_and_scrub():
    assert retry_after("3") == 3.0 and retry_after("100000") == 300.0 and retry_after("-5") == 0.0
    assert retry_after(None) is None and retry_after("soon") is None and retry_after("nan") is None
    assert scrub("GET https://h/services/abc failed: abc", ["https://h/services/abc", "abc"]) == \
        "GET <redacted> failed: <redacted>"


# -- a real Alertmanager --------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def alertmanager():
    binary = require("prometheus-alertmanager")
    work = Path(tempfile.mkdtemp(prefix="am-"))
    (work / "am.yml").write_text("route:\n  receiver: none\nreceivers:\n  - name: none\n")
    port, cluster_port = free_port(), free_port()
    proc = subprocess.Popen([binary, f"--config.file={work / 'am.yml'}", f"--storage.path={work}",
                             f"--web.listen-address=127.0.0.1:{port}",
                             f"--cluster.listen-address=127.0.0.1:{cluster_port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"

    def ready():
        try:
            return urllib.request.urlopen(url + "/-/ready", timeout=1).status == 200
        except OSError:
            return False
    try:
        wait_for(ready, 20, 0.1, "Alertmanager to be ready")
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def am_alerts(url: str) -> list[dict]:
    with urllib.request.urlopen(url + "/api/v2/alerts?active=true&silenced=true&inhibited=true",
                                timeout=5) as r:
        return json.loads(r.read())


def test_alertmanager_gets_one_alert_per_incident_and_its_resolution(alertmanager, note):
    am = build("alertmanager", alertmanager)
    assert am.send(note).delivered
    assert am.send(note).delivered              # the lease refreshed: still one alert
    [got] = wait_for(lambda: am_alerts(alertmanager), 10, 0.1, "the alert in Alertmanager")
    labels = got["labels"]
    assert labels["alertname"] == "ChatopsIncident" and labels["incident"] == str(note["incident_id"])
    assert labels["severity"] == "critical" and labels["source"] == "chatops"
    assert labels["cluster"] == "testing" and labels["shard"] == "shard1" and labels["host"] == "chat-testing"
    assert got["annotations"]["runbook_url"] == note["links"]["runbook"]
    assert got["annotations"]["summary"] == note["title"]
    assert got["generatorURL"] == note["links"]["incident"]
    assert got["status"]["state"] == "active"
    done = {**note, "event": "resolved", "state": "resolved", "resolved_at": time.time()}
    assert am.send(done).delivered
    wait_for(lambda: am_alerts(alertmanager) == [], 10, 0.1, "the alert to resolve")


def test_alertmanager_refuses_a_bad_alert_permanently(alertmanager, note):
    bad = {**note, "severity": ""}
    bad["links"] = {**note["links"], "incident": "not a url"}
    r = build("alertmanager", alertmanager).send(bad)       # generatorURL must be a URL
    assert r.outcome == "rejected" and r.status == 422 and "generatorURL" in r.error, r
