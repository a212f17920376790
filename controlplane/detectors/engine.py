"""Runs every detector over the recent window, keeps findings open or closes them, and hands the
open ones to the incident correlator.

The detectors are those of the registry (controlplane/detectors/__init__.py): every module of
this package with `KIND` and `detect(window, cf)`, plus any added with `detectors.register`;
adding one is adding a module. The engine is the only stateful part: a subject opens a finding
when its detector reports it `firing` (the condition held for `thresholds.hold`), stays open while
the detector still reports it (firing or only sustained, the hysteresis band), and is resolved
when the detector stops reporting it. Open findings live in SQLite, so a restarted control plane
carries on with them rather than opening them again.

Findings from outside (an Alertmanager's alerts, controlplane/alerting/receiver.py) come in through
`ingest`: their kind's module says `EXTERNAL = True`, so `run` neither runs it nor resolves its
findings; the sender says when they resolve. `run` and `ingest` hold one lock, so a receiver's
request and a scrape never write findings or correlate incidents at the same time.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from cluster.durations import seconds
from collectors.base import Observation
from controlplane import detectors, incidents
from controlplane.detectors.base import Finding, Window

log = logging.getLogger(__name__)

WINDOW_MIN_S = 300.0      # the window a detector sees: at least 5 minutes, and 3 holds


def discover() -> dict[str, Callable[[Window, Any], list[Finding]]]:
    """KIND -> detect, for every registered detector that detects (not an EXTERNAL kind), sorted
    by kind."""
    return {kind: d.detect for kind, d in detectors.registered().items() if not external(d)}


def external(d) -> bool:
    """A kind whose findings come from outside (its module says EXTERNAL = True)."""
    return bool(getattr(d.module, "EXTERNAL", False))


@dataclass
class RunResult:
    findings: list[Finding] = field(default_factory=list)
    opened: list[dict] = field(default_factory=list)
    resolved: list[dict] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)     # detector kind -> error
    incidents: list[dict] = field(default_factory=list)


@dataclass
class IngestResult(RunResult):
    updated: list[dict] = field(default_factory=list)     # findings already open, refreshed
    unknown: int = 0                                       # resolved ones that were not open


class Engine:
    def __init__(self, cf, store, db, interval_s: float):
        self.cf, self.store, self.db, self.interval_s = cf, store, db, interval_s
        self.detectors = discover()
        self.window_s = max(WINDOW_MIN_S, 3 * seconds(cf.controlplane.thresholds.hold))
        # Called with each RunResult once it is written (the automatic remediation policy); the
        # engine knows nothing of what they do.
        self.listeners: list[Callable[[RunResult], None]] = []
        # One writer of findings and incidents at a time: a detection run or an ingest.
        self.lock = threading.RLock()

    def window(self, now: float | None = None) -> Window:
        return Window.from_store(self.store, self.window_s, self.interval_s, now)

    def evaluate(self, window: Window) -> tuple[list[Finding], dict[str, str]]:
        """Every detector over one window; a detector that raises costs only its own findings."""
        out: list[Finding] = []
        errors: dict[str, str] = {}
        for kind, detect in self.detectors.items():
            try:
                found = detect(window, self.cf)
            except Exception as exc:        # one broken detector must not blind the others
                log.exception("detector %s failed", kind)
                errors[kind] = f"{type(exc).__name__}: {exc}"
                continue
            out.extend(found)
        return out, errors

    def run(self, now: float | None = None) -> RunResult:
        with self.lock:
            return self._run(now)

    def _run(self, now: float | None) -> RunResult:
        now = time.time() if now is None else now
        window = self.window(now)
        findings, errors = self.evaluate(window)
        result = RunResult(findings=findings, errors=errors)
        reported = {(f.kind, f.subject): f for f in findings}
        open_rows = {(r["kind"], r["subject"]): r for r in self.db.findings(open_only=True)}
        for key, f in reported.items():
            if key not in open_rows and not f.firing:
                continue                       # only the relaxed condition: never opens one
            row = self.db.upsert_finding(
                f.kind, f.subject, severity=f.severity, evidence=f.evidence, runbook=f.runbook,
                remediation=f.remediation, state="open", seen=now, title=f.title, about=f.about,
                peak=f.peak)
            if key not in open_rows:
                result.opened.append(row)
        for key, row in open_rows.items():
            # A kind whose detector failed this time keeps its findings as they were.
            if key not in reported and row["kind"] not in errors and row["kind"] in self.detectors:
                result.resolved.append(self.db.upsert_finding(row["kind"], row["subject"], state="resolved",
                                                              seen=now))
        return self._correlate(result, now)

    def _correlate(self, result: RunResult, now: float) -> RunResult:
        result.incidents = incidents.update(self.db, self.cf, self.db.findings(open_only=True),
                                            result.resolved, now)
        for row in result.opened:
            log.warning("finding opened: %s %s: %s", row["kind"], row["subject"], row["title"])
        for row in result.resolved:
            log.info("finding resolved: %s %s", row["kind"], row["subject"])
        for listener in self.listeners:
            listener(result)
        return result

    def ingest(self, firing: list[Finding], resolved: list[tuple[str, str]],
               now: float | None = None) -> IngestResult:
        """Findings reported from outside (already validated): open or refresh each of `firing`
        (no hold: the sender has its own), resolve the open ones among `resolved` (kind, subject),
        then correlate incidents and tell the listeners, as a run does, under the same lock."""
        now = time.time() if now is None else now
        with self.lock:
            result = IngestResult()
            open_keys = {(r["kind"], r["subject"]) for r in self.db.findings(open_only=True)}
            for f in firing:
                row = self.db.upsert_finding(
                    f.kind, f.subject, severity=f.severity, evidence=f.evidence, runbook=f.runbook,
                    remediation=f.remediation, state="open", seen=now, title=f.title, about=f.about,
                    peak=f.peak)
                result.findings.append(f)
                (result.updated if (f.kind, f.subject) in open_keys else result.opened).append(row)
                open_keys.add((f.kind, f.subject))
            for kind, subject in resolved:
                row = self.db.upsert_finding(kind, subject, state="resolved", seen=now)
                if row is None:
                    result.unknown += 1          # not open: never seen, or resolved already
                else:
                    result.resolved.append(row)
                    open_keys.discard((kind, subject))
            self._correlate(result, now)
            return result

    def scrape(self) -> Observation:
        """The engine as a scheduler source (`detect:all`), so its health shows beside the others."""
        at, started = time.time(), time.perf_counter()
        result = self.run(at)
        open_now = self.db.findings(open_only=True)
        obs = Observation("detect", "all", at, True, time.perf_counter() - started,
                          {"open": len(open_now), "opened": len(result.opened),
                           "resolved": len(result.resolved), "detectors": list(self.detectors)},
                          None, {f"detector {k}": v for k, v in result.errors.items()})
        figures = {"open_findings": float(len(open_now)), "detector_errors": float(len(result.errors))}
        for kind in self.detectors:
            figures[f"{kind}:open"] = float(sum(1 for r in open_now if r["kind"] == kind))
        self.store.put(obs, figures, {"reported": [f.as_dict() for f in result.findings]})
        return obs
