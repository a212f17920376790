"""Regenerate a chat host's HAProxy config and reload it without dropping a connection.

plan_reload() renders every chosen host's config, runs `haproxy -c` on it and diffs it against the
config the running HAProxy loaded; it changes nothing. apply_reload() re-checks that the running config
is still the one the plan was made against, writes the new one atomically, asks the master to
reload over its socket, and waits for a new worker to answer. The old worker keeps serving its
open connections (bounded by hard-stop-after), and the listening sockets pass to the new worker
through the admin socket (`expose-fd listeners`), so clients see no refused connection.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field

from cluster.rundir import RunDir
from cluster.spec import ClusterFile
from collectors import haproxy_runtime
from controlplane import audit
from controlplane.haproxy import config as haproxy_config
from controlplane.remediation.base import Context, Draft, Outcome, Param, Unavailable

RELOAD_TIMEOUT = 15.0


class PlanError(Exception):
    pass


@dataclass(frozen=True)
class HostPlan:
    host: str
    running: str          # the config file the running HAProxy loaded ('' if none yet)
    rendered: str
    check: haproxy_config.CheckResult

    @property
    def changed(self) -> bool:
        return self.running != self.rendered

    @property
    def diff(self) -> str:
        return haproxy_config.diff(self.running, self.rendered, f"{self.host}.cfg")


@dataclass(frozen=True)
class ReloadPlan:
    hosts: list[HostPlan]

    @property
    def ok(self) -> bool:
        return all(h.check.ok for h in self.hosts)

    def describe(self) -> str:
        out = []
        for h in self.hosts:
            state = "config changed" if h.changed else "no config change (reload only)"
            out.append(f"== {h.host}: {state}; haproxy -c: {'valid' if h.check.ok else 'INVALID'}")
            if h.check.output:
                out += ["   " + ln for ln in h.check.output.splitlines()]
            if h.changed:
                out.append(h.diff.rstrip("\n"))
        return "\n".join(out)


@dataclass
class HostResult:
    host: str
    ok: bool
    detail: str
    old_workers: list[int] = field(default_factory=list)
    new_worker: int | None = None


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def plan_reload(cf: ClusterFile, run: RunDir, hosts: list[str] | None = None) -> ReloadPlan:
    chat_hosts = [h for h, _ in cf.chat_hosts()]
    chosen = hosts or chat_hosts
    unknown = [h for h in chosen if h not in chat_hosts]
    if unknown:
        raise PlanError(f"not a chat host: {', '.join(unknown)} (chat hosts: {', '.join(chat_hosts)})")
    out = []
    for host in chosen:
        path = run.haproxy_config(host)
        running = path.read_text() if path.exists() else ""
        rendered = haproxy_config.render(cf, host, run)
        out.append(HostPlan(host, running, rendered, haproxy_config.check(rendered)))
    return ReloadPlan(out)


def checked_plan(cf: ClusterFile, run: RunDir) -> ReloadPlan:
    """Every chat host's config rendered from `cf` and passing `haproxy -c`, or Unavailable naming
    the hosts whose config does not: for an action whose later steps depend on the reload."""
    try:
        p = plan_reload(cf, run)
    except (PlanError, haproxy_config.RenderError) as exc:
        raise Unavailable(str(exc)) from None
    invalid = [h for h in p.hosts if not h.check.ok]
    if invalid:
        raise Unavailable(f"haproxy -c rejects the regenerated config of {', '.join(h.host for h in invalid)}: "
                          + invalid[0].check.output)
    return p


def _show_proc(run: RunDir, host: str) -> haproxy_runtime.ProcTable:
    return haproxy_runtime.parse_show_proc(
        haproxy_runtime.command(run.haproxy_master_socket(host), "show proc"))


def _reload_host(run: RunDir, hp: HostPlan) -> HostResult:
    path = run.haproxy_config(hp.host)
    current = path.read_text() if path.exists() else ""
    # Applying the same plan twice finds the rendered config already in place: reload it again
    # rather than call the plan stale, so apply() stays idempotent.
    if current not in (hp.running, hp.rendered):
        return HostResult(hp.host, False, "the running config changed since the plan was made; plan again")
    if not hp.check.ok:
        return HostResult(hp.host, False, f"haproxy -c rejected the rendered config:\n{hp.check.output}")
    try:
        before = _show_proc(run, hp.host)
    except haproxy_runtime.RuntimeAPIError as exc:
        return HostResult(hp.host, False, f"HAProxy master is not reachable: {exc}")
    if before.master is None:
        return HostResult(hp.host, False, "`show proc` named no master process")
    old_pids = [w.pid for w in before.workers]
    if current != hp.rendered:
        haproxy_config.write_atomic(path, hp.rendered)
    try:
        haproxy_runtime.command(run.haproxy_master_socket(hp.host), "reload")
    except haproxy_runtime.RuntimeAPIError:
        pass  # the master re-executes itself and may drop the CLI connection; judge by `show proc`
    deadline = time.monotonic() + RELOAD_TIMEOUT
    last_error = "no answer"
    while time.monotonic() < deadline:
        time.sleep(0.02)
        try:
            after = _show_proc(run, hp.host)
        except haproxy_runtime.RuntimeAPIError as exc:
            last_error = str(exc)
            continue
        if after.master is None or after.master.reloads <= before.master.reloads:
            continue
        if after.master.failed_reloads > before.master.failed_reloads:
            if current != hp.rendered:  # put back what the running workers were started from
                haproxy_config.write_atomic(path, current)
            return HostResult(hp.host, False, "HAProxy refused the new config; the old workers keep serving",
                              old_pids)
        new = [w.pid for w in after.workers if w.pid not in old_pids]
        if new:
            try:
                haproxy_runtime.command(run.haproxy_socket(hp.host), "show info", timeout=2.0)
            except haproxy_runtime.RuntimeAPIError as exc:
                last_error = str(exc)
                continue
            return HostResult(hp.host, True, f"reloaded: worker {','.join(map(str, old_pids))} -> {new[0]}",
                              old_pids, new[0])
    return HostResult(hp.host, False, f"no new worker within {RELOAD_TIMEOUT:.0f}s ({last_error})", old_pids)


def apply_reload(p: ReloadPlan, run: RunDir, actor: str) -> list[HostResult]:
    """Carry out a plan host by host, stopping at the first failure so one bad host is not repeated."""
    results = []
    for hp in p.hosts:
        r = _reload_host(run, hp)
        audit.record(run, actor, "proxy.reload", hp.host, "ok" if r.ok else "failed",
                     detail=r.detail, config_changed=hp.changed, config_sha256=_digest(hp.rendered),
                     old_workers=r.old_workers, new_worker=r.new_worker)
        results.append(r)
        if not r.ok:
            break
    return results


# -- the action: proxy_reload {host} on the remediation contract ----------------------------------
# `chatops proxy reload` calls plan_reload/apply_reload directly (and audits there); plans made
# through the engine audit once per step instead, so this adapter passes no actor down.

NAME = "proxy_reload"
VERIFY = ("proxy_saturation",)


def _chat_hosts(cf) -> list[str]:
    return ["all"] + [h for h, _ in cf.chat_hosts()]


PARAMS = {"host": Param(str, default="all", choices=_chat_hosts, help="a chat host, or all")}


def subject(cf, params: dict) -> str:
    return f"haproxy:{params['host']}"


def plan(ctx: Context, params: dict) -> Draft:
    try:
        p = plan_reload(ctx.cf, ctx.run, None if params["host"] == "all" else [params["host"]])
    except (PlanError, haproxy_config.RenderError) as exc:
        raise Unavailable(str(exc)) from None
    return Draft(summary=f"render, check and reload HAProxy on {', '.join(h.host for h in p.hosts)}",
                 diff=p.describe().splitlines(),
                 preconditions=["every rendered config passes haproxy -c", "each master socket answers"],
                 state={h.host: _digest(h.running) for h in p.hosts}, details={"plan": p})


def apply(ctx: Context, params: dict, draft: Draft) -> Outcome:
    p: ReloadPlan = draft.details["plan"]
    if not p.ok:
        return Outcome(False, "not reloading: a rendered config is invalid")
    results = []
    for hp in p.hosts:
        r = _reload_host(ctx.run, hp)
        results.append(f"{r.host}: {r.detail}")
        if not r.ok:
            return Outcome(False, "; ".join(results), {"reloaded": len(results) - 1})
    return Outcome(True, "; ".join(results), {"reloaded": len(results)})
