"""The remediation contract, shared by every action module in this package.

An action module defines:

- `NAME` and `PARAMS`, a `Param` per accepted parameter: anything else, a missing required one, a
  wrong type or a value out of range is refused with `BadParams` naming the parameter (400 in the
  API), before anything is looked at.
- `subject(cf, params) -> str`: what the action changes (`shard:shard2`, `haproxy:chat1`). Applies
  on one subject are serialised by a lock, and the automatic policy's cooldown counts per subject.
- `plan(ctx, params) -> Draft`, without side effects: the human-readable diff of what will change,
  the preconditions it relies on, and `state`, what it saw that the change depends on. The
  fingerprint of `state` is what `apply` re-checks.
- `apply(ctx, params, draft) -> Outcome`: carry the draft out. It is called only after the engine
  re-planned and found the same fingerprint, under the subject's lock.
- `VERIFY`: the finding kinds whose resolution shows the fix worked (`verify` watches them).
- `WRITES_CLUSTER_FILE = True` for an action that writes the cluster file back: its applies also
  take the file's lock, so two of them re-plan and write in turn.
- `ALSO_LOCKS`: subjects besides its own that its apply holds (relocate_shard holds `slotmap` and
  `haproxy:all`, so no slot move or reload runs across its switch).

The engine (plans.py) does the rest the same way for every action: ids, storage, the lock, the
stale check, idempotence (a plan applies at most once), the audit record and the verification.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Callable


class RemediationError(Exception):
    """A plan cannot be made or applied; the message says why, for an operator."""
    status = 400


class BadParams(RemediationError):
    def __init__(self, name: str, message: str):
        super().__init__(f"bad parameter {name}: {message}")
        self.param = name


class StalePlan(RemediationError):
    status = 409


class Busy(RemediationError):
    status = 409


class Unavailable(RemediationError):
    """What the plan needs cannot be reached now (a shard down, no control plane)."""
    status = 503


@dataclass(frozen=True)
class Param:
    kind: type                      # str, int, float or bool
    required: bool = False
    default: Any = None
    minimum: float | None = None
    maximum: float | None = None
    choices: Callable[[Any], list] | tuple | None = None   # a tuple, or cf -> valid values
    help: str = ""
    max_len: int = 200                  # text only: a slot list chosen by the planner is longer


def validate(params: Any, spec: dict[str, Param], cf) -> dict[str, Any]:
    """Typed, complete parameters, or BadParams naming the first bad one. Strings from a command
    line (`--set timeout=60`) are converted; JSON values must already have the right type."""
    if not isinstance(params, dict):
        raise BadParams("params", "must be an object of name: value")
    unknown = sorted(set(params) - set(spec))
    if unknown:
        raise BadParams(str(unknown[0])[:40], f"unknown; this action takes {', '.join(spec) or 'none'}")
    out: dict[str, Any] = {}
    for name, p in spec.items():
        if name not in params or params[name] is None:
            if p.required:
                raise BadParams(name, "is required" + (f" ({p.help})" if p.help else ""))
            out[name] = p.default
            continue
        out[name] = value = _convert(name, params[name], p)
        if p.minimum is not None and value < p.minimum or p.maximum is not None and value > p.maximum:
            raise BadParams(name, f"{value!r} is outside {p.minimum:,g}..{p.maximum:,.0f}" if p.maximum is not None
                            else f"{value!r} is below {p.minimum:,g}")
        valid = p.choices(cf) if callable(p.choices) else p.choices
        if valid is not None and value not in valid:
            raise BadParams(name, f"{str(value)[:40]!r} is not one of: {', '.join(map(str, valid))}")
    return out


def _convert(name: str, raw: Any, p: Param) -> Any:
    if p.kind is bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
            return raw.lower() in ("true", "yes", "on", "1")
        raise BadParams(name, f"{str(raw)[:40]!r} is not true or false")
    if p.kind in (int, float):
        if isinstance(raw, bool):
            raise BadParams(name, "must be a number, not true/false")
        if isinstance(raw, str):
            try:
                raw = int(raw) if p.kind is int else float(raw)
            except ValueError:
                raise BadParams(name, f"{raw[:40]!r} is not {'a whole number' if p.kind is int else 'a number'}") \
                    from None
        if p.kind is int and isinstance(raw, float) and raw.is_integer():
            raw = int(raw)
        if not isinstance(raw, (int, float)) or (p.kind is int and not isinstance(raw, int)) or raw != raw:
            raise BadParams(name, f"{str(raw)[:40]!r} is not {'a whole number' if p.kind is int else 'a number'}")
        return p.kind(raw)
    if not isinstance(raw, str) or not raw or len(raw) > p.max_len or not raw.isprintable():
        raise BadParams(name, f"must be one line of printable text, at most {p.max_len:,} characters")
    return raw


@dataclass
class Draft:
    """What plan() found: the change as a person reads it, and the state it depends on."""
    summary: str
    diff: list[str]                          # one line per change: "- old" / "+ new" / "  kill id=12 ..."
    preconditions: list[str] = field(default_factory=list)
    state: Any = None                        # JSON-ready; its fingerprint is re-checked by apply
    details: dict[str, Any] = field(default_factory=dict)   # for apply: ids to kill, the edit to write...
    changes: bool = True                     # False: nothing to do (already as asked)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.state)


@dataclass
class Outcome:
    ok: bool
    detail: str
    changed: dict[str, Any] = field(default_factory=dict)   # what was changed, for the audit


def fingerprint(state: Any) -> str:
    return hashlib.sha256(json.dumps(state, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class Context:
    """What an action may use: the cluster (and where its file is, for write-back), the run
    directory, the database, the store, and the control plane's admin connections."""
    cf: Any
    cluster_path: Any
    run: Any
    db: Any
    store: Any = None
    admin: Any = None
    on_cluster_change: Any = None    # called with the new model after an action rewrote the file
    replanning: bool = False         # plan() is the apply's re-check: skip what only informs a reader
