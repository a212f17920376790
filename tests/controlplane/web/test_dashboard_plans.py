"""The dashboard's remediation pages: an incident's Fix section (its newest plan's steps, diffs,
state, result and verification; "Plan the fix" and "Apply" behind a login and CSRF), the plan page
with its audit trail, and the plans list.

On the real app with Flask's test client and no running cluster. Plans are seeded in the database
as the engine stores them, or made and applied by the real engine (controlplane/remediation/plans.py)
through the pages, with a stand-in action registered for the test (a real action needs a live
shard or HAProxy): the locks, the stale check, the audit and the verification are the engine's.
The last test drives Chromium to watch a verification turn from watching to resolved without a
reload.
"""

from __future__ import annotations

import fcntl
import os
import re
import threading
import time
import types
from pathlib import Path

import pytest

from controlplane import incidents
from controlplane.remediation import ACTIONS
from controlplane.remediation.base import Draft, Outcome, Param
from tests.conftest import free_subnet, small_cluster, wait_for, write_cluster

TOKEN = "dashboard-plans-token-0123456789"
HOSTILE = "<script>alert(1)</script>"


# -- a stand-in action, on the remediation contract (base.py) --------------------------------------

class FakeAction:
    """`fake_fix {host}`: changes nothing real. `world` is the state its plan depends on (change
    it to make a plan stale); `applied` counts its applies."""

    def __init__(self):
        self.world = {"generation": 1}
        self.applied = 0
        self.module = types.SimpleNamespace(
            NAME="fake_fix", VERIFY=("leaked_clients",),
            PARAMS={"host": Param(str, required=True, help="a host")},
            subject=lambda cf, params: f"host:{params['host']}",
            plan=self.plan, apply=self.apply)

    def plan(self, ctx, params):
        return Draft(summary=f"close {params['host']}'s leaked connections",
                     diff=[f"- 3 connections {params['host']} -> shard0", f"    id=7 name={HOSTILE}",
                           "+ timeout 300"],
                     preconditions=[f"{params['host']} answers"], state=dict(self.world))

    def apply(self, ctx, params, draft):
        self.applied += 1
        return Outcome(True, f"closed 3 connections from {params['host']}", {"killed": 3})


@pytest.fixture
def fake(monkeypatch):
    f = FakeAction()
    monkeypatch.setitem(ACTIONS, "fake_fix", f.module)
    return f


# -- the app, an incident, a login ----------------------------------------------------------------

def make_app(run_dir: Path, tmp_path: Path, interval: str | None = None):
    from controlplane.web.app import create_app
    doc = small_cluster(free_subnet())
    if interval:
        doc["controlplane"]["scrape"] = {"interval": interval}
    cluster = write_cluster(tmp_path / "cluster.yaml", doc)
    return create_app({"CLUSTER_FILE": str(cluster), "RUN_DIR": str(run_dir), "SCHEDULER": False,
                       "TESTING": True, "SECRET_KEY": "dashboard-plans-tests"})


@pytest.fixture
def app(tmp_path, monkeypatch, run_dir):
    monkeypatch.setenv("CHATOPS_API_TOKEN", TOKEN)
    a = make_app(run_dir, tmp_path)
    yield a
    a.extensions["chatops.db"].close()


def seed_incident(db, action: str = "fake_fix", params: dict | None = None) -> tuple[int, dict]:
    """One open, critical leak whose suggested remediation is `action`; (incident id, finding)."""
    now = time.time()
    f = db.upsert_finding("leaked_clients", "chat-testing->shard0", severity="critical",
                          evidence={"idle": 2311, "count": 2012}, runbook="leaked_clients", seen=now,
                          title="chat-testing holds 2,311 idle clients on shard0",
                          about={"host": "chat-testing", "shard": "shard0", "cluster": "testing"},
                          remediation={"action": action, "summary": f"{action} on chat-testing",
                                       "params": params if params is not None else {"host": "chat-testing"}})
    incidents.update(db, None, db.findings(open_only=True), [], now)
    f = db.finding(f["id"])
    return f["incident_id"], f


def seeded_plan(db, plan_id: str, incident_id: int | None, created: float | None = None,
                diff: list[str] | None = None, finding_ids: list[int] | None = None) -> dict:
    """A plan row as make_plan stores it."""
    step = {"action": "kill_clients", "params": {"shard": "shard0", "host": "chat-testing", "idle_over_s": None},
            "subject": "shard:shard0", "summary": "kill 2 connections from chat-testing to shard0",
            "diff": diff if diff is not None else ["- 2 connections chat-testing -> shard0",
                                                   f"    id=12 addr=127.0.0.9:4242 name={HOSTILE}"],
            "preconditions": ["shard0 answers on the control plane's admin connection"],
            "state": {"run_id": "abc", "ip": "127.0.0.9"}, "fingerprint": "0123456789abcdef", "changes": True}
    body = {"steps": [step], "summary": step["summary"], "changes": True, "finding_ids": finding_ids or []}
    return db.add_plan(plan_id, "kill_clients", "shard:shard0", "session:10.0.0.7", body,
                       incident_id=incident_id, created=created)


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def login(client) -> str:
    """Log in with the token; returns the session's CSRF token."""
    r = client.post("/login", data={"token": TOKEN, "csrf_token": csrf_of(client.get("/login").text)})
    assert r.status_code == 302
    return csrf_of(client.get("/plans").text)


def fix_section(html: str) -> str:
    m = re.search(r'<div class="fix" id="fix">.*?\n</div>\n\n<h2>', html, re.DOTALL)
    assert m, html[:4000]
    return m.group(0)


# -- the incident page ----------------------------------------------------------------------------

def test_incident_page_shows_the_newest_plan_escaped_with_its_apply_form(app):
    db = app.extensions["chatops.db"]
    iid, f = seed_incident(db, "kill_clients", {"shard": "shard0", "host": "chat-testing"})
    seeded_plan(db, "0000aaaa", iid, created=time.time() - 60)
    seeded_plan(db, "1111bbbb", iid, finding_ids=[f["id"]])
    seeded_plan(db, "2222cccc", None, created=time.time() + 5)          # another subject's, not this incident's
    page = app.test_client().get(f"/incidents/{iid}")
    assert page.status_code == 200
    fix = fix_section(page.text)
    assert 'data-plan="1111bbbb" data-state="planned"' in fix          # the newest of this incident's
    assert "2222cccc" not in fix
    assert "kill 2 connections from chat-testing to shard0" in fix
    assert '<pre class="diff"><span class="del">- 2 connections chat-testing -&gt; shard0</span>' in fix
    assert "name=&lt;script&gt;alert(1)&lt;/script&gt;" in fix and HOSTILE not in page.text
    assert "requires: shard0 answers on the control plane&#39;s admin connection" in fix
    assert 'data-plan-state="planned">planned<' in fix and "planned by session:10.0.0.7" in fix
    assert 'data-verification="none">not verified<' in fix
    form = re.search(r'<form method="post" action="/plans/1111bbbb/apply">(.*?)</form>', fix).group(1)
    assert 'name="csrf_token" value="' in form and 'id="apply"' in form
    assert 'href="/plans/0000aaaa"' in fix and "1 earlier plan for this incident" in fix
    assert 'id="plan-fix"' not in fix                                  # a plan is there: review it instead
    assert "badge bad" not in fix                                      # nothing wrong yet: nothing red


def test_incident_without_a_plan_offers_to_plan_the_fix(app):
    db = app.extensions["chatops.db"]
    iid, _ = seed_incident(db, "kill_clients", {"shard": "shard0", "host": "chat-testing"})
    fix = fix_section(app.test_client().get(f"/incidents/{iid}").text)
    form = re.search(rf'<form method="post" action="/incidents/{iid}/plan">(.*?)</form>', fix).group(1)
    assert 'name="csrf_token"' in form and ">Plan the fix</button>" in form
    assert "needs <a href=\"/login?next=/incidents/" in fix             # logged out: says so


def test_not_applicable_remediation_shows_its_reason_instead_of_a_button(app):
    db = app.extensions["chatops.db"]
    iid, _ = seed_incident(db, "kill_idle_clients", {"host": "chat-testing", "shard": "shard0"})
    client = app.test_client()
    fix = fix_section(client.get(f"/incidents/{iid}").text)
    reason = re.search(r'<p class="notice" id="fix-reason">([^<]*)</p>', fix).group(1)
    assert "is not an action chatops applies (kill_idle_clients)" in reason
    assert 'id="plan-fix"' not in fix and 'id="apply"' not in fix
    # posting anyway (a stale page): the same reason as a notice, never a 500, nothing stored
    csrf = login(client)
    r = client.post(f"/incidents/{iid}/plan", data={"csrf_token": csrf})
    assert r.status_code == 409
    notice = re.search(r'<div class="notice" id="notice" role="alert" data-status="409">(.*?)</div>', r.text,
                       re.DOTALL)
    assert notice and "is not an action chatops applies" in notice.group(1)
    assert db.plans() == []


def test_plan_the_fix_with_the_shard_out_of_reach_is_a_notice_not_a_500(app):
    db = app.extensions["chatops.db"]
    iid, _ = seed_incident(db, "kill_clients", {"shard": "shard0", "host": "chat-testing"})
    client = app.test_client()
    csrf = login(client)
    r = client.post(f"/incidents/{iid}/plan", data={"csrf_token": csrf})
    assert r.status_code == 503, r.text[:2000]
    assert 'class="notice bad" id="notice"' in r.text and "shard0" in r.text
    assert "dashboard.js" not in r.text                     # an answer to a POST: it does not refresh itself
    assert 'id="plan-fix"' in r.text                        # try again when the shard is back
    assert db.plans() == []


def test_unknown_incident_or_plan_on_post_is_a_404(app):
    client = app.test_client()
    csrf = login(client)
    assert client.post("/incidents/999/plan", data={"csrf_token": csrf}).status_code == 404
    assert client.post("/plans/deadbeef/apply", data={"csrf_token": csrf}).status_code == 404
    assert client.post("/plans/not-a-plan/apply", data={"csrf_token": csrf}).status_code == 404


# -- apply: auth, CSRF, the engine, the verification ---------------------------------------------

def test_anonymous_apply_is_sent_to_log_in_and_nothing_is_applied(app):
    db = app.extensions["chatops.db"]
    iid, _ = seed_incident(db)
    seeded_plan(db, "1111bbbb", iid)
    bare, holding_csrf = app.test_client(), app.test_client()
    csrf = csrf_of(holding_csrf.get(f"/incidents/{iid}").text)   # an anonymous page's token opens nothing
    for client, data in ((bare, {}), (holding_csrf, {"csrf_token": csrf})):
        for path in ("/plans/1111bbbb/apply", "/plans/1111bbbb/again", f"/incidents/{iid}/plan"):
            r = client.post(path, data=data, headers={"Referer": f"http://localhost/incidents/{iid}"})
            assert r.status_code == 302 and r.headers["Location"].startswith("/login"), (path, r.status_code)
    assert r.headers["Location"] == f"/login?next=/incidents/{iid}"          # back to the page after logging in
    plan = db.plan("1111bbbb")
    assert plan["state"] == "planned" and plan["applied_by"] is None and plan["result"] is None
    assert db.audit_for_plan("1111bbbb") == [] and len(db.plans()) == 1


def test_apply_without_the_csrf_token_is_refused(app, fake):
    db = app.extensions["chatops.db"]
    iid, _ = seed_incident(db)
    client = app.test_client()
    csrf = login(client)
    assert client.post(f"/incidents/{iid}/plan").status_code == 400
    assert client.post(f"/incidents/{iid}/plan", data={"csrf_token": "x" + csrf}).status_code == 400
    assert db.plans() == []
    assert client.post(f"/incidents/{iid}/plan", data={"csrf_token": csrf}).status_code == 303
    pid = db.plans()[0]["id"]
    for data in ({}, {"csrf_token": csrf[:-1]}):
        assert client.post(f"/plans/{pid}/apply", data=data).status_code == 400
    assert db.plan(pid)["state"] == "planned" and fake.applied == 0


def test_plan_apply_and_watch_the_verification_resolve(app, fake):
    db = app.extensions["chatops.db"]
    iid, f = seed_incident(db)
    client = app.test_client()
    csrf = login(client)
    # Plan the fix: the engine drafts the incident's suggestion and stores it; back to the page
    r = client.post(f"/incidents/{iid}/plan", data={"csrf_token": csrf})
    assert r.status_code == 303 and r.headers["Location"].endswith(f"/incidents/{iid}")
    plan = db.plans()[0]
    assert (plan["incident_id"], plan["finding_ids"], plan["created_by"]) == (iid, [f["id"]], "session:127.0.0.1")
    page = client.get(f"/incidents/{iid}")
    fix = fix_section(page.text)
    assert "close chat-testing&#39;s leaked connections" in fix and '<span class="add">+ timeout 300</span>' in fix
    assert "name=&lt;script&gt;" in fix and HOSTILE not in page.text
    # Apply: 303 back to the incident page, which now shows the result and the verification
    r = client.post(f"/plans/{plan['id']}/apply", data={"csrf_token": csrf, "back": "incident"})
    assert r.status_code == 303 and r.headers["Location"].endswith(f"/incidents/{iid}")
    assert fake.applied == 1
    applied = db.plan(plan["id"])
    assert applied["state"] == "applied" and applied["applied_by"] == "session:127.0.0.1"
    wait_for(lambda: (db.plan(plan["id"])["verification"] or {}).get("state") == "watching", 5, what="watching")
    frag = client.get(f"/incidents/{iid}?fragment=1")        # what the page's refresh fetches
    assert frag.status_code == 200 and "<header" not in frag.text
    fix = fix_section(frag.text)
    assert 'data-plan-state="applied"' in fix and "closed 3 connections from chat-testing" in fix
    assert 'id="verification" data-state="watching"' in fix and 'data-verification="watching"' in fix
    assert 'data-step-ok="yes"' in fix and 'id="apply"' not in fix
    # the finding clears: the next refresh shows the verification resolved, nothing in red
    db.upsert_finding("leaked_clients", "chat-testing->shard0", state="resolved")
    wait_for(lambda: (db.plan(plan["id"])["verification"] or {}).get("state") == "resolved", 10, what="resolved")
    fix = fix_section(client.get(f"/incidents/{iid}?fragment=1").text)
    assert 'id="verification" data-state="resolved"' in fix and 'data-verification="resolved">resolved after' in fix
    assert "badge bad" not in fix
    # applying again changes nothing (the engine's at-most-once) and still lands on the page
    assert client.post(f"/plans/{plan['id']}/apply", data={"csrf_token": csrf}).status_code == 303
    assert fake.applied == 1
    # the plan page: who planned and applied it, the per-step result, the audit trail
    page = client.get(f"/plans/{plan['id']}")
    assert page.status_code == 200
    assert "Planned by <b>session:127.0.0.1</b>" in page.text and "applied</span>" in page.text
    assert f'<a href="/incidents/{iid}">incident {iid}</a>' in page.text
    rows = re.findall(r'<tr data-audit="\d+" data-result="(\w+)">\s*<td>.*?</td>\s*<td>([^<]*)</td>\s*'
                      r'<td><code>([^<]*)</code></td>', page.text, re.DOTALL)
    assert rows == [("ok", "session:127.0.0.1", "remediation.fake_fix")]
    assert "changed: killed=3" in page.text


def test_a_stale_plan_is_a_409_on_the_page_with_a_plan_again_button(app, fake):
    db = app.extensions["chatops.db"]
    iid, _ = seed_incident(db)
    client = app.test_client()
    csrf = login(client)
    client.post(f"/incidents/{iid}/plan", data={"csrf_token": csrf})
    pid = db.plans()[0]["id"]
    fake.world["generation"] = 2                              # the cluster moved since the review
    r = client.post(f"/plans/{pid}/apply", data={"csrf_token": csrf, "back": "incident"})
    assert r.status_code == 409
    notice = re.search(r'<div class="notice bad" id="notice" role="alert" data-status="409">(.*?)</div>', r.text,
                       re.DOTALL)
    assert notice and "the state changed since the plan was made" in notice.group(1)
    assert f'action="/plans/{pid}/again"' in r.text and ">Plan again</button>" in r.text
    assert 'id="apply"' not in r.text and fake.applied == 0
    assert 'data-plan-state="failed">failed: stale<' in r.text
    # the refusal stays on the incident page after navigating back (the plan is failed, stale)
    fix = fix_section(client.get(f"/incidents/{iid}").text)
    assert "plan again" in fix and ">Plan again</button>" in fix
    # Plan again: a fresh plan on the current state, which applies
    r = client.post(f"/plans/{pid}/again", data={"csrf_token": csrf, "back": "incident"})
    assert r.status_code == 303 and r.headers["Location"].endswith(f"/incidents/{iid}")
    fresh = db.plans()[0]
    assert fresh["id"] != pid and fresh["state"] == "planned" and fresh["incident_id"] == iid
    assert client.post(f"/plans/{fresh['id']}/apply", data={"csrf_token": csrf}).status_code == 303
    assert fake.applied == 1
    db.upsert_finding("leaked_clients", "chat-testing->shard0", state="resolved")   # let the verification end
    wait_for(lambda: (db.plan(fresh["id"])["verification"] or {}).get("state") == "resolved", 10, what="resolved")


def test_a_busy_subject_is_a_409_said_plainly_not_in_red(app, fake, run_dir):
    db = app.extensions["chatops.db"]
    iid, _ = seed_incident(db)
    client = app.test_client()
    csrf = login(client)
    client.post(f"/incidents/{iid}/plan", data={"csrf_token": csrf})
    pid = db.plans()[0]["id"]
    locks = run_dir / "locks"
    locks.mkdir(exist_ok=True)
    fd = os.open(locks / "host_chat-testing.lock", os.O_RDWR | os.O_CREAT, 0o600)   # another apply holds it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        r = client.post(f"/plans/{pid}/apply", data={"csrf_token": csrf, "back": "plan"})
    finally:
        os.close(fd)
    assert r.status_code == 409
    assert re.search(r'<div class="notice" id="notice" role="alert" data-status="409">\s*<b>Refused \(409\):</b> '
                     r'another apply holds host:chat-testing', r.text)
    assert f"<h1>Plan <code>{pid}</code>" in r.text                      # back on the page it came from
    assert ">Plan again</button>" in r.text and 'id="apply"' in r.text    # it is still planned: apply later
    assert db.plan(pid)["state"] == "planned" and fake.applied == 0


# -- the plan page and the list -------------------------------------------------------------------

def test_plan_page_shows_the_plan_and_its_audit_trail_escaped(app):
    db = app.extensions["chatops.db"]
    iid, f = seed_incident(db, "kill_clients", {"shard": "shard0", "host": "chat-testing"})
    seeded_plan(db, "1111bbbb", iid, finding_ids=[f["id"]])
    db.claim_plan("1111bbbb", "session:10.0.0.8")
    db.add_audit("session:10.0.0.8", "remediation.kill_clients", "shard:shard0", "failed", plan_id="1111bbbb",
                 diff=["- 2 connections", f"  {HOSTILE}"], detail=f"CLIENT KILL failed: {HOSTILE}", duration_s=0.25)
    db.finish_plan("1111bbbb", "failed", {"ok": False, "detail": "CLIENT KILL failed", "steps": [
        {"action": "kill_clients", "subject": "shard:shard0", "ok": False, "detail": "CLIENT KILL failed",
         "changed": {}, "duration_s": 0.25}]})
    db.add_audit("someone", "remediation.kill_clients", "shard:shard1", "ok", plan_id="9999ffff")   # another plan's
    page = app.test_client().get("/plans/1111bbbb")
    assert page.status_code == 200
    assert "<h1>Plan <code>1111bbbb</code>: <code>kill_clients</code> on shard:shard0" in page.text
    assert "Planned by <b>session:10.0.0.7</b>" in page.text
    assert "apply attempted by <b>session:10.0.0.8</b>" in page.text
    assert f'for <a href="/incidents/{iid}">incident {iid}</a>, to clear finding #{f["id"]}' in page.text
    assert "requires: shard0 answers" in page.text
    assert 'data-step-ok="no"' in page.text and 'data-plan-state="failed">failed<' in page.text
    audit = re.findall(r'<tr data-audit="\d+" data-result="(\w+)">', page.text)
    assert audit == ["failed"] and "shard:shard1" not in page.text
    assert '<td class="bad">failed</td>' in page.text and "in 250 ms" in page.text
    assert "CLIENT KILL failed: &lt;script&gt;" in page.text and HOSTILE not in page.text
    assert ">Apply again</button>" in page.text and ">Plan again</button>" in page.text
    assert 'href="/api/v1/plans/1111bbbb"' in page.text
    assert 'aria-current="page">Plans</a>' in page.text


def test_unknown_plan_page_is_a_404_listing_plans(app):
    db = app.extensions["chatops.db"]
    seeded_plan(db, "1111bbbb", None)
    for path in ("/plans/2222cccc", "/plans/%3Cb%3Ebold"):
        page = app.test_client().get(path)
        assert page.status_code == 404 and "No plan named" in page.text
        assert '<li><a href="/plans/1111bbbb">1111bbbb</a></li>' in page.text and "<b>bold" not in page.text


def test_plans_list_links_every_plan_newest_first_red_only_for_what_went_wrong(app):
    db = app.extensions["chatops.db"]
    iid, _ = seed_incident(db, "kill_clients", {"shard": "shard0", "host": "chat-testing"})
    now = time.time()
    for k, pid in enumerate(("0000aaaa", "1111bbbb", "2222cccc", "3333dddd")):
        seeded_plan(db, pid, iid if k % 2 else None, created=now - 100 + k)
    db.finish_plan("1111bbbb", "applied", {"ok": True, "detail": "done", "steps": []})
    db.set_plan_verification("1111bbbb", {"state": "resolved", "after_s": 4.5, "findings": [1]})
    db.finish_plan("2222cccc", "applied", {"ok": True, "detail": "done", "steps": []})
    db.set_plan_verification("2222cccc", {"state": "not_resolved", "detail": "not resolved after 60 s",
                                          "open": [f"leaked_clients {HOSTILE}"], "findings": [1]})
    db.finish_plan("3333dddd", "failed", {"ok": False, "detail": "boom"})
    client = app.test_client()
    page = client.get("/plans")
    assert page.status_code == 200
    assert re.findall(r'<tr data-plan="(\w+)"', page.text) == ["3333dddd", "2222cccc", "1111bbbb", "0000aaaa"]
    for pid in ("0000aaaa", "1111bbbb", "2222cccc", "3333dddd"):
        assert f'<a href="/plans/{pid}"><code>{pid}</code></a>' in page.text
    assert f'<a href="/incidents/{iid}">#{iid}</a>' in page.text
    rows = dict(re.findall(r'<tr data-plan="(\w+)" data-state="\w+">(.*?)</tr>', page.text, re.DOTALL))
    assert "badge bad" in rows["3333dddd"] and "badge bad" in rows["2222cccc"]      # failed; not resolved
    assert "badge bad" not in rows["1111bbbb"] and "badge bad" not in rows["0000aaaa"]
    assert 'data-verification="resolved">resolved after 4.5 s' in rows["1111bbbb"]
    nav = re.search(r"<nav>(.*?)</nav>", page.text, re.DOTALL).group(1)
    assert '<a href="/plans" aria-current="page">Plans</a>' in nav
    # the not-resolved plan's page says what is still open, escaped
    page = client.get("/plans/2222cccc")
    assert "still open: leaked_clients &lt;script&gt;" in page.text and HOSTILE not in page.text
    assert "not resolved after 60 s" in page.text
    # every page's nav links the list
    assert '<a href="/plans">Plans</a>' in client.get("/incidents").text


# -- live, in Chromium: the verification moves on the page without a reload -----------------------

def test_the_incident_page_shows_the_verification_resolve_without_a_reload(tmp_path, monkeypatch, run_dir, fake):
    from werkzeug.serving import make_server

    from tests.controlplane.web.test_dashboard import new_browser
    monkeypatch.setenv("CHATOPS_API_TOKEN", TOKEN)
    app = make_app(run_dir, tmp_path, interval="500ms")
    db = app.extensions["chatops.db"]
    iid, _ = seed_incident(db)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    driver = new_browser()
    try:
        driver.get(f"{base}/incidents/{iid}")
        assert driver.current_url.endswith(f"/incidents/{iid}")
        driver.find_element("id", "plan-fix").click()               # logged out: to the login page and back
        # The click only starts the navigation: wait for the login form before typing into it.
        wait_for(lambda: driver.find_elements("name", "token"), 10, what="the login page")
        driver.find_element("name", "token").send_keys(TOKEN)
        driver.find_element("css selector", "section.login form button[type=submit]").click()
        wait_for(lambda: driver.current_url.endswith(f"/incidents/{iid}") and driver.find_elements("id", "plan-fix"),
                 10, what="back on the incident page, its Plan the fix button loaded")
        driver.find_element("id", "plan-fix").click()
        wait_for(lambda: driver.find_elements("id", "apply"), 10, what="the plan with its Apply button")
        assert "+ timeout 300" in driver.find_element("css selector", "#fix pre.diff").text
        driver.find_element("id", "apply").click()
        wait_for(lambda: driver.execute_script(
            "var v = document.getElementById('verification'); return v && v.dataset.state === 'watching';"),
            10, what="the verification watching")
        loaded = driver.execute_script("return window.__loaded_at")
        db.upsert_finding("leaked_clients", "chat-testing->shard0", state="resolved")
        wait_for(lambda: driver.execute_script(
            "return document.getElementById('verification').dataset.state === 'resolved';"),
            10, what="the refresh to show the verification resolved")
        assert driver.execute_script("return window.__loaded_at") == loaded       # no reload
        assert driver.execute_script("return window.__refreshes") >= 1
        assert "resolved after" in driver.find_element("id", "verification").text
        assert [e for e in driver.get_log("browser") if e["level"] == "SEVERE"] == []
        driver.get(f"{base}/plans")
        assert driver.find_elements("css selector", "#plans tr[data-plan]")
        assert [e for e in driver.get_log("browser") if e["level"] == "SEVERE"] == []
    finally:
        driver.quit()
        server.shutdown()
        db.close()
