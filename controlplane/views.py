"""The read model: what the API returns and the dashboard renders, built from the store.

Pure functions of (cluster file, store, scraper health, now) to JSON-ready dicts, so the JSON API
and the HTML pages can never disagree about a number. Times are epoch seconds; ages are seconds.
A source that was never scraped has `up: None` (unknown), one that failed `up: False` with its
`error`.
"""

from __future__ import annotations

import time
from typing import Any

from controlplane.store import Snapshot, Store

REDIS_SERIES = ("ops_per_s", "cpu_percent", "connected_clients", "used_memory_bytes", "hit_ratio",
                "keys", "rejected_connections_per_s", "connections_per_s")
CLIENT_SERIES = ("total", "idle", "idle_long")
PROXY_ROW_SERIES = ("scur", "qcur", "rate", "econ_per_s", "eresp_per_s", "ereq_per_s")


class NotFound(KeyError):
    """An unknown shard, host or proxy; the message lists the valid names."""

    def __init__(self, what: str, name: str, valid: list[str]):
        super().__init__(f"unknown {what} {name!r}; valid: {', '.join(valid) or '(none)'}")
        self.message = self.args[0]
        self.what, self.name, self.valid = what, name, list(valid)   # for the dashboard's 404 page


def _health(snap: Snapshot | None, now: float) -> dict[str, Any]:
    if snap is None:
        return {"up": None, "error": None, "scraped_at": None, "age_s": None, "duration_s": None}
    o = snap.obs
    return {"up": o.up, "error": o.error, "scraped_at": o.at, "age_s": round(now - o.at, 3),
            "duration_s": round(o.duration_s, 6), "section_errors": dict(o.section_errors)}


def _round(v: float | None, n: int = 3) -> float | None:
    return None if v is None else round(v, n)


def series(store: Store, source: str, target: str, names: tuple[str, ...] | list[str],
           since: float | None = None) -> dict[str, list[list[float | None]]]:
    """{figure: [[time, value], ...]} for the named figures (absent ones give empty lists)."""
    return {n: [[t, _round(v, 4)] for t, v in store.series(source, target, n, since)] for n in names}


# -- shards ---------------------------------------------------------------------------------------

def _shard_row(cf, store: Store, shard, now: float) -> dict[str, Any]:
    snap = store.latest("redis", shard.name)
    csnap = store.latest("clients", shard.name)
    f = snap.figures if snap else {}
    data = snap.obs.data if snap and snap.obs.up and isinstance(snap.obs.data, dict) else {}
    info = data.get("info") or {}
    cdata = csnap.obs.data if csnap and csnap.obs.up and isinstance(csnap.obs.data, dict) else None
    return {
        "name": shard.name, "host": shard.host, "address": cf.address(shard.host), "port": shard.port,
        "listener_port": cf.listener_port(cf.redis.shards.index(shard)),
        **_health(snap, now),
        "role": (info.get("replication") or {}).get("role"),
        "ops_per_s": _round(f.get("ops_per_s"), 1), "cpu_percent": _round(f.get("cpu_percent"), 2),
        "connected_clients": f.get("connected_clients"), "maxclients": f.get("maxclients"),
        "used_memory_bytes": f.get("used_memory_bytes"), "maxmemory_bytes": f.get("maxmemory_bytes"),
        "hit_ratio": _round(f.get("hit_ratio"), 4), "keys": f.get("keys"),
        "rejected_connections_per_s": _round(f.get("rejected_connections_per_s"), 2),
        "timeout": (data.get("config") or {}).get("timeout"),
        "maxmemory_policy": (data.get("config") or {}).get("maxmemory-policy"),
        "clients": {
            **_health(csnap, now),
            "total": cdata.get("total") if cdata else None,
            "idle": csnap.figures.get("idle") if cdata else None,
            "idle_long": csnap.figures.get("idle_long") if cdata else None,
            "idle_after_s": cdata.get("idle_after_s") if cdata else None,
            "by_host": [_client_host(h) for h in cdata.get("by_host", [])] if cdata else [],
        },
    }


def _client_host(h: dict[str, Any]) -> dict[str, Any]:
    return {"host": h.get("host"), "cluster": h.get("cluster"), "addresses": h.get("addresses", []),
            "count": h.get("count"), "idle": h.get("idle_over"), "idle_long": h.get("idle_over_long"),
            "oldest_age_s": h.get("oldest_age_s"), "top_commands": h.get("top_commands", [])}


def shards(cf, store: Store, now: float | None = None) -> list[dict[str, Any]]:
    now = time.time() if now is None else now
    return [_shard_row(cf, store, s, now) for s in cf.redis.shards]


def _find_shard(cf, name: str):
    for s in cf.redis.shards:
        if s.name == name:
            return s
    raise NotFound("shard", name, [s.name for s in cf.redis.shards])


def shard(cf, store: Store, name: str, since: float | None = None, now: float | None = None) -> dict[str, Any]:
    """One shard: the row of `shards`, plus series, per-command rates, config, slowlog, hot keys."""
    now = time.time() if now is None else now
    s = _find_shard(cf, name)
    row = _shard_row(cf, store, s, now)
    snap = store.latest("redis", name)
    data = snap.obs.data if snap and snap.obs.up and isinstance(snap.obs.data, dict) else {}
    row["series"] = series(store, "redis", name, REDIS_SERIES, since)
    row["clients"]["series"] = series(store, "clients", name, CLIENT_SERIES, since)
    hosts = [h["host"] for h in row["clients"]["by_host"]]
    row["clients"]["series_by_host"] = {
        h: series(store, "clients", name, (f"host:{h}:count", f"host:{h}:idle"), since) for h in hosts}
    row["calls_per_s"] = {k: round(v, 2) for k, v in list((snap.detail.get("calls_per_s") or {}).items())[:15]} if snap else {}
    row["config"] = data.get("config") or {}
    row["slowlog"] = (data.get("slowlog") or [])[:10]
    row["latency"] = data.get("latency") or []
    hot = data.get("hotkeys") or {}
    row["hotkeys"] = {"keys": (hot.get("keys") or [])[:20], "skipped": hot.get("skipped"), "sampled": hot.get("sampled")}
    return row


def clients(cf, store: Store, name: str, now: float | None = None) -> dict[str, Any]:
    """CLIENT LIST of one shard by source host, and the most idle clients."""
    now = time.time() if now is None else now
    _find_shard(cf, name)
    snap = store.latest("clients", name)
    data = snap.obs.data if snap and snap.obs.up and isinstance(snap.obs.data, dict) else None
    return {"shard": name, **_health(snap, now),
            "total": data.get("total") if data else None,
            "idle_after_s": data.get("idle_after_s") if data else None,
            "long_idle_s": data.get("long_idle_s") if data else None,
            "redis_usec": data.get("redis_usec") if data else None,
            "by_host": [_client_host(h) for h in data.get("by_host", [])] if data else [],
            "most_idle": (data.get("most_idle") or [])[:20] if data else []}


# -- proxies --------------------------------------------------------------------------------------

_ROW_FIELDS = ("status", "scur", "smax", "slim", "stot", "qcur", "qmax", "rate", "rate_max", "bin", "bout",
               "dreq", "dresp", "ereq", "econ", "eresp", "wretr", "wredis", "weight", "check_status",
               "check_duration", "lastchg", "downtime", "addr")


def _proxy_host(cf, store: Store, host: str, cluster: str, now: float) -> dict[str, Any]:
    snap = store.latest("haproxy", host)
    stat = getattr(snap.obs.data, "stat", None) if snap and snap.obs.up else None
    proc = getattr(snap.obs.data, "proc", None) if snap and snap.obs.up else None
    rows = []
    for r in (stat.rows if stat else []):
        if r.kind not in ("frontend", "backend", "server"):
            continue
        key = f"{r.proxy}/{r.name}"
        row = {"kind": r.kind, "proxy": r.proxy, "name": r.name, **{k: getattr(r, k) for k in _ROW_FIELDS}}
        for c in ("econ", "eresp", "ereq"):
            row[f"{c}_per_s"] = _round(snap.figures.get(f"{key}:{c}_per_s"), 3)
        rows.append(row)
    return {"host": host, "cluster": cluster, "address": cf.address(host), **_health(snap, now),
            "workers": len(proc.workers) if proc else None,
            "old_workers": list(proc.old_workers) if proc else [],
            "reloads": proc.reloads if proc else None,
            "worker_exits": {str(k): v for k, v in proc.worker_exits.items()} if proc else {},
            "rows": rows}


def proxies(cf, store: Store, now: float | None = None) -> list[dict[str, Any]]:
    now = time.time() if now is None else now
    return [_proxy_host(cf, store, h, c, now) for h, c in cf.chat_hosts()]


def proxy(cf, store: Store, host: str, since: float | None = None, now: float | None = None) -> dict[str, Any]:
    """One chat host's HAProxy: the rows of `proxies` plus series per frontend/backend/server."""
    now = time.time() if now is None else now
    hosts = dict(cf.chat_hosts())
    if host not in hosts:
        raise NotFound("chat host", host, list(hosts))
    out = _proxy_host(cf, store, host, hosts[host], now)
    for row in out["rows"]:
        key = f"{row['proxy']}/{row['name']}"
        row["series"] = {n: pts for n, pts in series(
            store, "haproxy", host, [f"{key}:{n}" for n in PROXY_ROW_SERIES], since).items()}
        row["series"] = {n.split(":", 1)[1]: pts for n, pts in row["series"].items()}
    return out


# -- logs -----------------------------------------------------------------------------------------

def log_events(store: Store, service: str | None = None, since: float | None = None,
               now: float | None = None) -> dict[str, Any]:
    """Log event groups per (file, remote, kind): rate now, total since the control plane
    started, example lines, and the rate series. `service` filters on the file's service
    (edge, clue, exchange, haproxy, redis, supervisor, loadgen) or a whole file stem."""
    now = time.time() if now is None else now
    snap = store.latest("logs", "local")
    groups = []
    for g in (snap.detail.get("groups", []) if snap else []):
        if service and service not in (g["service"], g["file"]):
            continue
        name = f"{g['file']}|{g['remote'] or '-'}|{g['kind']}:per_s"
        groups.append({**g, "per_s": _round(g["per_s"], 3),
                       "series": [[t, _round(v, 3)] for t, v in store.series("logs", "local", name, since)]})
    groups.sort(key=lambda g: (-(g["per_s"] or 0), -g["total"], g["file"], g["remote"] or "", g["kind"]))
    return {**_health(snap, now), "groups": groups,
            "unparsed_total": snap.detail.get("unparsed_total", 0) if snap else 0,
            "unparsed_samples": snap.detail.get("unparsed_samples", []) if snap else []}


# -- hosts and clusters ---------------------------------------------------------------------------

def _processes(store: Store) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    snap = store.latest("process", "local")
    out = []
    for p in (getattr(snap.obs.data, "processes", []) if snap and snap.obs.up else []):
        s = p.stats
        out.append({"name": p.name, "kind": p.kind, "host": p.host, "address": p.address, "port": p.port,
                    "pid": s.pid, "up": not s.gone, "status": s.status, "cpu_percent": _round(s.cpu_percent, 1),
                    "rss_bytes": s.rss, "fds": s.num_fds, "threads": s.num_threads,
                    "connections": p.connections, "time_wait": p.time_wait})
    return out, (snap.obs if snap else None)


def hosts(cf, store: Store, now: float | None = None) -> list[dict[str, Any]]:
    """Every host in the cluster file with its role, processes and health."""
    now = time.time() if now is None else now
    procs, pobs = _processes(store)
    chat = dict(cf.chat_hosts())
    redis_hosts = {s.host for s in cf.redis.shards} | {s.replica.host for s in cf.redis.shards if s.replica}
    out = []
    for name, h in cf.hosts.items():
        mine = [p for p in procs if p["host"] == name]
        roles = (["chat"] if name in chat else []) + (["redis"] if name in redis_hosts else [])
        problems = [f"{p['name']} is not running" for p in mine if not p["up"]]
        hsnap = store.latest("haproxy", name) if name in chat else None
        if hsnap is not None and not hsnap.obs.up:
            problems.append(f"haproxy: {hsnap.obs.error}")
        for s in cf.redis.shards:
            if s.host == name:
                rs = store.latest("redis", s.name)
                if rs is not None and not rs.obs.up:
                    problems.append(f"{s.name}: {rs.obs.error}")
        known = pobs is not None and pobs.up
        out.append({"name": name, "address": h.address, "cluster": chat.get(name), "roles": roles,
                    "up": (not problems) if known or problems else None, "problems": problems,
                    "processes": mine,
                    "shards": [s.name for s in cf.redis.shards if s.host == name]})
    return out


def host(cf, store: Store, name: str, since: float | None = None, now: float | None = None) -> dict[str, Any]:
    now = time.time() if now is None else now
    if name not in cf.hosts:
        raise NotFound("host", name, list(cf.hosts))
    row = next(h for h in hosts(cf, store, now) if h["name"] == name)
    for p in row["processes"]:
        p["series"] = series(store, "process", "local", [f"{p['name']}:{n}" for n in ("cpu_percent", "rss_bytes", "fds")], since)
        p["series"] = {k.split(":", 1)[1]: v for k, v in p["series"].items()}
    row["proxy"] = proxy(cf, store, name, since, now) if row["cluster"] else None
    row["shard_rows"] = [_shard_row(cf, store, s, now) for s in cf.redis.shards if s.host == name]
    return row


def clusters(cf, store: Store, now: float | None = None) -> list[dict[str, Any]]:
    """Clusters with their hosts, services, rooms and a health roll-up."""
    now = time.time() if now is None else now
    by_host = {h["name"]: h for h in hosts(cf, store, now)}
    out = []
    for cname, c in cf.clusters.items():
        members = [by_host[h] for h in c.hosts if h in by_host]
        services = sorted({p["kind"] for h in members for p in h["processes"]})
        states = [h["up"] for h in members]
        out.append({"name": cname, "hosts": [h["name"] for h in members], "rooms": list(c.rooms),
                    "services": services,
                    "up": None if None in states and not any(s is False for s in states) else all(s is not False for s in states),
                    "problems": [p for h in members for p in h["problems"]]})
    return out


def overview(cf, store: Store, jobs: list[dict[str, Any]], now: float | None = None) -> dict[str, Any]:
    now = time.time() if now is None else now
    last = [j["last_run"] for j in jobs if j["last_run"]]
    return {"now": now, "last_scrape": max(last) if last else None,
            "clusters": clusters(cf, store, now), "hosts": hosts(cf, store, now),
            "shards": shards(cf, store, now), "jobs": jobs,
            "failing_jobs": [j["id"] for j in jobs if j["last_error"]]}
