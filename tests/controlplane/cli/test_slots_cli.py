"""`chatops slots` on a real running cluster with no control plane (the map is read from the shards
and the map file, as the CLI must while the control plane is down): the never-published even
split, a published change, a shard that missed a publication, a shard that is down.

And `chatops apply` of a plan that moves slots, on a live control plane: while the apply call
blocks, the migration's progress shows on stderr, ending at `done`, and the result prints as for
any plan.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import select

import pytest
import redis

from chat.sharding import key_slot
from cluster import clusterfile
from controlplane.cli.remediate import MigrationProgress, progress_fraction, progress_line
from controlplane.resharding import slotmap as slotmaps
from tests.conftest import api_token, chatops, crash_loop, live_controlplane, redis_auth, wait_for


def slots_cli(c, *args: str):
    return chatops("slots", "--config", str(c.config), "--run-dir", str(c.run), *args, timeout=30)


def row(out: str, shard: str) -> list[str]:
    """One shard's line of the table, split on runs of two or more spaces."""
    line = next(ln for ln in out.splitlines() if ln.startswith(shard + " "))
    return re.split(r"\s{2,}", line.strip())


def test_a_fresh_cluster_has_the_even_split_not_published_yet(live_small_cluster):
    c, _, _ = live_small_cluster
    r = slots_cli(c)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == "slot map epoch 0: not published yet, the cluster file's even split"
    assert row(r.stdout, "shard0") == ["shard0", "8192", "50.0%", "none", "0-8191"]
    assert row(r.stdout, "shard1") == ["shard1", "8192", "50.0%", "none", "8192-16383"]
    assert "!" not in r.stdout                   # nothing to warn about: nothing was ever published
    j = slots_cli(c, "--json")
    assert j.returncode == 0, j.stderr
    view = json.loads(j.stdout)
    assert view["epoch"] == 0 and view["file"]["epoch"] is None
    assert view["copies"] == {"shard0": "no published map", "shard1": "no published map"}
    assert [(s["name"], s["slots"], s["ranges"]) for s in view["shards"]] == [
        ("shard0", 8192, [[0, 8191]]), ("shard1", 8192, [[8192, 16383]])]


def test_a_published_change_shows_with_its_epoch_and_each_shards_copy(live_small_cluster):
    c, cf, run = live_small_cluster
    with slotmaps.connections(cf) as conns:
        smap = slotmaps.load(cf, c.config, run, conns)
        published = slotmaps.publish(cf, c.config, run, smap.moved([0, 1, 2], 1), conns)
    assert published.ok and published.slot_map.epoch == 1
    r = slots_cli(c)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == f"slot map epoch 1, from {run.root / 'slotmap.json'}"
    assert row(r.stdout, "shard0") == ["shard0", "8189", "50.0%", "epoch 1", "3-8191"]
    assert row(r.stdout, "shard1") == ["shard1", "8195", "50.0%", "epoch 1", "0-2, 8192-16383"]
    view = json.loads(slots_cli(c, "--json").stdout)
    assert view["epoch"] == 1 and view["source"] == str(run.root / "slotmap.json")
    assert view["file"] == {"path": str(run.root / "slotmap.json"), "epoch": 1}
    assert view["copies"] == {"shard0": 1, "shard1": 1}
    assert {s["name"]: s["slots"] for s in view["shards"]} == {"shard0": 8189, "shard1": 8195}


def test_a_shard_that_missed_a_publication_is_flagged_and_many_ranges_are_cut_short(live_small_cluster):
    c, cf, run = live_small_cluster
    with slotmaps.connections(cf) as conns:
        smap = slotmaps.load(cf, c.config, run, conns)
        # every other slot of 100..119 to shard1: shard0 is left with many ranges. The publication
        # does not reach shard1, as when it was out of reach at the time.
        missed = {**conns, "shard1": OSError("out of reach while the map was published")}
        published = slotmaps.publish(cf, c.config, run, smap.moved(range(100, 120, 2), 1), missed)
    assert set(published.failed) == {"shard1"} and published.slot_map.epoch == 2
    r = slots_cli(c)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0].startswith("slot map epoch 2, from ")
    shard0, shard1 = row(r.stdout, "shard0"), row(r.stdout, "shard1")
    assert shard0[:4] == ["shard0", "8179", "49.9%", "epoch 2"]
    assert shard0[4] == "3-99, 101, 103, 105, 107 and 6 more ranges"
    assert shard1[:4] == ["shard1", "8205", "50.1%", "epoch 1 BEHIND"]
    assert "! shard1: its copy has epoch 1, older than the map's 2: it missed a publication" in r.stdout


def test_with_a_shard_down_the_map_still_comes_from_the_file(live_small_cluster):
    """Last in the module: the killed shard comes back empty after the block."""
    c, _, run = live_small_cluster

    def shard0_unreachable():
        r = slots_cli(c)
        return r if r.returncode == 0 and row(r.stdout, "shard0")[3] == "unreachable" else None

    with crash_loop(c, "redis-shard0"):
        r = wait_for(shard0_unreachable, 20, 0.2, "chatops slots to show shard0 unreachable")
    assert r.stdout.splitlines()[0] == f"slot map epoch 2, from {run.root / 'slotmap.json'}"
    assert row(r.stdout, "shard0")[:3] == ["shard0", "8179", "49.9%"]
    assert row(r.stdout, "shard1")[:4] == ["shard1", "8205", "50.1%", "epoch 1 BEHIND"]
    assert re.search(r"^! shard0: unreachable: .*(refused|timed out)", r.stdout, re.M), r.stdout


def test_an_unreadable_map_is_a_clear_error_and_exit_1(tmp_path, live_small_cluster):
    c, _, _ = live_small_cluster
    run = tmp_path / "run"
    run.mkdir()
    (run / "slotmap.json").write_text('{"slots": 16384, "shards": 2, "ranges": [[0, 99, 0]]}')
    r = chatops("slots", "--config", str(c.config), "--run-dir", str(run), timeout=30)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.startswith("chatops: cannot read the slot map: ")
    assert "slots 100-16383 are not covered by any range" in r.stderr


# -- the progress line ------------------------------------------------------------------------------

def test_the_progress_line_says_phase_slots_keys_rate_and_eta():
    p = {"action": "reshard", "from": "shard0", "to": "shard1", "phase": "moving", "slots_total": 64,
         "slots_done": 12, "keys_total": 500_000, "keys_moved": 183_204, "keys_per_s": 61_402.3, "eta_s": 5.2,
         "detail": ""}
    assert progress_line(p) == ("moving  12/64 slots  183,204/500,000 keys  61,402 keys/s  ETA 5 s  "
                                "shard0 -> shard1")
    assert progress_fraction(p) == pytest.approx(0.366, abs=1e-3)
    scanning = {"phase": "scanning", "slots_total": 64, "slots_done": 0, "keys_total": 0, "keys_moved": 0,
                "keys_per_s": 0.0, "eta_s": None, "detail": "scanning 64 slots on shard0"}
    assert progress_line(scanning) == "scanning  0/64 slots  scanning 64 slots on shard0"
    assert progress_fraction(scanning) == 0.0
    assert progress_fraction({**p, "phase": "done"}) == 1.0


def test_on_a_terminal_the_progress_is_one_bar_redrawn_in_place():
    """On a real pseudo-terminal: each state redraws the same line (carriage return, erase to the end
    of the line); stopping ends the line so the result prints below it."""
    master, slave = os.openpty()
    with os.fdopen(slave, "w") as tty:
        shown = MigrationProgress(None, tty)
        assert shown.tty
        for moved, phase in ((100_000, "moving"), (250_000, "moving"), (500_000, "done")):
            shown.show({"phase": phase, "slots_total": 64, "slots_done": 64 * moved // 500_000,
                        "keys_total": 500_000, "keys_moved": moved, "keys_per_s": 50_000.0, "eta_s": 1.0})
        tty.write("\n")
        tty.flush()
        out = ""
        while not out.endswith("\n") and select.select([master], [], [], 2)[0]:   # it comes in parts
            out += os.read(master, 65536).decode()
    os.close(master)
    draws = out.rstrip("\r\n").split("\r")[1:]
    assert len(draws) == 3 and all(d.rstrip("\r\n").endswith("\x1b[K") for d in draws), repr(out)
    assert draws[0].startswith("[####................]  20%  moving  12/64 slots  100,000/500,000 keys")
    assert draws[2].startswith("[####################] 100%  done  64/64 slots  500,000/500,000 keys")
    assert draws[2].endswith("500,000 keys  50,000 keys/s\x1b[K")      # not cut: the pty has no width


# -- chatops apply shows a migration's progress ------------------------------------------------------

TOKEN = "slots-cli-" + secrets.token_urlsafe(16)
TAGS = 32                 # slots to move, one hash tag each
KEYS_PER_TAG = 2500       # 80,000 keys: a migration long enough for the poller to see it move


@pytest.fixture(scope="module")
def live_cp():
    with api_token(TOKEN), live_controlplane(traffic=False) as (c, base):
        yield c, base


def seed_slots(cf) -> list[int]:
    """KEYS_PER_TAG keys in each of TAGS slots of shard0, written to shard0 directly; the slots."""
    tags, slots = [], set()
    i = 0
    while len(tags) < TAGS:
        slot = key_slot(f"t{i}")
        if 1000 <= slot < 8192 and slot not in slots:      # shard0's, clear of what other tests move
            tags.append(f"t{i}")
            slots.add(slot)
        i += 1
    shard = cf.redis.shards[0]
    r = redis.Redis(**redis_auth(user="clue"), host=cf.address(shard.host), port=shard.port, socket_timeout=10)
    try:
        for tag in tags:
            pipe = r.pipeline(transaction=False)
            for n in range(KEYS_PER_TAG):
                pipe.set(f"{{{tag}}}.k{n}", "x" * 32)
            pipe.execute()
    finally:
        r.close()
    return sorted(slots)


def test_apply_of_a_reshard_shows_the_migrations_progress_on_stderr(live_cp):
    c, _ = live_cp
    cf = clusterfile.load(c.config).spec
    slots = seed_slots(cf)
    env = {**os.environ, "CHATOPS_API_TOKEN": TOKEN}
    args = ("--config", str(c.config), "--run-dir", str(c.run))
    planned = chatops("plan", "reshard", "--set", "shard=shard0", "--set", "to_shard=shard1",
                      "--set", "slots=" + ",".join(map(str, slots)), *args, "--json", env=env)
    assert planned.returncode == 0, planned.stderr
    plan = json.loads(planned.stdout)
    assert plan["steps"][0]["action"] == "reshard"
    r = chatops("apply", plan["id"], "--yes", "--no-wait", *args, env=env, timeout=300)
    assert r.returncode == 0, (r.stdout, r.stderr)
    # stderr is not a terminal here: whole lines, at most one per 2 s and phase, the last one `done`
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert lines, r.stderr
    assert lines[-1].startswith(f"done  {TAGS}/{TAGS} slots  {TAGS * KEYS_PER_TAG:,}/"), r.stderr
    assert "shard0 -> shard1" in lines[-1]
    assert all(re.match(r"(starting|scanning|moving|publishing|done)  ", ln) for ln in lines), r.stderr
    assert "\r" not in r.stderr
    # the result prints as for any plan
    assert f"plan {plan['id']}  reshard on " in r.stdout and "[applied]" in r.stdout
    assert f"moved {TAGS} slots, {TAGS * KEYS_PER_TAG:,} keys from shard0 to shard1" in r.stdout
    view = json.loads(chatops("slots", *args, "--json").stdout)
    owned = {s["name"]: s["slots"] for s in view["shards"]}
    assert owned == {"shard0": 8192 - TAGS, "shard1": 8192 + TAGS}


def test_apply_with_json_prints_no_progress(live_cp):
    c, _ = live_cp
    env = {**os.environ, "CHATOPS_API_TOKEN": TOKEN}
    args = ("--config", str(c.config), "--run-dir", str(c.run))
    # slots already on shard1 from the test above, or not: either way a plan that moves slots
    planned = chatops("plan", "reshard", "--set", "shard=shard1", "--set", "to_shard=shard0",
                      "--set", "slots=16000-16001", *args, "--json", env=env)
    assert planned.returncode == 0, planned.stderr
    plan_id = json.loads(planned.stdout)["id"]
    r = chatops("apply", plan_id, "--yes", "--no-wait", "--json", *args, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["state"] == "applied"
    assert r.stderr == ""
