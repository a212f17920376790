"""restart_service through the remediation engine on a real `chatops up` cluster: the plan names
the pid it saw, apply restarts the process through the supervisor and waits until it is up, a
second apply changes nothing, and a plan whose process restarted on its own since is stale."""

from __future__ import annotations

import os
import signal

import pytest

from cluster.rundir import RunDir
from controlplane.database import Database
from controlplane.remediation import plans
from controlplane.remediation.base import BadParams, Context, StalePlan
from tests.conftest import wait_for


@pytest.fixture()
def ctx(live_small_cluster, tmp_path):
    rc, cf, run = live_small_cluster
    db = Database(tmp_path / "db.sqlite3")
    yield rc, Context(cf=cf, cluster_path=rc.config, run=RunDir(run.root), db=db)
    db.close()


def test_restart_through_the_supervisor_once(ctx):
    rc, c = ctx
    old = rc.pid_of("edge-chat1")
    plan = plans.make_plan(c, [("restart_service", {"service": "edge", "host": "chat1"})], "tester")
    assert plan["subject"] == "process:edge-chat1" and f"pid {old}" in plan["steps"][0]["diff"][0]
    assert rc.pid_of("edge-chat1") == old                       # planning restarts nothing
    done = plans.apply_plan(c, plan["id"], "tester")
    assert done["state"] == "applied", done["result"]
    new = rc.pid_of("edge-chat1")
    assert new != old and done["result"]["steps"][0]["changed"]["pid"] == new
    assert plans.apply_plan(c, plan["id"], "tester")["applied_at"] == done["applied_at"]
    assert rc.pid_of("edge-chat1") == new                       # the second apply did nothing
    [record] = c.db.audit_for_plan(plan["id"])
    assert (record["actor"], record["action"], record["result"]) == ("tester", "remediation.restart_service", "ok")


def test_a_plan_whose_process_restarted_since_is_stale(ctx):
    rc, c = ctx
    plan = plans.make_plan(c, [("restart_service", {"name": "clue-chat1"})], "tester")
    old = rc.pid_of("clue-chat1")
    os.kill(old, signal.SIGTERM)
    wait_for(lambda: rc.pid_of("clue-chat1") != old and
             {p["name"]: p for p in rc.state["processes"]}["clue-chat1"]["status"] == "up", 30, 0.2,
             "clue-chat1 to come back")
    with pytest.raises(StalePlan, match="changed since the plan was made"):
        plans.apply_plan(c, plan["id"], "tester")
    assert c.db.plan(plan["id"])["state"] == "failed"


def test_bad_names_are_refused_before_anything(ctx):
    _rc, c = ctx
    with pytest.raises(BadParams, match="bad parameter name"):
        plans.make_plan(c, [("restart_service", {"name": "edge-nowhere"})], "tester")
    with pytest.raises(BadParams, match="bad parameter name"):
        plans.make_plan(c, [("restart_service", {"service": "edge"})], "tester")
    with pytest.raises(BadParams, match="bad parameter action"):
        plans.make_plan(c, [("format_disk", {})], "tester")


def test_a_hung_stopped_service_is_restarted_too(ctx):
    """A SIGSTOPped process (the unresponsive_service finding's "stopped") acts on no SIGTERM until
    continued: the action continues it, and it restarts like any other."""
    rc, c = ctx
    old = rc.pid_of("clue-chat1")
    os.kill(old, signal.SIGSTOP)
    try:
        plan = plans.make_plan(c, [("restart_service", {"service": "clue", "host": "chat1"})], "tester")
        done = plans.apply_plan(c, plan["id"], "tester")
    finally:
        try:
            os.kill(old, signal.SIGCONT)
        except ProcessLookupError:
            pass
    assert done["state"] == "applied", done["result"]
    assert rc.pid_of("clue-chat1") not in (None, old)


def test_a_process_that_ignores_sigterm_is_killed_after_the_grace():
    import subprocess
    import sys

    from controlplane.remediation.restart_service import terminate
    proc = subprocess.Popen([sys.executable, "-c", "import signal, time\n"
                             "signal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('ready', flush=True)\n"
                             "time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        assert terminate(proc.pid, grace_s=0.5) == "SIGKILL"
        assert proc.wait(5) == -signal.SIGKILL
    finally:
        proc.kill()
        proc.wait()
    assert terminate(proc.pid) == "gone"
