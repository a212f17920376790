"""Cross-checks of a structurally valid cluster file: one function per rule.

Each rule yields `(key.path, message)` problems and never raises, so `run` reports every problem
of this stage at once. A rule that needs a host to exist skips references `known_hosts` already
reported, so one typo is one problem, not three.
"""

from __future__ import annotations

import ipaddress
from typing import Callable, Iterator

from cluster.spec import ClusterFile

Problem = tuple[str, str]
Rule = Callable[[ClusterFile], Iterator[Problem]]


def loopback_only(cf: ClusterFile) -> Iterator[Problem]:
    """The local profile simulates every host, and serves the control plane, on 127.0.0.0/8."""
    if cf.profile != "local":
        return
    for name, host in cf.hosts.items():
        if not ipaddress.IPv4Address(host.address).is_loopback:
            yield (f"hosts.{name}.address",
                   f"{host.address} is outside loopback 127.0.0.0/8; the local profile "
                   "simulates every host on a loopback address")
    listen = cf.controlplane.listen.address
    if listen not in _addresses(cf) and not ipaddress.IPv4Address(listen).is_loopback:
        yield ("controlplane.listen.address", f"{listen} is outside loopback")


def local_connections(cf: ClusterFile) -> Iterator[Problem]:
    if cf.profile != "local":
        return
    for name, host in cf.hosts.items():
        if host.ansible_connection != "local":
            yield (f"hosts.{name}.ansible_connection", "the local profile needs 'local'")


def unique_addresses(cf: ClusterFile) -> Iterator[Problem]:
    first: dict[str, str] = {}
    for name, host in cf.hosts.items():
        if host.address in first:
            yield (f"hosts.{name}.address",
                   f"duplicate address {host.address} (also hosts.{first[host.address]})")
        else:
            first[host.address] = name


def known_hosts(cf: ClusterFile) -> Iterator[Problem]:
    for path, host in _host_references(cf):
        if host not in cf.hosts:
            yield (path, f"unknown host {host!r} (not under hosts:)")


def one_cluster_per_host(cf: ClusterFile) -> Iterator[Problem]:
    owner: dict[str, str] = {}
    for cname, cluster in cf.clusters.items():
        for i, h in enumerate(cluster.hosts):
            if h in owner:
                yield (f"clusters.{cname}.hosts.{i}",
                       f"host {h!r} is already a chat host of cluster {owner[h]!r}")
            else:
                owner[h] = cname


def shards_off_chat_hosts(cf: ClusterFile) -> Iterator[Problem]:
    chat = {h for h, _ in cf.chat_hosts()}
    for path, host in _host_references(cf):
        if path.startswith("redis.") and host in chat:
            yield (path, f"{host!r} is a chat host; Redis shards run on their own hosts")


def unique_ports(cf: ClusterFile) -> Iterator[Problem]:
    """Every socket anything binds, so a clash is caught here rather than at EADDRINUSE."""
    bound: dict[tuple[str, int], str] = {}
    for path, host, port in _sockets(cf):
        key = (cf.hosts[host].address, port)
        if key in bound:
            yield (path, f"duplicate port {port} on {key[0]} (also {bound[key]})")
        else:
            bound[key] = path


def listener_range(cf: ClusterFile) -> Iterator[Problem]:
    last = len(cf.redis.shards) - 1
    if cf.listener_port(last) > 65535:
        yield ("haproxy.listener_base_port", f"base + {last} shards runs past port 65535")


def rooms_placed_once(cf: ClusterFile) -> Iterator[Problem]:
    owner: dict[str, str] = {}
    for cname, cluster in cf.clusters.items():
        for i, room in enumerate(cluster.rooms):
            if room in owner:
                yield (f"clusters.{cname}.rooms.{i}",
                       f"room {room!r} is already placed on cluster {owner[room]!r}")
            owner[room] = cname


def unique_shard_names(cf: ClusterFile) -> Iterator[Problem]:
    seen: set[str] = set()
    for i, shard in enumerate(cf.redis.shards):
        if shard.name in seen:
            yield (f"redis.shards.{i}.name", f"duplicate shard name {shard.name!r}")
        seen.add(shard.name)


def unique_alert_names(cf: ClusterFile) -> Iterator[Problem]:
    seen: set[str] = set()
    for i, dest in enumerate(cf.alerts):
        if dest.name in seen:
            yield (f"alerts.{i}.name", f"duplicate alert destination {dest.name!r}")
        seen.add(dest.name)


def alert_routes(cf: ClusterFile) -> Iterator[Problem]:
    for i, dest in enumerate(cf.alerts):
        for j, cname in enumerate(dest.clusters or []):
            if cname not in cf.clusters:
                yield (f"alerts.{i}.clusters.{j}",
                       f"unknown cluster {cname!r}; clusters: {', '.join(cf.clusters)}")
        if dest.secret_env is not None and dest.type != "webhook":
            yield (f"alerts.{i}.secret_env", f"only webhook destinations sign their body; "
                                             f"{dest.type} does not use secret_env")


def open_auth_local_only(cf: ClusterFile) -> Iterator[Problem]:
    """`auth: open` lets anyone speak as any free nick: only where every address is loopback. Every
    cluster of profile remote counts as production, as its addresses are reachable by others."""
    if cf.profile == "local":
        return
    for name, cluster in cf.clusters.items():
        if cluster.auth == "open":
            yield (f"clusters.{name}.auth",
                   "'open' is refused with profile remote: it lets anyone log in as any free nick "
                   "without a token, so it is only for local development and tests (docs/security.md, "
                   "Open login); use 'token'")


RULES: tuple[Rule, ...] = (
    loopback_only, unique_addresses, local_connections, known_hosts, one_cluster_per_host,
    shards_off_chat_hosts, unique_ports, listener_range, rooms_placed_once, unique_shard_names,
    unique_alert_names, alert_routes, open_auth_local_only,
)


def run(cf: ClusterFile) -> list[Problem]:
    return [problem for rule in RULES for problem in rule(cf)]


# -- warnings: a file that works, but can lose what it must not ---------------------------------

def evicts_moderation(policy: str) -> bool:
    """Whether a maxmemory-policy may evict keys without a TTL: bans, mods, users and tokens."""
    return policy.startswith("allkeys-")


def eviction_warning(policy: str) -> str:
    return (f"{policy} may evict any key when the shard reaches maxmemory, bans, mods and tokens "
            "included; volatile-lfu (the default) evicts only keys with a TTL (docs/security.md, "
            "Durable moderation state)")


def evicting_policy(cf: ClusterFile) -> Iterator[Problem]:
    if evicts_moderation(cf.redis.maxmemory_policy):
        yield ("redis.maxmemory_policy", eviction_warning(cf.redis.maxmemory_policy))
    for i, shard in enumerate(cf.redis.shards):
        if shard.maxmemory_policy is not None and evicts_moderation(shard.maxmemory_policy):
            yield (f"redis.shards.{i}.maxmemory_policy", eviction_warning(shard.maxmemory_policy))


WARNINGS: tuple[Rule, ...] = (evicting_policy,)


def warnings(cf: ClusterFile) -> list[Problem]:
    """What a valid file may still get wrong; `chatops config check` and `chatops up` print these."""
    return [problem for rule in WARNINGS for problem in rule(cf)]


# -- what the rules walk -------------------------------------------------------------------------

def _addresses(cf: ClusterFile) -> set[str]:
    return {h.address for h in cf.hosts.values()}


def _host_references(cf: ClusterFile) -> Iterator[tuple[str, str]]:
    for cname, cluster in cf.clusters.items():
        for i, h in enumerate(cluster.hosts):
            yield f"clusters.{cname}.hosts.{i}", h
    for i, shard in enumerate(cf.redis.shards):
        yield f"redis.shards.{i}.host", shard.host
        if shard.replica:
            yield f"redis.shards.{i}.replica.host", shard.replica.host
    for i, host in enumerate(cf.remediation.protect or []):
        yield f"remediation.protect.{i}", host


def _sockets(cf: ClusterFile) -> Iterator[tuple[str, str, int]]:
    """(key path, host, port) of every listening socket, on known hosts, each chat host once."""
    seen_chat: set[str] = set()
    for cname, cluster in cf.clusters.items():
        for h in cluster.hosts:
            if h not in cf.hosts or h in seen_chat:
                continue
            seen_chat.add(h)
            fe, sv = cluster.frontend, cluster.services
            base = f"clusters.{cname}"
            yield f"{base}.frontend.irc_port", h, fe.irc_port
            yield f"{base}.frontend.ws_port", h, fe.ws_port
            yield f"{base}.services.edge.irc_port", h, sv.edge.irc_port
            yield f"{base}.services.edge.ws_port", h, sv.edge.ws_port
            yield f"{base}.services.edge.http_port", h, sv.edge.http_port
            yield f"{base}.services.clue.port", h, sv.clue.port
            yield f"{base}.services.exchange.port", h, sv.exchange.port
            yield "haproxy.stats_port", h, cf.haproxy.stats_port
            for si, shard in enumerate(cf.redis.shards):
                yield f"haproxy.listener_base_port (shard {shard.name})", h, cf.listener_port(si)
    for i, shard in enumerate(cf.redis.shards):
        for what, host, port in (("", shard.host, shard.port),) + (
                (("replica.", shard.replica.host, shard.replica.port),) if shard.replica else ()):
            if host in cf.hosts:
                yield f"redis.shards.{i}.{what}port", host, port
    listen = cf.controlplane.listen
    owner = next((name for name, h in cf.hosts.items() if h.address == listen.address), None)
    if owner is not None:
        yield "controlplane.listen.port", owner, listen.port
