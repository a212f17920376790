"""collectors.sockdiag: the sock_diag reply parser on a recorded dump and hostile variants, the
live dump against /proc/net/tcp, and the snapshot collectors.process.tcp_sockets shares."""

from __future__ import annotations

import socket
import struct
from pathlib import Path

import pytest

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


def test_live_dump_matches_proc():
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(4)
    port = ls.getsockname()[1]
    c = socket.create_connection(("127.0.0.1", port))
    s, _ = ls.accept()
    try:
        diag = {e for e in sockdiag.dump_tcp() if port in (e.local_port, e.remote_port)}
        proc = {e for e in read_proc_net_tcp(ports=[port]) if e.state != "LISTEN"}
        assert diag == proc and len(diag) == 2
        assert set(tcp_sockets(ports=[port])) == diag
    finally:
        for x in (c, s, ls):
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


def test_kernel_port_filter_keeps_exactly_those_ports():
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(8)
    port = ls.getsockname()[1]
    socks = [ls]
    try:
        for _ in range(3):
            socks += [socket.create_connection(("127.0.0.1", port)), ls.accept()[0]]
        other = socks[1].getsockname()[1]           # one client's own port: matched as either end
        wanted = {port, other, 1}
        filtered = sockdiag.dump_tcp(sockdiag.ALL_STATES, ports=wanted)
        everything = [e for e in sockdiag.dump_tcp(sockdiag.ALL_STATES)
                      if e.local_port in wanted or e.remote_port in wanted]
        assert set(filtered) == set(everything)
        # listener + 3 pairs (other sockets of the host may share the client's port number)
        assert sum(port in (e.local_port, e.remote_port) for e in filtered) == 7
    finally:
        for s in socks:
            s.close()


@pytest.mark.parametrize("ports", [[], [0], [65536], [-5]])
def test_port_filter_refuses_bad_ports(ports):
    with pytest.raises(ValueError, match="ports"):
        sockdiag.port_filter(ports)
