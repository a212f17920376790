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


def _layout_folders() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    layout = readme.split("## Layout", 1)[1]
    return re.findall(r"^\| `([a-z_]+)/` \|", layout, re.M)


def test_readme_layout_lists_every_top_level_package_and_no_folder_that_is_missing():
    folders = _layout_folders()
    assert folders, "README's Layout table lists no folder"
    assert [f for f in folders if not (ROOT / f).is_dir()] == []
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests", "bench"}
    assert packages - set(folders) == set()


def test_architecture_names_every_module():
    """docs/architecture.md's tree has a line for every module, so a newcomer following a data
    flow through it never meets a file it does not mention."""
    doc = (ROOT / "docs" / "architecture.md").read_text()
    missing = []
    for pkg in ("cluster", "chat", "collectors", "controlplane"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            if path.name in ("__init__.py", "__main__.py"):
                continue
            rel = path.relative_to(ROOT)
            if path.name not in doc:
                missing.append(str(rel))
    assert missing == []


def test_the_data_plane_and_collectors_never_import_the_control_plane():
    offenders = []
    for pkg in ("cluster", "chat", "collectors"):
        for path in (ROOT / pkg).rglob("*.py"):
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if re.match(r"\s*(from|import) controlplane\b", line):
                    offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert offenders == []
