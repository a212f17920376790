"""Observations -> flat figures: the numbers the store keeps as time series.

Pure functions. Each takes the newest Observation of one source (and, where a rate needs it, the
one before) and returns `{figure name: number or None}`. None means "not known this time" (a
first sample has no rate; a down source has no ops/s); the store keeps it as a gap so charts do
not draw a line through an outage. Names are plain and stable (a part of a target is named by names.py), since the API's and the
dashboard's series use them (the Prometheus names are in controlplane/metrics.py):

- redis (per shard):      up, ops_per_s, cpu_percent, connected_clients, maxclients, blocked_clients,
                          used_memory_bytes, maxmemory_bytes, keys, hit_ratio, connections_per_s,
                          rejected_connections_per_s, evicted_keys_per_s, scrape_duration_seconds
- clients (per shard):    up, total, idle, idle_long, then `host:<host>:count|idle|unused|oldest_age_s`
- haproxy (per chat host): up, workers, old_workers, then per row `<proxy>/<name>:` scur, slim, qcur,
                          rate, up, and the per-second rates of ereq, econ, eresp, dreq, wretr
- process (one source):   up, then per process `<name>:` cpu_percent, rss_bytes, fds, threads, up,
                           restarts (the supervisor's count, from state.json)
"""

from __future__ import annotations

from typing import Any

from collectors.base import Observation
from controlplane.sources import names

Figures = dict[str, float | None]

# HAProxy status words that mean "serving": frontends say OPEN, servers UP (maybe "UP 1/3" while
# a check is settling), a backend with a server up says UP.
_SERVING = ("UP", "OPEN", "no check")
_HAPROXY_COUNTERS = ("ereq", "econ", "eresp", "dreq", "wretr")


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _per_s(cur: Any, prev: Any, dt: float) -> float | None:
    """A counter's rate; None on a first sample or when it went backwards (a restart)."""
    a, b = _num(prev), _num(cur)
    if a is None or b is None or b < a or dt <= 0:
        return None
    return (b - a) / dt


def redis_figures(obs: Observation, prev: Observation | None) -> Figures:
    from collectors.redis import rates
    f: Figures = {"up": 1.0 if obs.up else 0.0, "scrape_duration_seconds": obs.duration_s}
    data = obs.data if obs.up and isinstance(obs.data, dict) else {}
    info = data.get("info") or {}
    config = data.get("config") or {}
    clients, memory, stats = info.get("clients", {}), info.get("memory", {}), info.get("stats", {})
    f["connected_clients"] = _num(clients.get("connected_clients"))
    f["blocked_clients"] = _num(clients.get("blocked_clients"))
    f["maxclients"] = _num(_int(config.get("maxclients")))
    f["used_memory_bytes"] = _num(memory.get("used_memory"))
    f["maxmemory_bytes"] = _num(memory.get("maxmemory"))
    keyspace = info.get("keyspace", {})
    f["keys"] = float(sum(db.get("keys", 0) for db in keyspace.values() if isinstance(db, dict))) if info else None
    f["ops_per_s"] = f["cpu_percent"] = f["hit_ratio"] = None
    f["connections_per_s"] = f["rejected_connections_per_s"] = f["evicted_keys_per_s"] = None
    prev_info = (prev.data or {}).get("info") if prev is not None and prev.up and isinstance(prev.data, dict) else None
    if info and prev_info:
        dt = obs.at - prev.at
        r = rates(prev_info, info, dt)
        f["ops_per_s"] = r["ops_per_s"]
        f["cpu_percent"] = r["cpu_percent"]
        f["hit_ratio"] = r["hit_ratio"]
        f["connections_per_s"] = r["connections_per_s"]
        f["rejected_connections_per_s"] = r["rejected_connections_per_s"]
        f["evicted_keys_per_s"] = _per_s(stats.get("evicted_keys"), prev_info.get("stats", {}).get("evicted_keys"), dt)
    return f


def redis_calls_per_s(obs: Observation, prev: Observation | None) -> dict[str, float]:
    """Per-command calls/s between the two samples (empty on a first sample)."""
    from collectors.redis import rates
    if not (obs.up and prev is not None and prev.up and isinstance(obs.data, dict) and isinstance(prev.data, dict)):
        return {}
    cur, before = obs.data.get("info"), prev.data.get("info")
    if not cur or not before:
        return {}
    return rates(before, cur, obs.at - prev.at)["calls_per_s"]


def _int(v: Any) -> int | None:
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def clients_figures(obs: Observation) -> Figures:
    f: Figures = {"up": 1.0 if obs.up else 0.0}
    data = obs.data if obs.up and isinstance(obs.data, dict) else None
    if data is None:
        f.update(total=None, idle=None, idle_long=None)
        return f
    by_host = data.get("by_host") or []
    f["total"] = _num(data.get("total"))
    f["idle"] = float(sum(h.get("idle_over", 0) for h in by_host))
    f["idle_long"] = float(sum(h.get("idle_over_long", 0) for h in by_host))
    for h in by_host:
        part = names.labelled("host", h.get("host"))
        f[names.series(part, "count")] = _num(h.get("count"))
        f[names.series(part, "idle")] = _num(h.get("idle_over"))
        f[names.series(part, "unused")] = _num(h.get("unused"))
        f[names.series(part, "oldest_age_s")] = _num(h.get("oldest_age_s"))
    return f


def serving(status: str | None) -> float | None:
    """1.0 when an HAProxy status word means the row serves, 0.0 when not, None when unknown."""
    if not status:
        return None
    return 1.0 if status.startswith(_SERVING) else 0.0


def haproxy_figures(obs: Observation, prev: Observation | None) -> Figures:
    f: Figures = {"up": 1.0 if obs.up else 0.0, "scrape_duration_seconds": obs.duration_s}
    stat = getattr(obs.data, "stat", None) if obs.up else None
    if stat is None:
        return f
    proc = getattr(obs.data, "proc", None)
    if proc is not None:
        f["workers"] = float(len(proc.workers))
        f["old_workers"] = float(len(proc.old_workers))
    before: dict[str, Any] = {}
    prev_stat = getattr(prev.data, "stat", None) if prev is not None and prev.up else None
    if prev_stat is not None:
        before = {names.proxy_row(r.proxy, r.name): r for r in prev_stat.rows}
    dt = obs.at - prev.at if prev is not None else 0.0
    for r in stat.rows:
        if r.kind not in ("frontend", "backend", "server"):
            continue
        key = names.proxy_row(r.proxy, r.name)
        f[names.series(key, "scur")] = _num(r.scur)
        f[names.series(key, "slim")] = _num(r.slim)
        f[names.series(key, "qcur")] = _num(r.qcur)
        f[names.series(key, "rate")] = _num(r.rate)
        f[names.series(key, "up")] = serving(r.status)
        old = before.get(key)
        for c in _HAPROXY_COUNTERS:
            f[names.series(key, f"{c}_per_s")] = _per_s(getattr(r, c), getattr(old, c, None), dt) if old else None
    return f


def process_figures(obs: Observation) -> Figures:
    f: Figures = {"up": 1.0 if obs.up else 0.0}
    snap = obs.data if obs.up else None
    for p in getattr(snap, "processes", []) or []:
        s = p.stats
        f[names.series(p.name, "up")] = 0.0 if s.gone else 1.0
        f[names.series(p.name, "cpu_percent")] = s.cpu_percent
        f[names.series(p.name, "rss_bytes")] = _num(s.rss)
        f[names.series(p.name, "fds")] = _num(s.num_fds)
        f[names.series(p.name, "threads")] = _num(s.num_threads)
        f[names.series(p.name, "restarts")] = _num(p.restarts)
    return f
