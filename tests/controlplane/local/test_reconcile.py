"""The supervisor follows the cluster file's Redis shards while it runs: a shard added to the file
is started, the last shard removed from it is stopped, a broken file changes nothing, and no
other process is restarted. Driven through a real `chatops up`, and once through a Supervisor
built in the test, against real redis-server processes on a private loopback subnet."""

import logging
import signal
import time

import yaml

from cluster import clusterfile, secrets
from cluster.rundir import RunDir
from controlplane.local import processes
from controlplane.local.supervisor import SETTLE_NS, Supervisor, pid_alive
from tests.conftest import (
    chatops,
    cluster_up,
    read_state,
    require,
    secret_variables,
    small_cluster,
    wait_for,
    write_cluster,
)


def _pids(c) -> dict[str, int]:
    return {p["name"]: p["pid"] for p in c.state["processes"]}


def _process(c, name: str) -> dict | None:
    state = c.state  # None while state.json is being replaced
    return next((p for p in state["processes"] if p["name"] == name), None) if state else None


def _ping(address: str, port: int) -> bool:
    return processes.redis_ping(address, port)


def _edit(config, change) -> None:
    doc = yaml.safe_load(config.read_text())
    change(doc)
    write_cluster(config, doc)


def test_added_shard_is_started_and_nothing_else_restarts(tmp_path, run_dir, subnet):
    config = write_cluster(tmp_path / "cluster.yaml", small_cluster(subnet))
    with cluster_up(config, run_dir) as c:
        before = _pids(c)
        assert not _ping(f"{subnet}.22", 6380)
        _edit(config, lambda doc: doc["redis"]["shards"].append({"name": "shard2", "host": "redis2", "port": 6380}))

        new = wait_for(lambda: (p := _process(c, "redis-shard2")) and p["status"] == "up" and p,
                       what="state.json to list redis-shard2 up")
        assert (new["host"], new["address"], new["port"]) == ("redis2", f"{subnet}.22", 6380)
        assert _ping(f"{subnet}.22", 6380)
        assert pid_alive(new["pid"])
        # Every process that ran before runs on, untouched: the clues and HAProxies included.
        after = _pids(c)
        assert {name: after[name] for name in before} == before
        assert "[redis-shard2] started" in c.output()
        assert "started=1 stopped=0" in c.output()

        status = chatops("status", "--run-dir", str(run_dir))
        assert status.returncode == 0, status.stdout + status.stderr
        row = next(ln.split() for ln in status.stdout.splitlines() if " redis-shard2 " in ln)
        assert row[:3] == ["redis2", f"{subnet}.22", "6380"] and row[5] == "up"
        # `down` stops the added shard with the rest.
        c.proc.send_signal(signal.SIGINT)
        assert c.proc.wait(timeout=20) == 0
        assert not pid_alive(new["pid"])


def test_removed_last_shard_and_its_replica_are_stopped(tmp_path, run_dir, subnet):
    doc = small_cluster(subnet)
    doc["redis"]["shards"].append({"name": "shard2", "host": "redis2", "port": 6380,
                                   "replica": {"host": "redis1", "port": 6380}})
    config = write_cluster(tmp_path / "cluster.yaml", doc)
    with cluster_up(config, run_dir) as c:
        before = _pids(c)
        gone = {before["redis-shard2"], before["redis-shard2-replica"]}
        _edit(config, lambda doc: doc["redis"]["shards"].pop())

        wait_for(lambda: c.state and not {"redis-shard2", "redis-shard2-replica"} & set(_pids(c)),
                 what="state.json to drop shard2 and its replica")
        wait_for(lambda: not any(pid_alive(p) for p in gone), what="shard2's processes to exit")
        assert not _ping(f"{subnet}.22", 6380) and not _ping(f"{subnet}.21", 6380)
        after = _pids(c)
        assert after == {name: pid for name, pid in before.items() if name in after}
        assert set(before) - set(after) == {"redis-shard2", "redis-shard2-replica"}
        out = c.output()
        assert "[redis-shard2] stopped; no longer in the cluster file" in out
        assert "[redis-shard2-replica] stopped; no longer in the cluster file" in out
        assert "killing" not in out  # SIGTERM was enough


def test_broken_file_changes_nothing_and_is_logged_once(tmp_path, run_dir, subnet):
    config = write_cluster(tmp_path / "cluster.yaml", small_cluster(subnet))
    good = config.read_text()
    with cluster_up(config, run_dir) as c:
        before = _pids(c)
        # Half a file as an editor might leave it: the shard list cut short, and not valid YAML.
        config.write_text(good[:good.index("shard1")] + "redis: [\n")
        wait_for(lambda: "does not load" in c.output(), what="the broken file to be logged")
        time.sleep(1.5)  # three more looks at the same broken file
        out = c.output()
        assert out.count("does not load") == 1
        assert "level=warning" in out and "not valid YAML" in out
        assert _pids(c) == before
        assert all(pid_alive(p) for p in before.values())
        assert _ping(f"{subnet}.22", 6379)

        # Once it is fixed (here with a new shard and a changed HAProxy setting) it is followed again,
        # and the part the supervisor cannot apply is said so.
        doc = yaml.safe_load(good)
        doc["redis"]["shards"].append({"name": "shard2", "host": "redis2", "port": 6380})
        doc["haproxy"]["check_interval"] = "1s"
        write_cluster(config, doc)
        wait_for(lambda: (p := _process(c, "redis-shard2")) and p["status"] == "up", what="redis-shard2 up")
        assert _ping(f"{subnet}.22", 6380)
        wait_for(lambda: "cluster file changed outside redis:" in c.output(), what="the other change to be logged")
        after = _pids(c)
        assert {name: after[name] for name in before} == before


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(f"[{record.remote or '-'}] {record.getMessage()}")


def test_moved_shard_gets_its_new_process_and_the_old_one_stops(tmp_path, run_dir, subnet, monkeypatch):
    """Called directly: reconcile() keys processes by (name, address, port)."""
    require("redis-server")
    config = write_cluster(tmp_path / "cluster.yaml", small_cluster(subnet))
    run = RunDir(run_dir)
    log = logging.getLogger("chatops.test-reconcile")
    lines = _Lines()
    log.addHandler(lines)
    log.setLevel(logging.INFO)
    cf = clusterfile.load(config).spec
    for name in secret_variables():
        monkeypatch.delenv(name, raising=False)   # so what ensure_local sets is undone after the test
    secrets.ensure_local(cf, run)   # as `chatops up` does first; the shards' ACL file needs them
    sup = Supervisor(processes.redis_specs(cf, run), run, log, str(config), 10.0)
    try:
        sup.acquire()
        sup.start_all()
        pids = {m.spec.name: m.proc.pid for m in sup.procs}
        lines.lines.clear()
        sup.reconcile()  # the file as it was: nothing to do
        assert {m.spec.name: m.proc.pid for m in sup.procs} == pids and not lines.lines

        _edit(config, lambda doc: doc["redis"]["shards"][1].update(port=6390))
        time.sleep(SETTLE_NS / 1e9 + 0.05)
        sup.reconcile()
        names = [(m.spec.name, m.spec.port) for m in sup.procs]
        assert names == [("redis-shard0", 6379), ("redis-shard1", 6390)]
        assert all(m.status == "up" for m in sup.procs)
        assert _ping(f"{subnet}.22", 6390) and not _ping(f"{subnet}.22", 6379)
        assert not pid_alive(pids["redis-shard1"])
        assert sup.procs[0].proc.pid == pids["redis-shard0"]
        assert [p["port"] for p in read_state(run_dir)["processes"]] == [6379, 6390]
        assert "[redis-shard1] started" in lines.lines
        assert "[redis-shard1] stopped; no longer in the cluster file" in lines.lines
        sup.reconcile()  # the same file again: looked at once
        assert len(lines.lines) == 3
    finally:
        sup.stop_all()
        sup.release()
        log.removeHandler(lines)
