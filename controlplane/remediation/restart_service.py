"""restart_service {name}: restart one supervised process (`edge-chat2`, `redis-shard1`...) and wait
until it is healthy again.

Locally the supervisor owns every process: the action sends the process SIGTERM (and SIGCONT, so
a hung, stopped process acts on it; SIGKILL after STOP_WITHIN_S if it still has not exited, plus
services.edge.drain_period for an edge, which first sends its clients RECONNECT and drains them), the
supervisor sees it exit and starts it again (at once for a process that ran long, with its usual backoff for
one that keeps dying), and the action waits for state.json to show a new pid that is up. The plan's
fingerprint is the pid it saw, so a process that restarted on its own since is a stale plan.
"""

from __future__ import annotations

import os
import signal
import time

from cluster.durations import seconds
from cluster.state import read_state
from controlplane.remediation.base import BadParams, Context, Draft, Outcome, Param, Unavailable

NAME = "restart_service"
VERIFY = ("delivery_gap", "ingestion_timeouts")
HEALTHY_WITHIN_S = 30.0
STOP_WITHIN_S = 10.0        # after SIGTERM (and SIGCONT), before SIGKILL

PARAMS = {
    "name": Param(str, help="a process name as `chatops status` shows it, e.g. edge-chat2"),
    # or, as a finding names it: the service and its host
    "service": Param(str, choices=("edge", "clue", "exchange")),
    "host": Param(str, help="the chat host of `service`"),
}


def _name(params: dict) -> str:
    if params.get("name"):
        return params["name"]
    if params.get("service") and params.get("host"):
        return f"{params['service']}-{params['host']}"
    raise BadParams("name", "give name (e.g. edge-chat2), or service and host")


def subject(cf, params: dict) -> str:
    return f"process:{_name(params)}"


def _process(ctx: Context, name: str) -> dict:
    if ctx.cf.profile != "local":
        raise Unavailable("restart_service in profile remote goes through the host's service manager "
                          "(the Ansible rolling-restart playbook), not the local supervisor")
    state = read_state(ctx.run)
    if not state:
        raise Unavailable(f"no supervisor state in {ctx.run.root}: is the cluster running (`chatops status`)?")
    procs = {p["name"]: p for p in state.get("processes", [])}
    if name not in procs:
        raise BadParams("name", f"{name[:40]!r} is not a supervised process; processes: {', '.join(procs)}")
    if name.startswith("controlplane"):
        raise BadParams("name", "the control plane cannot restart itself from its own request")
    return procs[name]


def plan(ctx: Context, params: dict) -> Draft:
    p = _process(ctx, _name(params))
    up = f"up {time.time() - p['started_at']:.0f} s" if p.get("started_at") else p.get("status")
    return Draft(summary=f"restart {p['name']} on {p['host']} and wait until it answers",
                 diff=[f"- {p['name']} pid {p['pid']} ({p['status']}, {up}, {p['restarts']} restarts)",
                       f"+ {p['name']} a new process, healthy within {HEALTHY_WITHIN_S:g} s"],
                 preconditions=["the local supervisor runs it (`chatops status`)"],
                 state={"pid": p["pid"]}, details={"process": p})


def terminate(pid: int, grace_s: float = STOP_WITHIN_S) -> str:
    """Make `pid` exit: SIGTERM, then SIGCONT (a hung process, stopped or SIGSTOPped, only acts on
    its pending SIGTERM once continued), then SIGKILL if it is still there after `grace_s` (one
    stuck in a loop that never gets to its handler). Returns the last signal it needed, or
    "gone" when there was no such process."""
    sent = "gone"
    for sig in (signal.SIGTERM, signal.SIGCONT):
        try:
            os.kill(pid, sig)
            sent = "SIGTERM"
        except ProcessLookupError:
            return sent             # already gone: the supervisor is starting it again
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            return sent
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return sent
    return "SIGKILL"


def _alive(pid: int) -> bool:
    """Still running (a zombie the supervisor has not reaped yet has exited: not alive)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


def stop_grace(cf, process: dict) -> float:
    """How long SIGTERM may take: an edge first drains its clients over services.edge.drain_period
    (chat/drain.py), then exits."""
    if process.get("kind") != "edge" or cf.cluster_of(process.get("host", "")) is None:
        return STOP_WITHIN_S
    return STOP_WITHIN_S + seconds(cf.clusters[cf.cluster_of(process["host"])].services.edge.drain_period)


def apply(ctx: Context, params: dict, draft: Draft) -> Outcome:
    old = draft.state["pid"]
    terminate(old, stop_grace(ctx.cf, draft.details["process"]))
    deadline = time.monotonic() + HEALTHY_WITHIN_S
    while time.monotonic() < deadline:
        p = {x["name"]: x for x in (read_state(ctx.run) or {}).get("processes", [])}.get(_name(params))
        if p and p["pid"] and p["pid"] != old and p["status"] == "up":
            return Outcome(True, f"{_name(params)} restarted: pid {old} -> {p['pid']}", {"pid": p["pid"]})
        time.sleep(0.2)
    return Outcome(False, f"{_name(params)} was not up again within {HEALTHY_WITHIN_S:g} s", {})
