"""Web hygiene of the control plane (issue 16), against the real app served by waitress (the
server `chatops controlplane` runs) on its listen address in a private loopback subnet:

- only the Host names the cluster file gives it (controlplane.listen, controlplane.public_url, and
  localhost/127.0.0.1 for a loopback listen) are answered; any other Host gets a 400, JSON on /api/;
- every response carries the security headers, and the dashboard works under its CSP in Chromium
  with no console error;
- the login form, and bad API tokens, are throttled per address: after 5 failures (10 for API
  tokens) a 429 with Retry-After, for a delay that grows each time, and a good login starts over.
"""

from __future__ import annotations

import http.client
import json
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlencode

import pytest

from tests.conftest import env_var, free_subnet, small_cluster, wait_for, write_cluster

TOKEN = "hardening-token-0123456789abcdef"
PORT = 5000
PUBLIC = "chatops.example.org"
LOCKOUT = 1          # the test app's first lockout, seconds (the default is a minute)
HEADERS = {"content-security-policy", "x-frame-options", "x-content-type-options", "referrer-policy"}


class Reply:
    def __init__(self, status: int, headers: dict[str, str], body: bytes):
        self.status, self.headers, self.body = status, headers, body

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    @property
    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return f"<{self.status} {self.headers.get('content-type')} {self.body[:300]!r}>"


class Served:
    """The app on address:PORT; `call` sends one raw request, from `source` if given."""

    def __init__(self, app, address: str):
        self.app, self.address = app, address
        self.base = f"http://{address}:{PORT}"

    def call(self, path: str, method: str = "GET", headers: dict | None = None, body: bytes | None = None,
             source: str | None = None) -> Reply:
        conn = http.client.HTTPConnection(self.address, PORT, timeout=15,
                                          source_address=(source, 0) if source else None)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            return Reply(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
        finally:
            conn.close()


@pytest.fixture
def served():
    from waitress.server import create_server

    from controlplane.web.app import create_app
    subnet = free_subnet()
    run = Path(tempfile.mkdtemp(prefix="co-", dir="/tmp"))
    doc = small_cluster(subnet)
    doc["controlplane"] = {"listen": {"address": f"{subnet}.100", "port": PORT},
                           "public_url": f"https://{PUBLIC}:8443/chatops"}
    config = write_cluster(run.parent / f"{run.name}.yaml", doc)
    with env_var("CHATOPS_API_TOKEN", TOKEN):
        app = create_app({"CLUSTER_FILE": str(config), "RUN_DIR": str(run), "SCHEDULER": False,
                          "LOGIN_LOCKOUT": LOCKOUT})
    server = create_server(app, host=f"{subnet}.100", port=PORT, threads=4)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    s = Served(app, f"{subnet}.100")
    try:
        wait_for(lambda: _answers(s), 10, what="the control plane to answer")
        yield s
    finally:
        server.trigger.pull_trigger(server.close)       # closed from its own loop, which then ends
        thread.join(10)
        server.task_dispatcher.shutdown()
        app.extensions["chatops.db"].close()
        shutil.rmtree(run, ignore_errors=True)
        config.unlink(missing_ok=True)


def _answers(s: Served) -> bool:
    try:
        return s.call("/healthz").status == 200
    except OSError:
        return False


# -- Host ---------------------------------------------------------------------------------------

def test_the_hosts_the_cluster_file_names_are_answered(served):
    for host in (f"{served.address}:{PORT}", served.address, PUBLIC, f"{PUBLIC}:8443",
                 f"localhost:{PORT}", "localhost", f"127.0.0.1:{PORT}"):
        for path in ("/", "/api/v1/jobs", "/healthz", "/login"):
            r = served.call(path, headers={"Host": host})
            assert r.status == 200, (host, path, r)


@pytest.mark.parametrize("host", ["evil.example", f"evil.example:{PORT}", "127.0.0.2", f"{PUBLIC}.evil.example",
                                  "", "a b", "localhost.", "chatops.example.org@evil.example"])
def test_any_other_host_gets_400_json_on_the_api_and_a_plain_page_elsewhere(served, host):
    r = served.call("/api/v1/jobs", headers={"Host": host})
    assert r.status == 400, r
    assert r.headers["content-type"].startswith("application/json"), r
    message = r.json["error"]["message"]
    assert r.json["error"]["status"] == 400 and "Host" in message and "controlplane.listen" in message
    page = served.call("/", headers={"Host": host})
    assert page.status == 400 and page.headers["content-type"].startswith("text/html"), page
    assert "Host" in page.text and "<nav>" not in page.text            # not the dashboard
    # a state-changing request from a foreign host is refused before anything else looks at it
    post = served.call("/login", "POST", headers={"Host": host, "Content-Type": "application/x-www-form-urlencoded"},
                       body=f"token={TOKEN}".encode())
    assert post.status == 400 and "set-cookie" not in post.headers, post
    api = served.call("/api/v1/jobs/x/run", "POST", headers={"Host": host, "Authorization": f"Bearer {TOKEN}"})
    assert api.status == 400, api


# -- headers ------------------------------------------------------------------------------------

def test_every_response_carries_the_security_headers(served):
    for path, method, status in (("/", "GET", 200), ("/shards", "GET", 200), ("/login", "GET", 200),
                                 ("/api/v1/jobs", "GET", 200), ("/static/dashboard.css", "GET", 200),
                                 ("/metrics", "GET", 200), ("/healthz", "GET", 200), ("/nope", "GET", 404),
                                 ("/api/v1/nope", "GET", 404), ("/login", "POST", 400),
                                 ("/api/v1/jobs/x/run", "POST", 401)):
        r = served.call(path, method)
        assert r.status == status, (path, r)
        assert HEADERS <= r.headers.keys(), (path, sorted(r.headers))
        assert r.headers["x-frame-options"] == "DENY"
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["referrer-policy"] in ("same-origin", "no-referrer", "strict-origin")
        csp = dict(d.strip().split(" ", 1) for d in r.headers["content-security-policy"].split(";") if d.strip())
        assert csp["default-src"] == "'self'" and csp["frame-ancestors"] == "'none'"
        assert "'unsafe-inline'" not in r.headers["content-security-policy"]
        assert "'unsafe-eval'" not in r.headers["content-security-policy"]
    refused = served.call("/", headers={"Host": "evil.example"})
    assert refused.status == 400 and HEADERS <= refused.headers.keys()


def test_the_dashboard_works_under_its_csp_in_chromium(served):
    from tests.controlplane.web.test_dashboard import new_browser
    driver = new_browser()
    try:
        for path in ("/", "/shards", "/slots", "/incidents", "/silences", "/plans", "/jobs", "/login"):
            driver.get(served.base + path)
            wait_for(lambda: driver.execute_script("return document.readyState") == "complete", 10,
                     what=f"{path} to load")
            assert driver.find_elements("css selector", "main#main"), path
            assert driver.execute_script("return getComputedStyle(document.body).fontFamily") != "Times New Roman"
        # the stylesheet applies (no inline style blocked) and the slot share bars have their width
        driver.get(served.base + "/slots")
        widths = driver.execute_script(
            "return Array.from(document.querySelectorAll('.sharebar .fill')).map("
            "function (e) { return e.getBoundingClientRect().width; });")
        assert widths and all(w > 0 for w in widths), widths
        # the refresh script runs: it swaps the main content in place
        driver.get(served.base + "/")
        wait_for(lambda: driver.execute_script("return window.__refreshes || 0") >= 1, 10, what="a refresh")
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == []
        csp = served.call("/slots").headers.get("content-security-policy")
        assert csp and "'unsafe-inline'" not in csp
    finally:
        driver.quit()


# -- throttling ---------------------------------------------------------------------------------

def _csrf_session(served: Served, source: str | None = None) -> tuple[str, str]:
    """(session cookie, CSRF token) of a fresh login form."""
    r = served.call("/login", source=source)
    cookie = r.headers["set-cookie"].split(";", 1)[0]
    return cookie, re.search(r'name="csrf_token" value="([^"]+)"', r.text).group(1)


def _login(served: Served, token: str, source: str | None = None) -> Reply:
    cookie, csrf = _csrf_session(served, source)
    return served.call("/login", "POST", source=source, body=urlencode({"token": token, "csrf_token": csrf}).encode(),
                       headers={"Cookie": cookie, "Content-Type": "application/x-www-form-urlencoded"})


def test_login_is_throttled_after_five_failures_for_a_growing_delay(served):
    for _ in range(5):
        assert _login(served, "wrong").status == 401
    locked = _login(served, "wrong")
    assert locked.status == 429 and locked.headers["retry-after"] == str(LOCKOUT), locked
    assert "<form" not in locked.text and "try again" in locked.text.lower()
    assert _login(served, TOKEN).status == 429           # locked: not even the right token is checked
    other = f"{served.address.rsplit('.', 1)[0]}.7"       # another address is not locked
    assert _login(served, TOKEN, source=other).status == 302
    time.sleep(LOCKOUT + 0.2)
    for _ in range(5):
        assert _login(served, "wrong").status == 401
    again = _login(served, "wrong")
    assert again.status == 429 and int(again.headers["retry-after"]) == 2 * LOCKOUT, again
    time.sleep(2 * LOCKOUT + 0.2)
    assert _login(served, TOKEN).status == 302           # a good login resets the count
    for _ in range(5):
        assert _login(served, "wrong").status == 401
    assert _login(served, "wrong").headers["retry-after"] == str(LOCKOUT)


def test_bad_api_tokens_are_throttled_per_address(served):
    path = "/api/v1/silences"
    body = json.dumps({"matchers": ["cluster=testing"], "for": "1h"}).encode()
    json_headers = {"Content-Type": "application/json"}
    for _ in range(10):          # scripts share addresses: API tokens are allowed 10 (the login form 5)
        assert served.call(path, "POST", {**json_headers, "Authorization": "Bearer wrong"}, body).status == 401
    assert _login(served, TOKEN).status == 302               # the login form keeps its own count
    locked = served.call(path, "POST", {**json_headers, "Authorization": "Bearer wrong"}, body)
    assert locked.status == 429 and locked.headers["retry-after"] == str(LOCKOUT), locked
    assert locked.headers["content-type"].startswith("application/json") and locked.json["error"]["status"] == 429
    assert served.call(path, "POST", {**json_headers, "Authorization": f"Bearer {TOKEN}"}, body).status == 429
    other = f"{served.address.rsplit('.', 1)[0]}.8"
    ok = served.call(path, "POST", {**json_headers, "Authorization": f"Bearer {TOKEN}"}, body, source=other)
    assert ok.status == 201, ok
    assert served.call("/api/v1/jobs").status == 200        # reading stays open while locked
    time.sleep(LOCKOUT + 0.2)
    ok = served.call(path, "POST", {**json_headers, "Authorization": f"Bearer {TOKEN}"}, body)
    assert ok.status == 201, ok


def test_the_throttle_forgets_the_oldest_addresses_beyond_its_bound():
    from controlplane.web.auth import Throttle
    t = Throttle(failures=2, window=60, delay=60, max_delay=900, max_entries=3)
    for i in range(10):
        t.failed(f"127.0.0.{i}", now=100.0 + i)
    assert len(t) == 3
    t.failed("127.0.0.9", now=120.0)
    assert t.retry_after("127.0.0.9", now=121.0) == 59
    assert t.retry_after("127.0.0.8", now=121.0) == 0
