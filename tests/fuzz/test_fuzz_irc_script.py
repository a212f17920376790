"""bench/fuzz_irc.py, the atheris target for long local runs: a short bounded run ends by itself
with its JSON summary as the last line, and without atheris it says how to install it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.fuzz.cases import count


def _run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench.fuzz_irc", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env=env)


def test_a_bounded_run_reports_its_runs_as_json(tmp_path):
    try:
        import atheris  # noqa: F401
    except ImportError:
        pytest.fail("atheris is missing: `make test` installs it (pip install -e '.[test]')", pytrace=False)
    r = _run("--runs", "2000", "--crashes", str(tmp_path / "crashes"))
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["runs"] == 2000 and summary["crashes"] == 0 and summary["seconds"] > 0, summary
    assert not (tmp_path / "crashes").exists()
    count("test_fuzz_irc_script::atheris_runs", summary["runs"])


def test_without_atheris_it_says_how_to_install_it(tmp_path):
    (tmp_path / "atheris.py").write_text("raise ImportError('no atheris here')\n")
    r = _run("--runs", "10", env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 1 and "pip install -e '.[fuzz]'" in r.stderr, (r.returncode, r.stderr[-2000:])
