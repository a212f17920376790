"""Unresponsive service: a chat service (edge, clue or exchange, on any chat host) that stops
answering -- crashed and not restarted, crash-looping, hung (SIGSTOP, a blocked event loop) or too
slow for its scrape. Every other detector reads a service's figures; this one reads their absence.

Per chat service `<service>-<host>`, three signals; the first two fire after holding for
`thresholds.hold`, the third at once:

- **not answering**: the control plane's own scrape of its /metrics failed (source `service`,
  figure `up` = 0, controlplane/sources/service_figures.py): refused, reset, or timed out, the
  timeout being at most the scrape interval, so "too slow for its scrape" is the same signal.
- **crash-looping**: the local supervisor restarted it at least LOOP_RESTARTS times within
  LOOP_SPAN_S (source `process`, figure `<service>-<host>:restarts`: state.json's `restarts`,
  carried by the process collector). This catches a loop that answers a scrape between crashes.
  The span is two of the supervisor's longest backoffs, so a loop that has backed off to its
  slowest still counts.
- **restarted**: the restart count rose (the supervisor saw it die and started it again), and it
  has not yet answered every scrape for `hold` since. The supervisor restarts within 0-0.5 s and
  a chat service is back in about a second, often before one scrape fails: without this signal a
  single crash went unseen (the chaos test found that). It resolves by itself once the service
  has answered for `hold` after its restart.

A Redis shard's redis-server (and its replica's) is judged by the same restart signal, as subject
`redis-<shard>` (`redis-<shard>-replica`), answering judged by the redis source's `up` (a replica
has none: `hold` after its restart). A restarted shard without persistence has lost its data:
the finding says the restart happened; the shard's own figures (keys) say what it kept.

How it is stuck comes from the process source (psutil on the pid state.json names): `stopped`
is a hung process (SIGSTOP, a debugger), gone is a crash, alive and silent is a blocked or
overloaded one.

Subject `<service>@<host>` (`clue@chat1`); about {service, host, cluster} (a shard's: {service
"redis", host, shard}). Evidence: whether it
answers now, for how long it has not, the scrape's error text and duration, the process state and
pid, restarts in the span and in all, and the scrape error as a line. Severity: critical while it
does not answer; warning for a loop or a restart that answers. Remediation: restart_service for
a hung or dead process; none for a crash loop or a restart (the supervisor is already restarting
it: its log says why it dies).

In an incident it sits where the service sits on the request path -- an edge at the edge layer,
clue and the exchange at the service layer, a shard's redis-server at the shard layer -- and a
chat service's names no shard and reaches for none: a service
that does not answer its own scrape is explained by something on its own host (the HAProxy in
front of its shards), not by a guess about any shard. See controlplane/incidents.py for which of
several unresponsive services is the cause.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from collectors.services import SERVICES
from controlplane.detectors.base import (
    EDGE,
    SERVICE,
    SHARD,
    USERS,
    Chart,
    Finding,
    Serves,
    Window,
    about,
    hold_s,
    log_charts,
    named_host,
    num,
    service,
    shard_charts,
)
from controlplane.local.supervisor import BACKOFF_MAX
from controlplane.sources import names

KIND = "unresponsive_service"
LOOP_RESTARTS = 2                 # one restart is a crash the supervisor handled; two is a loop
LOOP_SPAN_S = 2 * BACKOFF_MAX
STOPPED = ("stopped", "tracing-stop")      # psutil's names for a process in state T / t


def _process(window: Window, name: str) -> dict:
    data = window.data("process", "local")
    procs = data.get("processes") if isinstance(data, dict) else None
    for p in procs if isinstance(procs, list) else []:
        if isinstance(p, dict) and p.get("name") == name:
            return p
    return {}


def recent_restarts(points: list, span: float) -> list:
    """Each point's restarts within the trailing `span` seconds: its value less the lowest value
    in the span (the lowest, not the first, so a supervisor restarted from 0 counts nothing)."""
    out, start = [], 0
    low: deque[tuple[int, float]] = deque()   # (index, value): the span's known values, rising
    for i, (t, v) in enumerate(points):
        while points[start][0] < t - span:
            start += 1
        while low and low[0][0] < start:
            low.popleft()
        x = num(v)
        if x is not None:
            while low and low[-1][1] >= x:
                low.pop()
            low.append((i, x))
        out.append((t, x - low[0][1] if x is not None else None))
    return out


def last_restart(points: list) -> float | None:
    """When the newest rise of a restart count was first seen; None without one in the window (a
    count that went down is a restarted supervisor, not a restart)."""
    last, prev = None, None
    for t, v in points:
        v = num(v)
        if v is None:
            continue
        if prev is not None and v > prev:
            last = t
        prev = v
    return last


def answered_since(window: Window, up: list, restarted: float) -> float:
    """Seconds it has answered every scrape since its restart at `restarted`: 0 while the newest
    scrape fails. Without scrapes (a replica) the time since the restart."""
    if not up:
        return window.now - restarted
    if up[-1][1] != 1.0:
        return 0.0
    start = up[-1][0]
    for t, v in reversed(up):
        if v != 1.0:
            break
        start = t
    return window.now - max(start, restarted)


def _state(proc: dict, answering: bool, looping: bool, restarted: bool = False) -> str:
    """How it is stuck, in a few words."""
    stats = proc.get("stats") if isinstance(proc.get("stats"), dict) else {}
    status = str(stats.get("status") or "")
    if looping:
        return "crash-looping"
    if restarted and answering:
        return "restarted (answering again)"
    if status in STOPPED:
        return "hung (process stopped)"
    if stats.get("gone") or status in ("gone", "zombie", "not started"):
        return "down (process gone)"
    if not answering and status:
        return "hung or too slow (process alive)"
    return "not answering"


def detect(window: Window, cf) -> list[Finding]:
    out = [f for host, cluster in cf.chat_hosts() for svc in SERVICES
           if (f := _judge(window, cf, svc, host, cluster)) is not None]
    for shard in cf.redis.shards:
        procs = [(f"redis-{shard.name}", shard.host, False)]
        if shard.replica:
            procs.append((f"redis-{shard.name}-replica", shard.replica.host, True))
        for target, host, replica in procs:
            f = _restarted_shard(window, cf, target, shard.name, host, replica)
            if f is not None:
                out.append(f)
    return out


def _restarted_shard(window: Window, cf, target: str, shard: str, host: str, replica: bool) -> Finding | None:
    """A shard's redis-server the supervisor restarted, until it has answered for `hold` since."""
    restarts = window.points("process", "local", names.series(target, "restarts"))
    at = last_restart(restarts)
    up = [] if replica else [(t, num(v)) for t, v in window.points("redis", shard, "up")]
    if at is None or answered_since(window, up, at) >= hold_s(cf):
        return None
    answering = not up or up[-1][1] == 1.0
    proc = _process(window, target)
    stats = proc.get("stats") if isinstance(proc.get("stats"), dict) else {}
    keys = None if replica else num(window.value("redis", shard, "keys"))
    ev = {"state": _state(proc, answering, False, True), "answering": answering,
          "restarted_s_ago": round(window.now - at, 1), "restarts": num(proc.get("restarts")),
          "keys_now": keys, "process_status": stats.get("status"), "pid": stats.get("pid"), "lines": []}
    role = f"{shard}'s replica" if replica else shard
    return Finding(
        kind=KIND, subject=target, severity="warning" if answering else "critical",
        title=f"{target} ({role}) restarted by the supervisor", evidence=ev, remediation=None,
        firing=True, held_s=window.now - at, about={"service": "redis", "host": host, "shard": shard})


def _judge(window: Window, cf, svc: str, host: str, cluster: str | None) -> Finding | None:
    hold = hold_s(cf)
    target = f"{svc}-{host}"
    restarts = window.points("process", "local", names.series(target, "restarts"))
    at = last_restart(restarts)
    newest = window.newest("service", target, "up")
    if at is None and (newest is None or num(newest[1]) is None or num(newest[1]) >= 1.0):
        # The usual pass, settled without reading the rest: answering now (or unknown), so not
        # silent; and no restart in the window, so none recent (a count that never rose leaves
        # each point at the span's minimum: 0 recent restarts) and none to wait out.
        return None
    up = [(t, num(v)) for t, v in window.points("service", target, "up")]
    silent = window.held_for(up, lambda v: v < 1.0)
    loops = recent_restarts(restarts, LOOP_SPAN_S)
    looped = window.held_for(loops, lambda v: v >= LOOP_RESTARTS)
    restarted = at is not None and answered_since(window, up, at) < hold
    if not silent and not looped and not restarted:
        return None
    held = max(silent, looped)
    answering = not silent
    proc = _process(window, target)
    stats = proc.get("stats") if isinstance(proc.get("stats"), dict) else {}
    latest = window.latest.get(f"service:{target}", {})
    error = str(latest.get("error") or "")[:300] or None
    answered = [t for t, v in up if v == 1.0]
    state = _state(proc, answering, looped > 0, restarted)
    ev: dict[str, Any] = {
        "state": state,
        "answering": answering,
        "not_answering_for_s": round(silent, 1),
        "scrape_error": error,
        "restarts_recent": loops[-1][1] if loops else None,
        "restarts": num(proc.get("restarts")),
        "process_status": stats.get("status"),
        "pid": stats.get("pid"),
        "scrape_duration_s": num(window.value("service", target, "scrape_duration_seconds")),
        "scrape_interval_s": window.interval_s,
        "last_answered_s_ago": round(window.now - answered[-1], 1) if answered else None,
        "restarts_span_s": LOOP_SPAN_S,
        "restarted_s_ago": round(window.now - at, 1) if restarted else None,
        "held_s": round(held, 1),
        "lines": [f"scrape of {target}: {error}"] if error else [],
    }
    remediation, firing = None, held >= hold
    if looped:
        what = f"crash-looping ({fmt(ev['restarts_recent'])} restarts in {LOOP_SPAN_S:g} s)"
    elif silent >= hold or not restarted:
        what = f"not answering: {state}"
        stopped = stats.get("status") in STOPPED
        summary = (f"restart {target} (a stopped process acts on SIGTERM only once continued: "
                   f"`kill -CONT {stats.get('pid')}` first, or `kill -KILL` it)" if stopped
                   else f"restart {target} and wait until it answers")
        remediation = {"action": "restart_service", "summary": summary,
                       "params": {"service": svc, "host": host}}
    else:
        # The supervisor saw it die and started it again: an event, so it opens at once, and the
        # supervisor has done the restart a person would.
        what = "restarted by the supervisor" + ("" if answering else f", not answering yet: {state}")
        held, firing = max(held, window.now - at), True
    return Finding(
        kind=KIND, subject=f"{svc}@{host}", severity="warning" if answering else "critical",
        title=f"{svc}@{host} {what}", evidence=ev, remediation=remediation, firing=firing, held_s=held,
        about={"service": svc, "host": host, "cluster": cluster or ""})


def fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


# -- in an incident: the service where it sits on the request path ---------------------------------

def layer(f: dict) -> int:
    return EDGE if service(f) == "edge" else SHARD if service(f) == "redis" else SERVICE


def _state_of(f: dict) -> str:
    state = (f.get("evidence") or {}).get("state")
    return state if isinstance(state, str) and state else "not answering"


def label(f: dict) -> str:
    host = named_host(f)
    return f"{service(f) or f.get('subject')} {_state_of(f)}" + (f" on {host}" if host else "")


def cause(f: dict) -> str:
    if service(f) == "redis":
        return f"{f.get('subject')} was restarted: {_state_of(f)}"
    return f"{service(f) or 'a service'} on {named_host(f) or '?'} stopped answering: {_state_of(f)}"


def serves(f: dict) -> Serves | None:
    if service(f) == "redis":
        return None         # a shard is linked to what it explains by its name, as any shard finding
    # Messages sent through this host's edge pass its clue and its exchange before reaching any
    # edge of the cluster: while one of them is silent, every edge of the cluster misses them.
    host = named_host(f) or "its host"
    return Serves(USERS, f"messages sent through {host} pass its {service(f) or 'service'} "
                         f"on their way to every edge of cluster {about(f).get('cluster') or '?'}")


def charts(f: dict) -> list[Chart]:
    svc, host = service(f), named_host(f)
    if svc == "redis":
        return [*shard_charts(about(f).get("shard")),
                Chart("process", "local", names.series(str(f.get("subject")), "restarts"), "", "restarts")]
    if not svc or not host:
        return log_charts(f)
    target = f"{svc}-{host}"
    return [Chart("service", target, "up", "", f"{target} answers its scrape (1) or not (0)"),
            Chart("service", target, "scrape_duration_seconds", "s", f"{target} scrape duration"),
            Chart("process", "local", names.series(target, "restarts"), "", f"{target} restarts"),
            *log_charts(f)]
