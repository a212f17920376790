"""Hostile moderation commands and messages against a real clue (issue 16): a bad `.timeout`
argument gets its own NOTICE and never a 500 for the whole batch, one message that raises while
being decided fails alone, and moderation commands pass the per-user rate limit before they write.

Driven over clue's own HTTP route (`/v1/privmsg`, as the edges call it) and through a real IRC
client, against a real cluster (`chatops up`: Redis, HAProxy, edge, clue, exchange)."""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from chat import clue, keys, users
from chat.cache import ShardedCache
from cluster import clusterfile
from cluster.rundir import RunDir
from tests.chat.test_edge import Client, tags
from tests.conftest import cluster_up, free_subnet, run_secrets, small_cluster, write_cluster

PRIVILEGED_RATE = 10     # the test cluster's limit for mods, so the rate test stays small


@pytest.fixture(scope="module")
def live():
    """small_cluster() with a low mods' rate limit; yields (RunningCluster, spec, subnet)."""
    subnet = free_subnet()
    run = Path(tempfile.mkdtemp(prefix="co-", dir="/tmp"))
    doc = small_cluster(subnet)
    doc["clusters"]["main"]["services"] = {"clue": {"privileged_rate": PRIVILEGED_RATE}}
    config = write_cluster(run.parent / f"{run.name}.yaml", doc)
    try:
        with cluster_up(config, run) as rc:
            yield rc, clusterfile.load(config).spec, subnet
    finally:
        shutil.rmtree(run, ignore_errors=True)
        config.unlink(missing_ok=True)


def redis_do(cf, fn):
    """Run `fn(cache)` against the shards as chat1 reaches them (through its HAProxy listeners)."""
    async def go():
        async with ShardedCache.for_host(cf, "chat1", timeout="2s") as cache:
            return await fn(cache)
    return asyncio.run(go())


def ban_of(cf, login: str, room: str = "lobby"):
    return redis_do(cf, lambda cache: cache.client_for(keys.bans(room)).hget(keys.bans(room), login))


def add_mod(cf, login: str, room: str = "lobby") -> str:
    return redis_do(cf, lambda cache: users.add_user(cache, login, mod_rooms=(room,)))


def privmsg(rc, subnet: str, items: list[dict]) -> tuple[int, dict]:
    """POST a batch to chat1's clue as an edge does, with the internal token; (HTTP status, JSON body)."""
    token = run_secrets(rc.run)["CHATOPS_INTERNAL_TOKEN"]
    req = urllib.request.Request(f"http://{subnet}.1:19000/v1/privmsg",
                                 data=json.dumps({"items": items}).encode(),
                                 headers={"Content-Type": "application/json",
                                          "Authorization": f"Bearer {token}"},
                                 method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, {"error": exc.read().decode(errors="replace")[:300]}


def msg(login: str, text: str, room: str = "lobby", **extra) -> dict:
    return {"login": login, "room": room, "text": text, "edge": "chat1", "conn": 1, **extra}


def msg_ids(results: list[dict]) -> list[str]:
    return ["accepted" if r["ok"] else r["notice"]["msg_id"] for r in results]


# -- the parser alone, on hostile input --

HOSTILE = [
    (".timeout bob \u00b2", "bad_timeout_duration"),                # superscript two: isdigit(), not int()
    (".timeout bob \u0661\u0660", "bad_timeout_duration"),          # Arabic-Indic "10": int() takes it
    (".timeout bob \uff11\uff10", "bad_timeout_duration"),          # full-width "10"
    (".timeout bob 99999999999999999999", "bad_timeout_duration"),  # was silently capped
    (".timeout bob -5", "bad_timeout_duration"),                    # was a reason, with 600 s
    (".timeout bob +5", "bad_timeout_duration"),
    (".timeout bob 0", "bad_timeout_duration"),                     # was bumped to 1 s
    (".timeout bob 1209601", "bad_timeout_duration"),               # two weeks and a second
    (".timeout bob 10m", "bad_timeout_duration"),                   # whole seconds only
    (".timeout bob " + "9" * 10_240, "bad_timeout_duration"),       # 10 KB: int() raises past 4300 digits
    (".timeout", "usage_timeout"),
    (".ban", "usage_ban"),
    ("/unban", "usage_unban"),
    (".ban @", "invalid_user"),                                     # was a ban of the empty login
    (".ban \u00b2", "invalid_user"),
    (".timeout b\u00f6b 60", "invalid_user"),
    (".unban " + "a" * 26, "invalid_user"),
    (".ban " + "x" * 10_240, "invalid_user"),
]


@pytest.mark.parametrize("text,msg_id", HOSTILE, ids=[f"{i}-{m}" for i, (_, m) in enumerate(HOSTILE)])
def test_parser_refuses_hostile_arguments_with_a_msg_id(text, msg_id):
    result = clue.parse_mod_command(text)
    assert getattr(result, "msg_id", None) == msg_id, result
    assert result.text and len(result.text) < 200     # a clear, short NOTICE, never the input echoed


def test_parser_bounds_the_duration_to_two_weeks_in_ascii_seconds():
    assert clue.parse_mod_command(".timeout bob 1").duration == 1
    assert clue.parse_mod_command(".timeout bob 1209600 spam").duration == 1209600
    assert clue.parse_mod_command(".timeout @Bob 0000060").duration == 60
    assert clue.parse_mod_command(".timeout bob being rude").duration == clue.TIMEOUT_DEFAULT
    for text in (".timeout bob 0", ".timeout bob 1209601", ".timeout bob 00000000000001209601"):
        assert getattr(clue.parse_mod_command(text), "msg_id", None) == "bad_timeout_duration", text


# -- a real clue --

def test_hostile_moderation_arguments_get_a_notice_and_spare_the_batch(live):
    rc, cf, subnet = live
    add_mod(cf, "hmod1")
    add_mod(cf, "hmod2")
    status, body = privmsg(rc, subnet, [
        msg("hmod1", ".timeout hvictim \u00b2"),
        msg("halice", "hello from alice"),
        msg("hmod1", ".timeout hvictim \u0661\u0660"),
        msg("hmod1", ".timeout hvictim 99999999999999999999"),
        msg("hmod1", ".timeout hvictim -5"),
        msg("hbob", "hello from bob"),
        msg("hmod2", ".timeout hvictim " + "9" * 10_240),
        msg("hmod2", ".ban \u00b2"),
        msg("hmod2", ".timeout"),
    ])
    assert status == 200, body
    assert msg_ids(body["results"]) == [
        "bad_timeout_duration", "accepted", "bad_timeout_duration", "bad_timeout_duration",
        "bad_timeout_duration", "accepted", "bad_timeout_duration", "invalid_user", "usage_timeout"]
    # None of them timed anyone out.
    assert ban_of(cf, "hvictim") is None
    status, body = privmsg(rc, subnet, [msg("hvictim", "still here")])
    assert status == 200 and msg_ids(body["results"]) == ["accepted"]


def test_irc_mod_sees_bad_timeout_duration_notice(live):
    rc, cf, subnet = live
    token = add_mod(cf, "ircmod")
    mod = Client(f"{subnet}.1", 6667, "ircmod", token)
    try:
        mod.join("#lobby")
        mod.conn.privmsg("#lobby", ".timeout ircvictim \u00b2")
        notice = mod.wait("pubnotice")
        assert tags(notice)["msg-id"] == "bad_timeout_duration", notice.arguments
        assert "1209600" in notice.arguments[0]
        mod.conn.privmsg("#lobby", ".timeout ircvictim 30")
        assert tags(mod.wait("pubnotice"))["msg-id"] == "timeout_success"
    finally:
        mod.close()


def test_one_message_that_raises_fails_alone_and_is_logged_once(live):
    rc, cf, subnet = live
    # State clue cannot read: a ban entry that is not a number (clue raises deciding this user's
    # messages), and a message whose tags are not an object.
    bans = keys.bans("lobby")
    redis_do(cf, lambda cache: cache.client_for(bans).hset(bans, "corrupt", "garbage"))
    log = RunDir(rc.run).log("clue-chat1")
    before = log.read_text(errors="replace").count("could not decide")
    status, body = privmsg(rc, subnet, [
        msg("corrupt", "one"),
        msg("calice", "hello"),
        msg("corrupt", "two"),
        msg("cbob", "hi", tags=["not", "an", "object"]),
        msg("corrupt", "three"),
        msg("ccarol", "hey"),
    ])
    assert status == 200, body
    assert msg_ids(body["results"]) == ["msg_rejected", "accepted", "msg_rejected", "accepted",
                                        "msg_rejected", "accepted"]
    # Three failures in one batch: one log line (the rest are counted, not written).
    time.sleep(0.5)
    text = log.read_text(errors="replace")
    assert text.count("could not decide") - before == 1, text[-2000:]


def test_moderation_commands_pass_the_user_rate_limit_before_writing(live):
    rc, cf, subnet = live
    add_mod(cf, "ratemod")
    items = [msg("ratemod", ".timeout rfiller 5") for _ in range(PRIVILEGED_RATE)]
    items += [msg("ratemod", ".ban rvictim"), msg("ratemod", ".timeout rvictim2 60")]
    status, body = privmsg(rc, subnet, items)
    assert status == 200, body
    assert msg_ids(body["results"]) == ["timeout_success"] * PRIVILEGED_RATE + ["msg_ratelimit"] * 2
    # The refused commands wrote nothing: rvictim is not banned and may talk.
    bans = redis_do(cf, lambda cache: cache.client_for(keys.bans("lobby")).hgetall(keys.bans("lobby")))
    assert "rvictim" not in bans and "rvictim2" not in bans and "rfiller" in bans
    status, body = privmsg(rc, subnet, [msg("rvictim", "free to talk")])
    assert status == 200 and msg_ids(body["results"]) == ["accepted"]
