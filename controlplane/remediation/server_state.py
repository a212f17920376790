"""Change one HAProxy server's weight or state through the runtime API (`set server ...`).

These are the primitives a remediation applies (drain a shard's server, take it to maint, give
it back its weight); they moved here from collectors/haproxy.py, which only reads. Every name is
checked before anything is sent: a backend or server name able to carry a space, `;`, `/` or a
newline could smuggle a second runtime command into the first.
"""

from __future__ import annotations

import re
from pathlib import Path

from collectors.haproxy_runtime import RuntimeAPIError, command

_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
SERVER_STATES = ("ready", "drain", "maint")


def _check_name(kind: str, value: str) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise ValueError(f"refusing {kind} name {value!r}: only [A-Za-z0-9_.:-] is allowed")
    return value


def _runtime_reply(reply: str, cmd: str) -> str:
    text = reply.strip()
    # Success is an empty reply; errors come back as text, never as a status code.
    if text:
        raise RuntimeAPIError(f"{cmd!r}: {text}")
    return text


def set_server_weight(sock: str | Path, backend: str, server: str, weight: int,
                      timeout: float = 5.0) -> None:
    _check_name("backend", backend)
    _check_name("server", server)
    if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 256:
        raise ValueError(f"refusing weight {weight!r}: an integer 0..256")
    cmd = f"set server {backend}/{server} weight {weight}"
    _runtime_reply(command(sock, cmd, timeout), cmd)


def set_server_state(sock: str | Path, backend: str, server: str, state: str,
                     timeout: float = 5.0) -> None:
    _check_name("backend", backend)
    _check_name("server", server)
    if state not in SERVER_STATES:
        raise ValueError(f"refusing state {state!r}: one of {', '.join(SERVER_STATES)}")
    cmd = f"set server {backend}/{server} state {state}"
    _runtime_reply(command(sock, cmd, timeout), cmd)
