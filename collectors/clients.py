"""Redis CLIENT LIST, counted per source host: the talk's `lsof | cut | sort | uniq -c`, done properly.

`parse_client_list` and `aggregate_clients` are pure functions over the recorded reply bytes, and
`summarize` does both in one pass of the compiled scanner (collectors/clientscan.c) when it is
built; `fetch_client_list` and `snapshot` are the thin I/O beside them over a `collectors.resp.Conn`;
`collect(target)` wraps one shard's snapshot in an Observation. It is its own source (not a
section of collectors/redis.py) because CLIENT LIST blocks Redis for ~1 us per client and runs on
its own, slower interval.

Why it is cheap: CLIENT LIST of 10,000 clients is a 2.6 MB bulk string. hiredis reads it as one
bytes object (collectors/resp.py) in about the time Redis takes to build it; the compiled scanner
counts it per source IP in ~1 ms and Python folds a few rows per host. End to end that is ~1.3x
Redis's own time and ~9x cheaper than redis-py's `client_list()` (bench/clientlist.py). Without
the scanner, one regex pass pulls out only the four fields the aggregation uses and a C-level
Counter folds their distinct combinations: ~6x the scanner's CPU, the same results.
"""

from __future__ import annotations

import gc
import re
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from collectors import clientscan
from collectors.base import Observation, source_address
from collectors.redis import admin_auth, fetch_info, find_shard, on_shard
from collectors.resp import TIMEOUT_S, Conn, RedisError, decode

LONG_IDLE_S = 600.0      # the second idle column; at least idle_after


@dataclass(frozen=True)
class Target:
    shard: str
    address: str                  # the shard's own address and port
    port: int
    source: str | None = None     # local address our connection comes from
    # IP -> host name, host -> its chat cluster: how source addresses are named and grouped
    hosts: Mapping[str, str] = field(default_factory=dict, hash=False)
    clusters: Mapping[str, str] = field(default_factory=dict, hash=False)
    idle_after: float = 60.0      # a client idle longer than this counts as idle
    long_idle: float = LONG_IDLE_S
    top_n: int = 20               # most idle clients listed with their detail
    measure_cost: bool = True     # read INFO commandstats around the call: what it cost Redis
    timeout: float = TIMEOUT_S
    auth: Any = field(default=None, hash=False)    # the control plane's ACL user (redis.admin_auth)


def target_for(cf, shard_name: str, timeout: float = TIMEOUT_S, top_n: int = 20,
               measure_cost: bool = True) -> Target:
    """The shard named in the cluster file, with its host names and idle threshold; raises
    collectors.redis.UnknownShard."""
    from cluster.durations import seconds

    shard = find_shard(cf, shard_name)
    idle_after = seconds(cf.controlplane.thresholds.idle_client_after)
    clusters: dict[str, str] = {}
    for host, cluster in cf.chat_hosts():
        clusters.setdefault(host, cluster)      # as cf.cluster_of: the first cluster listing it
    return Target(shard_name, cf.address(shard.host), shard.port, source_address(cf),
                  cf.host_by_address(), clusters, idle_after,
                  max(LONG_IDLE_S, idle_after), top_n, measure_cost, timeout, admin_auth(cf))


# ---------------------------------------------------------------------------------------------
# CLIENT LIST: the pure parser and the aggregation
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
# age and idle take at most 18 digits (an int64 has 19): int() refuses more than 4,300, and a line
# with a longer one goes the per-line way, which skips it.
_CLIENT_RE = re.compile(
    rb" addr=([\d.]+):\d+ laddr=\S* fd=\d+ name=\S* age=(\d{1,18}) idle=(\d{1,18}) .* cmd=(\S*)")
# The same, with the port: the per-client columns, built only when asked for (clients(), tests).
_CLIENT_COLS_RE = re.compile(
    rb" addr=([\d.]+):(\d+) laddr=\S* fd=\d+ name=\S* age=(\d{1,18}) idle=(\d{1,18}) .* cmd=(\S*)")
_DETAIL = (b"addr", b"laddr", b"name", b"age", b"idle", b"flags", b"omem", b"cmd")


def _count(value: str | bytes) -> int | None:
    """A field of ASCII digits that fits an int64, else None: '²'.isdigit() is true and int()
    refuses it, as it refuses more than 4,300 digits."""
    return int(value) if value.isdigit() and value.isascii() and len(value) <= 18 else None


def _line_detail(line: bytes, ip: bytes) -> dict[str, Any]:
    """Every wanted field of one line, split on each field's first '=' (name=a=b -> 'a=b')."""
    d = _fields(line)
    out: dict[str, Any] = {f.decode(): decode(d.get(f, b"")) for f in _DETAIL}
    for f in ("age", "idle", "omem"):
        out[f] = _count(out[f])
    out["ip"] = decode(ip).strip("[]")
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


def parse_client_list(data: bytes, per_line: bool = False) -> ClientList:
    """Raw CLIENT LIST bytes -> ClientList, without building a dict of ~25 fields per client.

    The per-line path is the definition (a key given twice keeps its last value, which the one
    regex does not check: Redis never repeats one); per_line=True takes it even when the reply fits."""
    lines = data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)
    found = None if per_line else _CLIENT_RE.findall(data)
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
        age, idle = _count(age), _count(idle)
        if not sep or not ip or not port.isdigit() or age is None or idle is None:
            skipped += 1
            continue
        ips.append(ip)
        ports.append(port)
        ages.append(age)
        idles.append(idle)
        cmds.append(d.get(b"cmd", b""))
        raw_lines.append(line)
    return ClientList(raw=data, lines=n, skipped=skipped, slow_path=bool(data),  # empty is no problem
                      columns=(ips, ports, ages, idles, cmds), raw_lines=raw_lines)


UNUSED_AFTER_S = 2        # younger, a connection may not have sent its first command yet


def _new_host(name: str, ip: str, cluster_of) -> dict[str, Any]:
    return {"host": name, "addresses": [], "cluster": cluster_of(name) if name != ip else None,
            "count": 0, "idle_over": 0, "idle_over_long": 0, "unused": 0, "oldest_age_s": 0,
            "max_idle_s": 0, "_cmds": Counter()}


def _host_of(ip_b: bytes, hosts: dict[str, dict[str, Any]], host_by_address, cluster_of) -> dict[str, Any]:
    """The host row an IP (as written in addr=) counts into, created on first sight."""
    ip = ip_b.strip(b"[]").decode("ascii", "replace")
    name = host_by_address.get(ip, ip)
    h = hosts.get(name)
    if h is None:
        h = hosts[name] = _new_host(name, ip, cluster_of)
    h["addresses"].append(ip)
    return h


def _finish(hosts: dict[str, dict[str, Any]], most_idle: list[dict[str, Any]], host_by_address, total: int,
            lines: int, skipped: int, slow_path: bool, idle_after: float, long_idle: float,
            top_commands: int) -> dict[str, Any]:
    by_host = sorted(hosts.values(), key=lambda h: (-h["count"], h["host"]))
    for h in by_host:
        h["top_commands"] = [[k, v] for k, v in h.pop("_cmds").most_common(top_commands)]
    for c in most_idle:
        c["host"] = host_by_address.get(c["ip"], c["ip"])
    return {"total": total, "idle_after_s": idle_after, "long_idle_s": long_idle,
            "by_host": by_host, "most_idle": most_idle, "lines": lines, "skipped_lines": skipped,
            "slow_path": slow_path}


def aggregate_clients(cl: ClientList, host_by_address: dict[str, str], cluster_of, idle_after: float = 60.0,
                      long_idle: float = 600.0, top_n: int = 20, top_commands: int = 5) -> dict[str, Any]:
    """Per source host: total, idle counts, oldest age, top commands; plus the top-N most idle clients.

    `unused`: connections at least UNUSED_AFTER_S old that have done nothing since they connected
    (idle within a second of their age): a leak's connections, counted long before they have been
    idle for `idle_after`. A pool's connections are used, so they stay out of it.

    `host_by_address` maps an IP to a host name (unknown IPs stay as the IP); `cluster_of(host)`
    names the host's chat cluster, or None. Loops over the distinct (ip, age, idle, cmd) tuples
    that parse_client_list counted in C, not over every client. The pure-Python reference for
    `summarize`'s compiled scanner.
    """
    hosts: dict[str, dict[str, Any]] = {}
    by_ip: dict[bytes, dict[str, Any]] = {}
    for (ip_b, age, idle, cmd), n in cl.groups.items():
        h = by_ip.get(ip_b)
        if h is None:
            h = by_ip[ip_b] = _host_of(ip_b, hosts, host_by_address, cluster_of)
        h["count"] += n
        age = int(age)
        if age > h["oldest_age_s"]:
            h["oldest_age_s"] = age
        idle = int(idle)
        if age >= UNUSED_AFTER_S and idle >= age - 1:
            h["unused"] += n
        if idle > idle_after:
            h["idle_over"] += n
            if idle > long_idle:
                h["idle_over_long"] += n
            if idle > h["max_idle_s"]:
                h["max_idle_s"] = idle
        h["_cmds"][decode(cmd)] += n
    return _finish(hosts, cl.most_idle(top_n), host_by_address, len(cl), cl.lines, cl.skipped, cl.slow_path,
                   idle_after, long_idle, top_commands)


def summarize(raw: bytes, host_by_address: dict[str, str], cluster_of, idle_after: float = 60.0,
              long_idle: float = 600.0, top_n: int = 20, top_commands: int = 5,
              compiled: bool | None = None) -> dict[str, Any]:
    """aggregate_clients(parse_client_list(raw), ...), in one pass of collectors/clientscan.c when
    it is built (compiled=None: when available; False: the Python path). The same dict either way,
    except `slow_path`, which only the Python parser takes (always False here when compiled)."""
    if compiled is None:
        compiled = clientscan.AVAILABLE
    if not compiled:
        return aggregate_clients(parse_client_list(raw), host_by_address, cluster_of, idle_after=idle_after,
                                 long_idle=long_idle, top_n=top_n, top_commands=top_commands)
    sc = clientscan.scan(raw, idle_after, long_idle, UNUSED_AFTER_S, top_n)
    hosts: dict[str, dict[str, Any]] = {}
    rows = []
    total = 0
    for r in sc.ips:
        h = _host_of(r.ip, hosts, host_by_address, cluster_of)
        rows.append(h)
        total += r.count
        h["count"] += r.count
        h["idle_over"] += r.idle_over
        h["idle_over_long"] += r.idle_over_long
        h["unused"] += r.unused
        h["oldest_age_s"] = max(h["oldest_age_s"], r.oldest_age)
        h["max_idle_s"] = max(h["max_idle_s"], r.max_idle)
    for k, cmd, n in sc.cmds:
        rows[k]["_cmds"][decode(cmd)] += n
    most_idle = [_line_detail(raw[start:end], ip) for start, end, ip in sc.top]
    return _finish(hosts, most_idle, host_by_address, total, sc.lines, sc.skipped, False,
                   idle_after, long_idle, top_commands)


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


def snapshot(conn: Conn, target: Target) -> dict[str, Any]:
    """CLIENT LIST -> per-host aggregate, with what the call cost Redis (from INFO commandstats)."""
    before = _client_list_cost(conn) if target.measure_cost else None
    # The parse allocates ~50k short-lived acyclic objects; pausing the cyclic GC for those
    # milliseconds spares a few full collections over whatever else the process holds.
    gc_was_on = gc.isenabled()
    gc.disable()
    try:
        t0 = time.perf_counter()
        raw = fetch_client_list(conn)
        t1 = time.perf_counter()
        agg = summarize(raw, target.hosts, target.clusters.get, idle_after=target.idle_after,
                        long_idle=target.long_idle, top_n=target.top_n)
        t2 = time.perf_counter()
    finally:
        if gc_was_on:
            gc.enable()
    agg.update(bytes=len(raw), scanner="compiled" if clientscan.AVAILABLE else "python",
               fetch_ms=round((t1 - t0) * 1000, 3), parse_ms=round((t2 - t1) * 1000, 3))
    after = _client_list_cost(conn) if target.measure_cost else None
    if before and after and after[0] - before[0] == 1:
        agg["redis_usec"] = after[1] - before[1]
    else:
        agg["redis_usec"] = None
    return agg


def collect(target: Target, previous: Observation | None = None) -> Observation:
    """CLIENT LIST of one shard, aggregated per source host. `previous` is not needed."""
    at, t0 = time.time(), time.perf_counter()
    try:
        data = on_shard(target, lambda conn: snapshot(conn, target))
        data["shard"] = target.shard
    except (OSError, RedisError) as exc:
        return Observation("clients", target.shard, at, False, time.perf_counter() - t0, None,
                           f"{type(exc).__name__}: {exc}")
    return Observation("clients", target.shard, at, True, time.perf_counter() - t0, data)
