"""The shipped rules on a real Prometheus, its alert through a real Alertmanager into chatops.

A live cluster with its control plane; a real `prometheus` scraping the control plane's /metrics,
every chat host's HAProxy exporter and every chat service's /metrics, every second, with
dashboards/prometheus/chatops-rules.yml loaded as shipped; a real `prometheus-alertmanager`
configured, as dashboards/README.md says, to post to the control plane's
`POST /api/v1/alerts/alertmanager` with the API token. The fault is the talk's: connections from
chat-testing to a shard that then sit idle. Prometheus' ChatopsLeakedClients fires, Alertmanager
posts it, and its finding joins the incident chatops opened on its own for the same leak.

The thresholds: the rules are used unchanged, with the documented defaults (leaked_idle_clients
500, hold 6s), and the cluster keeps those defaults too, so both sides judge the same numbers. The
one setting changed is idle_client_after (2s instead of 60s), which the rules do not hard-code:
chatops_client_list_idle_clients counts the connections idle past the cluster file's threshold,
so the leak counts as idle within seconds on both sides. 600 connections pass the 500.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import tempfile
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import yaml

from cluster import clusterfile
from tests.conftest import REPO, api_json, api_token, live_controlplane, open_idle, require, wait_for

TOKEN = "dashboards-live-test-token"
RULES = REPO / "dashboards" / "prometheus" / "chatops-rules.yml"
SHARD = "shard1"
LEAK = 600                        # > leaked_idle_clients (500, the default the shipped rules use)
ALERT = "ChatopsLeakedClients"


def _patch(doc: dict) -> None:
    doc["controlplane"]["thresholds"] = {"idle_client_after": "2s"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 5) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def prometheus_config(config: Path, base: str, am_port: int) -> dict:
    """Scrape configs as dashboards/README.md gives them, for this cluster file."""
    cf = clusterfile.load(config).spec
    cp = f"{cf.controlplane.listen.address}:{cf.controlplane.listen.port}"
    haproxy, services = [], []
    for host, cluster in cf.chat_hosts():
        address = cf.hosts[host].address
        svc = cf.clusters[cluster].services
        haproxy.append({"targets": [f"{address}:{cf.haproxy.stats_port}"], "labels": {"host": host, "cluster": cluster}})
        for service, port in (("edge", svc.edge.http_port), ("clue", svc.clue.port), ("exchange", svc.exchange.port)):
            services.append({"targets": [f"{address}:{port}"],
                             "labels": {"host": host, "cluster": cluster, "service": service}})
    return {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "900ms",
                   "external_labels": {"chatops_url": base}},
        "rule_files": [str(RULES)],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}]},
        "scrape_configs": [
            {"job_name": "chatops", "static_configs": [{"targets": [cp]}]},
            {"job_name": "haproxy", "static_configs": haproxy},
            {"job_name": "chat", "static_configs": services},
        ],
    }


def alertmanager_config(base: str, token_file: Path) -> dict:
    return {
        "route": {"receiver": "chatops", "group_by": ["alertname", "cluster", "shard", "host"],
                  "group_wait": "1s", "group_interval": "1s", "repeat_interval": "1h"},
        "receivers": [{"name": "chatops", "webhook_configs": [{
            "url": f"{base}/api/v1/alerts/alertmanager", "send_resolved": True,
            "http_config": {"authorization": {"type": "Bearer", "credentials_file": str(token_file)}}}]}],
    }


@contextmanager
def running(args: list[str], log: Path, ready_url: str, what: str):
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def up():
            if proc.poll() is not None:
                raise AssertionError(f"{what} exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
            return _ready(ready_url)
        wait_for(up, 30, 0.2, f"{what} to be ready")
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _leak_incident(base: str) -> dict | None:
    """The open incident chatops opened on its own for chat-testing's leak to SHARD."""
    _, body = api_json(base, "GET", "/incidents?state=open", token=TOKEN, timeout=10)
    for summary in body.get("incidents", []):
        _, inc = api_json(base, "GET", f"/incidents/{summary['id']}", token=TOKEN, timeout=10)
        if any(f["kind"] == "leaked_clients" and f["subject"] == f"chat-testing->{SHARD}"
               for f in inc["findings"]["items"]):
            return inc
    return None


def _firing(prom: str) -> list[dict]:
    alerts = _get(f"{prom}/api/v1/alerts")["data"]["alerts"]
    return [a for a in alerts if a["labels"].get("alertname") == ALERT and a["state"] == "firing"
            and a["labels"].get("host") == "chat-testing" and a["labels"].get("shard") == SHARD]


def test_prometheus_alert_reaches_chatops_through_alertmanager():
    prometheus, alertmanager = require("prometheus"), require("prometheus-alertmanager")
    tmp = Path(tempfile.mkdtemp(prefix="co-prom-"))
    socks: list[socket.socket] = []
    with api_token(TOKEN), live_controlplane(traffic=False, patch=_patch) as (c, base):
        try:
            wait_for(lambda: api_json(base, "GET", "/incidents", token=TOKEN, timeout=5)[0] == 200, 30, 0.2,
                     "the control plane's API")
            prom_port, am_port = _free_port(), _free_port()
            prom, am = f"http://127.0.0.1:{prom_port}", f"http://127.0.0.1:{am_port}"
            token_file = tmp / "token"
            token_file.write_text(TOKEN)
            token_file.chmod(0o600)
            (tmp / "prometheus.yml").write_text(yaml.safe_dump(prometheus_config(c.config, base, am_port)))
            (tmp / "alertmanager.yml").write_text(yaml.safe_dump(alertmanager_config(base, token_file)))
            with running([alertmanager, f"--config.file={tmp / 'alertmanager.yml'}", f"--storage.path={tmp / 'am'}",
                          f"--web.listen-address=127.0.0.1:{am_port}", "--cluster.listen-address="],
                         tmp / "am.log", f"{am}/-/ready", "Alertmanager"), \
                 running([prometheus, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'tsdb'}",
                          f"--web.listen-address=127.0.0.1:{prom_port}"],
                         tmp / "prom.log", f"{prom}/-/ready", "Prometheus"):
                # Every target is scraped: the control plane, each HAProxy, each chat service.
                def all_up():
                    targets = _get(f"{prom}/api/v1/targets")["data"]["activeTargets"]
                    return len(targets) == 1 + 2 + 6 and all(t["health"] == "up" for t in targets)
                wait_for(all_up, 30, 0.5, "Prometheus to scrape every target")
                assert _firing(prom) == []

                procs = {p["name"]: p for p in c.state["processes"]}
                testing = procs["haproxy-chat-testing"]["address"]
                socks = open_idle(testing, 2000 + int(SHARD.removeprefix("shard")), LEAK)

                # Prometheus' own alert, labelled with chatops' subject, its runbook on the control plane.
                alert = wait_for(lambda: _firing(prom), 60, 0.5, f"Prometheus to fire {ALERT}")[0]
                assert alert["labels"]["cluster"] == "testing" and alert["labels"]["severity"] == "warning", alert
                assert alert["annotations"]["runbook_url"] == f"{base}/runbooks/leaked_clients", alert
                assert float(alert["value"]) >= LEAK

                # Alertmanager has it and posts it; chatops' own incident for the leak gains its finding.
                wait_for(lambda: any(a["labels"].get("alertname") == ALERT for a in _get(f"{am}/api/v2/alerts")
                                     if isinstance(a, dict)), 30, 0.5, "Alertmanager to hold the alert")

                def joined():
                    inc = _leak_incident(base)
                    if inc is None:
                        return None
                    ours = [f for f in inc["findings"]["items"] if f["kind"] == "alertmanager"
                            and ALERT in json.dumps(f)]
                    return (inc, ours) if ours else None
                incident, ours = wait_for(joined, 60, 0.5, "the Alertmanager finding to join chatops' leak incident")
                assert incident["state"] == "open"
                kinds = {f["kind"] for f in incident["findings"]["items"]}
                assert {"leaked_clients", "alertmanager"} <= kinds, kinds
                found = ours[0]
                assert found["about"]["host"] == "chat-testing" and found["about"]["shard"] == SHARD, found
                assert found["about"].get("cluster") == "testing", found
                assert found["runbook"] == "leaked_clients", found
                # One incident for the leak: the alert did not open one of its own.
                _, listed = api_json(base, "GET", "/incidents?state=open", token=TOKEN, timeout=10)
                holding = [i for i in listed["incidents"] if i["id"] == incident["id"]]
                assert holding and holding[0]["findings"]["total"] >= 2
        finally:
            for s in socks:
                s.close()
            import shutil
            shutil.rmtree(tmp, ignore_errors=True)
