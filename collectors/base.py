"""The collector contract: `collect(target, previous=None) -> Observation`, for every source.

- A **Target** is a small frozen dataclass, one per collector module (`haproxy.Target`,
  `redis.Target`, `clients.Target`, `services.Target`, `process.Target`, `logs.Target`), that says
  what to scrape: addresses, socket paths, file paths, names, and the options the scrape needs
  (its `timeout`, `hotkeys_max`, `idle_after`...). It holds no connection and no cluster file.
  `target_for(...)` in the same module builds one from the cluster file or the run directory;
  it is the only place a collector reads `cluster.*`, and it raises when the name is unknown.
- **previous** is the last Observation of the same target, for a collector that measures change
  between two scrapes (process: CPU % from the cpu_times delta; no sleeping inside a scrape).
  The others accept and ignore it. A source read as a stream keeps its position in an object
  instead: `logs.Tail(target)` follows every log file across calls; `logs.collect(target)` is a
  Tail read once, from the start.
- An **Observation** is what one source said at one moment, plus the collector's own health:
  whether the source answered (`up`), how long the scrape took, and the error when it did not.
  `collect` returns a down Observation for a source that cannot be reached; it does not raise for
  that. A source made of several sections (Redis INFO, CONFIG, SLOWLOG...; HAProxy stat, info,
  proc) reports a failing section in `section_errors` and still returns the others: one bad
  section never costs the whole scrape.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass(frozen=True)
class Observation:
    source: str                  # haproxy | redis | clients | service | process | logs
    target: str                  # what was scraped: a chat host, a shard, a log file...
    at: float                    # wall-clock time the scrape started (time.time())
    up: bool                     # the source answered at all
    duration_s: float            # how long the scrape took
    data: Any = None             # the source's typed record; None when nothing could be read
    error: str | None = None     # why the source is down
    section_errors: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        from dataclasses import asdict, is_dataclass
        data = asdict(self.data) if is_dataclass(self.data) else self.data
        return {"source": self.source, "target": self.target, "at": self.at, "up": self.up,
                "duration_s": round(self.duration_s, 6), "error": self.error,
                "section_errors": self.section_errors, "data": data}


def observe(source: str, target: str, fetch: Callable[[], Any],
            errors: tuple[type[BaseException], ...] = (OSError,)) -> Observation:
    """Run `fetch` and wrap its result, or the error it raised, as an Observation."""
    at, started = time.time(), time.perf_counter()
    try:
        data = fetch()
    except errors as exc:
        return Observation(source, target, at, False, time.perf_counter() - started, None,
                           f"{type(exc).__name__}: {exc}")
    return Observation(source, target, at, True, time.perf_counter() - started, data)


def source_address(cf) -> str | None:
    """Where the control plane's own connections come from: its listen address on a local
    cluster, so CLIENT LIST names them `controlplane` instead of an anonymous 127.0.0.1."""
    address = cf.controlplane.listen.address
    return address if cf.profile == "local" and address.startswith("127.") else None
