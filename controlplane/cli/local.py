"""`chatops up`, `down` and `status`: the local cluster under its supervisor."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time

import click

from chat import logs
from cluster import binaries, checks, clusterfile, secrets, spec
from cluster.rundir import RunDir, RunDirError
from cluster.state import read_state
from controlplane.cli.common import config_option, fail, load, run_dir_option
from controlplane.cli.common import run_dir as _run_dir
from controlplane.local import processes
from controlplane.local.supervisor import AlreadyRunning, StartError, Supervisor, pid_alive, supervisor_pid

EXIT_NOT_RUNNING = 3  # as `systemctl status` and LSB init scripts use it


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


@click.command()
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
    loaded = load(config)
    if detach:
        _up_detached(loaded, run, start_timeout, traffic, with_controlplane)
        return
    log = logs.setup("supervisor", sys.stdout)
    try:
        # specs() also refuses a run dir too long for socket paths
        specs = processes.specs(loaded.spec, run, loaded.path, traffic, with_controlplane)
    except (binaries.MissingBinary, RunDirError) as exc:
        fail(str(exc))
    sup = Supervisor(specs, run, log, str(loaded.path), start_timeout)
    try:
        sup.acquire()
    except AlreadyRunning as exc:
        fail(str(exc))

    def on_signal(signum, _frame):
        logs.event(log, None, f"received {signal.Signals(signum).name}; stopping")
        sup.stopping.set()

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    code = 0
    try:
        try:
            generated = secrets.ensure_local(loaded.spec, run)
        except secrets.SecretError as exc:
            raise StartError(str(exc)) from None
        if generated:
            # Names only: the values stay in the file and the environment.
            logs.event(log, None, "generated local secrets", file=run.secrets_file,
                       variables=",".join(generated))
        logs.event(log, None, "starting cluster", config=loaded.path, run_dir=run.root)
        for path, message in checks.warnings(loaded.spec):
            logs.event(log, None, f"cluster file: {path}: {message}", logging.WARNING)
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
        fail(f"a cluster is already running from {run.root} (supervisor pid {other}); `chatops down` first")
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
            fail(f"the supervisor exited with code {code} while starting:\n{tail}")
        state = read_state(run)
        if state and state.get("ready"):
            _print_table(_status_rows(state), describe=True)
            _print_hints(loaded.spec, with_controlplane)
            click.echo(f"\nSupervisor pid {proc.pid} runs in the background (log: {log_path}); "
                       "stop it with `chatops down`.")
            return
        time.sleep(0.1)
    fail(f"the cluster did not come up in time; see {log_path}")


@click.command()
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
    fail(f"supervisor pid {pid} did not stop within {timeout:.0f}s")


@click.command()
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
