"""tpp-hot-room: one room grows hot, as #twitchplayspokemon did from 5k to 50k viewers (Feb 14-16,
2014), on the cluster the room was moved to. The load generator ramps the room's message rate from
a tenth to the full rate; every message's rate-limit and ban lookups hit the room's keys, which
share one hash tag and so one shard: that shard runs hot."""

from __future__ import annotations

import time

from controlplane.scenarios.base import Env, Expect, Fault, shard_of_room
from controlplane.scenarios.traffic import Traffic

RATE = 300.0          # messages/s at the top of the ramp: a few thousand Redis commands/s on one shard
CLIENTS = 40          # receivers; each delivery is a line the load generator must read
SENDERS = 12
RAMP_S = 20.0


class HotRoom(Fault):
    name = "tpp-hot-room"
    title = "a hot room: #ROOM ramps to RATE msgs/s"
    talk = "Feb 14-16: TPP grows from 5k to 50k concurrent viewers; chat shows signs of stress"
    fixes = ()           # load, not a bug: the slot moves whole, so resharding cannot split one room

    def __init__(self, rate: float | None = None, ramp: float | None = None) -> None:
        super().__init__()
        self.rate, self.ramp = rate, ramp
        self.traffic: Traffic | None = None
        self.shard: str | None = None

    def _shard(self, env: Env) -> str:
        if self.shard is None:
            self.shard = shard_of_room(env, env.room)
        return self.shard

    def expects(self, env: Env) -> list[Expect]:
        s = self._shard(env)
        return [Expect("hot_shard", s), Expect("hot_key", "*", False), Expect("ingestion_timeouts", "*", False),
                Expect("delivery_gap", "*", False), Expect("proxy_saturation", "*", False)]

    def cause_terms(self, env: Env) -> list[tuple[str, ...]]:
        s = self._shard(env)
        return [(f"{s} hot", f"{s} overloaded", "hot key", env.room)]

    def inject(self, env: Env) -> None:
        rate = self.rate or env.opt("rate", RATE)
        ramp = self.ramp if self.ramp is not None else env.opt("ramp", RAMP_S)
        self.title = f"a hot room: #{env.room} ramps to {rate:g} msgs/s over {ramp:g}s (shard {self._shard(env)})"
        self.traffic = Traffic(env.config_path, env.room, clients=env.opt("clients", CLIENTS),
                               senders=env.opt("senders", SENDERS), rate=rate, ramp=ramp)
        self.traffic.start()
        self.mark_began()
        env.say(f"{self.name}: loadgen --hot-room {env.room} --tpp --rate {rate:g} --ramp {ramp:g}")

    def undo(self, env: Env) -> list[str]:
        if self.traffic is None or self.undone:
            return []
        report = self.traffic.stop()
        self.undone = time.time()
        if report is None:
            return [f"stopped the load generator in #{env.room} (it printed no report: "
                    f"{self.traffic.stderr_tail[-300:]!r})"]
        return [f"stopped the load generator in #{env.room} after {report.get('sent', 0)} messages"]
