"""Per-connection rate limits at the edge: a token bucket per connection and kind (JOIN, PRIVMSG).

The edge checks these before any clue or Redis work, so a flooding connection costs the cluster
nothing past its own socket. The settings are the cluster file's `services.edge.join_rate` and
`privmsg_rate` (`{count, per}`): a burst of `count`, refilled at `count` per `per`.
"""

from __future__ import annotations

import time

from cluster.durations import seconds
from cluster.spec import Rate


def per_second(rate: Rate) -> tuple[int, float]:
    """(burst, tokens per second) of a cluster-file rate, parsed once per process."""
    return rate.count, rate.count / seconds(rate.per)


class TokenBucket:
    __slots__ = ("capacity", "refill", "tokens", "stamp")

    def __init__(self, limit: tuple[int, float]):
        self.capacity = float(limit[0])
        self.refill = limit[1]
        self.tokens = self.capacity
        self.stamp = time.monotonic()

    def take(self) -> bool:
        """Spend one token if there is one; False means over the limit (nothing spent)."""
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.refill)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False
