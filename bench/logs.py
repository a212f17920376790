"""How fast the log collector parses and aggregates a big log, against just reading it.

Generates a 1,000,000-line log in the talk's shape (`MMM DD HH:MM:SS service: [remote] event`
with key=value fields as this project's services write them, via chat.logs.format_line): edge
timeouts and sends to clue, clue's tornado ECONNREFUSED warnings and Redis timeouts, exchange
successes and i/o timeouts, slow consumers and ping timeouts, with varying fields. Then, in the same
run, alternating, `--reps` times each:

- collector: collectors.logs Aggregator.add_file (60 s windows, 3 examples per group): the file
  read once to its end through a Follower into add_bytes -- what `collect()`'s Tail does per
  file, through the compiled scanner when `make` has built it;
- baseline: `for line in f: n += 1` over the same file opened as text (UTF-8, errors='replace',
  newline='\\n');
- for information, once, the collector with the compiled scanner turned off (same counts), and
  parse_line on every line with no aggregation (no cache) on the first 200,000
  lines.

The file lives under /tmp and is deleted at the end. Progress goes to stderr; the last stdout
line is one JSON object with lines_per_s, bare_read_lines_per_s and ratio (target >= 0.3).

    python -m bench.logs [--json] [--lines 1000000] [--reps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from chat.logs import format_line  # noqa: E402
from collectors import fastlog, logs  # noqa: E402

TARGET_RATIO = 0.3


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def generate(path: Path, n: int, seed: int = 1) -> dict[str, int]:
    rnd = random.Random(seed)
    rooms = [f"room{i}" for i in range(40)] + ["degentp", "paragusrants", "lobby"]
    edges = [f"chat{i}" for i in range(1, 9)]
    kinds = [  # (weight, maker)
        (30, lambda: ("tmi_edge", "clue", "Timed out (after 5s) while writing request for: privmsg", None)),
        (25, lambda: ("tmi_edge", "clue", f"Message successfully sent to #{rnd.choice(rooms)}",
                      {"messages": rnd.randint(1, 40)})),
        (15, lambda: ("exchange", "exchange", "i/o timeout", {"edge": rnd.choice(edges), "level": "warning"})),
        (10, lambda: ("exchange", "exchange", "Exchange success",
                      {"edge": rnd.choice(edges), "messages": rnd.randint(1, 40)})),
        (8, lambda: ("chat_clue", None, f"WARNING:tornado.general:Connect error on fd {rnd.randint(5, 60)}: ECONNREFUSED", None)),
        (5, lambda: ("chat_clue", "redis", f"Timed out (after 100ms) on shard{rnd.randint(0, 3)} "
                     f"(127.0.1.{rnd.randint(1, 4)}:200{rnd.randint(0, 3)}) waiting for: pipeline",
                     {"level": "warning", "suppressed": rnd.randint(0, 9)})),
        (4, lambda: ("chat_edge", "client", "Slow consumer disconnected",
                     {"level": "warning", "nick": f"viewer{rnd.randint(1, 99999)}",
                      "peer": f"127.0.3.1:{rnd.randint(20000, 60000)}", "buffered": rnd.randint(1 << 16, 1 << 20),
                      "limit": 65536})),
        (3, lambda: ("chat_edge", "client", "Ping timeout", {"nick": f"viewer{rnd.randint(1, 99999)}",
                                                             "peer": f"127.0.3.1:{rnd.randint(20000, 60000)}"})),
    ]
    weights = [w for w, _ in kinds]
    makers = [m for _, m in kinds]
    when = time.mktime((2014, 2, 18, 6, 0, 0, 0, 0, -1))
    written = 0
    with open(path, "w", encoding="utf-8") as f:
        batch = []
        for i in range(n):
            if i % 250 == 0:
                when += 1
            service, remote, event, fields = rnd.choices(makers, weights)[0]()
            # Pass a copy of the stamp so format_line's per-call strftime is the only cost here.
            batch.append(format_line(service, remote, event, fields, when))
            if len(batch) == 10000:
                f.write("\n".join(batch) + "\n")
                written += len(batch)
                batch = []
        if batch:
            f.write("\n".join(batch) + "\n")
            written += len(batch)
    return {"lines": written, "bytes": path.stat().st_size}


def run_collector(path: Path, fast: bool = True) -> tuple[float, logs.LogSummary]:
    started = time.perf_counter()
    agg = logs.Aggregator(window_s=60, examples=3, fast=fast)
    agg.add_file(path)
    summary = agg.result()
    return time.perf_counter() - started, summary


def run_bare(path: Path) -> tuple[float, int]:
    started = time.perf_counter()
    n = 0
    with open(path, encoding="utf-8", errors="replace", newline="\n") as f:
        for line in f:
            n += 1
    return time.perf_counter() - started, n


def run_parse_only(path: Path, limit: int) -> tuple[float, int]:
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = [next(f) for _ in range(limit)]
    started = time.perf_counter()
    parse = logs.parse_line
    for line in lines:
        parse(line)
    return time.perf_counter() - started, len(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="(the last line is always JSON)")
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args(argv)

    fd, name = tempfile.mkstemp(prefix="chatops-bench-logs-", suffix=".log", dir="/tmp")
    os.close(fd)
    path = Path(name)
    try:
        say(f"generating {args.lines} lines in {path} ...")
        info = generate(path, args.lines)
        say(f"  {info['lines']} lines, {info['bytes'] / 1e6:.1f} MB")
        run_bare(path)                                     # warm the page cache
        coll, bare = [], []
        summary = None
        for rep in range(args.reps):
            t_bare, n_bare = run_bare(path)
            t_coll, summary = run_collector(path)
            assert n_bare == summary.lines == info["lines"], (n_bare, summary.lines)
            bare.append(n_bare / t_bare)
            coll.append(summary.lines / t_coll)
            say(f"  rep {rep + 1}: collector {coll[-1]:,.0f} lines/s, bare read {bare[-1]:,.0f} lines/s")
        t_py, py_summary = run_collector(path, fast=False)     # for information: no compiled scanner
        assert [(g.window, g.service, g.remote, g.kind, g.count) for g in py_summary.groups] == \
            [(g.window, g.service, g.remote, g.kind, g.count) for g in summary.groups]
        limit = min(200_000, info["lines"])
        t_parse, n_parse = run_parse_only(path, limit)
        lines_per_s = statistics.median(coll)
        bare_per_s = statistics.median(bare)
        totals = summary.totals()
        result = {
            "bench": "logs",
            "lines": info["lines"], "bytes": info["bytes"], "reps": args.reps,
            "lines_per_s": round(lines_per_s),
            "bare_read_lines_per_s": round(bare_per_s),
            "ratio": round(lines_per_s / bare_per_s, 3),
            "target_ratio": TARGET_RATIO,
            "scanner": "compiled" if fastlog.AVAILABLE else f"python ({fastlog.LOAD_ERROR})",
            "python_only_lines_per_s": round(py_summary.lines / t_py),
            "parse_line_only_lines_per_s": round(n_parse / t_parse),
            "parsed": summary.parsed, "unparsed": summary.unparsed,
            "groups": len(summary.groups),
            "kinds": {k: sum(r["count"] for r in totals if r["kind"] == k)
                      for k in sorted({r["kind"] for r in totals})},
        }
    finally:
        path.unlink(missing_ok=True)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
