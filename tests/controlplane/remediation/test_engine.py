"""The remediation engine's guarantees on a real database and run directory, with a small action
of the test's own (its plan reads a value, its apply writes it) standing in for one that needs a
cluster: params refused before anything, stale plans refused, applied at most once, one apply per
subject at a time, and an action that raises leaves a failed, audited plan that can be retried."""

from __future__ import annotations

import fcntl
import os
import types

import pytest

from cluster.rundir import RunDir
from controlplane.database import Database
from controlplane.remediation import ACTIONS, plans
from controlplane.remediation.base import (
    BadParams,
    Busy,
    Context,
    Draft,
    Outcome,
    Param,
    StalePlan,
    Unavailable,
)


def _action(store: dict) -> types.ModuleType:
    m = types.ModuleType("setvalue")
    m.NAME, m.VERIFY = "setvalue", ()
    m.PARAMS = {"key": Param(str, required=True, choices=("a", "b")), "value": Param(int, minimum=0, maximum=9)}
    m.subject = lambda cf, p: f"store:{p['key']}"

    def plan(ctx, p):
        now = store.get(p["key"])
        return Draft(summary=f"set {p['key']}", diff=[f"- {now}", f"+ {p['value']}"], state={"now": now},
                     changes=now != p["value"])

    def apply(ctx, p, draft):
        if store.get("explode"):
            raise Unavailable("the store went away")
        store[p["key"]] = p["value"]
        return Outcome(True, f"{p['key']}={p['value']}", {"set": p["key"]})
    m.plan, m.apply = plan, apply
    return m


@pytest.fixture()
def env(tmp_path, monkeypatch):
    store: dict = {"a": 1}
    monkeypatch.setitem(ACTIONS, "setvalue", _action(store))
    db = Database(tmp_path / "db.sqlite3")
    yield store, Context(cf=None, cluster_path=None, run=RunDir(tmp_path), db=db)
    db.close()


def test_params_are_refused_naming_the_parameter(env):
    _, ctx = env
    for params, name in (({}, "key"), ({"key": "z"}, "key"), ({"key": "a", "value": "x"}, "value"),
                         ({"key": "a", "value": 12}, "value"), ({"key": "a", "other": 1}, "other")):
        with pytest.raises(BadParams, match=f"bad parameter {name}"):
            plans.make_plan(ctx, [("setvalue", params)], "tester")


def test_apply_once_and_idempotent(env):
    store, ctx = env
    plan = plans.make_plan(ctx, [("setvalue", {"key": "a", "value": "5"})], "tester")
    assert store["a"] == 1 and plan["steps"][0]["diff"] == ["- 1", "+ 5"]
    done = plans.apply_plan(ctx, plan["id"], "tester")
    assert done["state"] == "applied" and store["a"] == 5
    store["a"] = 7                      # changed by hand after the apply
    assert plans.apply_plan(ctx, plan["id"], "tester")["applied_at"] == done["applied_at"]
    assert store["a"] == 7 and len(ctx.db.audit_for_plan(plan["id"])) == 1


def test_stale_plan_is_refused(env):
    store, ctx = env
    plan = plans.make_plan(ctx, [("setvalue", {"key": "a", "value": 5})], "tester")
    store["a"] = 3
    with pytest.raises(StalePlan):
        plans.apply_plan(ctx, plan["id"], "tester")
    assert store["a"] == 3 and ctx.db.plan(plan["id"])["state"] == "failed"
    # Already as asked is not stale: nothing to do.
    same = plans.make_plan(ctx, [("setvalue", {"key": "a", "value": 4})], "tester")
    store["a"] = 4
    assert plans.apply_plan(ctx, same["id"], "tester")["result"]["steps"][0]["detail"].startswith("nothing")


def test_one_apply_per_subject(env):
    _, ctx = env
    plan = plans.make_plan(ctx, [("setvalue", {"key": "a", "value": 5})], "tester")
    (ctx.run.root / "locks").mkdir(exist_ok=True)
    fd = os.open(ctx.run.root / "locks" / "store_a.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)        # another apply holds the subject
    try:
        with pytest.raises(Busy, match="store:a"):
            plans.apply_plan(ctx, plan["id"], "tester")
    finally:
        os.close(fd)
    assert plans.apply_plan(ctx, plan["id"], "tester")["state"] == "applied"


def test_an_action_that_raises_leaves_a_failed_audited_plan_that_can_be_retried(env):
    store, ctx = env
    plan = plans.make_plan(ctx, [("setvalue", {"key": "b", "value": 2})], "tester")
    store["explode"] = True
    failed = plans.apply_plan(ctx, plan["id"], "tester")
    assert failed["state"] == "failed" and "the store went away" in failed["result"]["detail"]
    assert [a["result"] for a in ctx.db.audit_for_plan(plan["id"])] == ["failed"]
    store["explode"] = False
    assert plans.apply_plan(ctx, plan["id"], "tester")["state"] == "applied" and store["b"] == 2


def test_an_apply_on_all_shards_waits_for_none_of_them(env, monkeypatch):
    from cluster.spec import ClusterFile
    from tests.conftest import small_cluster
    store, ctx = env
    ctx.cf = ClusterFile.model_validate(small_cluster("127.0.9"))
    monkeypatch.setattr(ACTIONS["setvalue"], "subject", lambda cf, p: "shard:all")
    plan = plans.make_plan(ctx, [("setvalue", {"key": "a", "value": 5})], "tester")
    (ctx.run.root / "locks").mkdir(exist_ok=True)
    fd = os.open(ctx.run.root / "locks" / "shard_shard1.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)        # an apply on shard1 alone is running
    try:
        with pytest.raises(Busy, match="shard:shard1"):
            plans.apply_plan(ctx, plan["id"], "tester")
    finally:
        os.close(fd)
    assert store["a"] == 1 and plans.apply_plan(ctx, plan["id"], "tester")["state"] == "applied"
