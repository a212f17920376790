"""Series names: how the store names a figure about one part of a scrape target.

A target's own figures have plain names (`ops_per_s`, `up`). A figure about a part of the target
is `<part>:<figure>`, and the part is named by what it is:

- a labelled part:  `host:chat-testing` (CLIENT LIST by source host), `shard:shard2` (clue's
                    calls per shard), `edge:chat1` (the exchange's deliveries, the canary's rooms)
- an HAProxy row:   `redis-shard2/shard2` (`<proxy>/<server>`, FRONTEND and BACKEND as HAProxy names them)
- a process:        `edge-chat1` (the supervisor's process name)
- a log group:      `edge-chat1|clue|timeout` (`<file>|<remote or ->|<event kind>`)

The figures that write series and the read model and detectors that read them all build names
here, so the two sides cannot drift apart. The recorded windows in tests/fixtures/windows/ hold
names in this shape; changing one is changing those recordings too.
"""

from __future__ import annotations


def series(part: str, figure: str) -> str:
    return f"{part}:{figure}"


def labelled(label: str, value: str) -> str:
    return f"{label}:{value}"


def proxy_row(proxy: str, server: str) -> str:
    return f"{proxy}/{server}"


def log_group(file: str, remote: str | None, kind: str) -> str:
    return f"{file}|{remote or '-'}|{kind}"


def figure_of(name: str) -> str:
    """The figure a part's series holds: `host:chat1:idle` -> `idle`."""
    return name.rpartition(":")[2]


def part_of(name: str) -> str:
    """The part a series is about: `redis-shard0/shard0:scur` -> `redis-shard0/shard0`."""
    return name.rpartition(":")[0]


def split_log_group(name: str) -> tuple[str, str, str, str] | None:
    """(file, remote, kind, figure) of a log group's series, None for any other name."""
    group, _, figure = name.rpartition(":")
    fields = group.split("|")
    return (fields[0], fields[1], fields[2], figure) if len(fields) == 3 and figure else None


def parts(names, label: str, figure: str | None = None) -> list[str]:
    """The values of `label` that have series among `names` (with `figure`, only those holding
    it): parts(window names, "host", "idle") -> ["chat1", "chat-testing"], in first-seen order.
    A value may itself hold ':' (an IPv6 source host), so only the label and figure are cut off."""
    prefix, out = f"{label}:", []
    for n in names:
        if not n.startswith(prefix) or n.count(":") < 2:
            continue
        value, _, fig = n[len(prefix):].rpartition(":")
        if (figure is None or fig == figure) and value not in out:
            out.append(value)
    return out
