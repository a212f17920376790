"""chatops' Grafana dashboards, built with grafana-foundation-sdk: overview, shards, proxies,
services and incidents. `python -m dashboards.generate` writes them to dashboards/grafana/*.json.

Every dashboard picks its Prometheus with the `datasource` variable, and narrows with `cluster`,
`host` and `shard` where the metrics carry those labels. The metric names are docs/metrics.md's:
`chatops_*` from the control plane's /metrics, `chat_*` from the chat services, `haproxy_*` from
each chat host's HAProxy exporter (the scrape config adds `host` and `cluster` to the last two;
dashboards/README.md). The incidents dashboard also reads the control plane's
`GET /api/v1/incidents` through the Infinity datasource (yesoreyeram-infinity-datasource): Grafana
cannot query a JSON API with Prometheus, the API's GETs need no token, and Infinity is Grafana
Labs' maintained plugin for exactly this (the older JSON API plugin is deprecated).
"""

from __future__ import annotations

from typing import Any

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import prometheus, stat, table, timeseries
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DashboardLinkType,
    DataSourceRef,
    DynamicConfigValue,
    GridPos,
    VariableRefresh,
    VariableSort,
)

PROM = DataSourceRef(type_val="prometheus", uid="${datasource}")
INFINITY = DataSourceRef(type_val="yesoreyeram-infinity-datasource", uid="${infinity}")
TAGS = ["chatops"]
CLUSTER = 'cluster=~"$cluster"'
HOST = 'cluster=~"$cluster", host=~"$host"'
SHARD = 'shard=~"$shard"'


# -- variables ------------------------------------------------------------------------------------

def _datasource() -> db.DatasourceVariable:
    return db.DatasourceVariable("datasource").label("Prometheus").type("prometheus")


def _query(name: str, label: str, query: str) -> db.QueryVariable:
    return (db.QueryVariable(name).label(label).datasource(PROM)
            .query({"query": query, "refId": f"{name}-variable"})
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED).sort(VariableSort.ALPHABETICAL_ASC)
            .multi(True).include_all(True).all_value(".*"))


def _cluster() -> db.QueryVariable:
    return _query("cluster", "Cluster", "label_values(chatops_haproxy_up, cluster)")


def _host() -> db.QueryVariable:
    return _query("host", "Chat host", f"label_values(chatops_haproxy_up{{{CLUSTER}}}, host)")


def _shard() -> db.QueryVariable:
    return _query("shard", "Shard", "label_values(chatops_redis_up, shard)")


# -- panels ---------------------------------------------------------------------------------------

def _q(expr: str, legend: str = "", ref: str = "A", instant: bool = False) -> prometheus.Dataquery:
    q = prometheus.Dataquery().expr(expr).ref_id(ref).datasource(PROM)
    if legend:
        q = q.legend_format(legend)
    return q.instant() if instant else q.range()


def _ts(title: str, desc: str, unit: str, *queries: tuple[str, str], w: int = 12, h: int = 8,
        stack: bool = False) -> timeseries.Panel:
    p = (timeseries.Panel().title(title).description(desc).unit(unit).datasource(PROM)
         .grid_pos(GridPos(h=h, w=w)).line_width(1).fill_opacity(10)
         .legend(cb.VizLegendOptions().show_legend(True).display_mode(common.LegendDisplayMode.TABLE)
                 .placement(common.LegendPlacement.BOTTOM).calcs(["lastNotNull", "max"]))
         .tooltip(cb.VizTooltipOptions().mode(common.TooltipDisplayMode.MULTI)
                  .sort(common.SortOrder.DESCENDING)))
    if stack:
        p = p.stacking(cb.StackingConfig().mode(common.StackingMode.NORMAL)).fill_opacity(40)
    for i, (expr, legend) in enumerate(queries):
        p = p.with_target(_q(expr, legend, chr(ord("A") + i)))
    return p


def _stat(title: str, desc: str, expr: str, unit: str = "none", w: int = 4, legend: str = "") -> stat.Panel:
    return (stat.Panel().title(title).description(desc).unit(unit).datasource(PROM)
            .grid_pos(GridPos(h=4, w=w)).with_target(_q(expr, legend, instant=True))
            .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False)))


def _row(title: str) -> db.Row:
    return db.Row(title)


def _dashboard(uid: str, title: str, desc: str, variables: list, panels: list) -> db.Dashboard:
    d = (db.Dashboard(title).uid(uid).description(desc).tags(TAGS).editable().timezone("browser")
         .time("now-1h", "now").refresh("30s").tooltip(DashboardCursorSync.CROSSHAIR)
         .link(db.DashboardLink("chatops").type(DashboardLinkType.DASHBOARDS).tags(TAGS).as_dropdown(True).include_vars(True)
               .keep_time(True)))
    for v in variables:
        d = d.with_variable(v)
    for p in panels:
        d = d.with_row(p) if isinstance(p, db.Row) else d.with_panel(p)
    return d


# -- the dashboards -------------------------------------------------------------------------------

def overview() -> db.Dashboard:
    return _dashboard("chatops-overview", "chatops / Overview",
                      "The chat cluster at a glance: what is firing, the shards' load, the proxies and the "
                      "services. Each panel links to its own dashboard through the chatops menu.",
                      [_datasource(), _cluster()], [
        _stat("Alerts firing", "chatops' Prometheus alerts firing now (dashboards/prometheus/chatops-rules.yml).",
              'count(ALERTS{alertstate="firing", detector!=""}) or vector(0)'),
        _stat("Sources up", "Scrape jobs of the control plane whose last scrape succeeded, of all.",
              "sum(chatops_source_up) / count(chatops_source_up)", "percentunit"),
        _stat("Shards up", "Redis shards answering the control plane.", "sum(chatops_redis_up)"),
        _stat("HAProxies up", "Chat hosts whose HAProxy answers.", f"sum(chatops_haproxy_up{{{CLUSTER}}})"),
        _stat("Edge connections", "Client connections open on every edge.",
              f"sum(chat_edge_connections{{{CLUSTER}}})"),
        _stat("Messages/s", "PRIVMSGs the edges received, per second.",
              f"sum(rate(chat_edge_messages_received_total{{{CLUSTER}}}[$__rate_interval]))", "reqps"),
        _row("Load"),
        _ts("Shard ops/s", "Commands each shard processed per second (the control plane's own included).",
            "ops", ("sum by (shard) (rate(chatops_redis_commands_processed_total[$__rate_interval]))", "{{shard}}")),
        _ts("Shard CPU, % of one core", "Redis CPU per shard; the hot_shard threshold is 80%.", "percent",
            ("100 * sum by (shard) (rate(chatops_redis_cpu_seconds_total[$__rate_interval]))", "{{shard}}")),
        _ts("Connected clients by source host", "Connections to the shards, by the host they come from: a leak "
            "shows as one host climbing.", "short",
            (f"sum by (source_host) (chatops_client_list_clients{{{CLUSTER}}})", "{{source_host}}"), stack=True),
        _ts("Alerts firing", "chatops' alerts firing, by name.", "short",
            ('count by (alertname, severity) (ALERTS{alertstate="firing", detector!=""})',
             "{{alertname}} ({{severity}})")),
        _row("Delivery"),
        _ts("Messages rejected by reason", "PRIVMSGs refused by the edges; msg_unavailable means clue, Redis or the "
            "exchange could not be reached.", "reqps",
            (f"sum by (reason) (rate(chat_edge_messages_rejected_total{{{CLUSTER}}}[$__rate_interval]))",
             "{{reason}}")),
        _ts("Deliveries by result", "Messages the exchanges handed to the edges, by result.", "reqps",
            (f"sum by (result) (rate(chat_exchange_deliveries_total{{{CLUSTER}}}[$__rate_interval]))", "{{result}}")),
    ])


def shards() -> db.Dashboard:
    by = f"{{{SHARD}}}"
    return _dashboard("chatops-shards", "chatops / Shards",
                      "Each Redis shard: load, CPU, clients by source host (the leak), memory and keys, and "
                      "where clue's commands go (hot shards, hot keys).",
                      [_datasource(), _shard()], [
        _row("Load"),
        _ts("Ops/s", "Commands processed per second.", "ops",
            (f"sum by (shard) (rate(chatops_redis_commands_processed_total{by}[$__rate_interval]))", "{{shard}}")),
        _ts("CPU, % of one core", "The hot_shard threshold is 80%; critical at 95%.", "percent",
            (f"100 * sum by (shard) (rate(chatops_redis_cpu_seconds_total{by}[$__rate_interval]))", "{{shard}}")),
        _ts("Heat (>= 1: hot)", "The hot_shard detector's heat, from the recording rules.", "short",
            (f"shard:chatops_redis_heat:ratio{by}", "{{shard}}")),
        _ts("Commands by kind of key (clue)", "What clue sends, by key prefix: one prefix dominating a hot shard "
            "points at a hot key.", "ops",
            ("sum by (prefix) (rate(chat_clue_redis_ops_by_prefix_total[$__rate_interval]))", "{{prefix}}")),
        _ts("Busiest slot's share (clue)", "The busiest slot's share of clue's commands to each shard: at 50% or "
            "more on a hot shard, moving slots will not help.", "percentunit",
            (f"max by (shard) (shard_slot:chat_clue_redis_slot_ops:share{by})", "{{shard}}")),
        _ts("Top commands", "Calls per second of each command (INFO commandstats).", "ops",
            (f"topk(8, sum by (shard, command) (rate(chatops_redis_command_calls_total{by}[$__rate_interval])))",
             "{{shard}} {{command}}")),
        _row("Clients"),
        _ts("Connected clients and maxclients", "Connections open now against the limit.", "short",
            (f"chatops_redis_connected_clients{by}", "{{shard}} connected"),
            (f"chatops_redis_maxclients{by}", "{{shard}} maxclients")),
        _ts("Clients by source host", "CLIENT LIST grouped by the host each connection comes from.", "short",
            (f"chatops_client_list_clients{by}", "{{shard}} from {{source_host}}")),
        _ts("Idle clients by source host", "Connections idle past the idle threshold: the leak of 2014.", "short",
            (f"chatops_client_list_idle_clients{by}", "{{shard}} from {{source_host}}")),
        _ts("Rejected connections/s", "Connections refused because maxclients was reached.", "cps",
            (f"rate(chatops_redis_rejected_connections_total{by}[$__rate_interval])", "{{shard}}")),
        _row("Memory and keys"),
        _ts("Memory", "Used memory and the maxmemory limit (0: none).", "bytes",
            (f"chatops_redis_memory_used_bytes{by}", "{{shard}} used"),
            (f"chatops_redis_memory_max_bytes{by} > 0", "{{shard}} max")),
        _ts("Keys", "Keys in all databases.", "short", (f"chatops_redis_keys{by}", "{{shard}}")),
        _ts("Hit ratio", "Key lookups that found the key.", "percentunit",
            (f"rate(chatops_redis_keyspace_hits_total{by}[$__rate_interval]) / (rate(chatops_redis_keyspace_hits_total"
             f"{by}[$__rate_interval]) + rate(chatops_redis_keyspace_misses_total{by}[$__rate_interval]))",
             "{{shard}}")),
        _ts("Evicted and expired keys/s", "Keys removed by maxmemory and by TTL.", "short",
            (f"rate(chatops_redis_evicted_keys_total{by}[$__rate_interval])", "{{shard}} evicted"),
            (f"rate(chatops_redis_expired_keys_total{by}[$__rate_interval])", "{{shard}} expired")),
    ])


def proxies() -> db.Dashboard:
    by = f"{{{HOST}}}"
    return _dashboard("chatops-proxies", "chatops / Proxies",
                      "Each chat host's HAProxy, from its own exporter (haproxy_*): sessions against limits, "
                      "queues, errors, servers' state; and its workers and reloads from the control plane.",
                      [_datasource(), _cluster(), _host()], [
        _row("Sessions"),
        _ts("Frontend sessions of limit", "scur / slim: at 80% proxy_saturation warns, at 100% HAProxy stops "
            "accepting.", "percentunit",
            (f"haproxy_frontend_current_sessions{by} / haproxy_frontend_limit_sessions{by}", "{{host}} {{proxy}}")),
        _ts("Backend sessions", "Sessions open on each backend (a shard listener is redis-<shard>).", "short",
            (f"haproxy_backend_current_sessions{by}", "{{host}} {{proxy}}")),
        _ts("Session rate", "New sessions per second on each frontend.", "cps",
            (f"rate(haproxy_frontend_sessions_total{by}[$__rate_interval])", "{{host}} {{proxy}}")),
        _ts("Queue", "Requests waiting for a connection slot.", "short",
            (f"haproxy_backend_current_queue{by}", "{{host}} {{proxy}}"),
            (f"haproxy_server_current_queue{by} > 0", "{{host}} {{proxy}}/{{server}}")),
        _row("Errors and servers"),
        _ts("Errors/s", "Connection and response errors (backends), request errors (frontends).", "short",
            (f"rate(haproxy_backend_connection_errors_total{by}[$__rate_interval])", "{{host}} {{proxy}} econ"),
            (f"rate(haproxy_backend_response_errors_total{by}[$__rate_interval])", "{{host}} {{proxy}} eresp"),
            (f"rate(haproxy_frontend_request_errors_total{by}[$__rate_interval])", "{{host}} {{proxy}} ereq")),
        _ts("Servers not serving", "Servers DOWN or NOLB (MAINT is an operator's choice).", "short",
            (f'haproxy_server_status{{{HOST}, state=~"DOWN|NOLB"}} == 1', "{{host}} {{proxy}}/{{server}} {{state}}")),
        _ts("Bytes/s", "Traffic through each frontend.", "Bps",
            (f"rate(haproxy_frontend_bytes_in_total{by}[$__rate_interval])", "{{host}} {{proxy}} in"),
            (f"rate(haproxy_frontend_bytes_out_total{by}[$__rate_interval])", "{{host}} {{proxy}} out")),
        _ts("Workers and reloads", "Current and old workers after reloads, and failed reloads (control plane).",
            "short", (f"chatops_haproxy_workers{by}", "{{host}} workers"),
            (f"chatops_haproxy_old_workers{by}", "{{host}} old workers"),
            (f"increase(chatops_haproxy_failed_reloads_total{by}[$__rate_interval])", "{{host}} failed reloads")),
    ])


def services() -> db.Dashboard:
    by = f"{{{HOST}}}"
    return _dashboard("chatops-services", "chatops / Services",
                      "The chat services (edge, clue, exchange) from their own /metrics, their processes "
                      "and their logs from the control plane: ingestion timeouts, connection churn, delivery.",
                      [_datasource(), _cluster(), _host()], [
        _row("Ingestion: edge -> clue -> Redis"),
        _ts("Edge messages/s", "Received, accepted and refused PRIVMSGs.", "reqps",
            (f"sum by (host) (rate(chat_edge_messages_received_total{by}[$__rate_interval]))", "{{host}} received"),
            (f"sum by (host) (rate(chat_edge_messages_accepted_total{by}[$__rate_interval]))", "{{host}} accepted"),
            (f"sum by (host, reason) (rate(chat_edge_messages_rejected_total{by}[$__rate_interval]))",
             "{{host}} {{reason}}")),
        _ts("Clue timeouts/s", "Edge requests to clue that timed out, and the `[clue] Timed out` log lines "
            "(ingestion_timeouts: 0.2/s).", "short",
            (f"rate(chat_edge_clue_timeouts_total{by}[$__rate_interval])", "{{host}} counter"),
            (f'sum by (host) (rate(chatops_log_events_total{{{HOST}, service="edge", kind="timeout"}}'
             '[$__rate_interval]))', "{{host}} log lines")),
        _ts("Clue's Redis errors/s", "Failed Redis calls by shard, and ECONNREFUSED lines.", "short",
            (f"sum by (host, shard) (rate(chat_clue_redis_errors_total{by}[$__rate_interval]))", "{{host}} {{shard}}"),
            (f'sum by (host) (rate(chatops_log_events_total{{{HOST}, service="clue", kind="connection_refused"}}'
             '[$__rate_interval]))', "{{host}} refused lines")),
        _ts("Clue decision time (p99)", "Time to decide one PRIVMSG, Redis round trips included.", "s",
            (f"histogram_quantile(0.99, sum by (host, le) (rate(chat_clue_decision_seconds_bucket{by}"
             "[$__rate_interval])))", "{{host}}")),
        _row("Connections and delivery"),
        _ts("Connections opened per request", "connection_churn: at 0.5 or more keepalive is off or the pool is "
            "too small.", "short",
            (f"service:chat_connections_per_request:ratio{by}", "{{service}}-{{host}}")),
        _ts("Exchange deliveries by edge and result", "Messages handed to each edge.", "reqps",
            (f"sum by (host, edge, result) (rate(chat_exchange_deliveries_total{by}[$__rate_interval]))",
             "{{host}} -> {{edge}} {{result}}")),
        _ts("Exchange delivery time (p90)", "Duration of one delivery request to an edge (delivery_late_after: 2s).",
            "s", (f"histogram_quantile(0.9, sum by (host, edge, le) (rate(chat_exchange_request_seconds_bucket{by}"
                  "[$__rate_interval])))", "{{host}} -> {{edge}}")),
        _ts("Edge connections", "Client connections open on each edge.", "short",
            (f"sum by (host, transport) (chat_edge_connections{by})", "{{host}} {{transport}}")),
        _row("Processes and logs"),
        _ts("CPU", "CPU of each supervised process, % of one core.", "percent",
            (f"100 * sum by (process) (rate(chatops_process_cpu_seconds_total{by}[$__rate_interval]))",
             "{{process}}")),
        _ts("Resident memory", "RSS of each supervised process.", "bytes",
            (f"chatops_process_resident_memory_bytes{by}", "{{process}}")),
        _ts("TIME_WAIT connections", "Sockets in TIME_WAIT towards Redis and HAProxy: connection churn.", "short",
            (f"chatops_process_time_wait_connections{by}", "{{process}}")),
        _ts("Log events/s by kind", "Log lines by service and kind (timeout, connection_refused, io_timeout...).",
            "short", (f'sum by (service, kind) (rate(chatops_log_events_total{{{HOST}, kind!="success"}}'
                      '[$__rate_interval]))', "{{service}} {{kind}}")),
    ])


# -- incidents: the control plane's API through Infinity -------------------------------------------

class _Infinity(cogvariants.Dataquery):
    """An Infinity query (its JSON as the plugin saves it): the SDK has no builder for Infinity."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec

    def to_json(self) -> dict[str, Any]:
        return self.spec


class InfinityQuery(cogbuilder.Builder[_Infinity]):
    def __init__(self, ref: str, url: str, root: str, columns: list[tuple[str, str, str]]) -> None:
        self._spec = {
            "refId": ref, "datasource": {"type": INFINITY.type_val, "uid": INFINITY.uid},
            "type": "json", "source": "url", "format": "table", "parser": "backend",
            "url": url, "url_options": {"method": "GET", "data": ""}, "root_selector": root,
            "columns": [{"selector": s, "text": t, "type": k} for s, t, k in columns],
            "filters": [],
        }

    def build(self) -> _Infinity:
        return _Infinity(dict(self._spec))


INCIDENT_COLUMNS = [
    ("id", "id", "number"), ("opened", "time", "timestamp_epoch_s"), ("resolved_at", "timeEnd", "timestamp_epoch_s"),
    ("title", "title", "string"), ("severity", "severity", "string"), ("state", "state", "string"),
    ("root_cause.summary", "text", "string"), ("root_cause.kind", "kind", "string"),
    ("findings.total", "findings", "number"),
]


def incidents() -> db.Dashboard:
    url = "${chatops_url}/api/v1/incidents?state=all&limit=200"
    annotation = (db.AnnotationQuery().name("chatops incidents").datasource(INFINITY).enable(True)
                  .icon_color("red").target(InfinityQuery("Anno", url, "incidents", INCIDENT_COLUMNS)))
    alerts = (db.AnnotationQuery().name("Prometheus alerts").datasource(PROM).enable(True).icon_color("orange")
              .expr('ALERTS{alertstate="firing", detector!=""}'))
    table_panel = (table.Panel().title("Incidents").datasource(INFINITY).grid_pos(GridPos(h=10, w=24))
                   .description("GET /api/v1/incidents: open and acknowledged first, then newest. Each row links "
                                "to the incident's page on the control plane.")
                   .with_target(InfinityQuery("A", url, "incidents", INCIDENT_COLUMNS))
                   .override_by_name("id", [DynamicConfigValue(id_val="links", value=[
                       {"title": "Open in chatops", "url": "${chatops_url}/incidents/${__value.raw}",
                        "targetBlank": True}])]))
    d = _dashboard("chatops-incidents", "chatops / Incidents",
                   "Incidents the control plane opened (annotations and a table, from its API through the "
                   "Infinity datasource), beside the Prometheus alerts and the figures they are about.",
                   [_datasource(),
                    db.DatasourceVariable("infinity").label("chatops API (Infinity)")
                    .type("yesoreyeram-infinity-datasource"),
                    db.TextBoxVariable("chatops_url").label("chatops URL").default_value("http://127.0.0.1:5000")
                    .description("The control plane's address, as controlplane.public_url in the cluster file."),
                    _cluster()], [
        table_panel,
        _ts("Alerts firing", "chatops' Prometheus alerts by name and subject.", "short",
            ('count by (alertname, severity, shard, host) (ALERTS{alertstate="firing", detector!=""})',
             "{{alertname}} {{shard}} {{host}}"), w=24),
        _ts("Idle clients by source host", "The leak's figure (leaked_clients).", "short",
            ("chatops_client_list_idle_clients", "{{shard}} from {{source_host}}")),
        _ts("Shard heat (>= 1: hot)", "hot_shard's heat from the recording rules.", "short",
            ("shard:chatops_redis_heat:ratio", "{{shard}}")),
        _ts("Ingestion: clue timeouts and Redis errors/s", "ingestion_timeouts' signals.", "short",
            (f"sum by (host) (rate(chat_edge_clue_timeouts_total{{{CLUSTER}}}[$__rate_interval]))", "{{host}} timeouts"),
            (f"sum by (host, shard) (rate(chat_clue_redis_errors_total{{{CLUSTER}}}[$__rate_interval]))",
             "{{host}} errors {{shard}}")),
        _ts("Connections opened per request", "connection_churn's ratio.", "short",
            (f"service:chat_connections_per_request:ratio{{{CLUSTER}}}", "{{service}}-{{host}}")),
    ])
    return d.annotation(annotation).annotation(alerts)


DASHBOARDS = {"overview": overview, "shards": shards, "proxies": proxies, "services": services,
              "incidents": incidents}
