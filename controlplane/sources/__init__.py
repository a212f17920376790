"""What the control plane scrapes: one Source per (collector, target), built from the cluster file.

A Source knows its interval and how to scrape once into the store; the scheduler only decides
when. Sources:

- `haproxy:<chat host>`  admin + master socket of that host's HAProxy      (scrape.interval)
- `redis:<shard>`        INFO, CONFIG, SLOWLOG, LATENCY, LFU hot keys      (scrape.interval)
                         (slow-log arguments, key and client names redacted: collectors/redact.py)
- `clients:<shard>`      CLIENT LIST, per source host                       (scrape.client_list_interval)
- `process:local`        psutil + /proc/net/tcp for every supervised process (scrape.interval)
- `logs:local`           new lines of every file in the run dir's logs/     (scrape.interval)
- `service:<svc>-<host>` each chat service's /metrics (edge, clue, exchange on every chat host;
                         clue's /v1/stats/keys too), figures in controlplane/service_figures.py
                                                                             (scrape.interval)

Each source builds its collector's Target (collectors/<source>.py `target_for`) and calls
`collect(target, previous)`; the figures and the store are this package's. Each scrape is bounded
by `timeout` (socket timeouts in the collectors, carried on the target), at most the interval.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from cluster.durations import seconds
from cluster.rundir import RunDir
from collectors import clients, haproxy, logs, process, redact, redis, services
from collectors.base import Observation
from controlplane.sources import figures, names, service_figures
from controlplane.store import Store

LOG_EXAMPLES = 3
LOG_FIRST_READ = 1 << 20     # on first sight of a log file, read only its last MiB
LOG_MAX_READ = 8 << 20       # of one log file per scrape; the rest waits for the next


@dataclass
class Source:
    id: str                      # "redis:shard2"
    kind: str                    # haproxy | redis | clients | process | logs | service
    target: str
    interval_s: float
    timeout_s: float
    scrape: Callable[[], Observation]


def build(cf, run: RunDir, store: Store) -> list[Source]:
    """One Source per target. Targets are built at each scrape from the cluster file and run dir,
    as cheap as reading two fields, so a target that cannot be named (a socket path too long)
    fails its own job, not the control plane's start."""
    scrape = cf.controlplane.scrape
    interval, slow = seconds(scrape.interval), seconds(scrape.client_list_interval)
    # The process source and every service source run on the same tick: one socket table read
    # (collectors.process.tcp_sockets) serves them all, however the tick's threads interleave.
    sockets_age = min(1.0, interval / 2)
    out: list[Source] = []

    def add(kind: str, target: str, every: float, fn: Callable[[float], Observation]) -> None:
        # CLIENT LIST of 10k+ clients is megabytes: it gets longer than the fast sources.
        t = min(every, 10.0 if kind == "clients" else 5.0)
        out.append(Source(f"{kind}:{target}", kind, target, every, t, lambda: fn(t)))

    for host, _cluster in cf.chat_hosts():
        add("haproxy", host, interval,
            lambda t, h=host: _haproxy(store, haproxy.target_for(run, h, timeout=t)))
    for shard in cf.redis.shards:
        add("redis", shard.name, interval,
            lambda t, s=shard.name: _redis(store, redis.target_for(cf, s, timeout=t)))
        add("clients", shard.name, slow,
            lambda t, s=shard.name: _clients(store, clients.target_for(cf, s, timeout=t)))
    add("process", "local", interval,
        lambda t: _process(store, process.target_for(run, name="local", sockets_max_age=sockets_age)))
    tail = LogTail(run)
    add("logs", "local", interval, lambda t: tail.scrape(store))
    for host, _cluster in cf.chat_hosts():
        for service in services.SERVICES:
            add("service", f"{service}-{host}", interval,
                lambda t, h=host, s=service: _service(
                    store, services.target_for(cf, h, s, timeout=t, run=run, sockets_max_age=sockets_age)))
    return out


def _previous(store: Store, source: str, target: str) -> Observation | None:
    prev = store.latest(source, target)
    return prev.obs if prev else None


def _service(store: Store, target: services.Target) -> Observation:
    obs = services.collect(target)
    before = _previous(store, "service", obs.target)
    store.put(obs, service_figures.service_figures(obs, before), service_figures.service_detail(obs, before))
    return obs


def _haproxy(store: Store, target: haproxy.Target) -> Observation:
    obs = haproxy.collect(target)
    store.put(obs, figures.haproxy_figures(obs, _previous(store, "haproxy", target.host)))
    return obs


def _redis(store: Store, target: redis.Target) -> Observation:
    # Redacted before anything keeps it: slow-log arguments and key names may hold secrets.
    obs = redact.observation(redis.collect(target))
    before = _previous(store, "redis", target.shard)
    store.put(obs, figures.redis_figures(obs, before),
              {"calls_per_s": figures.redis_calls_per_s(obs, before)})
    return obs


def _clients(store: Store, target: clients.Target) -> Observation:
    obs = redact.observation(clients.collect(target))
    store.put(obs, figures.clients_figures(obs))
    return obs


def _process(store: Store, target: process.Target) -> Observation:
    obs = process.collect(target, previous=_previous(store, "process", "local"))
    store.put(obs, figures.process_figures(obs))
    return obs


@dataclass
class LogGroupState:
    """Running totals of one (log file, remote, kind) since the control plane started."""
    file: str
    service: str
    host: str | None
    remote: str | None
    kind: str
    total: int = 0
    examples: deque = field(default_factory=lambda: deque(maxlen=LOG_EXAMPLES))


class LogTail:
    """Counts the new lines of every `*.log` in the run dir's logs/ per (file, remote, kind),
    through a collectors.logs.Tail kept between scrapes (the same reading and parsing as
    `chatops inspect logs`).

    The rate of a group is the lines that appeared since the last scrape over the time between
    scrapes: when the control plane saw them, not the time written in them, so a replayed or
    late file does not distort "now". A file seen for the first time is read from its last MiB
    (for examples) but that read counts as history, not as a burst of rate."""

    def __init__(self, run: RunDir):
        self.tail = logs.Tail(logs.target_for(run, window_s=86400, examples=LOG_EXAMPLES,
                                              first_read=LOG_FIRST_READ, max_bytes=LOG_MAX_READ))
        self.groups: dict[tuple[str, str | None, str], LogGroupState] = {}
        self.unparsed = 0
        self.unparsed_samples: deque = deque(maxlen=5)
        self.last_at: float | None = None

    def scrape(self, store: Store) -> Observation:
        at, started = time.time(), time.perf_counter()
        try:
            reads = self.tail.read()
        except FileNotFoundError as exc:
            obs = Observation("logs", "local", at, False, time.perf_counter() - started, None, str(exc))
            store.put(obs, {"up": 0.0})
            return obs
        dt = at - self.last_at if self.last_at is not None else None
        fresh: dict[tuple, int] = {}
        errors: dict[str, str] = {}
        for read in reads:
            if read.error is not None:
                errors[read.name] = read.error
                continue
            summary = read.summary
            if summary is None or not summary.lines:
                continue
            self.unparsed += summary.unparsed
            self.unparsed_samples.extend(summary.unparsed_samples)
            stem = Path(read.name).stem
            service, _, host = stem.partition("-")
            for g in summary.groups:
                key = (stem, g.remote, g.kind)
                st = self.groups.get(key)
                if st is None:
                    st = self.groups[key] = LogGroupState(stem, service, host or None, g.remote, g.kind)
                st.total += g.count
                st.examples.extend(g.examples)
                if not read.first:
                    fresh[key] = fresh.get(key, 0) + g.count
        self.last_at = at
        f: dict[str, float | None] = {"up": 1.0, "unparsed_total": float(self.unparsed)}
        for key, st in self.groups.items():
            group = names.log_group(st.file, st.remote, st.kind)
            f[names.series(group, "per_s")] = (fresh.get(key, 0) / dt) if dt else None
            f[names.series(group, "total")] = float(st.total)
        obs = Observation("logs", "local", at, True, time.perf_counter() - started,
                          {"files": len(self.tail.followers)}, None, errors)
        store.put(obs, f, {"groups": [self._group_dict(st, fresh.get(k, 0), dt) for k, st in self.groups.items()],
                           "unparsed_total": self.unparsed, "unparsed_samples": list(self.unparsed_samples)})
        return obs

    @staticmethod
    def _group_dict(st: LogGroupState, fresh: int, dt: float | None) -> dict[str, Any]:
        return {"file": st.file, "service": st.service, "host": st.host, "remote": st.remote,
                "kind": st.kind, "total": st.total, "per_s": (fresh / dt) if dt else None,
                "examples": list(st.examples)}
