"""The load generator a scenario runs, as a child process (`python -m chat.loadgen --tpp`), so
its report (with the per-second series the game day report draws) comes back as its last JSON
line, and a Ctrl-C of the scenario stops it the way it stops itself: SIGINT, then its report."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

LONG_S = 3600.0           # the run stops it; this only bounds an orphan


class Traffic:
    def __init__(self, config: Path, room: str, *, clients: int, senders: int, rate: float, ramp: float):
        self.argv = [sys.executable, "-m", "chat.loadgen", "--config", str(config), "--hot-room", room, "--tpp",
                     "--clients", str(clients), "--senders", str(senders), "--rate", f"{rate:g}",
                     "--ramp", f"{ramp:g}", "--duration", f"{LONG_S:g}", "--json", "--quiet",
                     "--sender-prefix", "gameday"]
        self.proc: subprocess.Popen | None = None
        self.report: dict | None = None
        self.stderr_tail = ""

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 20.0) -> dict | None:
        """SIGINT, then its report; SIGKILL when it does not finish in time. Idempotent."""
        proc, self.proc = self.proc, None
        if proc is None:
            return self.report
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        self.stderr_tail = (err or "")[-2000:]
        lines = [x for x in (out or "").splitlines() if x.startswith("{")]
        if lines:
            try:
                self.report = json.loads(lines[-1])
            except ValueError:
                pass
        return self.report
