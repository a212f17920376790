"""`chatops inspect redis SHARD` and `chatops inspect clients SHARD --by host`.

The 2014 team ran `redis-cli INFO clients`, `CLIENT LIST | grep idle | wc -l` and
`lsof | cut | sort | uniq -c` on every box; these two commands are that, done properly: one
shard, straight at its own address, every source address named as a host and its cluster.

Exit codes: 0 ok, 1 the shard did not answer (the error is printed), 2 unknown shard.
"""

from __future__ import annotations

import json
import sys
import time

import click

from controlplane.cli.common import config_option, fail, load, run_dir_option
from controlplane.cli.common import run_dir as run_dir_of


def _setup(config: str | None, run_dir: str | None, shard: str):
    from collectors import redis as rc

    run = run_dir_of(run_dir)
    cf = load(config, run).spec
    try:
        rc.find_shard(cf, shard)
    except rc.UnknownShard as exc:
        fail(str(exc), 2)
    return cf


def _fmt_bytes(n) -> str:
    if not isinstance(n, (int, float)):
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _fmt_age(s) -> str:
    if not isinstance(s, int):
        return "?"
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 172800:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _table(headers: list[str], rows: list[list[str]], right: set[int] = frozenset()) -> None:
    widths = [max(len(str(r[i])) for r in [headers] + rows) for i in range(len(headers))]
    for row in [headers] + rows:
        click.echo("  ".join(str(v).rjust(w) if i in right else str(v).ljust(w)
                             for i, (v, w) in enumerate(zip(row, widths))).rstrip())


def _collect_with_rates(cf, shard: str, interval: float):
    """A first INFO, then `interval` later the full collect whose INFO is the second sample, so the
    rates cover the quiet gap and not the collector's own SCAN/OBJECT FREQ traffic."""
    from collectors import redis as rc

    target = rc.target_for(cf, shard)
    try:
        with rc.connect(target) as conn:
            first = rc.fetch_info(conn)
    except (OSError, rc.RedisError):
        first = None   # collect() below reports the shard's state and error
    t0 = time.monotonic()
    if first is not None:
        time.sleep(interval)
    obs = rc.collect(target)
    if first is None or not obs.up or not (obs.data or {}).get("info"):
        return obs, None
    return obs, rc.rates(first, obs.data["info"], max(time.monotonic() - t0, 1e-3))


def _json_or_down(obs, shard: str, as_json: bool, **extra) -> bool:
    """Print the JSON form (True: done), or stop with exit 1 when the shard is down; else False."""
    if as_json:
        out = obs.as_dict()
        out.update(extra)
        click.echo(json.dumps(out, indent=1, default=str))
        if not obs.up:
            sys.exit(1)
        return True
    if not obs.up:
        click.echo(f"chatops: shard {shard}: down: {obs.error}", err=True)
        sys.exit(1)
    return False


@click.command("redis")
@click.argument("shard")
@config_option
@run_dir_option
@click.option("--interval", default=1.0, show_default=True, help="Seconds between the two INFO samples for rates.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def redis_cmd(shard: str, config: str | None, run_dir: str | None, interval: float, as_json: bool) -> None:
    """One shard as redis-cli would show it: role, clients, ops/s, CPU, memory, hit ratio, config, slowlog, hot keys."""
    cf = _setup(config, run_dir, shard)
    obs, rates = _collect_with_rates(cf, shard, interval)
    if _json_or_down(obs, shard, as_json, rates=rates):
        return
    d = obs.data
    info = d.get("info") or {}
    srv, cl, mem, stats = (info.get(k, {}) for k in ("server", "clients", "memory", "stats"))
    repl = info.get("replication", {})
    cfg = d.get("config") or {}
    r = rates or {}
    click.echo(f"shard {shard} at {d['address']}: redis {srv.get('redis_version', '?')}, "
               f"role {repl.get('role', '?')}, up {_fmt_age(srv.get('uptime_in_seconds'))}")
    maxc = cfg.get("maxclients")
    cc = cl.get("connected_clients")
    ratio = f" ({100 * cc / maxc:.0f}% of maxclients {maxc})" if isinstance(cc, int) and isinstance(maxc, int) and maxc else ""
    click.echo(f"  clients    {cc}{ratio}, blocked {cl.get('blocked_clients', '?')}, "
               f"rejected {stats.get('rejected_connections', '?')}")

    def f(v, fmt="{:.0f}"):
        return fmt.format(v) if isinstance(v, (int, float)) else "?"
    if "error" in r:
        click.echo(f"  rates      unavailable: {r['error']}")
    else:
        click.echo(f"  ops/s      {f(r.get('ops_per_s'))} (instantaneous {f(r.get('ops_per_s_instantaneous'))}), "
                   f"CPU {f(r.get('cpu_percent'), '{:.1f}')}% of one core, "
                   f"rejected conns/s {f(r.get('rejected_connections_per_s'), '{:.1f}')}")
        hr = r.get("hit_ratio")
        click.echo(f"  hit ratio  {hr * 100:.1f}% over {r.get('dt_s', 0):.1f}s" if hr is not None
                   else f"  hit ratio  n/a (no key reads in {r.get('dt_s', 0):.1f}s)")
        top = list((r.get("calls_per_s") or {}).items())[:5]
        if top:
            click.echo("  top cmds   " + ", ".join(f"{k} {v:.0f}/s" for k, v in top))
    click.echo(f"  memory     {_fmt_bytes(mem.get('used_memory'))} used, maxmemory "
               f"{_fmt_bytes(mem.get('maxmemory'))}, peak {_fmt_bytes(mem.get('used_memory_peak'))}")
    if cfg:
        click.echo(f"  config     maxclients {cfg.get('maxclients')}, timeout {cfg.get('timeout')}"
                   f"{' (idle clients are never closed)' if cfg.get('timeout') == 0 else ''}, "
                   f"maxmemory-policy {cfg.get('maxmemory-policy')}")
    slow = d.get("slowlog") or []
    click.echo(f"  slowlog    {len(slow)} recent entr{'y' if len(slow) == 1 else 'ies'}")
    for e in sorted(slow, key=lambda e: -e["usec"])[:5]:
        click.echo(f"    {e['usec'] / 1000:8.1f} ms  {e['command'][:60]}  from {e['client']} {e['name']}".rstrip())
    for e in d.get("latency") or []:
        click.echo(f"  latency    {e['event']}: latest {e['latest_ms']} ms, max {e['max_ms']} ms")
    hk = d.get("hotkeys") or {}
    if hk.get("skipped"):
        click.echo(f"  hot keys   skipped: {hk['skipped']}")
    elif hk:
        click.echo(f"  hot keys   top of {hk.get('sampled', 0)} sampled (OBJECT FREQ, log counter 0-255):")
        for k in hk.get("keys", [])[:10]:
            click.echo(f"    {k['freq']:4d}  {k['key']}")
    for section, err in obs.section_errors.items():
        click.echo(f"  ! {section}: {err}")


@click.command("clients")
@click.argument("shard")
@click.option("--by", type=click.Choice(["host"]), default="host", show_default=True,
              help="Group clients by their source host.")
@config_option
@run_dir_option
@click.option("--top", default=20, show_default=True, help="Also list this many of the most idle clients (--json).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def clients_cmd(shard: str, by: str, config: str | None, run_dir: str | None, top: int, as_json: bool) -> None:
    """Who holds connections to SHARD: the talk's `lsof | uniq -c`, by host, with idle counts."""
    from collectors import clients, clientscan

    cf = _setup(config, run_dir, shard)
    if not clientscan.AVAILABLE:
        click.echo(f"chatops: clients: parsing in Python only, about 6x the CPU: {clientscan.LOAD_ERROR}",
                   err=True)
    obs = clients.collect(clients.target_for(cf, shard, top_n=top))
    if _json_or_down(obs, shard, as_json):
        return
    d = obs.data
    idle_col = f"IDLE>{d['idle_after_s']:.0f}s"
    long_col = f"IDLE>{d['long_idle_s']:.0f}s"
    rows = [[str(h["count"]), h["host"], h["cluster"] or "-", str(h["idle_over"]), str(h["idle_over_long"]),
             _fmt_age(h["oldest_age_s"]), ",".join(c for c, _ in h["top_commands"][:3])] for h in d["by_host"]]
    _table(["COUNT", "HOST", "CLUSTER", idle_col, long_col, "OLDEST", "TOP CMDS"], rows, right={0, 3, 4, 5})
    cost = f", Redis spent {d['redis_usec'] / 1000:.1f} ms on it" if d.get("redis_usec") is not None else ""
    click.echo(f"\n{d['total']} clients on {shard}; CLIENT LIST {_fmt_bytes(d['bytes'])} read in "
               f"{d['fetch_ms']:.1f} ms, parsed in {d['parse_ms']:.1f} ms{cost}.")
    if d.get("skipped_lines"):
        click.echo(f"{d['skipped_lines']} unreadable line(s) skipped.")


COMMANDS = [redis_cmd, clients_cmd]
