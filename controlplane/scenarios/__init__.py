"""Game day scenarios: the 2014 incident (and its parts) replayed on the running cluster, with
what the control plane should find, and a report of what it did (docs/gameday.md).

One module per fault (hot_room, leak, no_keepalive), `tpp` composes them on the talk's
timeline, `runner` injects, watches the API and undoes, `report` renders the HTML page."""

from __future__ import annotations

from typing import Callable

from controlplane.scenarios import tpp
from controlplane.scenarios.base import Scenario, ScenarioError

SCENARIOS: dict[str, Callable[[], Scenario]] = {
    "tpp": tpp.tpp,
    "tpp-hot-room": tpp.hot_room,
    "tpp-leak": tpp.leak,
    "tpp-no-keepalive": tpp.no_keepalive,
}


def get(name: str) -> Scenario:
    try:
        return SCENARIOS[name]()
    except KeyError:
        raise ScenarioError(f"unknown scenario {name!r}; valid: {', '.join(SCENARIOS)}") from None


__all__ = ["SCENARIOS", "Scenario", "ScenarioError", "get"]
