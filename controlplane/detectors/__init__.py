"""One module per finding kind, each with `KIND`, `detect(window, cf) -> list[Finding]` and what it
declares about its findings (see base.py for the contract and the defaults).

This is the one registry of detectors. Every module of this package that defines `KIND` and
`detect` is registered the first time anyone asks; `register(module)` adds one from elsewhere (a
test's temporary module, a site's own detector) and `unregister(kind)` takes it away again.
The engine runs `registered()`; incidents.py and the read model ask `for_kind()`.
"""

from __future__ import annotations

import importlib
import pkgutil
import threading
from typing import Any

from controlplane.detectors.base import Detector

NOT_DETECTORS = ("base", "engine")       # modules of this package that are not one

_lock = threading.Lock()
_registered: dict[str, Detector] = {}
_discovered = False


def _discover() -> None:
    global _discovered
    if _discovered:                      # read without the lock: it only ever turns True
        return
    with _lock:
        if _discovered:
            return
        for mod in pkgutil.iter_modules(__path__):
            if mod.name.startswith("_") or mod.name in NOT_DETECTORS:
                continue
            module = importlib.import_module(f"{__name__}.{mod.name}")
            if isinstance(getattr(module, "KIND", None), str) and callable(getattr(module, "detect", None)):
                _add(Detector.of(module))
        _discovered = True


def _add(d: Detector) -> Detector:
    old = _registered.get(d.kind)
    if old is None:
        _registered[d.kind] = d
        return d
    if old.module is not d.module:
        raise ValueError(f"detector kind {d.kind!r} is already registered by "
                         f"{getattr(old.module, '__name__', old.module)}")
    return old


def register(module: Any) -> Detector:
    """Register a detector module (anything with `KIND` and `detect`). Registering the same
    module again is harmless; another module claiming a registered kind is refused."""
    d = Detector.of(module)
    _discover()
    with _lock:
        return _add(d)


def unregister(kind: str) -> None:
    _discover()
    with _lock:
        _registered.pop(kind, None)


def registered() -> dict[str, Detector]:
    """kind -> Detector, sorted by kind."""
    _discover()
    with _lock:
        return dict(sorted(_registered.items()))


def for_kind(kind: Any) -> Detector:
    """The detector of a finding's kind; an unknown kind (a finding stored by an older version)
    gets the defaults. Called for every finding comparison, so it takes no lock."""
    _discover()
    found = _registered.get(kind) if isinstance(kind, str) else None
    return found if found is not None else Detector(str(kind or ""))
