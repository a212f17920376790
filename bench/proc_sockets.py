"""What counting a port's connections costs: /proc/net/tcp read by port against psutil.

Opens `--pairs` loopback connections to one listener on a private loopback prefix (2,000 by
default: 4,001 sockets of ours on one port), then times, in the same run and interleaved so a
noisy neighbour hits every path alike, `--runs` times each:
  - the baseline: psutil.net_connections(kind="tcp") (system-wide) and
    psutil.Process(pid).net_connections("tcp") (the process holding them);
  - read_proc_net_tcp() + parse every row + count by remote address;
  - read_proc_net_tcp(ports=[p]) + count, what collectors.process.collect does;
  - reading the tcp and tcp6 text alone (the kernel's formatting, the floor).
The last line printed is one JSON object: medians in ms, the host's socket count, and the ratio
of psutil.net_connections() to the path collect() takes. The sockets are reset, not closed, at
the end, so they leave no TIME_WAIT behind on a shared machine.

    python -m bench.proc_sockets [--pairs 2000] [--runs 7]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import struct
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cluster.loopback import free_prefix  # noqa: E402
from collectors.process import connections_by_remote, read_proc_net_tcp  # noqa: E402


def measure(pairs: int = 2000, runs: int = 7) -> dict:
    prefix = free_prefix()
    lsock = socket.socket()
    lsock.bind((f"{prefix}.5", 0))
    lsock.listen(4096)
    port = lsock.getsockname()[1]
    socks = []
    try:
        for _ in range(pairs):
            c = socket.socket()
            c.bind((f"{prefix}.9", 0))
            c.connect((f"{prefix}.5", port))
            socks.append(c)
            socks.append(lsock.accept()[0])

        me = psutil.Process(os.getpid())
        paths = {
            "psutil_net_connections_ms": lambda: psutil.net_connections(kind="tcp"),
            "psutil_process_net_connections_ms": lambda: me.net_connections(kind="tcp"),
            "proc_read_parse_all_count_ms":
                lambda: connections_by_remote(read_proc_net_tcp(), port, f"{prefix}.5"),
            "proc_read_filtered_by_port_count_ms":
                lambda: connections_by_remote(read_proc_net_tcp(ports=[port]), port, f"{prefix}.5"),
            "proc_read_only_ms": lambda: (Path("/proc/net/tcp").read_text(),
                                          Path("/proc/net/tcp6").read_text()),
        }
        times: dict[str, list[float]] = {k: [] for k in paths}
        for _ in range(runs):
            for k, fn in paths.items():
                t = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t)
        result = {"bench": "proc_sockets", "host_sockets": len(read_proc_net_tcp()),
                  "our_sockets": 2 * pairs + 1}
        result.update({k: round(statistics.median(v) * 1000, 2) for k, v in times.items()})
        # baseline / ours: how many times cheaper the path collect() takes is
        result["ratio"] = round(result["psutil_net_connections_ms"]
                                / result["proc_read_filtered_by_port_count_ms"], 2)
        return result
    finally:
        for s in socks:  # RST instead of FIN: leave no TIME_WAIT litter on a shared machine
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
        lsock.close()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--json", action="store_true", help="(the last line is always the JSON object)")
    args = ap.parse_args(argv)
    print(json.dumps(measure(args.pairs, args.runs)))


if __name__ == "__main__":
    main()
