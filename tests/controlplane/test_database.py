"""The control plane's SQLite store: nothing persisted is lost across a restart, several threads
and processes write at once without losing a row, bad ids and states get clear errors, and the
old JSON-lines audit is imported once."""

from __future__ import annotations

import json
import multiprocessing
import sqlite3
import stat
import threading

import pytest

from cluster.rundir import RunDir
from controlplane import audit
from controlplane.database import SCHEMA_VERSION, Database, DatabaseError


@pytest.fixture
def run(run_dir) -> RunDir:
    return RunDir(run_dir)


@pytest.fixture
def db(run):
    d = Database.for_run(run)
    yield d
    d.close()


def test_file_is_private_wal_and_versioned(run, db):
    assert run.database == run.root / "controlplane.sqlite3" and db.path == run.database
    assert stat.S_IMODE(run.database.stat().st_mode) == 0o600
    assert db.schema_version() == SCHEMA_VERSION
    raw = sqlite3.connect(run.database)
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        raw.close()
    assert {"audit", "findings", "incidents", "alert_outbox"} <= tables


def test_reopening_is_idempotent_and_a_newer_schema_is_refused(run):
    for _ in range(3):
        Database.for_run(run).close()
    raw = sqlite3.connect(run.database)
    raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    raw.close()
    with pytest.raises(DatabaseError, match="newer than this chatops knows"):
        Database.for_run(run)


def test_a_restart_loses_no_record(run):
    db = Database.for_run(run)
    db.add_audit("alice", "proxy.reload", "chat1", "ok", new_worker=42)
    f = db.upsert_finding("hot_shard", "shard1", severity="critical", evidence={"cpu_pct": 97.5},
                          runbook="runbooks/hot-shard.md", remediation={"move_slots": [1, 2]})
    inc = db.add_incident("shard1 is hot", root_cause={"finding": f["id"]})
    db.upsert_finding("hot_shard", "shard1", severity="critical", incident_id=inc["id"])
    db.set_incident_state(inc["id"], "acknowledged", "bob")
    a = db.enqueue_alert("oncall-slack", {"text": "shard1 is hot"})
    db.mark_alert(a["id"], "failed", "HTTP 503")
    before = (db.audit(), db.findings(), db.incidents(), db.pending_alerts())
    db.close()
    db.close()  # idempotent
    with pytest.raises(DatabaseError, match="closed"):
        db.audit()

    again = Database.for_run(run)
    try:
        assert (again.audit(), again.findings(), again.incidents(), again.pending_alerts()) == before
        [finding] = again.findings(open_only=True)
        assert finding["evidence"] == {} and finding["incident_id"] == inc["id"]
        assert again.incident(inc["id"])["acknowledged_by"] == "bob"
        assert again.pending_alerts()[0]["last_error"] == "HTTP 503"
    finally:
        again.close()


def test_audit_is_newest_first_with_limit_and_since(db):
    rows = [db.add_audit("alice", "test.action", f"t{i}", "ok", n=i) for i in range(5)]
    got = db.audit()
    assert [r["target"] for r in got] == ["t4", "t3", "t2", "t1", "t0"]
    assert got[0]["detail"] == {"n": 4} and got[0]["time"]
    assert [r["target"] for r in db.audit(limit=2)] == ["t4", "t3"]
    assert [r["target"] for r in db.audit(since=rows[2]["ts"])] == [
        r["target"] for r in reversed(rows[3:]) if r["ts"] > rows[2]["ts"]]
    for bad in (0, -1, "10", True):
        with pytest.raises(ValueError, match="limit"):
            db.audit(limit=bad)
    with pytest.raises(ValueError, match="since"):
        db.audit(since="yesterday")
    with pytest.raises(ValueError, match="actor"):
        db.add_audit("", "x", "y", "ok")


def test_findings_upsert_keeps_one_open_per_subject(db):
    first = db.upsert_finding("leaked_clients", "redis1", severity="warning", evidence={"idle": 600}, seen=100)
    again = db.upsert_finding("leaked_clients", "redis1", severity="critical", evidence={"idle": 900}, seen=160)
    other = db.upsert_finding("leaked_clients", "redis2", seen=150)
    assert again["id"] == first["id"] and again["first_seen"] == 100 and again["last_seen"] == 160
    assert again["severity"] == "critical" and again["evidence"] == {"idle": 900}
    assert [f["subject"] for f in db.findings(open_only=True)] == ["redis1", "redis2"]

    closed = db.upsert_finding("leaked_clients", "redis1", state="resolved", seen=200)
    assert closed["id"] == first["id"] and closed["state"] == "resolved"
    assert db.upsert_finding("leaked_clients", "redis1", state="resolved") is None  # nothing open
    reopened = db.upsert_finding("leaked_clients", "redis1", seen=300)
    assert reopened["id"] not in (first["id"], other["id"]) and reopened["first_seen"] == 300
    assert len(db.findings()) == 3 and len(db.findings(open_only=True)) == 2
    assert db.finding(first["id"])["state"] == "resolved"

    with pytest.raises(ValueError, match="info, warning, critical"):
        db.upsert_finding("x", "y", severity="meh")
    with pytest.raises(ValueError, match="open, resolved"):
        db.upsert_finding("x", "y", state="acknowledged")
    with pytest.raises(KeyError, match="no incident with id 999"):
        db.upsert_finding("x", "y", incident_id=999)
    with pytest.raises(KeyError, match="no finding with id 999"):
        db.finding(999)
    assert db.findings(open_only=True) == db.findings(open_only=True)  # the failures wrote nothing
    assert len(db.findings()) == 3


def test_an_open_finding_keeps_the_title_of_its_worst_figure(db):
    def seen(idle, t, peak=True):
        return db.upsert_finding("leaked_clients", "chat2->shard3", evidence={"idle": idle}, seen=t,
                                 title=f"chat2 holds {idle:,} idle connections to shard3",
                                 peak=idle if peak else None)
    seen(1200, 100)
    worst = seen(2000, 110)
    assert worst["title"] == worst["live_title"] == "chat2 holds 2,000 idle connections to shard3"
    # Being cleaned up: the title stays at the worst, the live one and the evidence follow.
    draining = seen(0, 120)
    assert draining["title"] == "chat2 holds 2,000 idle connections to shard3" and draining["peak"] == 2000
    assert draining["live_title"] == "chat2 holds 0 idle connections to shard3"
    assert draining["evidence"] == {"idle": 0}
    resolved = db.upsert_finding("leaked_clients", "chat2->shard3", state="resolved", seen=130)
    assert resolved["title"] == "chat2 holds 2,000 idle connections to shard3"
    # Worse again, or a detector that gives no figure (and a garbage one): the newest title wins.
    assert seen(5, 200)["title"] == "chat2 holds 5 idle connections to shard3"
    assert seen(9, 210)["title"] == "chat2 holds 9 idle connections to shard3"
    assert seen(1, 220, peak=False)["title"] == "chat2 holds 1 idle connections to shard3"
    nan = db.upsert_finding("leaked_clients", "chat2->shard3", seen=230, title="odd", peak=float("nan"))
    assert nan["title"] == "odd" and nan["peak"] is None


def test_incident_states_are_audited_and_bad_input_is_refused(db):
    inc = db.add_incident("edge timeouts", actor="detector")
    assert inc["state"] == "open" and inc["timeline"][0]["event"] == "opened"
    acked = db.set_incident_state(inc["id"], "acknowledged", "session:127.0.0.1", note="looking")
    assert acked["state"] == "acknowledged" and acked["acknowledged_by"] == "session:127.0.0.1"
    done = db.set_incident_state(inc["id"], "resolved", "token")
    assert [e["state"] for e in done["timeline"]] == ["open", "acknowledged", "resolved"]
    assert done["acknowledged_by"] == "session:127.0.0.1" and done["updated"] >= inc["opened"]
    trail = db.audit()
    assert [(r["actor"], r["action"], r["target"]) for r in trail] == [
        ("token", "incident.resolved", f"incident/{inc['id']}"),
        ("session:127.0.0.1", "incident.acknowledged", f"incident/{inc['id']}")]
    assert trail[1]["detail"] == {"from": "open", "to": "acknowledged", "note": "looking"}

    assert [i["id"] for i in db.incidents(state="resolved")] == [inc["id"]]
    assert db.incidents(state="open") == []
    with pytest.raises(KeyError, match="no incident with id 12345"):
        db.set_incident_state(12345, "resolved", "token")
    with pytest.raises(KeyError, match="no incident with id"):
        db.incident("1")
    with pytest.raises(ValueError, match="'closed' is not one of: open, acknowledged, resolved"):
        db.set_incident_state(inc["id"], "closed", "token")
    with pytest.raises(ValueError, match="open, acknowledged, resolved"):
        db.incidents(state="done")
    with pytest.raises(ValueError, match="title"):
        db.add_incident("  ")
    assert len(db.audit()) == 2  # refused changes audit nothing


def test_alert_outbox(db):
    a = db.enqueue_alert("oncall", {"severity": "critical", "text": "shard0 down"})
    b = db.enqueue_alert("webhook", {"text": "second"})
    assert [x["id"] for x in db.pending_alerts()] == [a["id"], b["id"]]
    failed = db.mark_alert(a["id"], "failed", "connection refused")
    assert failed["attempts"] == 1 and failed["last_error"] == "connection refused"
    assert [x["id"] for x in db.pending_alerts(max_attempts=1)] == [b["id"]]
    done = db.mark_alert(a["id"], "delivered")
    assert done["delivered_at"] and done["attempts"] == 2 and done["last_error"] is None
    assert [x["id"] for x in db.pending_alerts()] == [b["id"]]
    assert db.pending_alerts()[0]["payload"] == {"text": "second"}
    with pytest.raises(KeyError, match="no alert with id 77"):
        db.mark_alert(77, "delivered")
    with pytest.raises(ValueError, match="delivered, failed"):
        db.mark_alert(b["id"], "lost")


def test_threads_share_one_database_without_losing_a_row(db):
    threads, errors, per_thread = 8, [], 50
    inc = db.add_incident("busy")

    def work(n):
        try:
            for i in range(per_thread):
                db.add_audit(f"worker{n}", "test.write", f"t{i}", "ok")
                db.upsert_finding("busy", f"s{n}", evidence={"i": i})
                db.set_incident_state(inc["id"], "acknowledged" if i % 2 else "open", f"worker{n}")
                db.audit(limit=5)
                db.findings(open_only=True)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(repr(exc))

    pool = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(60)
    assert errors == []
    assert len(db.audit(limit=None)) == threads * per_thread * 2  # each state change is audited too
    assert sorted(f["subject"] for f in db.findings()) == sorted(f"s{n}" for n in range(threads))
    assert len(db.incident(inc["id"])["timeline"]) == 1 + threads * per_thread


def _write_audit(path: str, n: int, count: int) -> None:
    from controlplane.database import Database as D  # a fresh import in the child
    with D(path) as d:
        for i in range(count):
            d.add_audit(f"proc{n}", "test.write", str(i), "ok")


def test_processes_write_at_once_without_locked_errors(run, db):
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_write_audit, args=(str(run.database), n, 40)) for n in range(4)]
    for p in procs:
        p.start()
    for i in range(40):
        db.add_audit("parent", "test.write", str(i), "ok")
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    assert len(db.audit(limit=None)) == 5 * 40


def test_old_jsonl_audit_is_imported_once_and_kept(run):
    run.root.mkdir(parents=True, exist_ok=True)
    old = [{"ts": 1000.0, "time": "x", "actor": "alice", "action": "proxy.reload", "target": "chat1",
            "result": "ok", "detail": "reloaded: worker 1 -> 2", "new_worker": 2},
           {"ts": 1001.0, "time": "x", "actor": "alice", "action": "proxy.reload", "target": "chat2",
            "result": "failed", "detail": "rejected"}]
    lines = [json.dumps(r) for r in old] + ["", "{not json", '["a list"]']
    run.audit_log.write_text("\n".join(lines) + "\n")

    records = audit.read(run)
    assert not run.audit_log.exists()
    kept = run.root / "audit.jsonl.imported"
    assert kept.read_text().splitlines() == lines  # the original stays on disk, untouched
    assert [(r["ts"], r["target"], r["result"], r.get("new_worker")) for r in records[:2]] == [
        (1000.0, "chat1", "ok", 2), (1001.0, "chat2", "failed", None)]
    assert records[0]["detail"] == "reloaded: worker 1 -> 2"
    unparsed = [r for r in records if r["action"] == "audit.unparsed"]
    assert [r["line"] for r in unparsed] == ["{not json", '["a list"]']
    assert unparsed[0]["target"] == "audit.jsonl:4"

    # A second open imports nothing more; a file put back after a crash before the rename is
    # recognised by its digest and only renamed.
    assert len(audit.read(run)) == 4
    kept.rename(run.audit_log)
    with Database.for_run(run) as db:
        assert len(db.audit(limit=None)) == 4
    assert not run.audit_log.exists() and kept.exists()


def test_audit_module_keeps_its_interface(run):
    assert audit.read(run) == [] and not run.database.exists()  # reading creates nothing
    rec = audit.record(run, "tester", "proxy.reload", "chat1", "ok", detail="reloaded", new_worker=7)
    assert rec["actor"] == "tester" and rec["detail"] == "reloaded" and rec["new_worker"] == 7
    audit.record(run, "tester", "proxy.reload", "chat1", "failed", detail="rejected")
    assert [r["result"] for r in audit.read(run)] == ["ok", "failed"]  # oldest first, as before
    assert audit.actor()


def test_unsettled_incidents_are_those_told_of_and_not_yet_told_resolved(db):
    a, b, c = (db.add_incident(t)["id"] for t in ("a", "b", "c"))
    db.enqueue_alert("slack", {}, incident_id=a, event="opened", dedup_key=f"incident/{a}/opened")
    db.enqueue_alert("slack", {}, incident_id=b, event="opened", dedup_key=f"incident/{b}/opened")
    db.enqueue_alert("slack", {}, incident_id=b, event="resolved", dedup_key=f"incident/{b}/resolved")
    db.enqueue_alert("hook", {}, incident_id=b, event="opened", dedup_key=f"incident/{b}/opened")
    db.enqueue_alert("gone", {}, incident_id=c, event="opened", dedup_key=f"incident/{c}/opened")
    assert db.unsettled_incidents(["slack"]) == [a]              # b was told resolved; c only to "gone"
    assert db.unsettled_incidents(["slack", "hook"]) == [a, b]   # hook still owes b its "resolved"
    assert db.unsettled_incidents([]) == []
