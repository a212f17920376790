"""Finding Prometheus' programs for the dashboards tests: fail (never skip) with the install command."""

from __future__ import annotations

import shutil

import pytest

PACKAGES = {"promtool": "prometheus", "prometheus": "prometheus",
            "prometheus-alertmanager": "prometheus-alertmanager", "amtool": "prometheus-alertmanager"}


def require(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if not path:
        pytest.fail(f"{name} is not installed (or not on PATH). Install it with: "
                    f"sudo apt-get install -y {PACKAGES[name]}   (or run `make test`, which installs it)",
                    pytrace=False)
    return path
