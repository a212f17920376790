"""`/metrics`: everything the control plane collected, in Prometheus text form.

Custom collectors, one per source, read the newest observation of every target from the store
at scrape time and yield metric families (prometheus-client's `collect()` protocol); nothing is
set by hand between scrapes, so a series can never outlive the data it came from.

The catalogue below is the one place a metric is defined: its name, type, unit, labels and help
text. The collectors take their families from it, and docs/metrics.md's control-plane section is
generated from it (`python -m controlplane.metrics` prints the section; a test fails when the
page and this file differ). As in DataDog's integrations, the Redis INFO and HAProxy `show stat`
sources are a field -> metric table.

Rules every collector follows:
- Label names are fixed here; only label values come from the cluster file or the wire.
- A down source has its `*_up` gauge at 0 and none of its other series (no stale values). So does
  a source whose newest observation is stale: older than 3 intervals plus its timeout, which only
  happens when its job stopped running.
- Names that come from the wire (client source hosts, connection peers, log remotes) are capped
  per target; the rest is summed into the label value `_other`, so a flood of unknown addresses or
  hostile log lines cannot grow /metrics without end.
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Iterator

from flask import Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OTHER = "_other"                 # the label value wire names past a cap are summed into
MAX_SOURCE_HOSTS = 100           # per shard (CLIENT LIST) and per process (connections)
MAX_LOG_GROUPS = 500             # (service, host, remote, kind) groups of the logs source


# -- the catalogue --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Metric:
    name: str                    # the exposed name; counters end in _total
    type: str                    # gauge | counter
    unit: str
    labels: tuple[str, ...]
    help: str

    def family(self) -> GaugeMetricFamily | CounterMetricFamily:
        cls = CounterMetricFamily if self.type == "counter" else GaugeMetricFamily
        return cls(self.name, self.help, labels=list(self.labels))


@dataclass(frozen=True)
class Section:
    title: str                   # the docs/metrics.md heading
    about: str                   # one paragraph under it
    metrics: tuple[Metric, ...]


LABELS = {
    "source": "the control plane's source kind: `redis`, `clients`, `haproxy`, `process`, `logs`, `service` (a chat service's own metrics), `detect` (the detection engine)",
    "target": "what the source scrapes: a shard, a chat host, or `local`",
    "section": "a part of one scrape (Redis `info`, `config`, `slowlog`...; HAProxy `info`, `proc`)",
    "shard": "the shard's name in the cluster file (empty on log lines that are not a shard's)",
    "host": "a host name from the cluster file (for a shard, the host it runs on)",
    "cluster": "the chat cluster of `host` or `source_host`; empty when the host is in none",
    "source_host": "the host a client connection comes from, named from the cluster file; "
                   "an unknown address stays an IP; `_other` sums the hosts past the cap",
    "mode": "CPU time `user` or `system`",
    "command": "a Redis command as INFO commandstats names it (`get`, `expire`; a subcommand follows its "
               "command after a vertical bar)",
    "proxy": "the HAProxy proxy: `redis-<shard>`, `fe_edge_<cluster>`, `be_edge_<cluster>`, `stats`...",
    "server": "the server's name inside its backend",
    "process": "the supervised process's name (`redis-shard0`, `edge-chat1`...)",
    "service": "what a process or log file is: `redis`, `haproxy`, `edge`, `clue`, `exchange`, "
               "`controlplane`, `loadgen`",
    "remote": "the `[remote]` a log line names; empty for `[-]`; `_other` sums the groups past the cap",
    "kind": "the log event's kind (`success`, `timeout`, `connection_refused`, `other`...)",
    "destination": "an alert destination's name in the cluster file (`alerts[].name`)",
    "type": "an alert destination's type: `slack`, `webhook` or `alertmanager`",
    "outcome": "what happened to a notification: `enqueued` (written to the outbox), `delivered`, "
               "`failed` (one failed attempt, to be retried) or `rejected` (refused for good)",
}

SHARD = ("shard", "host")
PROXY_HOST = ("cluster", "host")
PROCESS = ("process", "service", "host", "cluster")

# Redis INFO: (section, field) -> metric; the shard's labels. Fields a Redis version lacks are absent.
REDIS_INFO_FIELDS: tuple[tuple[str, str, Metric], ...] = tuple(
    (sec, fld, Metric(name, typ, unit, SHARD, help_)) for sec, fld, name, typ, unit, help_ in (
        ("server", "uptime_in_seconds", "chatops_redis_uptime_seconds", "gauge", "seconds",
         "Seconds since the Redis server started; a drop means it restarted."),
        ("clients", "connected_clients", "chatops_redis_connected_clients", "gauge", "clients",
         "Client connections open now (INFO connected_clients)."),
        ("clients", "blocked_clients", "chatops_redis_blocked_clients", "gauge", "clients",
         "Clients waiting in a blocking command."),
        ("memory", "used_memory", "chatops_redis_memory_used_bytes", "gauge", "bytes",
         "Memory Redis allocated for its data and overhead (INFO used_memory)."),
        ("memory", "used_memory_rss", "chatops_redis_memory_rss_bytes", "gauge", "bytes",
         "Resident memory of the Redis process as the OS sees it."),
        ("memory", "maxmemory", "chatops_redis_memory_max_bytes", "gauge", "bytes",
         "The maxmemory limit; 0 means none."),
        ("stats", "total_commands_processed", "chatops_redis_commands_processed_total", "counter", "commands",
         "Commands the shard processed, the control plane's own scrapes included."),
        ("stats", "total_connections_received", "chatops_redis_connections_received_total", "counter",
         "connections", "Connections the shard accepted."),
        ("stats", "rejected_connections", "chatops_redis_rejected_connections_total", "counter", "connections",
         "Connections refused because maxclients was reached."),
        ("stats", "evicted_keys", "chatops_redis_evicted_keys_total", "counter", "keys",
         "Keys evicted because of the maxmemory limit."),
        ("stats", "expired_keys", "chatops_redis_expired_keys_total", "counter", "keys",
         "Keys removed because their TTL ran out."),
        ("stats", "keyspace_hits", "chatops_redis_keyspace_hits_total", "counter", "lookups",
         "Key lookups that found the key."),
        ("stats", "keyspace_misses", "chatops_redis_keyspace_misses_total", "counter", "lookups",
         "Key lookups that did not find the key."),
        ("stats", "total_net_input_bytes", "chatops_redis_net_input_bytes_total", "counter", "bytes",
         "Bytes read from the network."),
        ("stats", "total_net_output_bytes", "chatops_redis_net_output_bytes_total", "counter", "bytes",
         "Bytes written to the network."),
        ("stats", "total_error_replies", "chatops_redis_error_replies_total", "counter", "replies",
         "Error replies the shard sent (Redis 6.2 and later)."),
    ))

REDIS_UP = Metric("chatops_redis_up", "gauge", "boolean", SHARD,
                  "1 when the shard answered the control plane's last scrape, else 0.")
REDIS_CPU = Metric("chatops_redis_cpu_seconds_total", "counter", "seconds", SHARD + ("mode",),
                   "CPU time the Redis server used (INFO used_cpu_user / used_cpu_sys).")
REDIS_MAXCLIENTS = Metric("chatops_redis_maxclients", "gauge", "clients", SHARD,
                          "The maxclients setting (CONFIG GET): connections past it are rejected.")
REDIS_KEYS = Metric("chatops_redis_keys", "gauge", "keys", SHARD, "Keys in all databases (INFO keyspace).")
REDIS_EXPIRING = Metric("chatops_redis_expiring_keys", "gauge", "keys", SHARD,
                        "Keys with a TTL, in all databases.")
REDIS_CALLS = Metric("chatops_redis_command_calls_total", "counter", "calls", SHARD + ("command",),
                     "Calls of each command (INFO commandstats).")
REDIS_CALL_SECONDS = Metric("chatops_redis_command_duration_seconds_total", "counter", "seconds",
                            SHARD + ("command",), "Time the shard spent executing each command.")

CLIENTS_BY_HOST = SHARD + ("source_host", "cluster")
CL_UP = Metric("chatops_client_list_up", "gauge", "boolean", SHARD,
               "1 when the shard answered the last CLIENT LIST, else 0.")
CL_CLIENTS = Metric("chatops_client_list_clients", "gauge", "clients", CLIENTS_BY_HOST,
                    "Connections to the shard from each source host.")
CL_IDLE = Metric("chatops_client_list_idle_clients", "gauge", "clients", CLIENTS_BY_HOST,
                 "Connections idle longer than the idle threshold (`chatops_client_list_idle_threshold_seconds`).")
CL_LONG_IDLE = Metric("chatops_client_list_long_idle_clients", "gauge", "clients", CLIENTS_BY_HOST,
                      "Connections idle longer than the long-idle threshold (at least 10 minutes).")
CL_OLDEST = Metric("chatops_client_list_oldest_age_seconds", "gauge", "seconds", CLIENTS_BY_HOST,
                   "Age of the oldest connection from each source host.")
CL_MAX_IDLE = Metric("chatops_client_list_max_idle_seconds", "gauge", "seconds", CLIENTS_BY_HOST,
                     "Longest idle time among the idle connections from each source host; 0 when none is idle.")
CL_THRESHOLD = Metric("chatops_client_list_idle_threshold_seconds", "gauge", "seconds", SHARD,
                      "Idle time past which a client counts as idle (`controlplane.thresholds.idle_client_after`).")
CL_BYTES = Metric("chatops_client_list_reply_bytes", "gauge", "bytes", SHARD,
                  "Size of the last CLIENT LIST reply.")

# HAProxy `show stat`: field -> metric suffix, per kind of row (f: frontend, b: backend, s: server).
HAPROXY_STAT_FIELDS: tuple[tuple[str, str, str, str, str, float, str], ...] = (
    # field, suffix, type, unit, kinds, scale, help
    ("scur", "current_sessions", "gauge", "sessions", "fbs", 1, "Sessions open now."),
    ("smax", "max_sessions", "gauge", "sessions", "fbs", 1, "Most sessions open at once since start."),
    ("slim", "limit_sessions", "gauge", "sessions", "fb", 1, "The configured session limit (maxconn)."),
    ("stot", "sessions_total", "counter", "sessions", "fbs", 1, "Sessions since start."),
    ("rate", "current_session_rate", "gauge", "sessions/s", "fbs", 1, "Sessions per second over the last second."),
    ("qcur", "current_queue", "gauge", "requests", "bs", 1, "Requests queued now, waiting for a free server slot."),
    ("qmax", "max_queue", "gauge", "requests", "bs", 1, "Longest queue since start."),
    ("bin", "bytes_in_total", "counter", "bytes", "fbs", 1, "Bytes received from clients."),
    ("bout", "bytes_out_total", "counter", "bytes", "fbs", 1, "Bytes sent to clients."),
    ("dreq", "requests_denied_total", "counter", "requests", "fb", 1, "Requests denied by rules."),
    ("dresp", "responses_denied_total", "counter", "responses", "fbs", 1, "Responses denied by rules."),
    ("ereq", "request_errors_total", "counter", "requests", "f", 1,
     "Request errors: client closed early, read error, bad request."),
    ("econ", "connection_errors_total", "counter", "connections", "bs", 1,
     "Failed attempts to connect to a server."),
    ("eresp", "response_errors_total", "counter", "responses", "bs", 1,
     "Response errors, including a server closing the connection mid-session."),
    ("wretr", "retry_warnings_total", "counter", "retries", "bs", 1, "Connection attempts retried."),
    ("wredis", "redispatch_warnings_total", "counter", "redispatches", "bs", 1,
     "Sessions redispatched to another server."),
    ("weight", "weight", "gauge", "weight", "bs", 1, "Server weight (a backend: the sum of its servers')."),
    ("check_duration", "check_duration_seconds", "gauge", "seconds", "s", 0.001,
     "Duration of the last health check."),
    ("lastchg", "last_status_change_seconds", "gauge", "seconds", "bs", 1,
     "Seconds since the last UP/DOWN change."),
    ("downtime", "downtime_seconds_total", "counter", "seconds", "bs", 1, "Total time spent DOWN."),
)
_KINDS = {"f": ("frontend", PROXY_HOST + ("proxy",)), "b": ("backend", PROXY_HOST + ("proxy",)),
          "s": ("server", PROXY_HOST + ("proxy", "server"))}


def _haproxy_row_metrics() -> dict[tuple[str, str], tuple[Metric, float]]:
    """(row kind, stat field or 'status') -> (metric, scale), in catalogue order."""
    out: dict[tuple[str, str], tuple[Metric, float]] = {}
    for letter, (kind, labels) in _KINDS.items():
        out[(kind, "status")] = (Metric(
            f"chatops_haproxy_{kind}_status_up", "gauge", "boolean", labels,
            f"1 when the {kind} is serving (status {'OPEN' if kind == 'frontend' else 'UP'}), 0 when not."), 1)
        for fld, suffix, typ, unit, kinds, scale, help_ in HAPROXY_STAT_FIELDS:
            if letter in kinds:
                out[(kind, fld)] = (Metric(f"chatops_haproxy_{kind}_{suffix}", typ, unit, labels, help_), scale)
    return out


HAPROXY_ROWS = _haproxy_row_metrics()
HAPROXY_UP = Metric("chatops_haproxy_up", "gauge", "boolean", PROXY_HOST,
                    "1 when the chat host's HAProxy answered on its admin socket, else 0.")
# `show info` / `show proc` fields: (data part, field) -> metric.
HAPROXY_HOST_FIELDS: tuple[tuple[str, str, Metric], ...] = tuple(
    (part, fld, Metric(name, typ, unit, PROXY_HOST, help_)) for part, fld, name, typ, unit, help_ in (
        ("info", "CurrConns", "chatops_haproxy_current_connections", "gauge", "connections",
         "Connections open now, all proxies together."),
        ("info", "CumConns", "chatops_haproxy_connections_total", "counter", "connections",
         "Connections accepted since the worker started."),
        ("info", "Maxconn", "chatops_haproxy_max_connections", "gauge", "connections",
         "The process-wide connection limit."),
        ("info", "Uptime_sec", "chatops_haproxy_uptime_seconds", "gauge", "seconds",
         "Seconds since the current worker started."),
        ("proc", "workers", "chatops_haproxy_workers", "gauge", "processes", "Current worker processes."),
        ("proc", "old_workers", "chatops_haproxy_old_workers", "gauge", "processes",
         "Workers of earlier configurations still finishing their sessions after a reload."),
        ("proc", "reloads", "chatops_haproxy_reloads_total", "counter", "reloads",
         "Reloads since the master started."),
        ("proc", "failed_reloads", "chatops_haproxy_failed_reloads_total", "counter", "reloads",
         "Reloads whose new configuration failed."),
    ))

PROC_UP = Metric("chatops_process_up", "gauge", "boolean", PROCESS,
                 "1 when the supervised process is running, 0 when it is gone (dead, zombie, not started).")
PROC_CPU = Metric("chatops_process_cpu_seconds_total", "counter", "seconds", PROCESS + ("mode",),
                  "CPU time the process used.")
PROC_RSS = Metric("chatops_process_resident_memory_bytes", "gauge", "bytes", PROCESS, "Resident memory.")
PROC_FDS = Metric("chatops_process_open_fds", "gauge", "fds", PROCESS, "Open file descriptors.")
PROC_THREADS = Metric("chatops_process_threads", "gauge", "threads", PROCESS, "OS threads.")
PROC_START = Metric("chatops_process_start_time_seconds", "gauge", "seconds", PROCESS,
                    "When the process started, in seconds since the epoch; a change means a restart.")
PROC_CONNS = Metric("chatops_process_established_connections", "gauge", "connections",
                    PROCESS + ("source_host",),
                    "ESTABLISHED TCP connections to a Redis or HAProxy process's port, by the host they come from.")
PROC_TIME_WAIT = Metric("chatops_process_time_wait_connections", "gauge", "connections", PROCESS,
                        "TCP connections to a Redis or HAProxy process's port in TIME_WAIT (connection churn).")

LOG_EVENTS = Metric("chatops_log_events_total", "counter", "lines",
                    ("service", "host", "cluster", "shard", "remote", "kind"),
                    "Log lines read since the control plane started, by the file's service and host "
                    "(a Redis file's shard and the shard's host), the line's remote and its kind.")
LOG_UNPARSED = Metric("chatops_log_unparsed_lines_total", "counter", "lines", (),
                      "Log lines that matched neither the chat format nor plain syslog.")
LOG_FILES = Metric("chatops_log_files", "gauge", "files", (), "Log files followed in the run directory.")

SRC = ("source", "target")
SOURCE_UP = Metric("chatops_source_up", "gauge", "boolean", SRC,
                   "1 when the source's last scrape succeeded and is recent, else 0 (also before its first scrape).")
SOURCE_DURATION = Metric("chatops_source_scrape_duration_seconds", "gauge", "seconds", SRC,
                         "Duration of the source's last scrape.")
SOURCE_SCRAPES = Metric("chatops_source_scrapes_total", "counter", "scrapes", SRC, "Scrapes of the source run.")
SOURCE_ERRORS = Metric("chatops_source_scrape_errors_total", "counter", "scrapes", SRC,
                       "Scrapes that failed: the source was down, raised, or took longer than its timeout.")
SOURCE_LAST = Metric("chatops_source_last_scrape_timestamp_seconds", "gauge", "seconds", SRC,
                     "When the source's last scrape started, in seconds since the epoch.")
SOURCE_LAST_OK = Metric("chatops_source_last_success_timestamp_seconds", "gauge", "seconds", SRC,
                        "When the source last answered, in seconds since the epoch.")
SOURCE_INTERVAL = Metric("chatops_source_interval_seconds", "gauge", "seconds", SRC,
                         "The source's scrape interval, from the cluster file.")
SOURCE_SECTION_ERRORS = Metric("chatops_source_section_errors", "gauge", "boolean", SRC + ("section",),
                               "1 for each section that failed in the source's last scrape while the rest "
                               "arrived; absent when every section worked.")
STORE_SERIES = Metric("chatops_store_series", "gauge", "series", (), "Time series held in memory.")
STORE_POINTS = Metric("chatops_store_points", "gauge", "points", (), "Points held in memory, all series together.")
STORE_CAPACITY = Metric("chatops_store_points_per_series", "gauge", "points", (),
                        "Points one series keeps (history / interval + 1).")
STORE_DROPPED = Metric("chatops_store_dropped_series_total", "counter", "series", (),
                       "Figures not stored because their target already held the most series allowed.")
STARTED = Metric("chatops_controlplane_start_time_seconds", "gauge", "seconds", (),
                 "When the control plane started, in seconds since the epoch.")

DEST = ("destination",)
ALERT_ENABLED = Metric("chatops_alert_destination_enabled", "gauge", "boolean", DEST + ("type",),
                       "1 when the destination's variables are set and it is delivered to, else 0.")
ALERT_NOTIFICATIONS = Metric("chatops_alert_notifications_total", "counter", "notifications",
                             DEST + ("outcome",),
                             "Notifications written to the outbox, delivered, failed attempts and rejected, "
                             "by this control plane since it started.")
ALERT_PENDING = Metric("chatops_alert_outbox_pending", "gauge", "notifications", DEST,
                       "Notifications in the outbox neither delivered nor rejected.")
ALERT_OLDEST = Metric("chatops_alert_outbox_oldest_pending_age_seconds", "gauge", "seconds", DEST,
                      "Age of the oldest pending notification; 0 when none is pending.")

# Named, so each collector below takes its own section by name and the order here is only the
# order of docs/metrics.md.
REDIS_SECTION = Section(
    "Redis", "Per shard, from INFO and CONFIG GET (source `redis`, `controlplane.scrape.interval`).",
    (REDIS_UP, *(m for _, _, m in REDIS_INFO_FIELDS[:3]), REDIS_MAXCLIENTS,
     *(m for _, _, m in REDIS_INFO_FIELDS[3:]), REDIS_CPU, REDIS_KEYS, REDIS_EXPIRING,
     REDIS_CALLS, REDIS_CALL_SECONDS))
CLIENT_LIST_SECTION = Section(
    "CLIENT LIST", "Per shard and source host, from CLIENT LIST (source `clients`, "
    "`controlplane.scrape.client_list_interval`). At most 100 source hosts per shard; the "
    "rest are summed into `source_host=\"_other\"`.",
    (CL_UP, CL_CLIENTS, CL_IDLE, CL_LONG_IDLE, CL_OLDEST, CL_MAX_IDLE, CL_THRESHOLD, CL_BYTES))
HAPROXY_SECTION = Section(
    "HAProxy", "Per chat host, from the admin socket's `show stat` and `show info` and the master "
    "socket's `show proc` (source `haproxy`). Frontends, backends and servers have separate names, "
    "as in HAProxy's own exporter, so that summing one never counts a session twice.",
    (HAPROXY_UP, *(m for _, _, m in HAPROXY_HOST_FIELDS), *(m for m, _ in HAPROXY_ROWS.values())))
PROCESS_SECTION = Section(
    "Processes", "Per supervised process, from psutil and /proc/net/tcp (source `process`).",
    (PROC_UP, PROC_CPU, PROC_RSS, PROC_FDS, PROC_THREADS, PROC_START, PROC_CONNS, PROC_TIME_WAIT))
LOGS_SECTION = Section(
    "Logs", "From every log file in the run directory (source `logs`). At most 500 groups; the "
    "rest are summed into `remote=\"_other\"`.",
    (LOG_EVENTS, LOG_UNPARSED, LOG_FILES))
SELF_SECTION = Section(
    "The control plane itself", "Every source's job health, and the in-memory store.",
    (SOURCE_UP, SOURCE_DURATION, SOURCE_SCRAPES, SOURCE_ERRORS, SOURCE_LAST, SOURCE_LAST_OK,
     SOURCE_INTERVAL, SOURCE_SECTION_ERRORS, STORE_SERIES, STORE_POINTS, STORE_CAPACITY,
     STORE_DROPPED, STARTED))
ALERTING_SECTION = Section(
    "Alerting", "Per alert destination of the cluster file (docs/alerting.md), from the outbox in the "
    "control plane's database and the notifier's counters. Absent when the cluster file has no "
    "`alerts`.",
    (ALERT_ENABLED, ALERT_NOTIFICATIONS, ALERT_PENDING, ALERT_OLDEST))
CATALOGUE: tuple[Section, ...] = (REDIS_SECTION, CLIENT_LIST_SECTION, HAPROXY_SECTION, PROCESS_SECTION,
                                  LOGS_SECTION, SELF_SECTION, ALERTING_SECTION)


def all_metrics() -> list[Metric]:
    return [m for s in CATALOGUE for m in s.metrics]


def _check_catalogue() -> None:
    names = [m.name for m in all_metrics()]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise AssertionError(f"metrics defined twice: {sorted(dupes)}")
    for m in all_metrics():
        if not m.name.startswith("chatops_") or (m.type == "counter") != m.name.endswith("_total"):
            raise AssertionError(f"{m.name}: needs the chatops_ prefix, and _total exactly when a counter")
        unknown = set(m.labels) - set(LABELS)
        if unknown:
            raise AssertionError(f"{m.name}: labels {sorted(unknown)} are not described in LABELS")


_check_catalogue()


def markdown() -> str:
    """docs/metrics.md's control-plane section, generated from the catalogue."""
    out = [
        "## The control plane",
        "",
        "The control plane serves everything it collects at `http://<controlplane.listen>/metrics`",
        "(`controlplane.listen.address`:`controlplane.listen.port`), from custom collectors that read",
        "the newest scrape of each source when Prometheus asks. A source that is down has its `*_up`",
        "gauge at 0 and no other series (no stale values); so does one whose last scrape is older than",
        "3 intervals plus its timeout. `chatops_source_up` and its siblings give every source's health.",
        "This section is generated from `controlplane/metrics.py` (`python -m controlplane.metrics`",
        "prints it); `tests/controlplane/test_metrics.py` fails when the two differ, and when a live",
        "control plane exports a name that is not here, or lacks one that is.",
        "",
        "Labels:",
        "",
        "| label | meaning |",
        "|---|---|",
    ]
    used = {lbl for m in all_metrics() for lbl in m.labels}
    out += [f"| `{k}` | {v} |" for k, v in LABELS.items() if k in used]
    for s in CATALOGUE:
        out += ["", f"### {s.title}", "", s.about, "",
                "| name | type | unit | labels | meaning |", "|---|---|---|---|---|"]
        for m in s.metrics:
            labels = ", ".join(f"`{lbl}`" for lbl in m.labels)
            out.append(f"| `{m.name}` | {m.type} | {m.unit} | {labels} | {m.help} |")
    return "\n".join(out) + "\n"


# -- reading the store ----------------------------------------------------------------------------

class _View:
    """What one /metrics request reads: the cluster file, the store, and each job's schedule."""

    def __init__(self, app):
        self.cf = app.config["CLUSTER"]
        self.store = app.extensions["chatops.store"]
        self.scraper = app.extensions.get("chatops.scraper")
        self.app = app
        self.now = time.time()
        self.jobs = {(j["kind"], j["target"]): j for j in (self.scraper.jobs() if self.scraper else [])}

    def stale_after(self, source: str, target: str) -> float:
        j = self.jobs.get((source, target))
        if j is None:
            return float("inf")
        return 3 * j["interval_s"] + j["timeout_s"]

    def fresh(self, source: str, target: str):
        """The newest observation when it is up and recent, else None."""
        snap = self.store.latest(source, target)
        if snap is None or not snap.obs.up or snap.obs.data is None:
            return None
        if self.now - snap.obs.at > self.stale_after(source, target):
            return None
        return snap.obs

    def cluster(self, host: str | None) -> str:
        return (self.cf.cluster_of(host) if host else None) or ""


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _add(fam, labels: list[str], value: Any, scale: float = 1) -> None:
    v = _num(value)
    if v is not None:
        fam.add_metric(labels, v * scale)


def _capped(rows: list[tuple[str, dict[str, float]]], limit: int) -> list[tuple[str, dict[str, float]]]:
    """Keep the first `limit` (name, values) rows; sum the rest's values into one `_other` row."""
    if len(rows) <= limit:
        return rows
    rest: dict[str, float] = defaultdict(float)
    for _, values in rows[limit:]:
        for k, v in values.items():
            rest[k] = max(rest[k], v) if k.startswith("max:") else rest[k] + v
    return rows[:limit] + [(OTHER, dict(rest))]


# -- the collectors -------------------------------------------------------------------------------

class _Collector:
    metrics: tuple[Metric, ...] = ()

    def __init__(self, app):
        self.app = app

    def collect(self) -> Iterator:
        fams = {m.name: m.family() for m in self.metrics}
        self.fill(_View(self.app), fams)
        yield from fams.values()

    def fill(self, v: _View, fams: dict) -> None:
        raise NotImplementedError


class RedisCollector(_Collector):
    """Source `redis`: INFO and CONFIG GET per shard."""
    metrics = REDIS_SECTION.metrics

    def fill(self, v: _View, f: dict) -> None:
        for shard in v.cf.redis.shards:
            lbl = [shard.name, shard.host]
            obs = v.fresh("redis", shard.name)
            f[REDIS_UP.name].add_metric(lbl, 1.0 if obs is not None else 0.0)
            if obs is None:
                continue
            info = obs.data.get("info") or {}
            for sec, fld, m in REDIS_INFO_FIELDS:
                _add(f[m.name], lbl, (info.get(sec) or {}).get(fld))
            cpu = info.get("cpu") or {}
            _add(f[REDIS_CPU.name], lbl + ["user"], cpu.get("used_cpu_user"))
            _add(f[REDIS_CPU.name], lbl + ["system"], cpu.get("used_cpu_sys"))
            _add(f[REDIS_MAXCLIENTS.name], lbl, _int((obs.data.get("config") or {}).get("maxclients")))
            dbs = [db for db in (info.get("keyspace") or {}).values() if isinstance(db, dict)]
            if "keyspace" in info:
                f[REDIS_KEYS.name].add_metric(lbl, float(sum(_num(db.get("keys")) or 0 for db in dbs)))
                f[REDIS_EXPIRING.name].add_metric(lbl, float(sum(_num(db.get("expires")) or 0 for db in dbs)))
            for name, stat in (info.get("commandstats") or {}).items():
                if not isinstance(stat, dict):
                    continue
                cmd = name.removeprefix("cmdstat_")
                _add(f[REDIS_CALLS.name], lbl + [cmd], stat.get("calls"))
                _add(f[REDIS_CALL_SECONDS.name], lbl + [cmd], stat.get("usec"), 1e-6)


def _int(v: Any) -> int | None:
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


class ClientListCollector(_Collector):
    """Source `clients`: CLIENT LIST per shard, by source host."""
    metrics = CLIENT_LIST_SECTION.metrics

    def fill(self, v: _View, f: dict) -> None:
        for shard in v.cf.redis.shards:
            lbl = [shard.name, shard.host]
            obs = v.fresh("clients", shard.name)
            f[CL_UP.name].add_metric(lbl, 1.0 if obs is not None else 0.0)
            if obs is None:
                continue
            d = obs.data
            _add(f[CL_THRESHOLD.name], lbl, d.get("idle_after_s"))
            _add(f[CL_BYTES.name], lbl, d.get("bytes"))
            rows = []
            for h in d.get("by_host") or []:
                rows.append((str(h.get("host")), {
                    "count": _num(h.get("count")) or 0.0, "idle": _num(h.get("idle_over")) or 0.0,
                    "long": _num(h.get("idle_over_long")) or 0.0,
                    "max:oldest": _num(h.get("oldest_age_s")) or 0.0,
                    "max:idle": _num(h.get("max_idle_s")) or 0.0}))
            for host, vals in _capped(rows, MAX_SOURCE_HOSTS):
                hl = lbl + [host, v.cluster(host) if host != OTHER else ""]
                f[CL_CLIENTS.name].add_metric(hl, vals["count"])
                f[CL_IDLE.name].add_metric(hl, vals["idle"])
                f[CL_LONG_IDLE.name].add_metric(hl, vals["long"])
                f[CL_OLDEST.name].add_metric(hl, vals["max:oldest"])
                f[CL_MAX_IDLE.name].add_metric(hl, vals["max:idle"])


class HAProxyCollector(_Collector):
    """Source `haproxy`: per chat host, `show stat` rows and the process's info."""
    metrics = HAPROXY_SECTION.metrics

    def fill(self, v: _View, f: dict) -> None:
        from controlplane.sources.figures import serving
        for host, cluster in v.cf.chat_hosts():
            lbl = [cluster, host]
            obs = v.fresh("haproxy", host)
            stat = getattr(obs.data, "stat", None) if obs is not None else None
            f[HAPROXY_UP.name].add_metric(lbl, 1.0 if stat is not None else 0.0)
            if stat is None:
                continue
            info, proc = getattr(obs.data, "info", None) or {}, getattr(obs.data, "proc", None)
            for part, fld, m in HAPROXY_HOST_FIELDS:
                if part == "info":
                    _add(f[m.name], lbl, info.get(fld))
                elif proc is not None:
                    value = getattr(proc, fld, None)
                    _add(f[m.name], lbl, len(value) if isinstance(value, list) else value)
            seen: set[tuple[str, str, str]] = set()
            for r in stat.rows:
                if r.kind not in ("frontend", "backend", "server") or (r.kind, r.proxy, r.name) in seen:
                    continue
                seen.add((r.kind, r.proxy, r.name))
                rl = lbl + [r.proxy] + ([r.name] if r.kind == "server" else [])
                _add(f[HAPROXY_ROWS[(r.kind, "status")][0].name], rl, serving(r.status))
                for fld, *_ in HAPROXY_STAT_FIELDS:
                    got = HAPROXY_ROWS.get((r.kind, fld))
                    if got is not None:
                        _add(f[got[0].name], rl, getattr(r, fld, None), got[1])


class ProcessCollector(_Collector):
    """Source `process`: every supervised process."""
    metrics = PROCESS_SECTION.metrics

    def fill(self, v: _View, f: dict) -> None:
        obs = v.fresh("process", "local")
        seen: set[str] = set()
        procs = (getattr(obs.data, "processes", None) or []) if obs is not None else []
        for p in procs:
            if p.name in seen:
                continue
            seen.add(p.name)
            s = p.stats
            lbl = [p.name, p.kind, p.host, v.cluster(p.host)]
            f[PROC_UP.name].add_metric(lbl, 0.0 if s.gone else 1.0)
            if s.gone:
                continue
            _add(f[PROC_CPU.name], lbl + ["user"], s.cpu_user)
            _add(f[PROC_CPU.name], lbl + ["system"], s.cpu_system)
            _add(f[PROC_RSS.name], lbl, s.rss)
            _add(f[PROC_FDS.name], lbl, s.num_fds)
            _add(f[PROC_THREADS.name], lbl, s.num_threads)
            _add(f[PROC_START.name], lbl, s.create_time)
            _add(f[PROC_TIME_WAIT.name], lbl, p.time_wait)
            if p.connections is not None:
                rows = [(str(k), {"n": float(n)}) for k, n in p.connections.items()]
                for peer, vals in _capped(rows, MAX_SOURCE_HOSTS):
                    f[PROC_CONNS.name].add_metric(lbl + [peer], vals["n"])


class LogCollector(_Collector):
    """Source `logs`: line counts per (service, host, remote, kind) since the control plane started."""
    metrics = LOGS_SECTION.metrics

    def fill(self, v: _View, f: dict) -> None:
        obs = v.fresh("logs", "local")
        if obs is None:
            return
        snap = v.store.latest("logs", "local")
        detail = snap.detail if snap is not None else {}
        _add(f[LOG_FILES.name], [], (obs.data or {}).get("files") if isinstance(obs.data, dict) else None)
        _add(f[LOG_UNPARSED.name], [], detail.get("unparsed_total"))
        shards = {s.name: s.host for s in v.cf.redis.shards}
        totals: dict[tuple[str, ...], float] = defaultdict(float)
        groups = sorted(detail.get("groups") or [], key=lambda g: -(_num(g.get("total")) or 0))
        for i, g in enumerate(groups):
            service, host = str(g.get("service") or ""), str(g.get("host") or "")
            # Log files are named <service>-<host>, Redis's <service>-<shard>.
            shard = host if service == "redis" and host in shards else ""
            host = shards[shard] if shard else host
            remote = (g.get("remote") or "") if i < MAX_LOG_GROUPS else OTHER
            key = (service, host, v.cluster(host), shard, str(remote), str(g.get("kind") or ""))
            totals[key] += _num(g.get("total")) or 0.0
        for key, n in totals.items():
            f[LOG_EVENTS.name].add_metric(list(key), n)


class ControlPlaneCollector(_Collector):
    """The control plane's own health: every source's job, the store's size."""
    metrics = SELF_SECTION.metrics

    def fill(self, v: _View, f: dict) -> None:
        for (kind, target), j in v.jobs.items():
            lbl = [kind, target]
            last = j["last_run"]
            ok = (last is not None and j["last_error"] is None
                  and v.now - last <= v.stale_after(kind, target))
            f[SOURCE_UP.name].add_metric(lbl, 1.0 if ok else 0.0)
            _add(f[SOURCE_SCRAPES.name], lbl, j["runs"])
            _add(f[SOURCE_ERRORS.name], lbl, j["failures"])
            _add(f[SOURCE_INTERVAL.name], lbl, j["interval_s"])
            _add(f[SOURCE_DURATION.name], lbl, j["last_duration_s"])
            _add(f[SOURCE_LAST.name], lbl, last)
            _add(f[SOURCE_LAST_OK.name], lbl, j["last_ok"])
            snap = v.store.latest(kind, target)
            if snap is not None and snap.obs.up:
                for section in sorted(snap.obs.section_errors):
                    f[SOURCE_SECTION_ERRORS.name].add_metric(lbl + [str(section)], 1.0)
        size = v.store.size()
        f[STORE_SERIES.name].add_metric([], float(size["series"]))
        f[STORE_POINTS.name].add_metric([], float(size["points"]))
        f[STORE_CAPACITY.name].add_metric([], float(size["points_per_series"]))
        f[STORE_DROPPED.name].add_metric([], float(size["dropped_series"]))
        _add(f[STARTED.name], [], v.app.extensions.get("chatops.started"))


class AlertingCollector(_Collector):
    """Alert destinations: enabled or not, the notifier's counters, the outbox's backlog."""
    metrics = ALERTING_SECTION.metrics

    def fill(self, v: _View, f: dict) -> None:
        if not v.cf.alerts:
            return
        notifier = v.app.extensions.get("chatops.notifier")
        lanes = notifier.lanes if notifier is not None else {}
        backlog = v.app.extensions["chatops.db"].alert_backlog()
        for d in v.cf.alerts:
            lane = lanes.get(d.name)
            f[ALERT_ENABLED.name].add_metric([d.name, d.type], 1.0 if lane is not None and lane.dest else 0.0)
            counts = lane.counts if lane is not None else None
            for outcome in ("enqueued", "delivered", "failed", "rejected"):
                f[ALERT_NOTIFICATIONS.name].add_metric([d.name, outcome],
                                                       float(getattr(counts, outcome, 0) if counts else 0))
            b = backlog.get(d.name) or {}
            f[ALERT_PENDING.name].add_metric([d.name], float(b.get("pending") or 0))
            oldest = b.get("oldest")
            f[ALERT_OLDEST.name].add_metric([d.name], max(0.0, v.now - oldest) if oldest else 0.0)


COLLECTORS = (RedisCollector, ClientListCollector, HAProxyCollector, ProcessCollector, LogCollector,
              ControlPlaneCollector, AlertingCollector)


def init_app(app) -> CollectorRegistry:
    """A private registry (no default process/Python metrics) with one collector per source."""
    registry = CollectorRegistry(auto_describe=False)
    for cls in COLLECTORS:
        registry.register(cls(app))
    app.extensions["chatops.registry"] = registry

    @app.get("/metrics")
    def metrics():
        return Response(generate_latest(registry), content_type=CONTENT_TYPE)
    return registry


if __name__ == "__main__":
    sys.stdout.write(markdown())
