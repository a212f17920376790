"""The runbooks: one Markdown file per finding kind, shipped as package data so an installed
control plane serves them as a checkout does."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def directory() -> Path:
    return Path(str(resources.files(__name__)))
