"""Twitch's state messages and room modes as a real IRC client library sees them (jaraco's `irc`
package), through HAProxy, against a small live cluster (Redis, HAProxy, edge, clue, exchange):
GLOBALUSERSTATE at login, USERSTATE and ROOMSTATE on JOIN, USERSTATE after a message, CLEARCHAT
for a timeout and for `.clear`, CLEARMSG for `.delete`, a ROOMSTATE change for `.slow 5` and
`msg_slowmode` for the message that comes too soon, and `/me` as a CTCP ACTION."""

from __future__ import annotations

import asyncio
import socket

import pytest

from chat import users
from chat.cache import ShardedCache
from tests.chat.ircclient import IrcClient, tags
from tests.conftest import chatops

ROOM = "lobby"
TWITCH_CAPS = ("twitch.tv/tags", "twitch.tv/commands")


class TwitchClient(IrcClient):
    """One `irc` package connection that asks for Twitch's capabilities before it logs in, as
    Twitch's own clients do."""

    def __init__(self, address: str, port: int, nick: str, token: str):
        super().__init__(address, port, nick, password=f"oauth:{token}", caps=TWITCH_CAPS, caps_first=True,
                         welcome=False, tick=0.02)

    def notice(self, msg_id: str) -> dict:
        return tags(self.wait("pubnotice", lambda ev: tags(ev).get("msg-id") == msg_id))

    def say(self, text: str) -> None:
        self.conn.privmsg(f"#{ROOM}", text)


@pytest.fixture(scope="module")
def chat(live_small_cluster):
    """The live cluster's frontend address and port, and tokens for a mod and a viewer of #lobby."""
    rc, cf, run = live_small_cluster

    async def add():
        async with ShardedCache.for_host(cf, "chat1", timeout="2s", run=run) as cache:
            return (await users.add_user(cache, "modmarie", mod_rooms=(ROOM,), color="#1E90FF"),
                    await users.add_user(cache, "streamer", broadcaster_rooms=(ROOM,)),
                    await users.add_user(cache, "viewer", color="#0D4200", display_name="Viewer"))
    mod, streamer, viewer = asyncio.run(add())
    # The operator's way, for the options this part adds.
    added = chatops("users", "add", "fan", "--sub", ROOM, "--follows", f"#{ROOM}", "--config", str(rc.config),
                    "--run-dir", str(rc.run))
    assert added.returncode == 0 and "subscriber of #lobby, follows #lobby" in added.stderr, added.stderr
    fan = added.stdout.strip().removeprefix("oauth:")
    return cf.address("chat1"), cf.clusters["main"].frontend.irc_port, mod, streamer, viewer, fan


def test_twitch_client_sees_state_messages_and_room_modes(chat):
    address, port, mod_token, streamer_token, viewer_token, _ = chat
    viewer = TwitchClient(address, port, "viewer", viewer_token)
    mod = TwitchClient(address, port, "modmarie", mod_token)
    streamer = TwitchClient(address, port, "streamer", streamer_token)
    try:
        glob = tags(viewer.wait("globaluserstate"))
        assert glob["display-name"] == "Viewer" and glob["color"] == "#0D4200" and glob["user-id"]
        assert set(glob) == {"badge-info", "badges", "color", "display-name", "emote-sets", "turbo",
                             "user-id", "user-type"}

        for client in (viewer, mod, streamer):
            client.conn.join(f"#{ROOM}")
        joined = tags(viewer.wait("roomstate"))
        assert {k: joined[k] for k in ("emote-only", "followers-only", "r9k", "slow", "subs-only")} == {
            "emote-only": "0", "followers-only": "-1", "r9k": "0", "slow": "0", "subs-only": "0"}
        assert joined["room-id"]
        assert tags(viewer.wait("userstate"))["mod"] == "0"
        mine = tags(mod.wait("userstate"))
        assert mine["mod"] == "1" and mine["badges"] == "moderator/1" and mine["user-type"] == "mod"
        mod.wait("roomstate")
        streamer.wait("roomstate")

        # USERSTATE after an accepted message names it; the mod deletes it: CLEARMSG for everyone.
        viewer.say("buy followers at example.com")
        sent = tags(viewer.wait("userstate", lambda ev: "id" in tags(ev)))
        seen = mod.wait("pubmsg", lambda ev: ev.arguments == ["buy followers at example.com"])
        assert tags(seen)["id"] == sent["id"]
        mod.say(f".delete {sent['id']}")
        cleared = viewer.wait("clearmsg")
        assert cleared.target == f"#{ROOM}" and cleared.arguments == ["buy followers at example.com"]
        assert tags(cleared)["target-msg-id"] == sent["id"] and tags(cleared)["login"] == "viewer"
        mod.notice("delete_message_success")
        mod.say(".delete 00000000-0000-0000-0000-000000000000")
        mod.notice("bad_delete_message_error")
        streamer.say("welcome all")
        said = mod.wait("pubmsg", lambda ev: ev.arguments == ["welcome all"])
        mod.say(f".delete {tags(said)['id']}")
        mod.notice("bad_delete_message_broadcaster")

        # A timeout: CLEARCHAT naming the user; `.clear`: CLEARCHAT for the whole room.
        mod.say(".timeout viewer 60 spam")
        timed_out = viewer.wait("clearchat")
        assert timed_out.arguments == ["viewer"] and tags(timed_out)["ban-duration"] == "60"
        mod.say(".unban viewer")
        mod.notice("unban_success")
        mod.say(".clear")
        assert viewer.wait("clearchat").arguments == []

        # Slow mode: only the changed tag, a NOTICE for the room, and the second message refused.
        mod.say(".slow 5")
        changed = tags(viewer.wait("roomstate"))
        assert changed == {"room-id": joined["room-id"], "slow": "5"}
        viewer.notice("slow_on")
        viewer.say("first")
        viewer.wait("userstate", lambda ev: "id" in tags(ev))
        viewer.say("second, too soon")
        refused = viewer.notice("msg_slowmode")
        assert refused["msg-id"] == "msg_slowmode"
        mod.say("mods are exempt")
        mod.say("from slow mode")
        mod.wait("userstate", lambda ev: "id" in tags(ev))
        mod.wait("userstate", lambda ev: "id" in tags(ev))

        # /me reaches everyone as a CTCP ACTION.
        mod.say("/me waves")
        action = viewer.wait("action", lambda ev: ev.source.nick == "modmarie")
        assert action.arguments == ["waves"] and action.target == f"#{ROOM}"
        mod.say(".slowoff")
        assert tags(viewer.wait("roomstate")) == {"room-id": joined["room-id"], "slow": "0"}
    finally:
        for client in (viewer, mod, streamer):
            client.close()


def test_anonymous_join_on_the_wire(chat):
    """The bytes themselves, for an anonymous reader: no GLOBALUSERSTATE (it has no user), then
    JOIN, NAMES, USERSTATE and ROOMSTATE, with the channel a plain middle parameter."""
    address, port = chat[0], chat[1]
    with socket.create_connection((address, port), timeout=5) as sock:
        sock.sendall(b"CAP REQ :twitch.tv/tags twitch.tv/commands\r\nNICK justinfan4242\r\nJOIN #lobby\r\n")
        data = b""
        while b" ROOMSTATE " not in data:
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
    lines = data.split(b"\r\n")
    after = lines[next(i for i, ln in enumerate(lines) if b" JOIN #lobby" in ln):]
    assert after[0] == b":justinfan4242!justinfan4242@justinfan4242.tmi.chatops.local JOIN #lobby"
    assert b" 366 justinfan4242 #lobby :" in after[2]
    assert after[3] == (b"@badge-info=;badges=;color=;display-name=justinfan4242;emote-sets=0;mod=0;"
                        b"subscriber=0;turbo=0;user-type= :tmi.chatops.local USERSTATE #lobby")
    assert after[4].startswith(b"@emote-only=0;followers-only=-1;r9k=0;room-id=")
    assert after[4].endswith(b";slow=0;subs-only=0 :tmi.chatops.local ROOMSTATE #lobby")
    assert not any(b"GLOBALUSERSTATE" in ln for ln in lines)


def test_subscribers_followers_emote_only_and_unique_chat(chat):
    """Each mode refuses whom Twitch refuses, with Twitch's msg-id, and lets the rest through; a
    subscriber who followed a minute ago is a follower, but not of ten minutes' standing."""
    address, port, mod_token, _, viewer_token, fan_token = chat
    mod = TwitchClient(address, port, "modmarie", mod_token)
    viewer = TwitchClient(address, port, "viewer", viewer_token)
    fan = TwitchClient(address, port, "fan", fan_token)

    def accepted(client: TwitchClient, text: str) -> None:
        client.say(text)
        client.wait("userstate", lambda ev: "id" in tags(ev))

    def mode(command: str, msg_id: str) -> None:
        mod.say(command)
        viewer.notice(msg_id)
        fan.wait("roomstate")

    try:
        for client in (mod, viewer, fan):
            client.conn.join(f"#{ROOM}")
            client.wait("roomstate")
        mode(".subscribers", "subs_on")
        mod.say(".subscribers")
        mod.notice("already_subs_on")
        viewer.say("let me in")
        viewer.notice("msg_subsonly")
        accepted(fan, "hi from a subscriber")
        mode(".subscribersoff", "subs_off")

        mode(".followers 10m", "followers_on")
        viewer.say("hello?")
        viewer.notice("msg_followersonly")
        fan.say("I just followed")
        fan.notice("msg_followersonly_followed")
        mode("/followers", "followers_on_zero")
        accepted(fan, "any follower may talk now")
        mode(".followersoff", "followers_off")

        mode(".emoteonly", "emote_only_on")
        accepted(viewer, "Kappa Kappa <3")
        emoted = fan.wait("pubmsg", lambda ev: ev.arguments == ["Kappa Kappa <3"])
        assert tags(emoted)["emotes"] == "25:0-4,6-10/9:12-13"
        viewer.say("words are not emotes")
        viewer.notice("msg_emoteonly")
        mode(".emoteonlyoff", "emote_only_off")

        mode(".r9kbeta", "r9k_on")
        accepted(viewer, "an original thought")
        fan.say("An  ORIGINAL thought")
        fan.notice("msg_r9k")
        mode(".r9kbetaoff", "r9k_off")

        viewer.say(".slow 1")
        viewer.notice("no_permission")
    finally:
        for client in (mod, viewer, fan):
            client.close()
