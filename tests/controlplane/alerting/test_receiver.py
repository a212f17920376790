"""The Alertmanager receiver's parser (controlplane/alerting/receiver.py) on payloads recorded from a
real Alertmanager (tests/fixtures/alertmanager/), a hostile variant, and payloads it must refuse
whole with a message naming the field; and how its findings sit in incidents beside chatops' own."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from cluster import clusterfile
from controlplane import incidents
from controlplane.alerting import receiver, silences
from controlplane.alerting.receiver import BadPayload
from controlplane.detectors import for_kind
from controlplane.detectors.base import PROXY, SHARD
from controlplane.detectors.engine import discover
from tests.conftest import small_cluster

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "alertmanager"
SHARD0 = "127.181.105.21"


@pytest.fixture(scope="module")
def cf():
    return clusterfile.parse(yaml.safe_dump(small_cluster("127.181.105")), "test")


def raw(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def doc(name: str = "webhook_firing.json") -> dict:
    return json.loads(raw(name))


def by_name(batch: receiver.Batch) -> dict[str, object]:
    return {f.evidence["alertname"]: f for f in batch.firing}


# -- the recorded payloads ------------------------------------------------------------------------

def test_the_recorded_firing_payload(cf):
    p = receiver.parse(raw("webhook_firing.json"))
    assert (p.status, p.receiver, p.truncated) == ("firing", "chatops", 0)
    assert p.group_key == '{}:{job="redis_exporter"}' and p.common_labels == {"job": "redis_exporter"}
    assert [a.status for a in p.alerts] == ["firing", "firing"]
    assert all(a.ends_at is None and a.starts_at > 1.7e9 for a in p.alerts)     # Go's zero time: no end
    batch = receiver.findings(p, cf)
    assert batch.resolved == []
    found = by_name(batch)
    redis = found["RedisTooManyConnections"]
    assert redis.kind == "alertmanager"
    assert redis.subject == ('RedisTooManyConnections{instance="redis://127.181.105.21:6379",'
                             'job="redis_exporter",severity="critical"}')
    assert redis.severity == "critical"
    assert redis.title == "Redis shard at 127.181.105.21:6379 has 9,120 of 10,000 clients"
    # redis_exporter's instance is shard0's address and port: the alert is about shard0 on redis1
    assert redis.about == {"shard": "shard0", "host": "redis1"}
    assert redis.evidence["labels"]["alertname"] == "RedisTooManyConnections"
    assert redis.evidence["generator_url"].startswith("http://prometheus.local:9090/graph")
    assert redis.evidence["fingerprint"] == "02bef82c70c50ac1"
    assert redis.runbook == "leaked_clients"         # its runbook_url points at one of ours
    proxy = found["HAProxyBackendDown"]
    assert proxy.severity == "warning" and proxy.runbook == "alertmanager"
    # no summary: alertname on where; the `proxy` label redis-shard0 and chat-testing's address
    assert proxy.about == {"shard": "shard0", "host": "chat-testing", "cluster": "testing"}
    assert proxy.title == "HAProxyBackendDown on shard0 (chat-testing)"
    assert proxy.evidence["lines"] == ["backend redis-shard0 on chat-testing is down"]


def test_the_recorded_resolved_payload_resolves_the_same_subjects(cf):
    firing = receiver.findings(receiver.parse(raw("webhook_firing.json")), cf)
    resolved = receiver.findings(receiver.parse(raw("webhook_resolved.json")), cf)
    assert resolved.firing == []
    assert sorted(resolved.resolved) == sorted(("alertmanager", f.subject) for f in firing.firing)
    assert all(a.ends_at is not None and a.ends_at >= a.starts_at
               for a in receiver.parse(raw("webhook_resolved.json")).alerts)


def test_the_hostile_variant_parses_and_stays_in_bounds(cf):
    p = receiver.parse(raw("webhook_evil.json"))
    assert p.truncated == 3 and len(p.alerts) == 7
    batch = receiver.findings(p, cf)
    found = by_name(batch)
    # sent firing then resolved in one payload: the last word counts, once
    assert "Twice" not in found
    assert batch.resolved == [("alertmanager", 'Twice{severity="info",shard="shard1"}')]
    # nanoseconds and an offset: the same instant as the recorded one
    times = {a.labels["alertname"]: a.starts_at for a in p.alerts}
    assert times["RedisTooManyConnections"] == pytest.approx(times["HAProxyBackendDown"], abs=1e-3)
    weird = found["Weird<script>alert(1)</script>"]
    assert weird.severity == "warning" and weird.about == {}           # severity "page"; [::1] is nobody
    assert weird.evidence["labels"]["query"] == 'a=b,c="d"{x}'
    assert weird.subject.startswith('Weird<script>alert(1)</script>{emoji="🔥 ünïcödé",')
    listener = found["HAProxyListenerSlow"]
    assert listener.title == "listener slow on chat-testing"               # one line
    assert listener.about == {"shard": "shard0", "host": "chat-testing", "cluster": "testing"}
    assert len(listener.evidence["lines"][0]) <= 300
    long = found["Long"]
    assert long.about == {"shard": "shard0", "host": "redis1"}              # by host name and port
    assert len(long.subject) <= receiver.MAX_SUBJECT and "#" in long.subject
    assert long.subject != receiver.subject({**long.evidence["labels"], "v": "z" * 1024})


def test_silences_match_an_alerts_own_labels(cf):
    f = by_name(receiver.findings(receiver.parse(raw("webhook_firing.json")), cf))["RedisTooManyConnections"]
    row = {"kind": f.kind, "subject": f.subject, "severity": f.severity, "evidence": f.evidence, "about": f.about}
    s = {"matchers": silences.parse(["alertname=RedisTooManyConnections", "shard=shard0"])}
    assert silences.silencing(row, [s]) is s
    assert silences.silencing(row, [{"matchers": silences.parse(["job=haproxy"])}]) is None


# -- refused whole, naming the field --------------------------------------------------------------

def mutated(change) -> dict:
    d = copy.deepcopy(doc())
    change(d)
    return d


REFUSED = [
    (lambda d: d.update(version="3"), "version", 'must be "4"'),
    (lambda d: d.pop("version"), "version", "missing"),
    (lambda d: d.update(status="pending"), "status", "firing or resolved"),
    (lambda d: d.update(alerts={}), "alerts", "list of alerts"),
    (lambda d: d.update(alerts=[]), "alerts", "1 to 1000"),
    (lambda d: d.update(alerts=d["alerts"] * 501), "alerts", "1002 alerts"),
    (lambda d: d.update(truncatedAlerts=-1), "truncatedAlerts", ">= 0"),
    (lambda d: d.update(receiver=7), "receiver", "must be a string"),
    (lambda d: d.update(groupLabels=[]), "groupLabels", "object"),
    (lambda d: d["alerts"][1].update(status="firing!"), "alerts[1].status", "firing or resolved"),
    (lambda d: d["alerts"][1].pop("labels"), "alerts[1].labels", "missing"),
    (lambda d: d["alerts"][0]["labels"].pop("alertname"), "alerts[0].labels.alertname", "missing or empty"),
    (lambda d: d["alerts"][1]["labels"].update(instance=5), "alerts[1].labels.instance", "must be a string"),
    (lambda d: d["alerts"][1]["labels"].update(instance="x" * 1025), "alerts[1].labels.instance", "1024 bytes"),
    (lambda d: d["alerts"][1]["labels"].update(instance="é" * 513), "alerts[1].labels.instance", "1024 bytes"),
    (lambda d: d["alerts"][1]["labels"].update(instance="a\x00b"), "alerts[1].labels.instance", "NUL"),
    (lambda d: d["alerts"][1]["labels"].update({f"l{i}": "v" for i in range(70)}), "alerts[1].labels", "at most 64"),
    (lambda d: d["alerts"][1]["labels"].update({"": "v"}), "alerts[1].labels.''", "label name"),
    (lambda d: d["alerts"][1].update(startsAt="yesterday"), "alerts[1].startsAt", "RFC 3339"),
    (lambda d: d["alerts"][1].pop("startsAt"), "alerts[1].startsAt", "RFC 3339"),
    (lambda d: d["alerts"][1].update(endsAt="2024-02-30T00:00:00Z"), "alerts[1].endsAt", "not a valid time"),
    (lambda d: d["alerts"][1].update(annotations={"summary": ["a"]}), "alerts[1].annotations.summary",
     "must be a string"),
    (lambda d: d["alerts"].append("an alert"), "alerts[2]", "must be an object"),
]


@pytest.mark.parametrize("change,where,says", REFUSED, ids=[f"{w}:{s}" for _, w, s in REFUSED])
def test_a_bad_payload_is_refused_naming_the_field(change, where, says):
    with pytest.raises(BadPayload) as err:
        receiver.parse(json.dumps(mutated(change)).encode())
    assert err.value.field == where, str(err.value)
    assert says in str(err.value) and str(err.value).startswith(f"bad field {where}:")


@pytest.mark.parametrize("body,says", [
    (b"", "empty"), (b"{", "not JSON"), (b"[]", "JSON object"), (b"\xff\xfe{}", "not UTF-8"),
    (b'{"version": NaN}', "not strict JSON"), (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b" " * (receiver.MAX_BODY_BYTES + 1), "larger than"),
])
def test_a_body_that_is_not_a_payload_is_refused(body, says):
    with pytest.raises(BadPayload, match=says):
        receiver.parse(body)


def test_a_label_value_of_exactly_the_limit_is_accepted():
    d = mutated(lambda d: d["alerts"][1]["labels"].update(instance="é" * 512))
    assert receiver.parse(d).alerts[1].labels["instance"] == "é" * 512


@pytest.mark.parametrize("text,epoch", [
    ("1970-01-01T00:00:00Z", 0.0), ("1970-01-01T01:00:00+01:00", 0.0),
    ("1970-01-01T00:00:01.5Z", 1.5), ("1970-01-01T00:00:00.000000001Z", 1e-9),
    ("0001-01-01T00:00:00Z", None),
])
def test_times_as_go_writes_them(text, epoch):
    got = receiver.timestamp(text, "t")
    assert got == (pytest.approx(epoch) if epoch is not None else None)


@pytest.mark.parametrize("instance,expected", [
    ("127.181.105.21:6379", ("127.181.105.21", 6379)), ("redis://127.181.105.22:6379", ("127.181.105.22", 6379)),
    ("[::1]:9121", ("::1", 9121)), ("redis1", ("redis1", None)), ("host:notaport", None), ("", None),
])
def test_instance_forms(instance, expected):
    assert receiver.split_instance(instance) == expected


# -- in incidents, beside chatops' own ------------------------------------------------------------

def test_the_kind_is_registered_but_never_run_or_resolved_by_the_engine():
    assert for_kind("alertmanager").module.EXTERNAL is True
    assert "alertmanager" not in discover()


def row(f, fid: int, first_seen: float = 1000.0) -> dict:
    return {"id": fid, "kind": f.kind, "subject": f.subject, "severity": f.severity, "state": "open",
            "first_seen": first_seen, "last_seen": first_seen, "evidence": f.evidence, "about": f.about,
            "title": f.title, "remediation": None, "runbook": f.runbook, "incident_id": None}


def test_an_alert_on_a_shards_address_groups_with_chatops_own_finding_on_that_shard(cf):
    found = by_name(receiver.findings(receiver.parse(raw("webhook_firing.json")), cf))
    alert = row(found["RedisTooManyConnections"], 1)
    listener = row(found["HAProxyBackendDown"], 2)
    leak = {"id": 3, "kind": "leaked_clients", "subject": "chat-testing->shard0", "severity": "warning",
            "state": "open", "first_seen": 1010.0, "last_seen": 1010.0, "title": "leak",
            "evidence": {}, "about": {"host": "chat-testing", "shard": "shard0", "cluster": "testing"}}
    other = {"id": 4, "kind": "hot_shard", "subject": "shard1", "severity": "warning", "state": "open",
             "first_seen": 1010.0, "last_seen": 1010.0, "title": "hot", "evidence": {}, "about": {"shard": "shard1"}}
    assert incidents.layer(alert) == SHARD and incidents.layer(listener) == PROXY
    groups = incidents.group([alert, listener, leak, other], now=1020.0)
    assert sorted(sorted(f["id"] for f in g) for g in groups) == [[1, 2, 3], [4]]
    chain = incidents.build_chain([alert, listener, leak])
    assert chain["chain"][0]["label"] == "Alertmanager: HAProxyBackendDown on shard0 (chat-testing)"
    assert chain["root"]["finding_id"] == 3          # the leak, below the shard, explains them
