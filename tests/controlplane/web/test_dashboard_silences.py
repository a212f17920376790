"""The dashboard's Silences page (listed, added and expired behind a login and CSRF, refusals shown
on the page, everything escaped) and the incident page's Notifications section and "Muted" notice.
On the real app (its real database, no schedule) with Flask's test client; the last test drives
headless Chromium through the nav link, the form and the Expire button."""

from __future__ import annotations

import re
import threading
import time

import pytest
from selenium.common.exceptions import StaleElementReferenceException

from controlplane import incidents
from tests.conftest import free_subnet, small_cluster, wait_for, write_cluster
from tests.controlplane.web.test_dashboard_plans import TOKEN, login

HOSTILE = "<script>alert(1)</script>"


@pytest.fixture
def app(tmp_path, monkeypatch, run_dir):
    from controlplane.web.app import create_app
    monkeypatch.setenv("CHATOPS_API_TOKEN", TOKEN)
    cluster = write_cluster(tmp_path / "cluster.yaml", small_cluster(free_subnet()))
    a = create_app({"CLUSTER_FILE": str(cluster), "RUN_DIR": str(run_dir), "SCHEDULER": False, "TESTING": True,
                    "SECRET_KEY": "dashboard-silences-tests"})
    yield a
    a.extensions["chatops.db"].close()


def seed_incident(db) -> int:
    f = db.upsert_finding("leaked_clients", "chat-testing->shard0", severity="critical", evidence={},
                          runbook="leaked_clients", title="chat-testing leaks",
                          about={"host": "chat-testing", "shard": "shard0", "cluster": "testing"})
    incidents.update(db, None, db.findings(open_only=True), [], time.time())
    return db.finding(f["id"])["incident_id"]


def test_the_page_lists_adds_and_expires_silences(app):
    client = app.test_client()
    page = client.get("/silences")
    assert page.status_code == 200 and "No silences." in page.text
    assert '<a href="/silences"' in client.get("/incidents").text            # in the nav
    # logged out: the form leads to the login page, nothing is stored
    r = client.post("/silences", data={"matchers": "cluster=testing", "for": "2h"})
    assert r.status_code == 302 and "/login" in r.headers["Location"]
    csrf = login(client)
    r = client.post("/silences", data={"matchers": "cluster=testing\r\nshard=~shard[01]\n", "for": "2h",
                                       "comment": HOSTILE, "csrf_token": csrf})
    assert r.status_code == 303 and r.headers["Location"].endswith("/silences")
    page = client.get("/silences").text
    assert "cluster=testing, shard=~shard[01]" in page and "session:" in page
    assert HOSTILE not in page and "&lt;script&gt;" in page
    sid = app.extensions["chatops.db"].silences()[0]["id"]
    assert f'id="expire-{sid}"' in page
    r = client.post(f"/silences/{sid}/expire", data={"csrf_token": csrf})
    assert r.status_code == 303
    page = client.get("/silences").text
    assert f'data-silence="{sid}" data-state="expired"' in page and f'id="expire-{sid}"' not in page
    r = client.post(f"/silences/{sid}/expire", data={"csrf_token": csrf})
    assert r.status_code == 409 and "already expired" in r.text
    assert client.post("/silences/999/expire", data={"csrf_token": csrf}).status_code == 404
    # without the CSRF token: refused
    assert client.post("/silences", data={"matchers": "cluster=testing", "for": "2h"}).status_code == 400
    actions = [a["action"] for a in app.extensions["chatops.db"].audit()]
    assert actions[:2] == ["silence.expire", "silence.add"]


@pytest.mark.parametrize("form,says", [
    ({"matchers": "", "for": "2h"}, "at least one matcher"),
    ({"matchers": "cluster", "for": "2h"}, "has no operator"),
    ({"matchers": "cluster=testing", "for": "soon"}, "bad field for: a duration"),
])
def test_a_bad_form_is_refused_on_the_page_keeping_what_was_typed(app, form, says):
    client = app.test_client()
    csrf = login(client)
    r = client.post("/silences", data={**form, "comment": "typed", "csrf_token": csrf})
    assert r.status_code == 400 and 'id="notice"' in r.text and says in r.text
    assert 'value="typed"' in r.text and app.extensions["chatops.db"].silences() == []


def test_the_incident_page_shows_notifications_and_when_it_is_muted(app):
    db = app.extensions["chatops.db"]
    iid = seed_incident(db)
    client = app.test_client()
    page = client.get(f"/incidents/{iid}").text
    assert "No notifications for this incident." in page and 'id="muted"' not in page
    a = db.enqueue_alert("oncall-slack", {"text": "x"}, incident_id=iid, event="opened", dedup_key=f"{iid}:opened")
    db.mark_alert(a["id"], "failed", f"HTTP 500: {HOSTILE}", time.time() + 30)
    b = db.enqueue_alert("hooks", {"text": "x"}, incident_id=iid, event="opened", dedup_key=f"{iid}:opened")
    db.mark_alert(b["id"], "delivered")
    s = db.add_silence([{"name": "cluster", "op": "=", "value": "testing"}], time.time() + 3600, "test")
    page = client.get(f"/incidents/{iid}").text
    rows = re.findall(r'<tr data-notification="(\d+)" data-status="(\w+)"><td>[^<]*</td><td>([^<]+)</td>', page)
    assert rows == [(str(a["id"]), "retrying", "oncall-slack"), (str(b["id"]), "delivered", "hooks")]
    assert "HTTP 500: &lt;script&gt;" in page and HOSTILE not in page
    muted = re.search(r'<p class="notice" id="muted">(.*?)</p>', page, re.DOTALL).group(1)
    assert f"#{s['id']}" in muted and "cluster=testing" in muted


def test_in_chromium_add_a_silence_from_the_nav_see_the_incident_muted_then_expire_it(app):
    from werkzeug.serving import make_server

    from tests.controlplane.web.test_dashboard import new_browser
    db = app.extensions["chatops.db"]
    iid = seed_incident(db)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    driver = new_browser()
    try:
        driver.get(f"{base}/login?next=/incidents/{iid}")
        driver.find_element("name", "token").send_keys(TOKEN)
        driver.find_element("css selector", "section.login form button[type=submit]").click()
        wait_for(lambda: driver.current_url.endswith(f"/incidents/{iid}"), 10, what="the incident page")
        assert not driver.find_elements("id", "muted")

        def open_silences() -> bool:
            # The incident page may still be replacing its document right after the redirect: a
            # link found in the old one is stale by the time it is clicked. Find it again then.
            try:
                driver.find_element("link text", "Silences").click()
                return True
            except StaleElementReferenceException:
                return False
        wait_for(open_silences, 10, what="a click on Silences")
        wait_for(lambda: driver.find_elements("id", "silence-matchers"), 10, what="the Silences page")
        box = driver.find_element("id", "silence-matchers")
        box.send_keys("cluster=testing\nshard=shard0")
        driver.find_element("id", "silence-for").clear()
        driver.find_element("id", "silence-for").send_keys("30m")
        driver.find_element("id", "silence-comment").send_keys("load test")
        driver.find_element("id", "add-silence-button").click()
        row = wait_for(lambda: driver.find_elements("css selector", "#silences tr[data-state=active]"), 10,
                       what="the new silence listed")[0]
        assert "cluster=testing, shard=shard0" in row.text and "load test" in row.text
        sid = row.get_attribute("data-silence")
        driver.get(f"{base}/incidents/{iid}")
        assert f"#{sid}" in wait_for(lambda: driver.find_elements("id", "muted"), 10, what="the muted notice")[0].text
        driver.get(f"{base}/silences")
        driver.find_element("id", f"expire-{sid}").click()
        wait_for(lambda: driver.find_elements("css selector", f"#silences tr[data-silence='{sid}'][data-state=expired]"),
                 10, what="the silence expired")
        driver.get(f"{base}/incidents/{iid}")
        assert not driver.find_elements("id", "muted")
        assert [e for e in driver.get_log("browser") if e["level"] == "SEVERE"] == []
    finally:
        driver.quit()
        server.shutdown()
