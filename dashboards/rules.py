"""Prometheus recording and alerting rules equivalent to chatops' detectors (controlplane/detectors/).

The thresholds are the cluster file's (`controlplane.thresholds`, cluster/spec.py `Thresholds`):
`python -m dashboards.generate` renders them with the documented defaults into
dashboards/prometheus/chatops-rules.yml, and `--cluster-file` renders a cluster's own values (see
dashboards/README.md). Each alert carries `severity`, the subject labels chatops' own findings use
in `about` (`shard`, `host`, `cluster`, `service`), `detector` (the finding kind it mirrors) and the
annotations `summary`, `description` and `runbook_url`. Where an alert cannot follow its detector
exactly (Prometheus sees only the exported metrics, not the control plane's window), the comment
above it says how it differs and why.

The metrics (docs/metrics.md):
- `chatops_*`: the control plane's /metrics (labels shard, host, cluster, source_host...);
- `chat_*`: each chat service's own /metrics (edge, clue, exchange); the scrape config gives each
  target the labels `host`, `cluster` and `service`;
- `haproxy_*`: each chat host's HAProxy exporter; the scrape config gives each target `host` and
  `cluster`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import yaml

from cluster.durations import seconds
from cluster.spec import Thresholds

RUNBOOK = "{{ $externalLabels.chatops_url }}/runbooks/%s"
# The control plane's own commands on every shard (hot_shard.COLLECTOR_COMMANDS): not workload.
OWN_COMMANDS = "object[|]freq|scan|info|config[|]get|slowlog[|]get|latency[|]latest|client[|]list"


@dataclass
class Rule:
    body: dict
    comment: str = ""


@dataclass
class Group:
    name: str
    rules: list[Rule] = field(default_factory=list)


def _g(x: float) -> str:
    """A threshold as PromQL prints it: 500, 0.8, 0.2."""
    return f"{x:g}"


def _dur(d: str) -> str:
    """A cluster-file duration as a Prometheus one: '6s' -> '6s', '1m30s' -> '90s', '500ms' -> '500ms'."""
    s = seconds(d)
    return f"{s:g}s" if s >= 1 and float(s).is_integer() else f"{int(round(s * 1000))}ms"


def _alert(name: str, detector: str, severity: str, expr: str, hold: str, summary: str, description: str,
           comment: str = "") -> Rule:
    body = {"alert": name, "expr": expr.strip() + "\n" if "\n" in expr.strip() else expr.strip()}
    if hold:
        body["for"] = hold
    body["labels"] = {"severity": severity, "detector": detector}
    body["annotations"] = {"summary": summary, "description": description, "runbook_url": RUNBOOK % detector}
    return Rule(body, comment)


def _record(name: str, expr: str, comment: str = "") -> Rule:
    return Rule({"record": name, "expr": expr.strip() + "\n" if "\n" in expr.strip() else expr.strip()}, comment)


def groups(th: Thresholds | None = None) -> list[Group]:
    th = th or Thresholds()
    hold = _dur(th.hold)
    rec = Group("chatops.recording")
    al = Group("chatops.alerts")

    # -- shards: workload, CPU, heat ----------------------------------------------------------------
    rec.rules += [
        _record("shard:chatops_redis_cpu_percent:rate1m",
                "100 * sum by (shard, host) (rate(chatops_redis_cpu_seconds_total[1m]))",
                "CPU of each shard's Redis, % of one core (the detectors' cpu_percent)."),
        _record("shard:chatops_redis_own_ops:rate1m",
                f'sum by (shard, host) (rate(chatops_redis_command_calls_total{{command=~"{OWN_COMMANDS}"}}[1m]))',
                "Commands the control plane itself sends every scrape (OBJECT FREQ, SCAN, INFO...)."),
        _record("shard:chatops_redis_workload_ops:rate1m", """
clamp_min(
    sum by (shard, host) (rate(chatops_redis_commands_processed_total[1m]))
  - on (shard, host) (
        shard:chatops_redis_own_ops:rate1m
      or
        0 * sum by (shard, host) (rate(chatops_redis_commands_processed_total[1m]))
    ),
  0
)""", "The shard's workload: its ops/s less the control plane's own (hot_shard.workload_ops)."),
        _record("shard:chatops_redis_peer_mean_ops:rate1m", """
(
    scalar(sum(shard:chatops_redis_workload_ops:rate1m)) - shard:chatops_redis_workload_ops:rate1m
)
/
(scalar(count(shard:chatops_redis_workload_ops:rate1m)) - 1)""",
                "The mean workload of the other shards that are up (NaN for a shard without peers)."),
        _record("shard:chatops_redis_heat:ratio", f"""
max by (shard, host) (
    label_replace(shard:chatops_redis_cpu_percent:rate1m / {_g(th.hot_shard_cpu_percent)}, "part", "cpu", "", "")
  or
    label_replace(
      min by (shard, host) (
          label_replace(
              shard:chatops_redis_workload_ops:rate1m
            / ({_g(th.hot_shard_ops_factor)} * clamp_min(shard:chatops_redis_peer_mean_ops:rate1m, 1)),
            "part", "peers", "", ""
          )
        or
          label_replace(shard:chatops_redis_workload_ops:rate1m / {_g(th.hot_shard_min_ops_per_s)}, "part", "floor", "", "")
      )
      and on () (count(shard:chatops_redis_workload_ops:rate1m) > 1),
      "part", "ops", "", ""
    )
)""", "hot_shard's heat: max(cpu / hot_shard_cpu_percent, min(ops / (hot_shard_ops_factor x peers' "
              "mean), ops / hot_shard_min_ops_per_s));\nthe ops part only when the shard has peers, as "
              "in the detector (an idle peer counts as 1 op/s). >= 1 is hot."),
        _record("shard:chatops_redis_clients_of_max:ratio",
                "max by (shard, host) (chatops_redis_connected_clients / chatops_redis_maxclients)",
                "Connected clients as a share of maxclients."),
        _record("shard:chatops_redis_rejected_connections:rate1m",
                "sum by (shard, host) (rate(chatops_redis_rejected_connections_total[1m]))",
                "Connections refused because maxclients was reached, per second."),
        _record("shard:chat_clue_redis_ops:rate1m",
                "sum by (shard) (rate(chat_clue_redis_ops_total[1m]))",
                "Commands every clue sends to each shard, per second."),
        _record("shard_slot:chat_clue_redis_slot_ops:share", """
  sum by (shard, slot) (rate(chat_clue_redis_slot_ops_total[1m]))
/ on (shard) group_left ()
  shard:chat_clue_redis_ops:rate1m""", "Each busy slot's share of the commands clue sends to its shard."),
    ]
    not_saturated = ("unless on () (\n    count(shard:chatops_redis_cpu_percent:rate1m >= "
                     f"{_g(th.hot_shard_cpu_percent)})\n  == on () count(shard:chatops_redis_cpu_percent:rate1m) > 1\n)")
    hot = "shard:chatops_redis_heat:ratio >= 1"
    critical_cpu = "shard:chatops_redis_cpu_percent:rate1m >= 95"
    hot_shard_diff = (
        "Differs from hot_shard: rates over 1m instead of the control plane's per-scrape figures; the\n"
        "\"whole cluster saturated\" exception counts the shard itself among the busy ones; critical\n"
        "(CPU >= 95% of a core) is a second rule of the same name, so the alert's `for` restarts when\n"
        "its severity changes. The remediation (reshard, or not when one key dominates) is the\n"
        "control plane's to judge: see ChatopsHotKey.")
    summary = "Shard {{ $labels.shard }} is hot"
    description = ("{{ $labels.shard }} on {{ $labels.host }} works far harder than its peers or burns its core "
                   "(heat {{ $value | printf \"%.2f\" }}, >= 1 is hot).")
    al.rules += [
        _alert("ChatopsHotShard", "hot_shard", "warning",
               f"({hot})\nunless on (shard) ({critical_cpu})\n{not_saturated}", hold, summary, description,
               hot_shard_diff),
        _alert("ChatopsHotShard", "hot_shard", "critical",
               f"({hot})\nand on (shard) ({critical_cpu})\n{not_saturated}", hold, summary, description),
        _alert("ChatopsHotKey", "hot_key", "warning", f"""
  (topk by (shard) (1, shard_slot:chat_clue_redis_slot_ops:share) >= {_g(th.hot_key_share)})
+ on (shard) group_left (host)
  (0 * ({hot}))""", hold,
               "Hot key on {{ $labels.shard }}: slot {{ $labels.slot }}",
               "Slot {{ $labels.slot }} carries {{ $value | humanizePercentage }} of the commands clue sends to "
               "{{ $labels.shard }}, which is hot: moving slots will not help (the slot moves whole).",
               "Differs from hot_key: judged on clue's per-slot counters (chat_clue_redis_slot_ops_total, the\n"
               "32 busiest slots) as rates over 1m, not on the shard's LFU samples, which are not exported;\n"
               "so the alert names the slot, not the key. Always warning (the detector's critical is CPU >= 95%,\n"
               "which ChatopsHotShard reports)."),
    ]

    # -- leaked clients and maxclients -------------------------------------------------------------
    near_max = (f"shard:chatops_redis_clients_of_max:ratio >= {_g(th.maxclients_warn_ratio)}\n"
                "    or shard:chatops_redis_rejected_connections:rate1m > 0")
    by_source = ('label_replace(\n  label_replace(\n    {expr},\n    "shard_host", "$1", "host", "(.*)"\n  ),\n'
                 '  "host", "$1", "source_host", "(.*)"\n)')
    idle = (f'chatops_client_list_idle_clients{{source_host!="controlplane"}} >= {_g(th.leaked_idle_clients)}')
    rec.rules += [
        _record("shard_source_host:chatops_client_list_clients:growth10m", """
  chatops_client_list_clients{source_host!="controlplane"}
- min_over_time(chatops_client_list_clients{source_host!="controlplane"}[10m])""",
                "How far each source host's connections to a shard rose above their low of the last 10 minutes."),
        _record("shard:chatops_redis_workload_ops:growth10m", """
  shard:chatops_redis_workload_ops:rate1m
- min_over_time(shard:chatops_redis_workload_ops:rate1m[10m])""",
                "How far the shard's workload rose above its low of the last 10 minutes."),
    ]
    leak_summary = "{{ $labels.host }} leaks connections to {{ $labels.shard }}"
    al.rules += [
        _alert("ChatopsLeakedClients", "leaked_clients", "warning",
               by_source.format(expr=f"({idle})\n    unless on (shard) ({near_max})"), hold, leak_summary,
               "{{ $labels.host }} ({{ $labels.cluster }} cluster) holds {{ $value }} connections to "
               "{{ $labels.shard }} idle past the control plane's idle threshold.",
               "Equivalent to leaked_clients' idle condition: chatops_client_list_idle_clients counts the\n"
               "connections idle past controlplane.thresholds.idle_client_after, so that threshold is the\n"
               "cluster file's, read at scrape time. Critical when the shard is near maxclients or\n"
               "rejecting (a second rule of the same name). The alert's `host` is the leaking host (the\n"
               "detector's about.host); the shard's own host is `shard_host`. Differs: a shard that refuses\n"
               "the control plane (at maxclients) has no CLIENT LIST series, so this alert resolves while\n"
               "ChatopsShardNearMaxclients fires; the detector keeps the last known counts."),
        _alert("ChatopsLeakedClients", "leaked_clients", "critical",
               by_source.format(expr=f"({idle})\n    and on (shard) ({near_max})"), hold, leak_summary,
               "{{ $labels.host }} ({{ $labels.cluster }} cluster) holds {{ $value }} idle connections to "
               "{{ $labels.shard }}, which is near maxclients or rejecting connections."),
        _alert("ChatopsLeakedClientsGrowing", "leaked_clients", "warning",
               by_source.format(expr=f"""(shard_source_host:chatops_client_list_clients:growth10m >= {_g(th.leaked_idle_clients)})
    and
    (
        shard_source_host:chatops_client_list_clients:growth10m
      - on (shard) group_left ()
        shard:chatops_redis_workload_ops:growth10m
    ) > 0"""), hold,
               "{{ $labels.host }} opens connections to {{ $labels.shard }} that do no work",
               "{{ $labels.host }} ({{ $labels.cluster }} cluster) opened {{ $value }} more connections to "
               "{{ $labels.shard }} than its low of the last 10 minutes, while the shard's commands/s grew "
               "by less than one per new connection.",
               "Equivalent to leaked_clients' growth condition, over a fixed 10m look-back (the detector uses\n"
               "its window) and against the lowest workload in it (the detector: the mean just before the\n"
               "rise). Differs: a host with no connections before the leak has no series to rise from, so\n"
               "its first connections are its low; the detector counts it as 0 (ChatopsLeakedClients still\n"
               "sees those connections once they are idle)."),
        _alert("ChatopsShardNearMaxclients", "leaked_clients", "warning",
               f"shard:chatops_redis_clients_of_max:ratio >= {_g(th.maxclients_warn_ratio)}\n"
               "unless on (shard) shard:chatops_redis_rejected_connections:rate1m > 0", hold,
               "{{ $labels.shard }} is near maxclients",
               "{{ $labels.shard }} on {{ $labels.host }} has {{ $value | humanizePercentage }} of its maxclients "
               "connected.",
               "leaked_clients' `<shard>:maxclients` finding. Differs: the detector also counts the shard\n"
               "refusing the control plane's own CLIENT LIST (\"max number of clients\") as at maxclients;\n"
               "the metrics only say chatops_client_list_up 0, for any reason."),
        _alert("ChatopsShardNearMaxclients", "leaked_clients", "critical",
               "shard:chatops_redis_rejected_connections:rate1m > 0", hold,
               "{{ $labels.shard }} rejects connections: maxclients reached",
               "{{ $labels.shard }} on {{ $labels.host }} refuses {{ $value | printf \"%.2f\" }} connections/s "
               "(maxclients reached)."),
    ]

    # -- HAProxy (its own exporter) -------------------------------------------------------------------
    shard_of = 'label_replace({expr}, "shard", "$1", "proxy", "redis-(.+)")'
    proxy_diff = (
        "From each chat host's HAProxy exporter (haproxy_*, with the scrape config's host and cluster\n"
        "labels). Equivalent to proxy_saturation's {what}.")
    ratio = _g(th.proxy_session_warn_ratio)
    sessions = f"""
    haproxy_frontend_current_sessions / haproxy_frontend_limit_sessions >= {ratio}
  or
    haproxy_server_current_sessions / (haproxy_server_limit_sessions > 0) >= {ratio}"""
    al.rules += [
        _alert("ChatopsProxySessionsNearLimit", "proxy_saturation", "warning",
               shard_of.format(expr=f"({sessions}\n) < 1"), hold,
               "HAProxy on {{ $labels.host }}: {{ $labels.proxy }} near its session limit",
               "{{ $labels.proxy }}{{ with $labels.server }}/{{ . }}{{ end }} on {{ $labels.host }} has "
               "{{ $value | humanizePercentage }} of its maxconn in use.",
               proxy_diff.format(what="sessions condition (frontends, and servers with a maxconn;\n"
                                      "a backend's slim is only its fullconn). Critical at the limit (a second "
                                      "rule).")),
        _alert("ChatopsProxySessionsNearLimit", "proxy_saturation", "critical",
               shard_of.format(expr=f"({sessions}\n) >= 1"), hold,
               "HAProxy on {{ $labels.host }}: {{ $labels.proxy }} at its session limit",
               "{{ $labels.proxy }}{{ with $labels.server }}/{{ . }}{{ end }} on {{ $labels.host }} is at its "
               "maxconn: new connections wait or are refused."),
        _alert("ChatopsProxyQueueing", "proxy_saturation", "warning",
               shard_of.format(expr="haproxy_backend_current_queue >= 1 or haproxy_server_current_queue >= 1"),
               hold, "HAProxy on {{ $labels.host }}: requests queue on {{ $labels.proxy }}",
               "{{ $value }} requests wait for a connection slot on {{ $labels.proxy }}"
               "{{ with $labels.server }}/{{ . }}{{ end }} on {{ $labels.host }}.",
               proxy_diff.format(what="queue condition")),
        _alert("ChatopsProxyErrors", "proxy_saturation", "warning", shard_of.format(expr=f"""
    (
        label_replace(
          rate(haproxy_backend_connection_errors_total[1m]) + rate(haproxy_backend_response_errors_total[1m]),
          "kind", "backend", "", ""
        )
      or
        label_replace(
          rate(haproxy_server_connection_errors_total[1m]) + rate(haproxy_server_response_errors_total[1m]),
          "kind", "server", "", ""
        )
      or
        label_replace(rate(haproxy_frontend_request_errors_total[1m]), "kind", "frontend", "", "")
    ) >= {_g(th.proxy_errors_per_s)}"""), hold,
               "HAProxy on {{ $labels.host }}: errors on {{ $labels.proxy }}",
               "{{ $labels.proxy }}{{ with $labels.server }}/{{ . }}{{ end }} on {{ $labels.host }} fails "
               "{{ $value | printf \"%.2f\" }} connections or requests per second.",
               proxy_diff.format(what="errors condition (econ + eresp on backends and servers, ereq on\n"
                                      "frontends), as rates over 1m")),
        _alert("ChatopsProxyServerDown", "proxy_saturation", "warning", shard_of.format(
            expr='haproxy_server_status{state=~"DOWN|NOLB"} == 1\n'
                 '    unless on (job, instance, proxy) haproxy_backend_status{state="DOWN"} == 1'), hold,
               "HAProxy on {{ $labels.host }}: server {{ $labels.proxy }}/{{ $labels.server }} is down",
               "{{ $labels.proxy }}/{{ $labels.server }} on {{ $labels.host }} does not serve "
               "({{ $labels.state }}).",
               proxy_diff.format(what="down condition (DOWN or NOLB; MAINT is an operator's choice).\n"
                                      "Critical when the backend has no server left (a second rule). Not "
                                      "expressible: an HAProxy worker exiting\nwith a non-zero code, which "
                                      "the control plane reads from HAProxy's log, not from metrics")),
        _alert("ChatopsProxyServerDown", "proxy_saturation", "critical", shard_of.format(
            expr='haproxy_server_status{state=~"DOWN|NOLB"} == 1\n'
                 '    and on (job, instance, proxy) haproxy_backend_status{state="DOWN"} == 1'), hold,
               "HAProxy on {{ $labels.host }}: {{ $labels.proxy }} has no server left",
               "{{ $labels.proxy }}/{{ $labels.server }} on {{ $labels.host }} is down and its backend has no "
               "server left."),
    ]

    # -- ingestion: edge -> clue -> Redis ----------------------------------------------------------------
    per_s = _g(th.ingestion_timeouts_per_s)
    al.rules += [
        _alert("ChatopsIngestionTimeouts", "ingestion_timeouts", "critical", f"""
label_replace(
  max by (cluster, host) (
      label_replace(sum by (cluster, host) (rate(chat_edge_clue_timeouts_total[1m])), "signal", "counter", "", "")
    or
      label_replace(
        sum by (cluster, host) (rate(chatops_log_events_total{{service="edge", remote="clue", kind="timeout"}}[1m])),
        "signal", "log", "", ""
      )
  ) >= {per_s},
  "service", "edge", "", ""
)""", hold, "edge on {{ $labels.host }}: requests to clue time out",
               "edge-{{ $labels.host }} sees {{ $value | printf \"%.2f\" }} clue timeouts per second "
               "(`[clue] Timed out (after 5s) while writing request for: privmsg`).",
               "ingestion_timeouts on `edge-<host>`, its timeout signals: chat_edge_clue_timeouts_total and the\n"
               "`[clue] Timed out` log lines, the larger of the two. Differs: averaged over 1m, not over\n"
               "max(10s, 2 x clue's timeout, 3 scrapes)."),
        _alert("ChatopsIngestionUnavailable", "ingestion_timeouts", "warning", f"""
label_replace(
  (sum by (cluster, host) (rate(chat_edge_messages_rejected_total{{reason="msg_unavailable"}}[1m])) >= {per_s})
  unless on (cluster, host)
  (
      sum by (cluster, host) (rate(chat_edge_messages_rejected_total{{reason="msg_unavailable"}}[1m]))
    > 0.5 * sum by (cluster, host) (rate(chat_edge_messages_received_total[1m]))
  ),
  "service", "edge", "", ""
)""", hold, "edge on {{ $labels.host }}: messages refused msg_unavailable",
               "edge-{{ $labels.host }} refuses {{ $value | printf \"%.2f\" }} messages/s with msg_unavailable: clue "
               "cannot reach Redis or the exchange.",
               "ingestion_timeouts on `edge-<host>`, its msg_unavailable signal. Critical when more than half\n"
               "of the edge's messages are refused (a second rule). Differs: averaged over 1m."),
        _alert("ChatopsIngestionUnavailable", "ingestion_timeouts", "critical", f"""
label_replace(
  (sum by (cluster, host) (rate(chat_edge_messages_rejected_total{{reason="msg_unavailable"}}[1m])) >= {per_s})
  and on (cluster, host)
  (
      sum by (cluster, host) (rate(chat_edge_messages_rejected_total{{reason="msg_unavailable"}}[1m]))
    > 0.5 * sum by (cluster, host) (rate(chat_edge_messages_received_total[1m]))
  ),
  "service", "edge", "", ""
)""", hold, "edge on {{ $labels.host }}: most messages refused msg_unavailable",
               "edge-{{ $labels.host }} refuses more than half of its messages ({{ $value | printf \"%.2f\" }}/s) with "
               "msg_unavailable."),
        _alert("ChatopsClueRedisErrors", "ingestion_timeouts", "critical", f"""
label_replace(
    sum by (cluster, host, shard) (rate(chat_clue_redis_errors_total[1m])) >= {per_s}
  or
    sum by (cluster, host) (
      rate(chatops_log_events_total{{service="clue", kind="connection_refused"}}[1m])
    ) >= {per_s},
  "service", "clue", "", ""
)""", hold, "clue on {{ $labels.host }}: Redis calls failing{{ with $labels.shard }} on {{ . }}{{ end }}",
               "clue-{{ $labels.host }} fails {{ $value | printf \"%.2f\" }} Redis calls per second"
               "{{ with $labels.shard }} to {{ . }}{{ end }} (refused, timed out or closed).",
               "ingestion_timeouts on `clue-<host>`. Differs: one alert per failing shard (the detector\n"
               "makes one finding per clue and names the worst shard); the ECONNREFUSED log lines carry no\n"
               "shard, so that signal alerts without one; averaged over 1m."),
    ]

    # -- connection churn -----------------------------------------------------------------------------
    def per_service(metrics: dict[str, str]) -> str:
        parts = [f'label_replace(sum by (cluster, host) (rate({m}[1m])), "service", "{svc}", "", "")'
                 for svc, m in metrics.items()]
        return "\n  or\n".join(parts)

    rec.rules += [
        _record("service:chat_connections_opened:rate1m", per_service({
            "edge": "chat_edge_clue_connections_opened_total",
            "clue": "chat_clue_exchange_connections_opened_total",
            "exchange": "chat_exchange_connections_opened_total"}),
            "TCP connections each chat service opens to its upstream, per second (service_figures)."),
        _record("service:chat_requests:rate1m", per_service({
            "edge": "chat_edge_clue_request_seconds_count",
            "clue": 'chat_clue_messages_total{result="accepted"}',
            "exchange": "chat_exchange_request_seconds_count"}),
            "Requests each chat service makes to its upstream, per second (service_figures)."),
        _record("service:chat_connections_per_request:ratio", f"""
  service:chat_connections_opened:rate1m
/ on (cluster, host, service)
  (service:chat_requests:rate1m >= {_g(th.churn_min_requests_per_s)})""",
                "Connections opened per request, judged only above churn_min_requests_per_s."),
    ]
    io = ('label_replace(sum by (cluster, host) (rate(chat_exchange_io_timeouts_total[1m])) > 0, '
          '"service", "exchange", "", "")')
    churn_summary = "{{ $labels.service }} on {{ $labels.host }}: keepalive disabled or pool too small"
    churn_description = ("{{ $labels.service }}-{{ $labels.host }} opens {{ $value | printf \"%.2f\" }} new "
                         "connections per request.")
    al.rules += [
        _alert("ChatopsConnectionChurn", "connection_churn", "warning",
               f"service:chat_connections_per_request:ratio >= {_g(th.churn_ratio)}\n"
               f"unless on (cluster, host, service) {io}", hold, churn_summary, churn_description,
               "Equivalent to connection_churn: connections opened per request while requests >=\n"
               "churn_min_requests_per_s. Critical when the exchange also has i/o timeouts (a second rule).\n"
               "Differs: rates over 1m; the `[exchange] i/o timeout` log lines are not counted for severity."),
        _alert("ChatopsConnectionChurn", "connection_churn", "critical",
               f"service:chat_connections_per_request:ratio >= {_g(th.churn_ratio)}\n"
               f"and on (cluster, host, service) {io}", hold, churn_summary,
               churn_description + " Its deliveries time out."),
    ]

    # -- delivery gaps --------------------------------------------------------------------------------
    late = _g(seconds(th.delivery_late_after))
    to_edge = 'label_replace(\n  label_replace({expr}, "exchange_host", "$1", "host", "(.*)"),\n' \
              '  "host", "$1", "edge", "(.*)"\n)'
    failed = 'sum by (cluster, host, edge) (rate(chat_exchange_deliveries_total{result!="ok"}[1m]))'
    ok = 'sum by (cluster, host, edge) (rate(chat_exchange_deliveries_total{result="ok"}[1m]))'
    al.rules += [
        _alert("ChatopsDeliveryGap", "delivery_gap", "warning", to_edge.format(expr=f"""
    ({failed} > 0)
  unless on (cluster, host, edge) ({ok} == 0)
  or
    histogram_quantile(0.9, sum by (cluster, host, edge, le) (rate(chat_exchange_request_seconds_bucket[1m]))) > {late}
"""), hold, "edge {{ $labels.host }} misses or delays deliveries",
               "The exchange on {{ $labels.exchange_host }} fails or delays its deliveries to edge "
               "{{ $labels.host }} ({{ $value | printf \"%.2f\" }}).",
               "delivery_gap judges the control plane's canary (a user on every edge), whose figures are not\n"
               "exported. This sees the same gap from the exchange: deliveries to an edge that fail or time\n"
               "out, or take longer than delivery_late_after (90th percentile over 1m). It cannot see an edge\n"
               "that takes a delivery and does not write it to its clients. Critical when nothing reaches\n"
               "the edge (a second rule)."),
        _alert("ChatopsDeliveryGap", "delivery_gap", "critical", to_edge.format(
            expr=f"({failed} > 0)\n  and on (cluster, host, edge) ({ok} == 0)\n"), hold,
               "edge {{ $labels.host }} gets no deliveries",
               "Every delivery from the exchange on {{ $labels.exchange_host }} to edge {{ $labels.host }} fails "
               "({{ $value | printf \"%.2f\" }}/s)."),
    ]

    # -- unresponsive services -------------------------------------------------------------------------
    al.rules += [
        _alert("ChatopsServiceUnresponsive", "unresponsive_service", "critical", 'up{job="chat"} == 0', hold,
               "{{ $labels.service }} on {{ $labels.host }} does not answer",
               "Prometheus cannot scrape {{ $labels.service }}-{{ $labels.host }}: it is down, hung or too slow "
               "to answer its scrape.",
               "Equivalent to unresponsive_service's \"does not answer\": the scrape of the service fails for\n"
               "hold. Differs: Prometheus's scrape timeout (10s by default) is longer than the control plane's\n"
               "(its scrape interval), and it cannot tell a stopped process from a gone or busy one."),
        _alert("ChatopsServiceCrashLooping", "unresponsive_service", "warning",
               'changes(process_start_time_seconds{job="chat"}[1m]) >= 2', hold,
               "{{ $labels.service }} on {{ $labels.host }} keeps restarting",
               "{{ $labels.service }}-{{ $labels.host }} started {{ $value }} times in the last minute.",
               "Equivalent to unresponsive_service's crash loop (the supervisor restarted it twice within\n"
               "60 s), from the process's own start time. Differs: a restart between two scrapes that both\n"
               "fail is not seen."),
    ]
    return [rec, al]


# -- the YAML, with each rule's comment above it --------------------------------------------------

class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str):
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def render(th: Thresholds | None = None, source: str = "the defaults of cluster/spec.py Thresholds") -> str:
    out = [
        "# chatops: Prometheus rules equivalent to the control plane's detectors.",
        "# Generated by `python -m dashboards.generate` (make dashboards) from dashboards/rules.py,",
        f"# thresholds from {source}. Do not edit: change rules.py and regenerate.",
        "# Needs the external label chatops_url (the control plane's public URL) for runbook_url;",
        "# see dashboards/README.md.",
        "groups:",
    ]
    for g in groups(th):
        out += [f"  - name: {g.name}", "    rules:"]
        for r in g.rules:
            if r.comment:
                out += [f"      # {line}".rstrip() for line in r.comment.splitlines()]
            text = yaml.dump([r.body], Dumper=_Dumper, sort_keys=False, width=1000, allow_unicode=True)
            out += [f"      {line}".rstrip() for line in text.splitlines()]
    return "\n".join(out) + "\n"
