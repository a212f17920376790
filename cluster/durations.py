"""The one duration grammar: a whole number and a unit, `100ms`, `5s`, `10m`, `1h`, `1d`.

The cluster file keeps durations as this text so generated configs carry them verbatim (HAProxy
reads the same units), and every command-line option and API parameter that takes a duration
reads it here too. Where a caller also allows a bare number of seconds (`--since 90`, `?since=90`)
it says so with `bare_seconds=True`; nothing else differs between callers.
"""

from __future__ import annotations

import re

UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
# fullmatch only: a `$` anchor would let "5m\n" through; [0-9] and re.ASCII, never \d, which
# matches any Unicode digit ("١٠s" would reach a generated HAProxy config). Nine digits bound the number.
GRAMMAR = re.compile(r"([0-9]{1,9})(ms|s|m|h|d)", re.ASCII)
BARE = re.compile(r"[0-9]{1,9}", re.ASCII)
EXAMPLES = "100ms, 5s, 10m, 1h or 1d"


class DurationError(ValueError):
    pass


def parse(text: str, *, bare_seconds: bool = False) -> float:
    """Seconds in `text`; raises DurationError naming the grammar. Zero is allowed here: each
    caller decides whether zero means anything (the cluster file and the API refuse it)."""
    if not isinstance(text, str):
        raise DurationError(f"{text!r} is not a duration like {EXAMPLES} (a whole number with a unit)")
    m = GRAMMAR.fullmatch(text)
    if m:
        return int(m.group(1)) * UNITS[m.group(2)]
    if bare_seconds and BARE.fullmatch(text):
        return float(text)
    hint = " or a whole number of seconds" if bare_seconds else ""
    raise DurationError(f"{text!r} is not a duration like {EXAMPLES} (a whole number with a unit{hint})")


def seconds(duration: str) -> float:
    """'100ms' -> 0.1, for durations already validated by the cluster file."""
    return parse(duration)


def milliseconds(duration: str) -> int:
    return int(round(parse(duration) * 1000))
