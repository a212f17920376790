"""add-shard.yml and reshard.yml on the live default cluster: a new shard (shard4 on redis2) is
added owning no slot, then slots move to it from shard0 with the keys seeded there, and not one
key is lost -- each is read back, with its value, from the shard the new slot map names. Also:
reshard.yml --check shows the plan and changes nothing, and a refused plan fails the play with the
API's message.

The reshard names its slots (`-e slots=`, 600 of shard0's). Left to the planner, the choice
follows the little load an idle cluster still carries (14 ops/s on shard0 in one run), so it may
be one slot without a seeded key, or nothing at all; docs/ansible.md shows the planner's choice.
The test leaves the cluster with five shards (shard4 owning 600 of shard0's slots), which the
rolling-restart test after it runs on."""

from __future__ import annotations

import socket

from chat.sharding import describe_slots, key_slot
from collectors import redis as rc
from controlplane.resharding import slotmap as slotmaps
from tests.ansible.conftest import api_get, recap
from tests.conftest import redis_creds, secrets_in_env

SEEDED = 4000
PREFIX = "ansible-reshard"
MOVED = 600          # slots of shard0 the reshard names


def _slot_map(live):
    cf = live.spec
    with secrets_in_env(live.run), slotmaps.connections(cf) as conns:
        return slotmaps.load(cf, live.config, live.run, conns)


def _conn(live, shard: str, user: str = "chatops") -> rc.Conn:
    """Straight to a shard, as Redis ACL user `user` (chatops reads; clue writes chat keys)."""
    cf = live.spec
    s = next(s for s in cf.redis.shards if s.name == shard)
    return rc.Conn(cf.address(s.host), s.port, auth=redis_creds(live.run, user))


def _free_port(address: str) -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return s.getsockname()[1]


def _seed(live) -> dict[str, str]:
    """SEEDED keys with hash tags spread over shard0's slots, written on shard0 itself."""
    smap = _slot_map(live)
    mine = set(smap.slots_of(smap.names.index("shard0")))
    seeded: dict[str, str] = {}
    i = 0
    while len(seeded) < SEEDED:
        key = f"{{{PREFIX}:{i}}}:k"
        if key_slot(key) in mine:
            seeded[key] = f"v{i}"
        i += 1
    conn = _conn(live, "shard0", "clue")
    try:
        assert all(r == "OK" or r == b"OK" for r in conn.pipeline([("SET", k, v) for k, v in seeded.items()]))
    finally:
        conn.close()
    return seeded


def _where(live, seeded: dict[str, str]) -> dict[str, int]:
    """Read every seeded key on the shard the current slot map names: keys found per shard;
    fails on any key missing or changed."""
    smap = _slot_map(live)
    by_shard: dict[str, list[str]] = {}
    for key in seeded:
        by_shard.setdefault(smap.names[smap.shard_of_slot(key_slot(key))], []).append(key)
    found = {}
    for shard, ks in by_shard.items():
        conn = _conn(live, shard)
        try:
            values = conn.pipeline([("GET", k) for k in ks])
        finally:
            conn.close()
        lost = [k for k, v in zip(ks, values) if (v.decode() if isinstance(v, bytes) else v) != seeded[k]]
        assert lost == [], f"{len(lost)} keys lost or changed on {shard}, e.g. {lost[:3]}"
        found[shard] = len(ks)
    return found


def test_refused_plan_fails_the_play_with_the_apis_message(live_default):
    run = live_default.play("reshard.yml", "-e", "from=nope", "-e", "to=shard1", "-e", "yes=true")
    out = run.stdout + run.stderr
    assert run.returncode != 0, out
    assert "the control plane refused the plan (HTTP 400)" in out and "bad parameter shard" in out, out
    assert "'nope' is not one of" in out
    missing = live_default.play("reshard.yml", "-e", "yes=true")
    assert missing.returncode != 0 and "give -e from=<shard> -e to=<shard>" in missing.stdout, missing.stdout


def test_add_shard_then_reshard_to_it_loses_no_key(live_default):
    seeded = _seed(live_default)
    assert _where(live_default, seeded) == {"shard0": SEEDED}
    redis2 = live_default.spec.address("redis2")
    port = _free_port(redis2)

    added = live_default.play("add-shard.yml", "-e", "name=shard4", "-e", "host=redis2", "-e", f"port={port}",
                              "-e", "move=false", "-e", "yes=true")
    out = added.stdout + added.stderr
    assert added.returncode == 0, out
    assert recap(added.stdout)["controlplane"]["failed"] == 0
    assert "add shard4 on redis2" in out and "applied by ansible:add-shard.yml (token:" in out
    smap = _slot_map(live_default)
    assert smap.names[-1] == "shard4" and len(smap.slots_of(4)) == 0
    assert "shard4" in [s.name for s in live_default.spec.redis.shards]

    moving = sorted(smap.slots_of(smap.names.index("shard0")))[:MOVED]
    slots = describe_slots(moving, limit=len(moving)).replace(" ", "")
    # --check: the plan is made and shown, nothing moves.
    checked = live_default.play("reshard.yml", "--check", "-e", "from=shard0", "-e", "to=shard4",
                                "-e", f"slots={slots}")
    out = checked.stdout + checked.stderr
    assert checked.returncode == 0, out
    assert "reshard on slotmap" in out and "check mode: plan" in out and "would apply" in out
    assert "shard0" in out and "shard4" in out
    assert recap(checked.stdout)["controlplane"]["changed"] == 1      # what would change, reported
    after_check = _slot_map(live_default)
    assert after_check.epoch == smap.epoch and len(after_check.slots_of(4)) == 0
    assert _where(live_default, seeded) == {"shard0": SEEDED}

    run = live_default.play("reshard.yml", "-e", "from=shard0", "-e", "to=shard4", "-e", f"slots={slots}",
                            "-e", "yes=true")
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    counts = recap(run.stdout)["controlplane"]
    assert counts["failed"] == 0 and counts["changed"] >= 1, counts
    plan = next(p for p in api_get(live_default.base, "/plans?limit=20")["plans"] if p["action"] == "reshard")
    assert plan["state"] == "applied" and plan["applied_by"].startswith("ansible:reshard.yml (token:")
    assert plan["verification"]["state"] in ("nothing_to_watch", "resolved"), plan["verification"]

    final = _slot_map(live_default)
    assert final.epoch > smap.epoch and sorted(final.slots_of(4)) == moving
    found = _where(live_default, seeded)                             # 0 keys lost
    assert sum(found.values()) == SEEDED and found.get("shard4", 0) > 0, found
    # The moved keys are gone from shard0.
    conn = _conn(live_default, "shard0")
    try:
        moved = [k for k in seeded if final.shard_of_slot(key_slot(k)) == 4]
        assert conn.call("EXISTS", *moved[:500]) == 0
    finally:
        conn.close()
