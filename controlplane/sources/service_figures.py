"""Service observations -> flat figures (source `service`, target `<service>-<host>`).

Pure, as figures.py beside it: the newest observation and the one before give rates between
scrapes; None means "not known this time" (a first sample, a counter that went backwards after a
restart, a metric this service does not export). Per service:

- every service:  up, scrape_duration_seconds, requests_per_s, connections_opened_per_s,
                  timeouts_per_s, errors_per_s, time_wait (sockets towards its upstreams)
- edge:      requests = requests to clue (`chat_edge_clue_request_seconds_count`); connections =
             `chat_edge_clue_connections_opened_total`; timeouts = `chat_edge_clue_timeouts_total`;
             errors = PRIVMSGs refused `msg_unavailable` (clue, Redis or the exchange unreachable),
             also as `unavailable_per_s`
- clue:      requests = accepted messages handed to the exchange (an upper bound of its requests:
             calls are batched), connections = `chat_clue_exchange_connections_opened_total`;
             timeouts = exchange errors of kind timeout; errors = `chat_clue_redis_errors_total`
             (also per shard: `shard:<shard>:redis_errors_per_s`, `shard:<shard>:ops_per_s`)
- exchange:  requests = delivery requests (`chat_exchange_request_seconds_count`, all edges);
             connections = `chat_exchange_connections_opened_total`; timeouts = io_timeouts_per_s =
             `chat_exchange_io_timeouts_total`; errors = deliveries with result error; keepalive
             (`chat_exchange_keepalive`, 0/1), pool_size; per edge `edge:<edge>:requests_per_s`,
             `edge:<edge>:io_timeouts_per_s`

`service_detail` is what the snapshot keeps beside the figures: clue's key stats
(/v1/stats/keys) and their rates between scrapes (ops per shard, per prefix, per top slot).
"""

from __future__ import annotations

from typing import Any

from collectors.base import Observation
from collectors.services import by_label, index, total
from controlplane.sources import names

Figures = dict[str, float | None]

# service -> figure -> (metric, labels)
_COUNTERS: dict[str, dict[str, tuple[str, dict[str, str]]]] = {
    "edge": {
        "requests_per_s": ("chat_edge_clue_request_seconds_count", {}),
        "connections_opened_per_s": ("chat_edge_clue_connections_opened_total", {}),
        "timeouts_per_s": ("chat_edge_clue_timeouts_total", {}),
        "errors_per_s": ("chat_edge_messages_rejected_total", {"reason": "msg_unavailable"}),
        "unavailable_per_s": ("chat_edge_messages_rejected_total", {"reason": "msg_unavailable"}),
        "messages_per_s": ("chat_edge_messages_received_total", {}),
    },
    "clue": {
        "requests_per_s": ("chat_clue_messages_total", {"result": "accepted"}),
        "connections_opened_per_s": ("chat_clue_exchange_connections_opened_total", {}),
        "timeouts_per_s": ("chat_clue_exchange_errors_total", {"kind": "timeout"}),
        "errors_per_s": ("chat_clue_redis_errors_total", {}),
        "redis_ops_per_s": ("chat_clue_redis_ops_total", {}),
        "unavailable_per_s": ("chat_clue_messages_total", {"result": "msg_unavailable"}),
    },
    "exchange": {
        "requests_per_s": ("chat_exchange_request_seconds_count", {}),
        "connections_opened_per_s": ("chat_exchange_connections_opened_total", {}),
        "timeouts_per_s": ("chat_exchange_io_timeouts_total", {}),
        "io_timeouts_per_s": ("chat_exchange_io_timeouts_total", {}),
        "errors_per_s": ("chat_exchange_deliveries_total", {"result": "error"}),
        "messages_per_s": ("chat_exchange_messages_total", {}),
    },
}
# Counters whose absence means zero once the service is up: a labelled counter has no sample
# until its first increment (prometheus_client exports no child before it is used).
_ZERO_WHEN_ABSENT = {"timeouts_per_s", "errors_per_s", "unavailable_per_s", "io_timeouts_per_s"}
_PER_LABEL = {
    "clue": (("chat_clue_redis_errors_total", "shard", "redis_errors_per_s"),
             ("chat_clue_redis_ops_total", "shard", "ops_per_s")),
    "exchange": (("chat_exchange_request_seconds_count", "edge", "requests_per_s"),
                 ("chat_exchange_io_timeouts_total", "edge", "io_timeouts_per_s")),
}


def service_of(obs: Observation) -> str:
    return obs.target.partition("-")[0]


def _samples(obs: Observation | None):
    """The observation's samples, indexed by name (services.index), or None."""
    if obs is None or not obs.up or obs.data is None:
        return None
    data = obs.data
    samples = data.get("samples") if isinstance(data, dict) else getattr(data, "samples", None)
    return None if samples is None else index(samples)


def _rate(cur: float | None, prev: float | None, dt: float) -> float | None:
    if cur is None or prev is None or dt <= 0 or cur < prev:
        return None
    return (cur - prev) / dt


def service_figures(obs: Observation, prev: Observation | None) -> Figures:
    f: Figures = {"up": 1.0 if obs.up else 0.0, "scrape_duration_seconds": obs.duration_s}
    service = service_of(obs)
    cur = _samples(obs)
    if cur is None:
        return f
    before = _samples(prev)
    dt = obs.at - prev.at if prev is not None else 0.0
    for name, (metric, labels) in _COUNTERS.get(service, {}).items():
        a = total(cur, metric, **labels)
        b = total(before, metric, **labels) if before is not None else None
        if name in _ZERO_WHEN_ABSENT:
            a = 0.0 if a is None else a
            b = (0.0 if b is None else b) if before is not None else None
        f[name] = _rate(a, b, dt)
    for metric, label, figure in _PER_LABEL.get(service, ()):
        now_by = by_label(cur, metric, label)
        then_by = by_label(before, metric, label) if before is not None else {}
        for value, n in now_by.items():
            f[names.series(names.labelled(label, value), figure)] = _rate(n, then_by.get(value, 0.0 if before is not None else None), dt)
    if service == "exchange":
        f["keepalive"] = total(cur, "chat_exchange_keepalive")
        f["pool_size"] = total(cur, "chat_exchange_pool_size")
    elif service == "edge":
        f["pool_size"] = total(cur, "chat_edge_clue_pool_size")
    elif service == "clue":
        f["pool_size"] = total(cur, "chat_clue_cache_pool_size")
    tw = _field(obs.data, "time_wait")
    f["time_wait"] = float(sum(tw.values())) if isinstance(tw, dict) else None
    return f


def _field(data: Any, name: str) -> Any:
    return data.get(name) if isinstance(data, dict) else getattr(data, name, None)


def _rates(cur: dict | None, prev: dict | None, dt: float) -> dict[str, float]:
    if not isinstance(cur, dict) or not isinstance(prev, dict) or dt <= 0:
        return {}
    out = {}
    for k, v in cur.items():
        r = _rate(v, prev.get(k), dt)
        if r is not None:
            out[k] = round(r, 3)
    return out


def service_detail(obs: Observation, prev: Observation | None) -> dict[str, Any]:
    """Clue's key stats and their per-second rates between the two scrapes; {} for other services."""
    keys = _field(obs.data, "keys") if obs.up else None
    if not isinstance(keys, dict):
        return {}
    before = _field(prev.data, "keys") if prev is not None and prev.up else None
    dt = obs.at - prev.at if prev is not None else 0.0
    out: dict[str, Any] = {"keys": keys}
    if isinstance(before, dict):
        out["ops_by_shard_per_s"] = _rates(keys.get("ops_by_shard"), before.get("ops_by_shard"), dt)
        out["errors_by_shard_per_s"] = _rates(keys.get("errors_by_shard"), before.get("errors_by_shard"), dt)
        out["ops_by_prefix_per_s"] = _rates(keys.get("ops_by_prefix"), before.get("ops_by_prefix"), dt)
        slots_now = {str(s): n for s, n in keys.get("top_slots") or []}
        slots_then = {str(s): n for s, n in before.get("top_slots") or []}
        out["top_slots_per_s"] = _rates(slots_now, slots_then, dt)
    return out
