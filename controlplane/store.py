"""The control plane's memory: the latest observation of every source, and recent figures as
fixed-size ring buffers.

Everything here is lost on a restart, on purpose: it is re-scraped within one interval. What must
survive (findings, incidents, the audit, the alert outbox) lives in SQLite (controlplane/database.py).

Memory bound. A series holds `points = history / its source's interval + 1` values (1,801 for
Redis INFO at the default 1 h and 2 s, 721 for CLIENT LIST at 5 s) in a fixed `array('d')` ring,
8 bytes a value (NaN stands for "unknown"); the times are kept once per target. So ~14 kB for a
series at the default interval. Figure names come from the cluster file (shards, proxies,
processes) except the per-host CLIENT LIST figures, whose hosts come from the wire: a leak from
thousands of unknown addresses could otherwise grow the store without end. So each
(source, target) holds at most MAX_SERIES_PER_TARGET series; figures past that are dropped and
counted in `dropped_series`. The default cluster (4 shards, 4 chat hosts) holds about 1,500
series, ~22 MB after an hour; the worst case is the bound times the targets.
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from array import array
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from collectors.base import Observation

MAX_SERIES_PER_TARGET = 2000


@dataclass
class Snapshot:
    """The newest scrape of one (source, target), with its figures and any JSON-ready detail."""
    obs: Observation
    figures: dict[str, float | None]
    detail: dict[str, Any] = field(default_factory=dict)
    previous: Observation | None = None     # the scrape before, for rates


class _Ring:
    """The last `cap` floats; None is kept as NaN. Preallocated, so its size never changes."""
    __slots__ = ("buf", "start", "n")

    def __init__(self, cap: int, n: int = 0):
        self.buf = array("d", [math.nan]) * cap
        self.start, self.n = 0, n          # a ring made mid-history starts with n unknowns

    def append(self, value: float | None) -> None:
        cap = len(self.buf)
        v = math.nan if value is None else float(value)
        if self.n < cap:
            self.buf[(self.start + self.n) % cap] = v
            self.n += 1
        else:
            self.buf[self.start] = v
            self.start = (self.start + 1) % cap

    def values(self) -> list[float | None]:
        end = self.start + self.n
        raw = self.buf[self.start:end] if end <= len(self.buf) else \
            self.buf[self.start:] + self.buf[:end - len(self.buf)]
        return [None if math.isnan(v) else v for v in raw]

    def raw_tail(self, k: int) -> array:
        """The newest `k` values, oldest first, as floats (NaN for unknown): a C-speed copy."""
        k = max(0, min(k, self.n))
        cap = len(self.buf)
        b = (self.start + self.n - k) % cap
        return self.buf[b:b + k] if b + k <= cap else self.buf[b:] + self.buf[:b + k - cap]


class SeriesWindow(Mapping):
    """name -> [(time, value or None)] of one target over a window, each series copied out of the
    store and converted to Python tuples on first access only: the detection engine builds a
    window of every series of every target each tick and its detectors read a small part of it.

    A lazy window remembers how many scrapes its target had taken (`puts`); a series read later
    is the same points, found that many scrapes further back in its ring, read under the store's
    lock. A ring holds far more points than a window (721 against 151 at the defaults), so a
    window stays readable for (ring - window) scrapes, ~19 minutes; past that it raises rather
    than return other points. An eager window (`raw`) holds its copies already."""

    __slots__ = ("_times", "_names", "_raw", "_done", "_lock", "_target", "_puts")

    def __init__(self, times: list[float], raw: dict[str, array] | None = None, *, names=None,
                 lock=None, target: "_Target | None" = None, puts: int = 0):
        self._times, self._raw, self._done = times, raw if raw is not None else {}, {}
        self._names = frozenset(self._raw) if names is None else frozenset(names)
        self._lock, self._target, self._puts = lock, target, puts

    def _raw_of(self, name: str) -> array:
        raw = self._raw.get(name)
        if raw is not None:
            return raw
        if name not in self._names or self._target is None:
            raise KeyError(name)
        k = len(self._times)
        with self._lock:
            ring = self._target.values[name]
            later = self._target.puts - self._puts       # scrapes since the window was taken
            if later + k > len(ring.buf):
                raise LookupError(f"series {name!r}: this window is older than its ring holds "
                                  f"({later} scrapes since, room for {len(ring.buf) - k})")
            raw = ring.raw_tail(k + later)[:k]
        self._raw[name] = raw
        return raw

    def __getitem__(self, name: str) -> list[tuple[float, float | None]]:
        got = self._done.get(name)
        if got is None:
            raw = self._raw_of(name)
            total = sum(raw)        # NaN (an unknown point) makes it NaN: the rare slow path
            got = list(zip(self._times, raw)) if total == total else \
                [(t, None if v != v else v) for t, v in zip(self._times, raw)]
            self._done[name] = got
        return got

    def get(self, name: str, default=None):
        return self[name] if name in self._names else default

    def __deepcopy__(self, memo: dict) -> "SeriesWindow":
        """An eager copy: every series copied out now, nothing shared with the store."""
        return SeriesWindow(list(self._times), {name: array("d", self._raw_of(name)) for name in self._names})

    def newest(self, name: str) -> tuple[float, float | None] | None:
        """The newest point of `name`, None when it has none, without copying the series."""
        if name not in self._names or not self._times:
            return None
        got = self._done.get(name)
        if got is not None:
            return got[-1]
        raw = self._raw.get(name)
        if raw is not None:
            v = raw[-1]
        else:
            with self._lock:
                ring = self._target.values[name]
                later = self._target.puts - self._puts
                if later >= ring.n:
                    raise LookupError(f"series {name!r}: this window is older than its ring holds")
                v = ring.raw_tail(later + 1)[0]
        return self._times[-1], None if v != v else v

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def __iter__(self):
        return iter(sorted(self._names))

    def __len__(self) -> int:
        return len(self._names)


@dataclass
class _Target:
    times: _Ring                 # one timestamp per scrape, shared by the target's series
    values: dict[str, _Ring]     # figure name -> values aligned with `times`
    puts: int = 0                # scrapes recorded: each appended one value to every ring


class Store:
    def __init__(self, points: int = 721, points_by_source: dict[str, int] | None = None):
        if points < 2 or any(p < 2 for p in (points_by_source or {}).values()):
            raise ValueError("a series needs room for at least 2 points")
        self.points = points
        self.points_by_source = dict(points_by_source or {})
        self._lock = threading.Lock()
        self._latest: dict[tuple[str, str], Snapshot] = {}
        self._series: dict[tuple[str, str], _Target] = {}
        self.dropped_series = 0

    @classmethod
    def for_cluster(cls, cf) -> "Store":
        """Room for `scrape.history` at each source's own interval."""
        from cluster.durations import seconds
        scrape = cf.controlplane.scrape
        history = seconds(scrape.history)

        def room(interval: str) -> int:
            return max(2, int(history / seconds(interval)) + 1)
        return cls(points=room(scrape.interval), points_by_source={"clients": room(scrape.client_list_interval)})

    def put(self, obs: Observation, figures: dict[str, float | None],
            detail: dict[str, Any] | None = None) -> Snapshot:
        """Record one scrape: it becomes the latest of its (source, target) and every series of
        that target gets a point at the scrape's time -- None for a figure this scrape lacks, so
        a vanished proxy or host shows as a gap rather than a frozen line."""
        key = (obs.source, obs.target)
        with self._lock:
            old = self._latest.get(key)
            snap = Snapshot(obs, figures, detail or {}, old.obs if old else None)
            self._latest[key] = snap
            target = self._series.get(key)
            cap = self.points_by_source.get(obs.source, self.points)
            if target is None:
                target = self._series[key] = _Target(_Ring(cap), {})
            target.times.append(obs.at)
            target.puts += 1
            n = target.times.n
            for name, ring in target.values.items():
                ring.append(figures.get(name))
            for name, value in figures.items():
                if name in target.values:
                    continue
                if len(target.values) >= MAX_SERIES_PER_TARGET:
                    self.dropped_series += 1
                    continue
                ring = target.values[name] = _Ring(cap, n - 1)
                ring.append(value)
        return snap

    def latest(self, source: str, target: str) -> Snapshot | None:
        with self._lock:
            return self._latest.get((source, target))

    def snapshots(self) -> dict[tuple[str, str], Snapshot]:
        """(source, target) -> newest snapshot, for every source."""
        with self._lock:
            return dict(self._latest)

    def latest_of(self, source: str) -> dict[str, Snapshot]:
        """target -> newest snapshot, for one source."""
        with self._lock:
            return {t: s for (src, t), s in self._latest.items() if src == source}

    def series(self, source: str, target: str, name: str,
               since: float | None = None) -> list[tuple[float, float | None]]:
        """[(time, value or None)] oldest first; empty for an unknown series."""
        with self._lock:
            t = self._series.get((source, target))
            ring = t.values.get(name) if t else None
            points = list(zip(t.times.values(), ring.values())) if ring is not None else []
        if since is not None:
            points = [p for p in points if p[0] >= since]
        return points

    def window(self, source: str, target: str, since: float) -> SeriesWindow:
        """Every series of one target since `since`, name -> [(time, value or None)], names
        sorted: what {n: series(source, target, n, since) for n in names(...)} gives, but each
        series is copied out and converted only when read."""
        with self._lock:
            t = self._series.get((source, target))
            if t is None:
                return SeriesWindow([])
            n = t.times.n
            times = t.times.raw_tail(n)
            i = bisect.bisect_left(times, since)
            # Scrape times only grow, so the window is a suffix -- unless the clock stepped back:
            # then (min/max over the arrays in C say so) take exactly the points at or after `since`.
            if (i == n or min(times[i:]) >= since) and (i == 0 or max(times[:i]) < since):
                return SeriesWindow(list(times[i:]), names=t.values, lock=self._lock, target=t, puts=t.puts)
            keep = [j for j, at in enumerate(times) if at >= since]
            raw = {}
            for name, ring in t.values.items():
                vals = ring.raw_tail(n)
                raw[name] = array("d", [vals[j] for j in keep])
            return SeriesWindow([times[j] for j in keep], raw)

    def names(self, source: str, target: str) -> list[str]:
        with self._lock:
            t = self._series.get((source, target))
            return sorted(t.values) if t else []

    def size(self) -> dict[str, int]:
        with self._lock:
            n = sum(len(t.values) for t in self._series.values())
            pts = sum(t.times.n * len(t.values) for t in self._series.values())
        return {"series": n, "points": pts, "points_per_series": self.points,
                "dropped_series": self.dropped_series}


def age_s(snap: Snapshot | None, now: float | None = None) -> float | None:
    return None if snap is None else (time.time() if now is None else now) - snap.obs.at
