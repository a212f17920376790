"""The admin route every chat service serves, /v1/admin/upstream: who may use it, what it refuses,
and the runtime keepalive switch the control plane's set_keepalive action relies on — turned on
under a steady stream of real messages, with every message counted at a real subscriber."""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web

from chat.upstream import Pool, Slots
from cluster.rundir import RunDir
from tests.conftest import (
    REPO,
    RunningCluster,
    chatops,
    cluster_up,
    free_subnet,
    run_secrets,
    small_cluster,
    wait_for,
    write_cluster,
)

TOKEN_ENV = "CHATOPS_TEST_ADMIN_TOKEN"       # our own name, so a developer's real token never leaks in
PORTS = {"exchange": 19100, "clue": 19000, "edge": 17080}


def call(method: str, url: str, *, token: str | None = None, body=None, raw: bytes | None = None,
         scheme: str = "Bearer") -> tuple[int, dict]:
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    if token is not None:
        req.add_header("Authorization", f"{scheme} {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def metric(url: str, name: str) -> float:
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    return sum(float(ln.split()[-1]) for ln in text.splitlines()
               if ln.startswith((name + " ", name + "{")))


@dataclass
class Live:
    rc: RunningCluster
    subnet: str
    token: str

    def admin(self, service: str) -> str:
        return f"http://{self.subnet}.1:{PORTS[service]}/v1/admin/upstream"

    def metrics(self, service: str) -> str:
        return f"http://{self.subnet}.1:{PORTS[service]}/metrics"


@pytest.fixture(scope="module")
def live():
    """small_cluster() with the exchange's keepalive off, as in 2014, and an admin token."""
    subnet = free_subnet()
    run = Path(tempfile.mkdtemp(prefix="co-", dir="/tmp"))
    doc = small_cluster(subnet)
    doc["controlplane"]["auth_token_env"] = TOKEN_ENV
    doc["clusters"]["main"]["services"] = {"exchange": {"keepalive": False}}
    config = write_cluster(run.parent / f"{run.name}.yaml", doc)
    token = secrets.token_urlsafe(24)
    os.environ[TOKEN_ENV] = token            # `chatops up` hands its environment to the services
    try:
        with cluster_up(config, run) as rc:
            yield Live(rc, subnet, token)
    finally:
        os.environ.pop(TOKEN_ENV, None)
        shutil.rmtree(run, ignore_errors=True)
        config.unlink(missing_ok=True)


# -- who may call it --

@pytest.mark.parametrize("service", sorted(PORTS))
def test_every_service_wants_the_token(live, service):
    url = live.admin(service)
    for method, body in (("GET", None), ("PUT", {"pool_size": 3})):
        for scheme, token in (("Bearer", None), ("Bearer", "wrong"), ("Bearer", live.token + "x"),
                              ("Basic", live.token), ("Bearer", "")):
            status, answer = call(method, url, token=token, body=body, scheme=scheme)
            assert status == 401, (method, scheme, token, answer)
    status, answer = call("GET", url, token=live.token)
    assert status == 200 and answer["host"] == "chat1"
    assert set(answer["upstreams"]) == {{"exchange": "edges", "edge": "clue", "clue": "exchange"}[service]}


def test_without_the_token_variable_the_route_is_refused_not_open(tmp_path):
    """A service started without the variable answers 403 naming it, whatever is sent."""
    subnet = free_subnet()
    doc = small_cluster(subnet)
    doc["controlplane"]["auth_token_env"] = "CHATOPS_TEST_UNSET_TOKEN"
    config = write_cluster(tmp_path / "cluster.yaml", doc)
    env = {k: v for k, v in os.environ.items() if k != "CHATOPS_TEST_UNSET_TOKEN"}
    env["CHATOPS_INTERNAL_TOKEN"] = secrets.token_urlsafe(24)       # without it the service would not start
    proc = subprocess.Popen([sys.executable, "-m", "chat.exchange", "--config", str(config), "--host", "chat1"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://{subnet}.1:19100"
    try:
        def up():
            assert proc.poll() is None, proc.stdout.read()
            try:
                return call("GET", base + "/healthz")[0] == 200
            except OSError:
                return False
        wait_for(up, 15, what="the exchange")
        for method, body, token in (("GET", None, None), ("GET", None, "anything"),
                                    ("PUT", {"keepalive": True}, ""), ("PUT", {"keepalive": True}, "x")):
            status, answer = call(method, base + "/v1/admin/upstream", token=token, body=body)
            assert status == 403, answer
            assert "CHATOPS_TEST_UNSET_TOKEN" in answer["error"]
        assert metric(base + "/metrics", "chat_exchange_keepalive") == 1       # unchanged
    finally:
        proc.terminate()
        out = proc.communicate(timeout=10)[0]
    assert re.search(r"exchange: \[admin\] admin route refused: token variable not set .*"
                     r"variable=CHATOPS_TEST_UNSET_TOKEN", out), out


# -- what it refuses --

@pytest.mark.parametrize("raw, field", [
    (b"keepalive=true", "body"),
    (b"\xff\xfe{", "body"),
    (b"[true]", "body"),
    (b"{}", "body"),
    (b'{"keepalive": true, "pool": 4}', "pool"),
    (b'{"keepalive": "yes"}', "keepalive"),
    (b'{"keepalive": 1}', "keepalive"),
    (b'{"keepalive": null}', "keepalive"),
    (b'{"pool_size": 0}', "pool_size"),
    (b'{"pool_size": 1025}', "pool_size"),
    (b'{"pool_size": "4"}', "pool_size"),
    (b'{"pool_size": 4.0}', "pool_size"),
    (b'{"pool_size": true}', "pool_size"),
    (b'{"keepalive": true, "pool_size": -1}', "pool_size"),
])
def test_bad_payloads_are_refused_by_field_and_change_nothing(live, raw, field):
    url = live.admin("exchange")
    before = call("GET", url, token=live.token)[1]["upstreams"]
    status, answer = call("PUT", url, token=live.token, raw=raw)
    assert status == 400, answer
    assert answer["field"] == field and answer["error"].startswith(f"{field}: ")
    assert call("GET", url, token=live.token)[1]["upstreams"] == before


# -- the switch itself, in process: the mechanism that keeps requests whole --

def test_a_swap_lets_requests_in_flight_finish_on_the_old_session():
    async def scenario():
        release = asyncio.Event()

        async def slow(_request):
            await release.wait()
            return web.json_response({"ok": True})
        app = web.Application()
        app.router.add_get("/", slow)
        runner = web.AppRunner(app)
        await runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        await web.SockSite(runner, sock).start()
        pool = Pool(pool_size=2, keepalive=False, local_address=None, token=None)
        slots = pool.slots()

        async def request():
            async with slots:
                with pool.lease() as session:
                    async with session.get(f"http://127.0.0.1:{port}/") as resp:
                        return await resp.json()
        first = asyncio.ensure_future(request())
        await asyncio.sleep(0.1)
        old = pool.session
        assert pool.reconfigure(keepalive=True, pool_size=1)
        assert pool.session is not old and not old.closed        # in flight: kept open
        assert slots.size == 1 and slots.busy == 1
        second = asyncio.ensure_future(request())                  # waits: the pool shrank to 1
        await asyncio.sleep(0.05)
        assert not second.done()
        release.set()
        assert await first == {"ok": True} and await second == {"ok": True}
        await asyncio.sleep(0)
        await asyncio.gather(*pool._closing)
        assert old.closed and not pool.session.closed              # closed once its last request ended
        assert not pool.reconfigure(keepalive=True, pool_size=1)   # same settings: no new session
        await pool.close()
        await runner.cleanup()
    asyncio.run(scenario())


def test_slots_pass_a_slot_on_when_a_waiter_is_cancelled():
    async def scenario():
        slots = Slots(1)
        await slots.__aenter__()
        waiter = asyncio.ensure_future(slots.__aenter__())
        behind = asyncio.ensure_future(slots.__aenter__())
        await asyncio.sleep(0)
        await slots.__aexit__()          # hands the slot to `waiter`...
        waiter.cancel()                  # ...which is cancelled before it runs
        await asyncio.sleep(0)
        await asyncio.wait_for(behind, 1)
        assert slots.busy == 1
        slots.resize(3)
        assert slots.busy == 1 and not slots._waiters
    asyncio.run(scenario())


# -- the switch on a live cluster, under traffic --

class IrcReader:
    """A raw IRC connection whose lines a thread collects."""

    def __init__(self, address: str, hello: str):
        self.sock = socket.create_connection((address, 6667), timeout=10)
        self.sock.settimeout(None)      # the reader blocks until close() shuts the socket down
        self.lines: list[str] = []
        self.lock = threading.Lock()
        self.sock.sendall(hello.encode())
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        buf = b""
        while True:
            try:
                chunk = self.sock.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
            *done, buf = buf.split(b"\r\n")
            with self.lock:
                self.lines.extend(d.decode(errors="replace") for d in done)

    def seen(self, needle: str) -> bool:
        with self.lock:
            return any(needle in ln for ln in self.lines)

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass                        # already gone
        self.sock.close()
        self.thread.join(5)


def _ratio(a: dict, b: dict) -> float:
    requests = b["requests"] - a["requests"]
    assert requests > 0
    return (b["opened"] - a["opened"]) / requests


def test_keepalive_switched_on_under_traffic_loses_no_message(live, capsys):
    address = f"{live.subnet}.1"
    exchange = live.metrics("exchange")

    def counters() -> dict:
        return {"opened": metric(exchange, "chat_exchange_connections_opened_total"),
                "requests": metric(exchange, "chat_exchange_request_seconds_count")}

    added = chatops("users", "add", "pacer", "--bot", "--config", str(live.rc.config), "--run-dir", str(live.rc.run))
    assert added.returncode == 0, added.stderr
    viewer = IrcReader(address, "NICK justinfan4242\r\nJOIN #lobby\r\n")
    sender = IrcReader(address, f"PASS {added.stdout.strip()}\r\nNICK pacer\r\nJOIN #lobby\r\n")
    sent = 0
    stop = threading.Event()

    def send() -> None:
        nonlocal sent
        while not stop.is_set():        # steady: ~150 messages a second, one line each
            sender.sock.sendall(f"PRIVMSG #lobby :seq {sent}\r\n".encode())
            sent += 1
            time.sleep(1 / 150)

    try:
        wait_for(lambda: viewer.seen(" 366 ") and sender.seen(" 366 "), 10, what="both to join")
        internal = run_secrets(live.rc.run)["CHATOPS_INTERNAL_TOKEN"]
        wait_for(lambda: "lobby" in call("GET", f"http://{address}:19100/v1/subscriptions",
                                         token=internal)[1].get("chat1", {}).get("rooms", []),
                 10, what="the edge to subscribe")
        start = counters()
        pacer = threading.Thread(target=send)
        pacer.start()
        time.sleep(2.5)
        before_switch = counters()
        status, answer = call("PUT", live.admin("exchange"), token=live.token, body={"keepalive": True, "pool_size": 4})
        after_switch = counters()
        assert status == 200, answer
        assert answer["changed"] == ["edges"]
        assert answer["upstreams"]["edges"] == {"keepalive": True, "pool_size": 4}
        assert answer["was"]["edges"] == {"keepalive": False, "pool_size": 2}
        time.sleep(1.0)
        # The other two hops switch mid-stream too: the same swap, through the same route.
        for service in ("edge", "clue"):
            status, answer = call("PUT", live.admin(service), token=live.token, body={"pool_size": 3})
            assert status == 200 and answer["changed"], answer
        time.sleep(2.5)
        stop.set()
        pacer.join()

        def counted() -> Counter:
            with viewer.lock:
                return Counter(int(m.group(1)) for ln in viewer.lines
                               if (m := re.search(r" PRIVMSG #lobby :seq (\d+)$", ln)))
        try:
            wait_for(lambda: len(counted()) >= sent, 20, what=f"all {sent} messages at the viewer")
        except AssertionError:
            pass                        # the checks below say which are missing
        time.sleep(0.5)                 # room for a late duplicate to show
        end = counters()
    finally:
        stop.set()
        viewer.close()
        sender.close()

    seen = counted()
    assert set(seen) == set(range(sent)), f"missing: {sorted(set(range(sent)) - set(seen))[:20]}"
    assert [n for n, c in seen.items() if c != 1] == [], "delivered more than once"
    with sender.lock:
        assert [ln for ln in sender.lines if "NOTICE" in ln] == []     # none refused either
    assert metric(exchange, 'chat_exchange_deliveries_total{edge="chat1",result="ok"}') == metric(
        exchange, "chat_exchange_deliveries_total")

    off, on = _ratio(start, before_switch), _ratio(after_switch, end)
    with capsys.disabled():
        print(f"\n{sent} messages; new connections per delivery request: keepalive off {off:.3f} "
              f"({before_switch['requests'] - start['requests']:.0f} requests), "
              f"after the switch {on:.4f} ({end['requests'] - after_switch['requests']:.0f} requests)")
    assert off >= 0.9                   # one connection per request, as in 2014
    assert on < 0.05

    # The settings, the gauges and the log say so.
    assert call("GET", live.admin("exchange"), token=live.token)[1]["upstreams"] == {
        "edges": {"keepalive": True, "pool_size": 4}}
    assert call("GET", live.admin("edge"), token=live.token)[1]["upstreams"] == {
        "clue": {"keepalive": True, "pool_size": 3}}
    assert call("GET", live.admin("clue"), token=live.token)[1]["upstreams"] == {
        "exchange": {"keepalive": True, "pool_size": 3}}
    assert metric(exchange, "chat_exchange_keepalive") == 1
    assert metric(exchange, "chat_exchange_pool_size") == 4
    assert metric(live.metrics("edge"), "chat_edge_clue_pool_size") == 3
    logs = RunDir(live.rc.run)
    line = ('exchange: [admin] upstream keepalive=True pool_size=4 was="keepalive=False pool_size=2" '
            'upstream=edges')
    assert line in logs.log("exchange-chat1").read_text()
    assert "tmi_edge: [admin] upstream keepalive=True pool_size=3 " in logs.log("edge-chat1").read_text()
    for path in (Path(live.rc.run) / "logs").iterdir():
        assert live.token not in path.read_text(errors="replace"), path

    # Idempotent: the same settings again change nothing and log nothing.
    status, answer = call("PUT", live.admin("exchange"), token=live.token, body={"keepalive": True})
    assert status == 200 and answer["changed"] == [] and answer["was"] == {}
    assert logs.log("exchange-chat1").read_text().count("[admin] upstream") == 1
