"""Proxy saturation: a chat host's HAProxy is full, queueing, failing, or losing workers. In the
talk, HAProxy sat in front of one Redis at 99% CPU, and an old HAProxy worker later crashed (exit
139) after runtime-API changes and reloads.

Per chat host (source `haproxy:<host>`, figures of controlplane/sources/figures.py), each
condition judged over the window, firing when held for `hold`, reported (not firing) while above
threshold x clear_factor:

- sessions: a FRONTEND's `scur / slim` >= proxy_session_warn_ratio (its maxconn: a hard limit;
  beyond it HAProxy stops accepting), or a server's when it has a maxconn. A backend's `slim` is
  only its fullconn (dynamic-maxconn scaling), not a limit, so its sessions are evidence only.
- queue: `qcur` >= 1 on a backend or server (requests waiting for a connection slot).
- errors: `econ_per_s + eresp_per_s` (backends, servers) or `ereq_per_s` (frontends) >=
  proxy_errors_per_s.
- down: a server whose status does not serve (`:up` = 0: DOWN, NOLB; MAINT is an operator's choice
  and skipped), with its last check status; critical when its backend has no server left.
- worker exits: an HAProxy worker the master reported as exited with a non-zero code
  (`proc.worker_exits`, read from the HAProxy log), while the window shows the worker set changing
  (a worker went away within the window): an exit is an event, so it fires at once and resolves
  once the window no longer holds the change. Code 139 (SIGSEGV) and 134 (abort) are critical.

Subjects: `<host>:<proxy>` for frontend/backend conditions, `<host>:<proxy>/<server>` for a server,
`<host>:haproxy-worker/<pid>` for an exit. about {host, cluster, shard when the proxy is the
`redis-<shard>` listener}. Evidence: the row's scur/slim/qcur/rates/status/check, the conditions
that hold, held_s.
"""

from __future__ import annotations

from controlplane.detectors.base import (
    EVERY_SHARD,
    PROXY,
    Chart,
    Finding,
    Window,
    about,
    floor,
    judge,
    named_host,
    num,
    quiet,
    shard_charts,
    thresholds,
)
from controlplane.sources import names

KIND = "proxy_saturation"
SEVERE_EXITS = (134, 139)




def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


def _aligned(a: list, b: list) -> bool:
    """Whether two series of one target share their timestamps, point for point: they come from
    the same snapshots, so they do unless one was missing from some; then look up by time."""
    return len(a) == len(b) and all(p[0] == q[0] for p, q in zip(a, b))


def _quiet(value: float | None, floor: float | None) -> bool:
    """A newest value below `floor` (the lower of a condition's threshold and its relaxed one)
    settles `judge` at (False, False, 0.0) whatever came before it: the healthy case, on every row
    of every host each pass, need not build the whole series."""
    return floor is not None and (value is None or value < floor)


def _ratio(window: Window, host: str, row: str, floor: float | None = None) -> list:
    """scur / slim over the window; only its newest point when that one is `_quiet`."""
    a = window.newest("haproxy", host, names.series(row, "scur"))
    b = window.newest("haproxy", host, names.series(row, "slim"))
    if a is not None and b is not None and a[0] == b[0]:
        cur, lim = num(a[1]), num(b[1])
        newest = (a[0], cur / lim if cur is not None and lim else None)
        if _quiet(newest[1], floor):
            return [newest]
    scur = window.points("haproxy", host, names.series(row, "scur"))
    slim_pts = window.points("haproxy", host, names.series(row, "slim"))
    if _aligned(scur, slim_pts):
        lims = [num(v) for _, v in slim_pts]
    else:
        by_time = dict(slim_pts)
        lims = [num(by_time.get(t)) for t, _ in scur]
    out = []
    for (t, cur), lim in zip(scur, lims):
        cur = num(cur)
        out.append((t, cur / lim if cur is not None and lim else None))
    return out


def _sum(window: Window, host: str, row: str, figures: tuple[str, ...], floor: float | None = None) -> list:
    """The figures' sum over the window; only its newest point when that one is `_quiet`."""
    last = [window.newest("haproxy", host, names.series(row, n)) for n in figures]
    if all(p is not None and p[0] == last[0][0] for p in last):
        vals = [num(p[1]) for p in last]
        newest = (last[0][0], None if all(v is None for v in vals) else sum(v or 0.0 for v in vals))
        if _quiet(newest[1], floor):
            return [newest]
    series = [window.points("haproxy", host, names.series(row, n)) for n in figures]
    if all(_aligned(series[0], s) for s in series[1:]):
        times = [t for t, _ in series[0]]
        columns = [[num(v) for _, v in s] for s in series]
    else:
        by_time = [dict(s) for s in series]
        times = sorted({t for s in by_time for t in s})
        columns = [[num(s.get(t)) for t in times] for s in by_time]
    out = []
    for t, vals in zip(times, zip(*columns)):
        out.append((t, None if all(v is None for v in vals) else sum(v or 0.0 for v in vals)))
    return out


def _rows(window: Window, host: str) -> dict[str, dict]:
    """'<proxy>/<name>' -> the latest stat row (as a dict), for frontends, backends and servers."""
    data = window.data("haproxy", host) or {}
    stat = data.get("stat") if isinstance(data, dict) else None
    rows = (stat or {}).get("rows") or [] if isinstance(stat, dict) else []
    return {f"{r.get('proxy')}/{r.get('name')}": r for r in rows
            if isinstance(r, dict) and r.get("kind") in ("frontend", "backend", "server")}


def _row_names(window: Window, host: str) -> list[str]:
    return sorted({names.part_of(n) for n in window.names("haproxy", host) if "/" in n and ":" in n})


def _changed(points: list) -> bool:
    vals = [v for _, v in points if v is not None]
    return len(set(vals)) > 1


def detect(window: Window, cf) -> list[Finding]:
    th = thresholds(cf)
    shards = {s.name for s in cf.redis.shards}
    out: list[Finding] = []
    for host in window.targets("haproxy"):
        if window.up("haproxy", host) is False:
            continue
        cluster = cf.cluster_of(host) or ""
        latest = _rows(window, host)
        found: dict[str, dict] = {}            # subject -> {"conds", "firing", "held", "row", ...}

        def note(subject: str, row: str, cond: str, value, verdict, severity="warning") -> None:
            firing, sustained, held = verdict
            if not (firing or sustained):
                return
            f = found.setdefault(subject, {"row": row, "conditions": {}, "firing": False, "held": 0.0,
                                           "severity": "warning"})
            f["conditions"][cond] = value
            f["firing"] = f["firing"] or firing
            f["held"] = max(f["held"], held)
            if severity == "critical":
                f["severity"] = "critical"

        ratio_floor, errors_floor = floor(th.proxy_session_warn_ratio, cf), floor(th.proxy_errors_per_s, cf)
        for row in _row_names(window, host):
            proxy, _, name = row.partition("/")
            r = latest.get(row, {})
            kind = r.get("kind") or ("frontend" if name == "FRONTEND" else "backend" if name == "BACKEND" else "server")
            subject = f"{host}:{proxy}" if kind in ("frontend", "backend") else f"{host}:{proxy}/{name}"
            if kind in ("frontend", "server"):
                pts = _ratio(window, host, row, ratio_floor)
                if pts:
                    note(subject, row, f"{kind}_sessions_of_limit", _r(pts[-1][1]),
                         judge(window, pts, th.proxy_session_warn_ratio, cf),
                         "critical" if (pts[-1][1] or 0) >= 1 else "warning")
            # A figure whose newest point is `quiet` cannot be noted: it is not read further.
            if kind in ("backend", "server"):
                series = names.series(row, "qcur")
                if not quiet(window, "haproxy", host, series, 1.0, cf):
                    pts = window.points("haproxy", host, series)
                    note(subject, row, f"{kind}_queue", num(pts[-1][1]) if pts else None,
                         judge(window, pts, 1.0, cf))
                pts = _sum(window, host, row, ("econ_per_s", "eresp_per_s"), errors_floor)
                note(subject, row, f"{kind}_errors_per_s", _r(pts[-1][1]) if pts else None,
                     judge(window, pts, th.proxy_errors_per_s, cf))
            else:
                series = names.series(row, "ereq_per_s")
                if not quiet(window, "haproxy", host, series, th.proxy_errors_per_s, cf):
                    pts = window.points("haproxy", host, series)
                    note(subject, row, "frontend_request_errors_per_s", _r(pts[-1][1]) if pts else None,
                         judge(window, pts, th.proxy_errors_per_s, cf))
            if kind == "server" and not str(r.get("status") or "").startswith("MAINT") \
                    and not quiet(window, "haproxy", host, names.series(row, "up"), 0.0, cf, above=False):
                pts = window.points("haproxy", host, names.series(row, "up"))
                backend_up = num(window.value("haproxy", host, names.series(names.proxy_row(proxy, "BACKEND"), "up")))
                note(subject, row, "server_down", r.get("status"), judge(window, pts, 0.0, cf, above=False),
                     "critical" if backend_up == 0 else "warning")

        for subject, f in found.items():
            row = f["row"]
            proxy, _, name = row.partition("/")
            r = latest.get(row, {})
            backend = latest.get(f"{proxy}/BACKEND", {})
            ev = {"conditions": f["conditions"], "held_s": round(f["held"], 1),
                  "row": {k: r.get(k) for k in ("kind", "status", "scur", "smax", "slim", "qcur", "rate",
                                                 "econ", "eresp", "ereq", "check_status", "check_duration",
                                                 "lastchg", "addr") if k in r},
                  "backend": {k: backend.get(k) for k in ("status", "scur", "slim", "qcur") if k in backend},
                  "thresholds": {"proxy_session_warn_ratio": th.proxy_session_warn_ratio,
                                 "proxy_errors_per_s": th.proxy_errors_per_s}}
            about = {"host": host, "cluster": cluster}
            if proxy.startswith("redis-") and proxy[len("redis-"):] in shards:
                about["shard"] = proxy[len("redis-"):]
            conds = ", ".join(f"{k}={v}" for k, v in f["conditions"].items())
            out.append(Finding(
                kind=KIND, subject=subject, severity=f["severity"],
                title=f"{subject}: HAProxy saturated or failing ({conds})", evidence=ev,
                firing=f["firing"], held_s=f["held"], about=about,
                remediation={"action": "inspect_haproxy",
                             "summary": f"chatops inspect haproxy {host}: check {proxy}'s limits, queue and servers",
                             "params": {"host": host, "proxy": proxy}}))

        out.extend(_worker_exits(window, cf, host, cluster))
    return out


def _worker_exits(window: Window, cf, host: str, cluster: str) -> list[Finding]:
    data = window.data("haproxy", host) or {}
    proc = data.get("proc") if isinstance(data, dict) else None
    if not isinstance(proc, dict):
        return []
    exits = proc.get("worker_exits") or {}
    if not isinstance(exits, dict):
        return []
    alive = {str(p) for p in (proc.get("workers") or []) + (proc.get("old_workers") or [])}
    recent = (_changed(window.points("haproxy", host, "old_workers"))
              or _changed(window.points("haproxy", host, "workers")))
    out = []
    for pid, code in sorted(exits.items()):
        code = num(code)
        if code is None or code == 0 or str(pid) in alive or not recent:
            continue
        code = int(code)
        out.append(Finding(
            kind=KIND, subject=f"{host}:haproxy-worker/{pid}",
            severity="critical" if code in SEVERE_EXITS else "warning",
            title=f"{host}: HAProxy worker {pid} exited with code {code}"
                  + (" (segmentation fault)" if code == 139 else ""),
            evidence={"pid": int(pid), "exit_code": code, "workers": proc.get("workers"),
                      "old_workers": proc.get("old_workers"), "reloads": proc.get("reloads"),
                      "failed_reloads": proc.get("failed_reloads")},
            firing=True, held_s=0.0, about={"host": host, "cluster": cluster},
            remediation={"action": "inspect_haproxy",
                         "summary": f"read haproxy-{host}.log around the exit; reload HAProxy cleanly "
                                    f"(chatops inspect haproxy {host}) and avoid runtime-API changes on old workers",
                         "params": {"host": host}}))
    return out


# -- in an incident: the chat host's HAProxy, between clue and the shards ------------------------

def layer(f: dict) -> int:
    return PROXY


def shard(f: dict) -> str | None:
    """The shard named, or the one behind the `redis-<shard>` listener its service names."""
    a = about(f)
    if a.get("shard"):
        return a["shard"]
    if a.get("service", "").startswith("redis-"):
        return a["service"][len("redis-"):]
    return None


def label(f: dict) -> str:
    s = shard(f)
    return f"HAProxy on {named_host(f) or f.get('subject')} saturated" + (f" (redis-{s})" if s else "")


def reaches(f: dict) -> str:
    return EVERY_SHARD


def charts(f: dict) -> list[Chart]:
    """Its listener's sessions, queue and connection errors, then the shard's own figures."""
    host, s = about(f).get("host"), shard(f)
    out = []
    if host:
        prefix = f"redis-{s}/" if s else ""

        def pick(name: str) -> tuple[str, str] | None:
            if name.startswith(prefix) and ("/BACKEND:" in name or "/FRONTEND:" in name) and name.endswith(
                    (":scur", ":qcur", ":econ_per_s")):
                return "/s" if name.endswith("_per_s") else "", f"{host} {name}"
            return None
        out.append(Chart("haproxy", host, pick=pick))
    return out + shard_charts(s)
