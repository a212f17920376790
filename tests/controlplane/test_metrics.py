"""The control plane's /metrics: parsed with prometheus-client's own text parser, its names equal
docs/metrics.md's control-plane section (which is generated from controlplane/metrics.py's
catalogue), its values make sense under traffic, and a killed Redis shard shows as down within
2 scrape intervals while the other shard keeps updating. Without a running cluster every source
is down and /metrics still answers; odd label values come out escaped and parse back."""

from __future__ import annotations

import re
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cluster.clusterfile import load
from cluster.rundir import RunDir
from collectors.base import Observation
from controlplane import metrics, sources
from controlplane.store import Store
from controlplane.web.app import create_app
from tests.conftest import (
    crash_loop,
    free_subnet,
    live_controlplane,
    small_cluster,
    wait_for,
    write_cluster,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
INTERVAL = 1.0           # live_controlplane's scrape interval
SECTION = "## The control plane"
# Families that legitimately have no sample on a healthy live cluster.
# The alerting families have a series per destination, and small_cluster() names none.
MAY_BE_EMPTY = {"chatops_source_section_errors", "chatops_alert_destination_enabled",
                "chatops_alert_notifications_total", "chatops_alert_outbox_pending",
                "chatops_alert_outbox_oldest_pending_age_seconds"}


# -- helpers --------------------------------------------------------------------------------------

def source_count(config) -> int:
    """How many scrape sources the cluster file makes (the detection job not included)."""
    return len(sources.build(load(config).spec, RunDir(Path("/nonexistent")), Store()))


def doc_section() -> str:
    text = DOC.read_text()
    start = text.index(SECTION + "\n")
    end = text.find("\n## ", start + len(SECTION))
    return text[start:] if end < 0 else text[start:end + 1]


def documented_names() -> set[str]:
    return set(re.findall(r"^\| `(chatops_[a-z_]+)` \|", doc_section(), re.M))


class Scrape:
    """One parsed /metrics body: families by their exposed name (counters keep `_total`)."""

    def __init__(self, text: str):
        self.text = text
        self.families = {}
        for f in text_string_to_metric_families(text):
            name = f.name + "_total" if f.type == "counter" else f.name
            self.families[name] = f

    def samples(self, name: str, **labels) -> list:
        fam = self.families[name]
        want = name if fam.type != "counter" or name.endswith("_total") else name + "_total"
        return [s for s in fam.samples
                if s.name == want and all(s.labels.get(k) == v for k, v in labels.items())]

    def value(self, name: str, **labels) -> float | None:
        found = self.samples(name, **labels)
        assert len(found) <= 1, f"{name}{labels} matches {len(found)} samples"
        return found[0].value if found else None


def get(url: str) -> tuple[int, str, str]:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.status, r.headers.get("Content-Type", ""), r.read().decode()


def scrape(base: str) -> Scrape:
    status, ctype, body = get(base + "/metrics")
    assert status == 200 and ctype.startswith("text/plain")
    return Scrape(body)


def exposed_names(s: Scrape) -> set[str]:
    return set(s.families)


# -- the catalogue and the page -------------------------------------------------------------------

def test_docs_section_is_the_generated_catalogue():
    assert doc_section() == metrics.markdown(), (
        "docs/metrics.md's control-plane section differs from controlplane/metrics.py; "
        "regenerate it with `python -m controlplane.metrics`")
    assert documented_names() == {m.name for m in metrics.all_metrics()}


def test_label_names_are_fixed_in_the_catalogue():
    for m in metrics.all_metrics():
        for label in m.labels:
            assert re.fullmatch(r"[a-z_]+", label) and label in metrics.LABELS, (m.name, label)


# -- a live cluster with traffic ------------------------------------------------------------------

@pytest.fixture(scope="module")
def live():
    with live_controlplane(traffic=True) as (c, base):
        def every_job_ran_twice():
            s = scrape(base)
            runs = s.samples("chatops_source_scrapes_total")
            return len(runs) == source_count(c.config) + 1 and all(r.value >= 2 for r in runs) and \
                all(u.value == 1 for u in s.samples("chatops_source_up"))
        wait_for(every_job_ran_twice, 30, 0.2, "every scrape job to have run twice and be up")
        yield c, base


def test_live_metrics_parse_and_have_the_catalogues_names(live):
    c, base = live
    s = scrape(base)
    names = exposed_names(s)
    documented = documented_names()
    assert names - documented == set(), "exported by /metrics but not in docs/metrics.md"
    assert documented - names == set(), "in docs/metrics.md but not exported by /metrics"
    empty = {n for n, f in s.families.items() if not f.samples}
    assert empty <= MAY_BE_EMPTY, f"families without a sample on a healthy cluster: {sorted(empty)}"
    for m in metrics.all_metrics():
        fam = s.families[m.name]
        assert fam.type == m.type and fam.documentation == m.help, m.name
        for sample in fam.samples:
            assert not sample.name.endswith("_created"), sample.name
            assert set(sample.labels) == set(m.labels), (m.name, sample.labels)


def test_values_make_sense_under_traffic(live):
    c, base = live
    first = scrape(base)
    time.sleep(INTERVAL * 1.5)
    second = scrape(base)
    for shard, host in (("shard0", "redis1"), ("shard1", "redis2")):
        assert second.value("chatops_redis_up", shard=shard, host=host) == 1
        assert second.value("chatops_client_list_up", shard=shard, host=host) == 1
        before = first.value("chatops_redis_commands_processed_total", shard=shard)
        after = second.value("chatops_redis_commands_processed_total", shard=shard)
        assert after > before > 0, (shard, before, after)
        assert second.value("chatops_redis_maxclients", shard=shard) > 0
        assert second.value("chatops_redis_memory_used_bytes", shard=shard) > 0
        assert second.value("chatops_redis_cpu_seconds_total", shard=shard, mode="user") >= 0
        assert second.value("chatops_redis_command_calls_total", shard=shard, command="info") >= 2
        clusters = {smp.labels["source_host"]: smp.labels["cluster"]
                    for smp in second.samples("chatops_client_list_clients", shard=shard) if smp.value > 0}
        assert clusters.get("chat1") == "main", clusters
        assert clusters.get("chat-testing") == "testing", clusters
        assert second.value("chatops_client_list_idle_threshold_seconds", shard=shard) > 0
    for host, cluster in (("chat1", "main"), ("chat-testing", "testing")):
        assert second.value("chatops_haproxy_up", host=host, cluster=cluster) == 1
        assert second.value("chatops_haproxy_workers", host=host) >= 1
        for shard in ("shard0", "shard1"):
            assert second.value("chatops_haproxy_server_status_up", host=host, proxy=f"redis-{shard}",
                                server=shard) == 1
            assert second.value("chatops_haproxy_frontend_limit_sessions", host=host,
                                proxy=f"redis-{shard}") > 0
        assert second.value("chatops_haproxy_frontend_sessions_total", host=host, proxy=f"fe_edge_{cluster}") > 0
    assert second.value("chatops_process_up", process="redis-shard0", service="redis", host="redis1",
                        cluster="") == 1
    assert second.value("chatops_process_up", process="edge-chat1", cluster="main") == 1
    assert second.value("chatops_process_resident_memory_bytes", process="edge-chat1") > 1 << 20
    assert second.value("chatops_process_established_connections", process="redis-shard0",
                        source_host="chat1") >= 1
    assert sum(smp.value for smp in second.samples("chatops_log_events_total", service="edge", host="chat1",
                                                    cluster="main", shard="")) > 0
    assert sum(smp.value for smp in second.samples("chatops_log_events_total", service="redis", host="redis2",
                                                    shard="shard1")) > 0
    assert second.value("chatops_source_scrape_errors_total", source="redis", target="shard0") == 0
    assert second.value("chatops_source_last_scrape_timestamp_seconds", source="redis", target="shard0") > \
        first.value("chatops_source_last_scrape_timestamp_seconds", source="redis", target="shard0")
    assert second.value("chatops_store_series") > 0



def test_killing_a_shard_shows_it_down_within_two_intervals_while_the_other_updates(live):
    """The supervisor restarts a killed shard (after 0-0.5 s at first), faster than one scrape
    interval: a helper thread kills every new shard1 process, so the shard stays down as it
    would after a crash loop, then lets it come back."""
    c, base = live
    assert scrape(base).value("chatops_redis_up", shard="shard1") == 1
    with crash_loop(c, "redis-shard1") as (_, t0):
        down_after = None
        shard0_counts, shard0_scrapes = [], []
        while time.monotonic() - t0 < 2 * INTERVAL + 3:
            s = scrape(base)
            elapsed = time.monotonic() - t0
            shard0_counts.append(s.value("chatops_redis_commands_processed_total", shard="shard0"))
            shard0_scrapes.append(s.value("chatops_source_last_scrape_timestamp_seconds",
                                          source="redis", target="shard0"))
            assert s.value("chatops_redis_up", shard="shard0") == 1
            if down_after is None and s.value("chatops_redis_up", shard="shard1", host="redis2") == 0 \
                    and s.value("chatops_source_up", source="redis", target="shard1") == 0:
                down_after = elapsed
                # A down source keeps only its up gauge: no stale values.
                assert s.samples("chatops_redis_commands_processed_total", shard="shard1") == []
                assert s.samples("chatops_redis_connected_clients", shard="shard1") == []
                assert s.value("chatops_source_scrape_errors_total", source="redis", target="shard1") >= 1
            if down_after is not None and elapsed > down_after + 2 * INTERVAL + 0.2:
                break
            time.sleep(0.1)
        print(f"shard1 down in /metrics {down_after}s after the kill; shard0 commands: {shard0_counts}")
        assert down_after is not None, "shard1 never showed as down in /metrics"
        assert down_after <= 2 * INTERVAL, f"shard1 showed as down {down_after:.2f}s after the kill"
        # Meanwhile shard0 kept being scraped, and its counter kept climbing.
        assert len(set(shard0_scrapes)) >= 3, shard0_scrapes
        climbs = [b > a for a, b in zip(shard0_counts, shard0_counts[1:]) if b != a]
        assert len(climbs) >= 2 and all(climbs), shard0_counts
    wait_for(lambda: scrape(base).value("chatops_redis_up", shard="shard1") == 1, 40, 0.2,
             "shard1 to be restarted and scraped as up again")


# -- no running cluster ---------------------------------------------------------------------------

@pytest.fixture
def idle_app(run_dir):
    """The control plane of a small cluster that is not running, without its schedule."""
    subnet = free_subnet()
    config = write_cluster(run_dir / "cluster.yaml", small_cluster(subnet))
    app = create_app({"CLUSTER_FILE": str(config), "RUN_DIR": str(run_dir / "run"), "SCHEDULER": False,
                      "TESTING": True})
    return app


def test_every_source_down_still_answers_with_up_gauges_at_zero(idle_app):
    client = idle_app.test_client()
    before = client.get("/metrics")
    assert before.status_code == 200
    s = Scrape(before.get_data(as_text=True))
    assert s.value("chatops_redis_up", shard="shard0", host="redis1") == 0
    assert s.value("chatops_source_up", source="logs", target="local") == 0
    assert s.samples("chatops_source_scrapes_total", source="redis", target="shard0")[0].value == 0

    idle_app.extensions["chatops.scraper"].run_all()     # every source fails: nothing listens
    r = client.get("/metrics")
    assert r.status_code == 200 and r.content_type.startswith("text/plain")
    s = Scrape(r.get_data(as_text=True))
    assert exposed_names(s) == documented_names()
    for shard, host in (("shard0", "redis1"), ("shard1", "redis2")):
        assert s.value("chatops_redis_up", shard=shard, host=host) == 0
        assert s.value("chatops_client_list_up", shard=shard, host=host) == 0
    for host, cluster in (("chat1", "main"), ("chat-testing", "testing")):
        assert s.value("chatops_haproxy_up", host=host, cluster=cluster) == 0
    # Every collector is down; the detection job itself ran fine over what they (did not) say.
    ups = [u for u in s.samples("chatops_source_up") if u.labels["source"] != "detect"]
    assert len(ups) == source_count(idle_app.config["CLUSTER_FILE"]) and all(u.value == 0 for u in ups)
    assert s.value("chatops_source_up", source="detect", target="all") == 1
    assert all(e.value == 1 for e in s.samples("chatops_source_scrape_errors_total") if e.labels["source"] != "detect")
    # Down sources have no other series.
    up_names = {"chatops_redis_up", "chatops_client_list_up", "chatops_haproxy_up"}
    for name, fam in s.families.items():
        if name.startswith(("chatops_redis_", "chatops_client_list_", "chatops_haproxy_",
                            "chatops_process_", "chatops_log_")) and name not in up_names:
            assert fam.samples == [], name


def test_a_stale_observation_counts_as_down(idle_app):
    """An up observation older than 3 intervals plus its timeout (a job that stopped) is down."""
    store = idle_app.extensions["chatops.store"]
    old = time.time() - 60
    store.put(Observation("redis", "shard0", old, True, 0.001,
                          {"info": {"stats": {"total_commands_processed": 5}}, "config": {}}), {"up": 1.0})
    s = Scrape(idle_app.test_client().get("/metrics").get_data(as_text=True))
    assert s.value("chatops_redis_up", shard="shard0") == 0
    assert s.samples("chatops_redis_commands_processed_total") == []
    store.put(Observation("redis", "shard0", time.time(), True, 0.001,
                          {"info": {"stats": {"total_commands_processed": 7}}, "config": {}}), {"up": 1.0})
    s = Scrape(idle_app.test_client().get("/metrics").get_data(as_text=True))
    assert s.value("chatops_redis_up", shard="shard0") == 1
    assert s.value("chatops_redis_commands_processed_total", shard="shard0") == 7


def test_odd_label_values_are_escaped_and_parse_back(idle_app):
    run = idle_app.extensions["chatops.run"]
    logs = run.root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    odd = 'we"ird\\remote'
    (logs / "edge-chat1.log").write_text(
        f"Nov 27 14:35:31 chat_edge: [{odd}] Timed out (after 5s) while writing request\n"
        "Nov 27 14:35:32 chat_edge: [-] listening address=1.2.3.4:6667\n")
    idle_app.extensions["chatops.scraper"].run_once("logs:local")
    body = idle_app.test_client().get("/metrics").get_data(as_text=True)
    assert 'remote="we\\"ird\\\\remote"' in body
    s = Scrape(body)
    got = s.samples("chatops_log_events_total", remote=odd)
    assert len(got) == 1 and got[0].value == 1
    assert got[0].labels["service"] == "edge"
    assert got[0].labels["host"] == "chat1" and got[0].labels["cluster"] == "main"

    # A newline cannot come from a log line; put one in the store the way a scrape would.
    store = idle_app.extensions["chatops.store"]
    snap = store.latest("logs", "local")
    nasty = 'two\nlines "and" a \\ backslash }{,='
    groups = [*snap.detail["groups"], {"file": "edge-chat1", "service": "edge", "host": "chat1",
                                        "remote": nasty, "kind": "other", "total": 3, "per_s": None,
                                        "examples": []}]
    store.put(Observation("logs", "local", time.time(), True, 0.001, {"files": 1}),
              {"up": 1.0}, {**snap.detail, "groups": groups})
    body = idle_app.test_client().get("/metrics").get_data(as_text=True)
    assert "\nlines" not in body.replace("\\n", "")    # the newline is escaped, not raw
    s = Scrape(body)
    assert s.value("chatops_log_events_total", remote=nasty) == 3
    assert s.value("chatops_log_events_total", remote=odd) == 1


def test_wire_names_past_the_cap_are_summed_into_other(idle_app):
    store = idle_app.extensions["chatops.store"]
    n = metrics.MAX_SOURCE_HOSTS + 50
    by_host = [{"host": f"10.0.{i // 250}.{i % 250}", "cluster": None, "count": 2, "idle_over": 1,
                "idle_over_long": 0, "oldest_age_s": i, "max_idle_s": 3} for i in range(n)]
    store.put(Observation("clients", "shard0", time.time(), True, 0.001,
                          {"by_host": by_host, "total": 2 * n, "idle_after_s": 60.0, "bytes": 10}),
              {"up": 1.0})
    s = Scrape(idle_app.test_client().get("/metrics").get_data(as_text=True))
    rows = s.samples("chatops_client_list_clients", shard="shard0")
    assert len(rows) == metrics.MAX_SOURCE_HOSTS + 1
    assert sum(r.value for r in rows) == 2 * n
    assert s.value("chatops_client_list_clients", shard="shard0", source_host="_other") == 2 * 50
    assert s.value("chatops_client_list_oldest_age_seconds", shard="shard0", source_host="_other") == n - 1
