"""tpp: the talk's three days, compressed to about a minute on the local cluster. The hot room
ramps first (TPP grows, moved to the event cluster), the testing cluster's leak fills the hot
room's shard while it is under load (the ECONNREFUSED of Feb 17-18), and then the exchanges lose
their keepalive (the i/o timeouts of Feb 19). Each fault also runs alone: tpp-hot-room, tpp-leak,
tpp-no-keepalive."""

from __future__ import annotations

from controlplane.scenarios.base import Scenario
from controlplane.scenarios.hot_room import HotRoom
from controlplane.scenarios.leak import Leak
from controlplane.scenarios.no_keepalive import NoKeepalive

# The talk's own clock, for the report's side-by-side column.
TALK_TIMELINE = [
    ("Feb 14, 10:33pm", "TPP hits 5k concurrent viewers"),
    ("Feb 16, 8:21pm", "TPP moved onto the event cluster"),
    ("Feb 16, 5:43pm", "TPP hits 50k; chat shows signs of stress"),
    ("Feb 17, 9:35am", "investigation begins"),
    ("Feb 18, 06:54", "[clue] Timed out (after 5s); clue: ECONNREFUSED"),
    ("Feb 17, 2:56pm", "decision: shard Redis by key; deployed 9:29pm"),
    ("Feb 17, 10:10pm", "CLIENT LIST: 2311 idle; lsof: 2012 from chat-testing"),
    ("Feb 17, 11:12pm", "testing cluster shut off: the leak fixed (~15 h after the start)"),
    ("Feb 19, 14:11", "[exchange] i/o timeout: no HTTP keepalives (another day)"),
]

LEAK_AT_S = 20.0          # the leak lands once the room is well up its ramp
KEEPALIVE_AT_S = 35.0


def tpp() -> Scenario:
    return Scenario("tpp", "the whole 2014 incident: hot room, testing-cluster leak, exchanges without keepalive",
                    [(0.0, HotRoom()), (LEAK_AT_S, Leak()), (KEEPALIVE_AT_S, NoKeepalive())], TALK_TIMELINE)


def hot_room() -> Scenario:
    return Scenario("tpp-hot-room", HotRoom.talk, [(0.0, HotRoom())], TALK_TIMELINE[:3])


def leak() -> Scenario:
    return Scenario("tpp-leak", Leak.talk, [(0.0, Leak())], TALK_TIMELINE[3:8])


def no_keepalive() -> Scenario:
    return Scenario("tpp-no-keepalive", NoKeepalive.talk, [(0.0, NoKeepalive())], TALK_TIMELINE[8:])
