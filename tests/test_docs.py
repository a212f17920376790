"""The docs that are part of the product keep up with the code they describe."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_dependency_says_why_it_is_there():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = project["dependencies"] + project["optional-dependencies"]["test"]
    names = {re.match(r"[A-Za-z0-9_.-]+", d).group(0).lower() for d in declared}
    doc = (ROOT / "docs" / "dependencies.md").read_text().lower()
    headed = set(re.findall(r"^### ([a-z0-9_.-]+)", doc, re.M))
    assert names - headed == set(), "docs/dependencies.md has no section for these"
