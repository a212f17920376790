"""Service-to-service authentication of the chat services' internal HTTP (chat/service.py): every
`/v1/...` route of clue, the exchange and the edge's internal port wants the internal token, a call
without it changes nothing, /healthz and /metrics stay open, and a service that has no token
refuses to start. One live cluster for the module; a real IRC client watches for injected lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from collectors import services
from tests.chat.test_edge import Client
from tests.conftest import REPO, chatops, run_secrets, wait_for

TOKEN_ENV = "CHATOPS_INTERNAL_TOKEN"      # secrets.internal_token_env's default
CLUE, EXCHANGE, EDGE = 19000, 19100, 17080

# Every internal route but the admin one (test_admin.py covers that), and a path nobody serves.
ROUTES = [
    (CLUE, "POST", "/v1/auth", {"items": [{"token": "guess"}]}),
    (CLUE, "POST", "/v1/privmsg", {"items": []}),
    (CLUE, "POST", "/v1/roomstate", {"items": [{"login": "guess", "room": "lobby"}]}),
    (CLUE, "GET", "/v1/stats/keys", None),
    (CLUE, "GET", "/v1/stats/slots", None),
    (CLUE, "GET", "/v1/nothing", None),
    (EXCHANGE, "POST", "/v1/publish", {"items": []}),
    (EXCHANGE, "POST", "/v1/subscriptions", {"edge": "x", "url": "http://127.0.0.1:1/", "rooms": []}),
    (EXCHANGE, "GET", "/v1/subscriptions", None),
    (EDGE, "POST", "/v1/deliver", {"items": []}),
    (EDGE, "GET", "//v1/deliver", None),
    (EDGE, "GET", "/v1/members?room=lobby&nicks=alice", None),
]


def call(url: str, method: str = "GET", body=None, auth: str | None = None):
    """(status, headers, JSON body) of one request; `auth` is the whole Authorization value."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    if auth is not None:
        req.add_header("Authorization", auth)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            raw = resp.read()
            return resp.status, resp.headers, json.loads(raw) if raw.startswith(b"{") else raw
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        return exc.code, exc.headers, json.loads(raw) if raw.startswith(b"{") else raw


@pytest.fixture(scope="module")
def live(live_small_cluster):
    rc, cf, run = live_small_cluster
    address = cf.address("chat1")
    return rc, cf, run, address, run_secrets(rc.run)[TOKEN_ENV]


def test_every_internal_route_wants_the_internal_token(live):
    _rc, _cf, _run, address, token = live
    wrong = ["", "Bearer", "Bearer ", "Bearer wrong", f"Bearer {token}x", f"Bearer {token[:-1]}",
             f"Basic {token}", f"Bearer {token} extra", "Bearer \u00e9t\u00e9"]
    for port, method, path, body in ROUTES:
        url = f"http://{address}:{port}{path}"
        for auth in [None, *wrong]:
            try:
                status, headers, answer = call(url, method, body, auth)
            except UnicodeEncodeError:       # urllib will not send a non-Latin-1 header: nothing to test
                continue
            assert status == 401, (path, auth, answer)
            assert headers["WWW-Authenticate"] == "Bearer", (path, headers)
            assert TOKEN_ENV in answer["error"] and token not in json.dumps(answer), answer
    # The right token: the reads answer (the writes are exercised by the chat below).
    for port, path in ((CLUE, "/v1/stats/keys"), (CLUE, "/v1/stats/slots"), (EXCHANGE, "/v1/subscriptions")):
        status, _h, answer = call(f"http://{address}:{port}{path}", auth=f"Bearer {token}")
        assert status == 200, (path, answer)
    # Lower-case scheme is still the Bearer scheme (RFC 7235: case-insensitive).
    assert call(f"http://{address}:{CLUE}/v1/stats/slots", auth=f"bearer {token}")[0] == 200
    assert call(f"http://{address}:{CLUE}/v1/nothing", auth=f"Bearer {token}")[0] == 404


def test_healthz_and_metrics_stay_open(live):
    address = live[3]
    for port in (CLUE, EXCHANGE, EDGE):
        for path in ("/healthz", "/metrics"):
            status, _h, _body = call(f"http://{address}:{port}{path}")
            assert status == 200, (port, path)


def test_calls_without_the_token_change_nothing_and_chat_still_works(live):
    rc, _cf, _run, address, token = live

    def add_user(name: str) -> str:
        out = chatops("users", "add", name, "--config", str(rc.config), "--run-dir", str(rc.run))
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    viewer = Client(address, 6667, "justinfan7316")
    sender = Client(address, 6667, "authsender", add_user("authsender"))
    try:
        viewer.join("#lobby")
        sender.join("#lobby")
        wait_for(lambda: "lobby" in call(f"http://{address}:{EXCHANGE}/v1/subscriptions",
                                         auth=f"Bearer {token}")[2].get("chat1", {}).get("rooms", []),
                 10, what="the edge to subscribe")

        def line(text: str, login: str = "mallory") -> dict:
            return {"room": "lobby", "command": "PRIVMSG", "tags": {}, "params": ["#lobby", text],
                    "source": f"{login}!{login}@{login}.tmi.chatops.local", "origin": None}

        # An injected line straight into the edge, a publish past clue (no ban check, no rate
        # limit, forged badges), a message posted to clue as another login, a fake edge asking the
        # exchange for every room: all refused.
        injected = [
            (EDGE, "/v1/deliver", {"items": [line("injected into the edge")]}),
            (EXCHANGE, "/v1/publish", {"items": [line("published past clue")]}),
            (CLUE, "/v1/privmsg", {"items": [{"login": "authsender", "room": "lobby", "text": "forged sender",
                                              "edge": "chat1", "conn": 1}]}),
            (EXCHANGE, "/v1/subscriptions", {"edge": "evil", "url": f"http://{address}:1/v1/deliver",
                                             "rooms": ["lobby"], "full": True}),
        ]
        for port, path, body in injected:
            for auth in (None, "Bearer not-the-internal-token"):
                status, _h, answer = call(f"http://{address}:{port}{path}", "POST", body, auth)
                assert status == 401, (path, answer)
        subs = call(f"http://{address}:{EXCHANGE}/v1/subscriptions", auth=f"Bearer {token}")[2]
        assert "evil" not in subs and set(subs) == {"chat1"}, subs

        # The same delivery with the token reaches the viewer: the refusals above were the token's.
        status, _h, answer = call(f"http://{address}:{EDGE}/v1/deliver", "POST",
                                  {"items": [line("delivered with the token", "edgecheck")]},
                                  f"Bearer {token}")
        assert status == 200 and answer == {"results": [True]}, answer
        viewer.wait("pubmsg", lambda ev: ev.arguments == ["delivered with the token"])

        # Ordinary chat through HAProxy: edge -> clue -> exchange -> edge, every hop authenticated.
        sender.conn.privmsg("#lobby", "hello through every hop")
        got = viewer.wait("pubmsg", lambda ev: ev.arguments == ["hello through every hop"])
        assert got.source.nick == "authsender"
        viewer.pump(0.5)
        seen = [ev.arguments[0] for ev in viewer.events if ev.type == "pubmsg"]
        seen += ["delivered with the token", "hello through every hop"]
        assert not {"injected into the edge", "published past clue", "forged sender"} & set(seen), seen
    finally:
        viewer.close()
        sender.close()


def test_the_collector_sends_the_token_and_says_when_it_has_none(live, monkeypatch):
    _rc, cf, run, _address, _token = live
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with_run = services.collect(services.target_for(cf, "chat1", "clue", run=run))
    assert with_run.up and with_run.data.keys is not None and "keys" not in with_run.section_errors
    without = services.collect(services.target_for(cf, "chat1", "clue"))
    assert without.up and without.data.keys is None                      # /metrics needs no token
    assert TOKEN_ENV in without.section_errors["keys"], without.section_errors


def test_a_service_without_the_token_refuses_to_start(live, tmp_path):
    rc, _cf, run, _address, token = live
    env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "chat.exchange", "--config", str(rc.config),
                           "--host", "chat1", "--run-dir", str(tmp_path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0 and time.monotonic() - started < 30
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "refusing to start" in lines[0] and TOKEN_ENV in lines[0], proc.stderr
    assert proc.stdout == ""                                               # it never listened
    # Profile local with the variable unset: the run dir's secrets.env (what `chatops up` wrote).
    # In a child, since parse_args takes over the process's logging; the token to compare with
    # goes in on stdin, never on a command line.
    probe = ("import sys; from chat import service; "
             "ctx = service.parse_args('exchange', sys.argv[1:]); "
             "print(ctx.internal_token == sys.stdin.read().strip(), ctx.internal_token in repr(ctx))")
    proc = subprocess.run([sys.executable, "-c", probe, "--config", str(rc.config), "--host", "chat1",
                           "--run-dir", str(run.root)], cwd=REPO, env=env, input=token, capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 0 and proc.stdout.split()[-2:] == ["True", "False"], proc.stdout + proc.stderr
