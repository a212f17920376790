"""The talk's outage, replayed: the testing cluster leaks idle connections into the shard that
holds the main cluster's room until it is at maxclients; clue's connections drop and, reconnecting,
are refused; edges refuse messages. The control plane builds one incident whose chain runs
upstream to downstream -- edge, clue, the shard at maxclients, the leak from chat-testing -- with
the leak as the root cause, and shows it with its evidence in the API and on the dashboard.

Redis refuses a client only above maxclients, and clue's old connections free their slots the
moment they close, so "at maxclients" is made exact the way an operator would meet it: an admin
connection opened before the leak lowers maxclients to what stays connected without clue, then
drops clue's connections (as a restart or an idle timeout in front of Redis would)."""

from __future__ import annotations

import json
import urllib.request

from chat import keys
from chat.sharding import SlotMap
from collectors import redis as rc
from controlplane.database import Database
from tests.conftest import drop_at_maxclients, live_controlplane, open_idle, redis_creds, wait_for

LEAK = 2000
ROOM = "lobby"                                  # small_cluster's main room
SHARD = f"shard{SlotMap.even(2).shard_of(keys.bans(ROOM))}"


def _patch(doc: dict) -> None:
    doc["redis"]["maxclients"] = LEAK + 200
    doc["controlplane"]["thresholds"] = {"hold": "3s", "idle_client_after": "2s"}


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.status, r.read().decode()


def test_leaked_clients_plus_refused_clue_make_one_incident_with_the_chain():
    with live_controlplane(traffic=True, patch=_patch) as (c, base):
        procs = {p["name"]: p for p in c.state["processes"]}
        addr = procs["haproxy-chat-testing"]["address"]
        chat1 = procs["haproxy-chat1"]["address"]
        shard = procs[f"redis-{SHARD}"]
        port = 2000 + int(SHARD.removeprefix("shard"))
        socks = []
        db = Database(c.run / "controlplane.sqlite3")
        admin = rc.Conn(shard["address"], shard["port"], auth=redis_creds())
        try:
            wait_for(lambda: json.loads(_get(f"{base}/api/v1/jobs")[1])["jobs"][0]["runs"] >= 2, 30, 0.5,
                     "the first scrapes")
            socks += open_idle(addr, port, LEAK)
            open_kinds = lambda: {(f["kind"], f["subject"]) for f in db.findings(open_only=True)}  # noqa: E731
            wait_for(lambda: ("leaked_clients", f"chat-testing->{SHARD}") in open_kinds(), 40, 0.5,
                     "the leak to be found")
            drop_at_maxclients(admin, chat1)
            wanted = {("ingestion_timeouts", "clue-chat1"), ("ingestion_timeouts", "edge-chat1"),
                      ("leaked_clients", f"chat-testing->{SHARD}")}
            wait_for(lambda: wanted <= open_kinds(), 60, 0.5, f"findings {sorted(wanted)}")

            def incident():
                rows = [i for i in db.incidents(state="open") if
                        {f["subject"] for f in db.incident_findings(i["id"])} >= {s for _, s in wanted}]
                return rows[0] if rows else None
            inc = wait_for(incident, 20, 0.5, "one incident holding them all")

            status, body = _get(f"{base}/api/v1/incidents/{inc['id']}")
            assert status == 200
            doc = json.loads(body)
            chain = doc["chain"]
            order = [(link["kind"], link["subject"]) for link in chain]
            # Upstream to downstream: the edge first, then clue, then the shard, the leak last.
            pos = {key: order.index(key) for key in wanted}
            assert pos[("ingestion_timeouts", "edge-chat1")] < pos[("ingestion_timeouts", "clue-chat1")] \
                < pos[("leaked_clients", f"chat-testing->{SHARD}")], order
            assert order[-1] == ("leaked_clients", f"chat-testing->{SHARD}"), order
            root = chain[-1]
            assert "chat-testing" in doc["root_cause"]["cause"] and "testing" in doc["root_cause"]["cause"]
            for link in chain:
                assert link["finding_id"] and link["title"], link      # each link cites its evidence
            assert root["figures"], root
            assert doc["remediation"]["action"] == "kill_clients"
            assert doc["remediation"]["params"]["host"] == "chat-testing"

            status, page = _get(f"{base}/incidents/{inc['id']}")
            assert status == 200
            for link in chain:
                assert f'data-finding="{link["finding_id"]}"' in page
            assert page.index("edge-chat1") < page.index("clue-chat1") < page.rindex(f"chat-testing-&gt;{SHARD}")
            assert "kill_clients" in page and 'id="root-cause"' in page
        finally:
            admin.close()
            for s in socks:
                s.close()
            db.close()
