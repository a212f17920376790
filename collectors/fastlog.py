"""ctypes binding for collectors/fastlog.c, the log collector's compiled fast path.

`make` builds collectors/_fastlog.so (any C compiler; no Python headers). Without it the collector
still works -- every line takes the pure-Python path -- only about 4x slower; `AVAILABLE` and
`LOAD_ERROR` say which, and `chatops inspect logs` reports it.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path

from collectors import native

MAX_EXAMPLES = 8          # fastlog.c's MAX_EXAMPLES
KINDS = ("timeout", "success", "connection_refused", "io_timeout", "message_sent", "slow_consumer",
         "other")         # fastlog.c's enum order
LIBRARY = Path(__file__).with_name("_fastlog.so")
SOURCE = LIBRARY.with_name("fastlog.c")     # shipped in the wheel too, so an install can build it
BUILD_HINT = native.build_hint(LIBRARY, SOURCE)


class _Group(ctypes.Structure):
    _fields_ = [("svc_off", ctypes.c_int64), ("rem_off", ctypes.c_int64),
                ("svc_len", ctypes.c_int32), ("rem_len", ctypes.c_int32),
                ("kind", ctypes.c_int32), ("month", ctypes.c_int32), ("day", ctypes.c_int32),
                ("start", ctypes.c_int32), ("clock", ctypes.c_int32), ("nex", ctypes.c_int32),
                ("count", ctypes.c_int64),
                ("ex_off", ctypes.c_int64 * MAX_EXAMPLES), ("ex_len", ctypes.c_int32 * MAX_EXAMPLES)]


def _load() -> tuple[ctypes.CDLL | None, str | None]:
    lib, error = native.open_library(LIBRARY, BUILD_HINT)
    if lib is None:
        return None, error
    fn = lib.fastlog_scan
    fn.restype = ctypes.c_int64
    fn.argtypes = [ctypes.c_char_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int32, ctypes.c_int32,
                   ctypes.POINTER(_Group), ctypes.c_int32, ctypes.POINTER(ctypes.c_int32),
                   ctypes.POINTER(ctypes.c_int64), ctypes.c_int32, ctypes.POINTER(ctypes.c_int32),
                   ctypes.POINTER(ctypes.c_int64)]
    return lib, None


_LIB, LOAD_ERROR = _load()
AVAILABLE = _LIB is not None


@dataclass(slots=True)
class Group:
    """Talk-shape lines sharing one window and (service, remote, kind)."""
    month: int
    day: int
    start: int                 # the window's start, seconds into the day
    clock: str                 # the first line's "HH:MM:SS", as written
    service: str
    remote: str | None
    kind: str
    count: int
    examples: list[str]


@dataclass(slots=True)
class Scan:
    end: int                   # offset after the last line scanned
    lines: int
    groups: list[Group]
    slow: list[bytes]          # lines (without "\n") the fast path does not parse


class Scanner:
    """Reusable buffers for `scan`; one per thread."""

    def __init__(self, max_groups: int = 65536, max_slow: int = 65536):
        self.max_groups, self.max_slow = max_groups, max_slow
        self._groups = (_Group * max_groups)()
        self._slow = (ctypes.c_int64 * (2 * max_slow))()
        self._ng, self._ns, self._lines = ctypes.c_int32(), ctypes.c_int32(), ctypes.c_int64()

    def scan(self, data: bytes, start: int = 0, end: int | None = None, examples: int = 3,
             window_s: int = 1) -> Scan:
        """Scans the whole lines of data[start:end] (up to its last "\\n"), or fewer when the group
        or slow buffers fill up: then call again from the returned `end`."""
        if _LIB is None:
            raise RuntimeError(LOAD_ERROR)
        end = len(data) if end is None else end
        if not 0 <= start <= end <= len(data):
            raise ValueError(f"bad range {start}:{end} of {len(data)} bytes")
        stop = _LIB.fastlog_scan(data, start, end, min(examples, MAX_EXAMPLES), window_s,
                                     self._groups, self.max_groups, ctypes.byref(self._ng),
                                     self._slow, self.max_slow, ctypes.byref(self._ns),
                                     ctypes.byref(self._lines))
        if stop < 0:
            raise MemoryError("fastlog_scan could not allocate its tables")
        groups = []
        clocks: dict[int, str] = {}
        for g in self._groups[:self._ng.value]:
            clock = clocks.get(g.clock)
            if clock is None:
                c = g.clock
                clock = clocks[c] = f"{c // 10000:02d}:{c // 100 % 100:02d}:{c % 100:02d}"
            remote = None if g.rem_len < 0 else data[g.rem_off:g.rem_off + g.rem_len].decode("ascii")
            examples_ = [data[o:o + n].decode("ascii") for o, n in zip(g.ex_off[:g.nex], g.ex_len[:g.nex])]
            groups.append(Group(g.month, g.day, g.start, clock, data[g.svc_off:g.svc_off + g.svc_len].decode("ascii"),
                                remote, KINDS[g.kind], g.count, examples_))
        spans = self._slow
        slow = [data[spans[2 * i]:spans[2 * i + 1]] for i in range(self._ns.value)]
        return Scan(stop, self._lines.value, groups, slow)
