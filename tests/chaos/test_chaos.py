"""Chaos: two minutes of load while something dies every ten seconds.

A cluster of two chat hosts (one cluster, so one edge always serves while the other restarts) and
two Redis shards runs with its control plane; `chatops loadgen` talks into #lobby, reconnecting
lost clients, and reports per second. Every KILL_EVERY_S one process gets SIGKILL, drawn by a
seeded random generator from: an edge, clue or exchange on a chat host, or a shard's
redis-server. The sequence covers every kind at least once, and never kills one process twice
within the crash-loop span (see kill_plan). Before each kill everything is up again, so a kill
never takes the last of its kind. Then, for every kill:

- the supervisor restored it: a new pid that answers (state.json says up) within RESTORE_WITHIN_S;
- delivery completeness, per second, is back to >= MIN_COMPLETENESS within RECOVER_WITHIN_S and
  stays there until the next kill (completeness counts the receivers that were connected: a
  receiver whose edge died is not expected from its loss until its JOIN is done again; the
  loadgen reports those messages apart, as `excluded_while_disconnected`);
- no receiver got any message twice (loadgen counts duplicates per receiver);
- the control plane opened a finding about the killed process within DETECT_WITHIN_S and
  resolved it within RESOLVE_WITHIN_S;
- logins made before the run still work after each shard kill (a restarted shard must keep
  users and tokens: Redis persistence); and at the end every lost connection came back.

A shard without persistence comes back empty: logins on it fail, senders lose their bot flag
(rate-limited) and cannot log in again after an edge kill, and the load dries up. Those checks
fail until the shards run with AOF (issue 16's persistence part); they are not weakened here.

Every failure is collected and reported together with the kill table, so one run shows all
of them. The seed is printed; replay a run with CHATOPS_CHAOS_SEED=<seed>. Run it alone with

    .venv/bin/python -m pytest -s tests/chaos/test_chaos.py
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time

import pytest

from controlplane.detectors.unresponsive_service import LOOP_SPAN_S
from tests.conftest import REPO, api_json, api_token, live_controlplane, run_secrets, stop_loadgen, wait_for

# The chaos knobs. The thresholds (completeness, recovery, duplicates, findings) are the issue's.
CHAOS_S = 120.0                 # seconds of killing
KILL_EVERY_S = 10.0             # one kill this often
RESTORE_WITHIN_S = 10.0         # the supervisor has it answering again within this
RECOVER_WITHIN_S = 10.0         # completeness back to MIN_COMPLETENESS within this of each kill
MIN_COMPLETENESS = 0.99
DETECT_WITHIN_S = 10.0          # the control plane opens a finding about the kill within this...
RESOLVE_WITHIN_S = 30.0         # ...and resolves it within this of the kill
WARMUP_S = 6.0                  # load running, every client joined, before the first kill
JUDGED_AFTER_S = 2.5            # a message is in the loadgen's series this long after its echo at most
SEED = int(os.environ.get("CHATOPS_CHAOS_SEED") or 16_08)
CLIENTS, SENDERS, RATE = 40, 4, 10.0
PROBES = 6                      # users made before the run, whose logins must survive shard kills
LOGIN_RETRY_S = 5.0             # a login refused this long after a shard kill is data lost, not a blip
TOKEN = "chaos-test-token-0123456789abcdef"
KINDS = ("edge", "clue", "exchange", "redis")
SOURCE = "127.0.3.7"            # the loadgen's own loopback address


def two_chat_hosts(doc: dict) -> None:
    """One cluster of two chat hosts (chat1, chat2) in #lobby; no testing cluster."""
    subnet = doc["hosts"]["chat1"]["address"].rsplit(".", 1)[0]
    doc["hosts"] = {"chat1": {"address": f"{subnet}.1"}, "chat2": {"address": f"{subnet}.2"},
                    "redis1": {"address": f"{subnet}.21"}, "redis2": {"address": f"{subnet}.22"}}
    doc["clusters"] = {"main": {"hosts": ["chat1", "chat2"], "rooms": ["lobby"]}}


TARGETS = [(k, p) for k in KINDS for p in (("shard0", "shard1") if k == "redis" else ("chat1", "chat2"))]
# Two restarts of one process within the crash-loop span are a crash loop by definition (its own
# finding, open for the whole span; tests/controlplane/detectors/test_unresponsive_service.py
# covers it), so a process is killed again only once its last kill has left the span.
SPACING = int(LOOP_SPAN_S // KILL_EVERY_S) + 1


def kill_plan(rng: random.Random, n: int) -> list[tuple[str, str]]:
    """n (kind, place) pairs, place a chat host or a shard: every process once in a random order
    (so every kind), then each time one of those not killed in the last SPACING - 1 kills."""
    order = rng.sample(TARGETS, len(TARGETS))
    while len(order) < n:
        order.append(rng.choice([t for t in TARGETS if t not in order[-(SPACING - 1):]]))
    return order[:n]


def process_name(kind: str, place: str) -> str:
    return f"redis-{place}" if kind == "redis" else f"{kind}-{place}"


def finding_matches(f: dict, kind: str, place: str) -> bool:
    """A finding about the killed process: its service on its host, or its shard."""
    about = f.get("about") or {}
    if kind == "redis":
        return about.get("shard") == place and f["kind"] == "unresponsive_service"
    return f["kind"] == "unresponsive_service" and about.get("service") == kind and about.get("host") == place


def add_user(c, name: str, env: dict) -> str:
    argv = [sys.executable, "-m", "controlplane.cli", "users", "add", name, "--config", str(c.config),
            "--run-dir", str(c.run)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=REPO, env=env)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().removeprefix("oauth:")


def login_works(address: str, port: int, login: str, token: str) -> bool:
    """PASS/NICK through the frontend: True on the 001 welcome, False on a refusal."""
    with socket.create_connection((address, port), timeout=5) as s:
        s.sendall(f"PASS oauth:{token}\r\nNICK {login}\r\n".encode())
        buf = b""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            data = s.recv(4096)
            if not data:
                return False
            buf += data
            if b" 001 " in buf:
                return True
            if b"authentication failed" in buf:
                return False
    return False


def logins_lost(frontend: tuple[str, int], probes: dict[str, str]) -> list[str]:
    """The probe users that still cannot log in after LOGIN_RETRY_S: clue's first call on a
    freshly restarted shard may fail ("unavailable" is refused like a bad token), a lost token
    keeps failing."""
    failing = list(probes)
    deadline = time.monotonic() + LOGIN_RETRY_S
    while failing:
        failing = [u for u in failing if not login_works(*frontend, u, probes[u])]
        if not failing or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    return failing


def restored(c, name: str, old_pid: int):
    """The new pid once the supervisor restarted `name` and it answers again, else None."""
    try:
        p = next(p for p in c.state["processes"] if p["name"] == name)
    except (TypeError, StopIteration, KeyError):
        return None
    return p["pid"] if p["pid"] and p["pid"] != old_pid and p["status"] == "up" else None


def recovery(points: list[dict], start: float, end: float) -> tuple[float | None, list[dict]]:
    """Seconds from `start` until per-second completeness was back to MIN_COMPLETENESS for good
    (until `end`): 0 when it never dipped; None when it never came back, or nothing was judged
    near the end. Points belong to the kill whose period their echoes end in."""
    mine = [p for p in points if p["echoed_to"] is not None and start <= p["echoed_to"] < end
            and p["completeness"] is not None]
    if not mine or mine[-1]["echoed_to"] < end - JUDGED_AFTER_S:
        return None, mine
    bad = [i for i, p in enumerate(mine) if p["completeness"] < MIN_COMPLETENESS]
    if not bad:
        return 0.0, mine
    if bad[-1] == len(mine) - 1:
        return None, mine
    return max(0.0, mine[bad[-1] + 1]["echoed_from"] - start), mine


@pytest.mark.timeout(420)
def test_chaos_under_load():
    rng = random.Random(SEED)
    n_kills = int(CHAOS_S // KILL_EVERY_S)
    plan = kill_plan(rng, n_kills)
    print(f"\nchaos seed {SEED} (replay: CHATOPS_CHAOS_SEED={SEED}); {n_kills} kills, one every "
          f"{KILL_EVERY_S:g}s: "
          + ", ".join(process_name(*k) for k in plan))
    problems: list[str] = []
    with api_token(TOKEN), live_controlplane(traffic=False, patch=two_chat_hosts) as (c, base):
        env = {**os.environ, **run_secrets(c.run)}
        from cluster import clusterfile
        cf = clusterfile.load(c.config).spec
        frontend = (cf.address("chat1"), cf.clusters["main"].frontend.irc_port)
        probes = {f"chaos_probe_{i}": add_user(c, f"chaos_probe_{i}", env) for i in range(PROBES)}
        assert all(login_works(*frontend, u, t) for u, t in probes.items())

        lg = subprocess.Popen(
            [sys.executable, "-m", "chat.loadgen", "--config", str(c.config), "--clients", str(CLIENTS),
             "--senders", str(SENDERS), "--rate", f"{RATE:g}", "--duration", "600", "--rooms", "lobby",
             "--source-address", SOURCE, "--reconnect", "--series", "--seed", str(SEED), "--json", "--quiet"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env)
        kills: list[dict] = []
        try:
            time.sleep(WARMUP_S)
            next_at = time.monotonic()
            for kind, place in plan:
                name = process_name(kind, place)
                wait_for(lambda: (c.state or {}).get("ready"), 30, 0.1,
                         "every process up before the next kill")
                time.sleep(max(0.0, next_at - time.monotonic()))
                old = c.pid_of(name)
                at, mono = time.time(), time.monotonic()
                os.kill(old, signal.SIGKILL)
                k = {"kind": kind, "place": place, "name": name, "at": at, "pid": old}
                kills.append(k)
                try:
                    k["new_pid"] = wait_for(lambda: restored(c, name, old), RESTORE_WITHIN_S, 0.05,
                                            f"{name} restarted and answering")
                    k["restored_s"] = time.monotonic() - mono
                except AssertionError:
                    problems.append(f"{name} killed at +{at - kills[0]['at']:.1f}s: not restored within "
                                    f"{RESTORE_WITHIN_S:g}s (state {c.state})")
                if kind == "redis" and "new_pid" in k:
                    lost = logins_lost(frontend, probes)
                    k["logins_lost"] = len(lost)
                    if lost:
                        problems.append(f"{name} killed at +{at - kills[0]['at']:.1f}s: after its restart "
                                        f"{len(lost)} of {len(probes)} logins made before the run fail "
                                        f"(the shard came back empty: no persistence)")
                next_at = mono + KILL_EVERY_S
            # The last kill's period ends KILL_EVERY_S after it, like every other; the load runs
            # on until the messages sent up to then are in the series.
            end = time.time() + max(0.0, next_at - time.monotonic())
            time.sleep(max(0.0, next_at - time.monotonic()) + JUDGED_AFTER_S)
        finally:
            report = stop_loadgen(lg, timeout=90)

        # The control plane: a finding for every kill, opened and then resolved.
        def findings() -> list[dict]:
            status, body = api_json(base, "GET", "/findings?state=all&limit=1000", token=TOKEN, timeout=30)
            assert status == 200, body
            return body["findings"]

        def settled() -> bool:
            fs = findings()
            return not any(f["state"] == "open" and any(finding_matches(f, k["kind"], k["place"])
                                                        for k in kills) for f in fs)
        try:
            wait_for(settled, RESOLVE_WITHIN_S, 1.0, "the findings about the kills to resolve")
        except AssertionError:
            pass                       # judged per kill below
        all_findings = findings()

    t0 = kills[0]["at"]
    for i, k in enumerate(kills):
        nxt = kills[i + 1]["at"] if i + 1 < len(kills) else end
        when = f"{k['name']} killed at +{k['at'] - t0:.1f}s"
        # completeness
        took, points = recovery(report["series"] or [], k["at"], nxt)
        k["recovered_s"] = took
        k["worst"] = min((p["completeness"] for p in points), default=None)
        if took is None and not points:
            problems.append(f"{when}: no message was accepted and judged until the next kill, so "
                            f"completeness cannot have come back (rejected in the run: "
                            f"{report['rejected']})")
        elif took is None:
            problems.append(f"{when}: completeness not back to {MIN_COMPLETENESS} before the next kill: "
                            + ", ".join(f"{p['echoed_to'] - k['at']:+.1f}s {p['completeness']}"
                                        for p in points))
        elif took > RECOVER_WITHIN_S:
            problems.append(f"{when}: completeness back to {MIN_COMPLETENESS} only after {took:.1f}s")
        # findings
        mine = [f for f in all_findings if finding_matches(f, k["kind"], k["place"])
                and f["first_seen"] <= k["at"] + DETECT_WITHIN_S
                and (f["resolved_at"] is None or f["resolved_at"] >= k["at"])]
        if not mine:
            problems.append(f"{when}: no finding about it opened within {DETECT_WITHIN_S:g}s")
            continue
        f = mine[-1]
        k["finding"] = f"{f['kind']} {f['subject']}"
        k["detected_s"] = max(0.0, f["first_seen"] - k["at"])
        k["resolved_s"] = None if f["resolved_at"] is None else f["resolved_at"] - k["at"]
        if k["resolved_s"] is None or k["resolved_s"] > RESOLVE_WITHIN_S:
            problems.append(f"{when}: its finding {k['finding']} was not resolved within "
                            f"{RESOLVE_WITHIN_S:g}s "
                            f"({f['state']}, resolved {k['resolved_s']})")

    if report.get("duplicates"):
        problems.append(f"{report['duplicates']} messages delivered twice to one receiver: "
                        f"{[e for e in report['error_examples'] if e.startswith('duplicate')]}")
    rc = report["reconnections"]
    if rc["still_lost"]:
        problems.append(f"{rc['still_lost']} of {rc['lost']} lost connections never came back (a sender "
                        f"whose login no longer works, or an edge that never took its clients back): "
                        f"{[e for e in report['error_examples'] if not e.startswith('disconnected')]}")
    print(f"loadgen: sent {report['sent']}, accepted {report['accepted']}, rejected {report['rejected']}, "
          f"completeness {report['completeness']} (with the reconnect gaps counted as missed: "
          f"{report['completeness_with_gaps']}), duplicates {report['duplicates']}, unanswered "
          f"{report['lost']['unanswered']}, delivered without echo "
          f"{report['lost']['delivered_without_echo']}; "
          f"connections lost {rc['lost']}, back {rc['reestablished']}, still lost {rc['still_lost']}; "
          f"errors {report['errors']}")
    for k in kills:
        print(f"  +{k['at'] - t0:5.1f}s {k['name']:<16} restored {_s(k.get('restored_s'))} "
              f"completeness worst {k.get('worst')} back after {_s(k.get('recovered_s'))}; "
              f"finding {k.get('finding', '-')} after {_s(k.get('detected_s'))}, "
              f"resolved {_s(k.get('resolved_s'))}"
              + (f"; logins lost {k['logins_lost']}" if k.get("logins_lost") else ""))
    if not report["senders"]:
        problems.append(f"no sender was connected at the end (of {SENDERS}); rejected {report['rejected']}; "
                        f"errors {report['errors']}")
    assert {k["kind"] for k in kills} == set(KINDS)
    assert not problems, f"chaos seed {SEED}: {len(problems)} problems:\n" + "\n".join(problems)


def _s(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}s"
