"""The detection engine: findings open only once held, stay open in the hysteresis band, resolve
when their detector stops reporting them, survive a restart, and one broken detector blinds
nobody else. Plus the Window's hold arithmetic."""

from __future__ import annotations

import pytest

from cluster import spec
from collectors.base import Observation
from controlplane.database import Database
from controlplane.detectors.base import Finding, Window, judge, quiet
from controlplane.detectors.engine import Engine, discover
from controlplane.store import Store
from tests.conftest import small_cluster


@pytest.fixture
def cf():
    doc = small_cluster("127.0.0")
    doc["controlplane"]["thresholds"] = {"hold": "3s", "clear_factor": 0.8}
    return spec.ClusterFile.model_validate(doc)


def _window(values: list[float | None], interval: float = 1.0) -> Window:
    pts = [(100.0 + i * interval, v) for i, v in enumerate(values)]
    return Window(now=pts[-1][0], interval_s=interval, series={"redis:shard0": {"cpu_percent": pts}})


def test_held_for_counts_the_unbroken_run_up_to_now():
    w = _window([90, 10, 85, 90, 95])
    pts = w.points("redis", "shard0", "cpu_percent")
    assert w.held_for(pts, lambda v: v >= 80) == 3.0          # 102..104 plus one interval
    assert w.held_for(pts, lambda v: v >= 99) == 0.0
    assert w.held_for(_window([90, None, 90]).points("redis", "shard0", "cpu_percent"), lambda v: v > 0) == 1.0
    assert w.held_for([], lambda v: True) == 0.0


def test_judge_fires_after_hold_and_sustains_in_the_band(cf):
    def j(values):
        w = _window(values)
        return judge(w, w.points("redis", "shard0", "cpu_percent"), 80.0, cf)
    assert j([85, 85]) == (False, True, 2.0)                  # not held for 3 s yet
    assert j([85, 85, 85]) == (True, True, 3.0)
    assert j([85, 85, 85, 70]) == (False, True, 0.0)          # below 80 but above 64: the band
    assert j([85, 85, 85, 60]) == (False, False, 0.0)         # below 80 x 0.8: cleared
    w = _window([5, 5, 5])
    assert judge(w, w.points("redis", "shard0", "cpu_percent"), 10.0, cf, above=False)[0]


@pytest.mark.parametrize("values", [[85, 85, 60], [85, 85, 70], [85, None], [90, 95], [1, 1, 1], [0, 5],
                                    [5, 0]])
@pytest.mark.parametrize("threshold, above", [(80.0, True), (10.0, False), (0.0, False), (1.0, True)])
def test_a_quiet_newest_point_is_what_judge_says_of_the_whole_series(cf, values, threshold, above):
    w = _window(values)
    whole = judge(w, w.points("redis", "shard0", "cpu_percent"), threshold, cf, above=above)
    if quiet(w, "redis", "shard0", "cpu_percent", threshold, cf, above=above):
        assert whole == (False, False, 0.0)
    else:
        assert whole[1]                      # not quiet: at least the relaxed condition holds
    assert w.newest("redis", "shard0", "cpu_percent") == (100.0 + len(values) - 1, values[-1])


def test_every_detector_module_is_discovered():
    found = discover()
    assert all(callable(fn) for fn in found.values())
    assert all(kind.replace("_", "").isalpha() for kind in found)


class Scripted:
    """A detector whose next answers are given by the test: what a real one would report."""

    def __init__(self):
        self.next: list[Finding] = []
        self.fail = False

    def __call__(self, window, cf):
        if self.fail:
            raise RuntimeError("detector bug")
        return list(self.next)


def _finding(subject: str, firing: bool = True) -> Finding:
    return Finding("hot_shard", subject, "warning", f"{subject} is hot", {"cpu_percent": 97.0},
                   firing=firing, about={"shard": subject})


def test_lifecycle_open_sustain_resolve_and_restart(cf, tmp_path):
    db = Database(tmp_path / "cp.sqlite3")
    store = Store(points=10)
    store.put(Observation("redis", "shard0", 100.0, True, 0.01, {}), {"cpu_percent": 97.0})
    engine = Engine(cf, store, db, 1.0)
    scripted = Scripted()
    engine.detectors = {"hot_shard": scripted}

    scripted.next = [_finding("shard0", firing=False)]
    r = engine.run(101.0)
    assert r.opened == [] and db.findings(open_only=True) == []          # the band never opens one

    scripted.next = [_finding("shard0")]
    r = engine.run(102.0)
    assert [f["subject"] for f in r.opened] == ["shard0"]
    row = db.findings(open_only=True)[0]
    assert (row["title"], row["about"], row["evidence"]) == ("shard0 is hot", {"shard": "shard0"}, {"cpu_percent": 97.0})

    scripted.next = [_finding("shard0", firing=False)]               # hysteresis keeps it open
    assert engine.run(103.0).resolved == [] and len(db.findings(open_only=True)) == 1

    scripted.fail = True                                             # a broken detector changes nothing
    r = engine.run(104.0)
    assert r.errors["hot_shard"].startswith("RuntimeError") and len(db.findings(open_only=True)) == 1
    scripted.fail = False

    again = Engine(cf, store, db, 1.0)                               # a restart carries on
    again.detectors = {"hot_shard": scripted}
    scripted.next = [_finding("shard0")]
    assert again.run(105.0).opened == []
    scripted.next = []
    r = again.run(106.0)
    assert [f["subject"] for f in r.resolved] == ["shard0"] and db.findings(open_only=True) == []
    closed = db.findings()[0]
    assert closed["state"] == "resolved" and closed["resolved_at"] == 106.0
    assert closed["first_seen"] == 102.0 and closed["evidence"] == {"cpu_percent": 97.0}


def test_engine_as_a_source_reports_its_health(cf, tmp_path):
    db = Database(tmp_path / "cp.sqlite3")
    store = Store(points=10)
    engine = Engine(cf, store, db, 1.0)
    broken = Scripted()
    broken.fail = True
    engine.detectors = {"hot_shard": broken}
    obs = engine.scrape()
    assert obs.up and obs.section_errors == {"detector hot_shard": "RuntimeError: detector bug"}
    assert store.latest("detect", "all").figures["detector_errors"] == 1.0


def test_the_windows_plain_data_is_what_asdict_gives_on_recorded_collector_output():
    """base._as_dict skips asdict's deepcopy of every leaf; on real collector data (recorded
    HAProxy stats, a service's /metrics, CLIENT LIST; the fixtures' READMEs say how they were
    captured) and their hostile variants it gives exactly asdict's result."""
    from dataclasses import asdict
    from pathlib import Path

    from collectors import clients, haproxy, services
    from controlplane.detectors.base import _as_dict
    fixtures = Path(__file__).resolve().parents[2] / "fixtures"
    data = []
    for name in ("show_stat.csv", "show_stat_evil.csv", "stats_page.csv"):
        data.append(haproxy.parse_stat_csv((fixtures / "haproxy" / name).read_text(errors="replace")))
    data.append(haproxy.parse_servers_state((fixtures / "haproxy" / "show_servers_state.txt").read_text()))
    for name in ("clue_metrics.txt", "exchange_metrics_evil.txt"):
        parsed = services.parse_metrics((fixtures / "services" / name).read_text(errors="replace"))
        data.append(services.ServiceData("clue", "chat1", "http://x/metrics", parsed.samples, parsed.unparsed,
                                         parsed.unparsed_count, {"ops": {"a": 1}}, {"127.0.0.1:1": 2}))
    for name in ("client_list.txt", "client_list_evil.txt"):
        data.append(clients.parse_client_list((fixtures / "redis" / name).read_bytes()))
    compared = 0
    for d in data:
        try:
            want = asdict(d)
        except TypeError:           # not a dataclass (ClientList): _plain never calls either on it
            continue
        assert _as_dict(d) == want and type(_as_dict(d)) is type(want)
        compared += 1
    assert compared >= 6


def test_a_smoothed_signal_cut_short_at_a_quiet_newest_point_ends_as_the_whole_one():
    import random

    from controlplane.detectors.ingestion_timeouts import smooth
    rng = random.Random(3)
    for _ in range(2000):
        t, pts = 0.0, []
        for _ in range(rng.randint(0, 25)):
            t += rng.choice([0.5, 2.0, 2.0, 3.0])
            pts.append((t, rng.choice([None, 0.0, 0.0, 0.2, 1.0, 5.0, float("nan")])))
        span, floor = rng.choice([1.0, 4.0, 10.0]), rng.choice([0.0, 0.5, 1.0])
        whole, quick = smooth(pts, span), smooth(pts, span, floor)
        if quick != whole:            # cut short: only when the newest point settles judge
            assert quick == whole[-1:] and (quick[0][1] is None or quick[0][1] < floor)


def test_recent_restarts_is_the_span_minimum_walk():
    import random

    from controlplane.detectors.unresponsive_service import recent_restarts
    rng = random.Random(5)

    def reference(points, span):        # the definition: each point's span, walked in full
        out, start = [], 0
        for i, (t, v) in enumerate(points):
            while points[start][0] < t - span:
                start += 1
            known = [x for _, x in points[start:i + 1] if x is not None]
            out.append((t, v - min(known) if v is not None else None))
        return out
    for _ in range(2000):
        t, pts = 0.0, []
        for _ in range(rng.randint(0, 30)):
            t += rng.choice([0.5, 2.0, 7.0])
            pts.append((t, rng.choice([None, 0.0, 1.0, 2.0, 3.0, 5.0])))
        span = rng.choice([0, 3, 10, 60])
        assert recent_restarts(pts, span) == reference(pts, span)
