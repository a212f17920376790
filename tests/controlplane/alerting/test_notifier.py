"""The notifier driven by hand and on its threads: a real Database, real stand-in receivers."""

from __future__ import annotations

import logging
import time

import pytest

from controlplane.alerting.notifier import Notifier, backoff
from controlplane.database import Database
from tests.conftest import wait_for
from tests.controlplane.alerting.helpers import cluster, dest, seed
from tests.controlplane.alerting.standin import StandIn

TOKEN = "T9/B9/notifierSecretToken77"


@pytest.fixture
def db(tmp_path):
    with Database(tmp_path / "cp.sqlite3") as d:
        yield d


@pytest.fixture
def slack():
    s = StandIn().start()
    yield s
    s.stop()


@pytest.fixture
def hook():
    s = StandIn().start()
    yield s
    s.stop()


def notifier(db, alerts, env, **kw) -> Notifier:
    return Notifier(db, cluster(alerts), env, **kw)


def test_deliveries_are_in_order_a_failing_head_blocks_and_nothing_is_marked_before_success(db, slack):
    n = notifier(db, [dest(group_wait="1s")], {"URL_SLACK": f"{slack.url}/services/{TOKEN}"})
    ids = [seed(db, "test_kind", f"subject{i}", about={"cluster": "main"}, at=time.time() - 5) for i in range(3)]
    rows = n.tick()
    assert [r["incident_id"] for r in rows] == ids and {r["event"] for r in rows} == {"opened"}
    assert n.tick() == []                       # decided once
    slack.mode = "fail"
    wait = n.deliver("slack")
    assert 1.0 <= wait <= 1.1 and len(slack.requests) == 1     # the head only
    head = db.pending_alerts(destination="slack")[0]
    assert head["status"] == "retrying" and head["last_error"].startswith("HTTP 500")
    assert n.deliver("slack") > 0 and len(slack.requests) == 1   # not due yet
    slack.mode = "ok"
    assert n.deliver("slack", now=time.time() + 60) is None
    got = [r.json["blocks"][-1]["elements"][0]["text"] for r in slack.delivered()]
    assert got == [f"chatops · incident/{i}/opened" for i in ids]
    assert db.pending_alerts() == [] and n.lanes["slack"].counts.delivered == 3
    assert n.lanes["slack"].counts.failed == 1


def test_a_rejected_notification_is_set_aside_and_the_next_goes(db, slack):
    n = notifier(db, [dest(group_wait="1s")], {"URL_SLACK": f"{slack.url}/services/{TOKEN}"})
    seed(db, "test_kind", "a", about={}, at=time.time() - 5)
    seed(db, "test_kind", "b", about={}, at=time.time() - 5)
    n.tick()
    slack.mode = "reject"
    slack.reject_body = f"no_service for /services/{TOKEN}"
    assert n.deliver("slack") is None
    rows = db.alerts()
    assert [r["status"] for r in rows] == ["rejected", "rejected"]
    assert all(TOKEN not in r["last_error"] and "no_service" in r["last_error"] for r in rows)


def test_429_retry_after_is_kept_on_the_row(db, slack):
    n = notifier(db, [dest(group_wait="1s")], {"URL_SLACK": f"{slack.url}/services/{TOKEN}"})
    seed(db, "test_kind", "a", about={}, at=time.time() - 5)
    n.tick()
    slack.mode, slack.retry_after = "throttle", "120"
    before = time.time()
    wait = n.deliver("slack")
    assert 119 <= wait <= 121
    assert db.pending_alerts()[0]["next_attempt"] >= before + 119


def test_backoff_doubles_to_a_cap_with_small_jitter():
    assert [backoff(a, lambda: 0.0) for a in (1, 2, 3, 4, 5, 6, 7, 20)] == [1, 2, 4, 8, 16, 30, 30, 30]
    assert backoff(6, lambda: 1.0) == 33.0


def test_an_unset_variable_disables_its_destination_with_one_warning(db, slack, caplog):
    caplog.set_level(logging.INFO, logger="controlplane.alerting")
    n = notifier(db, [dest(group_wait="1s"), dest("hook", "webhook", group_wait="1s", secret_env="HOOK_SECRET")],
                 {"URL_SLACK": f"{slack.url}/services/{TOKEN}", "URL_HOOK": "http://127.0.0.1:9/x"})
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["alert destination hook disabled: HOOK_SECRET is not set"]
    seed(db, "test_kind", "a", about={}, at=time.time() - 5)
    rows = n.tick()
    assert [r["destination"] for r in rows] == ["slack"]
    assert n.deliver("hook") is None
    assert TOKEN not in caplog.text and "127.0.0.1:9" not in caplog.text


def test_a_hanging_destination_does_not_delay_another(db, slack, hook):
    slack.mode = "hang"
    n = notifier(db, [dest(group_wait="1s", group_interval="1s"),
                      dest("hook", "webhook", group_wait="1s", group_interval="1s")],
                 {"URL_SLACK": f"{slack.url}/services/{TOKEN}", "URL_HOOK": f"{hook.url}/h"},
                 timeout=30, tick_s=0.05)
    n.start()
    try:
        iid = seed(db, "test_kind", "a", about={})
        wait_for(lambda: len(hook.delivered()) == 1, 15, 0.05, "the webhook's notification")
        assert len(slack.requests) == 1 and slack.delivered() == []      # still hanging
        db.set_incident_state(iid, "resolved", "tester")
        wait_for(lambda: len(hook.delivered()) == 2, 15, 0.05, "the webhook's resolved")
        assert [r.headers["X-Chatops-Event"] for r in hook.delivered()] == ["opened", "resolved"]
        assert len(slack.requests) == 1
    finally:
        slack.release()
        n.stop()
        n.stop()                # idempotent


def test_a_silenced_incident_is_not_queued_until_the_silence_ends(db, slack):
    n = notifier(db, [dest(group_wait="1s")], {"URL_SLACK": f"{slack.url}/services/{TOKEN}"})
    seed(db, at=time.time() - 5)
    s = db.add_silence([{"name": "cluster", "op": "=", "value": "testing"}], time.time() + 3600, "tester")
    assert n.tick() == []
    db.expire_silence(s["id"], "tester")
    assert [r["event"] for r in n.tick()] == ["opened"]
