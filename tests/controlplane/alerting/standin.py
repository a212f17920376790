"""A stand-in for Slack (or any webhook receiver): a real HTTP server on 127.0.0.1 that records
every request and answers as told: 200, 500, 429 with Retry-After, 400 with a body, or hangs;
it can be stopped (connection refused) and started again on the same port."""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Request:
    at: float
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    answered: int | None      # the status sent; None when it hung

    @property
    def json(self):
        return json.loads(self.body)


class StandIn:
    def __init__(self, port: int = 0):
        self.port = port
        self.requests: list[Request] = []
        self.mode = "ok"            # ok | fail | throttle | reject | hang
        self.retry_after = "1"
        self.reject_body = "invalid_payload"
        self._lock = threading.Lock()
        self._release = threading.Event()
        self.server: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None

    # -- lifecycle --

    def start(self) -> StandIn:
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                stand_in.answer(self, raw)

        self._release.clear()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        """Close the listening socket: connections are refused until start()."""
        self._release.set()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def refuses(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return False
        except OSError:
            return True

    # -- answering --

    def answer(self, handler: BaseHTTPRequestHandler, raw: bytes) -> None:
        mode = self.mode
        req = Request(time.time(), handler.command, handler.path, dict(handler.headers.items()), raw, None)
        with self._lock:
            self.requests.append(req)
        if mode == "hang":
            self._release.wait(60)
            return
        status, body, extra = {"ok": (200, b"ok", {}), "fail": (500, b"internal_error", {}),
                               "throttle": (429, b"rate_limited", {"Retry-After": self.retry_after}),
                               "reject": (400, self.reject_body.encode(), {})}[mode]
        req.answered = status
        handler.send_response(status)
        for k, v in {"Content-Type": "text/plain", "Content-Length": str(len(body)), **extra}.items():
            handler.send_header(k, v)
        handler.end_headers()
        handler.wfile.write(body)

    def release(self) -> None:
        """End every hanging request (they get no answer)."""
        self._release.set()

    def delivered(self) -> list[Request]:
        """Requests answered 200."""
        with self._lock:
            return [r for r in self.requests if r.answered == 200]
