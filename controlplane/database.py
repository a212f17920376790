"""What the control plane must not lose on a restart, in SQLite: the actions audit, findings,
incidents and the alert outbox. The file is `<run dir>/controlplane.sqlite3`, mode 0600.

Why one connection behind a lock rather than one per thread: the control plane calls in from
waitress's request threads, APScheduler's job threads and, briefly, CLI commands. Writes are few
and tiny (an audit row, a finding touched once per scrape), and SQLite serialises writers anyway,
so a lock costs nothing measurable. A connection per thread would leave a connection open for
every pool thread that ever touched the database, none of which `close()` could reach; one
connection makes `close()` final and deterministic. Other *processes* (a `chatops proxy reload`
while the control plane runs) are kept apart by SQLite itself: WAL lets readers go on during a
write, and `busy_timeout` makes a second writer wait instead of failing with "database is locked".

Why `synchronous=FULL`: an audit row or an alert must survive a power cut as well as a restart,
and these commits are rare enough that an fsync each is cheap.

Schema changes go in `_MIGRATIONS`, one entry per version, applied in order inside one write
transaction; `PRAGMA user_version` records how far a file has come. A file from a newer chatops
is refused rather than written with the wrong shape.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from cluster.rundir import RunDir

BUSY_TIMEOUT_MS = 10_000

FINDING_STATES = ("open", "resolved")
SEVERITIES = ("info", "warning", "critical")
INCIDENT_STATES = ("open", "acknowledged", "resolved")
ALERT_RESULTS = ("delivered", "failed", "rejected")
PLAN_STATES = ("planned", "applying", "applied", "failed")

_MIGRATIONS: list[str] = [
    # 1: the first schema
    """
    CREATE TABLE audit (
        id      INTEGER PRIMARY KEY AUTOINCREMENT,
        ts      REAL NOT NULL,
        actor   TEXT NOT NULL,
        action  TEXT NOT NULL,
        target  TEXT NOT NULL,
        result  TEXT NOT NULL,
        detail  TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX audit_ts ON audit (ts);

    CREATE TABLE incidents (
        id              INTEGER PRIMARY KEY AUTOINCREMENT,
        title           TEXT NOT NULL,
        state           TEXT NOT NULL CHECK (state IN ('open', 'acknowledged', 'resolved')),
        opened          REAL NOT NULL,
        updated         REAL NOT NULL,
        acknowledged_by TEXT,
        root_cause      TEXT NOT NULL DEFAULT 'null',
        timeline        TEXT NOT NULL DEFAULT '[]'
    );
    CREATE INDEX incidents_state ON incidents (state);

    CREATE TABLE findings (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        kind        TEXT NOT NULL,
        subject     TEXT NOT NULL,
        severity    TEXT NOT NULL CHECK (severity IN ('info', 'warning', 'critical')),
        state       TEXT NOT NULL CHECK (state IN ('open', 'resolved')),
        first_seen  REAL NOT NULL,
        last_seen   REAL NOT NULL,
        evidence    TEXT NOT NULL DEFAULT '{}',
        runbook     TEXT,
        remediation TEXT NOT NULL DEFAULT 'null',
        incident_id INTEGER REFERENCES incidents (id)
    );
    -- at most one open finding per (kind, subject), even with several writers
    CREATE UNIQUE INDEX findings_one_open ON findings (kind, subject) WHERE state = 'open';

    CREATE TABLE alert_outbox (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        created      REAL NOT NULL,
        destination  TEXT NOT NULL,
        payload      TEXT NOT NULL,
        attempts     INTEGER NOT NULL DEFAULT 0,
        last_error   TEXT,
        delivered_at REAL
    );
    CREATE INDEX alert_outbox_pending ON alert_outbox (delivered_at, id);

    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    """,
    # 2: detection: a finding's one-line title, what it is about (for correlation), when it cleared
    """
    ALTER TABLE findings ADD COLUMN title TEXT NOT NULL DEFAULT '';
    ALTER TABLE findings ADD COLUMN about TEXT NOT NULL DEFAULT '{}';
    ALTER TABLE findings ADD COLUMN resolved_at REAL;
    CREATE INDEX findings_incident ON findings (incident_id);
    """,
    # 3: incidents: the worst severity of their findings, and when they were resolved
    """
    ALTER TABLE incidents ADD COLUMN severity TEXT NOT NULL DEFAULT 'warning';
    ALTER TABLE incidents ADD COLUMN resolved_at REAL;
    """,
    # 4: remediation plans: reviewable artifacts, applied at most once, with their verification
    """
    CREATE TABLE plans (
        id           TEXT PRIMARY KEY,
        created      REAL NOT NULL,
        created_by   TEXT NOT NULL,
        action       TEXT NOT NULL,
        subject      TEXT NOT NULL,
        state        TEXT NOT NULL CHECK (state IN ('planned', 'applying', 'applied', 'failed')),
        body         TEXT NOT NULL,
        incident_id  INTEGER REFERENCES incidents (id),
        applied_at   REAL,
        applied_by   TEXT,
        result       TEXT NOT NULL DEFAULT 'null',
        verification TEXT NOT NULL DEFAULT 'null'
    );
    CREATE INDEX plans_created ON plans (created);
    CREATE INDEX plans_subject ON plans (subject, applied_at);
    """,
    # 5: alerting: outbox rows know their incident, event and dedup key, when to try next, and a
    # refusal that no retry can fix; silences
    """
    ALTER TABLE alert_outbox ADD COLUMN incident_id INTEGER;
    ALTER TABLE alert_outbox ADD COLUMN event TEXT NOT NULL DEFAULT '';
    ALTER TABLE alert_outbox ADD COLUMN dedup_key TEXT;
    ALTER TABLE alert_outbox ADD COLUMN next_attempt REAL NOT NULL DEFAULT 0;
    ALTER TABLE alert_outbox ADD COLUMN rejected_at REAL;
    CREATE UNIQUE INDEX alert_outbox_dedup ON alert_outbox (destination, dedup_key);
    CREATE INDEX alert_outbox_incident ON alert_outbox (incident_id, id);
    CREATE TABLE silences (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        created     REAL NOT NULL,
        created_by  TEXT NOT NULL,
        matchers    TEXT NOT NULL,
        starts_at   REAL NOT NULL,
        ends_at     REAL NOT NULL,
        comment     TEXT NOT NULL DEFAULT '',
        expired_by  TEXT
    );
    CREATE INDEX silences_ends ON silences (ends_at);
    """,
    # 6: a finding keeps the title of its worst figure (`peak`); the newest title beside it
    """
    ALTER TABLE findings ADD COLUMN peak REAL;
    ALTER TABLE findings ADD COLUMN live_title TEXT NOT NULL DEFAULT '';
    """,
]
SCHEMA_VERSION = len(_MIGRATIONS)


def _peak(value: Any) -> float | None:
    """A finding's peak as stored: a finite number, else None (a peak is a hint, never an error)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


class DatabaseError(Exception):
    pass


def _dumps(value: Any) -> str:
    return json.dumps(value, default=str, sort_keys=True)


def _iso(ts: float | None) -> str | None:
    return None if ts is None else time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(ts))


def _choice(value: str, valid: tuple[str, ...], what: str) -> str:
    if value not in valid:
        raise ValueError(f"{what} {value!r} is not one of: {', '.join(valid)}")
    return value


def _limit(limit: int | None) -> int:
    if limit is None:
        return -1  # SQLite: no limit
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit must be a positive integer or None, not {limit!r}")
    return limit


class Database:
    """The control plane's SQLite store. Safe to share between threads; `close()` is idempotent."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Create the file ourselves so it is 0600 from its first byte; SQLite gives its -wal and
        # -shm files the same mode.
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)
        try:
            self._conn.row_factory = sqlite3.Row
            self._conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            mode = self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise DatabaseError(f"{self.path}: SQLite refused WAL journal mode (got {mode})")
            self._conn.execute("PRAGMA synchronous = FULL")
            self._conn.execute("PRAGMA foreign_keys = ON")
            self._migrate()
        except BaseException:
            self.close()
            raise

    @classmethod
    def for_run(cls, run: RunDir) -> "Database":
        """The run directory's database; an old `audit.jsonl` there is imported on first open."""
        db = cls(run.database)
        try:
            if run.audit_log.exists():
                db.import_audit_jsonl(run.audit_log)
        except BaseException:
            db.close()
            raise
        return db

    # -- plumbing --

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> "Database":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Database({str(self.path)!r})"

    def _live(self) -> sqlite3.Connection:
        if self._conn is None:
            raise DatabaseError(f"{self.path}: the database is closed")
        return self._conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken at once (BEGIN IMMEDIATE) so it never fails half-way on a
        lock upgrade; rolled back on any error."""
        with self._lock:
            conn = self._live()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _read(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._live().execute(sql, args).fetchall()

    def _migrate(self) -> None:
        with self._write() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise DatabaseError(
                    f"{self.path} has schema version {version}, newer than this chatops knows "
                    f"({SCHEMA_VERSION}); use the newer chatops or another run directory")
            for number in range(version, SCHEMA_VERSION):
                for statement in _MIGRATIONS[number].split(";"):
                    if statement.strip():
                        conn.execute(statement)
            if version != SCHEMA_VERSION:
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def schema_version(self) -> int:
        return self._read("PRAGMA user_version")[0][0]

    # -- audit --

    @staticmethod
    def _audit_row(r: sqlite3.Row) -> dict:
        return {"id": r["id"], "ts": r["ts"], "time": _iso(r["ts"]), "actor": r["actor"],
                "action": r["action"], "target": r["target"], "result": r["result"],
                "detail": json.loads(r["detail"])}

    def add_audit(self, actor: str, action: str, target: str, result: str, **detail: Any) -> dict:
        """Record one action (who, what, on what, result). `detail` is a summary: never a secret."""
        for name, value in (("actor", actor), ("action", action), ("target", target), ("result", result)):
            if not isinstance(value, str) or not value:
                raise ValueError(f"audit {name} must be a non-empty string, not {value!r}")
        with self._write() as conn:
            return self._insert_audit(conn, time.time(), actor, action, target, result, detail)

    def _insert_audit(self, conn, ts, actor, action, target, result, detail) -> dict:
        cur = conn.execute(
            "INSERT INTO audit (ts, actor, action, target, result, detail) VALUES (?, ?, ?, ?, ?, ?)",
            (ts, actor, action, target, result, _dumps(detail)))
        return self._audit_row(conn.execute("SELECT * FROM audit WHERE id = ?", (cur.lastrowid,)).fetchone())

    def audit(self, limit: int | None = 100, since: float | None = None) -> list[dict]:
        """Audit records, newest first; `since` (epoch seconds) keeps those after it; limit=None: all."""
        where, args = "", ()
        if since is not None:
            if isinstance(since, bool) or not isinstance(since, (int, float)):
                raise ValueError(f"since must be epoch seconds, not {since!r}")
            where, args = "WHERE ts > ?", (float(since),)
        rows = self._read(f"SELECT * FROM audit {where} ORDER BY ts DESC, id DESC LIMIT ?",
                          (*args, _limit(limit)))
        return [self._audit_row(r) for r in rows]

    def import_audit_jsonl(self, path: str | os.PathLike) -> int:
        """Import the JSON-lines audit that chatops wrote before it had this database, once, then
        rename it `<name>.imported` (kept, not deleted). Lines that are not a JSON object are kept
        too, as `audit.unparsed` records holding the raw line. Returns how many records came in.

        Safe against a crash or a second process doing the same: the file's digest is remembered
        in the same transaction as its records, so a file already imported is only renamed."""
        path = Path(path)
        with self._write() as conn:
            try:
                data = path.read_bytes()
            except FileNotFoundError:  # another process got there first
                return 0
            key = f"imported:{path.name}:{hashlib.sha256(data).hexdigest()}"
            count = 0
            if conn.execute("SELECT 1 FROM meta WHERE key = ?", (key,)).fetchone() is None:
                fallback_ts = path.stat().st_mtime
                for number, raw in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
                    if not raw.strip():
                        continue
                    self._insert_audit(conn, *_legacy_record(raw, number, fallback_ts, path.name))
                    count += 1
                conn.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (key, _dumps(
                    {"records": count, "at": time.time()})))
        path.rename(path.with_name(path.name + ".imported"))
        return count

    # -- findings --

    @staticmethod
    def _finding_row(r: sqlite3.Row) -> dict:
        return {"id": r["id"], "kind": r["kind"], "subject": r["subject"], "severity": r["severity"],
                "state": r["state"], "first_seen": r["first_seen"], "last_seen": r["last_seen"],
                "evidence": json.loads(r["evidence"]), "runbook": r["runbook"],
                "remediation": json.loads(r["remediation"]), "incident_id": r["incident_id"],
                "title": r["title"], "about": json.loads(r["about"]), "resolved_at": r["resolved_at"],
                "peak": r["peak"], "live_title": r["live_title"] or r["title"]}

    def upsert_finding(self, kind: str, subject: str, *, severity: str = "warning",
                       evidence: Any = None, runbook: str | None = None, remediation: Any = None,
                       state: str = "open", incident_id: int | None = None,
                       seen: float | None = None, title: str | None = None,
                       about: dict | None = None, peak: float | None = None) -> dict | None:
        """Create or refresh the open finding for (kind, subject); return it.

        An open one is updated in place (last_seen, severity, evidence, runbook, remediation; the
        incident link only when one is given), otherwise a new one starts. state="resolved" closes
        the open one; with none open there is nothing to close and None is returned, so a detector
        may resolve every all-clear subject on each pass without writing anything. A later open for
        the same pair starts a new finding, with its own first_seen.

        `peak` is the title's headline figure (higher is worse): an update whose peak is below the
        stored one keeps the stored title and stores its own as `live_title` only. Without a peak,
        on either side, the newest title wins."""
        _choice(severity, SEVERITIES, "severity")
        _choice(state, FINDING_STATES, "finding state")
        for name, value in (("kind", kind), ("subject", subject)):
            if not isinstance(value, str) or not value:
                raise ValueError(f"finding {name} must be a non-empty string, not {value!r}")
        now = time.time() if seen is None else float(seen)
        with self._write() as conn:
            if incident_id is not None:
                self._require_incident(conn, incident_id)
            row = conn.execute("SELECT * FROM findings WHERE kind = ? AND subject = ? AND state = 'open'",
                               (kind, subject)).fetchone()
            if row is None and state == "resolved":
                return None
            if row is None:
                cur = conn.execute(
                    "INSERT INTO findings (kind, subject, severity, state, first_seen, last_seen, "
                    "evidence, runbook, remediation, incident_id, title, about, peak, live_title) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (kind, subject, severity, state, now, now, _dumps(evidence or {}), runbook,
                     _dumps(remediation), incident_id, title or "", _dumps(about or {}), _peak(peak), title or ""))
                fid = cur.lastrowid
            elif state == "resolved":
                # Keep what the finding showed while it was open: closing it changes only its state.
                fid = row["id"]
                conn.execute("UPDATE findings SET state = 'resolved', resolved_at = ?, "
                             "incident_id = COALESCE(?, incident_id) WHERE id = ?", (now, incident_id, fid))
            else:
                fid = row["id"]
                peak = _peak(peak)
                worse = peak is None or row["peak"] is None or peak >= row["peak"]
                conn.execute(
                    "UPDATE findings SET severity = ?, state = ?, last_seen = ?, evidence = ?, runbook = ?, "
                    "remediation = ?, incident_id = COALESCE(?, incident_id), title = COALESCE(?, title), "
                    "about = COALESCE(?, about), peak = ?, live_title = COALESCE(?, live_title) WHERE id = ?",
                    (severity, state, max(now, row["last_seen"]), _dumps(evidence or {}), runbook,
                     _dumps(remediation), incident_id, title if worse else None,
                     None if about is None else _dumps(about), peak if worse else row["peak"], title, fid))
            return self._finding_row(conn.execute("SELECT * FROM findings WHERE id = ?", (fid,)).fetchone())

    def findings(self, open_only: bool = False, limit: int | None = None, state: str | None = None) -> list[dict]:
        """Findings, most recently seen first; `state` ("open" or "resolved") keeps only those."""
        where, args = ("WHERE state = 'open'", ()) if open_only else ("", ())
        if state is not None:
            where, args = "WHERE state = ?", (_choice(state, FINDING_STATES, "finding state"),)
        rows = self._read(f"SELECT * FROM findings {where} ORDER BY last_seen DESC, id DESC LIMIT ?",
                          (*args, _limit(limit)))
        return [self._finding_row(r) for r in rows]

    def incident_findings(self, incident_ids: int | list[int]) -> list[dict]:
        """The findings of one incident (or of several), oldest first."""
        ids = [incident_ids] if isinstance(incident_ids, int) else list(incident_ids)
        if not ids:
            return []
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise ValueError(f"incident ids must be integers, not {ids!r}")
        out = []
        for start in range(0, len(ids), 500):      # SQLite's bound-parameter limit
            chunk = ids[start:start + 500]
            rows = self._read(f"SELECT * FROM findings WHERE incident_id IN ({', '.join('?' * len(chunk))}) "
                              "ORDER BY first_seen, id", tuple(chunk))
            out.extend(self._finding_row(r) for r in rows)
        return sorted(out, key=lambda f: (f["first_seen"], f["id"]))

    def finding(self, finding_id: int) -> dict:
        rows = self._read("SELECT * FROM findings WHERE id = ?", (finding_id,))
        if not rows:
            raise KeyError(f"no finding with id {finding_id!r}")
        return self._finding_row(rows[0])

    # -- incidents --

    @staticmethod
    def _incident_row(r: sqlite3.Row) -> dict:
        return {"id": r["id"], "title": r["title"], "state": r["state"], "opened": r["opened"],
                "updated": r["updated"], "acknowledged_by": r["acknowledged_by"],
                "root_cause": json.loads(r["root_cause"]), "timeline": json.loads(r["timeline"]),
                "severity": r["severity"], "resolved_at": r["resolved_at"]}

    @staticmethod
    def _require_incident(conn: sqlite3.Connection, incident_id: int) -> sqlite3.Row:
        row = None
        if isinstance(incident_id, int) and not isinstance(incident_id, bool):
            row = conn.execute("SELECT * FROM incidents WHERE id = ?", (incident_id,)).fetchone()
        if row is None:
            raise KeyError(f"no incident with id {incident_id!r}")
        return row

    def add_incident(self, title: str, *, root_cause: Any = None, timeline: list | None = None,
                     actor: str | None = None, severity: str = "warning", at: float | None = None) -> dict:
        """Open an incident. The timeline starts with its opening (and any entries given).
        `at`: when it opened (default now), e.g. its first finding's first_seen."""
        if not isinstance(title, str) or not title.strip():
            raise ValueError(f"incident title must be a non-empty string, not {title!r}")
        _choice(severity, SEVERITIES, "severity")
        now = time.time() if at is None else float(at)
        entries = [{"ts": now, "event": "opened", "state": "open", "actor": actor}, *(timeline or [])]
        with self._write() as conn:
            cur = conn.execute(
                "INSERT INTO incidents (title, state, opened, updated, root_cause, timeline, severity) "
                "VALUES (?, 'open', ?, ?, ?, ?, ?)",
                (title, now, now, _dumps(root_cause), _dumps(entries), severity))
            return self._incident_row(self._require_incident(conn, cur.lastrowid))

    def update_incident(self, incident_id: int, *, title: str | None = None, root_cause: Any = None,
                        severity: str | None = None, timeline: list | None = None,
                        at: float | None = None) -> dict:
        """Refresh an incident's title, root-cause hypothesis or severity (those given) and append
        `timeline` entries; its state is set_incident_state's business."""
        if title is not None and (not isinstance(title, str) or not title.strip()):
            raise ValueError(f"incident title must be a non-empty string, not {title!r}")
        if severity is not None:
            _choice(severity, SEVERITIES, "severity")
        now = time.time() if at is None else float(at)
        with self._write() as conn:
            row = self._require_incident(conn, incident_id)
            entries = json.loads(row["timeline"]) + list(timeline or [])
            conn.execute(
                "UPDATE incidents SET title = ?, root_cause = ?, severity = ?, timeline = ?, updated = ? "
                "WHERE id = ?",
                (title if title is not None else row["title"],
                 _dumps(root_cause) if root_cause is not None else row["root_cause"],
                 severity or row["severity"], _dumps(entries), max(now, row["updated"]), incident_id))
            return self._incident_row(self._require_incident(conn, incident_id))

    def set_incident_state(self, incident_id: int, state: str, actor: str, note: str | None = None,
                           at: float | None = None) -> dict:
        """Move an incident to `state`, add it to its timeline and write an audit record, in one
        transaction."""
        _choice(state, INCIDENT_STATES, "incident state")
        if not isinstance(actor, str) or not actor:
            raise ValueError(f"actor must be a non-empty string, not {actor!r}")
        now = time.time() if at is None else float(at)
        with self._write() as conn:
            row = self._require_incident(conn, incident_id)
            timeline = json.loads(row["timeline"])
            entry = {"ts": now, "event": state, "state": state, "actor": actor}
            if note:
                entry["note"] = note
            timeline.append(entry)
            acknowledged_by = actor if state == "acknowledged" else row["acknowledged_by"]
            resolved_at = now if state == "resolved" else None
            conn.execute("UPDATE incidents SET state = ?, updated = ?, acknowledged_by = ?, timeline = ?, "
                         "resolved_at = ? WHERE id = ?",
                         (state, now, acknowledged_by, _dumps(timeline), resolved_at, incident_id))
            detail = {"from": row["state"], "to": state, **({"note": note} if note else {})}
            self._insert_audit(conn, now, actor, f"incident.{state}", f"incident/{incident_id}", "ok", detail)
            return self._incident_row(self._require_incident(conn, incident_id))

    def incidents(self, state: str | None = None, limit: int | None = None) -> list[dict]:
        """Incidents, most recently opened first; `state` keeps only those in it."""
        where, args = "", ()
        if state is not None:
            where, args = "WHERE state = ?", (_choice(state, INCIDENT_STATES, "incident state"),)
        rows = self._read(f"SELECT * FROM incidents {where} ORDER BY opened DESC, id DESC LIMIT ?",
                          (*args, _limit(limit)))
        return [self._incident_row(r) for r in rows]

    def incident(self, incident_id: int) -> dict:
        with self._lock:
            return self._incident_row(self._require_incident(self._live(), incident_id))

    # -- remediation plans --

    @staticmethod
    def _plan_row(r: sqlite3.Row) -> dict:
        return {"id": r["id"], "created": r["created"], "time": _iso(r["created"]), "created_by": r["created_by"],
                "action": r["action"], "subject": r["subject"], "state": r["state"],
                "incident_id": r["incident_id"], "applied_at": r["applied_at"], "applied_by": r["applied_by"],
                **json.loads(r["body"]), "result": json.loads(r["result"]),
                "verification": json.loads(r["verification"])}

    def add_plan(self, plan_id: str, action: str, subject: str, created_by: str, body: dict,
                 incident_id: int | None = None, created: float | None = None) -> dict:
        with self._write() as conn:
            conn.execute(
                "INSERT INTO plans (id, created, created_by, action, subject, state, body, incident_id) "
                "VALUES (?, ?, ?, ?, ?, 'planned', ?, ?)",
                (plan_id, time.time() if created is None else created, created_by, action, subject,
                 _dumps(body), incident_id))
        return self.plan(plan_id)

    def plan(self, plan_id: str) -> dict:
        rows = self._read("SELECT * FROM plans WHERE id = ?", (plan_id,))
        if not rows:
            raise KeyError(plan_id)
        return self._plan_row(rows[0])

    def plans(self, limit: int | None = 100, subject: str | None = None) -> list[dict]:
        where, args = ("WHERE subject = ?", (subject,)) if subject else ("", ())
        rows = self._read(f"SELECT * FROM plans {where} ORDER BY created DESC, rowid DESC LIMIT ?",
                          (*args, _limit(limit)))
        return [self._plan_row(r) for r in rows]

    def claim_plan(self, plan_id: str, actor: str, resume: bool = False) -> dict | None:
        """Move a plan from planned (or failed: a retry) to applying, atomically; None when it is
        applied or being applied already, so two applies of one plan never both run. `resume`
        also takes a plan left `applying` by an apply that died: only for a caller that holds
        the plan's locks, which that apply would still hold if it were alive."""
        states = ("planned", "failed", "applying") if resume else ("planned", "failed")
        with self._write() as conn:
            cur = conn.execute("UPDATE plans SET state = 'applying', applied_by = ? "
                               f"WHERE id = ? AND state IN ({', '.join('?' * len(states))})",
                               (actor, plan_id, *states))
            claimed = cur.rowcount == 1
        return self.plan(plan_id) if claimed else None

    def finish_plan(self, plan_id: str, state: str, result: Any, at: float | None = None) -> dict:
        _choice(state, PLAN_STATES, "plan state")
        with self._write() as conn:
            conn.execute("UPDATE plans SET state = ?, result = ?, applied_at = ? WHERE id = ?",
                         (state, _dumps(result), time.time() if at is None else at, plan_id))
        return self.plan(plan_id)

    def set_plan_verification(self, plan_id: str, verification: Any) -> dict:
        with self._write() as conn:
            conn.execute("UPDATE plans SET verification = ? WHERE id = ?", (_dumps(verification), plan_id))
        return self.plan(plan_id)

    def audit_for_plan(self, plan_id: str) -> list[dict]:
        """The audit records of one plan's applies, oldest first."""
        rows = self._read("SELECT * FROM audit WHERE json_extract(detail, '$.plan_id') = ? ORDER BY ts, id",
                          (plan_id,))
        return [self._audit_row(r) for r in rows]

    def last_applied(self, subject: str, actor: str | None = None) -> dict | None:
        """The newest plan applied on `subject` (by `actor`, when given)."""
        sql = "SELECT * FROM plans WHERE subject = ? AND state = 'applied'"
        args: tuple = (subject,)
        if actor is not None:
            sql += " AND applied_by = ?"
            args += (actor,)
        rows = self._read(sql + " ORDER BY applied_at DESC LIMIT 1", args)
        return self._plan_row(rows[0]) if rows else None

    # -- alert outbox --
    # A row is written before its notification is sent and marked delivered only once the
    # destination has accepted it (at-least-once). (destination, dedup_key) is unique, so writing
    # the same incident state twice -- after a restart, say -- keeps the first row.

    @staticmethod
    def _alert_row(r: sqlite3.Row) -> dict:
        if r["delivered_at"] is not None:
            status = "delivered"
        elif r["rejected_at"] is not None:
            status = "rejected"
        else:
            status = "retrying" if r["attempts"] else "pending"
        return {"id": r["id"], "created": r["created"], "destination": r["destination"],
                "incident_id": r["incident_id"], "event": r["event"], "dedup_key": r["dedup_key"],
                "payload": json.loads(r["payload"]), "attempts": r["attempts"], "status": status,
                "last_error": r["last_error"], "next_attempt": r["next_attempt"],
                "delivered_at": r["delivered_at"], "rejected_at": r["rejected_at"]}

    def enqueue_alert(self, destination: str, payload: Any, *, incident_id: int | None = None,
                      event: str = "", dedup_key: str | None = None, at: float | None = None) -> dict:
        """Put a notification in the outbox for `destination` (a destination's name, never its
        URL). With a dedup_key already there for that destination, the existing row is returned
        (its `new` is False) and nothing is written."""
        if not isinstance(destination, str) or not destination:
            raise ValueError(f"alert destination must be a non-empty string, not {destination!r}")
        if dedup_key is not None and (not isinstance(dedup_key, str) or not dedup_key):
            raise ValueError(f"dedup_key must be a non-empty string or None, not {dedup_key!r}")
        now = time.time() if at is None else float(at)
        with self._write() as conn:
            cur = conn.execute(
                "INSERT OR IGNORE INTO alert_outbox (created, destination, payload, incident_id, event, "
                "dedup_key, next_attempt) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (now, destination, _dumps(payload), incident_id, event, dedup_key, now))
            if cur.rowcount:
                row = conn.execute("SELECT * FROM alert_outbox WHERE id = ?", (cur.lastrowid,)).fetchone()
            else:
                row = conn.execute("SELECT * FROM alert_outbox WHERE destination = ? AND dedup_key = ?",
                                   (destination, dedup_key)).fetchone()
            return {**self._alert_row(row), "new": bool(cur.rowcount)}

    def pending_alerts(self, limit: int | None = 100, max_attempts: int | None = None,
                       destination: str | None = None) -> list[dict]:
        """Notifications neither delivered nor rejected, oldest first; with max_attempts, those
        tried fewer times than that; with destination, only its own."""
        where, args = "", ()
        if max_attempts is not None:
            where, args = "AND attempts < ?", (_limit(max_attempts),)
        if destination is not None:
            where, args = where + " AND destination = ?", (*args, destination)
        rows = self._read(f"SELECT * FROM alert_outbox WHERE delivered_at IS NULL AND rejected_at IS NULL "
                          f"{where} ORDER BY id LIMIT ?", (*args, _limit(limit)))
        return [self._alert_row(r) for r in rows]

    def alerts(self, incident_id: int | None = None, limit: int | None = 100) -> list[dict]:
        """Outbox rows, oldest first: an incident's own, or the newest `limit` of all."""
        if incident_id is not None:
            rows = self._read("SELECT * FROM alert_outbox WHERE incident_id = ? ORDER BY id LIMIT ?",
                              (incident_id, _limit(limit)))
        else:
            rows = self._read("SELECT * FROM (SELECT * FROM alert_outbox ORDER BY id DESC LIMIT ?) "
                              "ORDER BY id", (_limit(limit),))
        return [self._alert_row(r) for r in rows]

    def alert_history(self, incident_ids: list[int]) -> list[dict]:
        """The outbox rows of these incidents without their payloads, oldest first: what the
        notifier has decided already (id, created, destination, incident_id, event, dedup_key,
        status, and the severity and state the payload was written with)."""
        ids = [i for i in incident_ids if isinstance(i, int) and not isinstance(i, bool)]
        out = []
        for start in range(0, len(ids), 500):      # SQLite's bound-parameter limit
            chunk = ids[start:start + 500]
            rows = self._read(
                "SELECT id, created, destination, incident_id, event, dedup_key, delivered_at, rejected_at, "
                "attempts, json_extract(payload, '$.severity') AS severity, "
                "json_extract(payload, '$.state') AS state FROM alert_outbox "
                f"WHERE incident_id IN ({', '.join('?' * len(chunk))}) ORDER BY id", tuple(chunk))
            out.extend({k: r[k] for k in r.keys()} for r in rows)
        return sorted(out, key=lambda r: r["id"])

    def unsettled_incidents(self, destinations: list[str]) -> list[int]:
        """Incidents that one of `destinations` was told about and has not yet been told are
        resolved: the only resolved incidents the notifier still has to look at."""
        names = [d for d in destinations if isinstance(d, str)]
        if not names:
            return []
        marks = ", ".join("?" * len(names))
        rows = self._read(
            f"SELECT DISTINCT o.incident_id FROM alert_outbox o WHERE o.incident_id IS NOT NULL "
            f"AND o.destination IN ({marks}) AND NOT EXISTS (SELECT 1 FROM alert_outbox r "
            f"WHERE r.incident_id = o.incident_id AND r.destination = o.destination AND r.event = 'resolved') "
            f"ORDER BY o.incident_id", tuple(names))
        return [r["incident_id"] for r in rows]

    def alert_backlog(self) -> dict[str, dict]:
        """Per destination: notifications neither delivered nor rejected, and the oldest one's
        creation time."""
        rows = self._read("SELECT destination, COUNT(*) AS n, MIN(created) AS oldest FROM alert_outbox "
                          "WHERE delivered_at IS NULL AND rejected_at IS NULL GROUP BY destination", ())
        return {r["destination"]: {"pending": r["n"], "oldest": r["oldest"]} for r in rows}

    def mark_alert(self, alert_id: int, result: str, error: str | None = None,
                   next_attempt: float | None = None) -> dict:
        """Record one delivery attempt: "delivered" takes it out of the pending list; "failed"
        leaves it there with the error, to be tried again at `next_attempt`; "rejected" (the
        destination refused it in a way no retry fixes) takes it out with the error kept."""
        _choice(result, ALERT_RESULTS, "alert result")
        now = time.time()
        with self._write() as conn:
            row = None
            if isinstance(alert_id, int) and not isinstance(alert_id, bool):
                row = conn.execute("SELECT * FROM alert_outbox WHERE id = ?", (alert_id,)).fetchone()
            if row is None:
                raise KeyError(f"no alert with id {alert_id!r} in the outbox")
            if result == "delivered":
                conn.execute("UPDATE alert_outbox SET attempts = attempts + 1, delivered_at = ?, "
                             "last_error = NULL WHERE id = ?", (now, alert_id))
            elif result == "rejected":
                conn.execute("UPDATE alert_outbox SET attempts = attempts + 1, rejected_at = ?, "
                             "last_error = ? WHERE id = ?", (now, error or "rejected", alert_id))
            else:
                conn.execute("UPDATE alert_outbox SET attempts = attempts + 1, last_error = ?, "
                             "next_attempt = ? WHERE id = ?",
                             (error or "unknown error", now if next_attempt is None else float(next_attempt),
                              alert_id))
            return self._alert_row(conn.execute("SELECT * FROM alert_outbox WHERE id = ?",
                                                (alert_id,)).fetchone())

    # -- silences --

    @staticmethod
    def _silence_row(r: sqlite3.Row, now: float | None = None) -> dict:
        now = time.time() if now is None else now
        if r["expired_by"] is not None or r["ends_at"] <= now:
            state = "expired"
        else:
            state = "active" if r["starts_at"] <= now else "pending"
        return {"id": r["id"], "created": r["created"], "created_by": r["created_by"],
                "matchers": json.loads(r["matchers"]), "starts_at": r["starts_at"], "ends_at": r["ends_at"],
                "comment": r["comment"], "expired_by": r["expired_by"], "state": state}

    def add_silence(self, matchers: list[dict], ends_at: float, actor: str, comment: str = "",
                    starts_at: float | None = None) -> dict:
        """A silence (matchers: [{"name", "op", "value"}], all of which must match), audited in the
        same transaction. Callers validate the matchers (controlplane/alerting/silences.py)."""
        if not isinstance(matchers, list) or not matchers:
            raise ValueError("a silence needs at least one matcher")
        if not isinstance(actor, str) or not actor:
            raise ValueError(f"actor must be a non-empty string, not {actor!r}")
        now = time.time()
        starts = now if starts_at is None else float(starts_at)
        if not float(ends_at) > starts:
            raise ValueError("a silence must end after it starts")
        with self._write() as conn:
            cur = conn.execute("INSERT INTO silences (created, created_by, matchers, starts_at, ends_at, comment) "
                               "VALUES (?, ?, ?, ?, ?, ?)",
                               (now, actor, _dumps(matchers), starts, float(ends_at), comment or ""))
            row = conn.execute("SELECT * FROM silences WHERE id = ?", (cur.lastrowid,)).fetchone()
            self._insert_audit(conn, now, actor, "silence.add", f"silence/{cur.lastrowid}", "ok",
                               {"matchers": matchers, "ends_at": float(ends_at), "comment": comment or ""})
            return self._silence_row(row, now)

    def silences(self, active_at: float | None = None, limit: int | None = 100) -> list[dict]:
        """With active_at, the silences in force then; else every silence, newest first."""
        if active_at is not None:
            rows = self._read("SELECT * FROM silences WHERE expired_by IS NULL AND starts_at <= ? AND ends_at > ? "
                              "ORDER BY id", (float(active_at), float(active_at)))
            return [self._silence_row(r, float(active_at)) for r in rows]
        rows = self._read("SELECT * FROM silences ORDER BY id DESC LIMIT ?", (_limit(limit),))
        return [self._silence_row(r) for r in rows]

    def expire_silence(self, silence_id: int, actor: str) -> dict:
        """End a silence now, audited; expiring an expired one is refused with ValueError."""
        if not isinstance(actor, str) or not actor:
            raise ValueError(f"actor must be a non-empty string, not {actor!r}")
        now = time.time()
        with self._write() as conn:
            row = conn.execute("SELECT * FROM silences WHERE id = ?", (silence_id,)).fetchone()
            if row is None:
                raise KeyError(f"no silence with id {silence_id!r}")
            if self._silence_row(row, now)["state"] == "expired":
                raise ValueError(f"silence {silence_id} has already expired")
            conn.execute("UPDATE silences SET expired_by = ?, ends_at = MIN(ends_at, ?) WHERE id = ?",
                         (actor, now, silence_id))
            self._insert_audit(conn, now, actor, "silence.expire", f"silence/{silence_id}", "ok", {})
            return self._silence_row(conn.execute("SELECT * FROM silences WHERE id = ?", (silence_id,)).fetchone(),
                                     now)


_CORE = ("actor", "action", "target", "result")


def _legacy_record(raw: str, number: int, fallback_ts: float, source: str) -> tuple:
    """(ts, actor, action, target, result, detail) for one line of the old audit.jsonl."""
    try:
        entry = json.loads(raw)
    except ValueError:
        entry = None
    if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) and entry.get(k) for k in _CORE):
        return (fallback_ts, "unknown", "audit.unparsed", f"{source}:{number}", "unknown", {"line": raw})
    ts = entry.get("ts")
    if isinstance(ts, bool) or not isinstance(ts, (int, float)):
        ts = fallback_ts
    detail = {k: v for k, v in entry.items() if k not in (*_CORE, "ts", "time")}
    return (float(ts), entry["actor"], entry["action"], entry["target"], entry["result"], detail)
