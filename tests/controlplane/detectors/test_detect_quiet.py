"""No detector fires during two minutes of normal traffic on the default thresholds.

The cluster is the shipped one's shape in small (two clusters, two shards), with the load
generator `chatops up --traffic` runs and the control plane's canary on its defaults -- in its own
room of each cluster (#chatops_canary_main, #chatops_canary_testing), one message through every
edge each second, every path judged on its last 10 messages (3 missed or late fail one) -- beside
the load generator's traffic in the users' rooms; scraping every second, so the detectors see 120
windows. A false page at 3 a.m. costs trust that a real one then lacks."""

from __future__ import annotations

import json
import time
import urllib.request

from controlplane.database import Database
from tests.conftest import live_controlplane, wait_for

QUIET_S = 120


def test_normal_traffic_opens_no_finding():
    with live_controlplane(traffic=True) as (c, base):
        def detecting():
            with urllib.request.urlopen(f"{base}/api/v1/jobs", timeout=5) as r:
                jobs = {j["id"]: j for j in json.load(r)["jobs"]}
            return jobs.get("detect:all", {}).get("runs", 0) >= 3 and all(
                j["runs"] >= 1 for j in jobs.values())
        wait_for(detecting, 30, 0.5, "the detection job to run")
        started = time.time()
        db = Database(c.run / "controlplane.sqlite3")
        try:
            while time.time() - started < QUIET_S:
                time.sleep(5)
                seen = db.findings()
                assert seen == [], [(f["kind"], f["subject"], f["title"], f["evidence"]) for f in seen]
            with urllib.request.urlopen(f"{base}/api/v1/jobs", timeout=5) as r:
                detect = {j["id"]: j for j in json.load(r)["jobs"]}["detect:all"]
            assert detect["runs"] >= QUIET_S * 0.8 and detect["last_error"] is None, detect
            # A detector that raised would be quiet too: the engine reports it as a section error.
            with urllib.request.urlopen(f"{base}/metrics", timeout=5) as r:
                broken = [ln for ln in r.read().decode().splitlines()
                          if ln.startswith("chatops_source_section_errors{") and 'source="detect"' in ln]
            assert broken == []
        finally:
            db.close()
