"""Running a scenario: inject its faults on their timeline, watch the control plane's API once a
second, wait (for the findings, the named root causes and, with a fix mode, the fixes and 30 s of
traffic after them), and undo everything in a `finally` -- Ctrl-C included.

`execute()` returns the *record*: what was injected and when, and what the API said (findings,
incidents with their timelines, plans) plus the load generator's report. `analyse(record)` is a
pure function of it: per-fault detect_s / root_cause_s / fixed_s, completeness_after,
false_findings, the verdict against the targets, and one merged timeline of events. The report
and the benchmark read only the record, so a recorded run renders the same page as a live one.
"""

from __future__ import annotations

import signal
import time
from typing import Any, Callable

from controlplane.scenarios.auto import AutoFix
from controlplane.scenarios.base import Env, Expect, Scenario, ScenarioError
from controlplane.scenarios.hot_room import HotRoom
from controlplane.scenarios.traffic import Traffic

TARGETS = {"detect_s": 15.0, "root_cause_s": 30.0, "fixed_s": 60.0, "completeness_after": 1.0,
           "false_findings": 0}
AFTER_S = 30.0            # completeness_after: the load generator's deliveries this long after the fix
SETTLE_S = 1.0            # a series point settles messages echoed about this long before it
SKEW_S = 2.0              # a finding this much before a fault's start still counts (scrape vs wall clock)
FIX_MODES = ("auto", "manual", "none")
WITNESS = {"clients": 20, "senders": 4, "rate": 20.0}   # traffic when no fault brings its own


class Interrupted(Exception):
    pass


def _interrupt(signum, frame):
    raise Interrupted(signal.Signals(signum).name)


class Runner:
    def __init__(self, scenario: Scenario, env: Env, fix: str = "none", timeout: float | None = None,
                 on_update: Callable[[dict], None] | None = None, linger: float = 5.0):
        if fix not in FIX_MODES:
            raise ScenarioError(f"--fix must be one of {', '.join(FIX_MODES)}, not {fix!r}")
        self.scenario, self.env, self.fix, self.linger = scenario, env, fix, linger
        self.timeout = timeout if timeout is not None else (900.0 if fix == "manual" else 240.0)
        self.on_update = on_update or (lambda record: None)
        self.witness: Traffic | None = None
        self.record: dict[str, Any] = {}

    # -- the run --

    def execute(self) -> dict:
        env, sc = self.env, self.scenario
        faults = sc.faults
        rec = self.record = {
            "scenario": sc.name, "summary": sc.summary, "fix": self.fix, "talk_timeline": sc.talk_timeline,
            "targets": TARGETS, "faults": [], "findings": [], "incidents": [], "plans": [], "undone": [],
            "notes": [], "loadgen": None, "error": None, "started": None, "ended": None,
            "cluster": {"config": str(env.config_path), "room": env.room},
        }
        auto = AutoFix(sorted({a for f in faults for a in f.fixes})) if self.fix == "auto" else None
        old_handlers = {}
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            try:
                old_handlers[sig] = signal.signal(sig, _interrupt)
            except ValueError:       # not the main thread: the caller handles its own signals
                pass
        try:
            if not env.api.healthy():
                raise ScenarioError(f"the control plane at {env.api.base} does not answer /healthz; start the "
                                    "cluster with `chatops up` (or `make run`) first")
            if any(f.fixes for f in faults) or self.fix != "none":
                env.api.need_token()
            if auto is not None:
                rec["notes"].append(auto.enable(env))
                env.say(rec["notes"][-1])
            elif self.fix == "none" and env.cf.remediation.auto:
                rec["notes"].append(f"remediation.auto is [{', '.join(env.cf.remediation.auto)}]: the control "
                                    "plane may fix things itself even with --fix none")
            rec["preexisting"] = [f["id"] for f in env.api.findings() if f["state"] == "open"]
            t0 = rec["started"] = time.time()
            if not any(isinstance(f, HotRoom) for f in faults):
                self.witness = Traffic(env.config_path, env.room, ramp=0, **WITNESS)
                self.witness.start()
                rec["notes"].append(f"witness traffic: {WITNESS['rate']:g} msgs/s in #{env.room}")
            pending = list(sc.steps)
            for _, f in sc.steps:
                rec["faults"].append({**f.describe(env), "offset_s": _, "began": None, "undone": None})
            deadline = time.monotonic() + self.timeout
            done_at = None
            while time.monotonic() < deadline:
                now = time.time()
                while pending and now - t0 >= pending[0][0]:
                    offset, f = pending.pop(0)
                    f.inject(env)
                    self._sync_faults()
                for f in faults:
                    if f.began and not f.undone:
                        f.tick(env)
                self._poll()
                result = analyse(rec, now=time.time())
                self.on_update(rec)
                if not pending and self._finished(result):
                    done_at = done_at or time.monotonic()
                    if time.monotonic() - done_at >= self.linger:
                        break
                time.sleep(1.0)
            else:
                rec["notes"].append(f"stopped after the --timeout of {self.timeout:.0f}s")
        except Interrupted as exc:
            rec["error"] = f"interrupted ({exc})"
        except ScenarioError as exc:
            rec["error"] = str(exc)
        except Exception as exc:     # noqa: BLE001 -- any failure must still undo; it is reported, not hidden
            rec["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            # A second Ctrl-C must not cut the undo short.
            for sig in old_handlers:
                signal.signal(sig, signal.SIG_IGN)
            try:
                self._undo_all(auto)
            finally:
                for sig, h in old_handlers.items():
                    signal.signal(sig, h)
        rec["ended"] = time.time()
        return rec

    def _sync_faults(self) -> None:
        for row, f in zip(self.record["faults"], self.scenario.faults):
            row.update(began=f.began, undone=f.undone, title=f.title)

    def _poll(self) -> None:
        rec, api = self.record, self.env.api
        t0 = rec["started"]
        try:
            findings = api.findings()
            incidents = api.incidents()
            plans = api.plans()
        except ScenarioError as exc:     # a restarting control plane: try again next second
            rec.setdefault("poll_errors", []).append(str(exc))
            return
        pre = set(rec.get("preexisting", []))
        rec["findings"] = [f for f in findings if (f["first_seen"] or 0) >= t0 - SKEW_S or
                           (f["id"] in pre) or (f.get("resolved_at") or 0) >= t0]
        rec["plans"] = [p for p in plans if (p.get("created") or 0) >= t0]
        details = {i["id"]: i for i in rec["incidents"]}
        for inc in incidents:
            if max(inc.get("updated") or 0, inc.get("opened") or 0) < t0:
                continue
            old = details.get(inc["id"])
            if old is None or old.get("updated") != inc.get("updated"):
                try:
                    details[inc["id"]] = api.incident(inc["id"])
                except ScenarioError:
                    pass
        rec["incidents"] = sorted(details.values(), key=lambda i: i["id"])

    def _finished(self, result: dict) -> bool:
        for fr in result["faults"]:
            if fr["detect_s"] is None or fr["root_cause_s"] is None:
                return False
            if self.fix != "none" and fr["fixable"] and fr["fixed_s"] is None:
                return False
        if self.fix != "none" and result["fixed_at"] is not None:
            return time.time() >= result["fixed_at"] + AFTER_S + SETTLE_S + 1
        return True

    def _undo_all(self, auto: AutoFix | None) -> None:
        rec, env = self.record, self.env
        for f in reversed(self.scenario.faults):
            try:
                lines = f.undo(env)
            except Exception as exc:     # noqa: BLE001 -- one failed undo must not skip the others
                lines = [f"{f.name}: undo FAILED: {type(exc).__name__}: {exc}"]
            rec["undone"] += [f"{f.name}: {x}" for x in lines]
            if isinstance(f, HotRoom) and f.traffic is not None:
                rec["loadgen"] = f.traffic.report
        if self.witness is not None:
            rec["loadgen"] = self.witness.stop()
            rec["undone"].append("witness traffic stopped")
        self._sync_faults()
        if auto is not None:
            try:
                rec["undone"] += auto.restore(env)
            except Exception as exc:     # noqa: BLE001
                rec["undone"].append(f"remediation.auto NOT restored: {type(exc).__name__}: {exc}")
        for line in rec["undone"]:
            env.say(f"undone: {line}")


# -- analysis (pure) --------------------------------------------------------------------------------

def _expects(row: dict) -> list[Expect]:
    out = []
    for text in row["expects"]:
        required = not text.endswith(" (consequence)")
        kind, _, subject = text.removesuffix(" (consequence)").partition(" ")
        out.append(Expect(kind, subject or "*", required))
    return out


def _attribute(record: dict) -> dict[int, tuple[int, bool]]:
    """finding id -> (index of the fault it belongs to, required?); a required match beats a
    consequence, and the latest fault that began before the finding beats earlier ones."""
    out: dict[int, tuple[int, bool]] = {}
    faults = record["faults"]
    for f in record["findings"]:
        best = None
        for i, row in enumerate(faults):
            if row.get("began") is None or (f["first_seen"] or 0) < row["began"] - SKEW_S:
                continue
            for e in _expects(row):
                if e.matches(f):
                    cand = (e.required, row["began"], i)
                    if best is None or cand > best:
                        best = cand
                    break
        if best is not None:
            out[f["id"]] = (best[2], best[0])
    return out


def _named_at(record: dict, row: dict) -> float | None:
    groups = [tuple(w.lower() for w in g) for g in row["cause_terms"]]
    best = None
    for inc in record["incidents"]:
        for e in inc.get("timeline") or []:
            if e.get("event") != "hypothesis" or (e.get("ts") or 0) < row["began"] - SKEW_S:
                continue
            # Only the root cause counts: a chain that merely passes through a host is not an explanation.
            text = (e.get("summary") or "").lower().rpartition("root cause:")[2]
            if all(any(w in text for w in g) for g in groups):
                best = e["ts"] if best is None else min(best, e["ts"])
    return best


def _series_window(series: list[dict], start: float, end: float) -> float | None:
    pts = [p for p in series if start + SETTLE_S < p["t"] <= end + SETTLE_S]
    expected = sum(p["expected"] for p in pts)
    return round(sum(p["delivered"] for p in pts) / expected, 6) if expected else None


def analyse(record: dict, now: float | None = None) -> dict:
    findings = {f["id"]: f for f in record["findings"]}
    owner = _attribute(record)
    pre = set(record.get("preexisting") or [])
    plans = record["plans"]
    fix = record["fix"]
    faults_out = []
    for i, row in enumerate(record["faults"]):
        began = row.get("began")
        mine = [findings[fid] for fid, (j, _) in owner.items() if j == i]
        required = [f for f in mine if owner[f["id"]][1]]
        exp_times = {}
        for e in _expects(row):
            if e.required:
                hit = [f for f in required if e.matches(f)]
                exp_times[str(e)] = round(min(f["first_seen"] for f in hit) - began, 1) if hit and began else None
        detect = min((v for v in exp_times.values() if v is not None), default=None)
        named = _named_at(record, row) if began else None
        fixable = bool(row.get("fixes"))
        my_plans = [p for p in plans if set(p.get("finding_ids") or []) & {f["id"] for f in mine}
                    or (p.get("action") in row.get("fixes", []) and p.get("state") == "applied")]
        fixed_s, fixed_at, by_own = None, None, False
        if fixable and required and all(f["state"] == "resolved" for f in required) and \
                all(v is not None for v in exp_times.values()):
            fixed_at = max(f["resolved_at"] for f in required)
            fixed_s = round(fixed_at - began, 1)
            applied = [p for p in my_plans if p.get("state") == "applied" and p.get("applied_at")]
            if fix == "auto":
                applied = [p for p in applied if p.get("created_by") == "auto"]
            by_own = bool(applied) and min(p["applied_at"] for p in applied) <= fixed_at
        faults_out.append({
            "name": row["name"], "title": row.get("title"), "began": began, "fixable": fixable,
            "detect_s": detect, "expect_s": exp_times,
            "root_cause_s": round(named - began, 1) if named is not None else None,
            "fixed_s": fixed_s, "fixed_at": fixed_at, "fixed_by_own_plans": by_own,
            "findings": [f["id"] for f in mine], "plans": [p["id"] for p in my_plans],
        })
    false = [f for fid, f in findings.items() if fid not in owner and fid not in pre
             and (f["first_seen"] or 0) >= (record.get("started") or 0)]
    fixable = [f for f in faults_out if f["fixable"]]
    fixed_at = max((f["fixed_at"] for f in fixable), default=None) \
        if fixable and all(f["fixed_at"] is not None for f in fixable) else None
    series = (record.get("loadgen") or {}).get("series") or record.get("series") or []
    after = _series_window(series, fixed_at, fixed_at + AFTER_S) if fixed_at is not None and series else None
    started = record.get("started")
    result = {
        "scenario": record["scenario"], "fix": fix, "faults": faults_out, "fixed_at": fixed_at,
        # The slowest fix, each from its own fault's start (a later fault cannot be fixed before it began).
        "fixed_s": max((f["fixed_s"] for f in fixable), default=None) if fixed_at is not None else None,
        "fixed_at_s": round(fixed_at - started, 1) if fixed_at is not None and started else None,
        "completeness_after": after,
        "false_findings": len(false), "false_finding_titles": [f"{f['kind']} {f['subject']}: {f.get('title')}"
                                                               for f in false],
        "plans": [_plan_row(p, findings) for p in plans],
        "events": events(record, faults_out),
    }
    result["verdict"] = verdict(result)
    return result


def _plan_row(p: dict, findings: dict) -> dict:
    watched = [findings[i] for i in p.get("finding_ids") or [] if i in findings]
    resolved = [f.get("resolved_at") for f in watched if f.get("state") == "resolved"]
    return {"id": p["id"], "action": p.get("action"), "subject": p.get("subject"), "state": p.get("state"),
            "created_by": p.get("created_by"), "created": p.get("created"), "applied_at": p.get("applied_at"),
            "applied_by": p.get("applied_by"), "summary": p.get("summary"),
            "resolved_at": max(resolved) if resolved and len(resolved) == len(watched) else None}


def verdict(result: dict) -> dict:
    """Each target: its value, the target, and whether it is met (None: not judged in this mode)."""
    faults = result["faults"]

    def worst(key):
        vals = [f[key] for f in faults if key != "fixed_s" or f["fixable"]]
        return None if any(v is None for v in vals) else max(vals, default=None)
    judged_fix = result["fix"] != "none"
    rows = {
        "detect_s": (worst("detect_s"), TARGETS["detect_s"], "<="),
        "root_cause_s": (worst("root_cause_s"), TARGETS["root_cause_s"], "<="),
        "fixed_s": (worst("fixed_s") if judged_fix else None, TARGETS["fixed_s"], "<="),
        "completeness_after": (result["completeness_after"] if judged_fix else None,
                               TARGETS["completeness_after"], ">="),
        "false_findings": (result["false_findings"], TARGETS["false_findings"], "<="),
    }
    out = {}
    for key, (value, target, op) in rows.items():
        judged = judged_fix or key not in ("fixed_s", "completeness_after")
        met = None if not judged else (value is not None and (value <= target if op == "<=" else value >= target))
        out[key] = {"value": value, "target": target, "op": op, "met": met}
    if judged_fix:
        out["fixed_by_own_plans"] = {"value": all(f["fixed_by_own_plans"] for f in faults if f["fixable"]),
                                     "target": True, "op": "==", "met": all(f["fixed_by_own_plans"]
                                                                            for f in faults if f["fixable"])}
    out["met"] = all(v["met"] for v in out.values() if isinstance(v, dict) and v["met"] is not None)
    return out


def events(record: dict, faults_out: list[dict] | None = None) -> list[dict]:
    """Every moment of the run in time order: {t (seconds from the start), at, what, text, fault}."""
    t0 = record.get("started") or 0
    out = []

    def add(at, what, text, fault=None):
        if at:
            out.append({"t": round(at - t0, 1), "at": at, "what": what, "text": text, "fault": fault})
    for row in record["faults"]:
        add(row.get("began"), "fault", f"{row['name']} began: {row.get('title')}", row["name"])
        add(row.get("undone"), "undo", f"{row['name']} undone", row["name"])
    owner = _attribute(record)
    names = [r["name"] for r in record["faults"]]
    for f in record["findings"]:
        fault = names[owner[f["id"]][0]] if f["id"] in owner else None
        tag = "" if fault else " [matches no injected fault]"
        add(f.get("first_seen"), "finding", f"finding opened: {f['kind']} {f['subject']}: {f.get('title')}{tag}",
            fault)
        if f.get("state") == "resolved":
            add(f.get("resolved_at"), "resolved", f"finding resolved: {f['kind']} {f['subject']}", fault)
    seen = set()
    for inc in record["incidents"]:
        for e in inc.get("timeline") or []:
            if e.get("event") == "hypothesis" and (e.get("ts") or 0) >= t0 - SKEW_S:
                key = (inc["id"], e.get("summary"))
                if key not in seen:
                    seen.add(key)
                    add(e["ts"], "root_cause", f"incident {inc['id']}: {e.get('summary')}")
    for row in record["faults"]:
        if row.get("began"):
            at = _named_at(record, row)
            add(at, "named", f"root cause named for {row['name']}", row["name"])
    for p in record["plans"]:
        add(p.get("created"), "plan", f"plan {p['id']} {p.get('action')} {p.get('subject')} by "
                                      f"{p.get('created_by')}: {p.get('summary')}")
        if p.get("applied_at"):
            add(p["applied_at"], "applied", f"plan {p['id']} {p.get('state')} by {p.get('applied_by')}")
    out.sort(key=lambda e: e["at"])
    return out
