"""Chat tokens never reach a Redis key name, the control plane's pages or its API, and bans, mods,
users and tokens survive a shard's SIGKILL and memory pressure (issue 16), on one real cluster
with its control plane (`chatops up`: Redis, HAProxy, edge, clue, exchange, scheduler, web) and
real IRC clients.

The tests talk to the shards directly for what no chat path does (SCAN, CONFIG SET, filling a
shard), as the control plane's ACL user when the cluster has one."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request

import pytest

from chat import keys
from chat.sharding import SlotMap
from cluster import clusterfile
from collectors.redis import find_shard
from collectors.resp import Conn
from tests.chat.test_edge import TAGS, Client, tags
from tests.conftest import chatops, live_controlplane, redis_creds, wait_for

ROOM = "lobby"


@pytest.fixture(scope="module")
def live():
    """(RunningCluster, spec, control plane base URL), no traffic: these tests make their own."""
    with live_controlplane(traffic=False) as (c, base):
        yield c, clusterfile.load(c.config).spec, base


def add_user(c, name: str, *args: str) -> str:
    result = chatops("users", "add", name, "--config", str(c.config), "--run-dir", str(c.run), *args)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().removeprefix("oauth:")


def shard_conn(c, cf, name: str, user: str = "chatops") -> Conn:
    """A connection to shard `name` logged in as Redis ACL user `user`: `chatops` reads every key
    and runs the admin commands, only `clue` writes chat-shaped keys ({...})."""
    shard = find_shard(cf, name)
    return Conn(cf.address(shard.host), shard.port, 10.0, auth=redis_creds(c.run, user))


def pressure_keys(conn: Conn) -> list[bytes]:
    found, cursor = [], b"0"
    while True:
        cursor, batch = conn.call("SCAN", cursor, "MATCH", "{pressure}:*", "COUNT", 1000)
        found += batch
        if cursor in (b"0", 0):
            return found


def shard_of(cf, key: str) -> str:
    names = [s.name for s in cf.redis.shards]
    return names[SlotMap.even(len(names)).shard_of(key)]


def all_keys(c, cf) -> dict[str, list[str]]:
    out = {}
    for s in cf.redis.shards:
        with shard_conn(c, cf, s.name) as conn:
            found, cursor = [], b"0"
            while True:
                cursor, batch = conn.call("SCAN", cursor, "COUNT", 1000)
                found += [k.decode("utf-8", "replace") for k in batch]
                if cursor in (b"0", 0):
                    break
            out[s.name] = found
    return out


def irc(cf, nick: str, token: str | None) -> Client:
    # echo-message: an accepted message comes back to its sender, so "accepted" is seen, not assumed.
    return Client(cf.address("chat1"), cf.clusters["main"].frontend.irc_port, nick,
                  f"oauth:{token}" if token else None, caps=(*TAGS, "echo-message"))


def irc_when_up(cf, nick: str, token: str, timeout: float = 30.0) -> Client:
    """Log in, retrying while clue cannot yet reach a restarted shard (which the edge also
    answers with `Login authentication failed`); a token that is gone never logs in."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return irc(cf, nick, token)
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def get(base: str, path: str) -> str:
    with urllib.request.urlopen(base + path, timeout=30) as resp:
        return resp.read().decode("utf-8", "replace")


def ban(cf, mod_token: str, mod: str, target: str) -> None:
    client = irc(cf, mod, mod_token)
    try:
        client.join(f"#{ROOM}")
        client.conn.privmsg(f"#{ROOM}", f".ban {target}")
        notice = client.wait("pubnotice", lambda ev: "banned" in ev.arguments[0])
        assert tags(notice)["msg-id"] == "ban_success"
    finally:
        client.close()


def says(client: Client, text: str, timeout: float = 20.0) -> str:
    """The msg-id of the NOTICE a message gets, resent while clue says `msg_unavailable` (a shard
    just restarted); 'accepted' when it is delivered."""
    deadline = time.monotonic() + timeout
    while True:
        client.events.clear()
        client.conn.privmsg(f"#{ROOM}", text)
        end = time.monotonic() + 10
        msg_id = None
        while time.monotonic() < end and msg_id is None:
            client.reactor.process_once(0.05)
            for ev in client.events:
                if ev.type == "pubnotice":
                    msg_id = tags(ev).get("msg-id")
                elif ev.type == "pubmsg" and ev.arguments == [text]:
                    msg_id = "accepted"
        assert msg_id is not None, f"neither a NOTICE nor the message's echo within 10 s: {text!r}"
        if msg_id != "msg_unavailable" or time.monotonic() > deadline:
            return msg_id
        time.sleep(0.5)


# -- (a) tokens: never a key name, never on a page --

def test_tokens_never_reach_a_key_name_a_page_or_the_api(live):
    c, cf, base = live
    token = add_user(c, "alice", "--mod", ROOM)
    digest_key = keys.token(token)
    everything = all_keys(c, cf)
    assert not [k for ks in everything.values() for k in ks if token in k]
    shard = shard_of(cf, digest_key)
    assert digest_key in everything[shard]
    probe = irc(cf, "alice", token)                 # clue finds the login by the token's digest
    probe.close()

    old_key = f"{{{token}}}.auth"                    # the key of before issue 16, as a leftover
    probe = f"<{len(token)} bytes>"
    with shard_conn(c, cf, shard) as conn, shard_conn(c, cf, shard) as named, \
            shard_conn(c, cf, shard, "clue") as as_clue:
        named.call("CLIENT", "SETNAME", f"tok-{token}")
        slower = conn.call("CONFIG", "GET", "slowlog-log-slower-than")[1]
        conn.pipeline([("GET", digest_key)] * 400)  # the token's key is hot
        try:
            # Every command after the first is in the slow log, a scrape's own included; the last
            # 128 (slowlog-max-len) keep the old key's GETs and the token as a value.
            conn.call("CONFIG", "SET", "slowlog-log-slower-than", "0")
            as_clue.pipeline([("SET", old_key, "alice"), *[("GET", old_key)] * 300])
            conn.pipeline([("SET", "chatops:probe", token),
                           ("CONFIG", "SET", "slowlog-log-slower-than", slower)])

            def scraped() -> dict | None:
                d = json.loads(get(base, f"/api/v1/shards/{shard}"))
                hot = [k["key"] for k in d["hotkeys"]["keys"]]
                commands = [e["command"] for e in d["slowlog"]]
                return d if digest_key in hot and "<redacted {*}.auth>" in hot and \
                    f"SET chatops:probe {probe}" in commands else None
            seen = wait_for(scraped, 30, 0.5, what="a scrape with the hot keys and the slow log")
            assert "GET <redacted {*}.auth>" in [e["command"] for e in seen["slowlog"]]

            def named_client_listed() -> bool:     # unless 20 clients are idler than it
                d = json.loads(get(base, f"/api/v1/shards/{shard}/clients"))
                return any(m["name"] == "<redacted>" for m in d["most_idle"]) or (d["total"] or 0) > 20
            wait_for(named_client_listed, 20, 0.5, what="a CLIENT LIST scrape with the named client")
            paths = ["/api/v1/overview", "/api/v1/shards", "/api/v1/findings", "/api/v1/incidents",
                     "/api/v1/logs", "/", "/shards", "/incidents", "/services", "/hosts"]
            for s in cf.redis.shards:
                paths += [f"/api/v1/shards/{s.name}", f"/api/v1/shards/{s.name}/clients", f"/shards/{s.name}"]
            for path in paths:
                assert token not in get(base, path), path
            for name in ("controlplane.sqlite3", "controlplane.sqlite3-wal"):
                db = c.run / name
                assert not db.exists() or token.encode() not in db.read_bytes(), name
        finally:
            conn.call("UNLINK", old_key, "chatops:probe")


# -- (b), (c): durable moderation state --

def test_only_moderation_state_lives_without_a_ttl(live):
    """What clue writes for messages (rate-limit counters) expires; what lives forever is a
    durable kind (chat.keys.DURABLE_KINDS) or the slot guard's: volatile-lfu evicts the first and
    never the second."""
    c, cf, _ = live
    talker = irc(cf, "talker", add_user(c, "talker", "--color", "#1E90FF"))
    try:
        talker.join(f"#{ROOM}")
        assert says(talker, "hello") == "accepted"
    finally:
        talker.close()
    ttls: dict[str, int] = {}
    for shard, found in all_keys(c, cf).items():
        with shard_conn(c, cf, shard) as conn:
            ttls.update(zip(found, conn.pipeline([("TTL", k) for k in found])))
    counters = [k for k in ttls if ".rl." in k]
    # -2: expired between the SCAN and the TTL; 0: under half a second left.
    assert counters and all(ttls[k] != -1 for k in counters), {k: ttls[k] for k in counters}
    forever = [k for k, ttl in ttls.items() if ttl == -1]
    assert forever
    for key in forever:
        assert keys.public(key), key
        assert key.startswith("chatops:") or key.rpartition("}.")[2] in keys.DURABLE_KINDS, key


def test_a_ban_survives_sigkill_of_every_shard(live):
    c, cf, _ = live
    mod_token, troll_token = add_user(c, "modmarie", "--mod", ROOM), add_user(c, "troll")
    ban(cf, mod_token, "modmarie", "troll")
    names = [s.name for s in cf.redis.shards]
    before = {n: c.pid_of(f"redis-{n}") for n in names}
    for name in names:                               # tokens live on any shard: kill them all
        os.kill(before[name], signal.SIGKILL)
    def restarted() -> bool:
        try:
            return all(c.pid_of(f"redis-{n}") != before[n] for n in names)
        except (TypeError, StopIteration, KeyError):    # state.json mid-rewrite
            return False
    wait_for(restarted, 30, 0.2, what="the supervisor to restart every shard")

    troll = irc_when_up(cf, "troll", troll_token)   # the token survived
    try:
        troll.join(f"#{ROOM}")
        assert says(troll, "am I still banned?") == "msg_banned"
    finally:
        troll.close()
    mod = irc_when_up(cf, "modmarie", mod_token)
    try:
        mod.join(f"#{ROOM}")
        mod.conn.privmsg(f"#{ROOM}", ".unban troll")     # still a mod, and the ban is still there
        notice = mod.wait("pubnotice", lambda ev: "banned" in ev.arguments[0])
        assert tags(notice)["msg-id"] == "unban_success"
    finally:
        mod.close()


def test_memory_pressure_evicts_counters_never_bans_mods_or_tokens(live):
    """A shard filled far past a small maxmemory with keys that carry a TTL (and are read more than
    the ban is, so that an allkeys-lfu would rather evict the ban) keeps every key without one."""
    c, cf, _ = live
    mod_token, victim_token = add_user(c, "modmia", "--mod", ROOM), add_user(c, "victim")
    ban(cf, mod_token, "modmia", "victim")
    shard = shard_of(cf, keys.bans(ROOM))
    with shard_conn(c, cf, shard) as conn, shard_conn(c, cf, shard, "clue") as as_clue:
        found, cursor = [], b"0"
        while True:
            cursor, batch = conn.call("SCAN", cursor, "COUNT", 1000)
            found += batch
            if cursor in (b"0", 0):
                break
        durable = [k for k, ttl in zip(found, conn.pipeline([("TTL", k) for k in found])) if ttl == -1]
        assert keys.bans(ROOM).encode() in durable and keys.mods(ROOM).encode() in durable
        maxmemory = conn.call("CONFIG", "GET", "maxmemory")[1]
        used = int(conn.call("INFO", "memory").split(b"used_memory:")[1].split(b"\r\n")[0])
        evicted = int(conn.call("INFO", "stats").split(b"evicted_keys:")[1].split(b"\r\n")[0])
        value = b"v" * 1024
        written = 0
        try:
            conn.call("CONFIG", "SET", "maxmemory", str(used + (1 << 20)))
            for batch in range(8):
                cmds = []
                for i in range(batch * 1000, (batch + 1) * 1000):
                    # Eviction runs before EXEC, never between the SET and its GETs: each key
                    # reaches the LFU counter of a key read a few times before anything is evicted.
                    key = f"{{pressure}}:{i}"       # chat-shaped, so clue may write it
                    cmds += [("MULTI",), ("SET", key, value, "EX", 600), ("GET", key), ("GET", key),
                             ("EXEC",)]
                written += sum(1 for r in as_clue.pipeline(cmds) if isinstance(r, list))
            after = int(conn.call("INFO", "stats").split(b"evicted_keys:")[1].split(b"\r\n")[0])
            left = len(pressure_keys(conn))
            assert after - evicted > 1000 and left < written, (after - evicted, left, written)
            gone = [k for k, n in zip(durable, conn.pipeline([("EXISTS", k) for k in durable])) if n != 1]
            assert gone == [], gone
        finally:
            conn.call("CONFIG", "SET", "maxmemory", maxmemory)
            stale = pressure_keys(conn)
            for i in range(0, len(stale), 1000):
                conn.call("UNLINK", *stale[i:i + 1000])
    victim = irc_when_up(cf, "victim", victim_token)
    try:
        victim.join(f"#{ROOM}")
        assert says(victim, "gone yet?") == "msg_banned"
    finally:
        victim.close()
