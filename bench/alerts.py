"""Delivery you can trust, measured: 200 incidents through receivers that fail for the first 60 s.

The real notifier (controlplane/alerting/notifier.py) on a real SQLite outbox, with two
destinations of the shipped cluster file's kind -- a Slack webhook (slack-sdk, Block Kit) and a
signed JSON webhook -- pointed at stand-in receivers on 127.0.0.1, which answer 500 until
`--outage` seconds have passed and 200 afterwards:

1. Incidents open through the real correlator (controlplane/incidents.update), one every
   `--spread / --incidents` seconds, each on its own shard so none groups with another; each
   resolves `--resolve-after` seconds after it opened. Every incident is owed two notifications
   per destination, "opened" and "resolved": 800 by default.
2. Halfway through the outage the control plane "restarts": the notifier is stopped, its
   database closed, and a new notifier starts on the same file, as after a crash.
3. The run ends when every owed notification has been accepted, or `--deadline` seconds after
   the outage.

A receiver counts what it *accepted* (answered 200), by the notification's dedup key (the webhook's
`X-Chatops-Dedup-Key` header; the Slack message's context line). `lost` = owed and never accepted;
`duplicates` = accepted more than once; `in_order` = each destination accepted each incident's
"opened" before its "resolved", and its notifications in the order they were written.
`p99_delivery_s_after_recovery` = for notifications written during the outage, acceptance time
minus the moment the receiver recovered.

Baseline, in the same run: a fire-and-forget sender, as a destination without an outbox does
(Redash's destinations send once, with a timeout): each notification POSTed once, when the
notifier wrote it, to a third receiver with the same outage. Its `lost` is what such a design
loses.

Targets: lost = 0, duplicates = 0. Progress goes to stderr; the last stdout line is one JSON object.

    python -m bench.alerts [--json] [--incidents 200] [--outage 60] [--spread 30]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from cluster import clusterfile  # noqa: E402
from controlplane import incidents  # noqa: E402
from controlplane.alerting import notifier as notifying  # noqa: E402
from controlplane.alerting import webhook  # noqa: E402
from controlplane.database import Database  # noqa: E402

SLACK_ENV, HOOK_ENV, SECRET_ENV = "BENCH_SLACK_URL", "BENCH_HOOK_URL", "BENCH_HOOK_SECRET"
EVENTS = ("opened", "resolved")


def say(text: str) -> None:
    print(f"alerts: {text}", file=sys.stderr, flush=True)


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return round(s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))], 3)


class Receiver:
    """Answers 500 until `recover_at`, then 200; records what it accepted, by dedup key."""

    def __init__(self, name: str, recover_at: float):
        self.name, self.recover_at = name, recover_at
        self.accepted: list[tuple[float, str]] = []
        self.refused = 0
        self._lock = threading.Lock()
        me = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                ok = time.time() >= me.recover_at
                if ok:
                    me.record(self.headers, raw)
                else:
                    with me._lock:
                        me.refused += 1
                status, body = (200, b"ok") if ok else (500, b"outage")
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/{name}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def record(self, headers, raw: bytes) -> None:
        key = headers.get(webhook.DEDUP_HEADER)
        if key is None:                       # Slack: the context line ends with the dedup key
            body = json.loads(raw)
            for block in body.get("blocks") or []:
                for el in block.get("elements") or []:
                    text = el.get("text") if isinstance(el, dict) else None
                    if isinstance(text, str) and text.startswith("chatops · "):
                        key = text.split("chatops · ", 1)[1].strip()
        with self._lock:
            self.accepted.append((time.time(), key or "?"))

    def keys(self) -> list[str]:
        with self._lock:
            return [k for _, k in self.accepted]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def cluster_file(tmp: Path, group_wait: str, group_interval: str):
    """The shipped cluster file with two destinations pointing at the stand-ins."""
    doc = yaml.safe_load(clusterfile.load(None).path.read_text())
    doc["alerts"] = [
        {"name": "oncall-slack", "type": "slack", "url_env": SLACK_ENV, "min_severity": "warning",
         "group_wait": group_wait, "group_interval": group_interval},
        {"name": "pager-hook", "type": "webhook", "url_env": HOOK_ENV, "secret_env": SECRET_ENV,
         "min_severity": "warning", "group_wait": group_wait, "group_interval": group_interval},
    ]
    path = tmp / "cluster.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return clusterfile.load(path).spec


def finding(db: Database, i: int, now: float) -> dict:
    shard = f"bench{i}"
    return db.upsert_finding("hot_shard", shard, severity="warning", evidence={"ops_per_s": 9000 + i},
                             runbook="hot_shard", remediation={"action": "reshard", "summary": f"move slots off {shard}",
                                                               "params": {"shard": shard}},
                             state="open", seen=now, title=f"{shard} is hot", about={"shard": shard})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="(the last line is always the JSON result)")
    ap.add_argument("--incidents", type=int, default=200)
    ap.add_argument("--outage", type=float, default=60.0, help="seconds the receivers answer 500")
    ap.add_argument("--spread", type=float, default=30.0, help="seconds over which the incidents open")
    ap.add_argument("--resolve-after", type=float, default=10.0)
    ap.add_argument("--deadline", type=float, default=180.0, help="seconds after the outage to give up")
    ap.add_argument("--group-wait", default="1s")
    ap.add_argument("--group-interval", default="2s")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-alerts-"))
    start = time.time()
    recover_at = start + args.outage
    slack, hook, naive = (Receiver(n, recover_at) for n in ("slack", "hook", "naive"))
    env = {SLACK_ENV: slack.url, HOOK_ENV: hook.url, SECRET_ENV: "bench-secret-not-logged"}
    cf = cluster_file(tmp, args.group_wait, args.group_interval)
    path = tmp / "controlplane.sqlite3"
    db = Database(path)
    note = notifying.Notifier(db, cf, env)
    note.start()

    # The baseline: every row the notifier writes is also POSTed once, right away, by a
    # fire-and-forget sender.
    naive_sent: set[int] = set()
    naive_owed: list[str] = []

    def fire_and_forget(d: Database) -> None:
        for row in d.alerts(limit=None):
            if row["id"] in naive_sent or row["destination"] != "pager-hook":
                continue
            naive_sent.add(row["id"])
            naive_owed.append(row["dedup_key"])
            req = urllib.request.Request(naive.url, data=b"{}", method="POST",
                                         headers={webhook.DEDUP_HEADER: row["dedup_key"]})
            try:
                urllib.request.urlopen(req, timeout=10).read()
            except OSError:
                pass                      # no outbox: a failed send is simply gone

    opened: dict[int, float] = {}          # incident id -> when it opened
    finding_of: dict[int, dict] = {}
    restarted = False
    step = args.spread / max(1, args.incidents)
    i = 0
    say(f"{args.incidents} incidents over {args.spread:g}s; receivers fail for {args.outage:g}s")
    deadline = recover_at + args.deadline
    owed_total = args.incidents * len(EVENTS) * 2
    while time.time() < deadline:
        now = time.time()
        while i < args.incidents and now >= start + i * step:
            f = finding(db, i, now)
            changed = incidents.update(db, cf, [f], [], now)
            for inc in changed:
                opened.setdefault(inc["id"], now)
                finding_of[inc["id"]] = f
            i += 1
        for iid, t in list(opened.items()):
            f = finding_of.get(iid)
            if f is not None and now - t >= args.resolve_after:
                row = db.upsert_finding(f["kind"], f["subject"], state="resolved", seen=now)
                incidents.update(db, cf, [], [row], now)
                finding_of[iid] = None
        fire_and_forget(db)
        if not restarted and now >= start + args.outage / 2:
            say("restarting the notifier, as after a crash: stop, close the database, start anew")
            note.stop()
            db.close()
            db = Database(path)
            note = notifying.Notifier(db, cf, env)
            note.start()
            restarted = True
        got = len(set(slack.keys())) + len(set(hook.keys()))
        if i >= args.incidents and got >= owed_total:
            break
        time.sleep(0.1)
    note.stop()
    fire_and_forget(db)

    rows = db.alerts(limit=None)
    db.close()
    owed = {(dest, f"incident/{iid}/{ev}") for iid in opened for ev in EVENTS
            for dest in ("oncall-slack", "pager-hook")}
    accepted = {"oncall-slack": slack.accepted, "pager-hook": hook.accepted}
    sent = duplicates = 0
    lost_keys = []
    in_order = True
    written_at = {(r["destination"], r["dedup_key"]): r["created"] for r in rows}
    order = {(r["destination"], r["dedup_key"]): r["id"] for r in rows}
    after_recovery: list[float] = []
    for dest, got in accepted.items():
        keys = [k for _, k in got]
        counts: dict[str, int] = {}
        for k in keys:
            counts[k] = counts.get(k, 0) + 1
        sent += len(counts)
        duplicates += sum(n - 1 for n in counts.values())
        ids = [order.get((dest, k), -1) for k in keys]
        if ids != sorted(ids):
            in_order = False
        for t, k in got:
            if written_at.get((dest, k), 0) < recover_at:
                after_recovery.append(t - recover_at)
        for d, k in owed:
            if d == dest and k not in counts:
                lost_keys.append(f"{dest}:{k}")
    naive_got = set(naive.keys())
    result = {
        "bench": "alerts",
        "incidents": len(opened),
        "owed": len(owed),
        "sent": sent,
        "duplicates": duplicates,
        "lost": len(lost_keys),
        "in_order": in_order,
        "p50_delivery_s_after_recovery": pct(after_recovery, 50),
        "p99_delivery_s_after_recovery": pct(after_recovery, 99),
        "max_delivery_s_after_recovery": pct(after_recovery, 100),
        "written_during_outage": len(after_recovery),
        "refused_attempts": slack.refused + hook.refused,
        "restarted_mid_outage": restarted,
        "outage_s": args.outage,
        "baseline": "fire-and-forget: each webhook notification POSTed once when written, no outbox, no retry",
        "baseline_owed": len(naive_owed),
        "baseline_sent": len(naive_got),
        "baseline_lost": len(set(naive_owed) - naive_got),
        "duration_s": round(time.time() - start, 1),
    }
    if lost_keys:
        say(f"lost, first 10: {lost_keys[:10]}")
    for r in (slack, hook, naive):
        r.close()
    say(f"done: {result['sent']} of {result['owed']} sent, {result['duplicates']} duplicates, "
        f"{result['lost']} lost; baseline lost {result['baseline_lost']} of {result['baseline_owed']}")
    print(json.dumps(result))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
