"""The detector contract: `detect(window, cf) -> list[Finding]`, a pure function.

A `Window` is what the control plane saw over the last few minutes, as plain JSON-ready data: per
(source, target) the figure series (controlplane/figures.py names), the newest observation's
`up`/`error`/`data`/`detail`. The engine builds one from the live store (`Window.from_store`);
tests load recorded ones (`Window.load`, tests/fixtures/windows/*.json), captured from real runs
with `python -m controlplane.detectors.record`.

A detector reports a subject when its condition holds now. `Finding.firing` says whether it has
held for the threshold's `hold` (the engine opens findings only then); a finding that only
meets the relaxed condition (threshold × `clear_factor`) has `firing=False`, which keeps an
open one open -- hysteresis -- and never opens a new one.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

SEVERITIES = ("info", "warning", "critical")
Point = tuple[float, float | None]


@dataclass
class Finding:
    kind: str                     # hot_shard | hot_key | leaked_clients | proxy_saturation | ...
    subject: str                  # what it is about, stable across scrapes: "shard2", "chat-testing->shard2"
    severity: str                 # info | warning | critical
    title: str                    # one line an on-call engineer reads first
    evidence: dict[str, Any]      # the figures, and example log lines under "lines"
    remediation: dict[str, Any] | None = None   # {"action", "summary", "params"}: shown as a plan
    firing: bool = True           # held for `hold`; False: only the relaxed (clearing) condition holds
    held_s: float = 0.0           # how long the condition has held, as far as the window shows
    # What the finding is about, for correlation into incidents: any of cluster, host, shard,
    # service, key, room, edge.
    about: dict[str, str] = field(default_factory=dict)
    runbook: str = ""             # runbooks/<runbook>.md; defaults to the kind

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity {self.severity!r} is not one of {', '.join(SEVERITIES)}")
        if not self.runbook:
            self.runbook = self.kind

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _plain(value: Any) -> Any:
    """Observation data as JSON-ready dicts (collector dataclasses become dicts)."""
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


@dataclass
class Window:
    now: float
    interval_s: float
    # "source:target" -> figure -> [(t, v)], oldest first
    series: dict[str, dict[str, list[Point]]] = field(default_factory=dict)
    # "source:target" -> {"up", "error", "at", "data", "detail"}
    latest: dict[str, dict[str, Any]] = field(default_factory=dict)

    # -- building and recording --

    @classmethod
    def from_store(cls, store, seconds: float, interval_s: float, now: float | None = None,
                   sources: Iterable[str] | None = None) -> "Window":
        """The last `seconds` of every (source, target) in the store (or of `sources` only)."""
        now = time.time() if now is None else now
        w = cls(now=now, interval_s=interval_s)
        wanted = set(sources) if sources else None
        for (source, target), snap in store.snapshots().items():
            if wanted and source not in wanted:
                continue
            key = f"{source}:{target}"
            o = snap.obs
            w.latest[key] = {"up": o.up, "error": o.error, "at": o.at, "data": _plain(o.data),
                             "detail": _plain(snap.detail)}
            w.series[key] = {name: store.series(source, target, name, since=now - seconds)
                             for name in store.names(source, target)}
        return w

    def to_json(self) -> str:
        return json.dumps({"now": self.now, "interval_s": self.interval_s, "series": self.series,
                           "latest": self.latest}, separators=(",", ":"), default=str)

    @classmethod
    def from_json(cls, text: str) -> "Window":
        doc = json.loads(text)
        series = {k: {n: [(float(t), v) for t, v in pts] for n, pts in figs.items()}
                  for k, figs in doc.get("series", {}).items()}
        return cls(now=float(doc["now"]), interval_s=float(doc["interval_s"]), series=series,
                   latest=doc.get("latest", {}))

    @classmethod
    def load(cls, path: str | Path) -> "Window":
        return cls.from_json(Path(path).read_text())

    # -- reading --

    def targets(self, source: str) -> list[str]:
        prefix = f"{source}:"
        return sorted(k[len(prefix):] for k in set(self.latest) | set(self.series) if k.startswith(prefix))

    def points(self, source: str, target: str, name: str, seconds: float | None = None) -> list[Point]:
        pts = self.series.get(f"{source}:{target}", {}).get(name, [])
        if seconds is not None:
            pts = [p for p in pts if p[0] >= self.now - seconds]
        return pts

    def names(self, source: str, target: str) -> list[str]:
        return sorted(self.series.get(f"{source}:{target}", {}))

    def value(self, source: str, target: str, name: str) -> float | None:
        """The newest point's value (None when unknown or absent)."""
        pts = self.points(source, target, name)
        return pts[-1][1] if pts else None

    def up(self, source: str, target: str) -> bool | None:
        return self.latest.get(f"{source}:{target}", {}).get("up")

    def data(self, source: str, target: str) -> Any:
        return self.latest.get(f"{source}:{target}", {}).get("data")

    def detail(self, source: str, target: str) -> dict[str, Any]:
        return self.latest.get(f"{source}:{target}", {}).get("detail") or {}

    def held_for(self, points: list[Point], pred: Callable[[float], bool]) -> float:
        """How long `pred` has been true of every point up to the newest: 0.0 when the newest
        point fails it (or is unknown), else the time since the oldest of the unbroken run of
        points that pass, plus one interval (a single passing sample stands for one interval)."""
        if not points or points[-1][1] is None or not pred(points[-1][1]):
            return 0.0
        start = points[-1][0]
        for t, v in reversed(points):
            if v is None or not pred(v):
                break
            start = t
        return points[-1][0] - start + self.interval_s


def num(v: Any) -> float | None:
    """A finite number, else None: a hostile or damaged window must not crash a detector."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or v in (math.inf, -math.inf):
        return None
    return float(v)


def log_groups(window: Window) -> list[dict]:
    """The logs source's groups (file, remote, kind, per_s, total, examples), well-formed ones only."""
    detail = window.detail("logs", "local")
    groups = detail.get("groups") if isinstance(detail, dict) else None
    return [g for g in groups if isinstance(g, dict)] if isinstance(groups, list) else []


def thresholds(cf) -> Any:
    return cf.controlplane.thresholds


def hold_s(cf) -> float:
    from cluster.durations import seconds
    return seconds(cf.controlplane.thresholds.hold)


def judge(window: Window, points: list[Point], threshold: float, cf, above: bool = True) -> tuple[bool, bool, float]:
    """(firing, sustained, held_s) for a figure against a threshold, with hysteresis: firing
    when it has been beyond `threshold` for `hold`; sustained when it is beyond threshold ×
    clear_factor now (the relaxed condition that keeps an open finding open)."""
    factor = cf.controlplane.thresholds.clear_factor
    if above:
        held = window.held_for(points, lambda v: v >= threshold)
        relaxed = window.held_for(points, lambda v: v >= threshold * factor)
    else:
        held = window.held_for(points, lambda v: v <= threshold)
        relaxed = window.held_for(points, lambda v: v <= threshold / factor)
    return held >= hold_s(cf), relaxed > 0, held
