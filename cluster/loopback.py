"""Picking a private corner of 127.0.0.0/8, so a second copy of a cluster (a test, a benchmark)
runs beside `make run`'s without a single port clash."""

from __future__ import annotations

import random
import socket


def prefix_free(prefix: str) -> bool:
    """True when nothing is bound on `<prefix>.1`, the first host of a cluster placed there."""
    probe = socket.socket()
    try:
        probe.bind((f"{prefix}.1", 0))
        return True
    except OSError:
        return False
    finally:
        probe.close()


def port_free(address: str, port: int) -> bool:
    """Nothing listens on `address:port` now (a probe bind, closed at once)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((address, port))
        except OSError:
            return False
    return True


def free_prefix(rng: random.Random | None = None) -> str:
    """A random `127.A.B` prefix (A in 64..250, clear of the default cluster's 127.0.x)."""
    rng = rng or random.Random()
    for _ in range(50):
        prefix = f"127.{rng.randint(64, 250)}.{rng.randint(0, 255)}"
        if prefix_free(prefix):
            return prefix
    raise RuntimeError("no free loopback prefix found in 50 tries")
