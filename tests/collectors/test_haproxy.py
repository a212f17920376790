"""The HAProxy collector: parsers on real captures (tests/fixtures/README.md) and hostile variants,
then live against a real `chatops up` cluster: collect() and `chatops inspect haproxy`. Changing a
server's weight or state is tests/controlplane/remediation/test_server_state.py."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest

from cluster.rundir import RunDir
from collectors import haproxy
from tests.conftest import (
    chatops,
    small_cluster,
    write_cluster,
)

FIX = Path(__file__).parent.parent / "fixtures" / "haproxy"


# -- parsers on real captures --

def test_show_stat_real_capture():
    t = haproxy.parse_stat_csv((FIX / "show_stat.csv").read_text())
    assert t.unparsed == []
    assert len(t.rows) == 13
    assert {r.proxy for r in t.frontends} == {"redis-shard0", "redis-shard1", "fe_edge_main",
                                              "fe_edge_ws_main", "stats"}
    fe = t.get("redis-shard0", "FRONTEND")
    assert fe.kind == "frontend" and fe.status == "OPEN"
    assert (fe.scur, fe.smax, fe.slim, fe.stot) == (0, 2, 4000, 50)
    assert (fe.bin, fe.bout) == (700, 350)
    assert fe.qcur is None and fe.conn_rate == 50 and fe.rate_max == 50
    srv = t.get("redis-shard0", "shard0")
    assert srv.kind == "server" and srv.status == "UP" and srv.weight == 1
    assert srv.check_status == "L7OK" and srv.check_duration == 0
    assert srv.addr.endswith(":6379") and srv.lastchg == 6 and srv.downtime == 0
    assert (srv.econ, srv.eresp, srv.wretr, srv.wredis) == (0, 0, 0, 0)
    be = t.get("be_edge_main", "BACKEND")
    assert be.kind == "backend" and be.slim == 400 and be.downtime == 2
    assert [s.name for s in t.servers if s.proxy == "be_edge_main"] == ["chat1"]
    http = t.get("stats", "FRONTEND")
    assert http.req_rate == 0 and http.ereq == 2


def test_stats_page_csv_is_the_same_format():
    page = haproxy.parse_stat_csv((FIX / "stats_page.csv").read_text())
    sock = haproxy.parse_stat_csv((FIX / "show_stat.csv").read_text())
    assert page.unparsed == [] and page.columns == sock.columns
    assert [(r.proxy, r.name) for r in page.rows] == [(r.proxy, r.name) for r in sock.rows]


def test_show_info_real_capture():
    info = haproxy.parse_info((FIX / "show_info.txt").read_text())
    assert info["Name"] == "HAProxy" and info["Version"].startswith("2.6.")
    assert info["Pid"] == 8270 and info["Maxconn"] == 4000 and info["CumConns"] == 164
    assert info["Uptime"] == "0d 0h00m05s" and info["Unstoppable Jobs"] == 1
    assert info["Build info"] == "2.6.12-1+deb12u4"


def test_show_servers_state_real_capture():
    s = haproxy.parse_servers_state((FIX / "show_servers_state.txt").read_text())
    assert s.version == 1 and s.unparsed == []
    assert [(r["be_name"], r["srv_name"]) for r in s.servers] == [
        ("redis-shard0", "shard0"), ("redis-shard1", "shard1"), ("be_edge_main", "chat1"),
        ("be_edge_ws_main", "chat1")]
    first = s.servers[0]
    assert first["srv_op_state"] == 2 and first["srv_admin_state"] == 0 and first["srv_uweight"] == 1
    assert first["srv_port"] == 6379 and first["srv_fqdn"] is None
    assert isinstance(first["srv_addr"], str)


def test_worker_exit_codes_from_the_master_log():
    log = ("[NOTICE]   (8266) : New worker (9173) forked\n"
           "[WARNING]  (8266) : Former worker (8270) exited with code 0 (Exit)\n"
           "[ALERT]    (8266) : Current worker (9173) exited with code 139 (Segmentation fault)\n")
    assert haproxy.parse_worker_exits(log) == {8270: 0, 9173: 139}


# -- hostile input --

def test_evil_show_stat_keeps_good_rows_and_counts_bad_ones():
    t = haproxy.parse_stat_csv((FIX / "show_stat_evil.csv").read_text())
    # truncated row, two garbage lines, non-numeric type: four rows lost, all reported
    assert len(t.unparsed) == 4
    assert any(u.startswith("redis-shard1,FRONTEND") for u in t.unparsed)
    assert any("garbage" in u for u in t.unparsed)
    assert any(u.startswith("fe_edge_main,FRONTEND") for u in t.unparsed)
    # unknown columns from a newer release are ignored, the known ones still line up
    assert "x_future_metric" in t.columns
    fe = t.get("redis-shard0", "FRONTEND")
    assert (fe.scur, fe.smax, fe.slim, fe.stot) == (0, 2, 4000, 50)
    # quoted commas stay inside their field: the columns after check_desc are not shifted
    srv = t.get("redis-shard0", "shard0")
    assert srv.check_status == "L7STS" and srv.addr.endswith(":6379") and srv.weight == 1
    edge = t.get("be_edge,main", "chat1")
    assert edge is not None and edge.kind == "server" and edge.addr.endswith(":16667")
    assert len(t.rows) == 4


@pytest.mark.parametrize("text", ["", "\n", (FIX / "show_stat_empty.csv").read_text(),
                                  "garbage\x00\xff", "# \n", "# foo,bar\n1,2\n", "\"unterminated,\n",
                                  "Unknown command. Please enter one of the following commands only :\n"])
def test_empty_or_garbage_stat(text):
    t = haproxy.parse_stat_csv(text)
    assert t.rows == []


def test_stray_quote_costs_only_its_row():
    real = (FIX / "show_stat.csv").read_text().splitlines()
    text = "\n".join([real[0], real[1], 'bad,"row,never closed', real[2], real[3]]) + "\n"
    t = haproxy.parse_stat_csv(text)
    assert [(r.proxy, r.name) for r in t.rows] == [("redis-shard0", "FRONTEND"), ("redis-shard0", "shard0"),
                                                  ("redis-shard0", "BACKEND")]
    assert len(t.unparsed) == 1


@pytest.mark.parametrize("text", ["", "garbage", "1\n", "1\n# a b c\n1 2\n", "x y z\n"])
def test_garbage_servers_state_and_info(text):
    s = haproxy.parse_servers_state(text)
    assert s.servers == []
    assert isinstance(haproxy.parse_info(text), dict)


def test_collect_with_no_socket_is_down_with_the_error(tmp_path):
    obs = haproxy.collect(haproxy.target_for(RunDir(tmp_path), "chat1"))
    assert obs.up is False and obs.data is None
    assert "No such file" in obs.error and obs.source == "haproxy" and obs.target == "chat1"


# -- live, against a real cluster --

@pytest.fixture(scope="module")
def live(live_small_cluster):
    return live_small_cluster


def test_collect_live(live):
    rc, cf, run = live
    obs = haproxy.collect(haproxy.target_for(run, "chat1"))
    assert obs.up is True and obs.error is None and obs.section_errors == {}
    stat = obs.data.stat
    assert stat.unparsed == []
    shards = {r.proxy for r in stat.frontends if r.proxy.startswith("redis-")}
    assert shards == {"redis-shard0", "redis-shard1"}
    assert stat.get("be_edge_main", "chat1") is not None and stat.get("be_edge_main", "BACKEND") is not None
    assert obs.data.info["Name"] == "HAProxy" and isinstance(obs.data.info["Pid"], int)
    assert obs.data.proc.master_pid and obs.data.info["Pid"] in obs.data.proc.workers
    http = haproxy.fetch_stat_http(cf.address("chat1"), cf.haproxy.stats_port)
    assert {(r.proxy, r.name) for r in http.rows} == {(r.proxy, r.name) for r in stat.rows}
    as_dict = obs.as_dict()
    json.dumps(as_dict, default=str)
    assert as_dict["up"] is True and as_dict["data"]["stat"]["rows"]


def test_collect_live_master_socket_gone_is_a_section_error(live, tmp_path):
    rc, cf, run = live
    # A run dir whose admin socket is the live one but whose master socket is missing.
    fake = RunDir(tmp_path)
    (tmp_path / "haproxy").mkdir()
    (tmp_path / "haproxy" / "chat1.sock").symlink_to(run.haproxy_socket("chat1"))
    obs = haproxy.collect(haproxy.target_for(fake, "chat1"))
    assert obs.up is True and obs.data.stat.rows and obs.data.info
    assert "proc" in obs.section_errors and obs.data.proc is None


def test_inspect_haproxy_cli_live(live):
    rc, cf, run = live
    args = ["--config", str(rc.config), "--run-dir", str(rc.run)]
    out = chatops("inspect", "haproxy", "chat1", *args)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    header = next(l for l in lines if l.startswith("PROXY"))
    for col in ("SERVER", "STATUS", "SCUR", "SMAX", "SLIM", "QCUR", "RATE", "ECON", "CHECK"):
        assert col in header
    assert any(l.split()[:3] == ["redis-shard0", "shard0", "UP"] for l in lines if l.strip())
    assert any(l.startswith("be_edge_main") for l in lines)
    assert any(l.startswith("master pid") and "reloads 0" in l and "old workers none" in l for l in lines)

    js = chatops("inspect", "haproxy", "chat1", "--json", *args)
    assert js.returncode == 0, js.stderr
    doc = json.loads(js.stdout)
    assert doc["source"] == "haproxy" and doc["target"] == "chat1" and doc["up"] is True
    assert any(r["proxy"] == "redis-shard1" and r["kind"] == "server" for r in doc["data"]["stat"]["rows"])

    unknown = chatops("inspect", "haproxy", "redis1", *args)
    assert unknown.returncode == 2 and "chat1, chat-testing" in unknown.stderr


def test_inspect_haproxy_cli_unreachable(tmp_path):
    config = write_cluster(tmp_path / "c.yaml", small_cluster("127.0.78"))
    run = Path(tempfile.mkdtemp(prefix="co-", dir="/tmp"))
    try:
        out = chatops("inspect", "haproxy", "chat1", "--config", str(config), "--run-dir", str(run))
        assert out.returncode == 1 and "unreachable" in out.stderr and "No such file" in out.stderr
    finally:
        shutil.rmtree(run, ignore_errors=True)
