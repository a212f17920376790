"""Auth, first step: reading is open (the control plane listens on loopback); anything that
changes state needs the API token, either as `Authorization: Bearer <token>` or through a browser
session opened by typing the token into /login.

- The token comes only from the environment variable the cluster file names
  (`controlplane.auth_token_env`, default CHATOPS_API_TOKEN), read once when the app is built, so
  it is never in a file in the repo. It is never logged. Unset or empty: every state-changing
  route answers 403 saying which variable to set, and nobody can log in.
- Sessions are Flask's signed cookies. Without a configured SECRET_KEY each process draws a random
  one, so every session ends when the control plane restarts (log in again); set SECRET_KEY in
  the app config to keep them, and to share them if several processes ever serve the app. A
  session also carries a keyed fingerprint of the token, so changing the token ends old sessions.
- CSRF: each session has a random token, `csrf_token()` in templates. Every state-changing
  request from a browser (any POST/PUT/PATCH/DELETE not authenticated by Bearer) must send it as
  form field `csrf_token` or header `X-CSRF-Token`, or gets 400. Bearer requests are exempt: a
  browser never adds that header by itself, so a forged cross-site request cannot carry it.

Actor: the audit and a plan's created_by/applied_by record who acted, "token:<addr>" or
"session:<addr>", never the token. A token caller (a playbook, a script) may name itself with the
`X-Chatops-Actor` header, 1-64 characters of [A-Za-z0-9._:@/-]: the actor is then
"<name> (token:<addr>)", e.g. "ansible:kill-leaked.yml (token:127.0.0.1)". The name is a label the
token holder chose, so the token part always stays. A malformed name is a 400; a browser session
sending the header is a 400 too (a session acts as itself, and the header is not one a form can
set, so accepting it would only let page scripts relabel the audit).

Throttle: guessing the token is slowed per client address (`request.remote_addr`). After
LOGIN_FAILURES (5) wrong tokens within LOGIN_WINDOW (60 s) through the login form, that address
gets 429 with Retry-After for LOGIN_LOCKOUT (60 s) on every login, right token or not (else a
guess that hits would still be told so); each further lockout doubles the delay up to
LOGIN_LOCKOUT_MAX (900 s). Bearer tokens have their own count, with API_TOKEN_FAILURES (10)
allowed: scripts share an address (on loopback most callers are 127.0.0.1), and one with a stale
token should not lock the dashboard's login, nor a few typos lock the playbooks. A successful login
through the form resets its count (a valid Bearer request does not, so a busy script cannot keep
resetting a guesser on its address); a quiet LOGIN_LOCKOUT_MAX forgets an address. Reading needs no token and is never
throttled. The state is in-process (there is one control plane process) and bounded: at most
LOGIN_MAX_ADDRESSES addresses, the least recently failing forgotten first.

Use `@require_auth` on every state-changing view; tests/controlplane/web/test_auth.py walks the URL
map and fails on any mutating route an anonymous client can reach.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import math
import os
import re
import secrets
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Flask,
    Response,
    current_app,
    g,
    jsonify,
    make_response,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from markupsafe import escape

from cluster.spec import ControlPlane

log = logging.getLogger(__name__)

bp = Blueprint("auth", __name__, template_folder="templates")

MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
_EXT = "chatops_auth"
_THROTTLE = "chatops_auth_throttle"            # the login form
_API_THROTTLE = "chatops_auth_api_throttle"    # Bearer tokens
_SESSION_USER = "user"
_SESSION_CSRF = "csrf"
_SESSION_FINGERPRINT = "auth_fp"
ACTOR_HEADER = "X-Chatops-Actor"
_ACTOR_RE = re.compile(r"[A-Za-z0-9._:@/-]{1,64}")


@dataclass(frozen=True)
class _Settings:
    env_name: str
    token: str  # "" when unset

    @property
    def configured(self) -> bool:
        return bool(self.token)


@dataclass
class _Failures:
    recent: deque = field(default_factory=deque)   # times of failures inside the window
    strikes: int = 0                               # lockouts so far: the next one lasts delay * 2**strikes
    until: float = 0.0                             # locked until (time.monotonic())
    last: float = 0.0


class Throttle:
    """Failed credentials per address: `failures` within `window` seconds lock the address for
    `delay` seconds, doubling with each lockout up to `max_delay`, until a success (or
    `max_delay` without a failure) forgets it. Remembers at most `max_entries` addresses, the
    least recently failing forgotten first. Thread-safe (waitress serves from a thread pool)."""

    def __init__(self, failures: int = 5, window: float = 60.0, delay: float = 60.0,
                 max_delay: float = 900.0, max_entries: int = 10_000):
        self.failures, self.window, self.delay, self.max_delay = failures, window, delay, max_delay
        self.max_entries = max_entries
        self._entries: OrderedDict[str, _Failures] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def retry_after(self, addr: str, now: float | None = None) -> int:
        """Whole seconds until `addr` may try again; 0 when it may now."""
        now = time.monotonic() if now is None else now
        with self._lock:
            e = self._entries.get(addr)
            return max(0, math.ceil(e.until - now)) if e is not None else 0

    def failed(self, addr: str, now: float | None = None) -> int:
        """Count a failure of `addr`; returns the lockout it started in seconds, else 0."""
        now = time.monotonic() if now is None else now
        with self._lock:
            e = self._entries.pop(addr, None)
            if e is None or (now - e.last > self.max_delay and now >= e.until):
                e = _Failures()
            self._entries[addr] = e                      # the most recent at the end
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
            e.last = now
            while e.recent and now - e.recent[0] > self.window:
                e.recent.popleft()
            e.recent.append(now)
            if len(e.recent) < self.failures:
                return 0
            lockout = min(self.delay * 2 ** e.strikes, self.max_delay)
            e.strikes += 1
            e.recent.clear()
            e.until = now + lockout
            return math.ceil(lockout)

    def succeeded(self, addr: str) -> None:
        with self._lock:
            self._entries.pop(addr, None)


def init_app(app: Flask) -> None:
    """Read the token's variable, make sure there is a SECRET_KEY, and register /login, /logout,
    the CSRF check and `csrf_token()` for templates."""
    cluster = app.config.get("CLUSTER")
    cluster = getattr(cluster, "spec", cluster)  # a LoadedCluster works too
    env_name = cluster.controlplane.auth_token_env if cluster is not None else ControlPlane().auth_token_env
    settings = _Settings(env_name, os.environ.get(env_name, "").strip())
    app.extensions[_EXT] = settings
    limits = dict(window=float(app.config.get("LOGIN_WINDOW", 60)), delay=float(app.config.get("LOGIN_LOCKOUT", 60)),
                  max_delay=float(app.config.get("LOGIN_LOCKOUT_MAX", 900)),
                  max_entries=int(app.config.get("LOGIN_MAX_ADDRESSES", 10_000)))
    app.extensions[_THROTTLE] = Throttle(failures=int(app.config.get("LOGIN_FAILURES", 5)), **limits)
    app.extensions[_API_THROTTLE] = Throttle(failures=int(app.config.get("API_TOKEN_FAILURES", 10)), **limits)
    if not settings.configured:
        log.warning("%s is not set: logins and state-changing actions are refused until it is", env_name)
    if not app.config.get("SECRET_KEY"):
        app.config["SECRET_KEY"] = secrets.token_hex(32)  # sessions end with this process
    app.config.setdefault("SESSION_COOKIE_SAMESITE", "Lax")
    app.config.setdefault("SESSION_COOKIE_HTTPONLY", True)
    app.register_blueprint(bp)
    app.before_request(_csrf_guard)
    app.jinja_env.globals["csrf_token"] = csrf_token
    app.context_processor(lambda: {"logged_in": _session_valid(), "auth_configured": settings.configured})


def _settings() -> _Settings:
    try:
        return current_app.extensions[_EXT]
    except KeyError:
        raise RuntimeError("controlplane.auth.init_app(app) was not called") from None


# -- the pieces --

def csrf_token() -> str:
    """This session's CSRF token, created on first use."""
    token = session.get(_SESSION_CSRF)
    if not token:
        token = session[_SESSION_CSRF] = secrets.token_urlsafe(32)
    return token


def _csrf_ok() -> bool:
    expected = session.get(_SESSION_CSRF)
    sent = request.headers.get(CSRF_HEADER) or request.form.get(CSRF_FIELD) or ""
    return bool(expected) and hmac.compare_digest(sent.encode(), expected.encode())


def _fingerprint(token: str) -> str:
    key = str(current_app.config["SECRET_KEY"]).encode()
    return hmac.new(key, b"chatops-session:" + token.encode(), hashlib.sha256).hexdigest()[:32]


def _bearer() -> str | None:
    """The Bearer credential sent, or None when there is no Bearer header."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None


def _bearer_valid() -> bool:
    sent, s = _bearer(), _settings()
    return sent is not None and s.configured and hmac.compare_digest(sent.encode(), s.token.encode())


def _session_valid() -> bool:
    s = _settings()
    fp = session.get(_SESSION_FINGERPRINT)
    return (s.configured and session.get(_SESSION_USER) == "token" and isinstance(fp, str)
            and hmac.compare_digest(fp, _fingerprint(s.token)))


class _BadActor(ValueError):
    pass


def _named_actor(base: str) -> str:
    """`base`, or "<name> (<base>)" when the request names its actor in X-Chatops-Actor;
    _BadActor when that name is malformed."""
    name = request.headers.get(ACTOR_HEADER)
    if name is None:
        return base
    if not _ACTOR_RE.fullmatch(name):
        raise _BadActor(f"bad header {ACTOR_HEADER}: give 1 to 64 characters of letters, digits and "
                        f". _ : @ / - (e.g. ansible:kill-leaked.yml); got {len(name)} characters")
    return f"{name} ({base})"


def _wants_json() -> bool:
    if request.path.startswith("/api/") or request.is_json:
        return True
    best = request.accept_mimetypes.best_match(["text/html", "application/json"])
    return best == "application/json"


def _error(status: int, message: str, headers: dict | None = None) -> Response:
    if _wants_json():
        # the same shape as the app's other API errors (controlplane/web/app.py)
        resp = make_response(jsonify(error={"status": status, "message": message}), status)
    else:
        body = (f"<!doctype html><html lang=en><meta charset=utf-8><title>{status}</title>"
                f"<h1>{status}</h1><p>{escape(message)}</p>")
        resp = make_response(body, status)
        resp.mimetype = "text/html"
    for k, v in (headers or {}).items():
        resp.headers[k] = v
    return resp


def _throttle(api: bool = False) -> Throttle:
    return current_app.extensions[_API_THROTTLE if api else _THROTTLE]


def _addr() -> str:
    return request.remote_addr or "unknown"


def _too_many(wait: int) -> Response:
    return _error(429, f"too many wrong tokens from {_addr()}: try again in {wait} s",
                  {"Retry-After": str(wait)})


def _not_configured() -> Response:
    env = _settings().env_name
    return _error(403, f"state-changing actions are disabled: set the environment variable {env} "
                       "(named by controlplane.auth_token_env in the cluster file) to an API token "
                       "and restart the control plane")


def _csrf_failed() -> Response:
    return _error(400, f"missing or wrong CSRF token: send form field {CSRF_FIELD} or header "
                       f"{CSRF_HEADER} (reload the page if your session expired)")


def _local_path(target: str | None) -> str | None:
    """`target` if it is a path on this site (no scheme, no host, no `//` or backslash tricks)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return None
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in target):
        return None
    parts = urlsplit(target)
    return target if not parts.scheme and not parts.netloc else None


def _login_redirect() -> Response:
    if request.method in ("GET", "HEAD"):
        nxt = request.full_path if request.query_string else request.path
    else:  # after logging in, go back to the page the form was on, not to a POST-only URL
        ref = urlsplit(request.referrer or "")
        same_site = ref.netloc in ("", request.host)
        nxt = _local_path(ref.path + (f"?{ref.query}" if ref.query else "")) if same_site else None
    return redirect(url_for("auth.login", next=nxt or "/"))


def _csrf_guard():
    """before_request: CSRF for browser requests to state-changing routes that `require_auth`
    does not already check (it checks after authentication, so an anonymous client learns it
    must log in rather than that a token is missing)."""
    if request.method not in MUTATING or request.endpoint is None:
        return None
    view = current_app.view_functions.get(request.endpoint)
    if getattr(view, "_chatops_requires_auth", False):
        return None
    if _bearer() is not None and _bearer_valid():
        return None
    if not _csrf_ok():
        return _csrf_failed()
    return None


def require_auth(view: Callable) -> Callable:
    """Guard a state-changing view: a valid Bearer token, or a logged-in session (with the CSRF
    token on state-changing methods). Anonymous API clients get 401, browsers the login page."""
    @functools.wraps(view)
    def wrapped(*args, **kwargs):
        s = _settings()
        if not s.configured:
            return _not_configured()
        sent = _bearer()
        if sent is not None:
            wait = _throttle(api=True).retry_after(_addr())
            if wait:
                return _too_many(wait)
            if not _bearer_valid():
                if _throttle(api=True).failed(_addr()):
                    log.warning("too many wrong API tokens from %s: locked out", _addr())
                return _error(401, "invalid API token",
                              {"WWW-Authenticate": 'Bearer realm="chatops", error="invalid_token"'})
            try:
                g.chatops_actor = _named_actor(f"token:{request.remote_addr}")
            except _BadActor as exc:
                return _error(400, str(exc))
            return view(*args, **kwargs)
        if _session_valid():
            if request.method in MUTATING and not _csrf_ok():
                return _csrf_failed()
            if ACTOR_HEADER in request.headers:
                return _error(400, f"{ACTOR_HEADER} is for API token callers; a browser session acts "
                                   "as itself")
            g.chatops_actor = f"session:{request.remote_addr}"
            return view(*args, **kwargs)
        if request.path.startswith("/api/"):
            return _error(401, "authentication required: send Authorization: Bearer <token>",
                          {"WWW-Authenticate": 'Bearer realm="chatops"'})
        return _login_redirect()

    wrapped._chatops_requires_auth = True
    return wrapped


def current_actor() -> str:
    """Who is acting, for the audit: "token:<addr>" (or "<X-Chatops-Actor> (token:<addr>)"),
    "session:<addr>" or "anonymous:<addr>". Never the token itself."""
    if "chatops_actor" in g:
        return g.chatops_actor
    if _bearer_valid():
        try:
            return _named_actor(f"token:{request.remote_addr}")
        except _BadActor:
            return f"token:{request.remote_addr}"
    if _session_valid():
        return f"session:{request.remote_addr}"
    return f"anonymous:{request.remote_addr}"


# -- the views --

@bp.route("/login", methods=["GET", "POST"])
def login():
    s = _settings()
    nxt = _local_path(request.values.get("next")) or "/"
    if request.method == "GET":
        if _session_valid():
            return redirect(nxt)
        error = None if s.configured else f"Logins are disabled: set {s.env_name} and restart the control plane."
        return render_template("login.html", next=nxt, error=error), (200 if s.configured else 403)
    # POST: the CSRF guard has already checked the form's token
    if not s.configured:
        return render_template("login.html", next=nxt,
                               error=f"Logins are disabled: set {s.env_name} and restart the control plane."), 403
    wait = _throttle().retry_after(_addr())
    if wait:
        log.warning("login from %s refused: locked out for %d s more", _addr(), wait)
        resp = make_response(render_template("login.html", next=nxt, retry_after=wait,
                                             error=f"Too many wrong tokens from your address: try again "
                                                   f"in {wait} s."), 429)
        resp.headers["Retry-After"] = str(wait)
        return resp
    sent = request.form.get("token", "")
    if hmac.compare_digest(sent.encode(), s.token.encode()):
        _throttle().succeeded(_addr())
        session.clear()  # a fresh session (and CSRF token) for the logged-in user
        session[_SESSION_USER] = "token"
        session[_SESSION_FINGERPRINT] = _fingerprint(s.token)
        csrf_token()
        log.info("login from %s", request.remote_addr)
        return redirect(nxt)
    log.warning("failed login from %s", request.remote_addr)
    if _throttle().failed(_addr()):
        log.warning("too many failed logins from %s: locked out", _addr())
    return render_template("login.html", next=nxt, error="That token is not right."), 401


@bp.route("/logout", methods=["POST"])
@require_auth
def logout():
    session.clear()
    if _wants_json():
        return jsonify({"ok": True})
    return redirect(url_for("auth.login"))
