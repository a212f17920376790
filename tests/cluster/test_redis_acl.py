"""Redis ACL users (cluster/redis_acl.py), on one live cluster with a replica: nothing but PING
without a password, directly or through a chat host's HAProxy listener; each user held to what it
needs; the replica following its primary as `replication`; no password on a command line, in a
log or in SLOWLOG; and the chat working end to end through it all."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

import pytest

from chat import slotguard
from chat.sharding import key_slot
from cluster import clusterfile, secrets
from cluster.redis_acl import Credentials
from cluster.rundir import RunDir
from collectors import redact
from collectors import redis as rc
from collectors.resp import Conn, RedisError
from controlplane.local import redis_config
from controlplane.remediation import set_redis_config
from controlplane.remediation.admin import AdminPool
from controlplane.remediation.base import BadParams, Unavailable, validate
from tests.conftest import (
    cluster_up,
    descendants,
    free_subnet,
    loadgen_report,
    redis_creds,
    run_secrets,
    small_cluster,
    start_loadgen,
    wait_for,
    write_cluster,
)

REFUSED = ("NOPERM", "NOAUTH")


@pytest.fixture(scope="module")
def acl_cluster():
    run = Path(tempfile.mkdtemp(prefix="co-", dir="/tmp"))
    subnet = free_subnet()
    config = write_cluster(run.parent / f"{run.name}.yaml", small_cluster(subnet, replica=True))
    try:
        with cluster_up(config, run) as c:
            yield c, clusterfile.load(config).spec, subnet
    finally:
        shutil.rmtree(run, ignore_errors=True)
        config.unlink(missing_ok=True)


def _redis_places(c) -> list[tuple[str, str, int]]:
    return [(p["name"], p["address"], p["port"]) for p in c.state["processes"] if p["name"].startswith("redis-")]


def _listeners(cf) -> list[tuple[str, str, int]]:
    return [(f"{host} listener {i}", cf.address(host), cf.listener_port(i))
            for host, _ in cf.chat_hosts() for i in range(len(cf.redis.shards))]


def _refused(conn: Conn, *args) -> str:
    with pytest.raises(RedisError) as e:
        conn.call(*args)
    assert str(e.value).startswith(REFUSED), f"{args}: {e.value}"
    return str(e.value)


def test_without_a_password_only_ping_answers(acl_cluster):
    c, cf, _ = acl_cluster
    places = _redis_places(c) + _listeners(cf)
    assert len(places) == 3 + 4
    for where, address, port in places:
        with Conn(address, port, timeout=5) as conn:
            assert conn.call("PING") == "PONG", where
            for args in [("GET", "{lobby}.bans"), ("SET", "{lobby}.x", "1"), ("CONFIG", "GET", "maxclients"),
                         ("KEYS", "*"), ("FLUSHALL",), ("INFO",), ("CLIENT", "LIST"), ("EVAL", "return 1", 0)]:
                _refused(conn, *args)
            # HAProxy's health check: PING, `info replication` for role:master, QUIT.
            assert b"role:" in conn.call("INFO", "replication")


def test_wrong_password_is_refused(acl_cluster):
    c, cf, _ = acl_cluster
    _, address, port = _redis_places(c)[0]
    # (`default` takes any password: it has none, and PING is all it may run.)
    for user in ("clue", "chatops", "replication", "nobody"):
        with Conn(address, port, timeout=5) as conn:
            with pytest.raises(RedisError, match="WRONGPASS"):
                conn.call("AUTH", user, "not-the-password-0123456789")
            _refused(conn, "GET", "{lobby}.bans")      # still unauthenticated
    with pytest.raises(RedisError, match="WRONGPASS"):
        Conn(address, port, timeout=5, auth=Credentials("clue", "x" * 20))


def test_clue_has_its_keys_and_nothing_else(acl_cluster):
    c, cf, _ = acl_cluster
    clue = redis_creds(user="clue")
    # Through a chat host's listener, as clue connects.
    with Conn(cf.address("chat1"), cf.listener_port(0), timeout=5, auth=clue) as conn:
        assert conn.call("SET", "{acltest}.color", "#123456") == "OK"
        assert conn.call("GET", "{acltest}.color") == b"#123456"
        conn.call("DEL", "{acltest}.color")
        conn.call("GET", slotguard.EPOCH)          # it may read the published map
        assert conn.call("SADD", f"{slotguard.TOUCHED}1", "{x}.y") in (0, 1)
        conn.call("SREM", f"{slotguard.TOUCHED}1", "{x}.y")
        for args in [("CONFIG", "GET", "maxclients"), ("CONFIG", "SET", "timeout", "1"), ("FLUSHALL",),
                     ("FLUSHDB",), ("KEYS", "*"), ("INFO",), ("CLIENT", "LIST"), ("CLIENT", "KILL", "ID", "1"),
                     ("ACL", "LIST"), ("SHUTDOWN",), ("SCRIPT", "FLUSH"), ("MONITOR",),
                     ("REPLICAOF", "NO", "ONE"), ("MIGRATE", "127.0.0.1", "1", "{a}.b", "0", "10"),
                     # Outside its key patterns, and the control plane's slot keys are read-only.
                     ("SET", "outside", "1"), ("GET", "session:1"), ("SET", slotguard.OWNED, "x"),
                     ("DEL", slotguard.MAP), ("HSET", slotguard.MOVED, "1", "2")]:
            _refused(conn, *args)
        # A script runs as its caller: the same refusals from inside Lua.
        with pytest.raises(RedisError, match="can't run this command|can't access at least one of the keys|NOPERM"):
            conn.call("EVAL", "return redis.call('FLUSHALL')", 0)
        with pytest.raises(RedisError, match="can't run this command|can't access at least one of the keys|NOPERM"):
            conn.call("EVAL", "return redis.call('SET', 'outside', '1')", 0)


def test_chatops_reads_and_administers_but_writes_no_chat_key(acl_cluster):
    c, cf, _ = acl_cluster
    target = rc.target_for(cf, "shard0")
    assert target.auth.user == "chatops" and "password" not in repr(target.auth)
    obs = rc.collect(target)
    assert obs.up, obs.error
    with rc.connect(target) as conn:
        assert rc.parse_config(conn.call("CONFIG", "GET", "maxclients"))["maxclients"]
        assert b"id=" in conn.call("CLIENT", "LIST")
        conn.call("GET", "{lobby}.bans")
        conn.call("SET", "chatops:acltest", "1")
        conn.call("DEL", "chatops:acltest")
        for args in [("FLUSHALL",), ("FLUSHDB",), ("SET", "{lobby}.bans", "x"), ("HSET", "{lobby}.bans", "u", "0"),
                     ("KEYS", "*"), ("ACL", "SETUSER", "default", "+@all"), ("ACL", "LOAD"), ("SHUTDOWN",),
                     ("SCRIPT", "FLUSH"), ("MONITOR",), ("CONFIG", "REWRITE"), ("MODULE", "LIST")]:
            _refused(conn, *args)


def test_set_redis_config_cannot_touch_auth_settings(acl_cluster):
    _, cf, _ = acl_cluster
    for key in ("requirepass", "masterauth", "masteruser", "aclfile", "dir", "dbfilename"):
        with pytest.raises(BadParams):
            validate({"shard": "shard0", key: "x"}, set_redis_config.PARAMS, cf)
    assert set(set_redis_config.KEYS) == {"timeout", "maxclients", "maxmemory_policy"}
    # The admin connection refuses them too, before sending: the ACL cannot.
    pool = AdminPool(cf)
    try:
        for key in ("requirepass", "masterauth", "masteruser"):
            with pytest.raises(Unavailable, match="only sets"):
                pool.call("shard0", "CONFIG", "SET", key, "x")
            with pytest.raises(Unavailable, match="only sets"):
                pool.call("shard0", "CONFIG", "SET", "timeout", "0", key, "x")
        assert pool.call("shard0", "CONFIG", "SET", "timeout", "0") == "OK"
        assert pool.call("shard0", "PING") == "PONG"
    finally:
        pool.close()


def test_the_replica_follows_its_primary_as_replication(acl_cluster):
    c, cf, _ = acl_cluster
    replica = next((a, p) for n, a, p in _redis_places(c) if n.endswith("-replica"))
    with Conn(cf.address("redis1"), 6379, timeout=5, auth=redis_creds(user="clue")) as conn:
        conn.call("SET", "{acltest}.replicated", "yes")
    with Conn(*replica, timeout=5, auth=redis_creds(user="chatops")) as r:
        wait_for(lambda: rc.parse_info(r.call("INFO", "replication"))["replication"].get("master_link_status")
                 == "up", 10, what="the replica's link to its primary")
        wait_for(lambda: r.call("GET", "{acltest}.replicated") == b"yes", 10, what="the key on the replica")
    # The replication user can follow a primary, and nothing else.
    with Conn(cf.address("redis1"), 6379, timeout=5, auth=redis_creds(user="replication")) as conn:
        assert conn.call("PING") == "PONG"
        _refused(conn, "GET", "{acltest}.replicated")
        _refused(conn, "CONFIG", "GET", "masterauth")


def test_no_password_on_a_command_line_or_in_a_log(acl_cluster):
    c, cf, _ = acl_cluster
    values = [os.environ[getattr(cf.secrets, s.field)] for s in secrets.SECRETS]
    assert len(values) == 4
    pids = {c.proc.pid} | descendants(c.proc.pid)
    assert len(pids) >= 6
    for pid in pids:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        for v in values:
            assert v.encode() not in cmdline, f"a secret is on the command line of pid {pid}"
    for path in [c.log, *Path(c.run).rglob("*")]:
        if not path.is_file() or path.name in ("secrets.env", "auth.conf"):
            continue
        text = path.read_bytes()
        for v in values:
            assert v.encode() not in text, f"a secret is written in {path}"
    for d in (Path(c.run) / "redis").iterdir():
        for name in ("users.acl", "auth.conf"):
            assert stat.S_IMODE((d / name).stat().st_mode) == 0o600, d / name
        acl = (d / "users.acl").read_text()
        assert acl.startswith("user default on nopass") and acl.count(" on #") == 3


def test_redis_conf_for_ansible_names_the_same_files_and_holds_no_password(acl_cluster):
    c, cf, _ = acl_cluster
    values = [os.environ[getattr(cf.secrets, s.field)] for s in secrets.SECRETS]
    servers = redis_config.render_all(cf, RunDir(c.run))
    assert len(servers) == 3
    for s in servers:
        text = s.text()
        lines = text.splitlines()
        assert lines[2] == f"include {s.auth_conf}" and lines[3] == f"aclfile {s.acl_file}"
        assert Path(s.acl_file).is_file() and Path(s.auth_conf).is_file()     # what the supervisor wrote
        assert not any(v in text for v in values)


def test_chat_works_end_to_end(acl_cluster):
    c, _, subnet = acl_cluster
    report = loadgen_report(start_loadgen(c, f"{subnet}.77", clients=6, duration=3))
    assert report["delivered"] > 0 and not report.get("errors"), report


def test_migrate_logs_in_on_the_target_and_slowlog_shows_no_password(acl_cluster):
    """Last: it moves a slot, so shard0 owns a bitmap of slots from here on."""
    c, cf, _ = acl_cluster
    auth = redis_creds(user="chatops")
    key = "{aclmove}.bans"
    slot = key_slot(key)
    s0, s1 = cf.redis.shards
    with Conn(cf.address(s0.host), s0.port, timeout=5, auth=redis_creds(user="clue")) as conn:
        conn.call("HSET", key, "someone", "0")
    with Conn(cf.address(s0.host), s0.port, timeout=5, auth=auth) as src, \
            Conn(cf.address(s1.host), s1.port, timeout=5, auth=auth) as dst:
        # Guarded, as after a first reshard: the script hands the slot over in the bitmap.
        src.call("SET", slotguard.OWNED, slotguard.bitmap(range(16384)))
        old = src.call("CONFIG", "GET", "slowlog-log-slower-than")[1]
        src.call("CONFIG", "SET", "slowlog-log-slower-than", "0")
        try:
            moved = src.call("EVAL", slotguard.MIGRATE_SLOTS, 0, *slotguard.migrate_args(
                cf.address(s1.host), s1.port, 5000, 1, [slot], [key], auth.user, auth.password))
            raw = src.call("SLOWLOG", "GET", 50)
        finally:
            src.call("CONFIG", "SET", "slowlog-log-slower-than", old)
        assert moved == 1
        assert dst.call("HGET", key, "someone") == b"0"
        assert src.call("EXISTS", key) == 0
        # Redis itself shows the script's arguments as sent; what the control plane keeps does not.
        assert any(auth.password.encode() in b" ".join(e[3]) for e in raw)
        kept = [e["command"] for e in redact.redis_data({"slowlog": rc.parse_slowlog(raw)})["slowlog"]]
        assert any(c.startswith(("MIGRATE", "EVAL")) for c in kept)
        assert not any(auth.password in c for c in kept)
        assert any("AUTH2 <redacted> <redacted>" in c for c in kept)
        dst.call("DEL", key)
        src.call("DEL", slotguard.OWNED, slotguard.MOVED, slotguard.TRACKED)


def test_credentials_come_from_the_run_dir_when_the_variable_is_unset(acl_cluster, monkeypatch):
    c, cf, _ = acl_cluster
    from cluster import redis_acl
    clue, chatops = redis_creds(user="clue"), redis_creds()
    for name in run_secrets(c.run):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CHATOPS_RUN_DIR", str(c.run))
    assert redis_acl.credentials(cf, "clue") == clue
    assert redis_acl.credentials(cf, "chatops", RunDir(c.run)).password == chatops.password
    assert os.environ.get("CHATOPS_REDIS_CLUE_PASSWORD") is None
    # Nothing found anywhere: the connection fails naming the variable, never a password.
    monkeypatch.setenv("CHATOPS_RUN_DIR", "/nonexistent")
    with pytest.raises(RedisError, match="CHATOPS_REDIS_CONTROLPLANE_PASSWORD is not set"):
        rc.connect(rc.target_for(cf, "shard0"))
    assert not rc.collect(rc.target_for(cf, "shard0")).up
