"""Hypothesis strategies that start from recorded input (tests/fixtures) and damage it: random
bytes alone rarely get past a parser's first check, real lines with a few insertions, deletions
and cuts reach every branch."""

from __future__ import annotations

import re
from pathlib import Path

from hypothesis import strategies as st

_DIGITS = re.compile(rb"\d+")
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"

# What breaks line-oriented parsers: separators, quotes, digits runs (including ones longer than
# int() accepts from a string), non-ASCII, invalid UTF-8, CR and NUL.
NOISE = [b"\n", b"\r", b"\r\n", b"\0", b" ", b"\t", b",", b":", b";", b"=", b"#", b"# ", b"[", b"]",
         b"<", b">", b'"', b"\\", b"-", b"-1", b"0", b"99", b"9" * 25, b"9" * 4400, b"\xc3\xa9", b"\xff",
         b"\xe2\x80\xa8", b"\xd9\xa3", b"x=y", b"$", b"*", b"+", b"%"]


def seed_lines(*paths: str) -> list[bytes]:
    return [line for p in paths for line in (FIXTURES / p).read_bytes().split(b"\n") if line.strip()]


@st.composite
def mutated_line(draw, seeds: list[bytes], noise: list[bytes] = NOISE) -> bytes:
    line = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(0, 4))):
        at = draw(st.integers(0, len(line)))
        op = draw(st.sampled_from(["insert", "insert", "random", "delete", "cut", "number"]))
        if op == "insert":
            line[at:at] = draw(st.sampled_from(noise))
        elif op == "random":
            line[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del line[at:at + draw(st.integers(1, 12))]
        elif op == "number":
            # A number field made huge, negative or empty: int() of more than 4,300 digits raises.
            m = _DIGITS.search(bytes(line), at) or _DIGITS.search(bytes(line))
            if m:
                line[m.start():m.end()] = draw(st.sampled_from([b"9" * 4400, b"9" * 30, b"-1", b""]))
        else:
            line = line[:at]
    return bytes(line)


def mutated_text(seeds: list[bytes], max_lines: int = 12, **kw) -> st.SearchStrategy[bytes]:
    """Several damaged lines joined by newlines, sometimes with random bytes among them."""
    one = st.one_of(mutated_line(seeds, **kw), mutated_line(seeds, **kw), st.binary(max_size=40))
    return st.lists(one, max_size=max_lines).map(b"\n".join)


@st.composite
def mutated_doc(draw, *paths: str) -> bytes:
    """One recorded file, line by line kept, damaged, dropped or doubled, with garbage lines
    slipped in: headers stay in place often enough for the rows after them to be read."""
    lines = draw(st.sampled_from([(FIXTURES / p).read_bytes().split(b"\n") for p in paths]))
    out: list[bytes] = []
    for line in lines:
        op = draw(st.sampled_from(["keep", "keep", "keep", "mutate", "drop", "double", "garbage"]))
        if op == "keep":
            out.append(line)
        elif op == "mutate":
            out.append(draw(mutated_line([line or b" "])))
        elif op == "double":
            out += [line, line]
        elif op == "garbage":
            out += [line, draw(st.binary(max_size=30) | st.sampled_from(NOISE))]
    return b"\n".join(out)
