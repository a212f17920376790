"""The load generator: its plan and bookkeeping on their own, then real runs against a real
cluster shaped like the shipped default (main with two chat hosts, event and testing with one
each, four shards on two Redis hosts), through HAProxy, over TCP and WebSocket."""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from chat import irc, loadgen
from chat.loadgen import Histogram, LoadgenError, Options, Tally
from cluster import clusterfile
from tests.conftest import REPO, cluster_up, free_subnet, write_cluster

ROOMS = {"main": ["degentp", "paragusrants"], "event": ["twitchplayspokemon"], "testing": ["testroom"]}
LOG_LINE = re.compile(r"^[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d loadgen: \[edge\] traffic .*\bsent=\d+ .*completeness=")


def default_shape(subnet: str) -> dict:
    doc = clusterfile.default_on_subnet(subnet)
    doc["haproxy"]["check_interval"] = "500ms"
    assert {c: v["rooms"] for c, v in doc["clusters"].items()} == ROOMS
    return doc


def run_cli(*args: str, timeout: float = 90, **kw) -> tuple[subprocess.CompletedProcess, dict | None]:
    proc = subprocess.run([sys.executable, "-m", "chat.loadgen", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, **kw)
    lines = proc.stdout.strip().splitlines()
    return proc, (json.loads(lines[-1]) if lines else None)


# ---------------------------------------------------------------------------------------------
# Without a cluster
# ---------------------------------------------------------------------------------------------

def test_plan_spreads_rooms_hosts_and_transports():
    cf = clusterfile.parse(json.dumps(default_shape("127.0.9")))
    plans = loadgen.plan(cf, Options(clients=200, senders=10, ws_fraction=0.25))
    receivers = [p for p in plans if not p.sender]
    senders = [p for p in plans if p.sender]
    assert len(receivers) == 200 and len(senders) == 10
    every_room = [r for rooms in ROOMS.values() for r in rooms]
    assert {r: sum(p.room == r for p in receivers) for r in every_room} == dict.fromkeys(every_room, 50)
    for p in plans:
        assert p.cluster == cf.cluster_of_room(p.room)
        assert p.host in cf.clusters[p.cluster].hosts
        fe = cf.clusters[p.cluster].frontend
        assert p.port == (fe.ws_port if p.transport == "ws" else fe.irc_port)
    # Within a main-cluster room, clients alternate between its two chat hosts.
    degentp = [p.host for p in plans if p.room == "degentp"]
    assert degentp.count("chat1") == degentp.count("chat2") or abs(degentp.count("chat1") - degentp.count("chat2")) == 1
    assert sum(p.transport == "ws" for p in receivers) == 50
    assert [p.nick for p in senders] == [f"loadgen_{i}" for i in range(10)]
    assert all(re.fullmatch(r"justinfan\d+", p.nick) for p in receivers)
    assert len({p.nick for p in receivers}) == 200


def test_hot_room_puts_everyone_in_one_room():
    cf = clusterfile.parse(json.dumps(default_shape("127.0.9")))
    plans = loadgen.plan(cf, Options(clients=30, senders=3, hot_room="twitchplayspokemon"))
    assert {p.room for p in plans} == {"twitchplayspokemon"}
    assert {p.host for p in plans} == {"chat-event1"}


def test_refuses_a_plan_over_a_frontends_per_source_limit(tmp_path, capsys):
    """Every client connects from one address, so HAProxy would refuse the connections past
    haproxy.edge_maxconn_per_source on a frontend: refused before any socket, naming the field."""
    doc = default_shape("127.0.9")
    doc["haproxy"]["edge_maxconn_per_source"] = 20
    cf = clusterfile.parse(json.dumps(doc))
    loadgen.check_frontends(cf, loadgen.plan(cf, Options(clients=26, senders=0, hot_room="twitchplayspokemon")))
    with pytest.raises(LoadgenError, match=r"would open 21 connections from one address to chat-event1's IRC "
                                           r"frontend \(127\.0\.9\.5:6667\), over haproxy\.edge_maxconn_per_source \(20\)"):
        loadgen.check_frontends(cf, loadgen.plan(cf, Options(clients=28, senders=0, hot_room="twitchplayspokemon")))
    config = write_cluster(tmp_path / "limited.yaml", doc)
    assert loadgen.main(["--config", str(config), "--clients", "28", "--senders", "0",
                         "--hot-room", "twitchplayspokemon"]) == 2
    assert "raise edge_maxconn_per_source in the cluster file" in capsys.readouterr().err


def test_refuses_non_loopback_targets_and_sources(tmp_path, capsys):
    doc = default_shape("10.20.30")
    doc["profile"] = "remote"
    for h in doc["hosts"].values():
        h["ansible_connection"] = "ssh"
    doc["controlplane"]["listen"]["address"] = "127.0.0.1"
    cf = clusterfile.parse(json.dumps(doc))
    with pytest.raises(LoadgenError, match=r"refusing 10\.20\.30\.1.*127\.0\.0\.0/8"):
        loadgen.plan(cf, Options(clients=1, senders=0))
    config = write_cluster(tmp_path / "remote.yaml", doc)
    assert loadgen.main(["--config", str(config), "--clients", "1", "--senders", "0"]) == 2
    assert "127.0.0.0/8" in capsys.readouterr().err

    local = write_cluster(tmp_path / "local.yaml", default_shape("127.0.9"))
    assert loadgen.main(["--config", str(local), "--source-address", "192.168.1.5"]) == 2
    assert "--source-address: refusing 192.168.1.5" in capsys.readouterr().err
    assert loadgen.main(["--config", str(local), "--rate", "0"]) == 2
    assert loadgen.main(["--config", str(local), "--ws-fraction", "1.5"]) == 2


def test_histogram_percentiles_within_two_percent():
    h = Histogram()
    values = [random.Random(7).uniform(0.5, 200) for _ in range(10_000)]
    for v in values:
        h.add(v)
    exact = sorted(values)
    for p in (50, 99):
        want = exact[int(len(exact) * p / 100) - 1]
        assert abs(h.percentile(p) - want) / want < 0.03
    assert h.percentile(100) == h.max == max(values)
    assert Histogram().percentile(50) is None


def test_tally_matches_deliveries_to_echoes_whatever_the_order():
    t = Tally({"a": 3, "b": 2})
    t.delivery("m1", 0.0)              # a receiver can see a message before its sender's echo
    t.echo("m1", "a", 0.1)
    t.delivery("m1", 0.1)
    t.echo("m2", "b", 0.2)
    t.delivery("m2", 0.2)
    t.delivery("m2", 0.3)
    t.delivery("ghost", 0.3)           # delivered, but its echo never came
    t.settle(5.0)
    assert (t.delivered, t.expected) == (4, 5)
    t.delivery("m1", 5.1)              # late, after settling: still counted
    t.finish()
    assert (t.delivered, t.expected, t.late, t.lost_delivered, t.accepted) == (5, 5, 1, 1, 2)
    assert t.completeness == 1.0


def test_tally_forgets_in_unbounded_runs():
    t = Tally({"a": 1})
    for i in range(100):
        t.echo(f"m{i}", "a", float(i))
        t.delivery(f"m{i}", float(i))
    t.delivery("never-echoed", 0.0)
    t.settle(200.0, forget=60.0)
    assert (t.delivered, t.expected, t.lost_delivered) == (100, 100, 1)
    assert not t._deliv and len(t._settled) == 100     # settled ids stay a while, for late deliveries
    t.settle(300.0, forget=60.0)
    assert not t._settled


def test_tally_excludes_receivers_away_reconnecting_and_says_how_many():
    """With reconnection a receiver away is not expected for the messages accepted meanwhile; the
    exclusion is counted, and completeness_with_gaps counts those messages as missed."""
    t = Tally({"a": 3})
    t.echo("m1", "a", 0.0)
    t.delivery("m1", 0.0)
    t.delivery("m1", 0.0)
    t.delivery("m1", 0.0)
    t.receivers["a"] = 2               # one receiver lost, reconnecting
    t.echo("m2", "a", 0.1)
    t.delivery("m2", 0.1)
    t.delivery("m2", 0.1)
    t.receivers["a"] = 3               # back
    t.echo("m3", "a", 0.2)
    for _ in range(3):
        t.delivery("m3", 0.2)
    t.finish()
    assert (t.delivered, t.expected, t.excluded) == (8, 8, 1)
    assert t.completeness == 1.0 and t.completeness_with_gaps == 8 / 9


def _generator(tmp_path) -> loadgen.Generator:
    """A generator planned against a cluster file, never run: its bookkeeping on its own."""
    cf = clusterfile.load(write_cluster(tmp_path / "c.yaml", default_shape(free_subnet()))).spec
    return loadgen.Generator(cf, Options(clients=4, senders=1, rooms=("degentp",), series=True))


def _privmsg(gen: loadgen.Generator, msg_id: str) -> irc.Message:
    line = irc.encode("PRIVMSG", "#degentp", "hi", tags={"id": msg_id, "client-nonce": gen.nonce_prefix + "1-1"},
                      source="loadgen_0!loadgen_0@x", trailing=True)
    return next(iter(irc.Framer().feed(line)))


def test_a_message_delivered_twice_to_one_receiver_is_a_duplicate_and_counts_once(tmp_path):
    """A retry that delivers again must show: the second copy is counted as a duplicate (per
    receiver, across its reconnections: keyed by nick) and not as a delivery, so completeness
    cannot hide it by passing 1. The same id at two receivers is two deliveries."""
    asyncio.run(_duplicates(_generator(tmp_path)))


async def _duplicates(gen: loadgen.Generator) -> None:        # clients need a running loop
    a, b = (loadgen.TcpClient(gen, p, None) for p in gen.plans[:2])
    gen.tally.echo("m1", "degentp", 0.0)
    gen.privmsg(a, _privmsg(gen, "m1"))
    gen.privmsg(b, _privmsg(gen, "m1"))
    gen.privmsg(a, _privmsg(gen, "m1"))
    again = loadgen.TcpClient(gen, a.plan, None)         # a reconnected: a new connection, same receiver
    gen.privmsg(again, _privmsg(gen, "m1"))
    gen.tally.settle(5.0)
    assert (gen.tally.delivered, gen.tally.duplicates) == (2, 2)
    assert gen.tally.errors["duplicate"] == 2
    for i in range(loadgen.DEDUP_WINDOW):              # bounded memory: the oldest ids are forgotten
        gen.privmsg(b, _privmsg(gen, f"x{i}"))
    assert len(gen.recent_ids[b.plan.nick][0]) == loadgen.DEDUP_WINDOW


def test_reconnect_is_honoured_once_and_copies_during_the_move_count_once(tmp_path):
    """RECONNECT (as bytes from the server) starts one move, however often it comes; a copy of a
    message seen on both connections of a move is not a duplicate; an old connection the server
    closes while the move is under way is no error, and becomes a plain loss only if the new
    connection never comes up (here nothing listens on the planned frontend)."""
    asyncio.run(_reconnect(_generator(tmp_path)))


async def _reconnect(gen: loadgen.Generator) -> None:
    old = loadgen.TcpClient(gen, gen.plans[0], None)
    old.ready = True
    old.joined.set_result(True)
    gen.clients.append(old)
    gen.receivers.append(old)
    gen.tally = Tally({"degentp": 4})
    old.feed(b":tmi.chatops.local RECONNECT\r\n:tmi.chatops.local RECONNECT\r\n")
    assert old.moving and len(gen.tasks) == 1
    gen.tally.echo("m1", "degentp", 0.0)
    gen.privmsg(old, _privmsg(gen, "m1"))
    gen.privmsg(loadgen.TcpClient(gen, old.plan, None), _privmsg(gen, "m1"))   # the new connection's copy
    assert gen.tally.duplicates == 0 and not gen.tally.errors
    old.lost("closed by the server")
    assert not gen.tally.errors and gen.tally.receivers["degentp"] == 3        # away, not expected
    await asyncio.gather(*gen.tasks)
    assert not old.moving and gen.reconnect_count == 0
    assert gen.tally.errors["disconnected"] == 1 and gen.tally.errors["connect"] == 1
    assert any("no new connection came up" in e for e in gen.tally.examples), gen.tally.examples
    assert gen.lost_count == 1 and gen.tally.receivers["degentp"] == 4        # a timed run: counted missed
    gen.tally.settle(5.0)
    assert (gen.tally.delivered, gen.tally.expected) == (1, 4)


def test_series_points_say_which_echoes_they_judged(tmp_path):
    """--series: each point carries its completeness, duplicates and the wall-clock span of the
    echoes it settled, so a fault at a known time can be matched to its messages."""
    gen = _generator(tmp_path)
    gen.tally = Tally({"degentp": 2})
    now = time.monotonic()
    gen.tally.echo("m1", "degentp", now - 3.0)
    gen.tally.delivery("m1", now - 3.0)
    gen.tally.echo("m2", "degentp", now - 2.0)
    gen.tally.delivery("m2", now - 2.0)
    gen.tally.delivery("m2", now - 2.0)
    gen.tally.settle(now)
    gen.add_point(now)
    p = gen.series[-1]
    assert (p["accepted"], p["delivered"], p["expected"], p["duplicates"]) == (2, 3, 4, 0)
    assert p["completeness"] == 0.75
    wall = time.time()
    assert abs(p["echoed_from"] - (wall - 3.0)) < 0.5 and abs(p["echoed_to"] - (wall - 2.0)) < 0.5
    gen.add_point(now + 1)
    assert gen.series[-1]["echoed_from"] is None and gen.series[-1]["completeness"] is None
    assert loadgen.parse_args(["--series"])[0].series is True


def test_edge_is_read_from_the_welcome_line():
    assert loadgen.EDGE_IN_WELCOME.search("Your host is tmi.chatops.local (edge chat-event1)").group(1) == "chat-event1"
    assert loadgen.EDGE_IN_WELCOME.search("Your host is tmi.chatops.local") is None


def test_reconnect_option():
    assert loadgen.parse_args(["--reconnect"])[0].reconnect is True
    assert loadgen.parse_args([])[0].reconnect is False


# ---------------------------------------------------------------------------------------------
# Against a real cluster
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """The default topology's shape on a private subnet, shared by the runs below."""
    subnet = free_subnet()
    config = write_cluster(tmp_path_factory.mktemp("loadgen") / "cluster.yaml", default_shape(subnet))
    run = Path(tempfile.mkdtemp(prefix="co-", dir="/tmp"))
    try:
        with cluster_up(config, run) as c:
            c.subnet = subnet
            c.cf = clusterfile.load(config).spec
            yield c
    finally:
        shutil.rmtree(run, ignore_errors=True)


def test_thirty_seconds_of_mixed_traffic_is_delivered_completely(cluster):
    """The acceptance run: 200 receivers (a quarter on WebSocket) and 10 bot senders over every room
    of every cluster, 50 msgs/s for 30 s, through the `python -m chat.loadgen` command line."""
    proc, rep = run_cli("--config", str(cluster.config), "--clients", "200", "--senders", "10", "--rate", "50",
                        "--duration", "30", "--ws-fraction", "0.25", "--json", "--report-every", "10")
    assert proc.returncode == 0, proc.stderr
    assert rep is not None, proc.stderr
    assert rep["errors"] == {}, rep["error_examples"]
    assert rep["clients"] == 200 and rep["senders"] == 10
    assert sorted(rep["rooms"]) == sorted(r for rooms in ROOMS.values() for r in rooms)
    assert set(rep["receivers_per_room"].values()) == {50}
    assert rep["transports"]["ws"] == 52 and rep["transports"]["tcp"] == 158
    assert 29 <= rep["duration_s"] <= 31.5
    assert rep["sent"] >= 0.95 * 50 * 30
    assert rep["rejected"] == {} and rep["accepted"] == rep["sent"]
    assert rep["lost"] == {"delivered_without_echo": 0, "unanswered": 0}
    assert rep["expected"] == rep["accepted"] * 50
    assert rep["completeness"] == 1.0 and rep["delivered"] == rep["expected"]
    lat = rep["latency_ms"]
    assert lat["p99"] is not None and 0 <= lat["p50"] <= lat["p99"] <= lat["max"]
    assert rep["ack_ms"]["p99"] is not None
    # Progress every --report-every seconds when stderr is not a terminal, then the summary.
    progress = [line for line in proc.stderr.splitlines() if re.match(r"^\[\s*\d+\.\ds\] sent ", line)]
    assert 2 <= len(progress) <= 4, proc.stderr
    assert "completeness 100.000%" in proc.stderr


async def _observe(address: str, port: int, room: str, texts: list[str], ready: asyncio.Event,
                   stop: asyncio.Event) -> None:
    """A plain anonymous viewer on a raw socket, collecting the loadgen's messages in `room`."""
    reader, writer = await asyncio.open_connection(address, port)
    writer.write(b"CAP REQ :twitch.tv/tags\r\nNICK justinfan777001\r\nJOIN #" + room.encode() + b"\r\n")
    framer = irc.Framer()
    try:
        while not stop.is_set():
            try:
                data = await asyncio.wait_for(reader.read(65536), 0.2)
            except asyncio.TimeoutError:
                continue
            if not data:
                break
            for m in framer.feed(data):
                if isinstance(m, irc.Message):
                    if m.command == "366":
                        ready.set()
                    elif m.command == "PRIVMSG" and m.tags.get("client-nonce", "").startswith("lg"):
                        texts.append(m.params[-1])
    finally:
        writer.close()


def test_hot_room_with_the_tpp_command_mix(cluster):
    """Everyone in #twitchplayspokemon (the event cluster's room) sending the TPP commands, via run()."""
    cf = cluster.cf
    room = "twitchplayspokemon"
    fe = cf.clusters["event"].frontend

    async def go():
        texts: list[str] = []
        ready, stop = asyncio.Event(), asyncio.Event()
        observer = asyncio.ensure_future(_observe(cf.address("chat-event1"), fe.irc_port, room, texts, ready, stop))
        await asyncio.wait_for(ready.wait(), 10)
        report = await loadgen.run(cf, Options(clients=40, senders=4, rate=40, duration=4, hot_room=room, tpp=True,
                                               ws_fraction=0.5, quiet=True, handle_signals=False,
                                               sender_prefix="lgtpp"))
        stop.set()
        await observer
        return report, texts

    report, texts = asyncio.run(go())
    assert report["errors"] == {}, report["error_examples"]
    assert report["rooms"] == [room] and report["receivers_per_room"] == {room: 40}
    assert report["tpp"] and report["hot_room"] == room
    assert report["sent"] >= 150 and report["accepted"] == report["sent"] and report["rejected"] == {}
    assert report["completeness"] == 1.0 and report["expected"] == report["accepted"] * 40
    assert report["latency_ms"]["p99"] is not None
    # What went over the wire is the TPP mix, and every accepted message reached our own viewer too.
    assert len(texts) == report["accepted"]
    assert set(texts) <= set(loadgen.TPP_COMMANDS)
    assert len(set(texts)) >= 5


def test_unbounded_run_logs_in_the_talks_shape_and_stops_cleanly_on_sigterm(cluster):
    """`--duration 0`, as the supervisor runs it: a periodic talk-shaped summary line, and on
    SIGTERM every socket closed and the report printed."""
    proc = subprocess.Popen([sys.executable, "-m", "chat.loadgen", "--config", str(cluster.config), "--clients", "12",
                             "--senders", "2", "--rate", "20", "--duration", "0", "--report-every", "1", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        deadline = time.monotonic() + 20
        seen: list[str] = []
        while time.monotonic() < deadline and len([s for s in seen if LOG_LINE.match(s)]) < 2:
            line = proc.stderr.readline()
            if not line:
                break
            seen.append(line.rstrip("\n"))
        assert len([s for s in seen if LOG_LINE.match(s)]) >= 2, "\n".join(seen)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    rep = json.loads(out.strip().splitlines()[-1])
    assert rep["errors"] == {} and rep["sent"] > 0 and rep["accepted"] == rep["sent"]
    assert rep["completeness"] == 1.0


def test_timed_run_with_reconnect_brings_back_the_clients_of_a_restarted_edge(cluster):
    """`--reconnect`: an edge crashing mid-run (SIGKILL; the supervisor starts it again) loses its
    clients, each comes back through its frontend, and the report names every loss with its edge.
    Clients of the other edge keep their session; completeness counts the connected receivers,
    completeness_with_gaps the messages missed while away."""
    proc = subprocess.Popen([sys.executable, "-m", "chat.loadgen", "--config", str(cluster.config), "--clients", "30",
                             "--senders", "2", "--rate", "20", "--duration", "10", "--rooms", "degentp,paragusrants",
                             "--reconnect", "--json", "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        time.sleep(4)
        old = cluster.pid_of("edge-chat1")
        # Not SIGTERM: that drains the edge, and its clients follow RECONNECT instead of losing it.
        os.kill(old, signal.SIGKILL)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    rep = json.loads(out.strip().splitlines()[-1])
    rc = rep["reconnections"]
    print("edges", rep["edges"], "reconnections", {k: v for k, v in rc.items() if k != "events"})
    at_start = rep["edges"]["at_start"]
    assert set(at_start) == {"chat1", "chat2"} and sum(at_start.values()) == 32
    assert rc["enabled"] is True
    assert rc["lost"] == at_start["chat1"] and set(rc["by_edge"]) == {"chat1"}
    assert rc["reestablished"] == rc["lost"] and rc["still_lost"] == 0
    assert rc["clients_kept"] == at_start["chat2"]
    assert {e["edge"] for e in rc["events"]} == {"chat1"}
    assert all(e["back_at"] >= e["lost_at"] and e["back_edge"] in ("chat1", "chat2") for e in rc["events"])
    assert set(rc["by_frontend"]) <= {"chat1", "chat2"}
    assert rep["clients"] == 30 and rep["senders"] == 2
    assert rep["completeness"] >= 0.99
    assert rep["excluded_while_disconnected"] > 0
    assert rep["completeness_with_gaps"] < rep["completeness"]
    assert "connections lost" in err and "clients kept their session" in err


def test_unreachable_cluster_is_reported_not_waited_on(subnet, tmp_path):
    """Nothing listens on this subnet: the run ends within seconds, saying what it could not reach."""
    config = write_cluster(tmp_path / "cluster.yaml", default_shape(subnet))
    started = time.monotonic()
    proc, rep = run_cli("--config", str(config), "--clients", "20", "--senders", "2", "--duration", "5", "--json",
                        timeout=60)
    took = time.monotonic() - started
    assert proc.returncode == 1, proc.stderr
    assert took < 20
    assert rep["sent"] == 0 and rep["clients"] == 0 and rep["senders"] == 0
    assert rep["errors"]["connect"] == 20
    assert rep["errors"]["users"] == 2
    assert f"{subnet}." in proc.stderr and "ECONNREFUSED" in proc.stderr
    assert "no sender could join" in proc.stderr


# -- the generator's reading of deliveries (pure) --

def _tallied(line: str) -> tuple[dict, str | None]:
    """What irc.parse says of the tags the generator tallies, and the source."""
    m = irc.parse(line)
    return {k: m.tags[k] for k in loadgen.TALLIED_TAGS if k in m.tags}, m.source


def test_parse_line_reads_a_deliverys_tallied_tags_as_irc_parse_does():
    from tests.chat.test_irc import TWITCH_PRIVMSG, TWITCH_USERNOTICE
    # As the edge writes a delivery (chat.edge: irc.encode of clue's tags), and Twitch's own format.
    tags = {"badge-info": "", "badges": "", "client-nonce": "lg1-7-1733440000123456", "color": "",
            "display-name": "Bot_1", "emotes": "", "id": "0f7a3c1e-33b4-4ad9-9d5a-6d2c3b4a5e6f",
            "mod": "0", "room-id": "12", "target-msg-id": "x", "tmi-sent-ts": "1733440000123",
            "user-id": "99", "user-type": ""}
    edge_line = irc.encode("PRIVMSG", "#degentp", "hello there", tags=tags,
                           source="bot_1!bot_1@bot_1.tmi.chatops.local", trailing=True).decode().rstrip("\r\n")
    hostile = [
        # `id=` inside other keys' names, only at the end, repeated (the last wins), escaped.
        "@room-id=1;user-id=2;target-msg-id=3;id=4 :a!a@a PRIVMSG #r :t",
        "@id=first;tmi-sent-ts=1;id=second :a!a@a PRIVMSG #r :t",
        "@client-nonce=a\\sb\\:c;id=x :a!a@a PRIVMSG #r :t",
        "@room-id=1 :a!a@a PRIVMSG #r :no tallied tag at all",
        "@id= :a!a@a PRIVMSG #r :empty value",
    ]
    for line in [edge_line, TWITCH_PRIVMSG, *hostile]:
        fast = loadgen.parse_line(line)
        want_tags, want_source = _tallied(line)
        assert fast.command == "PRIVMSG" and fast.tags == want_tags and fast.source == want_source, line
    # Anything else takes the full parse, errors included.
    for line in [TWITCH_USERNOTICE, ":tmi.chatops.local PING :x", "@id=1 PRIVMSG #r :no source",
                 "@id=1  :a!a@a PRIVMSG #r :two spaces", "@id=1 :a!a@a NOTICE #r :PRIVMSG later"]:
        assert loadgen.parse_line(line) == irc.parse(line), line
    for bad in ["@id=1", "@id=1 :a!a@a", "@ :a PRIVMSG #r :x", ""]:
        with pytest.raises(irc.ParseError):
            loadgen.parse_line(bad)
