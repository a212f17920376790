"""`GET /api/v1/slots`, `GET /api/v1/slots/progress` and a slot-moving plan's `progress`, on a live
control plane (real Redis shards, `chatops up`), each answer checked against openapi.json: the map
read from the shards and the file, a published change, the idle and written progress, a plan
seeing only the progress written since it was made, bad parameters, an unreadable map."""

from __future__ import annotations

import json
import secrets
import time

import pytest

from cluster import clusterfile
from cluster.rundir import RunDir
from controlplane.resharding import progress
from controlplane.resharding import slotmap as slotmaps
from tests.conftest import api_token, live_controlplane
from tests.controlplane.web.test_api import assert_json_error, call, response_validator, schema_errors

PREFIX = "/api/v1"
TOKEN = "slots-api-" + secrets.token_urlsafe(16)
AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
MOVING = {"phase": "moving", "slots_total": 64, "slots_done": 12, "keys_total": 500_000,
          "keys_moved": 183_204,
          "keys_per_s": 61_402.3, "eta_s": 5.2, "started_at": 0.0, "updated_at": 0.0, "detail": ""}
WHAT = {"action": "reshard", "from": "shard0", "to": "shard1", "slots": "0-63"}


@pytest.fixture(scope="module")
def live():
    with api_token(TOKEN), live_controlplane(traffic=False) as (c, base):
        yield c, base, clusterfile.load(c.config).spec, RunDir(c.run)


def get(base: str, path: str, schema_path: str | None = None):
    r = call(base, PREFIX + path)
    assert r.status == 200, r
    body = r.json
    errors = schema_errors(response_validator(schema_path or path), body)
    assert not errors, f"{path} does not match the document:\n" + "\n".join(errors)
    return body


def test_slots_is_the_even_split_before_any_publication(live):
    _, base, _, run = live
    view = get(base, "/slots")
    assert view["epoch"] == 0
    assert view["source"] == "the cluster file's even split"
    assert view["file"] == {"path": str(run.root / "slotmap.json"), "epoch": None}
    assert view["copies"] == {"shard0": "no published map", "shard1": "no published map"}
    assert view["shards"] == [{"name": "shard0", "index": 0, "slots": 8192, "ranges": [[0, 8191]]},
                              {"name": "shard1", "index": 1, "slots": 8192, "ranges": [[8192, 16383]]}]


def test_slots_shows_a_published_change_and_each_shards_copy(live):
    c, base, cf, run = live
    with slotmaps.connections(cf) as conns:
        smap = slotmaps.load(cf, c.config, run, conns)
        assert slotmaps.publish(cf, c.config, run, smap.moved([0, 1, 2], 1), conns).ok
    view = get(base, "/slots")
    assert view["epoch"] == 1 and view["source"] == str(run.root / "slotmap.json")
    assert view["file"]["epoch"] == 1 and view["copies"] == {"shard0": 1, "shard1": 1}
    assert {s["name"]: (s["slots"], s["ranges"]) for s in view["shards"]} == {
        "shard0": (8189, [[3, 8191]]), "shard1": (8195, [[0, 2], [8192, 16383]])}


def test_progress_is_idle_until_a_migration_writes_it(live):
    _, base, _, run = live
    progress.path(run).unlink(missing_ok=True)
    assert get(base, "/slots/progress") == {"phase": "idle"}
    now = time.time()
    progress.write(run, WHAT, {**MOVING, "started_at": now - 3, "updated_at": now})
    p = get(base, "/slots/progress")
    assert {k: p[k] for k in (*WHAT, *MOVING) if k not in ("started_at", "updated_at")} == {
        **WHAT, **{k: v for k, v in MOVING.items() if k not in ("started_at", "updated_at")}}
    assert p["written_at"] >= now
    progress.write(run, WHAT, {**MOVING, "phase": "done", "slots_done": 64, "keys_moved": 500_000,
                               "eta_s": None})
    p = get(base, "/slots/progress")
    assert p["phase"] == "done" and p["keys_moved"] == 500_000 and p["eta_s"] is None


def _plan(base: str, body: dict) -> dict:
    r = call(base, f"{PREFIX}/plans", "POST", AUTH, json.dumps(body).encode())
    assert r.status == 201, r
    return r.json


def test_a_plan_that_moves_slots_has_the_progress_written_since_it_was_made(live):
    _, base, _, run = live
    progress.write(run, WHAT, MOVING)                 # an earlier migration's, before the plan
    plan = _plan(base, {"action": "reshard",
                        "params": {"shard": "shard1", "to_shard": "shard0", "slots": "0-2"}})
    detail = get(base, f"/plans/{plan['id']}", "/plans/{plan_id}")
    assert detail["progress"] is None
    progress.write(run, {**WHAT, "from": "shard1", "to": "shard0", "slots": "0-2"},
                   {**MOVING, "slots_total": 3, "slots_done": 1, "keys_total": 0, "keys_moved": 0})
    detail = get(base, f"/plans/{plan['id']}", "/plans/{plan_id}")
    assert detail["progress"]["from"] == "shard1" and detail["progress"]["slots_done"] == 1
    assert detail["progress"]["written_at"] >= detail["created"]
    # a plan that moves no slot has no progress at all
    other = _plan(base, {"action": "set_redis_config", "params": {"shard": "shard0", "timeout": 0}})
    assert "progress" not in get(base, f"/plans/{other['id']}", "/plans/{plan_id}")


@pytest.mark.parametrize("target", ["/slots?epoch=1", "/slots/progress?since=5m"])
def test_slots_endpoints_take_no_query_parameter(live, target):
    _, base, _, _ = live
    assert "unknown query parameter" in assert_json_error(call(base, PREFIX + target), 400)


def test_an_unreadable_map_file_is_a_503_saying_why(live):
    _, base, _, run = live
    path = run.root / "slotmap.json"
    kept = path.read_bytes()
    try:
        path.write_text('{"slots": 16384, "shards": 2, "ranges": "all of them"}')
        message = assert_json_error(call(base, f"{PREFIX}/slots"), 503)
        assert message.startswith("the slot map cannot be read: ") and "ranges" in message
    finally:
        path.write_bytes(kept)
    assert get(base, "/slots")["epoch"] == 1
