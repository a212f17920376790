"""check.yml on the live default cluster: a read-only report about every host."""

from __future__ import annotations

from tests.ansible.conftest import recap


def test_check_reports_every_host_and_changes_nothing(live_default):
    # Under --check too: every task is a read, so check mode runs them all and reports the same.
    proc = live_default.play("check.yml", "--check")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    counts = recap(proc.stdout)
    assert set(counts) == {"chat1", "chat2", "chat-event1", "chat-testing", "redis1", "redis2",
                           "controlplane"}, out
    assert all(c["changed"] == 0 and c["failed"] == 0 for c in counts.values()), out
    spec = live_default.spec
    for shard in spec.redis.shards:
        assert f"{shard.name} (master :{shard.port}): " in proc.stdout, proc.stdout
    assert proc.stdout.count("/FRONTEND: OPEN") >= len(spec.chat_hosts()), proc.stdout
    assert proc.stdout.count("/healthz 200") == 3 * len(spec.chat_hosts()) + 1, proc.stdout
    assert f"control plane {spec.public_url()}: /healthz 200" in proc.stdout
