"""collectors.sockdiag: the sock_diag reply parser on a recorded dump and hostile variants, the
live dump against /proc/net/tcp, and the snapshot collectors.process.tcp_sockets shares."""

from __future__ import annotations

import socket
import struct
from pathlib import Path

import pytest

from cluster.loopback import free_prefix
from collectors import process, sockdiag
from collectors.process import TcpEntry, read_proc_net_tcp, tcp_sockets, time_wait_count
from collectors.sockdiag import SockDiagError, parse_replies

# Recorded (tests/fixtures/README.md, sockdiag/): listener 127.177.117.21:6379, 3 clients from .1,
# 2 from .9, two more from .9 that the server closed first (TIME_WAIT on the server's side).
REC = (Path(__file__).resolve().parent.parent / "fixtures" / "sockdiag" / "tcp4_dump.bin").read_bytes()
REC_IP, REC_PORT = "127.177.117.21", 6379


def test_parse_recorded_dump():
    entries, done = parse_replies(REC)
    assert done
    ours = [e for e in entries if e.local_ip == REC_IP]
    assert sum(e.state == "ESTABLISHED" for e in ours) == 5
    assert time_wait_count(entries, REC_PORT, REC_IP) == 2
    by_remote = process.connections_by_remote(entries, REC_PORT, REC_IP)
    assert by_remote == {"127.177.117.1": 3, "127.177.117.9": 2}
    assert TcpEntry("127.177.117.1", 40251, REC_IP, REC_PORT, "ESTABLISHED") in entries


def _messages(data: bytes) -> list[bytes]:
    out, off = [], 0
    while off < len(data):
        n = struct.unpack_from("=I", data, off)[0]
        out.append(data[off:off + n])
        off += (n + 3) & ~3
    return out


@pytest.mark.parametrize("cut", [1, 10, 16, 40, 87])
def test_truncated_reply_is_a_clear_error(cut):
    with pytest.raises(SockDiagError):
        parse_replies(REC[:len(_messages(REC)[0]) * 2 + cut] if cut != 87 else REC[:cut])


def test_hostile_replies():
    first = _messages(REC)[0]
    with pytest.raises(SockDiagError, match="bytes"):        # a length that claims 4 GB
        parse_replies(b"\xff\xff\xff\xff" + first[4:])
    with pytest.raises(SockDiagError, match="bytes"):        # a length below the header's own
        parse_replies(b"\x03\0\0\0" + first[4:])
    with pytest.raises(SockDiagError, match="errno 1"):      # the kernel refuses: EPERM
        parse_replies(struct.pack("=IHHIIi", 20, sockdiag.NLMSG_ERROR, 0, 1, 0, -1))
    with pytest.raises(SockDiagError, match="type 99"):
        parse_replies(struct.pack("=IHHII", 16, 99, 0, 1, 0))
    with pytest.raises(SockDiagError, match="family 7"):
        parse_replies(first[:16] + b"\x07" + first[17:])
    with pytest.raises(SockDiagError):                       # garbage
        parse_replies("élan ☃ \x00 garbage".encode() * 3)
    # an unknown state is named, not dropped; no DONE yet means more datagrams follow
    entries, done = parse_replies(first[:17] + b"\x2a" + first[18:])
    assert entries[0].state == "UNKNOWN(0x2A)" and not done
    assert parse_replies(b"") == ([], False)


def _pairs(n: int):
    """A listener on a private loopback prefix (no other socket of the host is on it) and n
    connections to it: (listener address, port, every socket)."""
    prefix = free_prefix()
    ls = socket.socket()
    ls.bind((f"{prefix}.21", 0))
    ls.listen(8)
    port = ls.getsockname()[1]
    socks = [ls]
    for _ in range(n):
        c = socket.socket()
        c.bind((f"{prefix}.1", 0))
        c.connect((f"{prefix}.21", port))
        socks += [c, ls.accept()[0]]
    return f"{prefix}.21", port, socks


def test_live_dump_matches_proc():
    ip, port, socks = _pairs(1)
    try:
        diag = {e for e in sockdiag.dump_tcp() if ip in (e.local_ip, e.remote_ip)}
        proc = {e for e in read_proc_net_tcp(ports=[port])
                if e.state != "LISTEN" and ip in (e.local_ip, e.remote_ip)}
        assert diag == proc and len(diag) == 2
        assert set(tcp_sockets(endpoints=[(ip, port)])) == diag
    finally:
        for x in socks:
            x.close()


def test_tcp_sockets_is_shared_then_refreshed(tmp_path):
    (tmp_path / "net").mkdir()
    src = Path(__file__).resolve().parent.parent / "fixtures" / "proc" / "net_tcp.txt"
    (tmp_path / "net" / "tcp").write_text(src.read_text())
    first = tcp_sockets(tmp_path, max_age=60)
    assert first and all(e.state != "LISTEN" for e in first)
    (tmp_path / "net" / "tcp").write_text(src.read_text().splitlines()[0] + "\n")
    assert tcp_sockets(tmp_path, max_age=60) == first       # within max_age: the same snapshot
    assert tcp_sockets(tmp_path, max_age=0) == []           # older than max_age: read again


def test_kernel_filter_keeps_exactly_those_endpoints():
    ip, port, socks = _pairs(3)
    try:
        client = socks[1].getsockname()                 # one client's own end: matched as either end
        for wanted in ({(ip, port)}, {client, ("::1", 1)}, {(None, port)}):
            filtered = sockdiag.dump_tcp(sockdiag.ALL_STATES, endpoints=wanted)
            everything = process._only(sockdiag.dump_tcp(sockdiag.ALL_STATES), frozenset(wanted))
            ours = {e for e in filtered if ip in (e.local_ip, e.remote_ip)}
            assert ours == {e for e in everything if ip in (e.local_ip, e.remote_ip)}
            assert len(ours) == (7 if port in {p for _, p in wanted} else 2)    # listener + 3 pairs
    finally:
        for s in socks:
            s.close()


@pytest.mark.parametrize("endpoints", [[], [(None, 0)], [(None, 65536)], [("127.0.0.1", -5)],
                                       [("not-an-ip", 80)], [("127.0.0.1", "80")], [("☃", 80)]])
def test_endpoint_filter_refuses_bad_endpoints(endpoints):
    with pytest.raises(ValueError, match="ports|address"):
        sockdiag.endpoint_filter(endpoints)


def test_tcp_sockets_takes_names_that_match_nothing():
    ip, port, socks = _pairs(1)
    try:
        got = tcp_sockets(endpoints=[("redis1.example", port), (ip, port)])
        assert len([e for e in got if ip in (e.local_ip, e.remote_ip)]) == 2
        # a port out of range (a hand-edited state file) matches nothing instead of raising
        assert tcp_sockets(endpoints=[(ip, 0), (None, 70000)]) == []
    finally:
        for s in socks:
            s.close()
