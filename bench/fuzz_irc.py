"""Coverage-guided fuzzing of the chat edge's IRC layer (chat/irc.py) with atheris (libFuzzer),
for longer local runs than the bounded Hypothesis properties of `make test` (tests/fuzz/).

Each input is fed to `parse` (which may raise only ParseError, and whose result must survive
`encode` -> `parse` unchanged), to a Framer in two pieces cut where the input's first byte says
(the same items as in one piece, never more than its bound buffered), and to a ServerConnection
(no exception, and only well-formed lines to send). Any other exception is a crash: counted, its
input saved under --crashes, and the run goes on. Bounded by --runs and/or --seconds; the last
line printed is one JSON object: runs, crashes, seconds, and where the crashing inputs are.

    python -m bench.fuzz_irc --seconds 600
    python -m bench.fuzz_irc --runs 200000 --crashes /tmp/irc-crashes

atheris is an optional extra: `.venv/bin/pip install -e '.[fuzz]'` (it builds against libFuzzer
from its wheel; on CPython 3.11 on Linux x86-64 a prebuilt wheel installs as is).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

try:
    import atheris
except ImportError:
    atheris = None

INSTALL_HINT = ("atheris is not installed: `.venv/bin/pip install -e '.[fuzz]'` (or `pip install atheris`; "
                "it needs CPython 3.8-3.11 on Linux or macOS, and a C++ compiler where no wheel fits)")

# Seeds: real Twitch lines and the edge's own replies, so coverage starts from the grammar's core.
SEEDS = [
    b"@badge-info=;badges=;color=#0D4200;display-name=ronni;emotes=25:0-4;user-type= "
    b":ronni!ronni@ronni.tmi.twitch.tv PRIVMSG #ronni :Kappa Keepo\r\n",
    b"CAP REQ :twitch.tv/tags twitch.tv/commands\r\nPASS oauth:abc\r\nNICK justinfan1\r\nJOIN #a,#b\r\n",
    b"PING :tmi.twitch.tv\r\n", b":tmi.twitch.tv 001 ronni :Welcome, GLHF!\r\n",
    b"@a=b\\sc\\:d\\\\;+vendor.example/key=\\r\\n :src CMD mid1 mid2 :trailing: text\n",
    b"QUIT :bye\r\n", b"USER u 0 * :real name\r\n", b"PRIVMSG #r :" + b"x" * 600 + b"\r\n",
]


class Fuzz:
    def __init__(self, irc, runs: int | None, seconds: float | None, crashes: Path, scratch: Path | None = None):
        self.irc, self.max_runs, self.seconds, self.crash_dir = irc, runs, seconds, crashes
        self.scratch = scratch        # a temporary corpus, removed at the end
        self.runs = self.crashes = 0
        self.started = time.monotonic()
        self.first_crash: str | None = None

    def one(self, data: bytes) -> None:
        self.runs += 1
        try:
            self.check(data)
        except Exception:
            self.crashes += 1
            name = "crash-" + hashlib.sha1(data).hexdigest()[:16]
            self.crash_dir.mkdir(parents=True, exist_ok=True)
            (self.crash_dir / name).write_bytes(data)
            if self.first_crash is None:
                self.first_crash = traceback.format_exc(limit=6)
                print(f"crash on {data[:200]!r}:\n{self.first_crash}", file=sys.stderr, flush=True)
        if (self.max_runs is not None and self.runs >= self.max_runs) or \
                (self.seconds is not None and time.monotonic() - self.started >= self.seconds):
            self.finish()

    def check(self, data: bytes) -> None:
        irc = self.irc
        try:
            msg = irc.parse(data)
        except irc.ParseError:
            pass
        else:
            again = irc.parse(msg.to_bytes())
            assert again == msg, (msg, again)
        cut = data[0] % (len(data) + 1) if data else 0
        whole = irc.Framer().feed(data)
        framer = irc.Framer()
        pieces = framer.feed(data[:cut])
        assert framer.buffered <= framer.max_tags + framer.max_line
        pieces += framer.feed(data[cut:])
        assert pieces == whole, (pieces, whole)
        conn = irc.ServerConnection("edge.fuzz")
        conn.receive_data(data[:cut])
        if conn.state == "registering":
            conn.accept_registration(conn._requested_nick or "someone")
        conn.receive_data(data[cut:])
        for line in conn.lines_to_send():
            assert line.endswith(b"\r\n") and line.count(b"\n") == 1, line
            irc.parse(line)

    def finish(self) -> None:
        # libFuzzer ends the process with C exit(), past Python's own shutdown: print, flush and
        # leave here, so the JSON line is always the last one.
        result = {"runs": self.runs, "crashes": self.crashes,
                  "seconds": round(time.monotonic() - self.started, 2),
                  "crash_dir": str(self.crash_dir) if self.crashes else None}
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)
        sys.stderr.flush()
        print(json.dumps(result), flush=True)
        os._exit(1 if self.crashes else 0)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=None, help="stop after this many inputs")
    ap.add_argument("--seconds", type=float, default=None, help="stop after this long (default 60 without --runs)")
    ap.add_argument("--crashes", type=Path, default=Path(tempfile.gettempdir()) / "chatops-fuzz-irc",
                    help="where crashing inputs are saved")
    ap.add_argument("--corpus", type=Path, default=None,
                    help="a directory libFuzzer keeps its growing corpus in (default: a temporary one)")
    args = ap.parse_args(argv)
    if atheris is None:
        sys.exit(INSTALL_HINT)
    if args.runs is None and args.seconds is None:
        args.seconds = 60.0
    with atheris.instrument_imports():
        from chat import irc
    corpus = args.corpus or Path(tempfile.mkdtemp(prefix="chatops-fuzz-irc-corpus-"))
    fuzz = Fuzz(irc, args.runs, args.seconds, args.crashes, None if args.corpus else corpus)
    corpus.mkdir(parents=True, exist_ok=True)
    for i, seed in enumerate(SEEDS):
        (corpus / f"seed-{i}").write_bytes(seed)
    # -max_len above the Framer's bound (8,191 + 512), so too-long lines are reached too.
    atheris.Setup([sys.argv[0], str(corpus), "-max_len=9000", "-print_final_stats=0"], fuzz.one)
    atheris.Fuzz()
    fuzz.finish()    # libFuzzer stopped on its own (it found nothing more to do): still report


if __name__ == "__main__":
    main()
