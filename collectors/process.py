"""Process stats and per-host connection counts for the supervisor's processes.

The talk's on-call view, as code: `top` (CPU, memory, threads, file descriptors of the Redis and
HAProxy processes) and `sudo lsof -p <redis pid> | ... | sort | uniq -c` (how many connections
each remote host holds to a Redis port). Pure parsers beside thin fetchers:

- `process_stats(pids, previous=None)` -> {pid: ProcStats} with psutil. CPU % is the
  cpu_times delta against a *previous observation passed in* (the last scrape's ProcStats): no
  sleeping inside the collector, and the figure covers the whole scrape interval rather than a
  50 ms glimpse. Without a previous sample (first scrape, new or restarted pid) `cpu_percent` is
  None, never a made-up 0.0. A pid that vanished (or is a zombie) is reported with `gone=True`;
  psutil's exceptions never escape.
- `parse_proc_net_tcp(text, ports=None)` -> [TcpEntry]: pure parser of /proc/net/tcp and
  /proc/net/tcp6 (little-endian hex addresses; IPv4-mapped IPv6 addresses come back as dotted
  IPv4; bad rows skipped). `ports` keeps only rows with one of those ports on either end.
- `connections_by_remote(entries, local_port, local_ip=None, state="ESTABLISHED")` ->
  Counter[remote_ip]: the `lsof | uniq -c` view. `time_wait_count(entries, port, ip=None)`:
  sockets in TIME_WAIT on either side of `port`, the churn signal of missing keepalives.
- `read_proc_net_tcp(proc_root="/proc", ports=None)`: the text table's I/O, with an
  injectable root (prometheus/client_python's `proc=` habit) so a recorded tree stands in for
  the OS in tests.
- `tcp_sockets(proc_root="/proc", ports=None, max_age=0)`: what the collectors call: the real
  /proc's sockets come from sock_diag netlink (collectors/sockdiag.py, ~5x less CPU than the
  text table), falling back to the text; callers that accept a snapshot up to `max_age` s old
  share one read (the control plane's sources, all on one tick).
- `collect(target, previous=None)` -> Observation(source="process", target=<run dir, or the
  target's name>, data=ProcessSnapshot([ProcessReport(name, kind, host, address, port, stats,
  connections={remote host name or IP: n}, time_wait, restarts)])); `restarts` is state.json's
  count of the supervisor's restarts of that process. Connections are counted for redis and
  haproxy processes only (None for the others); a missing state file gives up=False; an
  unreadable /proc or cluster file costs only its section (`section_errors`).

Why /proc/net/tcp and not psutil: psutil.net_connections() also reads /proc/net/tcp*, but then
builds an inode->pid map by listing every /proc/<pid>/fd/* on the host and builds a namedtuple
per socket; we need neither (the port already says whose socket it is). The /proc path filters
rows by port on the raw hex before decoding anything, and caches address decoding.

Measured on this machine (2 cores, Python 3.11, psutil 7.2.2, shared and noisy), `python -m
bench.proc_sockets`: 2,000 loopback connections open (4,001 sockets of ours, on one
port) in a host table of ~11,000 TCP sockets; medians of 7 interleaved runs, three process runs:

    psutil.net_connections(kind="tcp")             123 / 129 / 152 ms  (system-wide)
    psutil.Process(pid).net_connections("tcp")      76 / 105 /  95 ms  (the process holding them)
    read_proc_net_tcp() + parse all + count         58 /  57 /  74 ms
    read_proc_net_tcp(ports=[p]) + count            41 /  45 /  60 ms  (what collect() does)
      of which reading tcp+tcp6 text alone          24 /  24 /  26 ms  (kernel formatting)

so the chosen path is 2.5-3x cheaper than psutil.net_connections(), and most of what remains is
the kernel printing the table (plus decoding the 4,000 rows that really are on the port). Its
cost grows with the host's socket count only; psutil's also grows with every process's open
files, which on a loaded chat host is the larger number.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from cluster.rundir import RunDir
from collectors.base import Observation

# /proc/net/tcp `st` column (include/net/tcp_states.h)
TCP_STATES = {
    0x01: "ESTABLISHED", 0x02: "SYN_SENT", 0x03: "SYN_RECV", 0x04: "FIN_WAIT1",
    0x05: "FIN_WAIT2", 0x06: "TIME_WAIT", 0x07: "CLOSE", 0x08: "CLOSE_WAIT",
    0x09: "LAST_ACK", 0x0A: "LISTEN", 0x0B: "CLOSING", 0x0C: "NEW_SYN_RECV",
}

# Process kinds whose listening port is worth counting connections on.
COUNTED_KINDS = ("redis", "haproxy")


# --- process stats (psutil) -------------------------------------------------------------------

@dataclass(frozen=True)
class ProcStats:
    pid: int
    gone: bool = False               # the process no longer exists (or is a zombie)
    status: str = ""                 # psutil status: running, sleeping, zombie... or "gone"
    name: str = ""
    create_time: float | None = None  # identifies the process: a reused pid has another
    cpu_user: float | None = None    # cumulative seconds
    cpu_system: float | None = None
    sampled_at: float | None = None  # time.monotonic() of the cpu_times sample
    cpu_percent: float | None = None  # over the interval since `previous`; None on a first sample
    rss: int | None = None           # bytes
    num_fds: int | None = None
    num_threads: int | None = None
    error: str | None = None         # e.g. access denied to one field; the others stay


def _gone(pid: int, status: str = "gone", error: str | None = None) -> ProcStats:
    return ProcStats(pid=pid, gone=True, status=status, error=error)


def _one(pid: int, prev: ProcStats | None) -> ProcStats:
    try:
        p = psutil.Process(pid)
        with p.oneshot():
            status = p.status()
            if status == psutil.STATUS_ZOMBIE:
                return _gone(pid, "zombie")
            name = p.name()
            create_time = p.create_time()
            cpu = p.cpu_times()
            sampled_at = time.monotonic()
            mem = p.memory_info()
            threads = p.num_threads()
            errors = []
            try:
                fds: int | None = p.num_fds()
            except psutil.AccessDenied:
                fds, _ = None, errors.append("num_fds: access denied")
    except psutil.ZombieProcess:
        return _gone(pid, "zombie")
    except psutil.NoSuchProcess:
        return _gone(pid)
    except psutil.AccessDenied as exc:
        return ProcStats(pid=pid, status="denied", error=f"access denied: {exc}")
    percent = None
    if (prev is not None and not prev.gone and prev.create_time == create_time
            and prev.sampled_at is not None and prev.cpu_user is not None):
        elapsed = sampled_at - prev.sampled_at
        if elapsed > 0:
            used = (cpu.user + cpu.system) - (prev.cpu_user + prev.cpu_system)
            percent = round(max(0.0, used) / elapsed * 100.0, 2)
    return ProcStats(pid=pid, status=status, name=name, create_time=create_time,
                     cpu_user=cpu.user, cpu_system=cpu.system, sampled_at=sampled_at,
                     cpu_percent=percent, rss=mem.rss, num_fds=fds, num_threads=threads,
                     error="; ".join(errors) or None)


def process_stats(pids: Iterable[int], previous: dict[int, ProcStats] | None = None) -> dict[int, ProcStats]:
    """Stats for each pid. CPU % is the delta of cpu_times against `previous` (the last call's
    result, same pid and same create_time); None without one. Never raises for a missing pid."""
    previous = previous or {}
    return {pid: _one(pid, previous.get(pid)) for pid in pids}


# --- /proc/net/tcp ----------------------------------------------------------------------------

@dataclass(frozen=True)
class TcpEntry:
    local_ip: str
    local_port: int
    remote_ip: str
    remote_port: int
    state: str          # ESTABLISHED, TIME_WAIT, LISTEN... or "UNKNOWN(0xNN)"


@functools.lru_cache(maxsize=4096)
def _decode_ip(hexaddr: str) -> str:
    """/proc/net/tcp prints each 32-bit word of the address in host (little-endian) order.
    Cached: a host's sockets share a handful of addresses, and decoding dominates parsing."""
    if len(hexaddr) == 8:
        return socket.inet_ntop(socket.AF_INET, bytes.fromhex(hexaddr)[::-1])
    if len(hexaddr) == 32:
        raw = b"".join(bytes.fromhex(hexaddr[i:i + 8])[::-1] for i in range(0, 32, 8))
        addr = ipaddress.IPv6Address(raw)
        return str(addr.ipv4_mapped) if addr.ipv4_mapped else str(addr)
    raise ValueError(f"address of {len(hexaddr)} hex digits")


def _endpoint(field_: str) -> tuple[str, int]:
    host, sep, port = field_.partition(":")
    if not sep or len(port) != 4:
        raise ValueError(f"bad endpoint {field_!r}")
    return _decode_ip(host), int(port, 16)


def _port_hex(port: int) -> str:
    return f":{port:04X}"


# Sample (Linux 6.x, /proc/net/tcp):
#   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
#    0: 0996D27F:411B 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1453485 1 ...
def parse_proc_net_tcp(text: str, ports: Iterable[int] | None = None) -> list[TcpEntry]:
    """Parse /proc/net/tcp or /proc/net/tcp6 text. The header, blank lines, truncated lines and
    garbage rows are skipped (a live file can be cut mid-line); extra trailing columns ignored.
    `ports`: keep only sockets with one of these ports on either end (checked on the raw hex
    before anything is decoded: the cheap way to count a few ports on a busy host)."""
    wanted = None if ports is None else {_port_hex(p) for p in ports}
    entries = []
    for line in text.splitlines():
        parts = line.split(None, 4)
        if len(parts) < 4 or not parts[0].endswith(":") or not parts[0][:-1].isdigit():
            continue
        if wanted is not None and parts[1][-5:].upper() not in wanted and parts[2][-5:].upper() not in wanted:
            continue
        try:
            local_ip, local_port = _endpoint(parts[1])
            remote_ip, remote_port = _endpoint(parts[2])
            if len(parts[3]) != 2:
                raise ValueError("state")
            code = int(parts[3], 16)
        except ValueError:
            continue
        entries.append(TcpEntry(local_ip, local_port, remote_ip, remote_port,
                                TCP_STATES.get(code, f"UNKNOWN(0x{code:02X})")))
    return entries


def read_proc_net_tcp(proc_root: str | Path = "/proc", ports: Iterable[int] | None = None) -> list[TcpEntry]:
    """The TCP sockets of the reader's network namespace (only those on `ports` when given):
    net/tcp plus net/tcp6 when present (a kernel without IPv6 has no tcp6). Raises OSError
    when net/tcp itself is unreadable."""
    root = Path(proc_root)
    ports = None if ports is None else list(ports)
    entries = parse_proc_net_tcp((root / "net" / "tcp").read_text(errors="replace"), ports)
    try:
        entries += parse_proc_net_tcp((root / "net" / "tcp6").read_text(errors="replace"), ports)
    except FileNotFoundError:
        pass
    return entries


# One snapshot of the host's sockets serves every collector that asks within `max_age` seconds:
# the control plane's 12 service sources and its process source all run on the same 2 s tick, and
# each used to read the whole table for itself (58% of the control plane's CPU, py-spy). A
# collector reads afresh unless its target allows an older snapshot. The snapshot holds the
# sockets on every port asked for so far (the kernel filters them: the host may hold thousands
# of others), so after the first tick one read per tick serves every source.
_shared_lock = threading.Lock()
Endpoint = tuple  # (ip or None for any address, port)
_shared: dict[str, tuple[float, frozenset[Endpoint] | None, list[TcpEntry], dict[int, list[int]]]] = {}
_asked: dict[str, set[Endpoint] | None] = {}


def by_port(entries: list[TcpEntry]) -> dict[int, list[int]]:
    """port -> positions of the entries with that port at either end, in order: each of the 13
    callers of a tick's snapshot then reads the few sockets on its own ports, not all of them."""
    out: dict[int, list[int]] = {}
    for i, e in enumerate(entries):
        out.setdefault(e.local_port, []).append(i)
        if e.remote_port != e.local_port:
            out.setdefault(e.remote_port, []).append(i)
    return out


def _only_indexed(entries: list[TcpEntry], index: dict[int, list[int]],
                  endpoints: frozenset[Endpoint] | None) -> list[TcpEntry]:
    """What _only(entries, endpoints) gives, reading only the entries on the endpoints' ports."""
    if endpoints is None:
        return list(entries)
    ports = {p for _, p in endpoints}
    hits = sorted({i for p in ports for i in index.get(p, ())})
    return _only([entries[i] for i in hits], endpoints)


def _only(entries: Iterable[TcpEntry], endpoints: frozenset[Endpoint] | None) -> list[TcpEntry]:
    if endpoints is None:
        return list(entries)
    ips: dict[int, set[str | None]] = {}
    for ip, port in endpoints:
        ips.setdefault(port, set()).add(ip)
    out = []
    for e in entries:
        a, b = ips.get(e.local_port), ips.get(e.remote_port)
        if ((a is not None and (None in a or e.local_ip in a))
                or (b is not None and (None in b or e.remote_ip in b))):
            out.append(e)
    return out


def _is_ip(ip: str | None) -> bool:
    try:
        ipaddress.ip_address(ip)
        return True
    except ValueError:
        return False


def _read(proc_root: str | Path, endpoints: frozenset[Endpoint] | None) -> list[TcpEntry]:
    if endpoints is not None and not endpoints:
        return []
    if str(proc_root) == "/proc":
        from collectors import sockdiag
        states = sockdiag.ALL_STATES & ~(1 << 10)   # LISTEN left out, as ss does: nothing counts it
        # the kernel filters on what is an IP address; a name (that matches no socket) on its port
        kernel = None if endpoints is None else {(ip if _is_ip(ip) else None, p) for ip, p in endpoints}
        try:
            try:
                return _only(sockdiag.dump_tcp(states, endpoints=kernel), endpoints)
            except (sockdiag.SockDiagError, ValueError):
                if endpoints is None:
                    raise
                # a kernel without the port equality tests (before 4.16) refuses the filter, and
                # a port no filter can hold (0, > 65535: a broken state file) matches no socket
                return _only(sockdiag.dump_tcp(states), endpoints)
        except OSError:             # no netlink (sandbox, old kernel): the text table still works
            pass
    ports = None if endpoints is None else {p for _, p in endpoints}
    return _only([e for e in read_proc_net_tcp(proc_root, ports) if e.state != "LISTEN"], endpoints)


def tcp_sockets(proc_root: str | Path = "/proc", ports: Iterable[int] | None = None,
                max_age: float = 0.0, endpoints: Iterable[Endpoint] | None = None) -> list[TcpEntry]:
    """The host's non-LISTEN TCP sockets: those with one of `ports` on either end, or one of
    `endpoints` (ip, port; ip None: any address), or all when neither is given. From a snapshot
    shared by callers that accept one up to `max_age` seconds old. From sock_diag netlink for
    the real /proc (falling back to its text table), from the text files of an injected root.
    Raises OSError when neither can be read."""
    key = str(proc_root)
    wanted: frozenset[Endpoint] | None = None
    if endpoints is not None or ports is not None:
        wanted = frozenset(endpoints or ()) | frozenset((None, p) for p in ports or ())
    with _shared_lock:          # concurrent sources wait for one read instead of each doing it
        now = time.monotonic()
        asked = _asked.get(key, set())
        if asked is not None:
            asked = None if wanted is None else asked | wanted
            _asked[key] = asked
        hit = _shared.get(key)
        if (hit is None or now - hit[0] > max_age
                or (hit[1] is not None and (wanted is None or not wanted <= hit[1]))):
            covered = None if asked is None else frozenset(asked)
            entries = _read(proc_root, covered)
            hit = (now, covered, entries, by_port(entries))
            _shared[key] = hit
    return _only_indexed(hit[2], hit[3], wanted)


def connections_by_remote(entries: Iterable[TcpEntry], local_port: int, local_ip: str | None = None,
                          state: str | None = "ESTABLISHED") -> Counter:
    """Count sockets on `local_ip:local_port` (any local address when None) by remote address:
    the `lsof -p <pid> | sort | uniq -c` view. `state=None` counts every state but LISTEN."""
    return Counter(e.remote_ip for e in entries
                   if e.local_port == local_port
                   and (local_ip is None or e.local_ip == local_ip)
                   and (e.state == state if state is not None else e.state != "LISTEN"))


def time_wait_count(entries: Iterable[TcpEntry], port: int, ip: str | None = None) -> int:
    """Sockets in TIME_WAIT with `ip:port` on either end: a connection closed and reopened per
    request (no keepalive) leaves one behind each time, on whichever side closed first."""
    return sum(1 for e in entries if e.state == "TIME_WAIT" and (
        (e.local_port == port and (ip is None or e.local_ip == ip))
        or (e.remote_port == port and (ip is None or e.remote_ip == ip))))


# --- the collector ----------------------------------------------------------------------------

@dataclass(frozen=True)
class ProcessReport:
    name: str
    kind: str
    host: str
    address: str
    port: int | None
    stats: ProcStats
    # remote host name (or IP when not in the cluster file) -> ESTABLISHED connections to the port
    connections: dict[str, int] | None = None
    time_wait: int | None = None
    restarts: int | None = None      # state.json: times the supervisor has restarted it


@dataclass(frozen=True)
class ProcessSnapshot:
    processes: list[ProcessReport] = field(default_factory=list)
    sockets_read: int = 0            # TCP entries read from /proc (0 when not needed)


def _count(v) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else None


# config path -> ((mtime_ns, size), result): parsing the YAML cluster file on every 2 s scrape
# was a twentieth of the control plane's CPU; a changed file is read again.
_names_cache: dict[str, tuple[tuple[int, int], tuple[dict[str, str], str | None]]] = {}


def _host_names(config: str | None) -> tuple[dict[str, str], str | None]:
    if not config:
        return {}, None
    from cluster import clusterfile
    try:
        st = os.stat(config)
        stamp = (st.st_mtime_ns, st.st_size)
    except OSError:
        stamp = None
    hit = _names_cache.get(config)
    if stamp is not None and hit is not None and hit[0] == stamp:
        return dict(hit[1][0]), hit[1][1]
    try:
        result = clusterfile.load(config).spec.host_by_address(), None
    except clusterfile.ClusterFileError as exc:  # a broken cluster file costs names, not the scrape
        result = {}, f"{type(exc).__name__}: {exc}"
    if stamp is not None:
        _names_cache[config] = (stamp, result)
    return dict(result[0]), result[1]


@dataclass(frozen=True)
class Target:
    run: RunDir                      # the supervisor's run directory: state.json names the processes
    proc_root: str | Path = "/proc"  # a recorded tree stands in for the OS in tests
    name: str | None = None          # the Observation's target; default: the run directory
    sockets_max_age: float = 0.0     # see tcp_sockets: 0 reads afresh


def target_for(run_dir, name: str | None = None, proc_root: str | Path = "/proc",
               sockets_max_age: float = 0.0) -> Target:
    run = run_dir if isinstance(run_dir, RunDir) else RunDir.resolve(run_dir)
    return Target(run, proc_root, name, sockets_max_age)


def collect(target: Target, previous: Observation | None = None) -> Observation:
    """Stats for every process in the run directory's state.json, plus, for redis and haproxy
    processes, ESTABLISHED connections to their address:port counted by remote host name.
    Pass the last Observation as `previous` to get CPU %. A missing state file -> up=False."""
    from cluster.state import read_state

    run, proc_root = target.run, target.proc_root
    name = target.name or str(run.root)
    at, started = time.time(), time.perf_counter()

    def down(error: str) -> Observation:
        return Observation("process", name, at, False, time.perf_counter() - started, None, error)

    state = read_state(run)
    if state is None:
        return down(f"no readable supervisor state at {run.state_file} (is the cluster up? `chatops up`)")
    procs = state.get("processes")
    if not isinstance(procs, list):
        return down(f"{run.state_file}: no 'processes' list")
    procs = [p for p in procs if isinstance(p, dict)]

    section_errors: dict[str, str] = {}
    prev_stats: dict[int, ProcStats] = {}
    if previous is not None and isinstance(previous.data, ProcessSnapshot):
        prev_stats = {r.stats.pid: r.stats for r in previous.data.processes}
    pids = [p["pid"] for p in procs if isinstance(p.get("pid"), int)]
    stats = process_stats(pids, prev_stats)

    entries: list[TcpEntry] = []
    counted = [p for p in procs if p.get("kind") in COUNTED_KINDS and isinstance(p.get("port"), int)]
    names: dict[str, str] = {}
    if counted:
        try:
            entries = tcp_sockets(proc_root, max_age=target.sockets_max_age,
                                  endpoints={(p.get("address") or None, p["port"]) for p in counted})
        except OSError as exc:
            section_errors["connections"] = f"{type(exc).__name__}: {exc}"
        names, err = _host_names(state.get("config"))
        if err:
            section_errors["host_names"] = err

    around = by_port(entries)           # each counted process reads the sockets on its own port
    reports = []
    for p in procs:
        pid = p.get("pid")
        st = stats.get(pid) if isinstance(pid, int) else None
        if st is None:
            st = _gone(pid if isinstance(pid, int) else 0, "not started")
        conns = tw = None
        if p in counted and "connections" not in section_errors:
            address = p.get("address") or None
            mine = [entries[i] for i in around.get(p["port"], ())]
            by_ip = connections_by_remote(mine, p["port"], address)
            conns = dict(Counter({names.get(ip, ip): n for ip, n in by_ip.items()}).most_common())
            tw = time_wait_count(mine, p["port"], address)
        reports.append(ProcessReport(name=str(p.get("name", "")), kind=str(p.get("kind", "")),
                                     host=str(p.get("host", "")), address=str(p.get("address", "")),
                                     port=p.get("port"), stats=st, connections=conns, time_wait=tw,
                                     restarts=_count(p.get("restarts"))))
    return Observation("process", name, at, True, time.perf_counter() - started,
                       ProcessSnapshot(reports, len(entries)), None, section_errors)
