"""The local supervisor: starts every process of the embedded cluster, restarts the ones that die,
and stops them all on SIGINT/SIGTERM/SIGHUP.

No orphans, by three means: children are started from the supervisor's main thread with
PR_SET_PDEATHSIG, so even a SIGKILLed supervisor takes them down; they run in their own sessions,
so a terminal's Ctrl-C reaches only the supervisor, which then stops them in order; and stop_all()
escalates to SIGKILL for any child that ignores SIGTERM.

While it runs, the supervisor follows the cluster file's Redis shards: a shard added to the file is
started, a shard removed from it is stopped, and nothing else is touched (reconcile()).

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
from cluster import binaries, clusterfile
from cluster.rundir import RunDir
from cluster.spec import ClusterFile
from cluster.state import write_state
from controlplane.local import processes
from controlplane.local.processes import ProcessSpec

BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
STABLE_AFTER = 30.0       # a process that ran this long before dying restarts without backoff
STOP_GRACE = 10.0
RECONCILE_EVERY = 0.5     # how often the loop looks at the cluster file
# A file modified this recently may still be half written by an editor that truncates and then
# writes; a truncated shard list can be valid YAML, and reading it would stop shards.
SETTLE_NS = 200_000_000

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
        # The cluster file as last looked at: its stat, and the last version that loaded. Neither is
        # known yet, so the first reconcile() reads the file and finds whatever changed since `up`
        # built the specs; the baseline for "other changes" is the file as it is now.
        self._file_seen: tuple | None = None
        self._file_cluster: ClusterFile | None = self._load_quietly()

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
        next_look = 0.0
        while not self.stopping.wait(interval):
            self.check_once()
            if time.monotonic() >= next_look:
                next_look = time.monotonic() + RECONCILE_EVERY
                try:
                    self.reconcile()
                except Exception as exc:  # a bug here must not take the running cluster down
                    event(self.log, None, "cluster file reconcile failed", logging.ERROR, error=repr(exc))

    # -- following the cluster file's Redis shards --

    def _load_quietly(self) -> ClusterFile | None:
        if not self.config_path:
            return None
        try:
            return clusterfile.load(self.config_path).spec
        except clusterfile.ClusterFileError:
            return None

    def _file_stat(self) -> tuple | None:
        try:
            st = os.stat(self.config_path)
        except OSError:
            return None
        # The inode too: an atomic rename (writeback) may keep the size and land in the same tick.
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def reconcile(self) -> None:
        """If the cluster file changed since the last look, start the Redis processes it now wants
        and stop the ones it no longer does; the loop calls this, and tests may directly.

        A file that does not load is logged once and ignored: what runs keeps running. Runs on the
        main thread like every spawn, because PR_SET_PDEATHSIG follows the thread that forked."""
        if not self.config_path or self.stopping.is_set():
            return
        seen = self._file_stat()
        if seen == self._file_seen:
            return
        if seen is not None and 0 <= time.time_ns() - seen[1] < SETTLE_NS:
            return  # look again once the writer is done
        try:
            cf = clusterfile.load(self.config_path).spec
        except clusterfile.ClusterFileError as exc:
            if self._file_stat() != seen:
                return  # changed while being read; the next look reads the finished file
            self._file_seen = seen
            problems = "; ".join(f"{where or '<top>'}: {msg}" for where, msg in exc.problems)
            event(self.log, None, "cluster file changed but does not load; keeping every process as it is",
                  logging.WARNING, file=self.config_path, problems=problems)
            return
        if self._file_stat() != seen:
            return
        self._file_seen = seen
        self._follow_redis(cf)
        before, self._file_cluster = self._file_cluster, cf
        if before is not None and before.model_dump(exclude={"redis"}) != cf.model_dump(exclude={"redis"}):
            event(self.log, None, "cluster file changed outside redis:; running processes keep the old "
                  "settings (`chatops proxy reload` for HAProxy, else `chatops down` and `up`)", logging.WARNING)

    def _follow_redis(self, cf: ClusterFile) -> None:
        """Processes are keyed by (name, address, port): a shard moved to another address gets its
        new process first, and the old one stops only because no shard in the file still wants it."""
        try:
            wanted = processes.redis_specs(cf, self.run)
        except binaries.MissingBinary as exc:
            event(self.log, None, "cannot follow the cluster file's shards", logging.ERROR, error=exc)
            return

        def key(spec: ProcessSpec) -> tuple[str, str, int]:
            return (spec.name, spec.address, spec.port)

        running = {key(m.spec): m for m in self.procs if m.spec.kind == "redis"}
        want = {key(spec): spec for spec in wanted}
        for k, m in running.items():
            if k in want and want[k].argv != m.spec.argv:
                # Never restarted for a setting: that would lose the shard's data. set_redis_config
                # has usually applied it live already; a restart after a crash now uses the file's.
                m.spec = want[k]
                event(self.log, m.spec.name, "settings changed in the cluster file; used from its next restart")
        new = [spec for k, spec in want.items() if k not in running]
        gone = [m for k, m in running.items() if k not in want]
        if new:
            self._start_new(new)
        if gone:
            self._terminate([m for m in gone if m.proc and m.proc.poll() is None])
            for m in gone:
                self._close(m)
                self.procs.remove(m)
                event(self.log, m.spec.name, "stopped; no longer in the cluster file",
                      address=f"{m.spec.address}:{m.spec.port}")
            self.write_state()
        if new or gone:
            event(self.log, None, "Redis follows the cluster file; HAProxy routes to the new shard list "
                  "only after `chatops proxy reload`", started=len(new), stopped=len(gone))

    def _start_new(self, specs: list[ProcessSpec]) -> None:
        # Beside the other Redis processes, so stop_all() stops them in the Redis stage and
        # `chatops status` lists them with the shards.
        at = max((i + 1 for i, m in enumerate(self.procs) if m.spec.kind == "redis"), default=0)
        started: list[Managed] = []
        for spec in specs:
            m = Managed(spec)
            try:
                self._spawn(m)
            except Exception as exc:
                self._close(m)
                event(self.log, spec.name, "could not start", logging.ERROR, error=exc)
                continue
            self.procs.insert(at + len(started), m)
            started.append(m)
        self.write_state()
        for m in started:
            try:
                self._wait_ready(m)
            except StartError as exc:
                # It stays supervised: check_once() restarts it if it died, or marks it up once it answers.
                event(self.log, m.spec.name, f"not ready: {str(exc).partition(chr(10))[0]}", logging.WARNING)
                continue
            if m.status == "up":
                event(self.log, m.spec.name, "started", pid=m.proc.pid, address=f"{m.spec.address}:{m.spec.port}")
        self.write_state()

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
            self._terminate(live)
            stopped += len(live)
        for m in self.procs:
            self._close(m)
        if stopped:
            event(self.log, None, "stopped all processes", count=stopped)
        self.run.state_file.unlink(missing_ok=True)

    def _terminate(self, live: list[Managed]) -> None:
        """Signal all of them at once (SIGTERM; SIGINT for edges, which then close their clients at
        once instead of draining them), then SIGKILL whatever outlives the grace."""
        for m in live:
            try:
                m.proc.send_signal(m.spec.stop_signal)
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

    @staticmethod
    def _close(m: Managed) -> None:
        m.status = "stopped"
        if m.log_file:
            m.log_file.close()
            m.log_file = None

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
