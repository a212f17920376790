"""The committed dashboards and rules are what the generator writes now."""

from __future__ import annotations

import json
import subprocess
import sys

import yaml

from tests.conftest import REPO

OUT = REPO / "dashboards"
FILES = sorted([*(OUT / "grafana").glob("*.json"), OUT / "prometheus" / "chatops-rules.yml"])


def test_committed_files_match_the_generator(tmp_path):
    run = subprocess.run([sys.executable, "-m", "dashboards.generate", "--out", str(tmp_path)], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    fresh = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert fresh == [p.relative_to(OUT) for p in FILES], "the generator writes other files than are committed"
    stale = [str(p) for p in fresh if (tmp_path / p).read_text() != (OUT / p).read_text()]
    assert not stale, f"dashboards are stale: {stale}; run `make dashboards` and commit the result"


def test_generator_runs_as_a_script_too(tmp_path):
    run = subprocess.run([sys.executable, "dashboards/generate.py", "--out", str(tmp_path), "--rules-only"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "prometheus" / "chatops-rules.yml").read_text() == \
        (OUT / "prometheus" / "chatops-rules.yml").read_text()


def test_rules_take_a_cluster_files_thresholds(tmp_path):
    from tests.conftest import small_cluster, write_cluster
    doc = small_cluster("127.0.0")
    doc["controlplane"]["thresholds"] = {"leaked_idle_clients": 42, "hold": "2m"}
    cf = write_cluster(tmp_path / "cluster.yaml", doc)
    run = subprocess.run([sys.executable, "-m", "dashboards.generate", "--out", str(tmp_path), "--rules-only",
                          "--cluster-file", str(cf)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    alerts = {r["alert"]: r for g in yaml.safe_load((tmp_path / "prometheus" / "chatops-rules.yml").read_text())[
        "groups"] for r in g["rules"] if "alert" in r}
    assert ">= 42" in alerts["ChatopsLeakedClients"]["expr"]
    assert alerts["ChatopsLeakedClients"]["for"] == "120s"


def test_dashboards_have_a_datasource_variable_and_unique_uids():
    uids = set()
    for path in FILES[:-1]:
        d = json.loads(path.read_text())
        names = {v["name"]: v for v in d["templating"]["list"]}
        assert names["datasource"]["type"] == "datasource" and names["datasource"]["query"] == "prometheus"
        assert d["uid"] not in uids
        uids.add(d["uid"])
        prom = [t for p in d["panels"] for t in p.get("targets") or [] if "expr" in t]
        assert prom, path.name
        assert all(t["datasource"]["uid"] == "${datasource}" for t in prom), path.name
    incidents = json.loads((OUT / "grafana" / "incidents.json").read_text())
    anno = [a for a in incidents["annotations"]["list"] if a["datasource"]["type"] == "yesoreyeram-infinity-datasource"]
    assert anno and anno[0]["target"]["url"].startswith("${chatops_url}/api/v1/incidents")
