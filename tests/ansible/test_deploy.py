"""deploy.yml on the live default cluster, which a first deploy.yml run started from nothing (the
session fixture): a second run reports changed=0 and restarts nothing, and --check --diff finds
nothing to change (the live cluster is shared with later files)."""

from __future__ import annotations

import json
import subprocess

from tests.ansible.conftest import recap


def _pids(live) -> dict[str, int]:
    return {p["name"]: p["pid"] for p in json.loads((live.run / "state.json").read_text())["processes"]}


def _assert_no_change(proc: subprocess.CompletedProcess) -> dict[str, dict[str, int]]:
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    counts = recap(proc.stdout)
    assert set(counts) == {"chat1", "chat2", "chat-event1", "chat-testing", "redis1", "redis2", "controlplane"}, out
    for host, c in counts.items():
        assert c["changed"] == 0 and c["failed"] == 0 and c["unreachable"] == 0, (host, c, out)
    return counts


def test_deploy_check_diff_on_the_live_cluster_reports_no_change(live_default):
    before = _pids(live_default)
    proc = live_default.play("deploy.yml", "--check", "--diff")
    _assert_no_change(proc)
    # The configs were compared, not skipped: every chat host's HAProxy config task ran.
    assert proc.stdout.count("Lay down the HAProxy config") == 1
    assert "would run: chatops up" not in proc.stdout            # the cluster runs: nothing to start
    assert _pids(live_default) == before


def test_a_second_deploy_after_the_first_reports_changed_0_and_restarts_nothing(live_default):
    first = live_default.first_deploy
    counts = recap(first.stdout)
    assert counts["controlplane"]["changed"] >= 1, first.stdout        # it ran chatops up --detach
    assert "Start the local cluster with chatops up --detach" in first.stdout
    assert all(c["failed"] == 0 and c["unreachable"] == 0 for c in counts.values()), first.stdout
    before = _pids(live_default)
    configs = {p.name: p.read_text() for p in (live_default.run / "haproxy").glob("*.cfg")}
    _assert_no_change(live_default.play("deploy.yml"))
    assert _pids(live_default) == before
    assert {p.name: p.read_text() for p in (live_default.run / "haproxy").glob("*.cfg")} == configs
