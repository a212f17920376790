"""collectors.process: the /proc/net/tcp parser on a recorded capture and its evil twin, live
connection counts against the real /proc, psutil stats of live and vanished processes, and
collect() over a hand-written supervisor state.json pointing at real child processes."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from cluster.loopback import free_prefix
from collectors.process import (
    ProcessSnapshot,
    ProcStats,
    TcpEntry,
    collect,
    connections_by_remote,
    parse_proc_net_tcp,
    process_stats,
    read_proc_net_tcp,
    target_for,
    time_wait_count,
)
from tests.conftest import small_cluster, write_cluster

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "proc"
# The recorded capture (see tests/fixtures/README.md): listener 127.73.31.21:6379, 3 clients
# from .1, 2 from .9, two server-closed connections from .9 left in TIME_WAIT.
REC_PREFIX, REC_PORT = "127.73.31", 6379


def fixture(name: str) -> str:
    return (FIXTURES / name).read_bytes().decode("utf-8", errors="replace")


# --- parser on recorded output --------------------------------------------------------------

def test_parse_recorded_proc_net_tcp():
    entries = parse_proc_net_tcp(fixture("net_tcp.txt"))
    assert len(entries) == 23                     # every row but the header
    assert TcpEntry(f"{REC_PREFIX}.21", REC_PORT, "0.0.0.0", 0, "LISTEN") in entries
    server = f"{REC_PREFIX}.21"
    assert connections_by_remote(entries, REC_PORT, server) == {f"{REC_PREFIX}.1": 3, f"{REC_PREFIX}.9": 2}
    # Without a local address the client-side rows (ephemeral local ports) still don't count.
    assert connections_by_remote(entries, REC_PORT) == {f"{REC_PREFIX}.1": 3, f"{REC_PREFIX}.9": 2}
    assert time_wait_count(entries, REC_PORT) == 2
    assert time_wait_count(entries, REC_PORT, server) == 2
    assert time_wait_count(entries, REC_PORT, f"{REC_PREFIX}.99") == 0
    assert connections_by_remote(entries, REC_PORT, server, state="TIME_WAIT") == {f"{REC_PREFIX}.9": 2}
    # state=None: every state but LISTEN
    assert sum(connections_by_remote(entries, REC_PORT, server, state=None).values()) == 7


def test_parse_recorded_tcp6():
    entries = parse_proc_net_tcp(fixture("net_tcp6.txt"))
    assert [e.state for e in entries] == ["LISTEN", "ESTABLISHED", "ESTABLISHED"]
    listener = entries[0]
    assert (listener.local_ip, listener.remote_ip) == ("::1", "::")
    assert connections_by_remote(entries, listener.local_port, "::1") == {"::1": 1}


def test_port_filter_keeps_only_those_ports():
    entries = parse_proc_net_tcp(fixture("net_tcp.txt"), ports=[REC_PORT])
    assert entries and all(REC_PORT in (e.local_port, e.remote_port) for e in entries)
    assert len(entries) == 13
    assert parse_proc_net_tcp(fixture("net_tcp.txt"), ports=[1]) == []


def test_parse_evil_variant():
    """Truncated rows, garbage, bad hex, a one-digit state, extra columns, blank lines, binary
    junk, an unknown state code and an IPv4-mapped IPv6 row: the good rows survive, nothing raises."""
    entries = parse_proc_net_tcp(fixture("net_tcp_evil.txt"))
    assert len(entries) == 10
    server = f"{REC_PREFIX}.21"
    assert connections_by_remote(entries, REC_PORT, server) == {f"{REC_PREFIX}.9": 4, f"{REC_PREFIX}.1": 1}
    unknown = [e for e in entries if e.state.startswith("UNKNOWN")]
    assert unknown == [TcpEntry(server, REC_PORT, f"{REC_PREFIX}.9", 0x4321, "UNKNOWN(0x0D)")]
    mapped = [e for e in entries if e.remote_port == 0xC000]
    assert mapped and mapped[0].local_ip == server and mapped[0].remote_ip == f"{REC_PREFIX}.9"


@pytest.mark.parametrize("text", ["", "\n\n", "   ", "sl local_address\n", "\x00\xff garbage",
                                  " 0: 0100007F:1F90", " 0: 0100007F:1F90 0100007F",
                                  " 0: 0100007F:1F90 0100007F:ABCD XY",
                                  " 0: 0100007F:1F90 0100007F:ABCD 01" + " extra" * 50])
def test_parse_hostile_snippets_never_raise(text):
    entries = parse_proc_net_tcp(text)
    assert all(isinstance(e, TcpEntry) for e in entries)


def test_read_proc_net_tcp_injectable_root(tmp_path):
    (tmp_path / "net").mkdir()
    shutil.copy(FIXTURES / "net_tcp.txt", tmp_path / "net" / "tcp")
    assert read_proc_net_tcp(tmp_path) == parse_proc_net_tcp(fixture("net_tcp.txt"))  # no tcp6: fine
    shutil.copy(FIXTURES / "net_tcp6.txt", tmp_path / "net" / "tcp6")
    assert len(read_proc_net_tcp(tmp_path)) == 26
    with pytest.raises(OSError):
        read_proc_net_tcp(tmp_path / "nowhere")


# --- live counts from the real /proc ----------------------------------------------------------

def _connect_from(source: str, dest: tuple[str, int]) -> socket.socket:
    c = socket.socket()
    c.bind((source, 0))
    c.connect(dest)
    return c


def test_live_connections_by_remote_counts_exactly():
    prefix = free_prefix()
    server = f"{prefix}.21"
    listener = socket.socket()
    socks: list[socket.socket] = [listener]
    try:
        listener.bind((server, 0))
        listener.listen(128)
        port = listener.getsockname()[1]
        for source, n in ((f"{prefix}.9", 50), (f"{prefix}.1", 30)):
            for _ in range(n):
                socks.append(_connect_from(source, (server, port)))
                socks.append(listener.accept()[0])
        # Three short connections closed by the server first: TIME_WAIT on the server's side.
        for _ in range(3):
            c = _connect_from(f"{prefix}.9", (server, port))
            s, _ = listener.accept()
            s.close()
            time.sleep(0.02)
            c.close()
        entries = read_proc_net_tcp()
        assert connections_by_remote(entries, port, server) == {f"{prefix}.9": 50, f"{prefix}.1": 30}
        assert time_wait_count(entries, port, server) == 3
        filtered = read_proc_net_tcp(ports=[port])
        assert connections_by_remote(filtered, port, server) == {f"{prefix}.9": 50, f"{prefix}.1": 30}
    finally:
        for s in socks:
            s.close()


# --- process stats ----------------------------------------------------------------------------

def test_process_stats_current_process_and_cpu_delta():
    me = os.getpid()
    first = process_stats([me])[me]
    assert not first.gone and first.cpu_percent is None      # no previous sample: no made-up figure
    assert first.rss > 0 and first.num_fds > 0 and first.num_threads >= 1
    deadline = time.perf_counter() + 0.1
    while time.perf_counter() < deadline:                     # burn a little CPU
        pass
    second = process_stats([me], previous={me: first})[me]
    assert second.cpu_percent is not None and second.cpu_percent > 0
    # A previous sample of another process (pid reused: other create_time) is ignored.
    other = ProcStats(pid=me, create_time=1.0, cpu_user=0.0, cpu_system=0.0, sampled_at=0.0)
    assert process_stats([me], previous={me: other})[me].cpu_percent is None


def test_process_stats_child_that_exits_is_gone():
    child = subprocess.Popen(["sleep", "0.01"])
    try:
        before = process_stats([child.pid])[child.pid]
        child.wait(timeout=10)
        after = process_stats([child.pid], previous={child.pid: before})[child.pid]
        assert after.gone and after.status == "gone" and after.rss is None
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_process_stats_zombie_is_gone():
    child = subprocess.Popen(["true"])
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:           # exited but not reaped: a zombie
            st = process_stats([child.pid])[child.pid]
            if st.gone:
                break
            time.sleep(0.01)
        assert st.gone and st.status == "zombie"
    finally:
        child.wait()


# --- collect() ----------------------------------------------------------------------------------

def _state(run_dir: Path, config: Path | None, processes: list[dict]) -> None:
    run_dir.joinpath("state.json").write_text(json.dumps(
        {"supervisor_pid": os.getpid(), "config": str(config) if config else "", "ready": True,
         "processes": processes}))


def test_collect_missing_state_file(run_dir):
    obs = collect(target_for(run_dir))
    assert obs.source == "process" and obs.target == str(run_dir)
    assert collect(target_for(run_dir, name="local")).target == "local"
    assert not obs.up and "state.json" in obs.error and obs.data is None


def test_collect_on_recorded_proc_root(run_dir, tmp_path):
    """The recorded capture stands in for the OS; IPs become the cluster file's host names."""
    proc = tmp_path / "proc"
    (proc / "net").mkdir(parents=True)
    shutil.copy(FIXTURES / "net_tcp.txt", proc / "net" / "tcp")
    config = write_cluster(tmp_path / "cluster.yaml", small_cluster(REC_PREFIX))
    _state(run_dir, config, [{"name": "redis-shard0", "kind": "redis", "host": "redis1",
                              "address": f"{REC_PREFIX}.21", "port": REC_PORT, "pid": os.getpid()}])
    obs = collect(target_for(run_dir, proc_root=proc))
    assert obs.up and obs.section_errors == {}
    (report,) = obs.data.processes
    assert report.connections == {"chat1": 3, "chat-testing": 2}
    assert report.time_wait == 2


def test_collect_live_children(run_dir, tmp_path):
    prefix = free_prefix()
    # .1 and .9 are hosts in the cluster file; .77 is not, so it stays an IP.
    config = write_cluster(tmp_path / "cluster.yaml", small_cluster(prefix))
    children = [subprocess.Popen(["sleep", "30"]) for _ in range(2)]
    dead = subprocess.Popen(["true"])
    dead.wait()
    listener = socket.socket()
    socks = [listener]
    try:
        listener.bind((f"{prefix}.21", 0))
        listener.listen(64)
        port = listener.getsockname()[1]
        for source, n in ((f"{prefix}.1", 4), (f"{prefix}.9", 6), (f"{prefix}.77", 2)):
            for _ in range(n):
                socks.append(_connect_from(source, (f"{prefix}.21", port)))
                socks.append(listener.accept()[0])
        _state(run_dir, config, [
            {"name": "redis-shard0", "kind": "redis", "host": "redis1", "address": f"{prefix}.21",
             "port": port, "pid": children[0].pid},
            {"name": "edge-chat1", "kind": "edge", "host": "chat1", "address": f"{prefix}.1",
             "port": 6667, "pid": children[1].pid},
            {"name": "haproxy-chat1", "kind": "haproxy", "host": "chat1", "address": f"{prefix}.1",
             "port": 2000, "pid": dead.pid},
            {"name": "loadgen", "kind": "loadgen", "host": "viewers", "address": "", "port": 0,
             "pid": None},
        ])
        obs = collect(target_for(run_dir))
        assert obs.up, obs.error
        assert obs.section_errors == {}
        assert isinstance(obs.data, ProcessSnapshot)
        by_name = {r.name: r for r in obs.data.processes}
        redis = by_name["redis-shard0"]
        assert not redis.stats.gone and redis.stats.rss > 0 and redis.stats.num_threads == 1
        assert redis.connections == {"chat-testing": 6, "chat1": 4, f"{prefix}.77": 2}
        assert redis.time_wait == 0
        edge = by_name["edge-chat1"]
        assert not edge.stats.gone and edge.connections is None     # not a counted kind
        assert by_name["haproxy-chat1"].stats.gone
        assert by_name["haproxy-chat1"].connections == {}
        assert by_name["loadgen"].stats.gone
        json.dumps(obs.as_dict())                                   # serialisable for the API
        again = collect(target_for(run_dir), previous=obs)
        again_redis = {r.name: r for r in again.data.processes}["redis-shard0"]
        assert again_redis.stats.cpu_percent is not None
    finally:
        for s in socks:
            s.close()
        for c in children:
            c.kill()
            c.wait()


def test_collect_bad_cluster_file_keeps_ips(run_dir, tmp_path):
    bad = tmp_path / "cluster.yaml"
    bad.write_text("hosts: [not, a, mapping\n")
    proc = tmp_path / "proc"
    (proc / "net").mkdir(parents=True)
    shutil.copy(FIXTURES / "net_tcp.txt", proc / "net" / "tcp")
    _state(run_dir, bad, [{"name": "redis-shard0", "kind": "redis", "host": "redis1",
                           "address": f"{REC_PREFIX}.21", "port": REC_PORT, "pid": os.getpid()}])
    obs = collect(target_for(run_dir, proc_root=proc))
    assert obs.up and "host_names" in obs.section_errors
    assert obs.data.processes[0].connections == {f"{REC_PREFIX}.1": 3, f"{REC_PREFIX}.9": 2}


def test_collect_unreadable_proc_drops_only_connections(run_dir, tmp_path):
    _state(run_dir, None, [{"name": "redis-shard0", "kind": "redis", "host": "redis1",
                            "address": f"{REC_PREFIX}.21", "port": REC_PORT, "pid": os.getpid()}])
    obs = collect(target_for(run_dir, proc_root=tmp_path / "missing"))
    assert obs.up and "connections" in obs.section_errors
    report = obs.data.processes[0]
    assert not report.stats.gone and report.connections is None


def test_reading_a_snapshot_by_port_finds_what_a_full_pass_finds():
    import random

    from collectors import process
    rng = random.Random(7)
    ips, ports = ["127.0.0.1", "127.0.0.2", "::1"], [80, 6379, 6380, 17080, 40000]
    for _ in range(300):
        entries = [process.TcpEntry(rng.choice(ips), rng.choice(ports), rng.choice(ips), rng.choice(ports),
                                    rng.choice(["ESTABLISHED", "TIME_WAIT"]))
                   for _ in range(rng.randint(0, 40))]
        wanted = frozenset((rng.choice(ips + [None]), rng.choice(ports)) for _ in range(rng.randint(0, 4)))
        index = process.by_port(entries)
        assert process._only_indexed(entries, index, wanted) == process._only(entries, wanted)
        assert process._only_indexed(entries, index, None) == entries
