"""pipeline.decide: route -> silence -> group/dedup, pure, on plain rows with a fake clock."""

from __future__ import annotations

from controlplane.alerting.pipeline import Route, decide, due, muted, routed

R = Route("slack", "warning", None, group_wait=30, group_interval=300, repeat_interval=14400)
T0 = 1_000_000.0


def inc(iid=1, state="open", severity="warning", opened=T0, **kw):
    return {"id": iid, "state": state, "severity": severity, "opened": opened, **kw}


def finding(fid=1, state="open", cluster="testing", **labels):
    return {"id": fid, "kind": "leaked_clients", "subject": f"s{fid}", "severity": "warning", "state": state,
            "about": {"cluster": cluster, **labels} if cluster is not None else labels}


def row(event, created, rid=None, severity="warning", state="open", destination="slack", iid=1, key=None):
    row.n = getattr(row, "n", 0) + 1
    return {"id": rid or row.n, "event": event, "created": created, "severity": severity, "state": state,
            "destination": destination, "incident_id": iid, "dedup_key": key or f"incident/{iid}/{event}"}


def events(route, incident, findings, history, now):
    d = due(route, incident, findings, history, now)
    return None if d is None else (d.event, d.dedup_key)


def test_opened_waits_for_group_wait():
    fs = [finding()]
    assert events(R, inc(), fs, [], T0 + 29) is None
    assert events(R, inc(), fs, [], T0 + 30) == ("opened", "incident/1/opened")


def test_twenty_findings_are_one_notification_and_joining_findings_send_nothing():
    fs = [finding(i) for i in range(20)]
    assert [d.event for d in decide([R], [(inc(), fs)], [], [], T0 + 31)] == ["opened"]
    told = [row("opened", T0 + 31)]
    more = fs + [finding(i) for i in range(20, 40)]
    for t in (T0 + 40, T0 + 400, T0 + 4000):
        assert decide([R], [(inc(), more)], told, [], t) == []


def test_resolved_within_group_wait_sends_nothing_and_after_opened_sends_resolved_after_group_interval():
    fs = [finding(state="resolved")]
    assert events(R, inc(state="resolved"), fs, [], T0 + 100) is None
    told = [row("opened", T0 + 30)]
    assert events(R, inc(state="resolved"), fs, told, T0 + 100) is None         # group_interval
    assert events(R, inc(state="resolved"), fs, told, T0 + 330) == ("resolved", "incident/1/resolved")
    assert events(R, inc(state="resolved"), fs, told + [row("resolved", T0 + 330)], T0 + 9999) is None


def test_only_the_current_state_is_sent():
    told = [row("opened", T0 + 30)]
    # acknowledged and then resolved inside one group_interval: only "resolved" goes
    assert events(R, inc(state="resolved"), [finding(state="resolved")], told, T0 + 400)[0] == "resolved"
    assert events(R, inc(state="acknowledged"), [finding()], told, T0 + 400)[0] == "acknowledged"
    # acknowledged already told by the opened message itself (acknowledged within group_wait)
    told_acked = [row("opened", T0 + 30, state="acknowledged")]
    assert events(R, inc(state="acknowledged"), [finding()], told_acked, T0 + 400) is None


def test_severity_raised_once_per_severity():
    told = [row("opened", T0 + 30)]
    assert events(R, inc(severity="critical"), [finding()], told, T0 + 100) is None
    assert events(R, inc(severity="critical"), [finding()], told, T0 + 400) == \
        ("severity", "incident/1/severity/critical")
    told.append(row("severity", T0 + 400, severity="critical"))
    assert events(R, inc(severity="critical"), [finding()], told, T0 + 800) is None
    # a lower severity is no news
    assert events(R, inc(severity="warning"), [finding()], told, T0 + 800) is None


def test_repeat_after_repeat_interval_while_open_not_when_acknowledged():
    told = [row("opened", T0 + 30)]
    assert events(R, inc(), [finding()], told, T0 + 30 + 14399) is None
    assert events(R, inc(), [finding()], told, T0 + 30 + 14400) == ("repeat", "incident/1/repeat/1")
    told.append(row("repeat", T0 + 30 + 14400))
    assert events(R, inc(), [finding()], told, T0 + 30 + 2 * 14400) == ("repeat", "incident/1/repeat/2")
    told_ack = [row("opened", T0 + 30), row("acknowledged", T0 + 400, state="acknowledged")]
    assert events(R, inc(state="acknowledged"), [finding()], told_ack, T0 + 99999) is None


def test_routing_by_min_severity_sends_an_incident_when_it_rises_to_it():
    crit = Route("pager", "critical", None, 30, 300, 14400)
    assert events(crit, inc(), [finding()], [], T0 + 100) is None
    assert events(crit, inc(severity="critical"), [finding()], [], T0 + 100)[0] == "opened"
    # a destination that was never told gets nothing else
    assert events(crit, inc(state="resolved"), [finding(state="resolved")], [], T0 + 999) is None


def test_routing_by_cluster_a_shards_finding_is_every_clusters():
    main = Route("main-only", "info", ("main",), 30, 300, 14400)
    assert not routed(main, inc(), [finding(cluster="testing")])
    assert routed(main, inc(), [finding(cluster="testing"), finding(2, cluster="main")])
    assert routed(main, inc(), [finding(cluster=None, shard="shard1")])
    assert routed(main, inc(), [finding(cluster="", shard="shard1")])
    # the resolved finding of another cluster does not route an open incident
    assert not routed(main, inc(), [finding(cluster="testing"), finding(2, cluster="main", state="resolved")])


def test_silences_mute_only_when_every_open_finding_is_silenced():
    s = [{"id": 1, "matchers": [{"name": "cluster", "op": "=", "value": "testing"}]}]
    fs = [finding(1), finding(2, cluster="main")]
    assert not muted(inc(), fs, s)
    assert muted(inc(), [finding(1), finding(2, cluster="main", state="resolved")], s)
    # resolved: every finding counts
    assert not muted(inc(state="resolved"), [finding(1, state="resolved"), finding(2, cluster="main",
                                                                                 state="resolved")], s)
    assert not muted(inc(), [], s)
    assert decide([R], [(inc(), [finding(1)])], [], s, T0 + 100) == []
    assert [d.event for d in decide([R], [(inc(), fs)], [], s, T0 + 100)] == ["opened"]


def test_each_destination_is_decided_on_its_own_history():
    other = Route("hook", "info", None, 1, 1, 14400)
    told = [row("opened", T0 + 30, destination="slack")]
    got = decide([R, other], [(inc(), [finding()])], told, [], T0 + 31)
    assert [(d.destination, d.event) for d in got] == [("hook", "opened")]
