"""Hypothesis budget for the fuzz tests, and the per-test case counts printed at the end of a run.

The default budget keeps the whole directory to about a minute on a loaded 2-core machine. For a
longer local hunt raise it: `CHATOPS_FUZZ_EXAMPLES=5000 .venv/bin/python -m pytest tests/fuzz`
(examples per property), and `CHATOPS_FUZZ_API_EXAMPLES=50` for the API test's cases per operation."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

from tests.fuzz.cases import CASES

EXAMPLES = int(os.environ.get("CHATOPS_FUZZ_EXAMPLES", "150"))

# deadline=None: a loaded CI machine makes single examples slow now and then, which is not a bug.
# No example database: every run explores afresh instead of replaying old failures from a
# directory CI never keeps; a failure prints a blob (print_blob) to replay it with @reproduce_failure.
settings.register_profile(
    "chatops-fuzz", max_examples=EXAMPLES, deadline=None, database=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile("chatops-fuzz")


def pytest_terminal_summary(terminalreporter):
    if not CASES:
        return
    terminalreporter.section("fuzz cases run")
    width = max(map(len, CASES))
    for name, n in sorted(CASES.items()):
        terminalreporter.write_line(f"{name:<{width}}  {n:>6}")
    terminalreporter.write_line(f"{'total':<{width}}  {sum(CASES.values()):>6}")
