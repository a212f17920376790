"""A real IRC client for live tests: jaraco's `irc` package, pumped from the test thread, that
keeps every event so a test can wait for the one it expects in any order."""

from __future__ import annotations

import time

import irc.client
import irc.connection


def tags(ev) -> dict:
    return {t["key"]: t["value"] or "" for t in (ev.tags or [])}  # the irc package reads "" as None


class IrcClient:
    """`caps` are requested after connecting, as a standard client does, or with `caps_first`
    before the library's PASS/NICK, as Twitch's own clients do (so the login already has them).
    `welcome=False` returns at once, for a test that expects the login to be refused."""

    def __init__(self, address: str, port: int, nick: str, *, password: str | None = None, caps=(),
                 caps_first: bool = False, welcome: bool = True, tick: float = 0.05):
        self.tick = tick
        self.reactor = irc.client.Reactor()
        self.events: list[irc.client.Event] = []
        self.reactor.add_global_handler("all_events", lambda conn, ev: self.events.append(ev), -10)
        factory = irc.connection.Factory()
        if caps and caps_first:
            request = f"CAP REQ :{' '.join(caps)}\r\n".encode()

            def factory(server_address, plain=factory):
                sock = plain(server_address)
                sock.sendall(request)
                return sock
        self.conn = self.reactor.server().connect(address, port, nick, password=password,
                                                  connect_factory=factory)
        if caps and not caps_first:
            self.conn.cap("REQ", ":" + " ".join(caps))
        if welcome:
            self.wait("welcome")

    def wait(self, type_: str, predicate=lambda ev: True, timeout: float = 10.0):
        """The first event of `type_` that `predicate` accepts, taken out of `events`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for ev in self.events:
                if ev.type == type_ and predicate(ev):
                    self.events.remove(ev)
                    return ev
            self.reactor.process_once(self.tick)
        got = [(e.type, e.source, e.target, e.arguments, tags(e)) for e in self.events][-10:]
        raise AssertionError(f"no {type_!r} event within {timeout}s; got {got}")

    def pump(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.reactor.process_once(self.tick)

    def of_type(self, type_: str) -> list:
        return [e for e in self.events if e.type == type_]

    def seen(self, type_: str, nick: str) -> list:
        return [e for e in self.events if e.type == type_ and e.source and e.source.nick == nick]

    def join(self, room: str) -> None:
        self.conn.join(room)
        self.wait("endofnames", lambda ev: ev.arguments[0] == room)

    def send(self, line: str) -> None:
        self.conn.send_raw(line)

    def close(self) -> None:
        self.conn.disconnect()
