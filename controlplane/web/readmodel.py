"""The read model: what the API returns and the dashboard renders, built from the store.

Pure functions of (cluster file, store, scraper health, now) to JSON-ready dicts, so the JSON API
and the HTML pages can never disagree about a number. Times are epoch seconds; ages are seconds.
A source that was never scraped has `up: None` (unknown), one that failed `up: False` with its
`error`.
"""

from __future__ import annotations

import time
from typing import Any

from controlplane.sources import names
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
        h: series(store, "clients", name, [names.series(names.labelled("host", h), n) for n in ("count", "idle")],
                  since) for h in hosts}
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
        key = names.proxy_row(r.proxy, r.name)
        row = {"kind": r.kind, "proxy": r.proxy, "name": r.name, **{k: getattr(r, k) for k in _ROW_FIELDS}}
        for c in ("econ", "eresp", "ereq"):
            row[f"{c}_per_s"] = _round(snap.figures.get(names.series(key, f"{c}_per_s")), 3)
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
        key = names.proxy_row(row["proxy"], row["name"])
        got = series(store, "haproxy", host, [names.series(key, n) for n in PROXY_ROW_SERIES], since)
        row["series"] = {names.figure_of(n): pts for n, pts in got.items()}
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
        name = names.series(names.log_group(g["file"], g["remote"], g["kind"]), "per_s")
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
        got = series(store, "process", "local",
                     [names.series(p["name"], n) for n in ("cpu_percent", "rss_bytes", "fds")], since)
        p["series"] = {names.figure_of(k): v for k, v in got.items()}
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


# -- findings and incidents -----------------------------------------------------------------------
# From the database (controlplane/database.py) rather than the store; the root-cause chain is
# rebuilt from the incident's findings on every read (controlplane/incidents.py, pure), so it
# shows their newest evidence. The database keeps the hypothesis as last recorded.

FINDING_KEYS = ("id", "kind", "subject", "severity", "state", "first_seen", "last_seen", "resolved_at",
                "title", "live_title", "peak", "evidence", "about", "runbook", "remediation", "incident_id")
INCIDENT_LIST_DEFAULT = 100
SHARD_SOURCES = ("redis", "clients")     # sources whose targets are shards
CHART_MARGIN_S = 300.0                 # charts start this long before an incident opened
MAX_INCIDENT_CHARTS = 12


def finding(row: dict[str, Any]) -> dict[str, Any]:
    from controlplane import incidents as inc
    out = {k: row.get(k) for k in FINDING_KEYS}
    out["about"] = {str(k): str(v) for k, v in (row.get("about") or {}).items() if v is not None}
    out["evidence"] = row.get("evidence") if isinstance(row.get("evidence"), dict) else {}
    out["remediation"] = remediation(row.get("remediation"))
    out["runbook"] = row.get("runbook") or row.get("kind")
    out["label"] = inc.label(row)
    out["layer"] = inc.layer(row)
    return out


def remediation(value: Any) -> dict[str, Any] | None:
    """A finding's suggested remediation as {"action", "summary", "params"}, or None."""
    if not isinstance(value, dict) or not value:
        return None
    params = value.get("params")
    return {"action": str(value.get("action") or ""), "summary": str(value.get("summary") or ""),
            "params": params if isinstance(params, dict) else {}}


def findings(db, state: str = "all", limit: int | None = 100) -> list[dict[str, Any]]:
    rows = db.findings(limit=limit, state=None if state == "all" else state)
    return [finding(r) for r in rows]


def _incident_summary(row: dict[str, Any], fs: list[dict[str, Any]], h: dict[str, Any]) -> dict[str, Any]:
    root = h.get("root") or {}
    return {"id": row["id"], "title": row["title"], "state": row["state"], "severity": row["severity"],
            "opened": row["opened"], "updated": row["updated"], "resolved_at": row["resolved_at"],
            "acknowledged_by": row["acknowledged_by"],
            "root_cause": {"summary": h.get("summary") or "", "cause": h.get("cause") or "",
                           "finding_id": root.get("finding_id"), "kind": root.get("kind"),
                           "subject": root.get("subject")},
            "findings": {"total": len(fs), "open": sum(1 for f in fs if f["state"] == "open")}}


def incidents(db, state: str = "all", limit: int | None = INCIDENT_LIST_DEFAULT) -> list[dict[str, Any]]:
    """Incidents, open and acknowledged ones first, then newest first."""
    from controlplane import incidents as inc
    rows = db.incidents(state=None if state == "all" else state, limit=limit)
    by_incident: dict[int, list[dict]] = {}
    for f in db.incident_findings([r["id"] for r in rows]):
        by_incident.setdefault(f["incident_id"], []).append(f)
    out = [_incident_summary(r, by_incident.get(r["id"], []), inc.build_chain(by_incident.get(r["id"], [])))
           for r in rows]
    order = {"open": 0, "acknowledged": 1, "resolved": 2}
    out.sort(key=lambda i: (order[i["state"]], -i["opened"], -i["id"]))
    return out


def _timeline_entry(e: dict[str, Any]) -> dict[str, Any]:
    keep = ("ts", "event", "state", "actor", "note", "finding_id", "kind", "subject", "title", "severity",
            "summary", "root_finding_id")
    return {k: e[k] for k in keep if k in e}


def incident(db, incident_id: int, runbook_names: list[str] | None = None) -> dict[str, Any]:
    """One incident: its summary, the root-cause chain with each link's evidence, the findings
    off the chain, every finding, the timeline, the suggested remediation (the root cause's) and
    the runbooks of its findings (`exists`: whether runbooks/<name>.md is there)."""
    from controlplane import incidents as inc
    try:
        row = db.incident(incident_id)
    except KeyError:
        recent = [str(r["id"]) for r in db.incidents(limit=20)]
        raise NotFound("incident", str(incident_id), recent) from None
    fs = db.incident_findings(incident_id)
    h = inc.build_chain(fs)
    out = _incident_summary(row, fs, h)
    by_id = {f["id"]: finding(f) for f in fs}
    out["chain"] = [{**link, "live_title": by_id[link["finding_id"]]["live_title"]} if link.get("finding_id") in by_id
                    else link for link in h["chain"]]
    out["others"] = [by_id[i] for i in h["others"] if i in by_id]
    out["findings"] = {**out["findings"], "items": list(by_id.values())}
    out["timeline"] = [_timeline_entry(e) for e in row["timeline"] if isinstance(e, dict)]
    out["remediation"] = remediation(h.get("remediation"))
    names = []
    for f in fs:
        name = f.get("runbook") or f.get("kind")
        if name and name not in names:
            names.append(name)
    known = set(runbook_names or [])
    out["runbooks"] = [{"name": n, "exists": n in known} for n in names]
    out["notifications"] = notifications(db, incident_id)
    out["muted_by"] = muted_by(db, out, fs)
    return out


# -- alerting: the outbox and silences ------------------------------------------------------------

NOTIFICATION_KEYS = ("id", "destination", "incident_id", "event", "status", "attempts", "last_error", "created",
                     "delivered_at")
SILENCE_STATES = ("active", "pending", "expired")


def notification(row: dict[str, Any]) -> dict[str, Any]:
    """An outbox row as people read it: where, what, and how its delivery went (never its payload:
    it holds nothing secret, but the listing stays lean)."""
    return {k: row.get(k) for k in NOTIFICATION_KEYS}


def notifications(db, incident_id: int | None = None, limit: int | None = 100) -> list[dict[str, Any]]:
    """An incident's notifications, oldest first; without one, the newest `limit` of all."""
    return [notification(r) for r in db.alerts(incident_id=incident_id, limit=limit)]


def silence(row: dict[str, Any]) -> dict[str, Any]:
    from controlplane.alerting import silences as sil
    keep = ("id", "state", "matchers", "starts_at", "ends_at", "created", "created_by", "comment", "expired_by")
    return {**{k: row.get(k) for k in keep}, "text": sil.show(row.get("matchers") or [])}


def silences(db, state: str = "all", limit: int | None = 100) -> list[dict[str, Any]]:
    """Silences, newest first; `state` keeps the active, pending or expired ones."""
    rows = [silence(r) for r in db.silences(limit=limit)]
    return rows if state == "all" else [r for r in rows if r["state"] == state]


def muted_by(db, incident: dict[str, Any], fs: list[dict[str, Any]], now: float | None = None) -> list[dict[str, Any]]:
    """The active silences that mute an incident now, by the notifier's own rule
    (alerting/pipeline.muting); empty when it is not muted."""
    from controlplane.alerting import pipeline
    active = db.silences(active_at=time.time() if now is None else now)
    return [silence(s) for s in pipeline.muting(incident, fs, active)]


def _points(store: Store, source: str, target: str, name: str, since: float, until: float) -> list[list]:
    return [[t, _round(v, 4)] for t, v in store.series(source, target, name, since) if t <= until]


def incident_charts(cf, store: Store, fs: list[dict[str, Any]], opened: float,
                    resolved_at: float | None = None, now: float | None = None) -> list[dict[str, Any]]:
    """The series that matter to an incident's findings, from CHART_MARGIN_S before it opened to
    CHART_MARGIN_S after it resolved (or now): each {"title", "unit", "name", "source", "target",
    "finding_id", "points"}. Which series is each finding's detector's to say (its `charts`:
    e.g. the shard's ops/s and clients, its idle clients, the proxy listener's sessions and
    connection errors, a service's error-line rates); upstream findings' come first."""
    from controlplane import detectors
    from controlplane import incidents as inc
    now = time.time() if now is None else now
    since = opened - CHART_MARGIN_S
    until = min(now, resolved_at + CHART_MARGIN_S) if resolved_at else now
    shard_names = {s.name for s in cf.redis.shards}
    charts: list[dict[str, Any]] = []
    seen: set[tuple[str, str, str]] = set()

    def add(f, source, target, name, unit, title):
        key = (source, target, name)
        if key in seen or len(charts) >= MAX_INCIDENT_CHARTS:
            return
        seen.add(key)
        charts.append({"title": title, "unit": unit, "name": name, "source": source, "target": target,
                       "finding_id": f.get("id"), "points": _points(store, source, target, name, since, until)})

    for f in sorted(fs, key=lambda f: (inc.layer(f), f.get("first_seen") or 0)):
        for c in detectors.for_kind(f.get("kind")).charts(f):
            if c.source in SHARD_SOURCES and c.target not in shard_names:
                continue           # a shard the cluster file no longer has (an old finding)
            if c.pick is None:
                add(f, c.source, c.target, c.figure, c.unit, c.caption)
                continue
            for name in store.names(c.source, c.target):
                picked = c.pick(name)
                if picked:
                    add(f, c.source, c.target, name, *picked)
    return charts


# -- runbooks -------------------------------------------------------------------------------------

RUNBOOK_NAME_CHARS = "a-z, 0-9 and _"


def valid_runbook_name(name: str) -> bool:
    return 0 < len(name) <= 64 and all(c.isascii() and (c.islower() or c.isdigit() or c == "_") for c in name)


def runbook_names(directory) -> list[str]:
    """The runbooks present: runbooks/<name>.md with a valid name."""
    from pathlib import Path
    d = Path(directory)
    if not d.is_dir():
        return []
    return sorted(p.stem for p in d.glob("*.md") if p.is_file() and valid_runbook_name(p.stem))


def runbooks(directory) -> list[dict[str, Any]]:
    from pathlib import Path

    from controlplane.web import markdown
    out = []
    for name in runbook_names(directory):
        text = (Path(directory) / f"{name}.md").read_text(encoding="utf-8", errors="replace")
        out.append({"name": name, "title": markdown.title(text) or name})
    return out


def runbook(directory, name: str) -> dict[str, Any]:
    """One runbook's Markdown; NotFound lists the runbooks there. The caller checks the name."""
    from pathlib import Path

    from controlplane.web import markdown
    if not valid_runbook_name(name) or name not in runbook_names(directory):
        raise NotFound("runbook", name, runbook_names(directory))
    text = (Path(directory) / f"{name}.md").read_text(encoding="utf-8", errors="replace")
    return {"name": name, "title": markdown.title(text) or name, "markdown": text}


# -- remediation plans ----------------------------------------------------------------------------
# From the database's plans table (controlplane/remediation/plans.py makes, applies and verifies
# them). Plan text comes from the cluster (host names, CLIENT LIST lines in diffs): it is only ever
# shown escaped. A row is normalised here so a page never trips on a missing or odd field.

PLAN_LIST_DEFAULT = 200


def _strs(value: Any) -> list[str]:
    return [str(x) for x in value] if isinstance(value, list) else []


def _dict(value: Any) -> dict[str, Any] | None:
    return value if isinstance(value, dict) else None


def plan(row: dict[str, Any]) -> dict[str, Any]:
    """One plan as the pages show it: its steps each with their diff lines, preconditions and the
    result of that step when it ran (`result` None: not run), the overall result, the
    verification, and `stale` when the apply was refused because the state had moved."""
    result = _dict(row.get("result"))
    ran = [r for r in (result or {}).get("steps") or [] if isinstance(r, dict)]
    steps = []
    for k, s in enumerate(row.get("steps") if isinstance(row.get("steps"), list) else []):
        s = s if isinstance(s, dict) else {}
        steps.append({"action": str(s.get("action") or ""), "subject": str(s.get("subject") or ""),
                      "params": s.get("params") if isinstance(s.get("params"), dict) else {},
                      "summary": str(s.get("summary") or ""), "diff": _strs(s.get("diff")),
                      "preconditions": _strs(s.get("preconditions")),
                      "changes": s.get("changes", True) is not False,
                      "result": ran[k] if k < len(ran) else None})
    return {"id": row["id"], "created": row.get("created"), "time": row.get("time"),
            "created_by": row.get("created_by"), "action": row.get("action"), "subject": row.get("subject"),
            "state": row.get("state"), "incident_id": row.get("incident_id"),
            "applied_at": row.get("applied_at"), "applied_by": row.get("applied_by"),
            "summary": str(row.get("summary") or ""), "changes": row.get("changes", True) is not False,
            "finding_ids": row.get("finding_ids") if isinstance(row.get("finding_ids"), list) else [],
            "steps": steps, "result": result, "stale": bool((result or {}).get("stale")),
            "verification": _dict(row.get("verification"))}


def plans(db, limit: int | None = PLAN_LIST_DEFAULT) -> list[dict[str, Any]]:
    """Plans, newest first."""
    return [plan(r) for r in db.plans(limit=limit)]


def incident_plans(db, incident_id: int) -> list[dict[str, Any]]:
    """The plans made for one incident, newest first."""
    return [plan(r) for r in db.plans(limit=None) if r.get("incident_id") == incident_id]


def plan_detail(db, plan_id: str) -> dict[str, Any]:
    """One plan and its audit trail (oldest first); NotFound lists the newest plans' ids."""
    try:
        row = db.plan(plan_id)
    except KeyError:
        raise NotFound("plan", plan_id, [p["id"] for p in db.plans(limit=20)]) from None
    return {**plan(row), "audit": db.audit_for_plan(plan_id)}
