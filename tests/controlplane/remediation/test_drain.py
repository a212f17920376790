"""server_state drain of one edge under traffic, through HAProxy's runtime API and the edge's own
drain route: new IRC connections go only to the other edge, the drained edge sends its clients
RECONNECT and closes them over services.edge.drain_period, and a load generator honouring it
(make-before-break) moves to the other edge losing nothing (completeness 1.0, no disconnect);
`ready` gives the edge back, and no HAProxy reloads (the master's reload count is unchanged).
Then SIGTERM to the other edge, on the same cluster: the same move, and the edge exits once drained.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

from cluster.rundir import RunDir
from collectors import haproxy
from controlplane.remediation.proxy_reload import _show_proc
from tests.conftest import REPO, live_controlplane, loadgen_report, start_loadgen, wait_for

TOKEN = "drain-test-token"
BACKEND = "be_edge_main"
DRAIN_PERIOD = "4s"


def _patch(doc: dict) -> None:
    subnet = doc["hosts"]["chat1"]["address"].rsplit(".", 1)[0]
    doc["hosts"]["chat2"] = {"address": f"{subnet}.2"}
    doc["clusters"]["main"]["hosts"] = ["chat1", "chat2"]
    doc["clusters"]["main"]["services"] = {"edge": {"drain_period": DRAIN_PERIOD}}


def _chatops(c, *args: str) -> dict:
    r = subprocess.run([sys.executable, "-m", "controlplane.cli", *args, "--config", str(c.config),
                        "--run-dir", str(c.run), "--json"], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout)


def _sessions(c, host: str) -> dict[str, int]:
    """Total sessions each edge server got through `host`'s HAProxy."""
    stat = haproxy.fetch_stat(c.run / "haproxy" / f"{host}.sock")
    return {r.name: r.stot or 0 for r in stat.rows if r.proxy == BACKEND and r.kind == "server"}


def _connect(address: str, n: int) -> None:
    for _ in range(n):
        with socket.create_connection((address, 6667), timeout=5) as s:
            s.sendall(b"NICK justinfan4242\r\nUSER x 0 * :x\r\n")
            s.recv(64)


def _connect_held_until_chat2(address: str, c, before: dict[str, int], most: int = 60) -> dict[str, int]:
    """Open connections and keep them open until one lands on chat2. The balance is leastconn, so
    while chat2 still holds more of the background traffic's clients (kept through the drain), new
    connections rightly go to chat1; held ones raise chat1's count until chat2 is the least."""
    held: list[socket.socket] = []
    try:
        for _ in range(most):
            s = socket.create_connection((address, 6667), timeout=5)
            held.append(s)
            s.sendall(b"NICK justinfan4242\r\nUSER x 0 * :x\r\n")
            s.recv(64)
            now = _sessions(c, "chat1")
            if now["chat2"] > before["chat2"]:
                return now
        return _sessions(c, "chat1")
    finally:
        for s in held:
            s.close()


def _reloads(c) -> dict[str, int]:
    return {h: _show_proc(RunDir(c.run), h).master.reloads for h in ("chat1", "chat2")}


def _set(c, state: str) -> dict:
    plan = _chatops(c, "plan", "server_state", "--set", f"backend={BACKEND}", "--set", "server=chat2",
                    "--set", f"state={state}")
    return _chatops(c, "apply", plan["id"], "--yes", "--no-wait")


def _edge_drain(c, host: str) -> dict:
    """The edge's own view of its draining (GET /v1/admin/drain)."""
    import urllib.request
    proc = next(p for p in c.state["processes"] if p["name"] == f"edge-{host}")
    req = urllib.request.Request(f"http://{proc['address']}:17080/v1/admin/drain",
                                 headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.load(r)


def _status(c, host: str, server: str) -> str:
    stat = haproxy.fetch_stat(c.run / "haproxy" / f"{host}.sock")
    return next(r.status for r in stat.rows if r.proxy == BACKEND and r.name == server)


def _moved(report: dict, edge: str) -> None:
    """Every client of `edge` followed its RECONNECT to another edge, and nothing was lost."""
    assert report["completeness"] == 1.0 and not report["errors"], report
    assert report["duplicates"] == 0, report
    events = report["reconnect_events"]
    assert report["reconnects"] == len(events) > 0, report
    assert all(e["edge"] == edge and e["back_edge"] not in (None, edge) for e in events), events
    assert report["reconnections"]["lost"] == 0, report["reconnections"]


def test_drain_then_ready_under_traffic(monkeypatch):
    monkeypatch.setenv("CHATOPS_API_TOKEN", TOKEN)
    with live_controlplane(traffic=True, patch=_patch) as (c, _base):
        procs = {p["name"]: p for p in c.state["processes"]}
        front = procs["haproxy-chat1"]["address"]
        source = front.rsplit('.', 1)[0]
        reloads = _reloads(c)
        load = start_loadgen(c, f"{source}.78", clients=30, duration=12)
        try:
            time.sleep(3)
            held = _edge_drain(c, "chat2")["clients"]
            assert held > 0 and not _edge_drain(c, "chat2")["draining"]
            drained = _set(c, "drain")
            assert drained["state"] == "applied", drained
            assert "edge chat2 sent RECONNECT to" in json.dumps(drained), drained
            before = _sessions(c, "chat1")
            _connect(front, 12)
            after = _sessions(c, "chat1")
            assert after["chat2"] == before["chat2"], (before, after)      # nothing new to the drained edge
            assert after["chat1"] - before["chat1"] >= 12
            # Everyone left within the period: the loadgen's clients and the background traffic's moved.
            wait_for(lambda: _edge_drain(c, "chat2")["clients"] == 0, 6, what="chat2's clients to leave")
        finally:
            report = loadgen_report(load)
        _moved(report, "chat2")
        # TCP and WebSocket clients alike (a quarter of the loadgen's clients use WebSocket).
        events = report["reconnect_events"]
        assert {e["transport"] for e in events} == {"tcp", "ws"}, events
        log = RunDir(c.run).log("edge-chat2").read_text()
        assert "Draining: sent RECONNECT" in log and "Drain done" in log, log[-2000:]

        restored = _set(c, "ready")
        assert restored["state"] == "applied", restored
        assert "edge chat2 accepts clients again" in json.dumps(restored), restored
        wait_for(lambda: _status(c, "chat1", "chat2") == "UP", 10, what="HAProxy to see chat2 up again")
        before = _sessions(c, "chat1")
        after = _connect_held_until_chat2(front, c, before)
        assert after["chat2"] > before["chat2"], (before, after)

        assert _reloads(c) == reloads             # the runtime API, never a reload

        # SIGTERM (a rolling restart, systemd): chat1 stops accepting, drains, exits; the
        # supervisor starts it again.
        load = start_loadgen(c, f"{source}.79", clients=30, duration=10)
        try:
            time.sleep(3)
            pid = c.pid_of("edge-chat1")
            t0 = time.monotonic()
            os.kill(pid, signal.SIGTERM)
            wait_for(lambda: not os.path.exists(f"/proc/{pid}") or
                     open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z",
                     15, what="edge-chat1 to exit after draining")
            took = time.monotonic() - t0
        finally:
            report = loadgen_report(load)
        print(f"\nedge-chat1 exited {took:.1f} s after SIGTERM (drain_period {DRAIN_PERIOD}); "
              f"{report['reconnects']} loadgen clients moved")
        drains = [ln for ln in RunDir(c.run).log("edge-chat1").read_text().splitlines() if "Drain" in ln]
        print("\n".join(drains[-2:]))
        assert took < 4 + 3, took
        _moved(report, "chat1")
