"""Ingestion timeouts: messages cannot get through edge -> clue -> Redis. The talk's first clue:
edge logs full of `[clue] Timed out (after 5s) while writing request for: privmsg`, then clue logs
full of `ECONNREFUSED`.

Per chat host, two subjects, each judged on the rate of its signals -- per second, averaged over
the trailing `span_s` (timeouts come in bursts) -- against ingestion_timeouts_per_s; firing when one signal has held above it for `hold`, reported
(not firing) while one is above threshold x clear_factor:

- `edge-<host>`: `[clue] Timed out` lines (logs source: file `edge-<host>`, remote `clue`, kind
  `timeout`), the edge's own `chat_edge_clue_timeouts_total` rate, and PRIVMSGs it refused
  `msg_unavailable` (clue answered that Redis or the exchange could not be reached: the same
  outage seen from the edge when clue fails fast instead of hanging).
- `clue-<host>`: `ECONNREFUSED`/connection-refused lines (file `clue-<host>`, kind
  `connection_refused`) and `chat_clue_redis_errors_total` (every failed Redis call: refused,
  timed out, closed), per shard; the shard with the most errors is named in `about`.

about {service, host, cluster, shard when known}. Evidence: every signal's rate, the per-shard
error rates, the example log lines (`lines`). Severity: critical when edge requests time out or
more than half of the edge's messages are refused, else warning. Remediation: follow upstream (the
clue finding's shard; then hot_shard / leaked_clients / proxy_saturation for that shard).
"""

from __future__ import annotations

from cluster.durations import seconds
from controlplane.detectors.base import (
    EDGE,
    EVERY_SHARD,
    SERVICE,
    Chart,
    Finding,
    Serves,
    Window,
    evidence_figures,
    example_lines,
    floor,
    judge,
    log_charts,
    log_groups,
    named_host,
    named_shard,
    num,
    service,
    shard_charts,
    thresholds,
)
from controlplane.sources import names

KIND = "ingestion_timeouts"
MIN_SPAN_S = 10.0






def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


def _log_series(window: Window, stem: str, kinds: tuple[str, ...], remote: str | None = None) -> list:
    """Sum of the logs source's per_s series of `stem`'s groups of `kinds` (from `remote` if given)."""
    by_t: dict[float, float | None] = {}
    for name in window.names("logs", "local"):
        if not name.endswith(":per_s"):
            continue
        parts = name[:-len(":per_s")].split("|")
        if len(parts) != 3 or parts[0] != stem or parts[2] not in kinds or (remote and parts[1] != remote):
            continue
        for t, v in window.points("logs", "local", name):
            v = num(v)
            if t not in by_t:
                by_t[t] = v
            elif v is not None:
                by_t[t] = (by_t[t] or 0.0) + v
    return sorted(by_t.items())


def _lines(window: Window, stem: str, kinds: tuple[str, ...], remotes: tuple[str, ...] = ()) -> list[str]:
    """Example lines of `stem`'s groups of `kinds`, or of any kind from `remotes`."""
    out = []
    for g in log_groups(window):
        if g.get("file") == stem and (g.get("kind") in kinds or g.get("remote") in remotes):
            out += [str(x) for x in g.get("examples") or []]
    return out[-5:]


def span_s(window: Window, cf, host: str) -> float:
    """The averaging span: timeouts arrive in bursts, every waiting call at once when the edge's
    clue timeout (5 s) runs out, so a per-scrape rate is mostly 0 between bursts. Signals are
    judged on their mean over the last max(10 s, 2 x that timeout, 3 scrape intervals)."""
    try:
        timeout = seconds(cf.clusters[cf.cluster_of(host)].services.clue.client.timeout)
    except (KeyError, AttributeError):
        timeout = 5.0
    return max(MIN_SPAN_S, 2 * timeout, 3 * window.interval_s)


def smooth(points: list, span: float, floor: float | None = None) -> list:
    """Each point's value replaced by the mean of the known values in the trailing `span` seconds
    (an unknown value, e.g. before a log group's first line, counts as 0 once any is known).
    With `floor` (the lower of a threshold and its relaxed value): only the newest point when it
    is below it, or unknown, which settles `judge` whatever came before."""
    if floor is not None and points:
        first = len(points) - 1             # where the newest point's trailing span starts
        while first > 0 and points[first - 1][0] > points[-1][0] - span:
            first -= 1
        newest = smooth(points[first:], span)[-1]
        if newest[1] is None or newest[1] < floor:
            return [newest]
    out, start = [], 0
    for i, (t, v) in enumerate(points):
        while points[start][0] <= t - span:
            start += 1
        vals = [num(x) for _, x in points[start:i + 1]]
        known = [x for x in vals if x is not None]
        out.append((t, sum(known) / len(vals) if known else None))
    return out


def _best(window: Window, cf, signals: dict[str, list]) -> tuple[bool, bool, float, str | None]:
    """Judge every signal; firing/sustained if any is; held of the longest; the leading signal."""
    th = thresholds(cf).ingestion_timeouts_per_s
    firing = sustained = False
    held, lead = 0.0, None
    for name, pts in signals.items():
        f, s, h = judge(window, pts, th, cf)
        if f or s:
            if lead is None or (f and not firing) or h > held:
                lead = name
            firing, sustained, held = firing or f, sustained or s, max(held, h)
    return firing, sustained, held, lead


def detect(window: Window, cf) -> list[Finding]:
    th = thresholds(cf)
    out: list[Finding] = []
    for host, cluster in cf.chat_hosts():
        # -- the edge ------------------------------------------------------------------------
        edge = f"edge-{host}"
        span = span_s(window, cf, host)
        quiet_below = floor(th.ingestion_timeouts_per_s, cf)
        signals = {
            "timed_out_lines_per_s": smooth(_log_series(window, edge, ("timeout",), "clue"), span, quiet_below),
            "clue_timeouts_per_s": smooth(window.points("service", edge, "timeouts_per_s"), span, quiet_below),
            "unavailable_per_s": smooth(window.points("service", edge, "unavailable_per_s"), span, quiet_below),
        }
        firing, sustained, held, lead = _best(window, cf, signals)
        if firing or sustained:
            ev = {k: _r(num(pts[-1][1])) if pts else None for k, pts in signals.items()}
            msgs = smooth(window.points("service", edge, "messages_per_s"), span)
            msgs = msgs[-1][1] if msgs else None
            ev.update(messages_per_s=_r(msgs), threshold_per_s=th.ingestion_timeouts_per_s,
                      averaged_over_s=span, leading_signal=lead, held_s=round(held, 1),
                      lines=_lines(window, edge, ("timeout",)))
            severe = (ev["timed_out_lines_per_s"] or 0) + (ev["clue_timeouts_per_s"] or 0) > 0 or (
                msgs and (ev["unavailable_per_s"] or 0) > 0.5 * msgs)
            what = ("requests to clue time out" if lead != "unavailable_per_s"
                    else "clue answers msg_unavailable (Redis or the exchange unreachable)")
            out.append(Finding(
                kind=KIND, subject=edge, severity="critical" if severe else "warning",
                title=f"{edge}: ingestion failing, {what} ({ev[lead]}/s)",
                evidence=ev, firing=firing, held_s=held, peak=ev[lead],
                remediation={"action": "follow_upstream",
                             "summary": f"look at clue-{host} and the shard behind it (ingestion_timeouts on clue-{host})",
                             "params": {"host": host, "service": "clue"}},
                about={"service": "edge", "host": host, "cluster": cluster}))
        # -- clue ----------------------------------------------------------------------------
        clue = f"clue-{host}"
        shard_names = [s.name for s in cf.redis.shards]
        signals = {
            "connection_refused_lines_per_s": smooth(_log_series(window, clue, ("connection_refused",)), span,
                                                     quiet_below),
            "redis_errors_per_s": smooth(window.points("service", clue, "errors_per_s"), span, quiet_below),
        }
        firing, sustained, held, lead = _best(window, cf, signals)
        if firing or sustained:
            def errors(s: str) -> list:
                return window.points("service", clue, names.series(names.labelled("shard", s), "redis_errors_per_s"))
            per_shard = {s: _r(smooth(errors(s), span)[-1][1]) for s in shard_names if errors(s)}
            per_shard = {s: v for s, v in per_shard.items() if v is not None}
            worst = max(per_shard, key=lambda s: per_shard[s], default=None)
            ev = {k: _r(num(pts[-1][1])) if pts else None for k, pts in signals.items()}
            ev.update(redis_errors_per_s_by_shard=per_shard,
                      unavailable_per_s=_r(num(window.value("service", clue, "unavailable_per_s"))),
                      threshold_per_s=th.ingestion_timeouts_per_s, averaged_over_s=span, leading_signal=lead,
                      held_s=round(held, 1),
                      lines=_lines(window, clue, ("connection_refused", "timeout", "io_timeout"), ("redis",)))
            about = {"service": "clue", "host": host, "cluster": cluster}
            if worst is not None and per_shard[worst] > 0:
                about["shard"] = worst
            on = f" on {worst}" if "shard" in about else ""
            out.append(Finding(
                kind=KIND, subject=clue, severity="critical",
                title=f"{clue}: Redis calls failing{on} ({ev[lead]}/s)",
                evidence=ev, firing=firing, held_s=held, peak=ev[lead],
                remediation={"action": "follow_upstream",
                             "summary": (f"check {worst} and the HAProxy listener in front of it on {host}"
                                         if "shard" in about else f"check the shards behind {host}'s HAProxy"),
                             "params": {"host": host, **({"shard": worst} if "shard" in about else {})}},
                about=about))
    return out


# -- in an incident: the edge's timeouts upstream of clue's errors --------------------------------

def layer(f: dict) -> int:
    return EDGE if service(f) in ("edge", "") else SERVICE


def _mentions(f: dict, *words: str) -> bool:
    text = " ".join([str(f.get("title", "")), str(f.get("subject", "")),
                     *example_lines(f, 10), *(str(v) for v in evidence_figures(f).values())]).lower()
    return any(w.lower() in text for w in words)


def label(f: dict) -> str:
    svc, host = service(f) or "edge", named_host(f)
    if svc == "clue" and _mentions(f, "ECONNREFUSED", "connection refused", "connection_refused"):
        what = "clue connection refused"
    elif svc == "clue":
        what = "clue errors"
    else:
        what = f"{svc} timeouts"
    return f"{what} on {host}" if host else what


def serves(f: dict) -> Serves | None:
    # clue's (or another service's) errors explain the timeouts of the edges of its cluster
    return Serves(EDGE, "edges send every message through clue") if layer(f) == SERVICE else None


def reaches(f: dict) -> str | None:
    return EVERY_SHARD if service(f) in ("edge", "clue", "") else None


def charts(f: dict) -> list[Chart]:
    return log_charts(f) + shard_charts(named_shard(f))
