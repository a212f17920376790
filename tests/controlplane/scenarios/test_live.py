"""Scenarios on a real small cluster (2 chat hosts in clusters main and testing, 2 shards, its
control plane): each fault's inject then undo leaves the cluster as it was, and `chatops scenario
list` / a short `chatops scenario run tpp-leak` work end to end."""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path

import pytest
import redis

from cluster import clusterfile
from cluster.rundir import RunDir
from controlplane.scenarios.api import Api
from controlplane.scenarios.base import Env, shard_of_room
from controlplane.scenarios.leak import Leak
from controlplane.scenarios.no_keepalive import NoKeepalive
from tests.conftest import api_token, chatops, live_controlplane, redis_auth

ROOM = "twitchplayspokemon"      # not placed by the small cluster: it lives on the first cluster, main


@pytest.fixture(scope="module")
def live():
    with api_token(secrets.token_hex(16)):
        with live_controlplane(traffic=False) as (c, base):
            cf = clusterfile.load(c.config).spec
            env = Env(cf=cf, config_path=Path(c.config), run=RunDir(c.run), api=Api(cf), room=ROOM, say=print,
                      options={"leak": 1000})
            yield c, env


def _snapshot(env: Env) -> dict:
    """What the faults touch: each shard's maxclients and leak-like connections from chat-testing, each
    exchange's upstream settings."""
    out = {}
    testing = env.cf.address("chat-testing")
    for s in env.cf.redis.shards:
        r = redis.Redis(**redis_auth(), host=env.cf.address(s.host), port=s.port, socket_timeout=5)
        try:
            # The leak's connections ran one PING; chat-testing's own clue may open another pooled
            # connection meanwhile, which is the cluster working, not the leak left behind.
            out[s.name] = (r.config_get("maxclients")["maxclients"],
                           sum(1 for cl in r.client_list() if cl["addr"].rsplit(":", 1)[0] == testing
                               and cl.get("cmd") == "ping"))
        finally:
            r.close()
    nk = NoKeepalive()
    for host in env.cf.clusters["main"].hosts:
        out[f"exchange-{host}"] = nk._call(env, host, "GET")["upstreams"]
    return out


def _wait(pred, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.2)
    return False


def test_leak_inject_then_undo_leaves_the_cluster_as_it_was(live):
    _, env = live
    before = _snapshot(env)
    shard = shard_of_room(env, ROOM)
    fault = Leak()
    try:
        fault.inject(env)
        testing = env.cf.address("chat-testing")
        # The shard is full now: only the fault's own connection, opened first, gets in.
        assert _wait(lambda: sum(1 for cl in fault.admin.client_list()
                                 if cl["addr"].rsplit(":", 1)[0] == testing) >= 950, timeout=30), "the leak never filled it"
        assert int(fault.admin.config_get("maxclients")["maxclients"]) < int(before[shard][0])
        fault.thread.join(20)          # every connection tried: the last ones were refused
        with pytest.raises(redis.exceptions.ConnectionError, match="max number of clients"):
            _snapshot(env)
    finally:
        undone = fault.undo(env)
    assert any("closed" in x for x in undone) and any("maxclients back" in x for x in undone)
    assert _wait(lambda: _snapshot(env) == before), (before, _snapshot(env))
    assert fault.undo(env) == []           # a second undo has nothing left to do


def test_no_keepalive_inject_then_undo_leaves_the_exchanges_as_they_were(live):
    _, env = live
    before = _snapshot(env)
    fault = NoKeepalive()
    try:
        fault.inject(env)
        during = _snapshot(env)
        assert all(not u["keepalive"] for h in env.cf.clusters["main"].hosts
                   for u in during[f"exchange-{h}"].values())
    finally:
        undone = fault.undo(env)
    assert undone and all("keepalive back to true" in x for x in undone)
    assert _snapshot(env) == before


def test_cli_lists_every_scenario():
    out = chatops("scenario", "list", "--json")
    assert out.returncode == 0, out.stderr
    names = [s["name"] for s in json.loads(out.stdout)["scenarios"]]
    assert names == ["tpp", "tpp-hot-room", "tpp-leak", "tpp-no-keepalive"]


def test_cli_runs_the_leak_finds_and_names_it_and_undoes_it(live, tmp_path):
    c, env = live
    before = _snapshot(env)
    report = tmp_path / "leak.html"
    out = chatops("scenario", "run", "tpp-leak", "--fix", "none", "--timeout", "60", "--room", ROOM,
                  "--set", "leak=1000", "--report", str(report), "--json",
                  "--config", str(c.config), "--run-dir", str(c.run), timeout=120)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    leak = result["faults"][0]
    assert leak["detect_s"] is not None, out.stderr
    assert leak["root_cause_s"] is not None, out.stderr       # the incident names chat-testing and testing
    assert result["verdict"]["fixed_s"]["met"] is None         # --fix none: observed, not judged
    assert "undone: tpp-leak: closed" in out.stderr and "maxclients back" in out.stderr
    html = report.read_text()
    assert "tpp-leak" in html and "<svg" in html
    record = json.loads((tmp_path / "leak.html.json").read_text())
    assert record["loadgen"] and record["loadgen"]["series"], "the witness traffic's series is in the record"
    assert _wait(lambda: _snapshot(env) == before), (before, _snapshot(env))
