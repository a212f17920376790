"""The `chatops` command."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import click

from chat import logs
from cluster import binaries, clusterfile, spec
from cluster.rundir import RunDir, RunDirError
from cluster.state import read_state
from controlplane import audit
from controlplane.cli.common import config_option, run_dir_option
from controlplane.cli.common import fail as _fail
from controlplane.cli.common import load as _load
from controlplane.cli.common import run_dir as _run_dir
from controlplane.cli.serve import controlplane_cmd
from controlplane.haproxy import config as haproxy_config
from controlplane.local import processes
from controlplane.local.supervisor import (
    AlreadyRunning,
    StartError,
    Supervisor,
    pid_alive,
    supervisor_pid,
)
from controlplane.remediation import proxy_reload

EXIT_NOT_RUNNING = 3  # as `systemctl status` and LSB init scripts use it


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """chatops: observe, explain and fix a chat cluster."""


# -- config --

@main.group()
def config() -> None:
    """Cluster-file commands."""


@config.command("check")
@click.argument("file", required=False)
def config_check(file: str | None) -> None:
    """Validate a cluster file (the shipped default when FILE is omitted)."""
    loaded = _load(file)
    cf = loaded.spec
    click.echo(f"{loaded.path}: OK ({len(cf.hosts)} hosts, {len(cf.clusters)} clusters, "
               f"{len(cf.redis.shards)} shards, profile {cf.profile})")


# -- proxy --

@main.group()
def proxy() -> None:
    """HAProxy configs: render, check, reload."""


@proxy.command("render")
@config_option
@run_dir_option
@click.option("--host", "hosts", multiple=True, help="Only this chat host (repeatable).")
@click.option("--check", is_flag=True, help="Run `haproxy -c` on every rendered config.")
@click.option("--output", type=click.Path(file_okay=False), help="Write <host>.cfg files here instead of printing.")
def proxy_render(config: str | None, run_dir: str | None, hosts: tuple[str, ...], check: bool,
                 output: str | None) -> None:
    """Render each chat host's HAProxy config from the cluster file."""
    run = _run_dir(run_dir)
    cf = _load(config, run).spec
    chat_hosts = [h for h, _ in cf.chat_hosts()]
    for h in hosts:
        if h not in chat_hosts:
            _fail(f"not a chat host: {h} (chat hosts: {', '.join(chat_hosts)})", 2)
    failed = []
    try:
        for host in hosts or chat_hosts:
            text = haproxy_config.render(cf, host, run)
            if output:
                haproxy_config.write_atomic(Path(output) / f"{host}.cfg", text)
            elif not check:
                click.echo(text)
            if check:
                result = haproxy_config.check(text)
                click.echo(f"{host}: haproxy -c {'OK' if result.ok else 'FAILED'}")
                for line in result.output.splitlines():
                    click.echo(f"    {line}")
                if not result.ok:
                    failed.append(host)
    except (RunDirError, binaries.MissingBinary, haproxy_config.RenderError) as exc:
        _fail(str(exc))
    if failed:
        _fail(f"invalid config for: {', '.join(failed)}")


@proxy.command("reload")
@config_option
@run_dir_option
@click.option("--host", "hosts", multiple=True, help="Only this chat host (repeatable; default: all).")
@click.option("--yes", "-y", is_flag=True, help="Apply without asking.")
@click.option("--dry-run", is_flag=True, help="Show the plan and stop.")
def proxy_reload_cmd(config: str | None, run_dir: str | None, hosts: tuple[str, ...], yes: bool,
                     dry_run: bool) -> None:
    """Render, validate and diff the configs, then reload through the master socket."""
    run = _run_dir(run_dir)
    cf = _load(config, run).spec
    try:
        p = proxy_reload.plan(cf, run, list(hosts) or None)
    except (proxy_reload.PlanError, RunDirError, binaries.MissingBinary, haproxy_config.RenderError) as exc:
        _fail(str(exc), 2)
    click.echo(p.describe())
    if not p.ok:
        _fail("not reloading: a rendered config is invalid")
    if dry_run:
        return
    if not yes:
        if not sys.stdin.isatty():
            _fail("refusing to reload without confirmation; pass --yes", 2)
        click.confirm(f"Reload HAProxy on {', '.join(h.host for h in p.hosts)}?", abort=True)
    results = proxy_reload.apply(p, run, audit.actor())
    for r in results:
        click.echo(f"{r.host}: {'OK' if r.ok else 'FAILED'}: {r.detail}")
    if not all(r.ok for r in results) or len(results) < len(p.hosts):
        _fail("reload failed; see above (the audit log has the record)")


# -- inspect --

@main.group()
def inspect() -> None:
    """What each source says right now: the 2014 team's top, redis-cli, lsof and log greps, done properly."""


def _register_inspect_commands() -> None:
    # Each source's commands live beside nothing else in controlplane/inspect_<source>.py.
    import importlib
    for name in ("inspect_haproxy", "inspect_redis", "inspect_logs"):
        try:
            module = importlib.import_module(f"controlplane.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"controlplane.{name}":
                raise
            continue
        for command in module.COMMANDS:
            inspect.add_command(command)


_register_inspect_commands()
main.add_command(controlplane_cmd)


# -- traffic --

@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                                "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def loadgen(args: tuple[str, ...]) -> None:
    """Fake traffic against the running cluster (`chatops loadgen --help` for the options)."""
    from chat import loadgen as lg

    argv = list(args)
    if "--config" not in argv and not any(a.startswith("--config=") for a in argv):
        state = read_state(_run_dir(None))
        if state and state.get("config"):
            argv = ["--config", state["config"], *argv]
    sys.exit(lg.main(argv))


# -- rooms --

@main.command()
@config_option
@run_dir_option
def rooms(config: str | None, run_dir: str | None) -> None:
    """Where each room is served: its cluster and that cluster's frontends."""
    cf = _load(config, _run_dir(run_dir)).spec
    rows = []
    for cname, cluster in cf.clusters.items():
        irc_addrs = ", ".join(f"{cf.address(h)}:{cluster.frontend.irc_port}" for h in cluster.hosts)
        ws_addrs = ", ".join(f"ws://{cf.address(h)}:{cluster.frontend.ws_port}/" for h in cluster.hosts)
        for room in cluster.rooms:
            rows.append((room, cname, irc_addrs, ws_addrs))
    first = next(iter(cf.clusters))
    widths = [max(len(r[i]) for r in rows + [("ROOM", "CLUSTER", "IRC (TCP)", "WEBSOCKET")]) for i in range(4)]
    for row in [("ROOM", "CLUSTER", "IRC (TCP)", "WEBSOCKET")] + rows:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())
    click.echo(f"\nRooms not listed in the cluster file live on the first cluster, {first}.")


# -- users --

@main.group()
def users() -> None:
    """Chat users and their tokens (the cluster must be running)."""


@users.command("add")
@click.argument("name")
@config_option
@run_dir_option
@click.option("--mod", "mod_rooms", multiple=True, metavar="ROOM", help="Make the user a mod of ROOM (repeatable).")
@click.option("--broadcaster", "broadcaster_rooms", multiple=True, metavar="ROOM",
              help="Make the user ROOM's broadcaster (repeatable).")
@click.option("--bot", is_flag=True, help="A known bot: Twitch's 7,500 messages per 30 s limit.")
@click.option("--color", default="", help="Chat colour, like #1E90FF.")
def users_add(name: str, config: str | None, run_dir: str | None, mod_rooms: tuple[str, ...],
              broadcaster_rooms: tuple[str, ...], bot: bool, color: str) -> None:
    """Create (or update) user NAME and print a new token for `PASS oauth:<token>`."""
    import asyncio

    from chat.cache import CacheUnavailable, ShardedCache
    from chat.users import add_user

    run = _run_dir(run_dir)
    cf = _load(config, run).spec
    mod_rooms = tuple(r.lstrip("#") for r in mod_rooms)
    broadcaster_rooms = tuple(r.lstrip("#") for r in broadcaster_rooms)
    host = cf.chat_hosts()[0][0]

    async def go() -> str:
        cache = ShardedCache.for_host(cf, host, timeout=2.0)
        deadline = time.monotonic() + 10
        try:
            while True:
                try:
                    return await add_user(cache, name.lower(), mod_rooms=mod_rooms,
                                          broadcaster_rooms=broadcaster_rooms, bot=bot, color=color)
                except CacheUnavailable:
                    # A cluster that has just started may not have passed its first health checks.
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.5)
        finally:
            await cache.close()

    try:
        token = asyncio.run(go())
    except ValueError as exc:
        _fail(str(exc), 2)
    except CacheUnavailable as exc:
        _fail(f"cannot reach Redis through {host}'s shard listeners ({exc}); is the cluster up (`chatops status`)?")
    roles = ", ".join([f"mod of #{r}" for r in mod_rooms] + [f"broadcaster of #{r}" for r in broadcaster_rooms]
                      + (["bot"] if bot else []))
    click.echo(f"user {name.lower()}{f' ({roles})' if roles else ''}; connect with:", err=True)
    click.echo(f"oauth:{token}")


# -- up / down / status --

def _format_uptime(seconds: float) -> str:
    s = int(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return f"{d}d{h:02d}h{m:02d}m" if d else f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def _port_open(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=0.5):
            return True
    except OSError:
        return False


def _status_rows(state: dict) -> list[dict]:
    now = time.time()
    rows = []
    for p in state["processes"]:
        up = (pid_alive(p["pid"]) and p["status"] != "restarting"
              and (p["port"] == 0 or _port_open(p["address"], p["port"])))
        rows.append({**p, "up": up, "uptime": _format_uptime(now - p["started_at"]) if up else "-"})
    return rows


def _print_table(rows: list[dict], describe: bool = False) -> None:
    cols = ["HOST", "ADDRESS", "PORT", "PROCESS", "PID", "STATUS", "UPTIME", "RESTARTS"]
    data = [[r["host"], r["address"], str(r["port"]), r["name"], str(r["pid"] or "-"),
             "up" if r["up"] else "down", r["uptime"], str(r["restarts"])] for r in rows]
    if describe:
        cols.append("WHAT")
        for d, r in zip(data, rows):
            d.append(r["describe"])
    widths = [max(len(c), *(len(d[i]) for d in data)) for i, c in enumerate(cols)]
    click.echo("  ".join(c.ljust(w) for c, w in zip(cols, widths)).rstrip())
    for d in data:
        click.echo("  ".join(v.ljust(w) for v, w in zip(d, widths)).rstrip())


def _print_hints(cf: spec.ClusterFile, with_controlplane: bool) -> None:
    host, _ = cf.chat_hosts()[0]
    addr = cf.address(host)
    base = cf.haproxy.listener_base_port
    click.echo(f"\nEvery chat host reaches shard i at its own address, port {base}+i "
               f"(the talk's CACHE_SERVER=localhost CACHE_PORT={base}). On {host}:")
    click.echo(f"  redis-cli -h {addr} -p {base} PING")
    click.echo(f"  redis-cli -h {addr} -p {base} CLIENT INFO     # laddr= is the shard, addr= is {host}")
    click.echo(f"  HAProxy stats: http://{addr}:{cf.haproxy.stats_port}/stats   "
               f"(;csv for CSV, /metrics for Prometheus)")
    if with_controlplane:
        listen = cf.controlplane.listen
        url = f"http://{listen.address}:{listen.port}"
        click.echo(f"\nDashboard: {url}/   API: {url}/api/v1/   Prometheus: {url}/metrics")


@main.command()
@config_option
@run_dir_option
@click.option("--detach", is_flag=True, help="Run the supervisor in the background; stop it with `chatops down`.")
@click.option("--start-timeout", default=20.0, show_default=True, help="Seconds each process has to answer.")
@click.option("--traffic", is_flag=True, help="Also run a modest load generator, so there is chat to watch.")
@click.option("--controlplane/--no-controlplane", "with_controlplane", default=True, show_default=True,
              help="Also run the control plane (dashboard, API, /metrics) once the cluster has settled.")
def up(config: str | None, run_dir: str | None, detach: bool, start_timeout: float, traffic: bool,
       with_controlplane: bool) -> None:
    """Start the cluster (Redis shards, every chat host's HAProxy and chat services) and the
    control plane, and keep them running."""
    run = _run_dir(run_dir)
    loaded = _load(config)
    if detach:
        _up_detached(loaded, run, start_timeout, traffic, with_controlplane)
        return
    log = logs.setup("supervisor", sys.stdout)
    try:
        # specs() also refuses a run dir too long for socket paths
        specs = processes.specs(loaded.spec, run, loaded.path, traffic, with_controlplane)
    except (binaries.MissingBinary, RunDirError) as exc:
        _fail(str(exc))
    sup = Supervisor(specs, run, log, str(loaded.path), start_timeout)
    try:
        sup.acquire()
    except AlreadyRunning as exc:
        _fail(str(exc))

    def on_signal(signum, _frame):
        logs.event(log, None, f"received {signal.Signals(signum).name}; stopping")
        sup.stopping.set()

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    code = 0
    try:
        logs.event(log, None, "starting cluster", config=loaded.path, run_dir=run.root)
        sup.start_all()
        if not sup.stopping.is_set():
            sup.write_state()
            click.echo("")
            _print_table(_status_rows(read_state(run)), describe=True)
            _print_hints(loaded.spec, with_controlplane)
            click.echo("\nRunning in the foreground; Ctrl-C stops everything.", nl=True)
            sys.stdout.flush()
            sup.loop()
    except StartError as exc:
        # The log line stays one line; the process's own log tail follows it verbatim.
        headline, _, tail = str(exc).partition("\n")
        logs.event(log, None, f"start failed: {headline}", logging.ERROR)
        if tail:
            click.echo(tail)
        code = 1
    finally:
        sup.stop_all()
        sup.release()
    sys.exit(code)


def _up_detached(loaded: clusterfile.LoadedCluster, run: RunDir, start_timeout: float, traffic: bool,
                 with_controlplane: bool) -> None:
    run.ensure()
    other = supervisor_pid(run)
    if other:
        _fail(f"a cluster is already running from {run.root} (supervisor pid {other}); `chatops down` first")
    run.state_file.unlink(missing_ok=True)
    log_path = run.log("supervisor")
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "controlplane.cli", "up", "--config", str(loaded.path),
             "--run-dir", str(run.root), "--start-timeout", str(start_timeout)]
            + (["--traffic"] if traffic else []) + ([] if with_controlplane else ["--no-controlplane"]),
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + start_timeout * 4 + 30
    while time.monotonic() < deadline:
        code = proc.poll()
        if code is not None:
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-20:])
            _fail(f"the supervisor exited with code {code} while starting:\n{tail}")
        state = read_state(run)
        if state and state.get("ready"):
            _print_table(_status_rows(state), describe=True)
            _print_hints(loaded.spec, with_controlplane)
            click.echo(f"\nSupervisor pid {proc.pid} runs in the background (log: {log_path}); "
                       "stop it with `chatops down`.")
            return
        time.sleep(0.1)
    _fail(f"the cluster did not come up in time; see {log_path}")


@main.command()
@run_dir_option
@click.option("--timeout", default=30.0, show_default=True, help="Seconds to wait for everything to stop.")
def down(run_dir: str | None, timeout: float) -> None:
    """Stop a cluster started with `chatops up --detach`."""
    run = _run_dir(run_dir)
    pid = supervisor_pid(run)
    if not pid:
        click.echo(f"no cluster is running from {run.root}")
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            click.echo(f"stopped (supervisor pid {pid})")
            return
        time.sleep(0.1)
    _fail(f"supervisor pid {pid} did not stop within {timeout:.0f}s")


@main.command()
@run_dir_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(run_dir: str | None, as_json: bool) -> None:
    """Show each process of the local cluster: host, address, port, pid, up/down, uptime."""
    run = _run_dir(run_dir)
    pid = supervisor_pid(run)
    state = read_state(run)
    if not pid or not state:
        if as_json:
            click.echo(json.dumps({"running": False, "run_dir": str(run.root)}))
        else:
            click.echo(f"no cluster is running from {run.root}")
        sys.exit(EXIT_NOT_RUNNING)
    rows = _status_rows(state)
    if as_json:
        click.echo(json.dumps({"running": True, "supervisor_pid": pid, "config": state["config"],
                               "processes": rows}, indent=1))
    else:
        click.echo(f"supervisor pid {pid}, up {_format_uptime(time.time() - state['started_at'])}, "
                   f"config {state['config']}")
        _print_table(rows)
    if not all(r["up"] for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
