"""Scheduled scraping on a real cluster: a hung shard costs only its own job, job health says
what happened, one scheduler per run dir, log tailing across appends and rotation, and a
restarted control plane keeps its persisted records."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster.rundir import RunDir
from controlplane.scheduler import SchedulerLocked
from controlplane.sources import LogTail
from controlplane.store import Store
from controlplane.web.app import create_app
from tests.conftest import REPO, cluster_up, small_cluster, wait_for, write_cluster


def _fast_cluster(subnet: str) -> dict:
    doc = small_cluster(subnet)
    doc["controlplane"]["scrape"] = {"interval": "1s", "client_list_interval": "2s", "history": "5m"}
    return doc


def _jobs(app) -> dict[str, dict]:
    return {j["id"]: j for j in app.extensions["chatops.scraper"].jobs()}


@pytest.fixture
def running(subnet, run_dir):
    config = write_cluster(run_dir.parent / f"{run_dir.name}.yaml", _fast_cluster(subnet))
    try:
        with cluster_up(config, run_dir) as c:
            yield c, config
    finally:
        config.unlink(missing_ok=True)


def test_a_hung_shard_costs_only_its_own_job(running, run_dir):
    c, config = running
    app = create_app({"CLUSTER_FILE": str(config), "RUN_DIR": str(run_dir)})
    scraper = app.extensions["chatops.scraper"]
    stopped = c.pid_of("redis-shard0")
    try:
        wait_for(lambda: all(j["runs"] >= 1 for j in _jobs(app).values()), 10, what="every job to run")
        jobs = _jobs(app)
        assert set(jobs) == {"haproxy:chat1", "haproxy:chat-testing", "redis:shard0", "redis:shard1",
                             "clients:shard0", "clients:shard1", "process:local", "logs:local", "detect:all",
                             *(f"service:{svc}-{h}" for svc in ("edge", "clue", "exchange")
                               for h in ("chat1", "chat-testing"))}
        assert all(j["last_error"] is None for j in jobs.values()), jobs
        assert all(j["next_run"] is not None for j in jobs.values())
        # A shard that accepts connections and never answers: its scrape waits out its timeout.
        os.kill(stopped, signal.SIGSTOP)
        before = _jobs(app)
        time.sleep(4.2)
        after = _jobs(app)
        hung = after["redis:shard0"]
        assert hung["last_error"] and "Timeout" in hung["last_error"], hung
        assert hung["failures"] >= 1
        for other in ("redis:shard1", "haproxy:chat1", "haproxy:chat-testing", "process:local", "logs:local"):
            ran = after[other]["runs"] - before[other]["runs"]
            assert ran >= 3, (other, ran)           # every second, as scheduled
            assert after[other]["last_error"] is None, after[other]
        store = app.extensions["chatops.store"]
        assert store.latest("redis", "shard0").obs.up is False
        assert store.latest("redis", "shard1").obs.up is True
        assert time.time() - store.latest("redis", "shard1").obs.at < 2.0
    finally:
        os.kill(stopped, signal.SIGCONT)
        scraper.stop()
    wait_for(lambda: scraper.scheduler is None, 5, what="the scheduler to stop")


def test_one_scheduler_per_run_dir(running, run_dir):
    _c, config = running
    app = create_app({"CLUSTER_FILE": str(config), "RUN_DIR": str(run_dir)})
    try:
        with pytest.raises(SchedulerLocked, match="already scrapes this run dir"):
            create_app({"CLUSTER_FILE": str(config), "RUN_DIR": str(run_dir)})
        # Read-only apps (SCHEDULER off) may share the run dir, e.g. for tests or a CLI report.
        create_app({"CLUSTER_FILE": str(config), "RUN_DIR": str(run_dir), "SCHEDULER": False})
        out = subprocess.run([sys.executable, "-m", "controlplane.cli", "controlplane", "--config", str(config),
                              "--run-dir", str(run_dir)], capture_output=True, text=True, timeout=60, cwd=REPO)
        assert out.returncode == 1 and "already scrapes this run dir" in out.stderr, out.stderr
        assert f"pid {os.getpid()}" in out.stderr
    finally:
        app.extensions["chatops.scraper"].stop()
    # Once released, the next one may take it.
    again = create_app({"CLUSTER_FILE": str(config), "RUN_DIR": str(run_dir)})
    again.extensions["chatops.scraper"].stop()


def test_controlplane_refuses_a_non_loopback_listen(running, run_dir):
    _c, config = running
    out = subprocess.run([sys.executable, "-m", "controlplane.cli", "controlplane", "--config", str(config),
                          "--run-dir", str(run_dir), "--listen", "10.1.2.3:5000"],
                         capture_output=True, text=True, timeout=60, cwd=REPO)
    assert out.returncode == 2 and "not a loopback address" in out.stderr


def _line(remote: str, event: str) -> str:
    return time.strftime("%b %d %H:%M:%S") + f" tmi_edge: [{remote}] {event}\n"


def test_log_tail_rates_examples_and_rotation(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    edge = logs / "edge-chat1.log"
    old = [_line("clue", "Message successfully sent to #lobby") for _ in range(50_000)]
    edge.write_text("".join(old))
    tail, store = LogTail(RunDir(tmp_path)), Store(points=10)
    first = tail.scrape(store)
    assert first.up
    groups = {(g["file"], g["remote"], g["kind"]): g for g in store.latest("logs", "local").detail["groups"]}
    sent = groups[("edge-chat1", "clue", "message_sent")]
    # Only the file's last MiB is read at first sight, and it counts as history, not as a rate.
    assert 0 < sent["total"] < 50_000 and sent["per_s"] is None
    with open(edge, "a") as f:
        f.write(_line("clue", "Timed out (after 5s) while writing request for: privmsg") * 12)
        f.write("garbage that is no log line\n")
    time.sleep(0.2)
    tail.scrape(store)
    snap = store.latest("logs", "local")
    groups = {(g["file"], g["remote"], g["kind"]): g for g in snap.detail["groups"]}
    timeouts = groups[("edge-chat1", "clue", "timeout")]
    dt = snap.obs.at - first.at
    assert timeouts["total"] == 12 and timeouts["per_s"] == pytest.approx(12 / dt)
    assert timeouts["examples"][0].endswith("Timed out (after 5s) while writing request for: privmsg")
    assert groups[("edge-chat1", "clue", "message_sent")]["per_s"] == 0
    assert snap.detail["unparsed_total"] == 1 and "garbage" in snap.detail["unparsed_samples"][0]
    series = store.series("logs", "local", "edge-chat1|clue|timeout:per_s")
    assert series[-1][1] == pytest.approx(12 / dt)
    # Rotation: the old file gets its last lines, a new one starts; nothing is lost.
    with open(edge, "a") as f:
        f.write(_line("clue", "Timed out (after 5s) while writing request for: privmsg") * 3)
    os.rename(edge, logs / "edge-chat1.log.1")
    edge.write_text(_line("clue", "Timed out (after 5s) while writing request for: privmsg") * 4)
    tail.scrape(store)
    tail.scrape(store)
    groups = {(g["file"], g["remote"], g["kind"]): g for g in store.latest("logs", "local").detail["groups"]}
    assert groups[("edge-chat1", "clue", "timeout")]["total"] == 12 + 3 + 4


def test_log_tail_without_logs_directory(tmp_path):
    store = Store(points=3)
    o = LogTail(RunDir(tmp_path)).scrape(store)
    assert not o.up and "no logs directory" in o.error
    assert store.latest("logs", "local").figures == {"up": 0.0}


def test_a_restarted_control_plane_keeps_its_records(subnet, run_dir):
    config = write_cluster(run_dir / "cluster.yaml", _fast_cluster(subnet))
    app = create_app({"CLUSTER_FILE": str(config), "RUN_DIR": str(run_dir), "SCHEDULER": False})
    db = app.extensions["chatops.db"]
    db.add_audit("tester", "scrape.run", "redis:shard0", "ok")
    incident = db.add_incident("shard2 at maxclients", root_cause={"host": "chat-testing"})
    db.upsert_finding("leaked_clients", "shard0", evidence={"idle": 2012})
    db.enqueue_alert("oncall-slack", {"text": "hi"})
    db.close()
    again = create_app({"CLUSTER_FILE": str(config), "RUN_DIR": str(run_dir), "SCHEDULER": False})
    db2 = again.extensions["chatops.db"]
    assert [a["action"] for a in db2.audit()] == ["scrape.run"]
    assert db2.incident(incident["id"])["root_cause"] == {"host": "chat-testing"}
    assert db2.findings(open_only=True)[0]["evidence"] == {"idle": 2012}
    assert len(db2.pending_alerts()) == 1
    assert Path(run_dir / "controlplane.sqlite3").stat().st_mode & 0o777 == 0o600
    db2.close()
