"""The in-memory store: ring buffers with gaps, the series bound, points per source. The figures
it keeps are tested in tests/controlplane/sources/test_figures.py."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from cluster import clusterfile, spec
from collectors.base import Observation
from controlplane import store
from controlplane.store import Store

FIX = Path(__file__).resolve().parent.parent / "fixtures"


def obs(source: str, target: str, at: float, up: bool = True, data=None) -> Observation:
    return Observation(source, target, at, up, 0.01, data, None if up else "ConnectionRefusedError: x")


def test_ring_buffer_keeps_the_last_points_with_gaps():
    s = Store(points=4)
    for i in range(6):
        f = {"a": float(i)}
        if i in (2, 4, 5):
            f["b"] = 10.0 + i
        s.put(obs("redis", "shard0", 100 + i), f)
    assert s.series("redis", "shard0", "a") == [(102, 2.0), (103, 3.0), (104, 4.0), (105, 5.0)]
    # b appeared at 102, vanished at 103 (a gap, not a repeat of the last value), came back.
    assert s.series("redis", "shard0", "b") == [(102, 12.0), (103, None), (104, 14.0), (105, 15.0)]
    assert s.series("redis", "shard0", "b", since=104) == [(104, 14.0), (105, 15.0)]
    assert s.series("redis", "shard0", "nope") == [] and s.series("redis", "other", "a") == []
    assert s.latest("redis", "shard0").figures == {"a": 5.0, "b": 15.0}
    assert s.latest("redis", "shard0").previous.at == 104
    assert set(s.latest_of("redis")) == {"shard0"}
    assert s.size() == {"series": 2, "points": 8, "points_per_series": 4, "dropped_series": 0}


@pytest.mark.parametrize("puts", [3, 5, 11])          # not full, full, wrapped round the ring twice
def test_window_is_every_series_since(puts):
    s = Store(points=5)
    for i in range(puts):
        s.put(obs("redis", "shard0", 100 + i), {"a": float(i), **({"b": 1.0} if i % 3 else {})})
    for since in (0, 100 + puts - 2, 100 + puts - 1, 10**9):
        want = {n: s.series("redis", "shard0", n, since=since) for n in s.names("redis", "shard0")}
        assert s.window("redis", "shard0", since) == want
    assert s.window("redis", "other", 0) == {}


def test_a_window_read_after_later_scrapes_holds_its_own_points():
    s = Store(points=6)
    for i in range(4):
        s.put(obs("redis", "shard0", 100 + i), {"a": float(i)})
    w = s.window("redis", "shard0", 102)           # nothing copied yet
    want = [(102, 2.0), (103, 3.0)]
    for i in range(4, 8):                          # the ring wraps; the window's points stay
        s.put(obs("redis", "shard0", 100 + i), {"a": float(i), "b": 1.0})
    assert "b" not in w and list(w) == ["a"]        # a series born later is not in it
    assert w.newest("a") == (103, 3.0) and w.newest("b") is None
    assert copy.deepcopy(w) == {"a": want}               # copied out: nothing shared with the store
    assert w["a"] == want and w.get("a") == want and w.get("b") is None
    old = s.window("redis", "shard0", 102)
    for i in range(8, 14):                         # more scrapes than the ring has room for
        s.put(obs("redis", "shard0", 100 + i), {"a": float(i)})
    with pytest.raises(LookupError, match="older than its ring holds"):
        old["a"]


def test_window_after_the_clock_went_back():
    s = Store(points=6)
    for at in (100, 101, 99, 102):            # a wall-clock step back: times are not a suffix
        s.put(obs("redis", "shard0", at), {"a": float(at)})
    assert s.window("redis", "shard0", 100) == {"a": s.series("redis", "shard0", "a", since=100)}
    assert s.window("redis", "shard0", 100)["a"] == [(100, 100.0), (101, 101.0), (102, 102.0)]


def test_series_per_target_are_bounded(monkeypatch):
    monkeypatch.setattr(store, "MAX_SERIES_PER_TARGET", 10)
    s = Store(points=3)
    # A leak from many unknown addresses: every scrape brings new per-host figures.
    for i in range(5):
        s.put(obs("clients", "shard0", i), {f"host:127.9.{i}.{j}:count": 1.0 for j in range(4)})
    assert len(s.names("clients", "shard0")) == 10
    assert s.dropped_series == 10
    with pytest.raises(ValueError):
        Store(points=1)


def test_points_follow_the_cluster_file():
    """Each source keeps `history` at its own interval: CLIENT LIST's slower one needs fewer."""
    doc = clusterfile.load(None).spec.model_dump()
    doc["controlplane"]["scrape"] = {"interval": "5s", "client_list_interval": "30s", "history": "1h"}
    s = Store.for_cluster(spec.ClusterFile.model_validate(doc))
    assert (s.points, s.points_by_source) == (721, {"clients": 121})
    doc["controlplane"]["scrape"] = {"interval": "10s", "client_list_interval": "2s", "history": "10m"}
    s = Store.for_cluster(spec.ClusterFile.model_validate(doc))
    assert (s.points, s.points_by_source) == (61, {"clients": 301})
    for i in range(400):
        s.put(obs("clients", "shard0", float(i)), {"total": float(i)})
        s.put(obs("redis", "shard0", float(i)), {"ops_per_s": float(i)})
    assert len(s.series("clients", "shard0", "total")) == 301
    assert s.series("redis", "shard0", "ops_per_s")[0] == (339.0, 339.0)
