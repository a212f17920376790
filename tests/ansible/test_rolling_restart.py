"""rolling-restart.yml on the live default cluster, under load-generator traffic in main's rooms.

The playbook restarts every chat host's edge, clue and exchange, one host at a time, draining the
host's edge servers in every HAProxy of its cluster first. The load generator runs a timed run with
--reconnect from its own loopback address, so a client whose edge restarts comes back (through the
same frontend, onto the other edge: the restarted one is drained) and the report lists every loss
with the edge it was on.

What is asserted: every chat host's three services have new pids; the play never failed; delivery
completeness over the connected receivers is at least 0.99; every client that left its edge (it
followed the drained edge's RECONNECT, make-before-break, or lost its connection) was on the edge
being restarted at that moment (between the audit's drain and ready records for that edge), so no
client of another edge lost its session; every client came back on another edge. Main has two edges and
both restart, so every main client reconnects at least once (those that moved onto chat2 while chat1
restarted, twice): the test prints who reconnected, from which edge to which, and after how long.
Timings are printed, never asserted.

This file runs last among the Ansible tests: the shared cluster has the shard the reshard test
added; the restart needs nothing from it."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import time
from collections import Counter

from tests.ansible.conftest import api_get, recap
from tests.conftest import REPO

ROOMS = "degentp,paragusrants"          # main's rooms in the shipped cluster file
CLIENTS = 60
DURATION = 55                           # seconds of sending: main's hosts go first (inventory order), so
                                        # this covers chat1's and chat2's restarts (~30 s) with room to spare
SERVICES = ("edge", "clue", "exchange")
AUDIT_AFTER_S = 2.0                     # at most from the edge's RECONNECT to the drain's audit record


def _pids(live) -> dict[str, int]:
    return {p["name"]: p["pid"] for p in live.state["processes"]}


def _source(live) -> str:
    """A loopback address in the cluster's subnet that no host of the cluster file uses."""
    spec = live.spec
    used = {spec.address(h) for h in spec.hosts} | {spec.controlplane.listen.address}
    net = ipaddress.ip_network(f"{spec.address('chat1')}/24", strict=False)
    return next(str(a) for a in net.hosts() if int(a) & 0xFF >= 200 and str(a) not in used)


def _loadgen(live, source: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "controlplane.cli", "loadgen", "--config", str(live.config), "--clients", str(CLIENTS),
         "--senders", "2", "--rate", "10", "--duration", str(DURATION), "--rooms", ROOMS,
         "--source-address", source, "--reconnect", "--json", "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        env={**os.environ, "CHATOPS_RUN_DIR": str(live.run)})     # the Redis passwords `up` generated


def _windows(live, since: float) -> dict[str, tuple[float, float]]:
    """Per chat host: (drained, ready again) from the audit of this play's server_state applies."""
    drained: dict[str, float] = {}
    ready: dict[str, float] = {}
    for rec in api_get(live.base, "/audit?limit=1000")["audit"]:
        if rec["action"] != "remediation.server_state" or rec["ts"] < since:
            continue
        assert rec["actor"].startswith("ansible:rolling-restart.yml"), rec
        params = rec["detail"]["params"]
        server, ts = params["server"], rec["ts"]
        if params["state"] == "drain":
            drained[server] = min(ts, drained.get(server, ts))
        elif params["state"] == "ready":
            ready[server] = max(ts, ready.get(server, ts))
    return {h: (drained[h], ready[h]) for h in drained if h in ready}


def test_check_mode_shows_each_plan_and_changes_nothing(live_default):
    """--check --diff on one host: the drain, restart and ready plans are made and shown, nothing is
    applied, no process restarts, and the edge's servers stay ready. A bad number is refused first."""
    live = live_default
    bad = live.play("rolling-restart.yml", "--limit", "chat1", "-e", "drain_timeout=soon")
    assert bad.returncode != 0 and "drain_timeout=SECONDS" in bad.stdout + bad.stderr

    before = _pids(live)
    run = live.play("rolling-restart.yml", "--check", "--diff", "--limit", "chat1", timeout=120)
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    text = " ".join((run.stdout + run.stderr).split())        # the YAML callback folds long lines
    assert "+ chat1 be_edge_main/chat1: drain weight" in text and "+ chat2 be_edge_ws_main/chat1: drain weight" in text
    assert "- edge-chat1 pid" in text and "- exchange-chat1 pid" in text
    assert "check mode: plan" in text and "would apply" in text
    assert "now (check mode drains nothing and waits for nothing)" in text
    assert "applied by" not in text
    assert _pids(live) == before
    plans = api_get(live.base, "/plans?limit=10")["plans"]
    assert plans and all(p["state"] == "planned" for p in plans[:3]), [(p["id"], p["state"]) for p in plans[:3]]
    assert _edge_status(live, "chat2", "chat1") == {"be_edge_main": "UP", "be_edge_ws_main": "UP"}


def _edge_status(live, proxy_host: str, server: str) -> dict[str, str]:
    """be_edge_*/<server>'s status (UP, DRAIN, DOWN...) in proxy_host's HAProxy stats CSV."""
    import urllib.request
    spec = live.spec
    url = f"http://{spec.address(proxy_host)}:{spec.haproxy.stats_port}/stats;csv"
    with urllib.request.urlopen(url, timeout=10) as r:
        rows = r.read().decode().splitlines()
    header = rows[0].lstrip("# ").split(",")
    status = header.index("status")
    return {f[0]: f[status] for f in (row.split(",") for row in rows[1:])
            if len(f) > status and f[0].startswith("be_edge") and f[1] == server}


def test_rolling_restart_under_traffic_restarts_every_chat_host_and_keeps_other_edges_clients(live_default):
    live = live_default
    chat = [h for h, _ in live.spec.chat_hosts()]
    before = _pids(live)
    source = _source(live)
    started = time.time()
    lg = _loadgen(live, source)
    try:
        time.sleep(5)                      # the clients connect and join (a few seconds for 62)
        assert lg.poll() is None, lg.stderr.read() if lg.stderr else ""
        t0 = time.monotonic()
        run = live.play("rolling-restart.yml", "-e", "yes=true", "-e", "drain_below=1", "-e", "drain_timeout=2",
                        timeout=240)
        play_s = time.monotonic() - t0
        out, err = lg.communicate(timeout=DURATION + 60)
    finally:
        if lg.poll() is None:
            lg.kill()
            lg.wait()
    assert run.returncode == 0, (run.stdout + run.stderr)[-6000:]
    text = " ".join((run.stdout + run.stderr).split())
    counts = recap(run.stdout)
    assert set(counts) == set(chat), counts
    assert all(c["failed"] == 0 and c["changed"] >= 3 for c in counts.values()), counts
    assert "client connection(s) open" in text and "restarted: pid" in text

    # 1. every chat host's edge, clue and exchange are new processes, and up
    after = _pids(live)
    for host in chat:
        for service in SERVICES:
            name = f"{service}-{host}"
            assert after[name] != before[name], f"{name} kept pid {before[name]}"
    procs = {p["name"]: p for p in live.state["processes"]}
    assert all(procs[f"{s}-{h}"]["status"] == "up" for h in chat for s in SERVICES)

    # ... and every edge is back in every HAProxy of its cluster (ready, checked UP)
    for proxy_host in ("chat1", "chat2"):
        for server in ("chat1", "chat2"):
            assert _edge_status(live, proxy_host, server) == {"be_edge_main": "UP", "be_edge_ws_main": "UP"}

    # 2. the traffic: delivered to every connected receiver
    assert lg.returncode == 0, err[-3000:]
    rep = json.loads(out.strip().splitlines()[-1])
    rc = rep["reconnections"]
    print(f"\nplay {play_s:.1f} s; loadgen: sent {rep['sent']}, accepted {rep['accepted']}, rejected {rep['rejected']}, "
          f"completeness {rep['completeness']}, with the gaps counted as missed {rep['completeness_with_gaps']} "
          f"({rep['excluded_while_disconnected']} deliveries excluded while receivers reconnected), "
          f"lost {rep['lost']}, latency {rep['latency_ms']}")
    assert rep["clients"] == CLIENTS and rep["senders"] == 2, err[-3000:]
    assert rep["completeness"] is not None and rep["completeness"] >= 0.99, rep
    assert set(rep["errors"]) <= {"disconnected"}, rep["error_examples"]
    assert rep["sent"] > 0 and rep["accepted"] > 0.95 * rep["sent"], rep

    # 3. who had to reconnect, and from which edge: only the clients of the edge being restarted
    windows = _windows(live, started)
    assert set(windows) == set(chat), windows
    print(f"clients per edge at the start {rep['edges']['at_start']}, at the end {rep['edges']['at_end']}")
    print(f"connections lost {rc['lost']}, re-established {rc['reestablished']}, by edge {rc['by_edge']}, "
          f"by frontend {rc['by_frontend']}, gap {rc['gap_ms']} ms; clients kept their session: {rc['clients_kept']}")
    moves = Counter((e["edge"], e["back_edge"], "sender" if e["sender"] else "receiver") for e in rc["events"])
    print("moves (lost on edge -> back on edge, kind): "
          + ", ".join(f"{a} -> {b} {k} x{n}" for (a, b, k), n in sorted(moves.items())))
    per_client = Counter(e["nick"] for e in rc["events"])
    print(f"reconnections per client: {dict(sorted(Counter(per_client.values()).items()))} "
          f"(times reconnected: clients)")
    # A client leaves its edge either by following the edge's RECONNECT (make-before-break, the
    # usual way: server_state drain tells the edge) or by losing its connection and reconnecting.
    followed = rep["reconnect_events"]
    print(f"RECONNECT followed {rep['reconnects']} times: "
          + ", ".join(f"{a} -> {b} x{n}" for (a, b), n in
                      sorted(Counter((e["edge"], e["back_edge"]) for e in followed).items())))
    assert rc["enabled"] and rc["events_dropped"] == 0 and rep["reconnects"] == len(followed)
    # The audit records the drain once its apply has returned, just after the edge sent RECONNECT:
    # a RECONNECT counts from a moment before the record.
    left = [(e, e["lost_at"]) for e in rc["events"]] + [(e, e["asked_at"] + AUDIT_AFTER_S) for e in followed]
    assert left, "no client left its edge: the restart did not restart the edges it was on"
    for e, at in left:
        assert e["edge"] in windows, e
        drained, ready = windows[e["edge"]]
        assert drained <= at <= ready, (
            f"{e['nick']} left edge {e['edge']} outside that edge's restart "
            f"({drained:.3f}..{ready:.3f}): {e}")
        assert e["back_at"] is not None and e["back_edge"] != e["edge"], e
    assert rc["still_lost"] == 0 and rc["reestablished"] == rc["lost"]
    # The first host restarted under load: exactly its edge's clients moved; the other edge's
    # clients (all of them, at that moment) kept their session through it.
    first = min((h for h in windows if h in rep["edges"]["at_start"]), key=lambda h: windows[h][0])
    drained, ready = windows[first]
    moved = {e["nick"] for e, at in left if drained <= at <= ready}
    kept = CLIENTS + 2 - len(moved)
    print(f"during {first}'s restart: {len(moved)} clients of edge {first} reconnected, {kept} clients of the other "
          f"edge kept their session")
    assert len(moved) == rep["edges"]["at_start"][first] and kept == CLIENTS + 2 - rep["edges"]["at_start"][first]
    # Only main's two edges held the load generator's clients.
    assert set(rc["by_edge"]) <= {"chat1", "chat2"}
