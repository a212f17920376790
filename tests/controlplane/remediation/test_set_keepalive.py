"""set_keepalive on the main cluster's exchanges under load: the talk's second bug, fixed live.
The exchange starts with `keepalive: false` under loadgen traffic; the connection_churn finding
opens; `chatops plan set_keepalive` + `chatops apply` switch it through the exchange's admin
endpoint with no restart. A load generator running across the switch sees every message
delivered (completeness 1.0), new connections per delivery request fall below 0.05, the finding
resolves and the cluster file keeps `keepalive: true`."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request

import yaml

from collectors.services import parse_metrics, total
from controlplane.database import Database
from tests.conftest import REPO, live_controlplane, loadgen_report, start_loadgen, wait_for

TOKEN = "keepalive-test-token"


def _patch(doc: dict) -> None:
    doc["controlplane"]["thresholds"] = {"hold": "3s"}
    doc["clusters"]["main"]["services"] = {"exchange": {"keepalive": False}}


def _chatops(c, *args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "controlplane.cli", *args, "--config", str(c.config),
                           "--run-dir", str(c.run)], capture_output=True, text=True, timeout=120, cwd=REPO, **kw)


def _exchange_counts(address: str) -> tuple[float, float]:
    with urllib.request.urlopen(f"http://{address}:19100/metrics", timeout=5) as r:
        samples = parse_metrics(r.read().decode()).samples
    return (total(samples, "chat_exchange_connections_opened_total") or 0.0,
            total(samples, "chat_exchange_request_seconds_count") or 0.0)


def test_keepalive_switched_live_under_load(monkeypatch):
    monkeypatch.setenv("CHATOPS_API_TOKEN", TOKEN)
    with live_controlplane(traffic=True, patch=_patch) as (c, _base):
        db = Database(c.run / "controlplane.sqlite3")
        chat1 = {p["name"]: p for p in c.state["processes"]}["exchange-chat1"]["address"]
        pid = c.pid_of("exchange-chat1")
        try:
            wait_for(lambda: any(f["kind"] == "connection_churn" and f["subject"] == "exchange-chat1"
                                 for f in db.findings(open_only=True)), 40, 0.5, "the churn finding")
            before = _exchange_counts(chat1)
            time.sleep(3)
            after = _exchange_counts(chat1)
            assert (after[0] - before[0]) / max(1.0, after[1] - before[1]) > 0.5      # one per request

            subnet = chat1.rsplit(".", 1)[0]
            load = start_loadgen(c, f"{subnet}.77", clients=20, duration=12)
            try:
                time.sleep(4)
                plan = _chatops(c, "plan", "set_keepalive", "--set", "service=exchange", "--set", "cluster=main",
                                "--set", "keepalive=true", "--json")
                assert plan.returncode == 0, plan.stderr
                plan = json.loads(plan.stdout)
                assert "- exchange-chat1 edges: keepalive=False" in "\n".join(plan["steps"][0]["diff"])
                applied = _chatops(c, "apply", plan["id"], "--yes", "--no-wait", "--json")
                assert applied.returncode == 0, applied.stdout + applied.stderr
                assert json.loads(applied.stdout)["state"] == "applied"
            finally:
                report = loadgen_report(load)
            assert report["completeness"] == 1.0, report

            before = _exchange_counts(chat1)
            time.sleep(4)
            after = _exchange_counts(chat1)
            requests = after[1] - before[1]
            assert requests > 10 and (after[0] - before[0]) / requests < 0.05, (before, after)

            wait_for(lambda: not any(f["kind"] == "connection_churn" and f["subject"] == "exchange-chat1"
                                     for f in db.findings(open_only=True)), 40, 0.5, "the churn finding to resolve")
            doc = yaml.safe_load(c.config.read_text())
            assert doc["clusters"]["main"]["services"]["exchange"]["keepalive"] is True
            assert c.pid_of("exchange-chat1") == pid           # switched, not restarted
        finally:
            db.close()
