"""The canary and the delivery-gap detector.

- `DeliveryBook`, the canary's pure bookkeeping, on plain calls (no sockets, no clock);
- the detector on recorded windows (tests/fixtures/windows/delivery_gap_*.json, captured by
  `python -m tests.controlplane.test_canary capture`, see tests/fixtures/README.md) and on small
  hand-built ones for hold, hysteresis, severity and staleness;
- live acceptance (e): a cluster whose main cluster has two chat hosts, canary every second, hold
  3 s; all edges deliver and nothing fires; SIGSTOP edge-chat2 (it neither reads nor delivers)
  and a delivery_gap finding names `lobby@chat2`; SIGCONT and it resolves.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from cluster.spec import ClusterFile
from controlplane.detectors import delivery_gaps
from controlplane.detectors.base import Window
from controlplane.sources.canary import (
    DeliveryBook,
    canary_text,
    parse_canary,
    ratio_messages,
    watched_rooms,
)
from tests.conftest import REPO  # noqa: E402

FIXTURES = REPO / "tests" / "fixtures" / "windows"
EDGES = ["chat1", "chat2"]


def spec(subnet: str = "127.0.9", **controlplane) -> ClusterFile:
    from tests.conftest import small_cluster
    doc = small_cluster(subnet)
    two_hosts(doc)
    doc["controlplane"].update(controlplane)
    return ClusterFile.model_validate(doc)


def two_hosts(doc: dict) -> dict:
    """Cluster main gets a second chat host, chat2, so one edge's gap shows beside a healthy one."""
    subnet = doc["hosts"]["chat1"]["address"].rsplit(".", 1)[0]
    doc["hosts"]["chat2"] = {"address": f"{subnet}.2"}
    doc["clusters"]["main"]["hosts"] = ["chat1", "chat2"]
    return doc


# ---------------------------------------------------------------------------------------------
# DeliveryBook
# ---------------------------------------------------------------------------------------------


def book(n: int = 1, late: float = 2.0) -> DeliveryBook:
    return DeliveryBook("lobby", EDGES, late, n)


def joined_book(**kw) -> DeliveryBook:
    b = book(**kw)
    for e in EDGES:
        b.connection(e, True, 0.0)
    return b


def test_every_edge_on_time():
    b = joined_book()
    b.sent(1, 100.0, "chat1", EDGES)
    b.delivered("chat1", 1, 100.01)
    b.delivered("chat2", 1, 100.03)
    figs, detail = b.judge(100.5)                     # not judged yet: still pending...
    assert figs["pending"] == 1 and figs["edge:chat1:judged"] == 0
    # ...but on-time deliveries already show as such in the detail
    assert detail["messages"][0]["edges"]["chat2"]["state"] == "on_time"
    figs, detail = b.judge(102.5)
    for e in EDGES:
        assert figs[f"edge:{e}:delivered_ratio"] == 1.0
        assert figs[f"edge:{e}:missing"] == 0.0
        assert figs[f"edge:{e}:connected"] == 1.0
    assert figs["edge:chat2:latency_s"] == pytest.approx(0.03)
    assert figs["lost"] == 0 and figs["refused"] == 0 and figs["pending"] == 0 and figs["sent"] == 1
    assert detail["messages"][0]["edges"]["chat2"] == {"state": "on_time", "latency_s": 0.03}


def test_one_edge_misses_a_message_the_other_delivered():
    b = joined_book()
    b.sent(1, 100.0, "chat1", EDGES)
    b.delivered("chat1", 1, 100.01)
    figs, detail = b.judge(102.0)
    assert figs["edge:chat1:delivered_ratio"] == 1.0
    assert figs["edge:chat2:delivered_ratio"] == 0.0
    assert figs["edge:chat2:missing"] == 1.0
    assert figs["edge:chat2:latency_s"] is None
    assert detail["messages"][0]["edges"]["chat2"]["state"] == "missing"


def test_a_late_delivery_counts_as_missing_but_its_latency_is_kept():
    b = joined_book()
    b.sent(1, 100.0, "chat2", EDGES)
    b.delivered("chat1", 1, 100.02)
    b.delivered("chat2", 1, 107.0)                    # came through after the edge woke up
    figs, detail = b.judge(108.0)
    assert figs["edge:chat2:delivered_ratio"] == 0.0
    assert figs["edge:chat2:latency_max_s"] == pytest.approx(7.0)
    assert detail["messages"][0]["edges"]["chat2"]["state"] == "late"


def test_a_refused_message_is_nobodys_delivery_gap():
    b = joined_book()
    b.sent(1, 100.0, "chat1", EDGES)
    b.refused(1, "msg_unavailable")
    figs, detail = b.judge(100.2)                     # refusals count at once
    assert figs["refused"] == 1 and figs["pending"] == 0
    assert figs["edge:chat1:delivered_ratio"] is None and figs["edge:chat2:judged"] == 0
    assert detail["messages"][0]["refused"] == "msg_unavailable"


def test_a_message_nobody_got_counts_against_the_edge_it_was_sent_through_only():
    """A stopped edge swallows the canary's own messages: that must not make the healthy edge
    look bad."""
    b = joined_book(n=2)
    b.sent(1, 100.0, "chat2", EDGES)                  # into the stopped edge: nobody gets it
    b.sent(2, 101.0, "chat1", EDGES)                  # through the healthy edge: only chat1 delivers
    b.delivered("chat1", 2, 101.01)
    figs, detail = b.judge(104.0)
    assert figs["lost"] == 1
    assert figs["edge:chat1:delivered_ratio"] == 1.0 and figs["edge:chat1:judged"] == 1
    assert figs["edge:chat2:delivered_ratio"] == 0.0 and figs["edge:chat2:judged"] == 2
    assert detail["messages"][0]["edges"]["chat1"]["state"] == "not_counted"


def test_a_message_nobody_got_waits_for_a_late_refusal():
    """Clue timing out (5 s) makes the edge answer msg_unavailable only then: until clue's timeout
    + 1 s a message no edge delivered is not judged, so ingestion timeouts are not delivery gaps."""
    b = DeliveryBook("lobby", EDGES, 2.0, 1, lost_after=6.0)
    for e in EDGES:
        b.connection(e, True, 0.0)
    b.sent(1, 100.0, "chat1", EDGES)
    figs, detail = b.judge(103.0)
    assert figs["pending"] == 1 and figs["edge:chat1:judged"] == 0
    assert detail["messages"][0]["edges"]["chat1"]["state"] == "pending"
    b.refused(1, "msg_unavailable")                   # the edge's NOTICE after clue's 5 s timeout
    figs, _ = b.judge(105.1)
    assert figs["refused"] == 1 and figs["edge:chat1:delivered_ratio"] is None
    b.sent(2, 110.0, "chat1", EDGES)                  # no NOTICE ever: judged at 6 s
    assert b.judge(115.9)[0]["edge:chat1:judged"] == 0
    figs, _ = b.judge(116.0)
    assert figs["edge:chat1:delivered_ratio"] == 0.0 and figs["lost"] == 1


def test_an_edge_the_canary_could_not_join_is_a_gap():
    b = book()
    b.connection("chat1", True, 99.0)
    b.connection("chat2", False, 99.0, "edge unreachable: ConnectionRefusedError")
    b.sent(1, 100.0, "chat1", ["chat1"])
    b.delivered("chat1", 1, 100.01)
    figs, detail = b.judge(103.0)
    assert figs["edge:chat2:delivered_ratio"] == 0.0
    assert figs["edge:chat2:connected"] == 0.0 and figs["edges_connected"] == 1
    assert detail["messages"][0]["edges"]["chat2"]["state"] == "not_connected"
    assert detail["edges"]["chat2"]["error"].startswith("edge unreachable")


def test_every_edge_unreachable_is_a_gap_on_every_edge():
    b = DeliveryBook("lobby", EDGES, 2.0, 1, lost_after=6.0)
    b.sent(1, 100.0, "", [])                          # the canary is in the room on no edge
    assert b.judge(101.0)[0]["pending"] == 1
    figs, detail = b.judge(102.0)                     # nobody to wait a refusal from
    for e in EDGES:
        assert figs[f"edge:{e}:delivered_ratio"] == 0.0 and figs[f"edge:{e}:connected"] == 0.0
        assert detail["messages"][0]["edges"][e]["state"] == "not_connected"


def test_the_ratio_covers_the_last_n_judged_messages():
    b = joined_book(n=3)
    for seq in range(1, 6):
        b.sent(seq, 100.0 + seq, "chat1", EDGES)
        b.delivered("chat1", seq, 100.0 + seq + 0.01)
        if seq != 3:
            b.delivered("chat2", seq, 100.0 + seq + 0.01)
    figs, _ = b.judge(110.0)                          # last three judged: 3 (missed), 4, 5
    assert figs["edge:chat2:delivered_ratio"] == pytest.approx(2 / 3)
    assert figs["edge:chat2:missing"] == 1 and figs["edge:chat2:judged"] == 3
    b.sent(6, 106.0, "chat1", EDGES)
    b.delivered("chat1", 6, 106.01)
    b.delivered("chat2", 6, 106.01)
    figs, _ = b.judge(110.0)                          # 4, 5, 6
    assert figs["edge:chat2:delivered_ratio"] == 1.0


def test_duplicates_strangers_and_unknown_edges_are_ignored():
    b = joined_book()
    b.sent(1, 100.0, "chat1", EDGES)
    assert b.delivered("chat1", 1, 100.1)
    assert not b.delivered("chat1", 1, 105.0)         # only the first delivery counts
    assert not b.delivered("chat9", 1, 100.1)         # not an edge of this room
    assert not b.delivered("chat2", 42, 100.1)        # not a message we sent
    assert not b.delivered("chat2", 1, 100.1, epoch=90.0)   # same number, another sender's time
    assert b.delivered("chat2", 1, 100.2, epoch=100.0)
    b.refused(42, "msg_ratelimit")                    # a refusal for nothing we know: no effect
    b.connection("chat9", True, 100.0)
    figs, _ = b.judge(103.0)
    assert figs["edge:chat1:latency_s"] == pytest.approx(0.1)
    assert "edge:chat9:connected" not in figs


def test_the_book_forgets_old_messages():
    b = DeliveryBook("lobby", EDGES, 2.0, 1, keep=5)
    for seq in range(1, 20):
        b.sent(seq, float(seq), "chat1", EDGES)
    assert [m.seq for m in b.messages] == [15, 16, 17, 18, 19]
    assert not b.delivered("chat1", 3, 4.0)
    _, detail = b.judge(30.0)
    assert len(detail["messages"]) == 5


@pytest.mark.parametrize("text", ["", "chatops-canary", "chatops-canary 1", "chatops-canary x 1.0",
                                  "chatops-canary 1 y", "chatops-canary -1 1.0", "chatops-canary 1 2 3",
                                  "hello chatops-canary 1 1.0", "CHATOPS-CANARY 1 1.0", "chatops-canary  1 1.0"])
def test_parse_canary_refuses_anything_else(text):
    assert parse_canary(text) is None


def test_canary_text_round_trips():
    assert parse_canary(canary_text(17, 1700000000.123456)) == (17, 1700000000.123)


def test_rooms_default_to_the_first_room_of_every_cluster_and_ratio_follows_hold():
    cf = spec()
    assert watched_rooms(cf) == ["lobby", "testroom"]
    assert ratio_messages(cf) == 1                    # the default hold 6 s, interval 5 s
    assert ratio_messages(spec(thresholds={"hold": "30s"})) == 3
    cf = spec(canary={"rooms": ["other", "lobby"], "interval": "1s"}, thresholds={"hold": "3s"})
    assert watched_rooms(cf) == ["other", "lobby"]
    assert ratio_messages(cf) == 1


# ---------------------------------------------------------------------------------------------
# The detector
# ---------------------------------------------------------------------------------------------


def fixture_cf() -> ClusterFile:
    """The settings the fixtures were captured with (hold 3 s, canary every 1 s)."""
    return spec(canary={"interval": "1s"}, thresholds={"hold": "3s"},
                scrape={"interval": "1s", "client_list_interval": "2s"})


def load(name: str) -> Window:
    path = FIXTURES / f"delivery_gap_{name}.json"
    assert path.exists(), f"missing {path}: capture it with `python -m tests.controlplane.test_canary capture`"
    return Window.load(path)


def test_recorded_gap_fires_on_the_stopped_edge_only():
    found = delivery_gaps.detect(load("fire"), fixture_cf())
    firing = [f for f in found if f.firing]
    assert [f.subject for f in firing] == ["lobby@chat2"]
    f = firing[0]
    assert f.kind == "delivery_gap" and f.runbook == "delivery_gap"
    assert f.severity == "critical"                 # a stopped edge delivers nothing
    assert f.about == {"room": "lobby", "host": "chat2", "cluster": "main", "service": "edge", "edge": "chat2"}
    ev = f.evidence
    assert ev["delivered_ratio"] == 0.0 and ev["connected"] is True    # SIGSTOP: the socket stays open
    assert ev["missed"] and all(m["state"] in ("missing", "late") for m in ev["missed"])
    assert any(lat is not None for m in ev["missed"] for lat in m["others_latency_s"].values())
    assert ev["lines"] and "chat1 +" in ev["lines"][-1]
    assert ev["other_edges_ratio"] == {"chat1": 1.0}
    json.dumps(f.as_dict())                         # goes to SQLite and the API as JSON


def test_recorded_quiet_window_does_not_fire():
    assert delivery_gaps.detect(load("quiet"), fixture_cf()) == []


def test_recorded_hostile_window_neither_crashes_nor_fires():
    found = delivery_gaps.detect(load("hostile"), fixture_cf())
    assert [f for f in found if f.firing] == []


def synthetic(ratios: list[float | None], now: float = 1000.0, interval: float = 1.0, host: str = "chat2",
              connected: float = 1.0) -> Window:
    """A window whose canary series for `host` holds `ratios`, one per second up to `now`."""
    ts = [now - interval * (len(ratios) - 1 - i) for i in range(len(ratios))]
    series = {"canary:lobby": {
        f"edge:{host}:delivered_ratio": list(zip(ts, ratios)),
        "edge:chat1:delivered_ratio": [(t, 1.0) for t in ts],
        f"edge:{host}:connected": [(t, connected) for t in ts],
    }}
    latest = {"canary:lobby": {"up": True, "error": None, "at": now, "data": None,
                               "detail": {"cluster": "main", "edges": {"chat1": {}, host: {}}, "messages": []}}}
    return Window(now=now, interval_s=interval, series=series, latest=latest)


def test_hold_hysteresis_and_severity():
    cf = fixture_cf()                                # hold 3 s
    assert delivery_gaps.detect(synthetic([1, 1, 1, 0.5, 0.5]), cf)[0].firing is False   # held 2 s
    f = delivery_gaps.detect(synthetic([1, 1, 0.5, 0.5, 0.5]), cf)[0]
    assert f.firing and f.severity == "warning" and f.held_s == pytest.approx(3.0)
    f = delivery_gaps.detect(synthetic([1, 0, 0, 0, 0]), cf)[0]
    assert f.firing and f.severity == "critical"
    # Clearing: one good point keeps it reported (not firing) until a whole hold is clean...
    kept = delivery_gaps.detect(synthetic([0, 0, 0, 0, 1, 1]), cf)
    assert [(f.subject, f.firing) for f in kept] == [("lobby@chat2", False)]
    # ...then it is no longer reported, so the engine resolves it.
    assert delivery_gaps.detect(synthetic([0, 0, 0, 0, 1, 1, 1, 1]), cf) == []
    # A single miss never opens one: it cannot hold for 3 s with one message per ratio.
    assert not any(f.firing for f in delivery_gaps.detect(synthetic([1, 1, 0, 1, 1]), cf))


def test_unknown_points_break_the_run_and_stale_canaries_are_not_judged():
    cf = fixture_cf()
    assert not any(f.firing for f in delivery_gaps.detect(synthetic([0, 0, None, 0, 0]), cf))
    w = synthetic([0, 0, 0, 0, 0])
    w.now += 60                                      # the canary stopped writing a minute ago
    assert delivery_gaps.detect(w, cf) == []


def test_unreachable_edge_says_so():
    f = delivery_gaps.detect(synthetic([0, 0, 0, 0], connected=0.0), fixture_cf())[0]
    assert "unreachable" in f.title and f.evidence["connected"] is False


# ---------------------------------------------------------------------------------------------
# Live (e): stop one edge's delivery path, and the canary reports the gap
# ---------------------------------------------------------------------------------------------


def live_patch(doc: dict) -> None:
    two_hosts(doc)
    doc["controlplane"]["canary"] = {"interval": "1s"}
    doc["controlplane"]["thresholds"] = {"hold": "3s"}


def open_gaps(run: Path) -> list[dict]:
    from controlplane.database import Database
    path = run / "controlplane.sqlite3"
    if not path.exists():
        return []
    return [r for r in Database(path).findings(open_only=True) if r["kind"] == "delivery_gap"]


def test_live_stopped_edge_is_reported_and_resolves():
    from tests.conftest import live_controlplane, wait_for
    with live_controlplane(traffic=True, patch=live_patch) as (cluster, _base):
        run = cluster.run
        # All edges deliver: give the canary time to join both edges and judge a few messages
        # (its first message waits for both joins; judging waits delivery_late_after, 2 s).
        time.sleep(10)
        assert open_gaps(run) == [], f"a delivery gap with every edge up: {open_gaps(run)}"
        pid = cluster.pid_of("edge-chat2")
        os.kill(pid, signal.SIGSTOP)
        stopped = time.monotonic()
        try:
            # The condition starts when the first message sent after the stop is judged (2 s),
            # must hold 3 s, then the engine needs up to 2 scrape intervals (1 s each).
            rows = wait_for(lambda: open_gaps(run), timeout=20, interval=0.2, what="a delivery_gap finding")
            took = time.monotonic() - stopped
        finally:
            os.kill(pid, signal.SIGCONT)
        print(f"delivery gap opened {took:.1f}s after SIGSTOP of edge-chat2", file=sys.stderr)
        assert [r["subject"] for r in rows] == ["lobby@chat2"]
        row = rows[0]
        assert row["about"]["host"] == "chat2" and row["about"]["service"] == "edge"
        assert row["evidence"]["missed"], row["evidence"]
        # delivery_late_after 2 s + hold 3 s + 2 scrape intervals, with slack for a loaded machine
        assert took <= 2 + 3 + 2 + 3, f"took {took:.1f}s"
        resumed = time.monotonic()
        wait_for(lambda: not open_gaps(run), timeout=30, interval=0.2, what="the delivery gap to resolve")
        print(f"resolved {time.monotonic() - resumed:.1f}s after SIGCONT", file=sys.stderr)
        # The healthy edge never had a finding.
        from controlplane.database import Database
        subjects = {r["subject"] for r in Database(run / "controlplane.sqlite3").findings()
                    if r["kind"] == "delivery_gap"}
        assert subjects == {"lobby@chat2"}


# ---------------------------------------------------------------------------------------------
# Capturing the fixtures: python -m tests.controlplane.test_canary capture [--out DIR]
# ---------------------------------------------------------------------------------------------


def trim(doc: dict, window_s: float = 30.0) -> dict:
    """Only the canary source, the last `window_s` seconds."""
    now = doc["now"]
    series = {k: {n: [[round(t, 3), None if v is None else round(v, 4)] for t, v in pts if t >= now - window_s]
                  for n, pts in figs.items()}
              for k, figs in doc["series"].items() if k.startswith("canary:")}
    latest = {k: v for k, v in doc["latest"].items() if k.startswith("canary:")}
    return {"now": now, "interval_s": doc["interval_s"], "series": series, "latest": latest}


def capture(out: Path) -> None:
    import shutil
    import tempfile

    from controlplane.web.app import create_app
    from tests.conftest import cluster_up, free_subnet, small_cluster, write_cluster

    subnet = free_subnet()
    run = Path(tempfile.mkdtemp(prefix="co-", dir="/tmp"))
    doc = small_cluster(subnet)
    doc["controlplane"]["scrape"] = {"interval": "1s", "client_list_interval": "2s"}
    live_patch(doc)
    config = write_cluster(run.parent / f"{run.name}.yaml", doc)
    try:
        with cluster_up(config, run, timeout=60, traffic=True) as c:
            app = create_app({"CLUSTER_FILE": str(config), "RUN_DIR": str(run), "SCHEDULER": True})
            engine = app.extensions["chatops.engine"]
            time.sleep(15)
            quiet = json.loads(engine.window().to_json())
            pid = c.pid_of("edge-chat2")
            os.kill(pid, signal.SIGSTOP)
            try:
                time.sleep(9)
                fire = json.loads(engine.window().to_json())
            finally:
                os.kill(pid, signal.SIGCONT)
            app.extensions["chatops.canary"].stop()
            app.extensions["chatops.scraper"].stop()
    finally:
        shutil.rmtree(run, ignore_errors=True)
        config.unlink(missing_ok=True)
    for name, raw in (("quiet", quiet), ("fire", fire)):
        (out / f"delivery_gap_{name}.json").write_text(json.dumps(trim(raw), separators=(",", ":")) + "\n")
        print(f"wrote {out / f'delivery_gap_{name}.json'}")
    write_hostile(out)


def write_hostile(out: Path) -> None:
    """delivery_gap_hostile.json: hand-made from the recorded fire window (it says so): the
    stopped edge's ratio broken up by unknown (None) points, so it never holds for 3 s; NaN,
    strings and booleans where numbers belong; a detail whose messages and edges are garbage; a
    room with a detail but no series, and one with series but no detail."""
    doc = json.loads((out / "delivery_gap_fire.json").read_text())
    doc["hand_made"] = "from delivery_gap_fire.json by write_hostile() in tests/controlplane/sources/test_canary.py"
    lobby = doc["series"]["canary:lobby"]
    lobby["edge:chat2:delivered_ratio"] = [[t, None if i % 2 else v]
                                           for i, (t, v) in enumerate(lobby["edge:chat2:delivered_ratio"])]
    lobby["edge:chat2:connected"] = [[t, "yes"] for t, _ in lobby["edge:chat2:connected"]]
    lobby["edge:chat2:latency_s"] = [[t, float("nan")] for t, _ in lobby["edge:chat2:connected"]]
    lobby["edge:chat1:delivered_ratio"] = [[t, True] for t, _ in lobby["edge:chat1:delivered_ratio"]]
    lobby["edge::delivered_ratio"] = [[t, 0.0] for t, _ in lobby["edge:chat1:delivered_ratio"][-1:]]
    lobby["edge:chat3:delivered_ratio:extra"] = [[doc["now"], 0.0]]
    detail = doc["latest"]["canary:lobby"]["detail"]
    detail["messages"] = [None, 7, "x", {"seq": "1"}, {"edges": []}, {"edges": {"chat2": None}},
                          {"edges": {"chat2": {"state": "missing", "latency_s": "slow"}, "chat1": 3}},
                          *detail.get("messages", [])[-2:]]
    detail["edges"] = {"chat2": "down", "": {}, "chat1": None}
    detail["cluster"] = 42
    doc["latest"]["canary:ghost"] = {"up": None, "error": None, "at": None, "data": None, "detail": None}
    doc["series"]["canary:orphan"] = {"edge:chat9:delivered_ratio": [], "edge:chat8:delivered_ratio": [[0, None]]}
    (out / "delivery_gap_hostile.json").write_text(json.dumps(doc, separators=(",", ":")) + "\n")
    print(f"wrote {out / 'delivery_gap_hostile.json'}")


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser(description="Capture the delivery_gap fixture windows from a live cluster.")
    ap.add_argument("command", choices=["capture", "hostile"], help="capture: quiet, fire and then hostile; "
                                                                       "hostile: only rebuild it from fire")
    ap.add_argument("--out", type=Path, default=FIXTURES)
    args = ap.parse_args()
    capture(args.out) if args.command == "capture" else write_hostile(args.out)
