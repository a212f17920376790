"""How many cases each fuzz test ran, for the summary `make test` prints (tests/fuzz/conftest.py).

Hypothesis says how many examples it tried only with --hypothesis-show-statistics, which prints
far more than a count; schemathesis cases are run by a Hypothesis loop of our own. So every fuzz
test body is wrapped in `counted`, which counts its calls under the test's name."""

from __future__ import annotations

import functools
from collections import Counter

CASES: Counter[str] = Counter()


def counted(fn):
    name = f"{fn.__module__.rpartition('.')[2]}::{fn.__name__}"

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        CASES[name] += 1
        return fn(*args, **kwargs)
    return wrapper


def count(name: str, n: int = 1) -> None:
    CASES[name] += n
