"""The scrape targets the control plane builds from a cluster file, and the log tail that turns
new log lines into per-group rates (on real files in a temporary run directory)."""

from __future__ import annotations

import time

import pytest

from chat import logs as chatlogs
from cluster.rundir import RunDir
from cluster.spec import ClusterFile
from controlplane import sources
from controlplane.sources import names
from controlplane.store import Store
from tests.conftest import small_cluster


@pytest.fixture()
def cf() -> ClusterFile:
    doc = small_cluster("127.0.9")
    doc["controlplane"]["scrape"] = {"interval": "2s", "client_list_interval": "30s", "history": "10m"}
    return ClusterFile.model_validate(doc)


def test_one_source_per_target_with_its_interval_and_timeout(cf, tmp_path):
    run = RunDir(tmp_path)
    built = {s.id: s for s in sources.build(cf, run, Store.for_cluster(cf))}
    expected = ({"haproxy:chat1", "haproxy:chat-testing", "redis:shard0", "redis:shard1", "clients:shard0",
                 "clients:shard1", "process:local", "logs:local"}
                | {f"service:{svc}-{h}" for svc in ("edge", "clue", "exchange") for h in ("chat1", "chat-testing")})
    assert set(built) == expected
    assert (built["redis:shard0"].interval_s, built["redis:shard0"].timeout_s) == (2.0, 2.0)
    # CLIENT LIST runs on its own, slower interval, and may take longer than the fast sources.
    assert (built["clients:shard0"].interval_s, built["clients:shard0"].timeout_s) == (30.0, 10.0)
    assert all(s.kind == s.id.split(":")[0] and s.target == s.id.split(":", 1)[1] for s in built.values())


def test_a_source_that_cannot_be_reached_fails_alone(cf, tmp_path):
    """Nothing listens on 127.0.9.x: each scrape comes back down with its error, nothing raises,
    and the store keeps `up 0` without figures from before."""
    store = Store.for_cluster(cf)
    built = {s.id: s for s in sources.build(cf, RunDir(tmp_path), store)}
    for sid in ("redis:shard0", "haproxy:chat1", "process:local", "logs:local"):
        obs = built[sid].scrape()
        assert obs.up is False and obs.error, sid
        assert store.latest(obs.source, obs.target).figures.get("up") == 0.0


def _line(service: str, remote: str, event: str) -> str:
    return f"{time.strftime(chatlogs.TIME_FORMAT)} {service}: [{remote}] {event}\n"


def test_log_tail_counts_new_lines_per_group_as_rates(tmp_path):
    run = RunDir(tmp_path).ensure()
    log = run.log("edge-chat1")
    log.write_text(_line("tmi_edge", "clue", "Timed out (after 5s) while writing request for: privmsg") * 3)
    store = Store(points=10)
    tail = sources.LogTail(run)
    first = tail.scrape(store)
    assert first.up
    group = names.log_group("edge-chat1", "clue", "timeout")
    snap = store.latest("logs", "local")
    # The first read of a file is history: counted in the total, not as a burst of rate.
    assert snap.figures[names.series(group, "total")] == 3.0
    assert snap.figures[names.series(group, "per_s")] is None
    with log.open("a") as f:
        f.write(_line("tmi_edge", "clue", "Timed out (after 5s) while writing request for: privmsg") * 4)
    time.sleep(0.2)
    tail.scrape(store)
    snap = store.latest("logs", "local")
    assert snap.figures[names.series(group, "total")] == 7.0
    assert snap.figures[names.series(group, "per_s")] == pytest.approx(4 / (snap.obs.at - first.at), rel=0.01)
    [g] = snap.detail["groups"]
    assert (g["file"], g["service"], g["host"], g["remote"], g["kind"]) == ("edge-chat1", "edge", "chat1", "clue",
                                                                            "timeout")
    assert len(g["examples"]) == sources.LOG_EXAMPLES


def test_log_tail_without_a_logs_directory_is_down(tmp_path):
    obs = sources.LogTail(RunDir(tmp_path / "nowhere")).scrape(Store(points=10))
    assert obs.up is False and "logs" in obs.error
