"""The detector contract: a module with `KIND` and `detect(window, cf) -> list[Finding]`, a pure
function, plus what it declares about its findings (`Detector` below).

A `Window` is what the control plane saw over the last few minutes, as plain JSON-ready data: per
(source, target) the figure series (controlplane/sources/figures.py names), the newest
observation's `up`/`error`/`data`/`detail`. The engine builds one from the live store
(`Window.from_store`); tests load recorded ones (`Window.load`, tests/fixtures/windows/*.json),
captured from real runs by tests/fixtures/windows/capture_shards.py and capture_services.py.

A detector reports a subject when its condition holds now. `Finding.firing` says whether it has
held for the threshold's `hold` (the engine opens findings only then); a finding that only
meets the relaxed condition (threshold × `clear_factor`) has `firing=False`, which keeps an
open one open -- hysteresis -- and never opens a new one.

Besides detecting, a module answers, for one stored finding of its kind (a plain dict, the row of
`Database.findings()`), what the incidents and the dashboard ask; each answer is a module-level
function of that name, and one it leaves out takes `Detector`'s default:

    layer(f)    -> int           where on the request path (USERS .. LOAD)          default PROXY
    shard(f)    -> str | None    the shard it is about                              about["shard"]
    host(f)     -> str | None    the host it is about                               about["host"] or ["edge"]
    label(f)    -> str           a short name for its link of the chain             its title
    cause(f)    -> str           said as a root cause                               its label
    charts(f)   -> [Chart]       store series to draw around its incident           its shard's ops/s, clients
    serves(f)   -> Serves|None   the upstream layer of its own cluster it explains  None
    reaches(f)  -> str | None    why any shard may explain it when it names none    None
    busy(f)     -> bool          it is about the shard's work (ops, CPU)            False
    idle(f)     -> bool          what it found does no work: never explains a busy  False
                                 finding (idle connections fill a shard, never heat it)

So a new detector needs only `KIND` and `detect`; incidents.py and the read model hold no
per-kind branches.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import time
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple

from controlplane.sources import names
from controlplane.store import SeriesWindow

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
    # The title's headline figure, higher is worse (idle connections, heat, errors/s). An open
    # finding keeps the title of its worst pass, so a leak being cleaned up does not end up
    # reading "0 idle connections"; the newest title is kept beside it as `live_title`.
    # None: every pass's title replaces the last.
    peak: float | None = None

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity {self.severity!r} is not one of {', '.join(SEVERITIES)}")
        if not self.runbook:
            self.runbook = self.kind

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_ATOMS = (str, int, float, bool, type(None))
_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _as_dict(value: Any) -> Any:
    """dataclasses.asdict's result, built without its deepcopy of every leaf: the collectors'
    data holds strings and numbers, and copying each one was most of the engine's time on a
    tick whose snapshots had all changed (HAProxy's stat rows, every service's samples)."""
    cls = type(value)
    if cls in _ATOMS:
        return value
    names = _FIELD_NAMES.get(cls)
    if names is None and is_dataclass(value) and not isinstance(value, type):
        names = _FIELD_NAMES.setdefault(cls, tuple(f.name for f in fields(value)))
    if names is not None:
        return {n: _as_dict(getattr(value, n)) for n in names}
    if isinstance(value, tuple) and hasattr(value, "_fields"):      # a namedtuple, as asdict does
        return cls(*[_as_dict(v) for v in value])
    if isinstance(value, (list, tuple)):
        return cls(_as_dict(v) for v in value)
    if isinstance(value, dict):
        return cls((_as_dict(k), _as_dict(v)) for k, v in value.items())
    return copy.deepcopy(value)


def _plain(value: Any) -> Any:
    """Observation data as JSON-ready dicts (collector dataclasses become dicts)."""
    if is_dataclass(value) and not isinstance(value, type):
        return _as_dict(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# (id(store), source, target) -> (the snapshot, its data and detail as plain dicts). A source on a
# slower interval than detection (CLIENT LIST: 5 s) or a tick that found nothing new keeps its
# snapshot object, and asdict() of it every pass was a third of the engine's time. Detectors only
# read the window, so a pass can share the previous one's dicts; the identity check keeps a
# recycled id() from ever matching a different store's snapshot.
_PLAIN_CACHE: dict[tuple[int, str, str], tuple[Any, Any, Any]] = {}


@dataclass
class Window:
    now: float
    interval_s: float
    # "source:target" -> figure -> [(t, v)], oldest first
    series: dict[str, dict[str, list[Point]]] = field(default_factory=dict)
    # "source:target" -> {"up", "error", "at", "data", "detail"}
    latest: dict[str, dict[str, Any]] = field(default_factory=dict)
    # What a detector derived from this window that another reads too (hot_shard's heat, read by
    # hot_key as well), so a pass derives it once.
    memo: dict[Any, Any] = field(default_factory=dict, repr=False, compare=False)
    # "source:target" -> (cache key, snapshot) whose data and detail `latest` does not hold yet:
    # made plain on first read (most passes read a few of them, or one field of a few).
    _unread: dict[str, tuple[tuple, Any]] = field(default_factory=dict, repr=False, compare=False)

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
            w.latest[key] = {"up": o.up, "error": o.error, "at": o.at}
            w._unread[key] = ((id(store), source, target), snap)
            w.series[key] = store.window(source, target, now - seconds)
        return w

    def __deepcopy__(self, memo: dict) -> "Window":
        """A copy to change (tests cut a window): its own series and latest, nothing derived from
        the original (`memo`), and the same unread snapshots, which are never changed."""
        new = Window(self.now, self.interval_s, copy.deepcopy(self.series, memo), copy.deepcopy(self.latest, memo))
        new._unread = dict(self._unread)
        return new

    def _entry(self, key: str) -> dict[str, Any]:
        """latest[key], its data and detail made plain first if they were not yet."""
        unread = self._unread.pop(key, None)
        if unread is not None:
            cache_key, snap = unread
            cached = _PLAIN_CACHE.get(cache_key)
            if cached is None or cached[0] is not snap:
                cached = (snap, _plain(snap.obs.data), _plain(snap.detail))
                _PLAIN_CACHE[cache_key] = cached
            self.latest[key].update(data=cached[1], detail=cached[2])
        return self.latest.get(key, {})

    def to_json(self) -> str:
        for key in list(self._unread):
            self._entry(key)
        series = {k: dict(v) for k, v in self.series.items()}     # SeriesWindow: read every series
        return json.dumps({"now": self.now, "interval_s": self.interval_s, "series": series,
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

    def newest(self, source: str, target: str, name: str) -> Point | None:
        """The series' newest point, without reading the rest of it."""
        series = self.series.get(f"{source}:{target}", {})
        if isinstance(series, SeriesWindow):
            return series.newest(name)
        pts = series.get(name)
        return pts[-1] if pts else None

    def names(self, source: str, target: str) -> list[str]:
        return sorted(self.series.get(f"{source}:{target}", {}))

    def value(self, source: str, target: str, name: str) -> float | None:
        """The newest point's value (None when unknown or absent)."""
        pts = self.points(source, target, name)
        return pts[-1][1] if pts else None

    def up(self, source: str, target: str) -> bool | None:
        return self.latest.get(f"{source}:{target}", {}).get("up")

    def data(self, source: str, target: str, part: str | None = None) -> Any:
        """The newest data of (source, target) as plain dicts; `part`: only that field of it
        (None when it has no such field), made plain alone when the rest has not been read."""
        key = f"{source}:{target}"
        unread = self._unread.get(key)
        if part is not None and unread is not None:
            d = unread[1].obs.data
            if is_dataclass(d) and not isinstance(d, type):
                return _plain(getattr(d, part, None))
            if isinstance(d, dict):
                return _plain(d.get(part))
        d = self._entry(key).get("data")
        return d if part is None else d.get(part) if isinstance(d, dict) else None

    def detail(self, source: str, target: str) -> dict[str, Any]:
        return self._entry(f"{source}:{target}").get("detail") or {}

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
    if type(v) is float:            # nearly every call: a figure from the store
        return v if v - v == 0.0 else None      # inf - inf and NaN - NaN are NaN
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
    return _seconds(cf.controlplane.thresholds.hold)


@functools.lru_cache(maxsize=64)     # asked once per judged figure: parse each text once
def _seconds(duration: str) -> float:
    from cluster.durations import seconds
    return seconds(duration)


def floor(threshold: float, cf) -> float:
    """Below this a figure meets neither `threshold` nor its relaxed value (threshold x
    clear_factor): a newest point under it settles `judge` at (False, False, 0.0)."""
    return min(threshold, threshold * cf.controlplane.thresholds.clear_factor)


def quiet(window: Window, source: str, target: str, name: str, threshold: float, cf,
          above: bool = True) -> bool:
    """Whether the series' newest point alone settles `judge` at (False, False, 0.0): unknown, or
    within both the threshold and its relaxed value. Checked first, a healthy figure costs one
    value, not its whole series."""
    point = window.newest(source, target, name)
    v = num(point[1]) if point is not None else None
    if v is None:
        return True
    if above:
        return v < floor(threshold, cf)
    return v > max(threshold, threshold / cf.controlplane.thresholds.clear_factor)


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


# -- what a detector declares about its findings -------------------------------------------------
# Findings reach incidents.py and the read model as plain dicts (database rows), possibly written
# by an older version, so everything below reads them defensively.

# Layers of the request path, upstream (what users see) to downstream (what everything depends
# on): the order the talk's team followed by hand.
USERS, EDGE, SERVICE, PROXY, SHARD, LOAD = range(6)
LAYER_NAMES = {USERS: "users", EDGE: "edge", SERVICE: "service", PROXY: "proxy", SHARD: "shard", LOAD: "load"}

# Why a finding that names no shard may be explained by one on any shard (see `reaches`).
EVERY_SHARD = "clue reaches every shard through its host's HAProxy"

MAX_FIGURES = 6
LOG_ERROR_KINDS = ("timeout", "connection_refused", "io_timeout", "redis_error", "error", "slow_consumer")


class Serves(NamedTuple):
    """A dependency inside one cluster: findings at `layer` may be explained by this one."""
    layer: int
    because: str           # in words, for the chain: "edges send every message through clue"


@dataclass(frozen=True)
class Chart:
    """A store series to draw around an incident: `figure` of (source, target); or, with `pick`,
    every figure of (source, target) that `pick(name)` accepts, returning (unit, caption)."""
    source: str
    target: str
    figure: str = ""
    unit: str = ""
    caption: str = ""
    pick: Callable[[str], tuple[str, str] | None] | None = None


def about(f: dict) -> dict[str, str]:
    """What a finding is about, as non-empty strings."""
    a = f.get("about") or {}
    return {k: str(v) for k, v in a.items() if v not in (None, "")} if isinstance(a, dict) else {}


def named_shard(f: dict) -> str | None:
    return about(f).get("shard") or None


def named_host(f: dict) -> str | None:
    a = about(f)
    return a.get("host") or a.get("edge") or None


def service(f: dict) -> str:
    return about(f).get("service", "")


def evidence_figures(f: dict) -> dict[str, Any]:
    """The key figures of a finding's evidence: its scalar numbers and short words, at most
    MAX_FIGURES, in the detector's order."""
    out: dict[str, Any] = {}
    for k, v in (f.get("evidence") or {}).items():
        if k == "lines" or isinstance(v, (dict, list, tuple)):
            continue
        if isinstance(v, bool) or isinstance(v, (int, float)) or (isinstance(v, str) and len(v) <= 80):
            out[k] = v
        if len(out) >= MAX_FIGURES:
            break
    return out


def example_lines(f: dict, limit: int = 3) -> list[str]:
    lines = (f.get("evidence") or {}).get("lines") or []
    return [str(x)[:300] for x in lines[:limit]] if isinstance(lines, list) else []


def first_number(ev: dict, *keys: str) -> Any:
    """The first of `keys` whose evidence value is a number (not a bool)."""
    for k in keys:
        v = ev.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return v
    return None


def fmt_number(v: Any) -> str:
    """A count as people write it: 2,311; 4.20; 12.5."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if float(v).is_integer():
        return f"{int(v):,}"
    return f"{v:,.2f}" if abs(v) < 10 else f"{v:,.1f}"


def shard_charts(shard: str | None) -> list[Chart]:
    """A shard's ops/s and connected clients: what any finding on a shard is read against."""
    if not shard:
        return []
    return [Chart("redis", shard, "ops_per_s", "ops/s", f"{shard} ops/s"),
            Chart("redis", shard, "connected_clients", "", f"{shard} connected clients")]


def log_charts(f: dict) -> list[Chart]:
    """The error-line rates (logs source) of the finding's subject's log file and of
    `<service>-<host>`'s."""
    a = about(f)
    stems = {str(f.get("subject"))}
    if a.get("service") and a.get("host"):
        stems.add(f"{a['service']}-{a['host']}")

    def pick(name: str) -> tuple[str, str] | None:
        group = names.split_log_group(name)
        if group is None:
            return None
        stem, remote, kind, figure = group
        if figure == "per_s" and stem in stems and kind in LOG_ERROR_KINDS:
            return "/s", f"{stem} → {remote} {kind.replace('_', ' ')}"
        return None
    return [Chart("logs", "local", pick=pick)]


HOOKS = ("layer", "shard", "host", "label", "cause", "charts", "serves", "reaches", "busy", "idle")


class Detector:
    """One finding kind as the engine, incidents.py and the read model see it. The methods are
    the defaults; a module's own function of the same name (see HOOKS) replaces each. A kind with
    no module (a finding stored by an older version) gets the defaults and detects nothing."""

    def __init__(self, kind: str, module: Any = None):
        self.kind, self.module = kind, module
        for name in HOOKS:
            fn = getattr(module, name, None)
            if callable(fn):
                setattr(self, name, fn)

    @classmethod
    def of(cls, module: Any) -> "Detector":
        kind, detect = getattr(module, "KIND", None), getattr(module, "detect", None)
        if not isinstance(kind, str) or not kind or not callable(detect):
            raise ValueError(f"{getattr(module, '__name__', module)!r} is not a detector: "
                             "it needs KIND (a string) and detect(window, cf)")
        return cls(kind, module)

    def detect(self, window: Window, cf) -> list[Finding]:
        return self.module.detect(window, cf) if self.module is not None else []

    def layer(self, f: dict) -> int:
        return PROXY        # in the middle: linked by a shared shard or host only

    def shard(self, f: dict) -> str | None:
        return named_shard(f)

    def host(self, f: dict) -> str | None:
        return named_host(f)

    def label(self, f: dict) -> str:
        return str(f.get("title") or f"{f.get('kind')} {f.get('subject')}")

    def cause(self, f: dict) -> str:
        return self.label(f)

    def charts(self, f: dict) -> list[Chart]:
        return shard_charts(self.shard(f))

    def serves(self, f: dict) -> Serves | None:
        return None

    def reaches(self, f: dict) -> str | None:
        return None

    def busy(self, f: dict) -> bool:
        return False

    def idle(self, f: dict) -> bool:
        return False

    def __repr__(self) -> str:
        return f"Detector({self.kind!r}, {getattr(self.module, '__name__', None)!r})"
