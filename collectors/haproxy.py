"""HAProxy: `show stat` / `show info` / `show servers state` over the admin socket, the `;csv`
stats page over HTTP, and `show proc` on the master socket.

Pure parsers (`parse_stat_csv`, `parse_info`, `parse_servers_state`, `parse_worker_exits`) beside
thin fetchers (`fetch_stat`, `fetch_info`, `fetch_stat_http`, `fetch_servers_state`, `fetch_proc`)
and `collect(target) -> Observation`; `target_for(run, host)` names a chat host's sockets. Read-only:
changing a server's weight or state is controlplane/remediation/server_state.py.

No Prometheus code here: `METRICS` is the field -> metric-name table the control plane exports.
"""

from __future__ import annotations

import csv
import io
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from collectors.base import Observation
from collectors.haproxy_runtime import RuntimeAPIError, command, parse_show_proc

HTTP_READ_LIMIT = 16 * 1024 * 1024
_TYPES = {0: "frontend", 1: "backend", 2: "server", 3: "listener"}


# -- show stat / ;csv -------------------------------------------------------------------------

# `show stat` on chat1's admin socket, HAProxy 2.6.12-1+deb12u4 (tests/fixtures/haproxy/show_stat.csv;
# the `;csv` stats page is byte-for-byte the same format). Header abridged, 50 PINGs through :2000:
#
#   # pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,weight,...
#   redis-shard0,FRONTEND,,,0,2,4000,50,700,350,0,0,0,,,,,OPEN,,,,,,,,,1,2,0,,,,0,50,0,50,,,,...
#   redis-shard0,shard0,0,0,0,1,,50,700,350,,0,,0,0,0,0,UP,1,1,0,0,0,6,0,,1,2,1,,50,,2,50,,50,L7OK,0,0,...
#   redis-shard0,BACKEND,0,0,0,1,400,50,700,350,0,0,,0,0,0,0,UP,1,1,0,,0,6,0,,1,2,0,,50,,1,50,,50,...
#
# Columns are read by name from the header: newer releases append columns, and a row may carry a
# quoted field with commas in it (check_desc, last_chk, cookie...).

@dataclass(frozen=True)
class StatRow:
    kind: str                      # frontend | backend | server | listener | unknown
    proxy: str                     # pxname
    name: str                      # svname: FRONTEND, BACKEND or the server's name
    status: str | None = None
    scur: int | None = None        # sessions: current / max / limit
    smax: int | None = None
    slim: int | None = None
    stot: int | None = None
    qcur: int | None = None        # queue: current / max
    qmax: int | None = None
    rate: int | None = None        # sessions per second over the last second / its max
    rate_max: int | None = None
    conn_rate: int | None = None   # frontends only
    req_rate: int | None = None    # HTTP frontends only
    bin: int | None = None
    bout: int | None = None
    dreq: int | None = None
    dresp: int | None = None
    ereq: int | None = None
    econ: int | None = None
    eresp: int | None = None
    wretr: int | None = None
    wredis: int | None = None
    weight: int | None = None
    check_status: str | None = None
    check_duration: int | None = None   # ms
    lastchg: int | None = None          # seconds since the last UP<->DOWN change
    downtime: int | None = None         # total seconds down
    addr: str | None = None             # servers: address:port


@dataclass(frozen=True)
class StatTable:
    rows: list[StatRow] = field(default_factory=list)
    unparsed: list[str] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)

    @property
    def frontends(self) -> list[StatRow]:
        return [r for r in self.rows if r.kind == "frontend"]

    @property
    def backends(self) -> list[StatRow]:
        return [r for r in self.rows if r.kind == "backend"]

    @property
    def servers(self) -> list[StatRow]:
        return [r for r in self.rows if r.kind == "server"]

    def get(self, proxy: str, name: str) -> StatRow | None:
        return next((r for r in self.rows if r.proxy == proxy and r.name == name), None)


_INT_FIELDS = ("scur", "smax", "slim", "stot", "qcur", "qmax", "rate", "rate_max", "conn_rate",
               "req_rate", "bin", "bout", "dreq", "dresp", "ereq", "econ", "eresp", "wretr",
               "wredis", "weight", "check_duration", "lastchg", "downtime")
_STR_FIELDS = ("status", "check_status", "addr")

# field -> (metric name, type, help). The control plane turns this into Prometheus families,
# labelled {host, proxy, name, kind}; names follow HAProxy's own exporter where one exists.
METRICS: dict[str, tuple[str, str, str]] = {
    "scur": ("haproxy_current_sessions", "gauge", "Current sessions"),
    "smax": ("haproxy_max_sessions", "gauge", "Highest sessions seen"),
    "slim": ("haproxy_limit_sessions", "gauge", "Configured session limit"),
    "stot": ("haproxy_sessions_total", "counter", "Sessions since start"),
    "qcur": ("haproxy_current_queue", "gauge", "Requests queued for a server"),
    "qmax": ("haproxy_max_queue", "gauge", "Highest queue seen"),
    "rate": ("haproxy_current_session_rate", "gauge", "Sessions per second, last second"),
    "rate_max": ("haproxy_max_session_rate", "gauge", "Highest sessions per second seen"),
    "conn_rate": ("haproxy_current_connection_rate", "gauge", "Connections per second, last second"),
    "req_rate": ("haproxy_current_request_rate", "gauge", "HTTP requests per second, last second"),
    "bin": ("haproxy_bytes_in_total", "counter", "Bytes received"),
    "bout": ("haproxy_bytes_out_total", "counter", "Bytes sent"),
    "dreq": ("haproxy_requests_denied_total", "counter", "Requests denied"),
    "dresp": ("haproxy_responses_denied_total", "counter", "Responses denied"),
    "ereq": ("haproxy_request_errors_total", "counter", "Request errors"),
    "econ": ("haproxy_connection_errors_total", "counter", "Errors connecting to a server"),
    "eresp": ("haproxy_response_errors_total", "counter", "Response errors"),
    "wretr": ("haproxy_retry_warnings_total", "counter", "Connection retries"),
    "wredis": ("haproxy_redispatch_warnings_total", "counter", "Redispatches to another server"),
    "weight": ("haproxy_weight", "gauge", "Effective weight"),
    "check_duration": ("haproxy_check_duration_seconds", "gauge", "Last health check duration (ms / 1000)"),
    "lastchg": ("haproxy_last_change_seconds", "gauge", "Seconds since the last status change"),
    "downtime": ("haproxy_downtime_seconds_total", "counter", "Total downtime"),
    "status": ("haproxy_status", "gauge", "1 when UP/OPEN, 0 otherwise"),
    # show info
    "CurrConns": ("haproxy_process_current_connections", "gauge", "Current connections"),
    "Maxconn": ("haproxy_process_max_connections", "gauge", "Configured maxconn"),
    "CumConns": ("haproxy_process_connections_total", "counter", "Connections since start"),
    "ConnRate": ("haproxy_process_current_connection_rate", "gauge", "Connections per second"),
    "Idle_pct": ("haproxy_process_idle_time_percent", "gauge", "Idle time, percent"),
    "Uptime_sec": ("haproxy_process_uptime_seconds", "gauge", "Worker uptime"),
    # show proc
    "reloads": ("haproxy_master_reloads_total", "counter", "Reloads of the master"),
    "failed_reloads": ("haproxy_master_failed_reloads_total", "counter", "Reloads whose config did not load"),
    "old_workers": ("haproxy_master_old_workers", "gauge", "Old workers still draining"),
}


def _int(value: str | None) -> int | None:
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        return None


def parse_stat_csv(text: str) -> StatTable:
    """Parse `show stat` / `;csv` text. Never raises: bad rows land in `unparsed`."""
    if not isinstance(text, str):
        text = bytes(text).decode("utf-8", errors="replace")
    lines = text.splitlines()
    header_at = next((i for i, l in enumerate(lines) if l.startswith("# ")), None)
    if header_at is None:
        return StatTable(unparsed=[l for l in lines if l.strip()])
    columns = [c.strip() for c in lines[header_at][2:].split(",")]
    while columns and columns[-1] == "":
        columns.pop()
    if "pxname" not in columns or "svname" not in columns:
        return StatTable(unparsed=[l for l in lines if l.strip()], columns=columns)
    unparsed = [l for l in lines[:header_at] if l.strip()]
    rows: list[StatRow] = []
    body = [l for l in lines[header_at + 1:] if l.strip()]
    try:
        records = list(csv.reader(io.StringIO("\n".join(body)), strict=False))
    except csv.Error:
        records = None
    if records is None or len(records) != len(body):
        # A stray quote swallowed a line break: parse line by line so one bad row costs only itself.
        records = []
        for line in body:
            try:
                records.append(next(csv.reader([line], strict=True)))
            except (csv.Error, StopIteration):
                records.append(None)
    for line, rec in zip(body, records):
        row = _stat_row(columns, rec) if rec is not None else None
        if row is None:
            unparsed.append(line)
        else:
            rows.append(row)
    return StatTable(rows=rows, unparsed=unparsed, columns=columns)


def _stat_row(columns: list[str], rec: list[str]) -> StatRow | None:
    # HAProxy ends each row with a trailing comma; a row shorter than the header is truncated.
    if len(rec) < len(columns):
        return None
    cell = dict(zip(columns, rec))
    proxy, name = cell.get("pxname", ""), cell.get("svname", "")
    if not proxy or not name:
        return None
    type_code = _int(cell.get("type"))
    if type_code is None and "type" in cell:
        return None
    kind = _TYPES.get(type_code, "unknown") if type_code is not None else (
        "frontend" if name == "FRONTEND" else "backend" if name == "BACKEND" else "server")
    values: dict[str, Any] = {}
    for f in _INT_FIELDS:
        values[f] = _int(cell.get(f))
    for f in _STR_FIELDS:
        v = cell.get(f)
        values[f] = v if v else None
    return StatRow(kind=kind, proxy=proxy, name=name, **values)


# -- show info ----------------------------------------------------------------------------------

# `show info` on chat1's admin socket (tests/fixtures/haproxy/show_info.txt), abridged:
#
#   Name: HAProxy
#   Version: 2.6.12-1+deb12u4
#   Pid: 8270
#   Uptime: 0d 0h00m05s
#   Uptime_sec: 5
#   CurrConns: 0
#   CumConns: 164
#   Unstoppable Jobs: 1
#   Build info: 2.6.12-1+deb12u4

def parse_info(text: str) -> dict[str, Any]:
    """`Key: value` lines into a dict; integer values become ints. Other lines are skipped."""
    out: dict[str, Any] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep or not key.strip():
            continue
        key, value = key.strip(), value.strip()
        try:
            out[key] = int(value)
        except ValueError:
            out[key] = value
    return out


# -- show servers state -------------------------------------------------------------------------

# `show servers state` on chat1's admin socket (tests/fixtures/haproxy/show_servers_state.txt):
#
#   1
#   # be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight ...
#   2 redis-shard0 1 shard0 127.181.105.21 2 0 1 1 6 15 3 3 6 0 0 0 - 6379 - 0 0 - - 0
#
# srv_op_state: 0 stopped, 1 starting, 2 running, 3 stopping. srv_admin_state is a bit field:
# 0x01 forced maint, 0x02 inherited maint, 0x04 maint from config, 0x08 forced drain.

@dataclass(frozen=True)
class ServersState:
    version: int | None
    servers: list[dict[str, Any]] = field(default_factory=list)
    unparsed: list[str] = field(default_factory=list)


# A longer digit run stays text: int() refuses more than 4,300 digits.
_NUMBER = re.compile(r"-?\d{1,20}")


def parse_servers_state(text: str) -> ServersState:
    version: int | None = None
    columns: list[str] = []
    servers: list[dict[str, Any]] = []
    unparsed: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            columns = line.lstrip("#").split()
            continue
        if version is None and not columns and line.isdigit() and line.isascii() and len(line) <= 20:
            version = int(line)
            continue
        parts = line.split()
        if not columns or len(parts) < len(columns):
            unparsed.append(raw)
            continue
        row: dict[str, Any] = {}
        for c, v in zip(columns, parts):
            row[c] = None if v == "-" else (int(v) if _NUMBER.fullmatch(v) and c != "srv_addr" else v)
        servers.append(row)
    return ServersState(version=version, servers=servers, unparsed=unparsed)


# -- thin I/O -----------------------------------------------------------------------------------

def fetch_stat(sock: str | Path, timeout: float = 5.0) -> StatTable:
    return parse_stat_csv(command(sock, "show stat", timeout))


def fetch_info(sock: str | Path, timeout: float = 5.0) -> dict[str, Any]:
    return parse_info(command(sock, "show info", timeout))


def fetch_servers_state(sock: str | Path, timeout: float = 5.0) -> ServersState:
    return parse_servers_state(command(sock, "show servers state", timeout))


def fetch_stat_http(address: str, port: int, timeout: float = 5.0) -> StatTable:
    """The `;csv` stats page of a (possibly remote) host."""
    url = f"http://{address}:{int(port)}/stats;csv"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            body = resp.read(HTTP_READ_LIMIT + 1)
    except (urllib.error.URLError, OSError) as exc:
        raise RuntimeAPIError(f"GET {url}: {exc}") from exc
    if len(body) > HTTP_READ_LIMIT:
        raise RuntimeAPIError(f"GET {url}: reply larger than {HTTP_READ_LIMIT} bytes")
    return parse_stat_csv(body.decode("utf-8", errors="replace"))


# -- show proc (master socket) -----------------------------------------------------------------

# The master logs a finished worker on stderr, which the supervisor appends to haproxy-<host>.log:
#   [WARNING]  (8266) : Former worker (8270) exited with code 0 (Exit)
# Bounded digit runs: int() refuses more than 4,300 digits, and no pid or exit code is that long.
_EXITED = re.compile(r"\((\d{1,10})\) exited with code (-?\d{1,10})(?!\d)")


def parse_worker_exits(text: str) -> dict[int, int]:
    """pid -> exit code of workers the master reported as exited."""
    return {int(m.group(1)): int(m.group(2)) for m in _EXITED.finditer(text)}


@dataclass(frozen=True)
class ProcInfo:
    master_pid: int | None
    reloads: int
    failed_reloads: int
    workers: list[int]
    old_workers: list[int]
    worker_exits: dict[int, int] = field(default_factory=dict)   # from the log; may be empty
    unparsed: list[str] = field(default_factory=list)


def fetch_proc(master_sock: str | Path, log: Path | None = None, timeout: float = 5.0) -> ProcInfo:
    table = parse_show_proc(command(master_sock, "show proc", timeout))
    exits: dict[int, int] = {}
    if log is not None:
        try:
            with open(log, "rb") as fh:
                fh.seek(0, 2)
                size = fh.tell()
                fh.seek(max(0, size - 1024 * 1024))
                exits = parse_worker_exits(fh.read().decode("utf-8", errors="replace"))
        except OSError:
            exits = {}
    m = table.master
    return ProcInfo(master_pid=m.pid if m else None, reloads=m.reloads if m else 0,
                    failed_reloads=m.failed_reloads if m else 0,
                    workers=[w.pid for w in table.workers], old_workers=[w.pid for w in table.old_workers],
                    worker_exits=exits, unparsed=table.unparsed)


# -- collect ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class HAProxyData:
    stat: StatTable | None = None
    info: dict[str, Any] | None = None
    proc: ProcInfo | None = None


@dataclass(frozen=True)
class Target:
    host: str                    # the chat host whose HAProxy this is
    admin_socket: Path           # a worker's runtime API: show stat, show info
    master_socket: Path          # the master CLI: show proc
    master_log: Path | None = None   # the master's stderr (worker exit codes); None: not read
    timeout: float = 5.0


def target_for(run, host: str, timeout: float = 5.0) -> Target:
    """The sockets and log of `host`'s HAProxy in the run directory; raises RunDirError when a
    socket path would be too long for a Unix socket."""
    return Target(host, run.haproxy_socket(host), run.haproxy_master_socket(host),
                  run.log(f"haproxy-{host}"), timeout)


def collect(target: Target, previous: Observation | None = None) -> Observation:
    """Scrape one chat host's HAProxy: `stat` and `info` on the admin socket, `proc` on the master.

    An unreachable admin socket makes the source down; any other failing section is reported in
    `section_errors` and the rest still arrives. `previous` is not needed: rates between two
    scrapes are the control plane's figures."""
    at, started = time.time(), time.perf_counter()
    host, sock, timeout = target.host, target.admin_socket, target.timeout
    errors: dict[str, str] = {}
    try:
        stat = fetch_stat(sock, timeout)
    except (RuntimeAPIError, OSError) as exc:
        return Observation("haproxy", host, at, False, time.perf_counter() - started, None,
                           f"{type(exc).__name__}: {exc}")
    info = proc = None
    try:
        info = fetch_info(sock, timeout)
    except (RuntimeAPIError, OSError) as exc:
        errors["info"] = f"{type(exc).__name__}: {exc}"
    try:
        proc = fetch_proc(target.master_socket, target.master_log, timeout)
    except (RuntimeAPIError, OSError) as exc:
        errors["proc"] = f"{type(exc).__name__}: {exc}"
    return Observation("haproxy", host, at, True, time.perf_counter() - started,
                       HAProxyData(stat=stat, info=info, proc=proc), None, errors)
