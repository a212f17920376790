"""Runs every Source on its interval with APScheduler, and keeps each job's health.

One job per source on a thread pool as wide as the job list, so a slow or hung source (a shard
that accepts connections and never answers) holds only its own thread: the others keep their
schedule. `max_instances=1` keeps a slow source from piling up runs; `coalesce` turns the runs it
missed into one; the collectors' socket timeouts bound each run (threads cannot be killed), and a
run that still takes longer than its timeout is reported as an error in its health.

Exactly once per deployment: the scheduler holds an exclusive `flock` on `<run dir>/controlplane.lock`
for as long as it runs. A second control plane on the same run dir (or a second worker process of
a multi-process server) cannot take it, and `chatops controlplane` refuses to start rather than
scrape everything twice with two diverging in-memory stores. The server is one process with
threads (waitress) for the same reason.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

from controlplane.sources import Source

log = logging.getLogger(__name__)


class SchedulerLocked(RuntimeError):
    """Another control plane already scrapes this run dir."""


@dataclass
class JobHealth:
    id: str
    kind: str
    target: str
    interval_s: float
    timeout_s: float
    runs: int = 0
    failures: int = 0
    last_run: float | None = None        # wall-clock start of the last run
    last_duration_s: float | None = None
    last_ok: float | None = None         # wall-clock start of the last run that found the source up
    last_error: str | None = None        # None after a good run
    running: bool = False

    def as_dict(self, next_run: float | None = None) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "target": self.target, "interval_s": self.interval_s,
                "timeout_s": self.timeout_s, "runs": self.runs, "failures": self.failures,
                "last_run": self.last_run, "last_duration_s": self.last_duration_s,
                "last_ok": self.last_ok, "last_error": self.last_error, "running": self.running,
                "next_run": next_run}


class Scraper:
    """The sources, their health, and (once started) the APScheduler that runs them."""

    def __init__(self, sources: list[Source], lock_path: os.PathLike | str | None = None):
        self.sources = {s.id: s for s in sources}
        self.health = {s.id: JobHealth(s.id, s.kind, s.target, s.interval_s, s.timeout_s) for s in sources}
        self.lock_path = lock_path
        self._lock_fd: int | None = None
        self._mutex = threading.Lock()
        self.scheduler: BackgroundScheduler | None = None

    def run_once(self, source_id: str) -> bool:
        """One scrape of one source, with its health recorded; never raises. False (and nothing
        done) when that source is being scraped already, by its schedule or by a manual run."""
        src, h = self.sources[source_id], self.health[source_id]
        with self._mutex:
            if h.running:
                return False
            h.running = True
        at, started = time.time(), time.perf_counter()
        error = None
        up = False
        try:
            obs = src.scrape()
            up = obs.up
            if not obs.up:
                error = obs.error or "source down"
        except Exception as exc:      # a bug in one source must not stop its job
            log.exception("scrape %s failed", source_id)
            error = f"{type(exc).__name__}: {exc}"
        took = time.perf_counter() - started
        if error is None and took > src.timeout_s:
            error = f"took {took:.1f}s, over its {src.timeout_s:g}s timeout"
        with self._mutex:
            h.running = False
            h.runs += 1
            h.last_run, h.last_duration_s = at, took
            if up:
                h.last_ok = at
            if error:
                h.failures += 1
            h.last_error = error
        return True

    def run_all(self) -> None:
        """Every source once, in order (tests and the first fill before serving)."""
        for sid in self.sources:
            self.run_once(sid)

    def start(self) -> None:
        self._take_lock()
        sched = BackgroundScheduler(executors={"default": ThreadPoolExecutor(max_workers=len(self.sources) + 1)},
                                    job_defaults={"max_instances": 1, "coalesce": True})
        now = time.time()
        for i, (sid, src) in enumerate(self.sources.items()):
            # Spread first runs over a second so the sources do not all fire on the same tick.
            first = datetime.fromtimestamp(now + 0.05 + i * min(1.0, src.interval_s) / max(1, len(self.sources)))
            sched.add_job(self.run_once, "interval", args=[sid], id=sid, seconds=src.interval_s,
                          next_run_time=first, misfire_grace_time=max(1, int(src.interval_s)))
        sched.start()
        self.scheduler = sched

    def replace(self, sources: list[Source]) -> None:
        """Scrape `sources` from now on (the cluster file changed: a shard was added or removed):
        new ones are scheduled, gone ones unscheduled, the rest keep their schedule and health."""
        wanted = {s.id: s for s in sources}
        with self._mutex:
            gone = [sid for sid in self.sources if sid not in wanted]
            new = [s for sid, s in wanted.items() if sid not in self.sources]
            for sid in gone:
                del self.sources[sid], self.health[sid]
            self.sources.update(wanted)
            for s in new:
                self.health[s.id] = JobHealth(s.id, s.kind, s.target, s.interval_s, s.timeout_s)
        if self.scheduler is None:
            return
        for sid in gone:
            try:
                self.scheduler.remove_job(sid)
            except Exception:  # noqa: BLE001 -- already gone (JobLookupError): nothing to unschedule
                pass
        for s in new:
            self.scheduler.add_job(self.run_once, "interval", args=[s.id], id=s.id, seconds=s.interval_s,
                                   next_run_time=datetime.fromtimestamp(time.time() + 0.05),
                                   misfire_grace_time=max(1, int(s.interval_s)))

    def stop(self) -> None:
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)
            self.scheduler = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _take_lock(self) -> None:
        if self.lock_path is None:
            return
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            finally:
                os.close(fd)
            raise SchedulerLocked(f"another control plane (pid {holder or '?'}) already scrapes this run "
                                  f"dir: it holds {self.lock_path}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._lock_fd = fd

    def jobs(self) -> list[dict[str, Any]]:
        with self._mutex:
            rows = list(self.health.values())
            out = []
            for h in rows:
                nxt = None
                if self.scheduler is not None:
                    job = self.scheduler.get_job(h.id)
                    if job is not None and job.next_run_time is not None:
                        nxt = job.next_run_time.timestamp()
                out.append(h.as_dict(nxt))
        return out


def running_here(app):
    """A predicate: does this process run the scrape schedule (it took the run lock)? What runs
    once per deployment beside it (the canary, the notifier) waits for it to be true."""
    def check() -> bool:
        scraper = app.extensions.get("chatops.scraper")
        return scraper is not None and scraper.scheduler is not None
    return check


def init_app(app) -> Scraper:
    """Build the sources from the cluster file; start the schedule unless config SCHEDULER is False."""
    from cluster.durations import seconds
    from controlplane import sources
    from controlplane.detectors.engine import Engine
    cf, run, store = app.config["CLUSTER"], app.extensions["chatops.run"], app.extensions["chatops.store"]
    interval = seconds(cf.controlplane.scrape.interval)
    engine = Engine(cf, store, app.extensions["chatops.db"], interval)
    app.extensions["chatops.engine"] = engine
    jobs = sources.build(cf, run, store)
    jobs.append(sources.Source("detect:all", "detect", "all", interval, max(interval, 5.0), engine.scrape))
    scraper = Scraper(jobs, lock_path=run.root / "controlplane.lock")
    app.extensions["chatops.scraper"] = scraper
    if app.config.get("SCHEDULER", True):
        run.root.mkdir(parents=True, exist_ok=True)
        scraper.start()
    return scraper
