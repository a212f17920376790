"""`--fix auto` on a running cluster: the control plane reads `remediation.auto` when it starts,
so the run writes the actions its faults need into the cluster file (through cluster.writeback:
comments kept, validated), restarts the supervised control plane, and afterwards puts the file
back and restarts it again. The cooldown is shortened for the run, because back-to-back game days
(the benchmark's rounds) would otherwise find the last round's fixes still cooling down."""

from __future__ import annotations

import os
import signal
import time

from cluster import writeback
from cluster.state import read_state
from controlplane.scenarios.base import Env, ScenarioError

COOLDOWN = "30s"
START_TIMEOUT_S = 90.0


def _controlplane_pid(env: Env) -> int | None:
    state = read_state(env.run) or {}
    return next((p.get("pid") for p in state.get("processes", []) if p.get("name") == "controlplane"
                 and p.get("status") == "up"), None)


def restart_controlplane(env: Env) -> None:
    """SIGTERM the supervised control plane; the supervisor starts it again with the file as it is."""
    pid = _controlplane_pid(env)
    if pid is None:
        raise ScenarioError("the control plane is not run by `chatops up` here, so the scenario cannot restart "
                            "it with remediation.auto: add `remediation: {auto: [kill_clients, set_keepalive]}` "
                            "to the cluster file and restart it yourself, then use --fix auto")
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        new = _controlplane_pid(env)
        if new is not None and new != pid and env.api.healthy():
            try:
                jobs = env.api.get("/api/v1/jobs")["jobs"]
            except ScenarioError:
                jobs = []
            if any(j["id"] == "detect:all" and j["runs"] >= 2 for j in jobs):
                return
        time.sleep(0.5)
    raise ScenarioError(f"the control plane did not come back within {START_TIMEOUT_S:.0f}s")


class AutoFix:
    def __init__(self, actions: list[str]):
        self.actions = actions
        self.original: bytes | None = None
        self.written: bytes | None = None

    def enable(self, env: Env) -> str:
        policy = env.cf.remediation
        wanted = list(dict.fromkeys([*policy.auto, *self.actions]))
        if set(self.actions) <= set(policy.auto) and policy.auto_cooldown == COOLDOWN:
            return f"remediation.auto already has {', '.join(self.actions)}"
        path = env.config_path
        self.original = path.read_bytes()
        edit = writeback.plan_edit(path, {"remediation.auto": wanted, "remediation.auto_cooldown": COOLDOWN})
        writeback.apply_edit(edit)
        self.written = path.read_bytes()
        restart_controlplane(env)
        return f"remediation.auto: [{', '.join(wanted)}], auto_cooldown {COOLDOWN} for the run (control plane restarted)"

    def restore(self, env: Env) -> list[str]:
        if self.original is None:
            return []
        path, original, self.original = env.config_path, self.original, None
        if path.read_bytes() == self.written:
            tmp = path.with_name(path.name + ".gameday")
            tmp.write_bytes(original)
            os.replace(tmp, path)
            how = "the cluster file put back as it was"
        else:   # the control plane's own fixes wrote to it meanwhile: undo only our two keys
            import yaml
            old = (yaml.safe_load(original) or {}).get("remediation") or {}
            changes = {key: old[name] if name in old else writeback.REMOVE
                       for key, name in (("remediation.auto", "auto"), ("remediation.auto_cooldown", "auto_cooldown"))}
            writeback.apply_edit(writeback.plan_edit(path, changes))
            how = "remediation.auto and auto_cooldown put back in the cluster file (the fixes' edits kept)"
        restart_controlplane(env)
        return [f"{how}; control plane restarted"]
