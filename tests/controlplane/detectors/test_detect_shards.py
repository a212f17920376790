"""The shard detectors: hot_shard, hot_key, leaked_clients.

Unit tests run each detector on windows recorded from real clusters (tests/fixtures/windows/,
captured by capture_shards.py; see tests/fixtures/README.md): each has a window that must fire and
one that must not, plus a hostile window and hostile mutations that must not break them.

Live tests run one real small cluster (default traffic, hold 3 s, idle_client_after 2 s) and its
control plane, and inject the issue's faults one after another: (a) redis-benchmark drives shard0
hot over 100,000 keys, (d) redis-benchmark hammers one room's rate-limit key on its shard, (b)
2,000 idle connections through chat-testing's HAProxy. Each finding must open within 2 scrape
intervals of its condition having held for `hold`, and resolve once the fault stops.
"""

from __future__ import annotations

import copy
import socket
import subprocess
import time

import pytest

import runbooks
from chat import keys
from chat.sharding import SlotMap, key_prefix
from cluster import clusterfile, spec
from controlplane.database import Database
from controlplane.detectors import hot_key, hot_shard, leaked_clients
from controlplane.detectors.base import Window
from tests.conftest import REPO, live_controlplane, open_idle, redis_auth, require, small_cluster, wait_for

WINDOWS = REPO / "tests" / "fixtures" / "windows"
DETECTORS = (hot_shard, hot_key, leaked_clients)


def _cf(**thresholds) -> spec.ClusterFile:
    doc = small_cluster("127.0.0")
    doc["controlplane"]["thresholds"] = {"hold": "3s", **thresholds}
    doc["controlplane"]["scrape"] = {"interval": "1s", "client_list_interval": "2s"}
    return spec.ClusterFile.model_validate(doc)


def _load(name: str) -> Window:
    return Window.load(WINDOWS / name)


def _all(window: Window, cf) -> list:
    return [f for d in DETECTORS for f in d.detect(window, cf)]


def _until(window: Window, t: float) -> Window:
    """The window as it was at time t (series cut there; the newest data kept)."""
    series = {k: {n: [p for p in pts if p[0] <= t] for n, pts in figs.items()} for k, figs in window.series.items()}
    return Window(now=t, interval_s=window.interval_s, series=series, latest=copy.deepcopy(window.latest))


# -- recorded windows ------------------------------------------------------------------------

def test_quiet_window_fires_nothing():
    w = _load("shards_quiet.json")
    for cf in (_cf(), _cf(idle_client_after="2s"), spec.ClusterFile.model_validate(small_cluster("127.0.0"))):
        assert _all(w, cf) == []


def test_hot_shard_fires_on_spread_load_and_suggests_resharding():
    found = hot_shard.detect(_load("hot_shard_fire.json"), _cf())
    assert [f.subject for f in found] == ["shard0"]
    f = found[0]
    assert f.firing and f.held_s >= 3.0
    assert f.about == {"shard": "shard0", "host": "redis1"}
    assert f.severity == "warning"                     # ~75 % of a core: pipelined load, not saturated
    ev = f.evidence
    assert ev["by"] == "ops" and ev["ops_vs_peers"] > 1000
    assert set(ev["peers"]) == {"shard1"} and ev["peers"]["shard1"]["cpu_percent"]["max"] < 5
    assert ev["top_commands"][0][0] in ("set", "get")      # redis-benchmark -t set,get runs them in turn
    assert ev["resharding_helps"] is True and ev["keys"]["distinct_slots"] >= 5
    assert f.remediation["action"] == "reshard"
    assert f.remediation["params"]["shard"] == "shard0" and f.remediation["params"]["to_shard"] == "shard1"
    assert 0 < f.remediation["params"]["fraction"] <= 0.5
    assert f.runbook == "hot_shard" and (runbooks.directory() / "hot_shard.md").exists()
    # Spread load is not a hot key.
    assert hot_key.detect(_load("hot_shard_fire.json"), _cf()) == []


def test_hot_shard_holds_before_firing_and_clears_with_hysteresis():
    w = _load("hot_shard_fire.json")
    pts = w.points("redis", "shard0", "ops_per_s")
    start = next(t for t, v in pts if v and v > 10_000)
    early = hot_shard.detect(_until(w, start + 1.0), _cf())
    assert [(f.subject, f.firing) for f in early] == [("shard0", False)]    # held 2 s < hold 3 s
    assert [f.firing for f in hot_shard.detect(_until(w, start + 2.0), _cf())] == [True]
    # With a hold longer than the 15 s recorded, it is reported, never fired.
    doc = small_cluster("127.0.0")
    doc["controlplane"]["thresholds"] = {"hold": "30s"}
    longer = spec.ClusterFile.model_validate(doc)
    assert [f.firing for f in hot_shard.detect(w, longer)] == [False]
    # Hysteresis: a newest sample at 90 % of the threshold keeps it reported; at 50 % clears it.
    th = _cf().controlplane.thresholds
    for fraction, reported in ((0.9, True), (0.5, False)):
        cut = copy.deepcopy(w)
        peer = hot_shard.workload_ops(cut, "shard1")[-1][1]
        value = fraction * th.hot_shard_ops_factor * max(peer, 1.0)
        value = max(value, fraction * th.hot_shard_min_ops_per_s) + hot_shard.own_ops(cut, "shard0")
        cut.series["redis:shard0"]["ops_per_s"][-1] = (cut.now, value)
        cut.series["redis:shard0"]["cpu_percent"][-1] = (cut.now, 1.0)
        found = hot_shard.detect(cut, _cf())
        assert [(f.firing, f.subject) for f in found] == ([(False, "shard0")] if reported else [])


def test_the_control_planes_own_commands_are_not_load():
    """After a load test shard0 keeps 100,000 keys, so the collector's OBJECT FREQ of 1,000 sampled
    keys a scrape adds ~1,000 ops/s there and not on its nearly empty peer: not a hot shard."""
    w = _load("shards_quiet.json")
    w.series["redis:shard0"]["ops_per_s"] = [(t, None if v is None else v + 1000.0)
                                             for t, v in w.series["redis:shard0"]["ops_per_s"]]
    w.latest["redis:shard0"]["detail"]["calls_per_s"]["object|freq"] = 1000.0
    assert hot_shard.own_ops(w, "shard0") > 1000.0
    assert _all(w, _cf()) == []


def test_hot_key_names_the_prefix_not_the_shard():
    w = _load("hot_key_fire.json")
    found = hot_key.detect(w, _cf())
    assert [f.subject for f in found] == ["{*}.rl.u.#"]
    f = found[0]
    assert f.firing and f.about == {"shard": "shard1", "key": "{room0}.rl.u.1000"}
    assert f.evidence["prefix"] == key_prefix("{room0}.rl.u.1000") and f.evidence["share"] >= 0.5
    assert f.evidence["saturated"] is True and f.evidence["moving_slots_helps"] is False
    assert "moving slots will not help" in f.title
    assert "split" in f.remediation["summary"].lower() and "cache" in f.remediation["summary"].lower()
    # The shard is hot too, and its finding says resharding will not help and points here.
    shard = hot_shard.detect(w, _cf())
    assert [s.subject for s in shard] == ["shard1"]
    assert shard[0].evidence["resharding_helps"] is False and shard[0].remediation["action"] == "none"
    assert "hot_key" in shard[0].remediation["summary"]
    assert hot_key.detect(_load("shards_quiet.json"), _cf()) == []


def test_hot_key_needs_the_counter_to_carry_the_load():
    """A key whose LFU counter is low cannot be what makes the shard hot, however much of the
    sample it is: an old busy key is not today's hot key."""
    w = _load("hot_key_fire.json")
    for k in w.latest["redis:shard1"]["data"]["hotkeys"]["keys"]:
        if k["key"] == "{room0}.rl.u.1000":
            k["freq"] = 60
    assert hot_key.detect(w, _cf()) == []


def test_leaked_clients_names_host_cluster_and_count():
    w = _load("leaked_clients_fire.json")
    found = leaked_clients.detect(w, _cf(idle_client_after="2s"))
    assert [f.subject for f in found] == ["chat-testing->shard1"]
    f = found[0]
    assert f.firing and f.about == {"host": "chat-testing", "shard": "shard1", "cluster": "testing"}
    assert "chat-testing (testing cluster)" in f.title and "2,001 idle" in f.title
    ev = f.evidence
    assert ev["idle"] >= 2000 and ev["count"] >= 2000 and ev["cluster"] == "testing"
    assert ev["timeout"] == 0 and ev["timeout_zero"] is True and "timeout 0" in f.title
    assert f.remediation == {"action": "kill_clients", "summary": f.remediation["summary"],
                             "params": {"shard": "shard1", "host": "chat-testing", "idle_over_s": 2.0}}
    assert "timeout" in f.remediation["summary"]
    # Before any of them counts as idle, the count's growth without matching commands names the leak.
    for i, (t, _) in enumerate(w.series["clients:shard1"]["host:chat-testing:idle"]):
        w.series["clients:shard1"]["host:chat-testing:idle"][i] = (t, 0.0)
    for h in w.latest["clients:shard1"]["data"]["by_host"]:
        h["idle_over"] = 0
    grown = leaked_clients.detect(w, _cf())
    assert [(g.subject, g.firing) for g in grown] == [("chat-testing->shard1", True)]
    assert grown[0].evidence["growth"] >= 2000 and grown[0].evidence["idle"] == 0
    assert "opened 2,001 connections to shard1 that do no work" in grown[0].title
    # A busy shard hides the growth from the shard's ops/s (a hot room adds thousands while the leak
    # grows); the leak's connections, unused since they connected, still name it.
    ops = w.series["redis:shard1"]["ops_per_s"]
    ops[0] = (ops[0][0], 100.0)                              # before the leak began
    for i in range(len(ops) - 5, len(ops)):
        ops[i] = (ops[i][0], ops[i][1] + 3000.0)             # the room's ramp, while it grows
    assert leaked_clients.detect(w, _cf()) == [], "the busy shard should hide the growth without `unused`"
    unused = [(t, v) for t, v in w.series["clients:shard1"]["host:chat-testing:count"]]
    w.series["clients:shard1"]["host:chat-testing:unused"] = unused
    busy = leaked_clients.detect(w, _cf())
    assert [(g.subject, g.firing) for g in busy] == [("chat-testing->shard1", True)]
    # Other hosts, and the quiet window, are not reported.
    assert leaked_clients.detect(_load("shards_quiet.json"), _cf(idle_client_after="2s")) == []


def test_a_leak_from_a_host_that_never_talked_to_the_shard_is_growth():
    """In the default cluster chat-testing's clue has no connection to shard2 until it needs one:
    before the leak the host is absent from CLIENT LIST (no series value), which is 0, not unknown."""
    w = _load("leaked_clients_fire.json")
    series = w.series["clients:shard1"]
    counts = series["host:chat-testing:count"]
    for i, (t, v) in enumerate(counts):
        if v is not None and v < 100:
            counts[i] = (t, None)               # absent from the CLIENT LIST read at t
    assert any(v is None for _, v in counts) and counts[-1][1] >= 2000
    for i, (t, _) in enumerate(series["host:chat-testing:idle"]):
        series["host:chat-testing:idle"][i] = (t, 0.0)
    for h in w.latest["clients:shard1"]["data"]["by_host"]:
        h["idle_over"] = 0
    grown = leaked_clients.detect(w, _cf())
    assert [(g.subject, g.firing) for g in grown] == [("chat-testing->shard1", True)]
    assert grown[0].evidence["growth"] >= 2000


def test_leaked_clients_at_maxclients_when_the_shard_refuses_the_control_plane():
    w = _load("leaked_clients_maxclients.json")
    assert "max number of clients" in w.latest["clients:shard1"]["error"]
    found = {f.subject: f for f in leaked_clients.detect(w, _cf(idle_client_after="2s"))}
    assert set(found) == {"chat-testing->shard1", "shard1:maxclients"}
    m = found["shard1:maxclients"]
    assert m.firing and m.severity == "critical" and m.about == {"shard": "shard1"}
    assert m.evidence["refusing_controlplane"] is True and m.evidence["top_idle_host"]["host"] == "chat-testing"
    assert m.remediation["action"] == "kill_clients" and m.remediation["params"]["host"] == "chat-testing"
    leak = found["chat-testing->shard1"]
    assert leak.firing and leak.severity == "critical" and leak.evidence["stale"] is True
    assert leak.evidence["idle"] > 1000 and leak.about["cluster"] == "testing"


def test_near_maxclients_warns_before_refusing():
    w = _load("leaked_clients_fire.json")
    for p in list(w.series["redis:shard1"]["maxclients"]):
        w.series["redis:shard1"]["maxclients"][w.series["redis:shard1"]["maxclients"].index(p)] = (p[0], 2400.0)
    found = {f.subject: f for f in leaked_clients.detect(w, _cf(idle_client_after="2s"))}
    assert found["shard1:maxclients"].firing and found["shard1:maxclients"].severity == "warning"
    assert found["chat-testing->shard1"].severity == "critical"     # its shard is near the limit


def test_hostile_window_breaks_nothing():
    w = _load("shards_hostile.json")
    for cf in (_cf(), _cf(idle_client_after="2s")):
        assert _all(w, cf) == []          # shard0 down: no peer to compare; garbage samples ignored


@pytest.mark.parametrize("name", ["hot_shard_fire.json", "hot_key_fire.json", "leaked_clients_fire.json",
                                  "leaked_clients_maxclients.json", "shards_quiet.json"])
def test_hostile_mutations(name):
    base = _load(name)
    cf = _cf(idle_client_after="2s")
    variants = []
    w = copy.deepcopy(base)                  # every value unknown
    w.series = {k: {n: [(t, None) for t, _ in pts] for n, pts in f.items()} for k, f in w.series.items()}
    variants.append(w)
    w = copy.deepcopy(base)                  # no newest data at all
    w.latest = {}
    variants.append(w)
    w = copy.deepcopy(base)                  # data of the wrong types
    for snap in w.latest.values():
        snap["data"], snap["detail"] = ["not", "a", "dict"], "nope"
    variants.append(w)
    w = copy.deepcopy(base)                  # sections missing inside the data
    for snap in w.latest.values():
        if isinstance(snap.get("data"), dict):
            snap["data"] = {k: None for k in snap["data"]}
    variants.append(w)
    variants.append(Window(now=base.now, interval_s=1.0))      # empty
    for v in variants:
        assert all(f.kind in ("hot_shard", "hot_key", "leaked_clients") for f in _all(v, cf))
    # Every series empty: nothing to report.
    assert _all(variants[0], cf) == [] or all(not f.firing for f in _all(variants[0], cf))


# -- live ------------------------------------------------------------------------------------

HOLD_S, INTERVAL_S, CLIENT_LIST_S = 3.0, 1.0, 2.0


def _patch(doc: dict) -> None:
    doc["controlplane"]["thresholds"] = {"hold": f"{HOLD_S:g}s", "idle_client_after": "2s"}


@pytest.fixture(scope="module")
def live():
    require("redis-benchmark")
    with live_controlplane(traffic=True, patch=_patch) as (c, base):
        cf = clusterfile.load(str(c.config)).spec
        db = Database(c.run / "controlplane.sqlite3")
        yield c, cf, db
        db.close()


def _shard_addr(cf, name: str) -> tuple[str, int]:
    s = next(s for s in cf.redis.shards if s.name == name)
    return cf.address(s.host), s.port


def _opened(db: Database, kind: str, subject: str | None = None, after: float = 0.0):
    for r in db.findings(open_only=True):
        if r["kind"] == kind and (subject is None or r["subject"] == subject) and r["first_seen"] >= after:
            return r
    return None



def _resolved(db: Database, row: dict) -> bool:
    return next(r for r in db.findings() if r["id"] == row["id"])["state"] == "resolved"


def _benchmark(c, host: str, port: int, *args: str) -> subprocess.Popen:
    """redis-benchmark logged in as clue (the shards answer only PING otherwise), so on keys of
    clue's shape; its -a password is this throwaway cluster's, generated by `chatops up`."""
    auth = redis_auth(c.run, "clue")
    return subprocess.Popen(["redis-benchmark", "-h", host, "-p", str(port), "--user", auth["username"],
                             "-a", auth["password"], "-l", "-c", "50", "-P", "16", "-q", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def test_live_quiet_traffic_opens_nothing(live):
    c, cf, db = live
    time.sleep(4.0)          # let rates and CLIENT LIST settle under default traffic
    mine = [r for r in db.findings() if r["kind"] in ("hot_shard", "hot_key", "leaked_clients")]
    assert mine == [], mine


def test_live_a_hot_shard(live):
    c, cf, db = live
    host, port = _shard_addr(cf, "shard0")
    started = time.time()
    bench = _benchmark(c, host, port, "-r", "100000", "SET", "{__rand_int__}.bench", "x")
    try:
        row = wait_for(lambda: _opened(db, "hot_shard", "shard0", started - 1),
                       20, 0.1, "a hot_shard finding on shard0")
    finally:
        _stop(bench)
    elapsed = row["first_seen"] - started
    print(f"\n(a) hot_shard shard0 opened {elapsed:.1f}s after redis-benchmark started: {row['title']}")
    # The first ops/s sample under load needs up to one interval; then `hold`; then <= 2 intervals.
    assert elapsed <= INTERVAL_S + HOLD_S + 2 * INTERVAL_S + 1.0, elapsed
    assert row["about"] == {"shard": "shard0", "host": "redis1"}
    assert row["evidence"]["resharding_helps"] is True and row["remediation"]["action"] == "reshard"
    assert _opened(db, "hot_shard", "shard1") is None and _opened(db, "hot_key") is None
    stopped = time.time()
    wait_for(lambda: _resolved(db, row), 15, 0.1, "the hot_shard finding to resolve")
    print(f"(a) resolved {time.time() - stopped:.1f}s after the load stopped")


def test_live_d_hot_key(live):
    c, cf, db = live
    smap = SlotMap.even(len(cf.redis.shards))
    key = next(keys.user_counters(f"room{i}", 4242) for i in range(1000)
               if smap.shard_of(keys.user_counters(f"room{i}", 4242)) == 1)
    host, port = _shard_addr(cf, "shard1")
    started = time.time()
    bench = _benchmark(c, host, port, "HINCRBY", key, "x", "1")
    try:
        row = wait_for(lambda: _opened(db, "hot_key", None, started - 1), 20, 0.1, "a hot_key finding")
        shard_row = wait_for(lambda: _opened(db, "hot_shard", "shard1", started - 1),
                             5, 0.1, "shard1's hot_shard finding")
    finally:
        _stop(bench)
    elapsed = row["first_seen"] - started
    print(f"\n(d) hot_key {row['subject']} opened {elapsed:.1f}s after redis-benchmark started: {row['title']}")
    assert elapsed <= INTERVAL_S + HOLD_S + 2 * INTERVAL_S + 1.0, elapsed
    assert row["subject"] == "{*}.rl.u.#" == key_prefix(key)          # the prefix, not the shard
    assert row["about"] == {"shard": "shard1", "key": key}
    assert shard_row["evidence"]["resharding_helps"] is False and shard_row["remediation"]["action"] == "none"
    stopped = time.time()
    wait_for(lambda: _resolved(db, row), 15, 0.1, "the hot_key finding to resolve")
    print(f"(d) resolved {time.time() - stopped:.1f}s after the load stopped")


def test_live_b_leaked_clients(live):
    c, cf, db = live
    address, port = cf.address("chat-testing"), cf.listener_port(1)
    socks: list[socket.socket] = []
    try:
        t0 = time.time()
        socks = open_idle(address, port, 2000)
        opened = time.time()
        row = wait_for(lambda: _opened(db, "leaked_clients", "chat-testing->shard1", t0 - 1),
                       25, 0.1, "a leaked_clients finding for chat-testing")
        elapsed = row["first_seen"] - opened
        print(f"\n(b) leaked_clients opened {elapsed:.1f}s after 2,000 connections were open "
              f"(opening took {opened - t0:.1f}s): {row['title']}")
        # The next CLIENT LIST sees them (<= one client-list interval), then `hold`, then <= 2 intervals.
        assert elapsed <= CLIENT_LIST_S + HOLD_S + 2 * CLIENT_LIST_S + 1.0, elapsed
        assert row["about"] == {"host": "chat-testing", "shard": "shard1", "cluster": "testing"}
        counted = wait_for(lambda: next((r for r in db.findings(open_only=True) if r["id"] == row["id"]
                                         and r["evidence"]["idle"] >= 2000), None), 10, 0.1,
                           "the idle count to reach 2,000")
        assert "chat-testing (testing cluster)" in counted["title"] and "2,0" in counted["title"]
        assert counted["remediation"]["params"] == {"shard": "shard1", "host": "chat-testing", "idle_over_s": 2.0}
        assert counted["evidence"]["timeout_zero"] is True
    finally:
        for s in socks:
            s.close()
    stopped = time.time()
    wait_for(lambda: _resolved(db, row), 20, 0.1, "the leaked_clients finding to resolve")
    print(f"(b) resolved {time.time() - stopped:.1f}s after the connections closed")
