"""`chatops slots`: the live slot map, read where it is kept, so it works while the control plane
is down: the map file (the run directory's `slotmap.json`, or beside the cluster file in profile
`remote`) and each shard's published copy, straight at the shard's own address.

It prints the epoch, where the current map came from, and one line per shard: its slot count,
share, ranges, and the epoch of the copy published to it. A copy older than the map (a shard that
missed a publication) and a file older than the newest copy (a publication cut short after the
shards had it) are flagged. `--json` prints what `GET /api/v1/slots` answers.

Exit codes: 0 the map was read (even with some shard unreachable: the map is still shown, from
the file), 1 the map cannot be read or disagrees with the cluster file, 2 a bad cluster file.
"""

from __future__ import annotations

import json

import click

from chat.sharding import SLOTS, describe_slots
from controlplane.cli.common import config_option, fail, load, run_dir_option
from controlplane.cli.common import run_dir as run_dir_of

TIMEOUT_S = 2.0          # per shard
RANGES_SHOWN = 5         # per shard, then "and N more ranges"


def _ranges(ranges: list[list[int]]) -> str:
    if not ranges:
        return "(none)"
    return describe_slots((s for a, b in ranges for s in range(a, b + 1)), RANGES_SHOWN)


def _copy(copy, epoch: int) -> tuple[str, str | None]:
    """The COPY column for a shard's published copy, and a warning about it (or None)."""
    if isinstance(copy, int):
        if copy < epoch:
            return (f"epoch {copy} BEHIND",
                    f"its copy has epoch {copy}, older than the map's {epoch}: it missed a publication")
        return f"epoch {copy}", None
    if copy.startswith("unreachable"):
        return "unreachable", copy
    if copy == "no published map":
        if epoch:
            return ("none BEHIND",
                    f"it has no published map, yet the map is at epoch {epoch}: it missed every publication")
        return "none", None
    return "unreadable", copy


def print_view(view: dict) -> None:
    epoch = view["epoch"]
    if epoch:
        click.echo(f"slot map epoch {epoch}, from {view['source']}")
    else:
        click.echo(f"slot map epoch 0: not published yet, {view['source']}")
    warnings = []
    stored = view["file"]["epoch"]
    if stored is not None and stored < epoch:
        warnings.append(f"the file {view['file']['path']} has epoch {stored}, older than the shards' {epoch}:"
                        " a publication was cut short after the shards had it; the next rewrites the file")
    rows = []
    for s in view["shards"]:
        copy, warning = _copy(view["copies"].get(s["name"], "unreachable: not in the cluster file"), epoch)
        if warning:
            warnings.append(f"{s['name']}: {warning}")
        share = f"{100 * s['slots'] / SLOTS:.1f}%"
        rows.append([s["name"], str(s["slots"]), share, copy, _ranges(s["ranges"])])
    headers = ["SHARD", "SLOTS", "SHARE", "PUBLISHED COPY", "RANGES"]
    widths = [max(len(r[i]) for r in [headers] + rows) for i in range(len(headers))]
    for row in [headers] + rows:
        click.echo("  ".join(v.rjust(w) if i in (1, 2) else v.ljust(w)
                             for i, (v, w) in enumerate(zip(row, widths))).rstrip())
    for w in warnings:
        click.echo(f"! {w}")


@click.command("slots")
@config_option
@run_dir_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (as GET /api/v1/slots).")
def slots(config: str | None, run_dir: str | None, as_json: bool) -> None:
    """The live slot map: epoch, where it came from, each shard's slots, share, ranges and published copy."""
    from controlplane.resharding.slotmap import SlotMapError
    from controlplane.resharding.slotmap import view as slots_view

    run = run_dir_of(run_dir)
    loaded = load(config, run)
    try:
        view = slots_view(loaded.spec, loaded.path, run, TIMEOUT_S)
    except SlotMapError as exc:
        fail(f"cannot read the slot map: {exc}")
    if as_json:
        click.echo(json.dumps(view, indent=1))
    else:
        print_view(view)
