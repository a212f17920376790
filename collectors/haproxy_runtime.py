"""HAProxy's runtime API over a Unix socket: the admin socket of a worker, or the master socket.

Thin I/O (`command`) beside pure parsers (`parse_show_proc`). Each command opens its own
connection: HAProxy closes a non-interactive CLI session after one reply, and a fresh connection
after a reload lands on the new worker rather than the old one.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass, field
from pathlib import Path

READ_LIMIT = 16 * 1024 * 1024  # `show stat` of a large config is a few MB; anything past this is hostile


class RuntimeAPIError(Exception):
    pass


def command(sock_path: str | Path, cmd: str, timeout: float = 5.0) -> str:
    """Send one runtime-API command and return the whole reply as text."""
    if "\n" in cmd or "\r" in cmd:
        raise RuntimeAPIError(f"refusing a runtime command containing a newline: {cmd!r}")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(sock_path))
            s.sendall(cmd.encode() + b"\n")
            # The master CLI waits for end-of-input before it answers and closes.
            s.shutdown(socket.SHUT_WR)
            chunks, size = [], 0
            while True:
                data = s.recv(65536)
                if not data:
                    break
                chunks.append(data)
                size += len(data)
                if size > READ_LIMIT:
                    raise RuntimeAPIError(f"{cmd!r} on {sock_path}: reply larger than {READ_LIMIT} bytes")
    except OSError as exc:
        raise RuntimeAPIError(f"{cmd!r} on {sock_path}: {exc.strerror or exc}") from exc
    return b"".join(chunks).decode("utf-8", errors="replace")


@dataclass(frozen=True)
class ProcEntry:
    pid: int
    type: str           # master | worker
    reloads: int
    uptime: str
    version: str
    relative_pid: str = ""
    failed_reloads: int = 0      # master only: reloads whose new config did not load


@dataclass(frozen=True)
class ProcTable:
    master: ProcEntry | None
    workers: list[ProcEntry] = field(default_factory=list)
    old_workers: list[ProcEntry] = field(default_factory=list)
    unparsed: list[str] = field(default_factory=list)


# `show proc` on the master socket of HAProxy 2.6.12 (Debian bookworm), captured with
# `echo 'show proc' | socat - /run/chat1.master.sock` after two reloads:
#
#   #<PID>          <type>          <reloads>       <uptime>        <version>
#   3410            master          2 [failed: 0]   0d00h00m03s     2.6.12-1+deb12u4
#   # workers
#   3468            worker          0               0d00h00m01s     2.6.12-1+deb12u4
#   # old workers
#   3440            worker          1               0d00h00m02s     2.6.12-1+deb12u4
#   # programs
#
# Older releases add a <relative PID> column before <reloads>; the parser reads the header.
_HEADER_CELL = re.compile(r"<([^>]+)>")
_FAILED = re.compile(r"\[failed:(\d+)\]")


def parse_show_proc(text: str) -> ProcTable:
    master: ProcEntry | None = None
    workers: list[ProcEntry] = []
    old: list[ProcEntry] = []
    unparsed: list[str] = []
    section = "master"
    columns = ["pid", "type", "reloads", "uptime", "version"]
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#<"):
            columns = [c.replace(" ", "_").lower() for c in _HEADER_CELL.findall(line)]
            continue
        if line.startswith("#"):
            title = line.lstrip("# ").lower()
            section = {"workers": "workers", "old workers": "old", "programs": "programs"}.get(title, "other")
            continue
        if section == "programs":
            continue
        if section == "other":  # a section a newer release added: never guess what its rows are
            unparsed.append(raw)
            continue
        # The master row's reloads cell reads "2 [failed: 0]"; fold it so splitting stays positional.
        parts = line.replace(" [failed: ", "[failed:").split()
        if len(parts) < len(columns):
            unparsed.append(raw)
            continue
        row = dict(zip(columns, parts))
        try:
            entry = ProcEntry(
                pid=int(row["pid"]), type=row.get("type", ""),
                reloads=int(row.get("reloads", "0").split("[")[0]),
                uptime=row.get("uptime", ""), version=row.get("version", ""),
                relative_pid=row.get("relative_pid", ""),
                failed_reloads=int(_FAILED.search(row.get("reloads", "")).group(1))
                if _FAILED.search(row.get("reloads", "")) else 0)
        except (KeyError, ValueError):
            unparsed.append(raw)
            continue
        if entry.type == "master":
            master = entry
        elif section == "old":
            old.append(entry)
        else:
            workers.append(entry)
    return ProcTable(master=master, workers=workers, old_workers=old, unparsed=unparsed)
