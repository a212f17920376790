"""Adding a detector is adding one module. A detector written to a temporary file, loaded and
registered, is run by the engine; its finding is grouped into an incident by what the module
declares (its layer below clue's errors on the same shard, its label and cause in the chain); and
the incident's page on the real app draws the chart it declares. What a module leaves out takes
the defaults; incidents.py and the read model need no change.
"""

from __future__ import annotations

import importlib.util
import re
import textwrap
import time

import pytest

from collectors.base import Observation
from controlplane import detectors, incidents
from controlplane.detectors.base import PROXY, Chart, Detector
from controlplane.detectors.engine import Engine, discover

QUEUE_DEPTH = '''
"""Queue depth: a shard with a backlog of commands (made up for the registration test)."""

from controlplane.detectors.base import LOAD, Chart, Finding, judge, named_shard

KIND = "queue_depth"
THRESHOLD = 100.0


def detect(window, cf):
    out = []
    for shard in window.targets("redis"):
        pts = window.points("redis", shard, "queue_depth")
        firing, sustained, held = judge(window, pts, THRESHOLD, cf)
        if firing or sustained:
            out.append(Finding(KIND, f"{shard}:queue", "warning", f"{shard} has {pts[-1][1]:.0f} queued",
                               {"queue_depth": pts[-1][1]}, firing=firing, held_s=held,
                               about={"shard": shard}))
    return out


def layer(f):
    return LOAD


def label(f):
    return f"deep queue on {named_shard(f)}"


def cause(f):
    return f"a backlog of commands on {named_shard(f)}"


def charts(f):
    shard = named_shard(f)
    return [Chart("redis", shard, "queue_depth", "", f"{shard} queue depth")]
'''

MINIMAL = '''
KIND = "minimal_kind"


def detect(window, cf):
    return []
'''


def load(tmp_path, name: str, source: str):
    """A module from a file outside the package, as a site's own detector would be."""
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(source))
    spec = importlib.util.spec_from_file_location(f"chatops_test_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def registered(tmp_path):
    """Register modules for one test; whatever happens, the registry is left as it was."""
    kinds = []

    def register(name: str, source: str):
        module = load(tmp_path, name, source)
        d = detectors.register(module)
        kinds.append(d.kind)
        return d
    try:
        yield register
    finally:
        for kind in kinds:
            detectors.unregister(kind)
        assert not set(kinds) & set(detectors.registered())


@pytest.fixture
def app(tmp_path, run_dir):
    from controlplane.web.app import create_app
    from tests.conftest import free_subnet, small_cluster, write_cluster
    doc = small_cluster(free_subnet())
    doc["controlplane"]["thresholds"] = {"hold": "3s"}
    cluster = write_cluster(tmp_path / "cluster.yaml", doc)
    a = create_app({"CLUSTER_FILE": str(cluster), "RUN_DIR": str(run_dir), "SCHEDULER": False,
                    "TESTING": True})
    yield a
    a.extensions["chatops.db"].close()


def test_a_registered_module_is_detected_grouped_and_drawn(app, registered):
    d = registered("queue_depth", QUEUE_DEPTH)
    assert d.kind == "queue_depth" and "queue_depth" in discover()
    cf, store, db = app.config["CLUSTER"], app.extensions["chatops.store"], app.extensions["chatops.db"]
    now = time.time()
    for k, depth in enumerate([20.0, 400.0, 450.0, 500.0, 520.0, 540.0]):
        store.put(Observation("redis", "shard0", now - 5 + k, True, 0.01, {}),
                  {"queue_depth": depth, "ops_per_s": 50.0})

    # the engine runs it with the package's own detectors and opens its finding in an incident
    r = Engine(cf, store, db, 1.0).run(now)
    assert "queue_depth" not in r.errors
    assert [(f["kind"], f["subject"]) for f in r.opened] == [("queue_depth", "shard0:queue")]
    iid = db.findings(open_only=True)[0]["incident_id"]
    assert iid is not None

    # clue's errors on the same shard join it, upstream of the backlog that the module declared
    db.upsert_finding("ingestion_timeouts", "clue-chat1", severity="warning", evidence={"per_s": 3.0},
                      runbook="ingestion_timeouts", seen=now, title="clue-chat1: redis errors 3/s",
                      about={"service": "clue", "host": "chat1", "cluster": "main", "shard": "shard0"})
    incidents.update(db, cf, db.findings(open_only=True), [], now)
    assert {f["incident_id"] for f in db.findings(open_only=True)} == {iid}
    h = db.incident(iid)["root_cause"]
    assert [(x["kind"], x["label"], x["layer"]) for x in h["chain"]] == [
        ("ingestion_timeouts", "clue errors on chat1", 2), ("queue_depth", "deep queue on shard0", 5)]
    assert h["chain"][1]["because"] == "both on shard0"
    assert h["cause"] == "a backlog of commands on shard0"
    assert h["summary"] == "clue errors on chat1 → deep queue on shard0 → root cause: a backlog of commands on shard0"

    # its page: the label in the chain, the cause, and the chart it declared drawn from the store
    page = app.test_client().get(f"/incidents/{iid}")
    assert page.status_code == 200, page.text
    assert "deep queue on shard0" in page.text and "a backlog of commands on shard0" in page.text
    drawn = re.search(r'<svg class="chart big" data-series="queue_depth" data-points="(\d+)"', page.text)
    assert drawn and int(drawn.group(1)) == 6, page.text
    assert "shard0 queue depth" in page.text


def test_a_minimal_module_gets_the_defaults(registered):
    d = registered("minimal_kind", MINIMAL)
    f = {"kind": "minimal_kind", "subject": "x", "title": "something odd on shard1", "about": {"shard": "shard1"}}
    assert (d.layer(f), d.label(f), d.cause(f), d.shard(f), d.serves(f), d.reaches(f)) == (
        PROXY, "something odd on shard1", "something odd on shard1", "shard1", None, None)
    assert d.charts(f) == [Chart("redis", "shard1", "ops_per_s", "ops/s", "shard1 ops/s"),
                           Chart("redis", "shard1", "connected_clients", "", "shard1 connected clients")]
    assert incidents.label(f) == "something odd on shard1" and incidents.layer(f) == PROXY


def test_an_unknown_kind_falls_back_to_the_defaults():
    # a finding stored by an older version, whose detector is gone
    f = {"kind": "retired_kind", "subject": "s", "title": "", "about": {"host": "chat1"}}
    d = detectors.for_kind("retired_kind")
    assert isinstance(d, Detector) and d.module is None and d.detect(None, None) == []
    assert incidents.layer(f) == PROXY and incidents.label(f) == "retired_kind s" == incidents.cause(f)
    assert incidents.build_chain([dict(f, id=1)])["root"]["label"] == "retired_kind s"


def test_registration_refuses_a_second_claim_and_what_is_not_a_detector(tmp_path, registered):
    registered("queue_depth", QUEUE_DEPTH)
    assert detectors.register(detectors.registered()["queue_depth"].module).kind == "queue_depth"  # again: fine
    with pytest.raises(ValueError, match="already registered"):
        detectors.register(load(tmp_path, "again", QUEUE_DEPTH))
    with pytest.raises(ValueError, match="already registered"):
        detectors.register(load(tmp_path, "fake_hot_shard", MINIMAL.replace("minimal_kind", "hot_shard")))
    with pytest.raises(ValueError, match="not a detector"):
        detectors.register(load(tmp_path, "no_detect", 'KIND = "no_detect"\n'))
    assert "no_detect" not in detectors.registered()


def test_the_packages_own_modules_are_registered_without_asking():
    found = detectors.registered()
    assert set(found) >= {"hot_shard", "hot_key", "leaked_clients", "proxy_saturation", "ingestion_timeouts",
                          "connection_churn", "delivery_gap"}
    assert all(d.module.__name__.startswith("controlplane.detectors.") for d in found.values())
