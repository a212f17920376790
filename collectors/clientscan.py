"""ctypes binding for collectors/clientscan.c, CLIENT LIST counted per source IP in one C pass.

`make` builds collectors/_clientscan.so (any C compiler; no Python headers). Without it
collectors/clients.py parses and counts in Python -- the same results, about 6x the CPU on
10,000 clients (bench/clientlist.py); `AVAILABLE` and `LOAD_ERROR` say which, and
`chatops inspect clients` reports it.
"""

from __future__ import annotations

import ctypes
import math
from dataclasses import dataclass
from pathlib import Path

from collectors import native

LIBRARY = Path(__file__).with_name("_clientscan.so")
SOURCE = LIBRARY.with_name("clientscan.c")     # shipped in the wheel too, so an install can build it
BUILD_HINT = native.build_hint(LIBRARY, SOURCE)
_INT64_MAX, _INT64_MIN = 2**63 - 1, -2**63
_SHORTEST_LINE = 20       # "addr=a:1 age=1 idle=1": no reply holds more usable lines than len // 20 + 1


class _Ip(ctypes.Structure):
    _fields_ = [("off", ctypes.c_int64), ("count", ctypes.c_int64), ("idle_over", ctypes.c_int64),
                ("idle_over_long", ctypes.c_int64), ("unused", ctypes.c_int64),
                ("oldest_age", ctypes.c_int64), ("max_idle", ctypes.c_int64), ("len", ctypes.c_int32),
                ("pad", ctypes.c_int32)]


class _Cmd(ctypes.Structure):
    _fields_ = [("off", ctypes.c_int64), ("count", ctypes.c_int64), ("len", ctypes.c_int32),
                ("ip", ctypes.c_int32)]


class _Top(ctypes.Structure):
    _fields_ = [("start", ctypes.c_int64), ("end", ctypes.c_int64), ("ip_off", ctypes.c_int64),
                ("idle", ctypes.c_int64), ("ip_len", ctypes.c_int32), ("pad", ctypes.c_int32)]


def _load() -> tuple[ctypes.CDLL | None, str | None]:
    lib, error = native.open_library(LIBRARY, BUILD_HINT)
    if lib is None:
        return None, error
    fn = lib.clientscan
    fn.restype = ctypes.c_int64
    i32p, i64p = ctypes.POINTER(ctypes.c_int32), ctypes.POINTER(ctypes.c_int64)
    fn.argtypes = [ctypes.c_char_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                   ctypes.POINTER(_Ip), ctypes.c_int32, i32p, ctypes.POINTER(_Cmd), ctypes.c_int32, i32p,
                   ctypes.POINTER(_Top), ctypes.c_int32, i32p, i64p, i64p]
    return lib, None


_LIB, LOAD_ERROR = _load()
AVAILABLE = _LIB is not None


def threshold(t: float) -> int:
    """The int64 n with `idle > n` exactly when Python's `idle > t` for every int64 idle (NaN: never)."""
    if math.isnan(t) or t >= _INT64_MAX:
        return _INT64_MAX
    if t < _INT64_MIN:
        return _INT64_MIN
    return math.floor(t)


@dataclass(slots=True)
class IpRow:
    ip: bytes                  # as written in addr= ("[::1]" keeps its brackets)
    count: int
    idle_over: int
    idle_over_long: int
    unused: int
    oldest_age: int
    max_idle: int              # the largest idle over idle_after, else 0


@dataclass(slots=True)
class Scan:
    ips: list[IpRow]                       # in the order each IP first appears in the reply
    cmds: list[tuple[int, bytes, int]]     # (index into ips, cmd, count), in order of first appearance
    top: list[tuple[int, int, bytes]]      # (line start, line end, ip) of the most idle, most idle first
    lines: int                             # non-empty lines
    skipped: int                           # lines without a usable addr/age/idle


def scan(data: bytes, idle_after: float, long_idle: float, unused_after: int, top_n: int) -> Scan:
    """One pass over a CLIENT LIST reply; raises RuntimeError when the library is not loaded."""
    if _LIB is None:
        raise RuntimeError(LOAD_ERROR)
    top_cap = max(0, min(top_n, len(data) // _SHORTEST_LINE + 1))
    top = (_Top * top_cap)()
    max_ips, max_cmds = 64, 256
    ni, nc, nt = ctypes.c_int32(), ctypes.c_int32(), ctypes.c_int32()
    lines, skipped = ctypes.c_int64(), ctypes.c_int64()
    while True:
        ips, cmds = (_Ip * max_ips)(), (_Cmd * max_cmds)()
        rc = _LIB.clientscan(data, len(data), threshold(idle_after), threshold(long_idle), unused_after,
                             ips, max_ips, ctypes.byref(ni), cmds, max_cmds, ctypes.byref(nc),
                             top, top_cap, ctypes.byref(nt), ctypes.byref(lines), ctypes.byref(skipped))
        if rc == 0:
            break
        if rc < 0:
            raise MemoryError("clientscan could not allocate its tables")
        # More distinct IPs or (IP, cmd) pairs than rows: rare (one per client at worst), so grow and rescan.
        if ni.value == max_ips:
            max_ips *= 4
        if nc.value == max_cmds:
            max_cmds *= 4
    rows = [IpRow(data[r.off:r.off + r.len], r.count, r.idle_over, r.idle_over_long, r.unused, r.oldest_age,
                  r.max_idle) for r in ips[:ni.value]]
    return Scan(rows, [(c.ip, data[c.off:c.off + c.len], c.count) for c in cmds[:nc.value]],
                [(t.start, t.end, data[t.ip_off:t.ip_off + t.ip_len]) for t in top[:nt.value]],
                lines.value, skipped.value)
