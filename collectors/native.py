"""Opening the collectors' compiled fast paths (collectors/*.c, loaded with ctypes, no Python
headers): where each library is, how to build it, and why it could not be loaded."""

from __future__ import annotations

import ctypes
from pathlib import Path


def build_hint(library: Path, source: Path) -> str:
    return (f"build it with `make` in a checkout, or `cc -O2 -shared -fPIC -o {library} {source}` "
            "(needs a C compiler: apt-get install -y gcc libc6-dev)")


def open_library(library: Path, hint: str) -> tuple[ctypes.CDLL | None, str | None]:
    """The loaded library, or None and a sentence saying why (ending with `hint`)."""
    if not library.exists():
        return None, f"{library} is missing; {hint}"
    try:
        return ctypes.CDLL(str(library)), None
    except OSError as exc:
        return None, f"cannot load {library}: {exc}; {hint}"
