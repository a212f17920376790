"""What the local supervisor runs: one ProcessSpec per Redis shard (and replica) and per chat
host's HAProxy, derived from the cluster file. Specs are plain data plus two hooks (prepare,
ready) so the supervisor never needs to know what a Redis or an HAProxy is.
"""

from __future__ import annotations

import csv
import signal
import socket
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from cluster import binaries, redis_acl
from cluster.rundir import RunDir
from cluster.spec import ClusterFile
from collectors import haproxy_runtime
from controlplane.haproxy import config as haproxy_config


@dataclass
class ProcessSpec:
    name: str                 # unique, e.g. redis-shard0, haproxy-chat1
    kind: str                 # redis | haproxy
    host: str
    address: str
    port: int                 # the port that proves it is up
    argv: list[str]
    describe: str             # one line for the "what runs where" table
    ready: Callable[[], bool]
    # Called before every start; `restart` is True when the supervisor brings a dead process back.
    prepare: Callable[[bool], None] = field(default=lambda restart: None)
    stage: str = ""           # processes of one stage start together; stages start in order
    # Once every stage is up: true when the process sees the rest of the cluster (an HAProxy
    # whose backend servers have passed their health checks).
    settled: Callable[[], bool] | None = None
    # A client of the cluster (the load generator): started only once everything has settled.
    client: bool = False
    # What stop_all sends. An edge drains its clients on SIGTERM (chat/drain.py), which a whole
    # cluster stopping has no use for: SIGINT makes it send RECONNECT and close them at once.
    stop_signal: int = signal.SIGTERM


def redis_ping(address: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((address, port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def haproxy_ready(run: RunDir, host: str) -> bool:
    """Up means the master has a live worker and that worker answers on the admin socket."""
    try:
        table = haproxy_runtime.parse_show_proc(
            haproxy_runtime.command(run.haproxy_master_socket(host), "show proc", timeout=1.0))
        if not table.workers:
            return False
        haproxy_runtime.command(run.haproxy_socket(host), "show info", timeout=1.0)
        return True
    except haproxy_runtime.RuntimeAPIError:
        return False


def http_healthy(address: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with urllib.request.urlopen(f"http://{address}:{port}/healthz", timeout=timeout) as resp:
            return resp.status == 200
    except (OSError, urllib.error.URLError):
        return False


def haproxy_servers_up(run: RunDir, host: str) -> bool:
    """True when every server of every backend on this host's HAProxy passes its health check."""
    try:
        text = haproxy_runtime.command(run.haproxy_socket(host), "show stat", timeout=1.0)
    except haproxy_runtime.RuntimeAPIError:
        return False
    rows = list(csv.reader(text.lstrip("# ").splitlines()))
    if not rows:
        return False
    col = {name: i for i, name in enumerate(rows[0])}
    servers = [r for r in rows[1:] if len(r) > col["status"] and r[col["svname"]] not in ("FRONTEND", "BACKEND")]
    # A backup server (a replica) is DOWN by design until it is promoted.
    return all(r[col["status"]].startswith("UP") or r[col["bck"]] == "1" for r in servers)


def _chat_spec(cf: ClusterFile, config: Path, host: str, kind: str, port: int, health_port: int,
               describe: str) -> ProcessSpec:
    address = cf.address(host)
    return ProcessSpec(
        name=f"{kind}-{host}", kind=kind, host=host, address=address, port=port,
        argv=[sys.executable, "-m", f"chat.{kind}", "--config", str(config), "--host", host],
        describe=describe, ready=lambda: http_healthy(address, health_port), stage=kind,
        stop_signal=signal.SIGINT if kind == "edge" else signal.SIGTERM)


def _redis_spec(cf: ClusterFile, run: RunDir, name: str, shard_name: str, host: str, port: int,
                primary: tuple[str, int] | None) -> ProcessSpec:
    address = cf.address(host)
    workdir = run.redis_dir(name)
    r = cf.redis
    shard = next(s for s in r.shards if s.name == shard_name)
    acl_file, auth_conf = workdir / redis_acl.ACL_FILE, workdir / redis_acl.AUTH_CONF
    argv = [
        binaries.require("redis-server"),
        # Passwords never go on the command line (ps shows it to everyone): the ACL file holds
        # hashes, and this small config file, mode 600 like it, the replicas' masterauth.
        str(auth_conf), "--aclfile", str(acl_file),
        "--bind", address, "--port", str(port),
        # Each simulated host has its own loopback address, which protected mode would refuse.
        "--protected-mode", "no",
        "--daemonize", "no", "--dir", str(workdir), "--logfile", "",
        # Bans, mods, users and tokens must survive a restart: an append-only file, fsynced every
        # second, in a directory named by address and port, so that two processes of one shard
        # name (relocate_shard starts the new one before stopping the old) never share one.
        "--save", "", "--appendonly", "yes", "--appendfsync", "everysec",
        "--appenddirname", f"appendonly-{address}-{port}",
        "--maxclients", str(r.setting(shard, "maxclients")), "--timeout", str(r.setting(shard, "timeout")),
        "--maxmemory", r.maxmemory, "--maxmemory-policy", r.setting(shard, "maxmemory_policy"),
    ]
    if primary:
        argv += ["--replicaof", primary[0], str(primary[1])]
    role = f"replica of {shard_name}" if primary else f"shard {shard_name}"

    def prepare(restart: bool) -> None:
        # Written before every start: the files always match the passwords this supervisor hands out.
        workdir.mkdir(parents=True, exist_ok=True)
        redis_acl.write_private(acl_file, redis_acl.acl_text(cf, run))
        redis_acl.write_private(auth_conf, redis_acl.auth_conf_text(cf, run))

    return ProcessSpec(
        name=name, kind="redis", host=host, address=address, port=port, argv=argv,
        describe=f"redis-server ({role})",
        # PING needs no password: the `default` user may run it and nothing else of use.
        ready=lambda: redis_ping(address, port), stage="redis",
        prepare=prepare)


def _haproxy_spec(cf: ClusterFile, run: RunDir, host: str) -> ProcessSpec:
    exe = binaries.require("haproxy")
    cfg = run.haproxy_config(host)
    master = run.haproxy_master_socket(host)

    def prepare(restart: bool) -> None:
        # A restart keeps the config the dead master last ran, which `proxy reload` may have
        # changed since start-up; re-rendering from the cluster file as it was at start-up would
        # silently undo that reload.
        text = cfg.read_text() if restart and cfg.exists() else haproxy_config.render(cf, host, run)
        result = haproxy_config.check(text)
        if not result.ok:
            raise haproxy_config.RenderError(f"haproxy -c rejected the config for {host}:\n{result.output}")
        haproxy_config.write_atomic(cfg, text)
        # A stale socket from a killed master would make the new master fail to bind it.
        for sock in (master, run.haproxy_socket(host)):
            sock.unlink(missing_ok=True)

    n = len(cf.redis.shards)
    first, last = cf.listener_port(0), cf.listener_port(n - 1)
    return ProcessSpec(
        name=f"haproxy-{host}", kind="haproxy", host=host, address=cf.address(host),
        port=cf.haproxy.stats_port,
        # -W: master-worker in the foreground; -S: the master CLI used for hitless reloads.
        argv=[exe, "-W", "-f", str(cfg), "-S", f"{master},mode,600"],
        describe=f"haproxy (cluster {cf.cluster_of(host)}; shard listeners :{first}-{last}, stats :{cf.haproxy.stats_port})",
        ready=lambda: haproxy_ready(run, host), stage="haproxy",
        settled=lambda: haproxy_servers_up(run, host),
        prepare=prepare)


# Background traffic for `chatops up --traffic` (`make run`): modest, so the dashboard has
# something to show without loading the machine. It comes from its own loopback "viewers" host.
TRAFFIC_ADDRESS = "127.0.3.1"
TRAFFIC_ARGS = ["--duration", "0", "--clients", "60", "--senders", "6", "--rate", "10",
                "--ws-fraction", "0.25", "--report-every", "30"]


def traffic_spec(config: Path) -> ProcessSpec:
    return ProcessSpec(
        name="loadgen", kind="loadgen", host="viewers", address=TRAFFIC_ADDRESS, port=0,
        argv=[sys.executable, "-m", "chat.loadgen", "--config", str(config),
              "--source-address", TRAFFIC_ADDRESS, *TRAFFIC_ARGS],
        describe="loadgen (60 viewers, 6 bots, 10 msgs/s across every room)",
        ready=lambda: True, stage="traffic", client=True)


def controlplane_spec(cf: ClusterFile, run: RunDir, config: Path) -> ProcessSpec:
    """The control plane, started once the cluster has settled so its first scrape sees it whole."""
    listen = cf.controlplane.listen
    return ProcessSpec(
        name="controlplane", kind="controlplane", host="controlplane", address=listen.address,
        port=listen.port,
        argv=[sys.executable, "-m", "controlplane.cli", "controlplane", "--config", str(config),
              "--run-dir", str(run.root)],
        describe=f"control plane (dashboard http://{listen.address}:{listen.port}/)",
        ready=lambda: http_healthy(listen.address, listen.port, timeout=2.0), stage="controlplane",
        client=True)


def redis_specs(cf: ClusterFile, run: RunDir) -> list[ProcessSpec]:
    """Every shard's redis-server and its replica's, in file order. The supervisor also calls this
    on a changed cluster file, so what `up` starts and what a reconcile wants cannot drift apart."""
    out: list[ProcessSpec] = []
    for shard in cf.redis.shards:
        out.append(_redis_spec(cf, run, f"redis-{shard.name}", shard.name, shard.host, shard.port, None))
        if shard.replica:
            out.append(_redis_spec(cf, run, f"redis-{shard.name}-replica", shard.name, shard.replica.host,
                                   shard.replica.port, (cf.address(shard.host), shard.port)))
    return out


def specs(cf: ClusterFile, run: RunDir, config: Path, traffic: bool = False,
          controlplane: bool = False) -> list[ProcessSpec]:
    """In start order: Redis, the proxies in front of it, then per chat host the exchange, clue
    (which needs the exchange) and the edge (which needs both)."""
    out = redis_specs(cf, run)
    for host, _cluster in cf.chat_hosts():
        out.append(_haproxy_spec(cf, run, host))
    for host, cluster in cf.chat_hosts():
        sv = cf.clusters[cluster].services
        out.append(_chat_spec(cf, config, host, "exchange", sv.exchange.port, sv.exchange.port,
                              f"exchange (keepalive {'on' if sv.exchange.keepalive else 'OFF'}, pool {sv.exchange.pool_size})"))
        out.append(_chat_spec(cf, config, host, "clue", sv.clue.port, sv.clue.port,
                              f"clue (Redis via :{cf.listener_port(0)}-{cf.listener_port(len(cf.redis.shards) - 1)})"))
        out.append(_chat_spec(cf, config, host, "edge", sv.edge.irc_port, sv.edge.http_port,
                              f"edge (irc :{sv.edge.irc_port}, ws :{sv.edge.ws_port}; via haproxy "
                              f":{cf.clusters[cluster].frontend.irc_port}/:{cf.clusters[cluster].frontend.ws_port})"))
    if controlplane:
        out.append(controlplane_spec(cf, run, config))
    if traffic:
        out.append(traffic_spec(config))
    return out
