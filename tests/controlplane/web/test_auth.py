"""Auth, first step: the token comes only from the environment variable the cluster file names,
state-changing routes demand it (Bearer) or a logged-in session with a CSRF token, logins never
redirect off-site, and the token never reaches a log, a page or the audit actor."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import yaml
from flask import Flask, jsonify
from jinja2 import DictLoader

from cluster import clusterfile
from controlplane.web import auth
from tests.conftest import small_cluster

TOKEN = "s3cret-token-for-tests-0123456789"
TEST_BASE = ('<!doctype html><title>{% block title %}{% endblock %}</title>'
             '<main>{% block content %}{% endblock %}</main>')


def spec(**controlplane):
    doc = small_cluster("127.77.1")
    doc["controlplane"].update(controlplane)
    return clusterfile.parse(yaml.safe_dump(doc), "test")


def tiny_app(cluster=None, **config) -> Flask:
    """A Flask app with auth and a few routes, standing in for the real one."""
    app = Flask(__name__)
    app.config.update(TESTING=True, CLUSTER=cluster if cluster is not None else spec(), **config)
    app.jinja_loader = DictLoader({"base.html": TEST_BASE})  # base.html belongs to the dashboard
    auth.init_app(app)

    @app.get("/")
    def index():
        return "home"

    @app.get("/api/v1/things")
    def things():
        return jsonify([])

    @app.post("/api/v1/things")
    @auth.require_auth
    def change_things():
        return jsonify({"actor": auth.current_actor()})

    @app.route("/actions/restart/<name>", methods=["GET", "POST"])
    @auth.require_auth
    def restart(name):
        return f"restarted {name} as {auth.current_actor()}"

    return app


@pytest.fixture
def token_env(monkeypatch):
    monkeypatch.setenv("CHATOPS_API_TOKEN", TOKEN)


@pytest.fixture
def app(token_env):
    return tiny_app()


def csrf_from(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def login(client, token=TOKEN, next_=None):
    page = client.get("/login")
    data = {"token": token, "csrf_token": csrf_from(page.text)}
    if next_ is not None:
        data["next"] = next_
    return client.post("/login", data=data)


def bearer(token=TOKEN):
    return {"Authorization": f"Bearer {token}"}


# -- where the token comes from --

def test_token_comes_from_the_variable_the_cluster_file_names(monkeypatch):
    monkeypatch.setenv("CHATOPS_API_TOKEN", "not-this-one")
    monkeypatch.setenv("OTHER_TOKEN_VAR", TOKEN)
    app = tiny_app(spec(auth_token_env="OTHER_TOKEN_VAR"))
    client = app.test_client()
    assert client.post("/api/v1/things", headers=bearer()).status_code == 200
    assert client.post("/api/v1/things", headers=bearer("not-this-one")).status_code == 401


@pytest.mark.parametrize("value", [None, "", "   "])
def test_unset_token_refuses_every_change_saying_which_variable(monkeypatch, value):
    if value is None:
        monkeypatch.delenv("CHATOPS_API_TOKEN", raising=False)
    else:
        monkeypatch.setenv("CHATOPS_API_TOKEN", value)
    client = tiny_app().test_client()
    for headers in ({}, bearer(""), bearer("anything")):
        r = client.post("/api/v1/things", headers=headers)
        assert r.status_code == 403 and "CHATOPS_API_TOKEN" in r.get_json()["error"]["message"]
    r = client.post("/actions/restart/x")
    assert r.status_code == 403 and "CHATOPS_API_TOKEN" in r.text
    page = client.get("/login")
    assert page.status_code == 403 and "CHATOPS_API_TOKEN" in page.text and "<form" not in page.text
    assert client.get("/api/v1/things").status_code == 200  # reading stays open


def test_token_is_read_once_at_init(monkeypatch, app):
    monkeypatch.setenv("CHATOPS_API_TOKEN", "changed-later")
    client = app.test_client()
    assert client.post("/api/v1/things", headers=bearer()).status_code == 200
    assert client.post("/api/v1/things", headers=bearer("changed-later")).status_code == 401


def test_secret_key_is_kept_or_drawn_per_process(token_env):
    assert tiny_app(SECRET_KEY="fixed").config["SECRET_KEY"] == "fixed"
    a, b = tiny_app().config["SECRET_KEY"], tiny_app().config["SECRET_KEY"]
    assert len(a) == 64 and a != b


# -- Bearer --

def test_bearer_token_works_without_csrf_or_cookies(app):
    client = app.test_client()
    r = client.post("/api/v1/things", headers=bearer())
    assert r.status_code == 200 and r.get_json()["actor"] == "token:127.0.0.1"
    assert client.post("/actions/restart/edge", headers=bearer()).status_code == 200
    assert "Set-Cookie" not in r.headers


@pytest.mark.parametrize("headers", [{}, bearer("wrong"), bearer(""), {"Authorization": "Basic Zm9vOmJhcg=="},
                                     bearer(TOKEN + "x"), bearer(TOKEN[:-1])])
def test_api_without_a_valid_token_gets_401_with_a_challenge(app, headers):
    r = app.test_client().post("/api/v1/things", headers=headers)
    assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
    assert r.is_json and r.get_json()["error"]["message"]


# -- browsers: login, CSRF, logout --

def test_browser_without_session_is_sent_to_login_and_back(app):
    client = app.test_client()
    r = client.get("/actions/restart/edge?force=1")
    assert r.status_code == 302 and r.headers["Location"].startswith("/login?next=")
    target = client.get(r.headers["Location"])
    assert target.status_code == 200 and 'name="next" value="/actions/restart/edge?force=1"' in target.text
    done = client.post("/login", data={"token": TOKEN, "csrf_token": csrf_from(target.text),
                                       "next": "/actions/restart/edge?force=1"})
    assert done.status_code == 302 and done.headers["Location"] == "/actions/restart/edge?force=1"
    assert client.get("/actions/restart/edge").text == "restarted edge as session:127.0.0.1"


def test_anonymous_post_from_a_form_returns_to_the_form_page(app):
    r = app.test_client().post("/actions/restart/edge", headers={"Referer": "http://localhost/shards?x=1"})
    assert r.status_code == 302 and r.headers["Location"] == "/login?next=/shards?x%3D1"
    r = app.test_client().post("/actions/restart/edge", headers={"Referer": "http://evil.example/x"})
    assert r.headers["Location"] == "/login?next=/"


def test_wrong_token_rerenders_the_form_with_401(app):
    client = app.test_client()
    r = login(client, token="nope")
    assert r.status_code == 401 and "not right" in r.text and "<form" in r.text
    assert client.post("/actions/restart/x").status_code == 302  # still not logged in


def test_login_itself_needs_the_csrf_token(app):
    client = app.test_client()
    client.get("/login")
    r = client.post("/login", data={"token": TOKEN})
    assert r.status_code == 400 and "CSRF" in r.text
    r = client.post("/login", data={"token": TOKEN, "csrf_token": "forged"})
    assert r.status_code == 400


@pytest.mark.parametrize("target", ["//evil.example/x", "https://evil.example/", "/\\evil.example",
                                    "javascript:alert(1)", "evil.example", "/\t/evil.example", ""])
def test_login_never_redirects_off_site(app, target):
    r = login(app.test_client(), next_=target)
    assert r.status_code == 302 and r.headers["Location"] == "/"


def test_session_posts_need_the_csrf_token(app):
    client = app.test_client()
    assert login(client).status_code == 302
    token = _csrf_of(client)
    missing = client.post("/actions/restart/edge")
    assert missing.status_code == 400 and "text/html" in missing.content_type and "CSRF" in missing.text
    api_missing = client.post("/api/v1/things")
    assert api_missing.status_code == 400 and "CSRF" in api_missing.get_json()["error"]["message"]
    assert client.post("/actions/restart/edge", data={"csrf_token": "wrong"}).status_code == 400
    ok = client.post("/actions/restart/edge", data={"csrf_token": token})
    assert ok.status_code == 200 and ok.text == "restarted edge as session:127.0.0.1"
    ok = client.post("/api/v1/things", headers={"X-CSRF-Token": token})
    assert ok.status_code == 200 and ok.get_json()["actor"] == "session:127.0.0.1"


def _csrf_of(client) -> str:
    """The logged-in session's CSRF token, as a page would render it."""
    with client.session_transaction() as s:
        return s["csrf"]


def test_login_starts_a_fresh_csrf_token(app):
    client = app.test_client()
    before = csrf_from(client.get("/login").text)
    login(client)
    assert _csrf_of(client) != before


def test_logout_ends_the_session(app):
    client = app.test_client()
    login(client)
    r = client.post("/logout", data={"csrf_token": _csrf_of(client)})
    assert r.status_code == 302 and r.headers["Location"] == "/login"
    assert client.post("/actions/restart/edge").status_code == 302
    assert client.post("/logout").status_code == 302  # anonymous: to the login page, nothing else


def test_changing_the_token_ends_old_sessions(monkeypatch):
    monkeypatch.setenv("CHATOPS_API_TOKEN", TOKEN)
    old = tiny_app(SECRET_KEY="kept-across-restarts")
    client = old.test_client()
    login(client)
    cookie = client.get_cookie("session").value
    monkeypatch.setenv("CHATOPS_API_TOKEN", "the-new-token-after-rotation")
    same = tiny_app(SECRET_KEY="kept-across-restarts").test_client()
    same.set_cookie("session", cookie)
    assert same.get("/actions/restart/x").status_code == 302
    monkeypatch.setenv("CHATOPS_API_TOKEN", TOKEN)  # same token, same key: the session survives
    back = tiny_app(SECRET_KEY="kept-across-restarts").test_client()
    back.set_cookie("session", cookie)
    assert back.get("/actions/restart/x").status_code == 200


def test_forgotten_require_auth_still_gets_csrf(app):
    @app.post("/unguarded")
    def unguarded():
        return "changed"

    client = app.test_client()
    assert client.post("/unguarded").status_code == 400
    assert client.post("/unguarded", headers=bearer()).status_code == 200


def test_the_token_never_reaches_logs_pages_or_the_actor(app, caplog):
    caplog.set_level(logging.DEBUG)
    client = app.test_client()
    seen = [client.get("/login"), login(client, token="wrong"), login(client),
            client.post("/api/v1/things", headers={**bearer(), "X-CSRF-Token": "x"}),
            client.post("/api/v1/things", headers=bearer("wrong"))]
    for r in seen:
        assert TOKEN not in r.get_data(as_text=True)
        assert all(TOKEN not in v for _, v in r.headers)
    assert TOKEN not in caplog.text
    assert "failed login" in caplog.text


# -- X-Chatops-Actor: a token caller names itself --

def test_a_token_caller_names_itself_and_keeps_its_address(app):
    client = app.test_client()
    r = client.post("/api/v1/things", headers={**bearer(), "X-Chatops-Actor": "ansible:kill-leaked.yml"})
    assert r.status_code == 200 and r.get_json()["actor"] == "ansible:kill-leaked.yml (token:127.0.0.1)"
    r = client.post("/api/v1/things", headers={**bearer(), "X-Chatops-Actor": "ops@example/bot-1_2.x"})
    assert r.get_json()["actor"] == "ops@example/bot-1_2.x (token:127.0.0.1)"
    assert client.post("/api/v1/things", headers=bearer()).get_json()["actor"] == "token:127.0.0.1"


@pytest.mark.parametrize("name", ["", "a" * 65, "two words", "ansible:x\ty", "évé", "x;rm", "a(b)",
                                  "<script>"])
def test_a_malformed_actor_name_gets_400_saying_what_it_accepts(app, name):
    r = app.test_client().post("/api/v1/things", headers={**bearer(), "X-Chatops-Actor": name})
    assert r.status_code == 400
    message = r.get_json()["error"]["message"]
    assert "X-Chatops-Actor" in message and "1 to 64 characters" in message
    assert name not in message or name == ""  # the bad value is not echoed back


def test_the_actor_name_does_not_stand_in_for_the_token(app):
    client = app.test_client()
    for headers in ({"X-Chatops-Actor": "ansible:x"}, {**bearer("wrong"), "X-Chatops-Actor": "ansible:x"}):
        assert client.post("/api/v1/things", headers=headers).status_code == 401


def test_a_browser_session_cannot_rename_itself(app):
    client = app.test_client()
    login(client)
    csrf = _csrf_of(client)
    r = client.post("/api/v1/things", headers={"X-CSRF-Token": csrf, "X-Chatops-Actor": "ansible:x"})
    assert r.status_code == 400 and "token callers" in r.get_json()["error"]["message"]
    ok = client.post("/api/v1/things", headers={"X-CSRF-Token": csrf})
    assert ok.get_json()["actor"] == "session:127.0.0.1"


def test_the_real_app_audits_the_named_actor(real_app):
    client = real_app.test_client()
    headers = {**bearer(), "X-Chatops-Actor": "ansible:silence.yml"}
    r = client.post("/api/v1/silences", json={"matchers": ["cluster=testing"], "for": "1h"}, headers=headers)
    assert r.status_code == 201, r.text
    assert r.get_json()["created_by"] == "ansible:silence.yml (token:127.0.0.1)"
    audit = client.get("/api/v1/audit?limit=1").get_json()
    record = (audit.get("audit") or audit.get("records"))[0]
    assert record["actor"] == "ansible:silence.yml (token:127.0.0.1)" and TOKEN not in str(record)
    bad = client.post("/api/v1/silences", json={"matchers": ["cluster=testing"], "for": "1h"},
                      headers={**bearer(), "X-Chatops-Actor": "no spaces allowed"})
    assert bad.status_code == 400
    assert len(client.get("/api/v1/silences").get_json()["silences"]) == 1  # the refused one wrote nothing


# -- every mutating route demands auth --

def mutating_rules(app: Flask) -> list[tuple[str, str]]:
    """(method, concrete path) for every rule that can change state, except /login."""
    found = []
    for rule in app.url_map.iter_rules():
        if rule.rule == "/login":
            continue
        path = re.sub(r"<(?:[^:<>]+:)?[^<>]+>", "1", rule.rule)
        for method in sorted((rule.methods or set()) & auth.MUTATING):
            found.append((method, path))
    return found


def assert_refused(app: Flask, method: str, path: str) -> None:
    bare = app.test_client()
    with_csrf = app.test_client()  # an anonymous browser that holds a CSRF token still gets nothing
    token = csrf_from(with_csrf.get("/login").text)
    for client, kwargs in ((bare, {}), (with_csrf, {"data": {"csrf_token": token},
                                                     "headers": {"X-CSRF-Token": token}})):
        r = client.open(path, method=method, **kwargs)
        refused = r.status_code in (401, 403) or (
            r.status_code in (302, 303) and r.headers["Location"].startswith("/login"))
        assert refused, f"{method} {path} answered {r.status_code} to an anonymous client"


@pytest.mark.parametrize("method,path", mutating_rules(tiny_app()))
def test_every_mutating_route_demands_auth(app, method, path):
    assert_refused(app, method, path)


def test_the_route_walk_would_catch_a_forgotten_decorator(app):
    @app.post("/actions/oops")
    def oops():
        return "changed"

    assert ("POST", "/actions/oops") in mutating_rules(app)
    with pytest.raises(AssertionError, match="POST /actions/oops answered"):
        assert_refused(app, "POST", "/actions/oops")


# -- the real app --

@pytest.fixture
def real_app(token_env, tmp_path, run_dir):
    from controlplane.web.app import create_app
    from tests.conftest import write_cluster
    cluster = write_cluster(tmp_path / "cluster.yaml", small_cluster("127.77.2"))
    app = create_app({"CLUSTER_FILE": str(cluster), "RUN_DIR": str(run_dir), "SCHEDULER": False,
                      "TESTING": True})
    yield app
    app.extensions["chatops.db"].close()


def _real_rules():
    """The real app's mutating routes, listed at collection time (the token plays no part)."""
    import tempfile

    from controlplane.web.app import create_app
    from tests.conftest import write_cluster
    with tempfile.TemporaryDirectory(prefix="co-", dir="/tmp") as tmp:
        cluster = write_cluster(Path(tmp) / "cluster.yaml", small_cluster("127.77.3"))
        app = create_app({"CLUSTER_FILE": str(cluster), "RUN_DIR": tmp, "SCHEDULER": False, "TESTING": True})
        try:
            return mutating_rules(app)
        finally:
            app.extensions["chatops.db"].close()


def test_real_app_wires_auth(real_app):
    client = real_app.test_client()
    page = client.get("/login")
    assert page.status_code == 200 and 'name="token"' in page.text and "<title>" in page.text
    assert login(client).status_code == 302
    assert client.post("/logout").status_code == 400  # a session's POST without CSRF
    assert client.post("/logout", data={"csrf_token": _csrf_of(client)}).status_code == 302
    assert ("POST", "/logout") in mutating_rules(real_app)


@pytest.mark.parametrize("method,path", _real_rules())
def test_every_mutating_route_of_the_real_app_demands_auth(real_app, method, path):
    assert_refused(real_app, method, path)
