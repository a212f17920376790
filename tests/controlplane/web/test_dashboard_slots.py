"""The dashboard's Slots page and a slot-moving plan's page, in Debian's headless Chromium against a
live cluster and its control plane (`chatops up --controlplane`).

/slots lists every shard with its slots, share, ranges and published copy; its migration panel
follows the progress file every second without a reload (a moving migration, a finished one, one
that stopped writing), and the map itself follows a publication with the page's refresh.
Applying a reshard plan from its page returns to that page while the keys move, and the same
panel shows the migration there until the plan is applied.

First, with Flask's test client and no running cluster: the page still renders, every shard
unreachable, and an unreadable map file is said on the page, not a 500.
"""

from __future__ import annotations

import json
import secrets
import time

import pytest

from cluster import clusterfile
from cluster.rundir import RunDir
from controlplane.resharding import progress
from controlplane.resharding import slotmap as slotmaps
from tests.conftest import api_token, free_subnet, live_controlplane, small_cluster, wait_for, write_cluster
from tests.controlplane.cli.test_slots_cli import KEYS_PER_TAG, TAGS, seed_slots
from tests.controlplane.web.test_api import call
from tests.controlplane.web.test_dashboard import new_browser

TOKEN = "dashboard-slots-" + secrets.token_urlsafe(16)
WHAT = {"action": "reshard", "from": "shard0", "to": "shard1", "slots": "0-63"}
MOVING = {"phase": "moving", "slots_total": 64, "slots_done": 12, "keys_total": 500_000,
          "keys_moved": 183_204, "keys_per_s": 61_402.3, "eta_s": 5.2, "started_at": 0.0, "updated_at": 0.0,
          "detail": ""}


@pytest.fixture(scope="module")
def browser():
    driver = new_browser()
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def live(browser):
    with api_token(TOKEN), live_controlplane(traffic=False) as (c, base):
        yield c, base, clusterfile.load(c.config).spec, RunDir(c.run)


def severe(driver) -> list[dict]:
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


_PANEL_JS = """
var el = function (id) { return document.getElementById(id); };
var t = function (id) { return el(id) ? el(id).textContent.trim() : null; };
var state = document.querySelector('[data-plan-state]');
return {phase: t('migration-phase'), what: t('migration-what'), keys: t('migration-keys'),
        slots: t('migration-slots'), rate: t('migration-rate'), eta: t('migration-eta'),
        pct: t('migration-pct'), detail: t('migration-detail'),
        bar: el('migration-bar') ? el('migration-bar').value : null,
        poll: el('migration') ? el('migration').dataset.poll : null,
        stalled: el('migration-stalled') ? !el('migration-stalled').hidden : null,
        polls: window.__migration_polls, state: state ? state.dataset.planState : null};"""

_ROWS_JS = """
var t = function (tr, sel) { return tr.querySelector(sel).textContent.trim(); };
return Array.from(document.querySelectorAll('#slots tbody tr[data-shard]')).map(function (tr) {
  return {name: tr.dataset.shard, slots: tr.dataset.slots, copy: t(tr, 'td.copy'),
          ranges: t(tr, 'td.ranges code'), share: t(tr, 'td.share')};
});"""


def panel(driver) -> dict:
    return driver.execute_script(_PANEL_JS)


def panel_when(driver, ok, what: str, timeout: float = 10) -> dict:
    """The panel's figures once `ok(figures)` holds."""
    return wait_for(lambda: (lambda p: p if ok(p) else None)(panel(driver)), timeout, 0.1, what)


def post_plan(base: str, params: dict) -> str:
    """A reshard plan made through the API, as `chatops plan` makes it; its id."""
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    body = json.dumps({"action": "reshard", "params": params}).encode()
    r = call(base, "/api/v1/plans", "POST", headers, body)
    assert r.status == 201, r
    return r.json["id"]


def rows(driver) -> dict[str, dict]:
    return {r["name"]: r for r in driver.execute_script(_ROWS_JS)}


# -- without a running cluster (Flask's test client) -----------------------------------------------

def test_with_every_shard_down_the_page_shows_the_map_and_why_not_a_500(tmp_path, run_dir):
    from controlplane.web.app import create_app
    cluster = write_cluster(tmp_path / "cluster.yaml", small_cluster(free_subnet()))
    app = create_app({"CLUSTER_FILE": str(cluster), "RUN_DIR": str(run_dir), "SCHEDULER": False,
                      "TESTING": True})
    try:
        client = app.test_client()
        page = client.get("/slots")
        assert page.status_code == 200
        assert 'data-epoch="0">Epoch <b>0</b>: not published yet' in page.text
        for shard in ("shard0", "shard1"):
            assert f'<tr data-shard="{shard}" data-slots="8192" data-copy="unreachable: ' in page.text
        assert page.text.count('<span class="badge bad">unreachable</span>') == 2
        assert 'id="migration-phase" data-phase="idle">idle<' in page.text
        assert '<a href="/slots">Slots</a>' in client.get("/plans").text         # in every page's nav
        # a map file that is not a map: said on the page, with the panel still there
        (run_dir / "slotmap.json").write_text("{not json")
        page = client.get("/slots")
        assert page.status_code == 200 and 'id="slots-error"' in page.text
        assert "slotmap.json is not a slot map" in page.text and 'id="migration"' in page.text
    finally:
        app.extensions["chatops.db"].close()


# -- in Chromium, on a live cluster -----------------------------------------------------------------

def test_the_slots_page_shows_the_map_and_follows_a_migration_without_a_reload(browser, live):
    c, base, cf, run = live
    progress.path(run).unlink(missing_ok=True)
    browser.get(base + "/slots")
    wait_for(lambda: browser.find_elements("css selector", "#slots tr[data-shard]"), 10, what="the table")
    r = rows(browser)
    assert set(r) == {"shard0", "shard1"}
    assert (r["shard0"]["slots"], r["shard0"]["ranges"], r["shard0"]["share"]) == ("8192", "0-8191", "50.0 %")
    assert (r["shard1"]["slots"], r["shard1"]["ranges"]) == ("8192", "8192-16383")
    assert r["shard0"]["copy"] == "none yet"
    assert browser.find_element("id", "slots-epoch").get_attribute("data-epoch") == "0"
    assert "not published yet" in browser.find_element("id", "slots-epoch").text
    assert browser.find_element("css selector", 'header.top nav a[aria-current="page"]').text == "Slots"
    assert panel(browser)["phase"] == "idle"
    loaded = browser.execute_script("return window.__loaded_at")

    # a migration moving: the panel follows the file within its one-second poll
    now = time.time()
    progress.write(run, WHAT, {**MOVING, "started_at": now - 3, "updated_at": now})
    p = panel_when(browser, lambda p: p["keys"] == "183,204 / 500,000", "the panel to show the keys moved")
    assert p["phase"] == "moving" and p["slots"] == "12 / 64" and p["rate"] == "61,402 keys/s"
    assert p["eta"] == "5.2 s" and p["pct"] == "37 %" and abs(p["bar"] - 0.3664) < 0.001
    assert p["what"] == "reshard from shard0 to shard1, slots 0-63" and not p["stalled"]

    # done
    progress.write(run, WHAT, {**MOVING, "phase": "done", "slots_done": 64, "keys_moved": 500_000,
                               "eta_s": None, "detail": "moved 64 slots, 500000 keys"})
    p = panel_when(browser, lambda p: p["phase"] == "done", "the panel to show the migration done")
    assert p["pct"] == "100 %" and p["bar"] == 1 and p["eta"] == "—"
    assert p["detail"] == "moved 64 slots, 500000 keys"

    # a migration whose apply stopped writing (its control plane killed): said plainly
    stopped = {**WHAT, **MOVING, "written_at": time.time() - 60}
    progress.path(run).write_text(json.dumps(stopped))
    p = panel_when(browser, lambda p: p["stalled"], "the panel to say the migration stopped")
    assert p["phase"] == "moving"
    assert "may have stopped" in browser.find_element("id", "migration-stalled").text

    # a publication: the map follows with the page's own refresh
    with slotmaps.connections(cf) as conns:
        smap = slotmaps.load(cf, c.config, run, conns)
        assert slotmaps.publish(cf, c.config, run, smap.moved([0, 1, 2], 1), conns).ok
    # Read in one script call: the page's refresh may replace the element between two WebDriver calls.
    epoch = "var e = document.getElementById('slots-epoch'); return e && e.dataset.epoch;"
    wait_for(lambda: browser.execute_script(epoch) == "1", 15, what="the page to show epoch 1")
    r = rows(browser)
    assert (r["shard1"]["slots"], r["shard1"]["ranges"]) == ("8195", "0-2, 8192-16383")
    assert r["shard1"]["copy"] == r["shard0"]["copy"] == "epoch 1"
    assert (r["shard0"]["slots"], r["shard0"]["ranges"]) == ("8189", "3-8191")
    # the panel survives the refresh swapping <main> under it, and keeps polling
    polls = panel(browser)["polls"]
    wait_for(lambda: panel(browser)["polls"] >= polls + 2, 10, what="the panel to keep polling")
    assert browser.execute_script("return window.__loaded_at") == loaded          # never reloaded
    assert browser.execute_script("return window.__refreshes") >= 1
    assert severe(browser) == []


def test_applying_a_reshard_from_its_page_shows_the_migration_there(browser, live):
    c, base, cf, run = live
    slots = seed_slots(cf)
    plan_id = post_plan(base, {"shard": "shard0", "to_shard": "shard1", "slots": ",".join(map(str, slots))})
    browser.get(f"{base}/login?next=/plans/{plan_id}")
    wait_for(lambda: browser.find_elements("name", "token"), 10, what="the login page")
    browser.find_element("name", "token").send_keys(TOKEN)
    browser.find_element("css selector", "section.login form button[type=submit]").click()
    on_plan = f"/plans/{plan_id}"
    wait_for(lambda: browser.current_url.endswith(on_plan) and browser.find_elements("id", "apply"), 10,
             what="the plan page with its Apply button")
    assert panel(browser)["phase"] is None                   # planned, nothing applied: no panel yet
    browser.find_element("id", "apply").click()
    # The answer comes when the apply is done or after 2 s, whichever is first (a refusal comes
    # sooner): either way the plan's own page, whose panel shows the migration until it is done.
    p = panel_when(browser, lambda p: p["state"] == "applied" and p["phase"] == "done",
                   "the plan applied and its migration done on its page", 60)
    assert browser.current_url.endswith(f"/plans/{plan_id}")
    keys = f"{TAGS * KEYS_PER_TAG:,}"
    assert p["keys"] == f"{keys} / {keys}" and p["slots"] == f"{TAGS} / {TAGS}"
    assert p["what"].startswith("reshard from shard0 to shard1, slots ") and p["poll"] == "0"
    assert f"moved {TAGS} slots" in browser.find_element("id", "plan-result").text
    view = json.loads(call(base, "/api/v1/slots").raw)
    assert {s["name"]: s["slots"] for s in view["shards"]}["shard1"] == 8195 + TAGS
    assert severe(browser) == []


def test_a_plan_being_applied_shows_only_its_own_migrations_progress_live(browser, live):
    """The plan is claimed for an apply as the engine claims it (state `applying`); the progress
    file is written as the migration writes it. Progress from before the plan was made is not its."""
    from controlplane.database import Database
    c, base, _, run = live
    progress.write(run, WHAT, MOVING)                   # an earlier migration's
    plan_id = post_plan(base, {"shard": "shard1", "to_shard": "shard0", "slots": "16000-16010"})
    with Database(run.root / "controlplane.sqlite3") as db:
        assert db.claim_plan(plan_id, "token:test")["state"] == "applying"
    browser.get(f"{base}/plans/{plan_id}")
    p = panel_when(browser, lambda p: p["phase"] and p["polls"], "the plan page's migration panel polling")
    assert (p["state"], p["phase"], p["poll"]) == ("applying", "waiting", "1")
    assert p["what"] == "Waiting for the apply to report its first progress." and p["keys"] == "—"
    progress.write(run, {**WHAT, "from": "shard1", "to": "shard0", "slots": "16000-16010"},
                   {**MOVING, "slots_total": 11, "slots_done": 4, "keys_total": 4000, "keys_moved": 1500,
                    "eta_s": 2.0, "started_at": time.time() - 1, "updated_at": time.time()})
    p = panel_when(browser, lambda p: p["keys"] == "1,500 / 4,000", "the panel to show its migration")
    assert p["phase"] == "moving" and p["slots"] == "4 / 11" and p["eta"] == "2.0 s"
    assert p["what"] == "reshard from shard1 to shard0, slots 16000-16010"
    assert severe(browser) == []


def test_a_shard_change_is_planned_from_the_slots_page(browser, live):
    """The dashboard's own way in: the Slots page's form plans a reshard (the page does not
    refresh the form away while it is being filled in) and shows the plan to review; a bad line
    is refused on the page with the reason."""
    c, base, cf, run = live
    browser.get(f"{base}/login?next=/slots")
    # Logged in already (an earlier test of this module did), or the login page first.
    wait_for(lambda: browser.find_elements("name", "token") or browser.find_elements("id", "plan-params"), 10,
             what="the login page or the Slots page")
    if browser.find_elements("name", "token"):
        browser.find_element("name", "token").send_keys(TOKEN)
        browser.find_element("css selector", "section.login form button[type=submit]").click()
    wait_for(lambda: browser.find_elements("id", "plan-params"), 10, what="the Slots page's form")
    from selenium.webdriver.support.ui import Select
    Select(browser.find_element("id", "plan-action")).select_by_visible_text("reshard")
    params = browser.find_element("id", "plan-params")
    params.send_keys("shard=shard0\nto_shard=shard1\nslots=100-109")
    refreshed = browser.execute_script("return window.__refreshes")
    period = float(browser.execute_script("return document.body.dataset.refreshS || '5'"))
    time.sleep(2 * period + 0.5)        # two refresh periods: the form must survive them
    assert browser.execute_script("return window.__refreshes") == refreshed
    assert browser.find_element("id", "plan-params").get_attribute("value") == "shard=shard0\nto_shard=shard1\nslots=100-109"
    browser.find_element("id", "plan-submit").click()
    wait_for(lambda: "/plans/" in browser.current_url and browser.find_elements("id", "apply"), 15,
             what="the new plan's page")
    text = browser.find_element("tag name", "main").text
    assert "move 10 slots (100-109) from shard0 to shard1" in text, text

    browser.get(f"{base}/slots")
    wait_for(lambda: browser.find_elements("id", "plan-params"), 10, what="the Slots page's form")
    browser.find_element("id", "plan-params").send_keys("shard0")
    browser.find_element("id", "plan-submit").click()
    wait_for(lambda: browser.find_elements("id", "plan-error"), 10, what="the refusal on the page")
    assert "each parameter is key=value" in browser.find_element("id", "plan-error").text
    # The refusal is a 400 page, which the browser logs; nothing else may be.
    assert [e for e in severe(browser) if "/slots/plan - " not in e["message"] or "400" not in e["message"]] == []
