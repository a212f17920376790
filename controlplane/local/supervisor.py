"""The local supervisor: starts every process of the embedded cluster, restarts the ones that die,
and stops them all on SIGINT/SIGTERM/SIGHUP.

No orphans, by three means: children are started from the supervisor's main thread with
PR_SET_PDEATHSIG, so even a SIGKILLed supervisor takes them down; they run in their own sessions,
so a terminal's Ctrl-C reaches only the supervisor, which then stops them in order; and stop_all()
escalates to SIGKILL for any child that ignores SIGTERM.

State for `chatops status` is written to the run directory's state.json after every change.
"""

from __future__ import annotations

import ctypes
import fcntl
import logging
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from chat.logs import event
from cluster.rundir import RunDir
from cluster.state import write_state
from controlplane.local.processes import ProcessSpec

BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
STABLE_AFTER = 30.0       # a process that ran this long before dying restarts without backoff
STOP_GRACE = 10.0

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent() -> None:  # runs in the child between fork and exec
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class StartError(Exception):
    pass


class AlreadyRunning(Exception):
    pass


@dataclass
class Managed:
    spec: ProcessSpec
    proc: subprocess.Popen | None = None
    started_at: float = 0.0
    restarts: int = 0
    failures: int = 0              # consecutive quick deaths, for the backoff
    restart_at: float | None = None
    status: str = "starting"       # starting | up | restarting | stopped
    log_file: object = field(default=None, repr=False)


def exit_description(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


class Supervisor:
    def __init__(self, specs: list[ProcessSpec], run: RunDir, logger: logging.Logger,
                 config_path: str = "", start_timeout: float = 20.0):
        self.run = run
        self.log = logger
        self.config_path = config_path
        self.start_timeout = start_timeout
        self.procs = [Managed(spec) for spec in specs]
        self.stopping = threading.Event()
        self._lock_fd: int | None = None
        self.started_at = time.time()
        self.started = False      # every stage up and settled: only then is the cluster "ready"

    # -- locking: one supervisor per run directory --

    def acquire(self) -> None:
        self.run.ensure()
        fd = os.open(self.run.supervisor_pid, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            raise AlreadyRunning(
                f"a cluster is already running from {self.run.root} (supervisor pid {other or '?'}); "
                "stop it with `chatops down` or use another --run-dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def release(self) -> None:
        if self._lock_fd is not None:
            self.run.supervisor_pid.unlink(missing_ok=True)
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- processes --

    def _spawn(self, m: Managed, restart: bool = False) -> None:
        m.spec.prepare(restart)
        log_path = self.run.log(m.spec.name)
        if m.log_file is None:
            m.log_file = open(log_path, "ab", buffering=0)
        m.proc = subprocess.Popen(
            m.spec.argv, stdin=subprocess.DEVNULL, stdout=m.log_file, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=_die_with_parent, close_fds=True)
        m.started_at = time.time()
        m.restart_at = None
        m.status = "starting"

    def start_all(self) -> None:
        """Start everything stage by stage (Redis, proxies, exchanges, clues, edges): a stage's
        processes start together, and the next stage waits until all of them answer."""
        stages: dict[str, list[Managed]] = {}
        for m in self.procs:
            stages.setdefault(m.spec.stage, []).append(m)
        servers = [g for g in stages.values() if not g[0].spec.client]
        clients = [g for g in stages.values() if g[0].spec.client]
        for group in servers:
            self._start_stage(group)
        self._wait_settled()
        for group in clients:  # traffic joins a cluster that is really serving
            self._start_stage(group)
        if self.stopping.is_set():
            return
        self.started = True
        self.write_state()

    def _start_stage(self, group: list[Managed]) -> None:
        for m in group:
            if self.stopping.is_set():
                return
            try:
                self._spawn(m)
            except Exception as exc:
                raise StartError(f"{m.spec.name}: could not start: {exc}") from exc
        for m in group:
            self._wait_ready(m)
            event(self.log, m.spec.name, "started", pid=m.proc.pid, address=f"{m.spec.address}:{m.spec.port}")
        self.write_state()

    def _wait_settled(self) -> None:
        """Wait until every process sees the others (HAProxy's checks pass on every edge and
        shard), so the first client after "ready" is not turned away by a proxy still checking."""
        deadline = time.monotonic() + self.start_timeout
        pending = [m for m in self.procs if m.spec.settled is not None]
        while pending and not self.stopping.is_set():
            pending = [m for m in pending if not m.spec.settled()]
            if not pending:
                return
            if time.monotonic() > deadline:
                raise StartError(f"{', '.join(m.spec.name for m in pending)} still see servers down after "
                                 f"{self.start_timeout:.0f}s; see their logs")
            time.sleep(0.1)

    def _wait_ready(self, m: Managed) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline and not self.stopping.is_set():
            code = m.proc.poll()
            if code is not None:
                raise StartError(f"{m.spec.name} {exit_description(code)} while starting; "
                                 f"last lines of {self.run.log(m.spec.name)}:\n{self.log_tail(m)}")
            if m.spec.ready():
                m.status = "up"
                return
            time.sleep(0.05)
        if not self.stopping.is_set():
            raise StartError(f"{m.spec.name} did not answer on {m.spec.address}:{m.spec.port} within "
                             f"{self.start_timeout:.0f}s; last lines of its log:\n{self.log_tail(m)}")

    def log_tail(self, m: Managed, lines: int = 15) -> str:
        try:
            text = self.run.log(m.spec.name).read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join("    " + ln for ln in text.splitlines()[-lines:])

    def check_once(self) -> None:
        """Notice deaths and carry out due restarts; called from the loop, and by tests directly."""
        now = time.time()
        changed = False
        for m in self.procs:
            if m.proc is None:
                continue
            if m.restart_at is not None:
                if now >= m.restart_at:
                    try:
                        self._spawn(m, restart=True)
                    except Exception as exc:
                        event(self.log, m.spec.name, "restart failed", logging.ERROR, error=exc)
                        self._schedule_restart(m, now)
                    else:
                        event(self.log, m.spec.name, "restarted", pid=m.proc.pid, restarts=m.restarts)
                    changed = True
                continue
            code = m.proc.poll()
            if code is None:
                if m.status == "starting" and m.spec.ready():
                    m.status = "up"
                    changed = True
                continue
            ran = now - m.started_at
            m.failures = 0 if ran >= STABLE_AFTER else m.failures + 1
            delay = self._schedule_restart(m, now)
            event(self.log, m.spec.name, f"{exit_description(code)} after {ran:.1f}s; "
                  f"restarting in {delay:.1f}s", logging.WARNING, restart=m.restarts)
            changed = True
        if changed:
            self.write_state()

    def _schedule_restart(self, m: Managed, now: float) -> float:
        delay = 0.0 if m.failures == 0 else min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (m.failures - 1))
        m.restart_at = now + delay
        m.restarts += 1
        m.status = "restarting"
        return delay

    def loop(self, interval: float = 0.25) -> None:
        while not self.stopping.wait(interval):
            self.check_once()

    def stop_all(self) -> None:
        """Stop stage by stage in reverse (traffic, edges, clues, exchanges, proxies, Redis), each
        stage finished before the next, so nothing loses what it depends on while shutting down;
        SIGKILL whatever outlives the grace."""
        self.stopping.set()
        stages: dict[str, list[Managed]] = {}
        for m in self.procs:
            stages.setdefault(m.spec.stage, []).append(m)
        stopped = 0
        for group in reversed(list(stages.values())):
            live = [m for m in group if m.proc and m.proc.poll() is None]
            for m in live:
                try:
                    m.proc.terminate()
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + STOP_GRACE
            for m in live:
                try:
                    m.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    event(self.log, m.spec.name, "did not stop in time; killing", logging.WARNING)
                    m.proc.kill()
                    m.proc.wait()
            stopped += len(live)
        for m in self.procs:
            m.status = "stopped"
            if m.log_file:
                m.log_file.close()
                m.log_file = None
        if stopped:
            event(self.log, None, "stopped all processes", count=stopped)
        self.run.state_file.unlink(missing_ok=True)

    # -- state for `chatops status` --

    def write_state(self) -> None:
        state = {
            "supervisor_pid": os.getpid(),
            "started_at": self.started_at,
            "config": self.config_path,
            "ready": self.started and all(m.status == "up" for m in self.procs),
            "processes": [{
                "name": m.spec.name, "kind": m.spec.kind, "host": m.spec.host,
                "address": m.spec.address, "port": m.spec.port, "describe": m.spec.describe,
                "pid": m.proc.pid if m.proc else None, "started_at": m.started_at,
                "restarts": m.restarts, "status": m.status,
            } for m in self.procs],
        }
        write_state(self.run, state)


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); it is not running.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return True


def supervisor_pid(run: RunDir) -> int | None:
    """The pid of the supervisor holding this run directory's lock, or None."""
    try:
        fd = os.open(run.supervisor_pid, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 32, 0).decode(errors="replace").strip()
            return int(text) if text.isdigit() else None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None  # nobody holds the lock: a stale file
    finally:
        os.close(fd)
