"""Write chatops' Grafana dashboards and Prometheus rules from code.

    python -m dashboards.generate                      # dashboards/grafana/*.json, dashboards/prometheus/chatops-rules.yml
    python -m dashboards.generate --out DIR            # the same files under DIR (tests compare them)
    python -m dashboards.generate --cluster-file F --rules-only --out DIR
                                                       # rules with F's controlplane.thresholds

The output is stable (sorted keys, two-space indents, a final newline), so the committed files
change only when the code does; tests/dashboards/test_generate.py fails when they are stale.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):          # `python dashboards/generate.py` from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from grafana_foundation_sdk.cog.encoder import JSONEncoder

from dashboards import grafana, rules

HERE = Path(__file__).resolve().parent
RULES = Path("prometheus") / "chatops-rules.yml"


def dashboard_json(name: str) -> str:
    return json.dumps(grafana.DASHBOARDS[name]().build(), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


def write(out: Path, cluster_file: Path | None = None, rules_only: bool = False) -> list[Path]:
    written = []
    if not rules_only:
        (out / "grafana").mkdir(parents=True, exist_ok=True)
        for name in sorted(grafana.DASHBOARDS):
            path = out / "grafana" / f"{name}.json"
            path.write_text(dashboard_json(name))
            written.append(path)
    th, source = None, "the defaults of cluster/spec.py Thresholds"
    if cluster_file is not None:
        from cluster import clusterfile
        th = clusterfile.load(cluster_file).spec.controlplane.thresholds
        source = f"controlplane.thresholds of {cluster_file.name}"
    path = out / RULES
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(rules.render(th, source))
    written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dashboards.generate", description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE, help="directory to write into (default: dashboards/)")
    ap.add_argument("--cluster-file", type=Path, help="take the rules' thresholds from this cluster file")
    ap.add_argument("--rules-only", action="store_true", help="write only the Prometheus rules")
    args = ap.parse_args(argv)
    for path in write(args.out, args.cluster_file, args.rules_only):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
