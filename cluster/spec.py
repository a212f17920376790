"""The cluster file's structure: pydantic models that forbid unknown keys and unsafe values.

Relations between parts (references, clashing addresses and ports, loopback-only in the local
profile) are checked afterwards by `cluster.checks`, once the structure is sound. The reference for
every key is docs/cluster-file.md; keep the two in step.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo

from cluster import durations

# Names end up as HAProxy proxy names, file names, log tags and Prometheus label values, so
# they are held to the narrowest alphabet that serves all four.
# Every pattern here is used with fullmatch() only (a `$` anchor lets a final "\n" through) and is
# ASCII: classes are spelt [0-9], never \d, which matches any Unicode digit ("١٠").
NAME_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?", re.ASCII)
ROOM_RE = re.compile(r"[a-z0-9_]{1,25}", re.ASCII)  # Twitch channel logins, without the '#'
ENV_RE = re.compile(r"[A-Z_][A-Z0-9_]*", re.ASCII)
HOSTNAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,253}", re.ASCII)
MAXMEMORY_RE = re.compile(r"[0-9]{1,20}(?:[kKmMgG][bB]?)?", re.ASCII)   # Redis's own units


def describe_unsafe(value: str) -> str | None:
    """Say why a string could not be written verbatim into a generated config line."""
    for ch, what in (("\n", "a newline"), ("\r", "a carriage return"), ("\x00", "a NUL byte"),
                     ("#", "'#' (starts a comment)")):
        if ch in value:
            return f"contains {what}, which would inject text into a generated config"
    if any(c.isspace() for c in value):
        return "contains whitespace, which would split a generated config line"
    return None


def _name(value: str) -> str:
    unsafe = describe_unsafe(value)
    if unsafe:
        raise ValueError(f"name {value!r} {unsafe}")
    if not NAME_RE.fullmatch(value):
        raise ValueError(f"name {value!r} must match [a-z0-9-] (1-63 chars, no leading/trailing '-')")
    return value


def _room(value: str) -> str:
    if not ROOM_RE.fullmatch(value):
        raise ValueError(f"room {value!r} must be 1-25 chars of [a-z0-9_], written without '#'")
    return value


def _env_name(value: str, info: ValidationInfo) -> str:
    # Exactly the name: "CHATOPS_API_TOKEN\n" names a variable nobody sets, and an unset token
    # variable would leave the API without its token.
    if not ENV_RE.fullmatch(value):
        raise ValueError(
            f"{info.field_name} {value!r} is not an environment-variable name: it must match "
            "[A-Z_][A-Z0-9_]* exactly (ASCII capitals, digits and '_', no whitespace); secrets are "
            "never written inline, only the name of the variable holding them")
    return value


def _host_name(value: str) -> str:
    if not HOSTNAME_RE.fullmatch(value):
        raise ValueError(f"{value!r} must be a host name of ASCII [A-Za-z0-9.-], 1-254 chars, "
                         "starting with a letter or digit")
    return value


def _maxmemory(value: str) -> str:
    if not MAXMEMORY_RE.fullmatch(value):
        raise ValueError(f"maxmemory {value!r} must be ASCII digits [0-9] with an optional unit "
                         "k, kb, m, mb, g or gb (Redis's own units), such as 256mb")
    return value


def _address(value: str) -> str:
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise ValueError(f"{value!r} is not an IPv4 address") from None


def _duration(value: Any) -> str:
    # Runs before the strict str check, so a bare number gets this hint rather than "not a string".
    try:
        s = durations.parse(value)
    except durations.DurationError as exc:
        raise ValueError(str(exc)) from None
    if s == 0:
        # Zero means "no timeout" to HAProxy and a busy loop to a scheduler; neither is wanted.
        raise ValueError(f"{value!r} must be greater than zero")
    return value


def _duration_or_zero(value: Any) -> str:
    """A duration where zero means "at once" (services.edge.drain_period)."""
    try:
        durations.parse(value)
    except durations.DurationError as exc:
        raise ValueError(str(exc)) from None
    return value


def _text_line(value: str) -> str:
    """Free text that ends up inside an IRC line: one line of printable characters."""
    bad = next((c for c in value if not c.isprintable()), None)
    if bad is not None:
        raise ValueError(f"contains the control character {bad!r}, which would inject an IRC line")
    return value


Name = Annotated[str, AfterValidator(_name)]
Room = Annotated[str, AfterValidator(_room)]
EnvName = Annotated[str, AfterValidator(_env_name)]
Address = Annotated[str, AfterValidator(_address)]
Duration = Annotated[str, BeforeValidator(_duration)]
DurationOrZero = Annotated[str, BeforeValidator(_duration_or_zero)]
TextLine = Annotated[str, AfterValidator(_text_line), Field(min_length=1, max_length=400)]
HostName = Annotated[str, AfterValidator(_host_name)]
Port = Annotated[int, Field(ge=1, le=65535)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Host(_Model):
    address: Address
    # How Ansible reaches the host: `local` for the embedded default, `ssh` for real machines.
    ansible_connection: Literal["local", "ssh"] = "local"


class Frontend(_Model):
    """The cluster's public entry point, rendered on every chat host of the cluster."""
    irc_port: Port = 6667
    ws_port: Port = 8080


class Rate(_Model):
    """At most `count` events per `per`, as a token bucket: a burst of `count`, then `count` per `per`."""
    count: Annotated[int, Field(ge=1, le=1_000_000)]
    per: Duration


class EdgeService(_Model):
    irc_port: Port = 16667
    ws_port: Port = 18080
    http_port: Port = 17080          # internal: deliveries from the exchange, /metrics, /healthz
    server_name: HostName = "tmi.chatops.local"
    motd: TextLine = "Welcome to the chat room!"
    max_output_buffer: Annotated[int, Field(ge=4096)] = 1_048_576
    # Per-connection bounds, checked by the edge before any clue or Redis work (docs/security.md).
    # Loadgen, the canary and the benchmarks hold one room per connection.
    max_rooms_per_connection: Annotated[int, Field(ge=1, le=100_000)] = 100
    # Twitch's JOIN limit for a user: 20 per 10 s; each channel of a JOIN line counts.
    join_rate: Rate = Rate(count=20, per="10s")
    # The edge cannot tell a bot from a viewer (clue reads roles from Redis), so this ceiling is the
    # highest per-user limit clue applies, Twitch's 7,500 per 30 s for bots: the edge never refuses
    # what clue would take, yet one connection can no longer make clue check messages without end
    # (20 per 30 s for a viewer, refused by clue, each still costing a Redis round trip). The fast
    # senders here fit: tests/chat/test_edge.py's slow-consumer flood (1,500 at once from one bot),
    # the admin test's 150/s pacer, bench/ingest.py's <= 100/s per sender; loadgen warns above it.
    privmsg_rate: Rate = Rate(count=7500, per="30s")
    # What a connection may send while its login or a JOIN is being done, before it is closed: a
    # client pipelining PASS, NICK and a few JOINs sends a few hundred bytes; one full line with
    # tags is 8,703 bytes, the floor.
    max_pending_bytes: Annotated[int, Field(ge=8703, le=64 * 1024 * 1024)] = 65_536
    # A connection that has not logged in by then is closed; a login waits at most the clue
    # timeout (5 s) for its token check.
    registration_timeout: Duration = "30s"
    # A drained or stopped edge sends RECONNECT to its clients, then closes the ones still there
    # over this period (chat/drain.py); 0s closes them at once. Long enough for a client honouring
    # RECONNECT to reconnect elsewhere first, short enough for a rolling restart.
    drain_period: DurationOrZero = "10s"


class ClueClientSettings(_Model):
    """How edges talk to clue: the talk's outage turned on these numbers."""
    # Connections, and so requests in flight; calls beyond them wait and leave together in the
    # next request. Small pools batch better: 2 measured 6x lower p99 than 16 (bench/ingest.py).
    pool_size: Annotated[int, Field(ge=1, le=1024)] = 2
    timeout: Duration = "5s"
    # Calls waiting for a free connection; past it a call fails at once (the user gets
    # msg_unavailable) instead of queueing without limit behind a stalled clue.
    max_pending: Annotated[int, Field(ge=1, le=1_000_000)] = 10_000


class ClueService(_Model):
    port: Port = 19000
    client: ClueClientSettings = ClueClientSettings()
    cache_max_conns: Annotated[int, Field(ge=1, le=10_000)] = 10  # CACHE_MAX_CONNS
    cache_timeout: Duration = "100ms"                              # CACHE_TIMEOUT
    # Twitch's limits: 20 messages per 30 s, 100 for a room's mods and broadcaster, 7,500 for
    # known bots (the load generator's senders are bots).
    rate_window: Duration = "30s"
    user_rate: Annotated[int, Field(ge=1)] = 20
    privileged_rate: Annotated[int, Field(ge=1)] = 100
    bot_rate: Annotated[int, Field(ge=1)] = 7500
    room_rate: Annotated[int, Field(ge=1)] = 2000                 # messages per second per room


class ExchangeService(_Model):
    port: Port = 19100
    keepalive: bool = True          # the talk's second bug was this being off
    pool_size: Annotated[int, Field(ge=1, le=1024)] = 2    # per edge; see ClueClientSettings
    timeout: Duration = "2s"
    # Calls waiting for a free connection, per hop: clue's queue to the exchange, and the
    # exchange's to each edge. Past it a call fails at once; see ClueClientSettings.max_pending.
    max_pending: Annotated[int, Field(ge=1, le=1_000_000)] = 10_000


class Services(_Model):
    edge: EdgeService = EdgeService()
    clue: ClueService = ClueService()
    exchange: ExchangeService = ExchangeService()


class Cluster(_Model):
    hosts: Annotated[list[Name], Field(min_length=1)]
    frontend: Frontend = Frontend()
    services: Services = Services()
    rooms: list[Room] = []
    # token: Twitch's login (PASS oauth:<token>). open: any free nick logs in without a token, for
    # standard IRC clients and conformance suites; refused on profile remote (cluster.checks).
    auth: Literal["token", "open"] = "token"


class Replica(_Model):
    host: Name
    port: Port


MaxClients = Annotated[int, Field(ge=16, le=1_000_000)]
IdleTimeout = Annotated[int, Field(ge=0)]
EvictionPolicy = Literal["noeviction", "allkeys-lru", "allkeys-lfu", "volatile-lru", "volatile-lfu",
                         "allkeys-random", "volatile-random", "volatile-ttl"]


class Shard(_Model):
    name: Name
    host: Name
    port: Port
    replica: Replica | None = None
    # Per-shard overrides of the redis: settings below, as `set_redis_config` on one shard writes
    # them back; absent means the redis: value.
    maxclients: MaxClients | None = None
    timeout: IdleTimeout | None = None
    maxmemory_policy: EvictionPolicy | None = None


class Redis(_Model):
    maxclients: MaxClients = 10_000
    # 0 keeps idle clients forever, as in the talk; the leaked-clients detector flags it.
    timeout: IdleTimeout = 0
    maxmemory: Annotated[str, AfterValidator(_maxmemory)] = "256mb"  # Redis's own units
    # volatile-lfu evicts only keys with a TTL (clue's rate-limit counters), never bans, mods,
    # users or tokens (chat.keys.DURABLE_KINDS), and keeps the LFU counters the hot-key sampler reads.
    maxmemory_policy: EvictionPolicy = "volatile-lfu"
    shards: Annotated[list[Shard], Field(min_length=1, max_length=256)]

    def setting(self, shard: Shard, key: str):
        """A shard's maxclients, timeout or maxmemory_policy: its own override, else redis:'s."""
        own = getattr(shard, key)
        return getattr(self, key) if own is None else own


class HAProxyTimeouts(_Model):
    connect: Duration = "1s"
    # Long on purpose: clue's pooled connections sit idle between bursts, and idle leaks are for
    # the leaked-clients detector to find (idle > 60 s and > 600 s), not for HAProxy to hide.
    client: Duration = "1h"
    server: Duration = "1h"
    check: Duration = "1s"
    queue: Duration = "5s"


class HAProxy(_Model):
    # HAProxy needs about two descriptors per connection, and this machine's hard limit is 20,000.
    maxconn: Annotated[int, Field(ge=64, le=9000)] = 4000
    # Each proxy's own share of `maxconn`, so a flood on the public frontends can never take the
    # connections clue needs to reach Redis (config.render checks the sum fits). Each of the two
    # public frontends (IRC, WebSocket) of a host:
    edge_maxconn: Annotated[int, Field(ge=1, le=9000)] = 1000
    # From any one client address, on each public frontend. The load generator opens all its
    # connections from one address: the largest documented run (500 receivers + 20 senders,
    # docs/operations.md) puts at most ~100 on one frontend of the default cluster, the tests at
    # most 210; loadgen refuses a plan over it, naming this field. The shard listeners have no
    # per-source limit on purpose: a leak from one host must reach Redis, where it is detected.
    edge_maxconn_per_source: Annotated[int, Field(ge=1, le=9000)] = 500
    # Each shard listener; None: `maxconn`, so the tests' and the talk's leak of thousands of idle
    # connections from one host still reaches Redis whole.
    listener_maxconn: Annotated[int, Field(ge=1, le=9000)] | None = None
    stats_maxconn: Annotated[int, Field(ge=1, le=9000)] = 100     # stats page and /metrics
    listener_base_port: Port = 2000           # shard i listens on base + i, the talk's CACHE_PORT
    stats_port: Port = 8404                   # ;csv stats page and /metrics (Prometheus exporter)
    check_interval: Duration = "2s"
    timeouts: HAProxyTimeouts = HAProxyTimeouts()
    # Bound old workers: one was seen to crash (exit 139) after runtime-API changes and reloads.
    hard_stop_after: Duration = "60s"
    mworker_max_reloads: Annotated[int, Field(ge=1, le=1000)] = 25


class Listen(_Model):
    address: Address = "127.0.0.1"
    port: Port = 5000


class Scrape(_Model):
    interval: Duration = "2s"
    client_list_interval: Duration = "5s"
    history: Duration = "1h"


class Thresholds(_Model):
    """Detector thresholds; each is documented in docs/cluster-file.md."""
    hold: Duration = "6s"
    clear_factor: Annotated[float, Field(gt=0, lt=1)] = 0.8
    hot_shard_cpu_percent: Annotated[float, Field(gt=0, le=100)] = 80.0
    hot_shard_ops_factor: Annotated[float, Field(gt=1)] = 2.0
    hot_shard_min_ops_per_s: Annotated[float, Field(ge=0)] = 500.0
    hot_key_share: Annotated[float, Field(gt=0, le=1)] = 0.5
    idle_client_after: Duration = "60s"
    leaked_idle_clients: Annotated[int, Field(ge=1)] = 500
    maxclients_warn_ratio: Annotated[float, Field(gt=0, le=1)] = 0.8
    proxy_session_warn_ratio: Annotated[float, Field(gt=0, le=1)] = 0.8
    proxy_errors_per_s: Annotated[float, Field(gt=0)] = 1.0
    ingestion_timeouts_per_s: Annotated[float, Field(gt=0)] = 0.2
    churn_ratio: Annotated[float, Field(gt=0, le=1)] = 0.5
    churn_min_requests_per_s: Annotated[float, Field(ge=0)] = 2.0
    delivery_late_after: Duration = "2s"


CANARY_ROOM_PREFIX = "chatops_canary_"


def canary_room(cluster: str) -> str:
    """The canary's own room in `cluster`: `chatops_canary_<cluster>` ('-' written '_', as rooms
    allow no '-'); a cluster name too long for a room's 25 characters gets a stable hash instead."""
    import zlib
    name = cluster.replace("-", "_")
    if len(CANARY_ROOM_PREFIX) + len(name) > 25:
        name = f"{zlib.crc32(cluster.encode()):08x}"
    return CANARY_ROOM_PREFIX + name


class Canary(_Model):
    """The control plane's own chat client, in each watched room on every edge of its cluster.
    Defaults and their reasons: docs/cluster-file.md, controlplane/sources/canary.py."""
    enabled: bool = True
    # None: its own room in every cluster (canary_room()), which no user sees; a list names rooms
    # to watch instead, real ones included.
    rooms: list[Room] | None = None
    interval: Duration = "1s"              # one message through every edge of each room per interval
    # Each path (sending edge -> delivering edge) is judged on its last `window` judged messages;
    # it is failing when at least `miss_share` of them were missed or late (3 of 10 by default).
    window: Annotated[int, Field(ge=2, le=60)] = 10
    miss_share: Annotated[float, Field(gt=0, le=1)] = 0.3


def _public_url(value: str) -> str:
    # Only ever a link in a message: no credentials, no fragment, no line breaks to smuggle.
    from urllib.parse import urlsplit
    u = urlsplit(value)
    if u.scheme not in ("http", "https") or not u.hostname or u.username or u.password \
            or u.fragment or any(c.isspace() or not c.isprintable() for c in value):
        raise ValueError(f"{value!r} must be a plain http(s) URL such as https://chatops.example.com, "
                         "without credentials, fragment or whitespace")
    return value.rstrip("/")


PublicUrl = Annotated[str, AfterValidator(_public_url), Field(max_length=200)]


class ControlPlane(_Model):
    listen: Listen = Listen()
    # Where people reach the dashboard, for the links in alerts; None: http://<listen address>:<port>.
    public_url: PublicUrl | None = None
    auth_token_env: EnvName = "CHATOPS_API_TOKEN"
    scrape: Scrape = Scrape()
    thresholds: Thresholds = Thresholds()
    canary: Canary = Canary()


class AlertDestination(_Model):
    """Where notifications go (docs/alerting.md). Grouping follows Alertmanager's route timers,
    with its defaults."""
    name: Name
    type: Literal["slack", "webhook", "alertmanager"]
    url_env: EnvName           # the URL is the secret (Slack's carries its token); only its variable is named
    secret_env: EnvName | None = None     # webhook: HMAC-SHA256 key for the signature header
    min_severity: Literal["info", "warning", "critical"] = "warning"
    clusters: list[Name] | None = None    # None: incidents of every cluster
    group_wait: Duration = "30s"          # an incident's first notification waits this for more findings
    group_interval: Duration = "5m"       # at least this between two notifications of one incident
    repeat_interval: Duration = "4h"      # an incident still open is sent again after this


AutoAction = Literal["kill_clients", "set_redis_config", "set_keepalive", "server_state", "restart_service",
                     "proxy_reload", "reshard"]


class Remediation(_Model):
    """What the control plane may apply by itself when a finding suggesting it opens."""
    auto: list[AutoAction] = []            # empty: every fix waits for a person
    auto_cooldown: Duration = "10m"        # at most one automatic apply per subject per this
    # Hosts whose connections are never killed automatically; None: the first cluster's hosts
    # (main, where the users are). The control plane's own are never killed, by anyone.
    protect: list[Name] | None = None


class Secrets(_Model):
    """The variables holding the cluster's internal secrets; never the secrets themselves
    (docs/security.md). With profile local, `chatops up` generates each one that is unset into
    <run dir>/secrets.env (mode 600) and hands it to everything it starts."""
    # Bearer token every internal HTTP call carries: edge -> clue, clue -> exchange, exchange -> edge.
    internal_token_env: EnvName = "CHATOPS_INTERNAL_TOKEN"
    # Redis ACL users' passwords: clue's (its own key patterns), the control plane's (read-only plus
    # the commands its actions need) and the replicas' (to follow their primary).
    redis_clue_password_env: EnvName = "CHATOPS_REDIS_CLUE_PASSWORD"
    redis_controlplane_password_env: EnvName = "CHATOPS_REDIS_CONTROLPLANE_PASSWORD"
    redis_replication_password_env: EnvName = "CHATOPS_REDIS_REPLICATION_PASSWORD"


class ClusterFile(_Model):
    version: Literal[1] = 1
    profile: Literal["local", "remote"] = "local"
    hosts: Annotated[dict[Name, Host], Field(min_length=1)]
    clusters: Annotated[dict[Name, Cluster], Field(min_length=1)]
    redis: Redis
    haproxy: HAProxy = HAProxy()
    controlplane: ControlPlane = ControlPlane()
    alerts: list[AlertDestination] = []
    remediation: Remediation = Remediation()
    secrets: Secrets = Secrets()

    # -- derived views, so callers never re-walk the raw structure --

    def protected_hosts(self) -> list[str]:
        """Hosts the automatic policy never kills connections from."""
        if self.remediation.protect is not None:
            return list(self.remediation.protect)
        return list(next(iter(self.clusters.values())).hosts)

    def chat_hosts(self) -> list[tuple[str, str]]:
        """(host name, cluster name) for every chat host, in file order."""
        return [(h, cname) for cname, c in self.clusters.items() for h in c.hosts]

    def cluster_of(self, host: str) -> str | None:
        return next((c for h, c in self.chat_hosts() if h == host), None)

    def address(self, host: str) -> str:
        return self.hosts[host].address

    def listener_port(self, shard_index: int) -> int:
        return self.haproxy.listener_base_port + shard_index

    def public_url(self) -> str:
        """The dashboard's address as alerts link to it."""
        cp = self.controlplane
        return cp.public_url or f"http://{cp.listen.address}:{cp.listen.port}"

    def host_by_address(self) -> dict[str, str]:
        """IP -> host name; the control plane's listen address is `controlplane` (its collectors
        connect from there) unless a host has that address."""
        names = {h.address: name for name, h in self.hosts.items()}
        names.setdefault(self.controlplane.listen.address, "controlplane")
        return names

    def cluster_of_room(self, room: str) -> str:
        """Rooms not placed anywhere live on the first cluster, as new channels did on main; the
        canary's own room of a cluster (canary_room()) lives on that cluster."""
        for cname, c in self.clusters.items():
            if room in c.rooms:
                return cname
        if room.startswith(CANARY_ROOM_PREFIX):
            for cname in self.clusters:
                if canary_room(cname) == room:
                    return cname
        return next(iter(self.clusters))
