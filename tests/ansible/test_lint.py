"""ansible-lint's production profile passes on ansible/, offline (the machine never reaches Galaxy)."""

from __future__ import annotations

import subprocess

from tests.ansible.conftest import ANSIBLE, REPO, ansible_bin, ansible_env


def test_ansible_lint_production_profile_passes():
    proc = subprocess.run([ansible_bin("ansible-lint"), "--offline", "--profile", "production", "--nocolor",
                           str(ANSIBLE)], capture_output=True, text=True, cwd=REPO, timeout=300,
                          env=ansible_env())
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "Profile 'production' was required, and it passed" in out, out
