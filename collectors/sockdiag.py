"""TCP sockets from the kernel's sock_diag netlink interface, the way `ss` asks for them.

Why not /proc/net/tcp: the kernel prints that table as text, walking its whole connection hash
for every read() chunk, and the control plane read it for each of its 13 sources every 2 s. On
this machine (2 cores, ~400 TCP sockets on the host) one read of tcp+tcp6 cost ~9 ms of CPU and
a sock_diag dump of the same sockets ~1.9 ms. The host often holds tens of thousands of other
sockets (other clusters on the same port numbers, benchmarks): with 32,000 a full dump cost
~67 ms, a port-only filter ~61 ms (the others' sockets share the ports), a filter on one
address and port ~6.5 ms, the kernel's walk (`python -m bench.scrape` measures the control
plane as a whole).

- `request(family, states, endpoints=None)` -> bytes: one SOCK_DIAG_BY_FAMILY dump request
  (nlmsghdr + inet_diag_req_v2) for TCP sockets of `family` in the states of the `states` bit
  mask; with `endpoints` [(ip or None, port)], an inet_diag bytecode filter (`endpoint_filter`)
  so the kernel sends only the sockets with one of them on either end, as
  `ss '( src ip:p or dst ip:p )'` does.
- `parse_replies(data)` -> (entries, done): pure parser of the bytes of one or more netlink
  reply datagrams: [collectors.process.TcpEntry] plus whether NLMSG_DONE was seen. Raises
  `SockDiagError` (a ValueError) on a truncated or malformed message and on NLMSG_ERROR.
- `dump_tcp(states=..., families=(AF_INET, AF_INET6), timeout=1.0, endpoints=None)` ->
  [TcpEntry]: the I/O.
  Raises OSError (SockDiagError included) when netlink is unavailable (no AF_NETLINK, a
  sandbox without sock_diag): callers fall back to /proc.
"""

from __future__ import annotations

import functools
import socket
import struct

from collectors.process import TCP_STATES, TcpEntry

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300

ESTABLISHED, TIME_WAIT = 1, 6
STATES_ESTABLISHED_TIME_WAIT = (1 << ESTABLISHED) | (1 << TIME_WAIT)
ALL_STATES = 0xFFF

_NLMSGHDR = struct.Struct("=IHHII")                 # len, type, flags, seq, pid
# inet_diag_msg: family, state, timer, retrans, then inet_diag_sockid: sport and dport in network
# order, src and dst as 16 bytes each (IPv4 uses the first 4), interface, cookie[2]; then
# expires, rqueue, wqueue, uid, inode.
_DIAG_MSG = struct.Struct("=BBBB2s2s16s16sI8sIIIII")
_REQ = struct.Struct("=BBBBI2s2s16s16sI8s")         # inet_diag_req_v2


class SockDiagError(OSError, ValueError):
    """A netlink reply that cannot be read, or the kernel's refusal (NLMSG_ERROR)."""


INET_DIAG_REQ_BYTECODE = 1
# INET_DIAG_BC_JMP, S_COND, D_COND, S_EQ, D_EQ (the port equality tests: Linux 4.16+)
_JMP, _S_COND, _D_COND, _S_EQ, _D_EQ = 1, 7, 8, 11, 12
_OP = struct.Struct("=BBH")                         # inet_diag_bc_op: code, yes, no


def _hostcond(code: int, ip: str, port: int) -> bytes:
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    addr = socket.inet_pton(family, ip)
    cond = struct.pack("=BBxxi", family, 8 * len(addr), port) + addr    # inet_diag_hostcond
    return _OP.pack(code, 4 + len(cond), 8 + len(cond)) + cond


def endpoint_filter(endpoints) -> bytes:
    """inet_diag bytecode keeping sockets with one of `endpoints` (ip, port) on either end (ip
    None: any address on that port), so the kernel sends only those. Compiled the way `ss`
    compiles `src ip:p or dst ip:p or ...`: each test (a port equality test, or a host
    condition whose port field must match too) goes on to the next op when true and 4 bytes past
    its own end when false; between two tests a JMP sends "true" past the rest (accept) while
    "false" lands on the next test; past the last test's end is reject. The kernel accepts only
    jump targets reachable by following every op's "true" branch from the start, which is why
    "true" cannot jump straight to the end. Raises ValueError on a bad port or address."""
    tests = []
    for ip, port in sorted(set(endpoints), key=lambda e: (e[1], e[0] or "")):
        if not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError(f"ports must be 1..65535, got {port!r}")
        if ip is None:
            tests += [_OP.pack(code, 8, 12) + _OP.pack(0, 0, port) for code in (_S_EQ, _D_EQ)]
        else:
            try:
                tests += [_hostcond(code, ip, port) for code in (_S_COND, _D_COND)]
            except OSError as exc:          # inet_pton: not an address
                raise ValueError(f"not an IP address: {ip!r}") from exc
    if not tests:
        raise ValueError("no ports to filter on")
    out = b""
    for leaf in reversed(tests):
        out = leaf + (_OP.pack(_JMP, 4, len(out) + 4) + out if out else b"")
    if len(out) > 65000:
        raise ValueError(f"too many endpoints for one filter: {len(tests) // 2}")
    return out


def port_filter(ports) -> bytes:
    """endpoint_filter on any address of each of `ports`."""
    return endpoint_filter((None, p) for p in ports)


def request(family: int, states: int, seq: int = 1, endpoints=None) -> bytes:
    body = _REQ.pack(family, socket.IPPROTO_TCP, 0, 0, states, b"\0\0", b"\0\0", b"\0" * 16, b"\0" * 16,
                     0, b"\0" * 8)
    if endpoints is not None:
        bc = endpoint_filter(endpoints)
        body += struct.pack("=HH", 4 + len(bc), INET_DIAG_REQ_BYTECODE) + bc
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP,
                          seq, 0) + body


@functools.lru_cache(maxsize=4096)
def _ip(family: int, raw: bytes) -> str:
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    if raw[:12] == b"\0" * 10 + b"\xff\xff":        # IPv4-mapped: the same dotted form /proc gives
        return socket.inet_ntop(socket.AF_INET, raw[12:])
    return socket.inet_ntop(socket.AF_INET6, raw)


def parse_replies(data: bytes) -> tuple[list[TcpEntry], bool]:
    entries: list[TcpEntry] = []
    off, end = 0, len(data)
    while off < end:
        if end - off < _NLMSGHDR.size:
            raise SockDiagError(f"truncated netlink header at byte {off} of {end}")
        length, kind, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data, off)
        if length < _NLMSGHDR.size or off + length > end:
            raise SockDiagError(f"netlink message of {length} bytes at byte {off} of {end}")
        if kind == NLMSG_DONE:
            return entries, True
        if kind == NLMSG_ERROR:
            code = struct.unpack_from("=i", data, off + 16)[0] if length >= 20 else 0
            raise SockDiagError(f"sock_diag refused the dump: errno {-code}")
        if kind != SOCK_DIAG_BY_FAMILY:
            raise SockDiagError(f"unexpected netlink message type {kind}")
        if length < _NLMSGHDR.size + _DIAG_MSG.size:
            raise SockDiagError(f"inet_diag_msg of {length - _NLMSGHDR.size} bytes, want {_DIAG_MSG.size}")
        family, state, _t, _r, sport, dport, src, dst = _DIAG_MSG.unpack_from(data, off + _NLMSGHDR.size)[:8]
        if family not in (socket.AF_INET, socket.AF_INET6):
            raise SockDiagError(f"address family {family} in a TCP dump")
        name = TCP_STATES.get(state) or f"UNKNOWN(0x{state:02X})"
        entries.append(TcpEntry(_ip(family, src), int.from_bytes(sport, "big"), _ip(family, dst),
                                int.from_bytes(dport, "big"), name))
        off += (length + 3) & ~3
    return entries, False


BOTH_FAMILIES = (socket.AF_INET, socket.AF_INET6)


def dump_tcp(states: int = STATES_ESTABLISHED_TIME_WAIT, families: tuple[int, ...] = BOTH_FAMILIES,
             timeout: float = 1.0, endpoints=None) -> list[TcpEntry]:
    """`endpoints`: only sockets with one of these (ip or None, port) on either end, filtered in
    the kernel (the host may hold thousands of other sockets, other clusters' on the same port
    numbers included: building an entry for each cost ~3 us)."""
    entries: list[TcpEntry] = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG) as s:
        s.settimeout(timeout)
        for seq, family in enumerate(families, 1):
            s.sendto(request(family, states, seq, endpoints), (0, 0))
            while True:
                got, done = parse_replies(s.recv(1 << 16))
                entries += got
                if done:
                    break
    return entries
