"""The collector contract: `collect(target) -> Observation`.

An Observation is what one source said at one moment, plus the collector's own health: whether
the source answered (`up`), how long the scrape took, and the error when it did not. A source
made of several sections (Redis INFO, CONFIG, SLOWLOG...) reports a failing section in
`section_errors` and still returns the others: one bad section never costs the whole scrape.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass(frozen=True)
class Observation:
    source: str                  # haproxy | redis | clients | logs | process
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
