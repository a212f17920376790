"""The notifier: decides (pipeline.py) and writes notifications to the outbox, and delivers the
outbox, one thread per destination.

- One decide tick every TICK_S: incidents, their findings, the outbox's history for them and the
  active silences go through pipeline.decide; each decision is written with its dedup key
  (`Database.enqueue_alert`: the same key twice writes one row), so a tick after a restart, or
  two ticks racing, cannot send an incident state twice.
- Each destination has its own delivery thread: it takes its pending rows strictly in id order;
  the head is tried until it is delivered or rejected (a failing head blocks the rest, so a
  receiver sees an incident's notifications in order), and only then the next. A failed attempt
  waits 1 s, doubling to 30 s (plus up to 10% jitter), or the receiver's Retry-After (at most
  5 minutes); the time of the next try is written to the row, so a restart honours it. A hanging
  Slack blocks Slack's thread only.
- After a restart the pending rows are simply delivered: at-least-once. A crash between the
  receiver's 200 and our "delivered" sends that one again, with the same dedup key.
- Secrets: a destination whose url_env (or named secret_env) is unset is disabled at start with
  one warning naming the variable; nothing is queued for it. Logs name destinations, never a
  URL; error strings are scrubbed of the URL and the secret before they are stored or logged.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from controlplane.alerting import message, pipeline
from controlplane.alerting.destination import (
    RETRY_AFTER_CAP_S,
    TIMEOUT_S,
    BadDestination,
    Destination,
    Result,
)

log = logging.getLogger("controlplane.alerting")

TICK_S = 0.5                 # how often notifications are decided
BACKOFF_FIRST_S = 1.0
BACKOFF_CAP_S = 30.0
JITTER = 0.1                 # up to this fraction is added to each backoff
SCHEDULER_WAIT = 30.0        # the scrape schedule must start within this, else no notifier here


def backoff(attempts: int, rng: Callable[[], float] = random.random) -> float:
    """Seconds before the next try after `attempts` failed ones: 1, 2, 4 ... 30, plus jitter."""
    base = min(BACKOFF_CAP_S, BACKOFF_FIRST_S * 2 ** max(0, attempts - 1))
    return base * (1 + JITTER * rng())


@dataclass
class Counts:
    enqueued: int = 0
    delivered: int = 0
    failed: int = 0          # failed attempts (each retry counts)
    rejected: int = 0


@dataclass
class Lane:
    """One destination's delivery: its thread, its wake-up, its counters."""
    name: str
    type: str
    dest: Destination | None            # None: disabled
    disabled_because: str | None = None
    counts: Counts = field(default_factory=Counts)
    wake: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    last_refresh: float = 0.0


class Notifier:
    """Build with a Database, the cluster file and the environment holding the destinations'
    variables; `tick()` decides and `deliver(name)` delivers, for tests and benchmarks that drive
    it by hand, or `start()` runs both on threads until `stop()`."""

    def __init__(self, db, cf, env: Mapping[str, str] | None = None, *, timeout: float = TIMEOUT_S,
                 tick_s: float = TICK_S, registry: Mapping[str, type[Destination]] | None = None):
        if registry is None:
            from controlplane.alerting import TYPES
            registry = TYPES
        self.db, self.cf, self.tick_s = db, cf, tick_s
        env = os.environ if env is None else env
        self.lanes: dict[str, Lane] = {}
        for spec in cf.alerts:
            try:
                dest: Destination | None = registry[spec.type].from_env(spec, env, timeout)
                why = None
            except BadDestination as exc:
                dest, why = None, str(exc)
                log.warning("alert destination %s disabled: %s", spec.name, why)
            self.lanes[spec.name] = Lane(spec.name, spec.type, dest, why)
        self.routes = [pipeline.Route.of(s) for s in cf.alerts if self.lanes[s.name].dest is not None]
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._started = False
        self._lock = threading.Lock()

    # -- deciding ---------------------------------------------------------------------------------

    def tick(self, now: float | None = None) -> list[dict]:
        """Decide once and write what is due to the outbox; returns the rows newly written."""
        if not self.routes:
            return []
        now = time.time() if now is None else now
        active = self.db.incidents(state="open") + self.db.incidents(state="acknowledged")
        # Resolved incidents matter only until every destination told of them was told they
        # resolved: settled ones are never read again, however many accumulate.
        live = {i["id"] for i in active}
        pending = [i for i in self.db.unsettled_incidents([r.name for r in self.routes]) if i not in live]
        resolved = [inc for inc in map(self.db.incident, pending) if inc["state"] == "resolved"]
        incidents = sorted(active + resolved, key=lambda i: (i["opened"], i["id"]))
        if not incidents:
            return []
        history = self.db.alert_history([i["id"] for i in incidents])
        findings: dict[int, list[dict]] = {}
        for f in self.db.incident_findings([i["id"] for i in incidents]):
            findings.setdefault(f["incident_id"], []).append(f)
        pairs = [(i, findings.get(i["id"], [])) for i in incidents]
        decisions = pipeline.decide(self.routes, pairs, history, self.db.silences(active_at=now), now)
        by_id = {i["id"]: (i, fs) for i, fs in pairs}
        written = []
        for d in decisions:
            inc, fs = by_id[d.incident_id]
            payload = message.build(inc, fs, d.event, self.cf, key=d.dedup_key)
            row = self.db.enqueue_alert(d.destination, payload, incident_id=d.incident_id, event=d.event,
                                        dedup_key=d.dedup_key, at=now)
            if row["new"]:
                lane = self.lanes[d.destination]
                lane.counts.enqueued += 1
                lane.wake.set()
                written.append(row)
                log.info("alert %s queued for %s: incident %s %s (%s)", row["id"], d.destination,
                         d.incident_id, d.event, d.why)
        return written

    # -- delivering -------------------------------------------------------------------------------

    def deliver(self, name: str, now: float | None = None) -> float | None:
        """Deliver `name`'s due rows in id order until one fails or none is left. Returns the
        seconds until the head is due again, or None when nothing is pending."""
        lane = self.lanes[name]
        if lane.dest is None:
            return None
        while not self._stop.is_set():
            rows = self.db.pending_alerts(limit=1, destination=name)
            if not rows:
                return None
            head = rows[0]
            t = time.time() if now is None else now
            if head["next_attempt"] > t:
                return head["next_attempt"] - t
            result = self._attempt(lane, head)
            if result.outcome == "retry":
                wait = backoff(head["attempts"] + 1)
                if result.retry_after is not None:
                    wait = min(max(wait, result.retry_after), RETRY_AFTER_CAP_S)
                self.db.mark_alert(head["id"], "failed", result.error, next_attempt=time.time() + wait)
                lane.counts.failed += 1
                log.warning("alert %s to %s failed (attempt %d): %s; next try in %.1fs", head["id"], name,
                            head["attempts"] + 1, result.error, wait)
                return wait
            if result.outcome == "rejected":
                self.db.mark_alert(head["id"], "rejected", result.error)
                lane.counts.rejected += 1
                log.error("alert %s to %s rejected: %s", head["id"], name, result.error)
            else:
                self.db.mark_alert(head["id"], "delivered")
                lane.counts.delivered += 1
                log.info("alert %s delivered to %s: incident %s %s", head["id"], name, head["incident_id"],
                         head["event"])
        return None

    def _attempt(self, lane: Lane, row: dict) -> Result:
        try:
            return lane.dest.send(row["payload"])
        except Exception as exc:      # noqa: BLE001 -- a bug in a destination: kept as a retry, scrubbed
            return Result("retry", None, lane.dest.scrub(f"internal error: {type(exc).__name__}: {exc}"))

    # -- Alertmanager's lease --------------------------------------------------------------------

    def refresh(self, name: str, now: float | None = None) -> int:
        """Push every open incident this Alertmanager destination was told about again, with a
        fresh endsAt (best effort, not through the outbox). Returns how many were accepted."""
        lane = self.lanes[name]
        if lane.dest is None or lane.type != "alertmanager":
            return 0
        now = time.time() if now is None else now
        lane.last_refresh = now
        active = self.db.incidents(state="open") + self.db.incidents(state="acknowledged")
        history = [r for r in self.db.alert_history([i["id"] for i in active]) if r["destination"] == name]
        told = {r["incident_id"] for r in history if r["delivered_at"] is not None and r["event"] in pipeline.KNOWN}
        pending = {r["incident_id"] for r in history if r["delivered_at"] is None and r["rejected_at"] is None}
        ok = 0
        silences = self.db.silences(active_at=now)
        for inc in active:
            if inc["id"] not in told or inc["id"] in pending or self._stop.is_set():
                continue                      # not told yet, or the outbox is about to tell it
            fs = self.db.incident_findings(inc["id"])
            if pipeline.muted(inc, fs, silences):
                continue
            last = max((r for r in history if r["incident_id"] == inc["id"]), key=lambda r: r["id"])
            result = lane.dest.send(message.build(inc, fs, last["event"], self.cf, key=last["dedup_key"]), now)
            ok += result.delivered
            if not result.delivered:
                log.info("alertmanager refresh of incident %s to %s failed: %s", inc["id"], name, result.error)
        return ok

    # -- threads ----------------------------------------------------------------------------------

    def start(self, wait_for: Callable[[], bool] | None = None) -> None:
        """The decide loop and one delivery thread per enabled destination, as daemon threads.
        `wait_for()` (optional) is polled first: nothing runs until it is true (the scrape
        schedule runs in this process), and nothing at all after SCHEDULER_WAIT without it."""
        with self._lock:
            if self._started or self._stop.is_set():
                return
            self._started = True
        t = threading.Thread(target=self._main, args=(wait_for,), name="chatops-alerts", daemon=True)
        self._threads.append(t)
        t.start()

    def _main(self, wait_for) -> None:
        deadline = time.monotonic() + SCHEDULER_WAIT
        while wait_for is not None and not wait_for():
            if self._stop.wait(0.2) or time.monotonic() > deadline:
                log.info("alerting not started: the scrape schedule is not running here")
                return
        enabled = [lane for lane in self.lanes.values() if lane.dest is not None]
        if not enabled:
            return
        for lane in enabled:
            lane.thread = threading.Thread(target=self._lane_loop, args=(lane,), name=f"chatops-alerts-{lane.name}",
                                           daemon=True)
            self._threads.append(lane.thread)
            lane.thread.start()
        log.info("alerting: delivering to %s", ", ".join(f"{lane.name} ({lane.type})" for lane in enabled))
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:
                log.exception("alerting: deciding notifications failed")
            self._stop.wait(self.tick_s)

    def _lane_loop(self, lane: Lane) -> None:
        from controlplane.alerting.alertmanager import REFRESH_S
        while not self._stop.is_set():
            lane.wake.clear()
            try:
                wait = self.deliver(lane.name)
                if lane.type == "alertmanager" and time.time() - lane.last_refresh >= REFRESH_S:
                    self.refresh(lane.name)
            except Exception as exc:  # noqa: BLE001 -- the lane outlives one bad round (a locked database)
                log.error("alerting: delivery to %s paused for a second by an internal error: %s", lane.name,
                          lane.dest.scrub(f"{type(exc).__name__}: {exc}"))
                wait = 1.0
            lane.wake.wait(1.0 if wait is None else min(max(wait, 0.01), 1.0))

    def stop(self, timeout: float = 5.0) -> None:
        """End every thread (idempotent). A request in flight ends by its own timeout; its row
        stays pending and is delivered after the next start."""
        self._stop.set()
        for lane in self.lanes.values():
            lane.wake.set()
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(timeout)

    # -- read by /metrics -------------------------------------------------------------------------

    def status(self) -> list[dict[str, Any]]:
        backlog = self.db.alert_backlog()
        out = []
        for lane in self.lanes.values():
            b = backlog.get(lane.name, {})
            out.append({"name": lane.name, "type": lane.type, "enabled": lane.dest is not None,
                        "counts": lane.counts, "pending": b.get("pending", 0), "oldest": b.get("oldest")})
        return out
