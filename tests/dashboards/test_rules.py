"""The shipped Prometheus rules pass `promtool check rules`, and their unit tests
(dashboards/prometheus/tests/*.yml) pass `promtool test rules`: every alert fires on the input
that should fire it and stays quiet on the input that should not."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, require

PROM = REPO / "dashboards" / "prometheus"
RULES = PROM / "chatops-rules.yml"
UNIT_TESTS = sorted((PROM / "tests").glob("*.yml"))
RUNBOOKS = {p.stem for p in (REPO / "runbooks").glob("*.md")}


def _alerts() -> list[dict]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "alert" in r]


def test_promtool_check_rules():
    out = subprocess.run([require("promtool"), "check", "rules", str(RULES)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


@pytest.mark.parametrize("unit", UNIT_TESTS, ids=[p.stem for p in UNIT_TESTS])
def test_promtool_test_rules(unit: Path):
    out = subprocess.run([require("promtool"), "test", "rules", unit.name], capture_output=True, text=True,
                         timeout=120, cwd=unit.parent)
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_alert_is_tested_firing_and_not_firing():
    """Each alert name appears in the unit tests with an expected alert and with an empty expectation."""
    fires: set[str] = set()
    quiet: set[str] = set()
    for unit in UNIT_TESTS:
        for t in yaml.safe_load(unit.read_text())["tests"]:
            for case in t.get("alert_rule_test") or []:
                (fires if case.get("exp_alerts") else quiet).add(case["alertname"])
    names = {a["alert"] for a in _alerts()}
    assert names - fires == set(), f"alerts never tested firing: {sorted(names - fires)}"
    assert names - quiet == set(), f"alerts never tested quiet: {sorted(names - quiet)}"


def test_every_alert_has_severity_subject_and_runbook():
    for a in _alerts():
        assert a["labels"]["severity"] in ("warning", "critical"), a["alert"]
        assert set(a["annotations"]) == {"summary", "description", "runbook_url"}, a["alert"]
        m = re.fullmatch(r"\{\{ \$externalLabels\.chatops_url \}\}/runbooks/(\w+)", a["annotations"]["runbook_url"])
        assert m and m.group(1) in RUNBOOKS, (a["alert"], a["annotations"]["runbook_url"])
        assert m.group(1) == a["labels"]["detector"], a["alert"]
        assert a.get("for"), f"{a['alert']} has no `for` (the detectors' hold)"
