"""Redis: INFO, CONFIG, SLOWLOG, LATENCY and hot keys, straight from a shard.

One feature per function, as redis_exporter does it: each `parse_*` is a pure function over
the recorded reply (bytes/text or decoded RESP), with real sample lines pasted above it; each
`fetch_*` is the thin I/O beside it, over a `collectors.resp.Conn`. `collect(target)` runs every
section and logs and skips the one that fails. CLIENT LIST is collectors/clients.py: it blocks
Redis for ~1 us per client and runs on its own, slower interval.
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any

from cluster import redis_acl
from cluster.redis_acl import Credentials
from cluster.secrets import SecretError
from collectors import keepalive
from collectors.base import Observation, source_address
from collectors.resp import TIMEOUT_S, Conn, ProtocolError, RedisError, decode, encode_command, parse_resp

__all__ = ["Target", "target_for", "collect", "connect", "checkout", "checkin", "admin_auth", "find_shard",
           "UnknownShard", "parse_info",
           "fetch_info", "rates", "parse_config", "fetch_config", "parse_slowlog", "fetch_slowlog",
           "parse_latency", "fetch_latency", "fetch_hotkeys", "source_address",
           # the RESP layer, for callers that talk to a shard directly
           "Conn", "RedisError", "ProtocolError", "encode_command", "parse_resp"]

log = logging.getLogger("chatops.collectors.redis")

LFU_POLICIES = ("allkeys-lfu", "volatile-lfu")
CONFIG_KEYS = ("maxclients", "timeout", "maxmemory-policy")


# ---------------------------------------------------------------------------------------------
# The target
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Target:
    shard: str
    address: str                 # the shard's own address and port, not a chat host's HAProxy
    port: int
    source: str | None = None    # local address our connection comes from (see source_address)
    timeout: float = TIMEOUT_S
    hotkeys_max: int = 1000      # keys SCANned for OBJECT FREQ, at most
    auth: AdminAuth | Credentials | None = field(default=None, compare=False)  # repr shows no password


class UnknownShard(KeyError):
    def __init__(self, name: str, known: list[str]):
        super().__init__(name)
        self.name, self.known = name, known

    def __str__(self) -> str:
        return f"unknown shard {self.name!r} (shards: {', '.join(self.known)})"


def find_shard(cf, shard_name: str):
    for s in cf.redis.shards:
        if s.name == shard_name:
            return s
    raise UnknownShard(shard_name, [s.name for s in cf.redis.shards])


def target_for(cf, shard_name: str, timeout: float = TIMEOUT_S, hotkeys_max: int = 1000) -> Target:
    """The shard named in the cluster file; raises UnknownShard."""
    shard = find_shard(cf, shard_name)
    return Target(shard_name, cf.address(shard.host), shard.port, source_address(cf), timeout, hotkeys_max,
                  admin_auth(cf))


class AdminAuth:
    """The control plane's credentials (ACL user `chatops`, cluster/redis_acl.py), the password
    looked up when a connection first sends AUTH, after it has connected: an unreachable shard
    still reads as refused, and a password nobody set fails that shard's connection with a
    RedisError naming the variable, like any other refusal, instead of failing before it."""

    user = redis_acl.CHATOPS

    def __init__(self, cf):
        self._cf = cf
        self._password: str | None = None

    @property
    def password(self) -> str:
        if self._password is None:
            try:
                self._password = redis_acl.password(self._cf, self.user)
            except SecretError as exc:
                raise RedisError(f"cannot log in as {self.user}: {exc}") from None
        return self._password

    def __repr__(self) -> str:
        return f"AdminAuth(user={self.user!r})"


def admin_auth(cf) -> AdminAuth:
    """What every connection the control plane opens to a shard logs in with."""
    return AdminAuth(cf)


def connect(target) -> Conn:
    """A connection to the target's shard (a redis or a clients Target: both name one)."""
    return Conn(target.address, target.port, target.timeout, target.source, target.auth)


# The sources' connections, kept between scrapes (collectors/keepalive.py says why).
_IDLE = keepalive.Idle(lambda conn: conn.sock, Conn.close)
# What leaves a connection out of step with the server, or closed: it is not kept.
LOST = (OSError, ProtocolError)
# How a kept connection the shard closed while it sat idle fails, at once: worth one more try on
# a new one. A timeout is not among them: the shard is slow or stopped, and a second try would
# only double the wait.
STALE = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError, ProtocolError)


def _idle_key(target) -> tuple:
    return (target.address, target.port, target.source, getattr(target.auth, "user", None))


def _secret(auth) -> str | None:
    return None if auth is None else hashlib.sha256(auth.password.encode()).hexdigest()


def checkout(target) -> tuple[Conn, bool]:
    """A connection to the target's shard: the one an earlier scrape kept (True), else a new one
    (False). A kept one logged in with another password than the target's now (changed, or no
    longer to be found: RedisError, as connecting would say) is closed, not handed out. Raises
    what `connect` raises."""
    conn = _IDLE.take(_idle_key(target))
    if conn is None:
        return connect(target), False
    try:
        same = _secret(conn.auth) == _secret(target.auth)
    except BaseException:
        conn.close()
        raise
    if not same:
        conn.close()
        return connect(target), False
    conn.sock.settimeout(target.timeout)
    return conn, True


def checkin(target, conn: Conn, in_step: bool) -> None:
    """Keep `conn` for the target's next scrape when every reply on it was read whole (`in_step`),
    else close it: a timed-out command's reply may still arrive."""
    if in_step and conn.in_step:
        _IDLE.give(_idle_key(target), conn)
    else:
        conn.close()


def on_shard(target, fn):
    """fn(conn) on a kept connection to the target's shard; when a kept one fails as STALE (the
    shard closed it while it sat idle), once more on a new one. The connection is kept again
    only after a clean run."""
    conn, reused = checkout(target)
    try:
        result = fn(conn)
    except LOST as exc:
        conn.close()
        if not (reused and isinstance(exc, STALE)):
            raise
        conn, reused = connect(target), False
        try:
            result = fn(conn)
        except BaseException:
            conn.close()
            raise
    except BaseException:
        conn.close()
        raise
    checkin(target, conn, True)
    return result


# ---------------------------------------------------------------------------------------------
# INFO
# ---------------------------------------------------------------------------------------------

# Real lines from `INFO all` on Redis 7.0.15 (tests/fixtures/redis/info.txt):
#   # Server
#   redis_version:7.0.15
#   # Clients
#   connected_clients:8
#   # CPU
#   used_cpu_sys:0.000000
#   # Commandstats
#   cmdstat_get:calls=1502,usec=481,usec_per_call=0.32,rejected_calls=0,failed_calls=0
#   cmdstat_hget:calls=1,usec=8,usec_per_call=8.00,rejected_calls=0,failed_calls=1
#   # Errorstats
#   errorstat_WRONGTYPE:count=1
#   # Keyspace
#   db0:keys=121,expires=0,avg_ttl=0
#   # Replication
#   role:master
#   (a replica's master lists it as slave0:ip=127.0.0.1,port=6380,state=online,offset=42,lag=0)

# At most 20 digits (a uint64): a longer run is read as a float, since int() refuses more than 4,300.
_NUM_RE = re.compile(r"^-?\d{1,20}$")
_FLOAT_RE = re.compile(r"^-?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?$")
_KV_RE = re.compile(r"^[A-Za-z0-9_\-|.:]+=[^,]*(?:,[A-Za-z0-9_\-|.:]+=[^,]*)*$")


def _typed(value: str) -> int | float | str:
    if _NUM_RE.match(value):
        return int(value)
    if _FLOAT_RE.match(value):
        return float(value)
    return value


def _typed_kv(value: str) -> dict[str, Any]:
    out = {}
    for part in value.split(","):
        k, _, v = part.partition("=")
        out[k] = _typed(v)
    return out


def parse_info(text: str | bytes) -> dict[str, dict[str, Any]]:
    """INFO text -> {section: {field: value}}; `a=1,b=2` values become dicts, numbers are typed.

    Unknown sections and fields are kept as they are; lines without ':' (truncation, garbage)
    are skipped. Fields before any `# Section` header land in section "".
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    out: dict[str, dict[str, Any]] = {}
    section = out.setdefault("", {})
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            section = out.setdefault(line.lstrip("#").strip().lower(), {})
            continue
        key, sep, value = line.partition(":")
        if not sep or not key:
            continue
        if "=" in value and _KV_RE.match(value):
            section[key] = _typed_kv(value)
        else:
            section[key] = _typed(value)
    if not out[""]:
        del out[""]
    return out


def fetch_info(conn: Conn, section: str = "all") -> dict[str, dict[str, Any]]:
    raw = conn.call("INFO", section)
    return parse_info(raw if raw is not None else b"")


def _num(info: dict, section: str, key: str) -> float | None:
    v = info.get(section, {}).get(key)
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def rates(prev: dict, cur: dict, dt: float) -> dict[str, Any]:
    """Per-second rates between two parsed INFO samples taken `dt` seconds apart.

    Counters that went backwards (a restart, CONFIG RESETSTAT) give None rather than a negative rate.
    """
    def delta(section: str, key: str) -> float | None:
        a, b = _num(prev, section, key), _num(cur, section, key)
        if a is None or b is None or b < a or dt <= 0:
            return None
        return b - a

    def perdecode(section: str, key: str) -> float | None:
        d = delta(section, key)
        return None if d is None else d / dt

    out: dict[str, Any] = {
        "dt_s": dt,
        "ops_per_s_instantaneous": _num(cur, "stats", "instantaneous_ops_per_sec"),
        "ops_per_s": perdecode("stats", "total_commands_processed"),
        "rejected_connections_per_s": perdecode("stats", "rejected_connections"),
        "connections_per_s": perdecode("stats", "total_connections_received"),
    }
    cpu = [delta("cpu", k) for k in ("used_cpu_sys", "used_cpu_user")]
    out["cpu_percent"] = None if None in cpu or dt <= 0 else round(100.0 * sum(cpu) / dt, 2)
    hits, misses = delta("stats", "keyspace_hits"), delta("stats", "keyspace_misses")
    out["hit_ratio"] = (hits / (hits + misses)) if hits is not None and misses is not None and hits + misses else None
    calls: dict[str, float] = {}
    pc, cc = prev.get("commandstats", {}), cur.get("commandstats", {})
    for name, stat in cc.items():
        if not isinstance(stat, dict) or not isinstance(stat.get("calls"), int):
            continue
        before = pc.get(name, {}).get("calls", 0) if isinstance(pc.get(name), dict) else 0
        if isinstance(before, int) and stat["calls"] > before and dt > 0:
            calls[name.removeprefix("cmdstat_")] = (stat["calls"] - before) / dt
    out["calls_per_s"] = dict(sorted(calls.items(), key=lambda kv: -kv[1]))
    return out


# ---------------------------------------------------------------------------------------------
# CONFIG GET, SLOWLOG GET, LATENCY LATEST (pure parsers over the decoded RESP reply)
# ---------------------------------------------------------------------------------------------

# Real reply to `CONFIG GET maxclients timeout maxmemory-policy` (config.resp), decoded:
#   [b'maxclients', b'10000', b'maxmemory-policy', b'allkeys-lfu', b'timeout', b'0']

def parse_config(reply: Any) -> dict[str, Any]:
    if isinstance(reply, RedisError):
        raise reply
    if not isinstance(reply, list):
        raise RedisError(f"CONFIG GET: expected an array, got {type(reply).__name__}")
    pairs = reply[: len(reply) // 2 * 2]
    return {decode(pairs[i]): _typed(decode(pairs[i + 1])) for i in range(0, len(pairs), 2)}


def fetch_config(conn: Conn) -> dict[str, Any]:
    return parse_config(conn.call("CONFIG", "GET", *CONFIG_KEYS))


# Real reply to `SLOWLOG GET 10` (slowlog.resp), one entry decoded:
#   [0, 1795786974, 12106, [b'DEBUG', b'SLEEP', b'0.012'], b'127.213.134.9:52483', b'slowpoke']
#   id, unix time, microseconds, argv (Redis truncates it to 32 args / 128 bytes), addr, name

def parse_slowlog(reply: Any) -> list[dict[str, Any]]:
    if isinstance(reply, RedisError):
        raise reply
    if not isinstance(reply, list):
        raise RedisError(f"SLOWLOG GET: expected an array, got {type(reply).__name__}")
    out = []
    for e in reply:
        if not isinstance(e, list) or len(e) < 4 or not all(isinstance(x, int) for x in e[:3]):
            continue  # a malformed entry is skipped, the rest kept
        # `args` (and `command`) carry the raw arguments, credentials, values and keys included:
        # the control plane keeps only what collectors/redact.py makes of them.
        args = e[3] if isinstance(e[3], list) else []
        out.append({"id": e[0], "at": e[1], "usec": e[2],
                    "command": " ".join(decode(a) for a in args)[:200],
                    "args": [decode(a) for a in args[:32]],
                    "client": decode(e[4]) if len(e) > 4 and e[4] is not None else "",
                    "name": decode(e[5]) if len(e) > 5 and e[5] is not None else ""})
    return out


def fetch_slowlog(conn: Conn, n: int = 10) -> list[dict[str, Any]]:
    return parse_slowlog(conn.call("SLOWLOG", "GET", n))


# Real reply to `LATENCY LATEST` (latency.resp), decoded (threshold 5 ms, DEBUG SLEEP 0.012):
#   [[b'command', 1795786974, 12, 12]]     event, unix time of latest, latest ms, max ms

def parse_latency(reply: Any) -> list[dict[str, Any]]:
    if isinstance(reply, RedisError):
        raise reply
    if not isinstance(reply, list):
        raise RedisError(f"LATENCY LATEST: expected an array, got {type(reply).__name__}")
    out = []
    for e in reply:
        if not isinstance(e, list) or len(e) < 4 or not all(isinstance(x, int) for x in e[1:4]):
            continue
        out.append({"event": decode(e[0]), "at": e[1], "latest_ms": e[2], "max_ms": e[3]})
    return out


def fetch_latency(conn: Conn) -> list[dict[str, Any]]:
    return parse_latency(conn.call("LATENCY", "LATEST"))


# ---------------------------------------------------------------------------------------------
# Hot keys (LFU policies only): a bounded SCAN, then OBJECT FREQ pipelined.
# ---------------------------------------------------------------------------------------------

def fetch_hotkeys(conn: Conn, policy: str | None, max_keys: int = 1000, count: int = 100,
                  top: int = 10) -> dict[str, Any]:
    if policy not in LFU_POLICIES:
        return {"skipped": f"maxmemory-policy is {policy!r}, not an LFU policy; OBJECT FREQ needs "
                           f"{' or '.join(LFU_POLICIES)}", "keys": [], "sampled": 0}
    keys: list[bytes] = []
    cursor, rounds = b"0", 0
    while len(keys) < max_keys and rounds < max(1, max_keys // max(count, 1)) * 4:
        rounds += 1
        reply = conn.call("SCAN", cursor, "COUNT", count)
        cursor, batch = reply[0], reply[1]
        keys.extend(batch)
        if cursor in (b"0", 0):
            break
    keys = keys[:max_keys]
    freqs = conn.pipeline([("OBJECT", "FREQ", k) for k in keys])
    pairs = [(f, k) for f, k in zip(freqs, keys) if isinstance(f, int)]
    best = heapq.nlargest(top, pairs)
    return {"skipped": None, "sampled": len(keys), "complete": cursor in (b"0", 0),
            "keys": [{"key": decode(k), "freq": f} for f, k in best]}


# ---------------------------------------------------------------------------------------------
# The collector
# ---------------------------------------------------------------------------------------------

# INFO, CONFIG, SLOWLOG and LATENCY go in one round trip; each reply is its own section.
SECTIONS = [("INFO", "all"), ("CONFIG", "GET", *CONFIG_KEYS), ("SLOWLOG", "GET", 10), ("LATENCY", "LATEST")]


def _reply(value: Any) -> Any:
    """A pipelined reply, or the error reply raised."""
    if isinstance(value, RedisError):
        raise value
    return value


def _section(name: str, fn, data: dict, errors: dict, lost: list | None = None) -> Any:
    """fn()'s result as data[name], or None with the error in errors[name]; an error that leaves
    the connection unusable is also appended to `lost`."""
    try:
        data[name] = fn()
    except (RedisError, OSError, ValueError, IndexError, TypeError) as exc:
        log.warning("redis section %s failed: %s", name, exc)
        errors[name] = f"{type(exc).__name__}: {exc}"
        data[name] = None
        if lost is not None and isinstance(exc, LOST):
            lost.append(exc)
    return data[name]


def collect(target: Target, previous: Observation | None = None) -> Observation:
    """INFO, CONFIG, SLOWLOG, LATENCY and (LFU only) hot keys of one shard, each its own section.
    `previous` is not needed: rates between two INFO samples are the control plane's figures."""
    at, t0 = time.time(), time.perf_counter()

    def down(exc: BaseException | str) -> Observation:
        error = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
        return Observation("redis", target.shard, at, False, time.perf_counter() - t0, None, error)

    try:
        conn, reused = checkout(target)
    except (OSError, RedisError) as exc:       # RedisError: AUTH refused (WRONGPASS)
        return down(exc)
    try:
        replies = conn.pipeline(SECTIONS)
    except LOST as exc:
        conn.close()
        if not (reused and isinstance(exc, STALE)):
            # The shard accepted the connection and then said nothing: treat it as down.
            return down(exc)
        try:                                  # kept, and closed since: once more on a new one
            conn = connect(target)
            replies = conn.pipeline(SECTIONS)
        except (OSError, RedisError) as exc2:
            conn.close()
            return down(exc2)
    data: dict[str, Any] = {"shard": target.shard, "address": conn.address}
    errors: dict[str, str] = {}
    lost: list[BaseException] = []
    info_r, config_r, slowlog_r, latency_r = replies
    _section("info", lambda: parse_info(_reply(info_r) or b""), data, errors)
    config = _section("config", lambda: parse_config(config_r), data, errors)
    _section("slowlog", lambda: parse_slowlog(slowlog_r), data, errors)
    _section("latency", lambda: parse_latency(latency_r), data, errors)
    policy = (config or {}).get("maxmemory-policy")
    if config is None:
        data["hotkeys"] = {"skipped": "CONFIG GET failed, maxmemory-policy unknown", "keys": [], "sampled": 0}
    else:
        try:
            _section("hotkeys", lambda: fetch_hotkeys(conn, policy, max_keys=target.hotkeys_max), data, errors,
                     lost)
        except BaseException:
            conn.close()
            raise
    checkin(target, conn, not lost)
    return Observation("redis", target.shard, at, True, time.perf_counter() - t0, data, None, errors)
