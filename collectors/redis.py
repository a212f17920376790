"""Redis: INFO, CONFIG, SLOWLOG, LATENCY, hot keys and CLIENT LIST, straight from a shard.

One feature per function, as redis_exporter does it: each `parse_*` is a pure function over
the recorded reply (bytes/text or decoded RESP), with real sample lines pasted above it; each
`fetch_*` is the thin I/O beside it. `collect()` runs every section and logs and skips the one
that fails; `collect_clients()` is separate because CLIENT LIST blocks Redis for ~1 µs per
client and runs on its own, slower interval.

The client speaks RESP itself over a plain socket (`Conn`): CLIENT LIST of 10,000 clients is a
2.6 MB bulk string; reading it as raw bytes, pulling out only the four fields the aggregation
uses and counting their distinct combinations in C is what makes it ~5x cheaper end to end
(Redis itself spends about half of that building the reply) than redis-py's `client_list()`
(bench/clientlist.py).
"""

from __future__ import annotations

import gc
import heapq
import logging
import re
import socket
import time
from collections import Counter
from typing import Any

from collectors.base import Observation

log = logging.getLogger("chatops.collectors.redis")

TIMEOUT_S = 1.0
MAX_BULK = 64 * 1024 * 1024         # CLIENT LIST of ~250k clients; anything larger is hostile
LFU_POLICIES = ("allkeys-lfu", "volatile-lfu")
CONFIG_KEYS = ("maxclients", "timeout", "maxmemory-policy")


class RedisError(Exception):
    """An error reply (`-ERR ...`) or a broken reply from the server."""


class ProtocolError(RedisError):
    """The bytes are not RESP: truncated, garbage, or larger than we accept."""


# ---------------------------------------------------------------------------------------------
# RESP2: a pure reader over bytes, and a thin socket connection that feeds it.
# ---------------------------------------------------------------------------------------------

class _Reader:
    """RESP2 decoding over a growing buffer; `fill` is asked for more bytes when they run out."""

    def __init__(self, data: bytes = b"", sock: socket.socket | None = None):
        self.buf = bytearray(data)
        self.pos = 0
        self.sock = sock

    def _more(self) -> None:
        if self.sock is None:
            raise ProtocolError("truncated reply")
        if self.pos:
            del self.buf[:self.pos]
            self.pos = 0
        data = self.sock.recv(262144)
        if not data:
            raise ProtocolError("the server closed the connection")
        self.buf += data

    def line(self) -> bytes:
        while True:
            end = self.buf.find(b"\r\n", self.pos)
            if end >= 0:
                out = bytes(self.buf[self.pos:end])
                self.pos = end + 2
                return out
            if len(self.buf) - self.pos > 64 * 1024:
                raise ProtocolError("reply line longer than 64 KiB")
            self._more()

    def exact(self, n: int) -> bytes:
        while len(self.buf) - self.pos < n + 2:
            if self.sock is not None and n > 1 << 16:
                return self._bulk_into(n)
            self._more()
        out = bytes(self.buf[self.pos:self.pos + n])
        if self.buf[self.pos + n:self.pos + n + 2] != b"\r\n":
            raise ProtocolError("bulk string not terminated by CRLF")
        self.pos += n + 2
        return out

    def _bulk_into(self, n: int) -> bytes:
        # Big bulk (CLIENT LIST): one preallocated buffer, recv_into it, no repeated copies.
        have = self.buf[self.pos:]
        del self.buf[:]
        self.pos = 0
        out = bytearray(n + 2)
        view = memoryview(out)
        got = min(len(have), n + 2)
        view[:got] = have[:got]
        self.buf += have[got:]
        sock = self.sock
        while got < n + 2:
            k = sock.recv_into(view[got:])
            if not k:
                raise ProtocolError("connection closed in the middle of a reply")
            got += k
        view.release()
        if out[n:] != b"\r\n":
            raise ProtocolError("bulk string not terminated by CRLF")
        del out[n:]
        return bytes(out)

    def reply(self, raise_errors: bool = True) -> Any:
        head = self.line()
        if not head:
            raise ProtocolError("empty reply line")
        kind, rest = head[:1], head[1:]
        if kind == b"+":
            return rest.decode("utf-8", "replace")
        if kind == b"-":
            err = RedisError(rest.decode("utf-8", "replace"))
            if raise_errors:
                raise err
            return err
        if kind in (b":", b"$", b"*"):
            try:
                n = int(rest)
            except ValueError:
                raise ProtocolError(f"bad length in reply header {head[:40]!r}") from None
            if kind == b":":
                return n
            if n < 0:
                return None
            if kind == b"$":
                if n > MAX_BULK:
                    raise ProtocolError(f"bulk reply of {n} bytes exceeds {MAX_BULK}")
                return self.exact(n)
            if n > 10_000_000:
                raise ProtocolError(f"array of {n} elements is implausible")
            return [self.reply(raise_errors=False) for _ in range(n)]
        raise ProtocolError(f"not a RESP reply: {head[:40]!r}")


def parse_resp(data: bytes) -> Any:
    """Decode one recorded RESP2 reply (errors come back as RedisError values inside arrays)."""
    r = _Reader(data)
    return r.reply(raise_errors=False)


def encode_command(*args: str | bytes | int) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


class Conn:
    """One plain RESP2 connection: `call` for a command, `pipeline` for several in one trip."""

    def __init__(self, host: str, port: int, timeout: float = TIMEOUT_S, source: str | None = None):
        self.address = f"{host}:{port}"
        self.sock = socket.create_connection((host, port), timeout=timeout,
                                             source_address=(source, 0) if source else None)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = _Reader(sock=self.sock)

    def call(self, *args) -> Any:
        self.sock.sendall(encode_command(*args))
        return self.reader.reply()

    def pipeline(self, commands: list[tuple]) -> list[Any]:
        """Send all, then read all; an error reply comes back as a RedisError value in its place."""
        if not commands:
            return []
        self.sock.sendall(b"".join(encode_command(*c) for c in commands))
        return [self.reader.reply(raise_errors=False) for _ in commands]

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> Conn:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def source_address(cf) -> str | None:
    """Where the control plane's own connections come from: its listen address on a local
    cluster, so CLIENT LIST names them `controlplane` instead of an anonymous 127.0.0.1."""
    address = cf.controlplane.listen.address
    return address if cf.profile == "local" and address.startswith("127.") else None


def connect(cf, shard_name: str, timeout: float = TIMEOUT_S) -> Conn:
    """A connection to the shard's own address and port (not through a chat host's HAProxy)."""
    shard = find_shard(cf, shard_name)
    return Conn(cf.address(shard.host), shard.port, timeout, source_address(cf))


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

_NUM_RE = re.compile(r"^-?\d+$")
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

    def per_s(section: str, key: str) -> float | None:
        d = delta(section, key)
        return None if d is None else d / dt

    out: dict[str, Any] = {
        "dt_s": dt,
        "ops_per_s_instantaneous": _num(cur, "stats", "instantaneous_ops_per_sec"),
        "ops_per_s": per_s("stats", "total_commands_processed"),
        "rejected_connections_per_s": per_s("stats", "rejected_connections"),
        "connections_per_s": per_s("stats", "total_connections_received"),
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

def _s(v: Any) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def parse_config(reply: Any) -> dict[str, Any]:
    if isinstance(reply, RedisError):
        raise reply
    if not isinstance(reply, list):
        raise RedisError(f"CONFIG GET: expected an array, got {type(reply).__name__}")
    pairs = reply[: len(reply) // 2 * 2]
    return {_s(pairs[i]): _typed(_s(pairs[i + 1])) for i in range(0, len(pairs), 2)}


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
        args = e[3] if isinstance(e[3], list) else []
        out.append({"id": e[0], "at": e[1], "usec": e[2],
                    "command": " ".join(_s(a) for a in args)[:200],
                    "client": _s(e[4]) if len(e) > 4 and e[4] is not None else "",
                    "name": _s(e[5]) if len(e) > 5 and e[5] is not None else ""})
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
        out.append({"event": _s(e[0]), "at": e[1], "latest_ms": e[2], "max_ms": e[3]})
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
            "keys": [{"key": _s(k), "freq": f} for f, k in best]}


# ---------------------------------------------------------------------------------------------
# CLIENT LIST: the fast path
# ---------------------------------------------------------------------------------------------

# Real lines from `CLIENT LIST` on Redis 7.0.15 (tests/fixtures/redis/client_list.txt):
#   id=5 addr=127.213.134.9:40071 laddr=127.213.134.21:6379 fd=9 name= age=2 idle=2 flags=N db=0
#     sub=0 psub=0 ssub=0 multi=-1 qbuf=0 qbuf-free=4 argv-mem=0 multi-mem=0 rbs=1024 rbp=0 obl=0
#     oll=0 omem=0 tot-mem=1800 events=r cmd=NULL user=default redir=-1 resp=2
#   id=9 addr=127.213.134.1:47509 laddr=127.213.134.21:6379 fd=13 name=clue-busy age=2 idle=0
#     flags=N db=0 ... omem=0 tot-mem=22272 events=r cmd=get user=default redir=-1 resp=2
# Fields are space separated and values cannot hold spaces (CLIENT SETNAME refuses them), but
# they can hold '=' (name=a=b), so a field splits on its first '='. Newer servers append fields
# (lib-name=, lib-ver=, io-thread=): the fast regex skips anything it does not name, and a line
# it cannot read sends the whole reply down the per-line path (counted in `skipped`).

# Only what the per-host aggregation needs is pulled from every line, in one regex pass over
# the whole reply: source IPv4 address, age, idle, cmd (IPv6 and Unix-socket clients take the
# per-line path). Greedy `.* cmd=` lands on the line's last " cmd=" (`.` stops at the newline),
# which is the real field: values hold no spaces, so " cmd=" cannot hide inside one.
# `findall` returns (ip, age, idle, cmd) tuples and a C-level Counter folds them: clients that
# connected and went idle in the same burst share one tuple, so the Python aggregation loop
# runs over distinct tuples (a few dozen for 10,000 burst-opened clients; at worst one per
# client, as before). The full detail (laddr, name, flags, omem...) is read only for the
# bounded top-N lines, found by searching the reply for their idle value.
_CLIENT_RE = re.compile(
    rb" addr=([\d.]*):\d+ laddr=\S* fd=\d+ name=\S* age=(\d+) idle=(\d+) .* cmd=(\S*)")
# The same, with the port: the per-client columns, built only when asked for (clients(), tests).
_CLIENT_COLS_RE = re.compile(
    rb" addr=([\d.]*):(\d+) laddr=\S* fd=\d+ name=\S* age=(\d+) idle=(\d+) .* cmd=(\S*)")
_DETAIL = (b"addr", b"laddr", b"name", b"age", b"idle", b"flags", b"omem", b"cmd")


def _line_detail(line: bytes, ip: bytes) -> dict[str, Any]:
    """Every wanted field of one line, split on each field's first '=' (name=a=b -> 'a=b')."""
    d = _fields(line)
    out: dict[str, Any] = {f.decode(): _s(d.get(f, b"")) for f in _DETAIL}
    for f in ("age", "idle", "omem"):
        out[f] = int(out[f]) if out[f].isdigit() else None
    out["ip"] = _s(ip).strip("[]")
    return out


class ClientList:
    """CLIENT LIST, counted: `groups` maps (ip, age, idle, cmd) to how many clients share it.

    The fast path fills only `groups` (ip and cmd bytes, age and idle as digit bytes) and keeps
    the raw reply; the per-client columns (`ips`, `ports`, `ages`, `idles`, `cmds`, same order
    as the reply's usable lines) are built lazily for `detail`/`clients`. The per-line path
    (slow_path) fills the columns and `raw_lines` directly and derives `groups` from them.
    """

    def __init__(self, groups: Counter | None = None, raw: bytes = b"", lines: int = 0, skipped: int = 0,
                 slow_path: bool = False, columns: tuple[list, list, list, list, list] | None = None,
                 raw_lines: list[bytes] | None = None):
        self.raw = raw                  # the reply, to search lazily for the top-N detail
        self.lines = lines              # non-empty lines in the reply
        self.skipped = skipped          # lines without a usable addr/age/idle (truncated, garbage)
        self.slow_path = slow_path      # the one-regex fast path did not fit; split per line
        self.raw_lines = raw_lines      # usable lines, when already split (slow path)
        self._cols = columns
        if groups is None:
            cols = columns or ([], [], [], [], [])
            groups = Counter(zip(cols[0], cols[2], cols[3], cols[4]))
        self.groups = groups
        self._n = sum(groups.values())

    def __len__(self) -> int:
        return self._n

    def _columns(self) -> tuple:
        if self._cols is None:
            found = _CLIENT_COLS_RE.findall(self.raw)
            if found:
                ips, ports, ages, idles, cmds = zip(*found)
                self._cols = (ips, ports, list(map(int, ages)), list(map(int, idles)), cmds)
            else:
                self._cols = ((), (), [], [], ())
        return self._cols

    ips = property(lambda self: self._columns()[0])
    ports = property(lambda self: self._columns()[1])
    ages = property(lambda self: self._columns()[2])
    idles = property(lambda self: self._columns()[3])
    cmds = property(lambda self: self._columns()[4])

    def line(self, k: int) -> bytes:
        if self.raw_lines is not None:
            return self.raw_lines[k]
        # Fast path: find the line by its unique source ip:port, starting the search near where
        # line k should be (lines are of similar length) rather than splitting 10,000 lines.
        raw = self.raw
        needle = b" addr=%s:%s " % (self.ips[k], self.ports[k])
        start = max(0, (k * len(raw) // max(self.lines, 1)) * 9 // 10 - 8192)
        i = raw.find(needle, start)
        if i < 0:
            i = raw.find(needle)
        end = raw.find(b"\n", i)
        return raw[raw.rfind(b"\n", 0, i) + 1:end if end >= 0 else len(raw)]

    def detail(self, k: int) -> dict[str, Any]:
        """Every wanted field of client k, split on each field's first '=' (name=a=b -> 'a=b')."""
        return _line_detail(self.line(k), self.ips[k])

    def clients(self) -> list[dict[str, Any]]:
        """Typed dicts for every client, for tests and small lists; the aggregation never builds these."""
        return [self.detail(k) for k in range(len(self))]

    def most_idle(self, top_n: int) -> list[dict[str, Any]]:
        """The top_n clients by idle, most idle first; ties keep the reply's order."""
        if top_n <= 0 or not self._n:
            return []
        if self.slow_path:
            idles = self.idles
            cut = sorted(idles)[-min(top_n, len(idles))]
            top = sorted((k for k, v in enumerate(idles) if v >= cut), key=lambda k: -idles[k])[:top_n]
            return [self.detail(k) for k in top]
        # Fast path: the largest idle values from the distinct tuples, then the first lines of the
        # reply carrying ` idle=<value> ` (a field starts after a space and values hold no spaces,
        # so the needle is the idle field itself; every line matched the fast regex).
        by_idle: dict[bytes, int] = Counter()
        for (_ip, _age, idle, _cmd), n in self.groups.items():
            by_idle[idle] += n
        raw, out = self.raw, []
        for idle in sorted(by_idle, key=int, reverse=True):
            # Stop at the known number of such lines: no scan to the end of 2.6 MB for the last.
            want = min(top_n, len(out) + by_idle[idle])
            needle = b" idle=" + idle + b" "
            i = raw.find(needle)
            while i >= 0 and len(out) < want:
                start = raw.rfind(b"\n", 0, i) + 1
                end = raw.find(b"\n", i)
                end = end if end >= 0 else len(raw)
                line = raw[start:end]
                m = _CLIENT_RE.search(line)
                out.append(_line_detail(line, m.group(1) if m else b""))
                i = raw.find(needle, end)
            if len(out) >= top_n:
                break
        return out


def _fields(line: bytes) -> dict[bytes, bytes]:
    d = {}
    for part in line.strip(b"\r").split(b" "):
        k, sep, v = part.partition(b"=")      # the first '=' only
        if sep:
            d[k] = v
    return d


def parse_client_list(data: bytes) -> ClientList:
    """Raw CLIENT LIST bytes -> ClientList, without building a dict of ~25 fields per client."""
    lines = data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)
    found = _CLIENT_RE.findall(data)
    if found and len(found) == lines:
        return ClientList(Counter(found), raw=data, lines=lines)
    # Something did not fit the Redis 7 layout (older server, truncated line, garbage): per line.
    ips, ports, ages, idles, cmds, raw_lines = [], [], [], [], [], []
    n = skipped = 0
    for line in data.split(b"\n"):
        if not line.strip(b"\r"):
            continue
        n += 1
        d = _fields(line)
        ip, sep, port = d.get(b"addr", b"").rpartition(b":")
        age, idle = d.get(b"age", b""), d.get(b"idle", b"")
        if not sep or not ip or not port.isdigit() or not age.isdigit() or not idle.isdigit():
            skipped += 1
            continue
        ips.append(ip)
        ports.append(port)
        ages.append(int(age))
        idles.append(int(idle))
        cmds.append(d.get(b"cmd", b""))
        raw_lines.append(line)
    return ClientList(raw=data, lines=n, skipped=skipped, slow_path=bool(data),  # empty is no problem
                      columns=(ips, ports, ages, idles, cmds), raw_lines=raw_lines)


def aggregate_clients(cl: ClientList, host_by_address: dict[str, str], cluster_of, idle_after: float = 60.0,
                      long_idle: float = 600.0, top_n: int = 20, top_commands: int = 5) -> dict[str, Any]:
    """Per source host: total, idle counts, oldest age, top commands; plus the top-N most idle clients.

    `host_by_address` maps an IP to a host name (unknown IPs stay as the IP); `cluster_of(host)`
    names the host's chat cluster, or None. Loops over the distinct (ip, age, idle, cmd) tuples
    that parse_client_list counted in C, not over every client.
    """
    hosts: dict[str, dict[str, Any]] = {}
    by_ip: dict[bytes, dict[str, Any]] = {}
    for (ip_b, age, idle, cmd), n in cl.groups.items():
        h = by_ip.get(ip_b)
        if h is None:
            ip = ip_b.strip(b"[]").decode("ascii", "replace")
            name = host_by_address.get(ip, ip)
            h = hosts.get(name)
            if h is None:
                h = hosts[name] = {"host": name, "addresses": [], "cluster": cluster_of(name) if name != ip else None,
                                   "count": 0, "idle_over": 0, "idle_over_long": 0, "oldest_age_s": 0,
                                   "max_idle_s": 0, "_cmds": Counter()}
            h["addresses"].append(ip)
            by_ip[ip_b] = h
        h["count"] += n
        age = int(age)
        if age > h["oldest_age_s"]:
            h["oldest_age_s"] = age
        idle = int(idle)
        if idle > idle_after:
            h["idle_over"] += n
            if idle > long_idle:
                h["idle_over_long"] += n
            if idle > h["max_idle_s"]:
                h["max_idle_s"] = idle
        h["_cmds"][_s(cmd)] += n
    by_host = sorted(hosts.values(), key=lambda h: (-h["count"], h["host"]))
    for h in by_host:
        h["top_commands"] = [[k, v] for k, v in h.pop("_cmds").most_common(top_commands)]
    most_idle = cl.most_idle(top_n)
    for c in most_idle:
        c["host"] = host_by_address.get(c["ip"], c["ip"])
    return {"total": len(cl), "idle_after_s": idle_after, "long_idle_s": long_idle,
            "by_host": by_host, "most_idle": most_idle, "lines": cl.lines, "skipped_lines": cl.skipped,
            "slow_path": cl.slow_path}


def fetch_client_list(conn: Conn) -> bytes:
    raw = conn.call("CLIENT", "LIST")
    if not isinstance(raw, bytes):
        raise RedisError(f"CLIENT LIST: expected a bulk string, got {type(raw).__name__}")
    return raw


def _client_list_cost(conn: Conn) -> tuple[int, int] | None:
    stat = fetch_info(conn, "commandstats").get("commandstats", {}).get("cmdstat_client|list")
    if isinstance(stat, dict) and isinstance(stat.get("calls"), int) and isinstance(stat.get("usec"), int):
        return stat["calls"], stat["usec"]
    return (0, 0) if stat is None else None


def clients_snapshot(conn: Conn, cf, measure_cost: bool = True, top_n: int = 20) -> dict[str, Any]:
    """CLIENT LIST -> per-host aggregate, with what the call cost Redis (from INFO commandstats)."""
    from cluster.durations import seconds
    idle_after = seconds(cf.controlplane.thresholds.idle_client_after)
    before = _client_list_cost(conn) if measure_cost else None
    # The parse allocates ~50k short-lived acyclic objects; pausing the cyclic GC for those
    # milliseconds spares a few full collections over whatever else the process holds.
    gc_was_on = gc.isenabled()
    gc.disable()
    try:
        t0 = time.perf_counter()
        raw = fetch_client_list(conn)
        t1 = time.perf_counter()
        agg = aggregate_clients(parse_client_list(raw), cf.host_by_address(), cf.cluster_of,
                                idle_after=idle_after, long_idle=max(600.0, idle_after), top_n=top_n)
        t2 = time.perf_counter()
    finally:
        if gc_was_on:
            gc.enable()
    agg.update(bytes=len(raw), fetch_ms=round((t1 - t0) * 1000, 3), parse_ms=round((t2 - t1) * 1000, 3))
    after = _client_list_cost(conn) if measure_cost else None
    if before and after and after[0] - before[0] == 1:
        agg["redis_usec"] = after[1] - before[1]
    else:
        agg["redis_usec"] = None
    return agg


# ---------------------------------------------------------------------------------------------
# The collectors
# ---------------------------------------------------------------------------------------------

def _section(name: str, fn, data: dict, errors: dict) -> Any:
    try:
        data[name] = fn()
    except (RedisError, OSError, ValueError, IndexError, TypeError) as exc:
        log.warning("redis section %s failed: %s", name, exc)
        errors[name] = f"{type(exc).__name__}: {exc}"
        data[name] = None
    return data[name]


def collect(cf, shard_name: str, timeout: float = TIMEOUT_S, hotkeys_max: int = 1000) -> Observation:
    """INFO, CONFIG, SLOWLOG, LATENCY and (LFU only) hot keys of one shard, each its own section."""
    at, t0 = time.time(), time.perf_counter()
    shard = find_shard(cf, shard_name)
    target = shard_name
    try:
        conn = Conn(cf.address(shard.host), shard.port, timeout, source_address(cf))
    except OSError as exc:
        return Observation("redis", target, at, False, time.perf_counter() - t0, None,
                           f"{type(exc).__name__}: {exc}")
    data: dict[str, Any] = {"shard": shard_name, "address": conn.address}
    errors: dict[str, str] = {}
    try:
        info = _section("info", lambda: fetch_info(conn), data, errors)
        if info is None and isinstance(errors.get("info"), str) and errors["info"].startswith(
                ("TimeoutError", "ConnectionResetError", "BrokenPipeError", "ProtocolError")):
            # The shard accepted the connection and then said nothing: treat it as down.
            return Observation("redis", target, at, False, time.perf_counter() - t0, None, errors["info"])
        config = _section("config", lambda: fetch_config(conn), data, errors)
        _section("slowlog", lambda: fetch_slowlog(conn), data, errors)
        _section("latency", lambda: fetch_latency(conn), data, errors)
        policy = (config or {}).get("maxmemory-policy")
        if config is None:
            data["hotkeys"] = {"skipped": "CONFIG GET failed, maxmemory-policy unknown", "keys": [], "sampled": 0}
        else:
            _section("hotkeys", lambda: fetch_hotkeys(conn, policy, max_keys=hotkeys_max), data, errors)
    finally:
        conn.close()
    return Observation("redis", target, at, True, time.perf_counter() - t0, data, None, errors)


def collect_clients(cf, shard_name: str, timeout: float = TIMEOUT_S, top_n: int = 20) -> Observation:
    """CLIENT LIST of one shard, aggregated per source host (its own, slower interval)."""
    at, t0 = time.time(), time.perf_counter()
    shard = find_shard(cf, shard_name)
    try:
        with Conn(cf.address(shard.host), shard.port, timeout, source_address(cf)) as conn:
            data = clients_snapshot(conn, cf, top_n=top_n)
            data["shard"] = shard_name
    except (OSError, RedisError) as exc:
        return Observation("clients", shard_name, at, False, time.perf_counter() - t0, None,
                           f"{type(exc).__name__}: {exc}")
    return Observation("clients", shard_name, at, True, time.perf_counter() - t0, data)
