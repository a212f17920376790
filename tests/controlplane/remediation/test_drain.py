"""server_state drain of one edge under traffic, through HAProxy's runtime API: new IRC
connections go only to the other edge, connected clients keep chatting (a load generator across
the drain loses nothing and sees no disconnect), `ready` gives the edge back, and no HAProxy
reloads (the master's reload count is unchanged)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

from cluster.rundir import RunDir
from collectors import haproxy
from controlplane.remediation.proxy_reload import _show_proc
from tests.conftest import REPO, live_controlplane, loadgen_report, start_loadgen

TOKEN = "drain-test-token"
BACKEND = "be_edge_main"


def _patch(doc: dict) -> None:
    subnet = doc["hosts"]["chat1"]["address"].rsplit(".", 1)[0]
    doc["hosts"]["chat2"] = {"address": f"{subnet}.2"}
    doc["clusters"]["main"]["hosts"] = ["chat1", "chat2"]


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


def test_drain_then_ready_under_traffic(monkeypatch):
    monkeypatch.setenv("CHATOPS_API_TOKEN", TOKEN)
    with live_controlplane(traffic=True, patch=_patch) as (c, _base):
        procs = {p["name"]: p for p in c.state["processes"]}
        front = procs["haproxy-chat1"]["address"]
        reloads = _reloads(c)
        load = start_loadgen(c, f"{front.rsplit('.', 1)[0]}.78", clients=30, duration=14)
        try:
            time.sleep(3)
            drained = _set(c, "drain")
            assert drained["state"] == "applied", drained
            before = _sessions(c, "chat1")
            _connect(front, 12)
            after = _sessions(c, "chat1")
            assert after["chat2"] == before["chat2"], (before, after)      # nothing new to the drained edge
            assert after["chat1"] - before["chat1"] >= 12
        finally:
            report = loadgen_report(load)
        assert report["completeness"] == 1.0 and not report["errors"].get("disconnected"), report

        restored = _set(c, "ready")
        assert restored["state"] == "applied", restored
        before = _sessions(c, "chat1")
        after = _connect_held_until_chat2(front, c, before)
        assert after["chat2"] > before["chat2"], (before, after)

        assert _reloads(c) == reloads             # the runtime API, never a reload
