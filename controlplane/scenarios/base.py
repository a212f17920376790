"""What every game day scenario is made of: faults, each saying what it injects, what the control
plane should find (finding kinds and subjects), which fix should clear it, what the incident must
name as its cause, and how to undo it. A scenario is faults on a (compressed) timeline.

A fault keeps what it needs to undo itself on the instance, and `undo()` is safe to call at any
point (before inject, twice, after a half-done inject): the runner calls it from a `finally`.
"""

from __future__ import annotations

import fnmatch
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from cluster.rundir import RunDir
from controlplane.scenarios.api import Api, ScenarioError

__all__ = ["Env", "Expect", "Fault", "Scenario", "ScenarioError", "shard_of_room"]


@dataclass(frozen=True)
class Expect:
    """A finding the fault should open: `kind` and an fnmatch pattern on its subject. Required
    expectations must be met (detect_s is measured on them); the others are consequences the
    fault explains, so they are not false findings."""
    kind: str
    subject: str = "*"
    required: bool = True

    def matches(self, finding: dict) -> bool:
        return finding.get("kind") == self.kind and fnmatch.fnmatchcase(str(finding.get("subject")), self.subject)

    def __str__(self) -> str:
        return f"{self.kind} {self.subject}" + ("" if self.required else " (consequence)")


@dataclass
class Env:
    """The running cluster a scenario acts on."""
    cf: Any                       # cluster.spec.ClusterFile
    config_path: Path
    run: RunDir
    api: Api
    say: Callable[[str], None] = lambda text: None
    room: str = "twitchplayspokemon"
    options: dict[str, Any] = field(default_factory=dict)    # per-run knobs (leak size, rates...)

    def opt(self, name: str, default: Any) -> Any:
        return self.options.get(name, default)


class Fault:
    """One injected fault. Subclasses set the class attributes and implement the four methods."""
    name = ""                    # tpp-leak
    title = ""                   # one line for the terminal and the report
    talk = ""                    # the talk's moment it replays (its own words and time)
    fixes: tuple[str, ...] = ()  # actions the control plane should apply to clear it; () = none exists

    def __init__(self) -> None:
        self.began: float | None = None      # when the fault took effect (epoch seconds)
        self.undone: float | None = None

    def expects(self, env: Env) -> list[Expect]:
        raise NotImplementedError

    def cause_terms(self, env: Env) -> list[tuple[str, ...]]:
        """What the incident's root-cause summary must name: each group needs one of its words."""
        raise NotImplementedError

    def inject(self, env: Env) -> None:
        raise NotImplementedError

    def undo(self, env: Env) -> list[str]:
        """Put back what inject changed; returns one line per thing undone (empty: nothing was)."""
        raise NotImplementedError

    def tick(self, env: Env) -> None:
        """Called about once a second while the scenario runs (a ramp that needs nursing)."""

    def describe(self, env: Env) -> dict:
        return {"name": self.name, "title": self.title, "talk": self.talk, "fixes": list(self.fixes),
                "expects": [str(e) for e in self.expects(env)],
                "cause_terms": [list(g) for g in self.cause_terms(env)]}

    def mark_began(self) -> None:
        self.began = time.time()


@dataclass
class Scenario:
    """Faults at offsets (seconds after the start), in order; the talk's timeline beside them."""
    name: str
    summary: str
    steps: list[tuple[float, Fault]]
    talk_timeline: list[tuple[str, str]] = field(default_factory=list)   # (when, what) from the talk

    @property
    def faults(self) -> list[Fault]:
        return [f for _, f in self.steps]


def shard_of_room(env: Env, room: str) -> str:
    """The shard that holds the room's keys ({room}.*) under the live slot map."""
    from chat import keys
    from controlplane.resharding import slotmap
    try:
        smap = slotmap.load(env.cf, env.config_path, env.run)
    except Exception as exc:       # noqa: BLE001 -- any unreadable map: say which and stop
        raise ScenarioError(f"cannot read the slot map to find #{room}'s shard: {exc}") from None
    names = [s.name for s in env.cf.redis.shards]
    return names[smap.shard_of(keys.room(room))]


def testing_host(env: Env) -> tuple[str, str]:
    """(host, cluster) the leak comes from: the first host of the cluster named `testing`, as in
    2014, else of the last cluster."""
    clusters = env.cf.clusters
    name = "testing" if "testing" in clusters else list(clusters)[-1]
    return clusters[name].hosts[0], name
