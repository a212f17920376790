"""server_state's edge side (controlplane/remediation/edge_drain.py), without a cluster: which
servers are edges, and what each state asks of the edge. The live part is test_drain.py."""

from __future__ import annotations

import json

from cluster import clusterfile
from controlplane.remediation import edge_drain
from tests.conftest import small_cluster


def _cf():
    doc = small_cluster("127.0.9")
    doc["hosts"]["chat2"] = {"address": "127.0.9.2"}
    doc["clusters"]["main"]["hosts"] = ["chat1", "chat2"]
    return clusterfile.parse(json.dumps(doc))


def test_edge_servers_are_told_and_others_are_not():
    cf = _cf()
    assert edge_drain.edge_of(cf, "be_edge_main", "chat2") == "chat2"
    assert edge_drain.edge_of(cf, "be_edge_ws_main", "chat1") == "chat1"
    assert edge_drain.edge_of(cf, "be_edge_testing", "chat-testing") == "chat-testing"
    assert edge_drain.edge_of(cf, "be_edge_main", "chat-testing") is None      # another cluster's host
    assert edge_drain.edge_of(cf, "be_edge_nowhere", "chat1") is None
    assert edge_drain.edge_of(cf, "redis-shard0", "shard0") is None


def test_drain_and_maint_drain_the_edge_ready_ends_it_and_a_weight_leaves_it_alone():
    assert [edge_drain.wanted(s) for s in ("drain", "maint", "ready", None)] == [True, True, False, None]
