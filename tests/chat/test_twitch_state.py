"""Twitch's state messages (chat.twitch) on bytes, and the room-mode rules (chat.roommodes) as pure
functions: every line is compared byte for byte with what Twitch sends and read back with
`irc.parse`."""

from __future__ import annotations

import pytest

from chat import irc, roommodes, twitch
from chat.roommodes import Clear, Delete, ModeChange, Modes, Refusal

TMI = "tmi.twitch.tv"


def line(message: irc.Message, *, tagged: bool = True) -> bytes:
    """As the edge writes it: text params take the ':' form, a lone channel does not."""
    return irc.encode(message.command, *message.params, tags=message.tags if tagged else None,
                      source=message.source, trailing=len(message.params) > 1)


def roundtrip(message: irc.Message) -> irc.Message:
    back = irc.parse(line(message))
    assert back == message, (back, message)
    return back


def test_globaluserstate():
    m = twitch.globaluserstate(user_id="12345", color="#0D4200", display_name="Ronni", source=TMI)
    assert line(m) == (b"@badge-info=;badges=;color=#0D4200;display-name=Ronni;emote-sets=0;turbo=0;"
                       b"user-id=12345;user-type= :tmi.twitch.tv GLOBALUSERSTATE\r\n")
    assert line(m, tagged=False) == b":tmi.twitch.tv GLOBALUSERSTATE\r\n"
    roundtrip(m)


def test_userstate_on_join_and_after_a_message():
    tags = twitch.user_tags(badges="moderator/1", color="", display_name="marie", mod=True)
    m = twitch.userstate("degentp", tags, source=TMI)
    assert line(m) == (b"@badge-info=;badges=moderator/1;color=;display-name=marie;emote-sets=0;mod=1;"
                       b"subscriber=0;turbo=0;user-type=mod :tmi.twitch.tv USERSTATE #degentp\r\n")
    after = twitch.userstate("degentp", tags, source=TMI, msg_id="d7b5c5e4-7a0f-4f0b-9b34-9a2c3b1f0e11")
    assert roundtrip(after).tags["id"] == "d7b5c5e4-7a0f-4f0b-9b34-9a2c3b1f0e11"
    assert line(m, tagged=False) == b":tmi.twitch.tv USERSTATE #degentp\r\n"
    plain = twitch.user_tags(badges="", color="#1E90FF", display_name="bob", mod=False)
    assert plain["mod"] == "0" and plain["user-type"] == ""


def test_roomstate_on_join_has_every_mode_and_on_change_only_the_change():
    m = twitch.roomstate("degentp", "4242", Modes().tags(), source=TMI)
    assert line(m) == (b"@emote-only=0;followers-only=-1;r9k=0;room-id=4242;slow=0;subs-only=0 "
                       b":tmi.twitch.tv ROOMSTATE #degentp\r\n")
    roundtrip(m)
    changed = twitch.roomstate("degentp", "4242", {"slow": "5"}, source=TMI)
    assert line(changed) == b"@room-id=4242;slow=5 :tmi.twitch.tv ROOMSTATE #degentp\r\n"
    on = Modes(slow=10, followers=0, subs_only=True, emote_only=True, r9k=True).tags()
    assert on == {"slow": "10", "followers-only": "0", "subs-only": "1", "emote-only": "1", "r9k": "1"}


def test_clearmsg_and_room_wide_clearchat():
    m = twitch.clearmsg("degentp", login="troll", room_id="4242", target_msg_id="abc-123",
                        ts_ms=1700000000123, text="buy followers at example.com", source=TMI)
    assert line(m) == (b"@login=troll;room-id=4242;target-msg-id=abc-123;tmi-sent-ts=1700000000123 "
                       b":tmi.twitch.tv CLEARMSG #degentp :buy followers at example.com\r\n")
    roundtrip(m)
    one_word = twitch.clearmsg("degentp", login="troll", room_id="1", target_msg_id="x", ts_ms=1, text="hi",
                               source=TMI)
    assert line(one_word).endswith(b" CLEARMSG #degentp :hi\r\n")     # text keeps the ':' form
    clear = twitch.clearchat_room("degentp", "4242", 1700000000123, source=TMI)
    assert line(clear) == b"@room-id=4242;tmi-sent-ts=1700000000123 :tmi.twitch.tv CLEARCHAT #degentp\r\n"
    assert roundtrip(clear).params == ("#degentp",)


def test_mode_notice_and_publish_shape():
    m = twitch.room_notice("degentp", "slow_on", "This room is now in slow mode.", source=TMI)
    assert line(m) == b"@msg-id=slow_on :tmi.twitch.tv NOTICE #degentp :This room is now in slow mode.\r\n"
    assert twitch.as_published("degentp", m) == {
        "room": "degentp", "command": "NOTICE", "tags": {"msg-id": "slow_on"}, "source": TMI,
        "params": ["#degentp", "This room is now in slow mode."], "origin": None}


def test_me_becomes_a_ctcp_action():
    assert twitch.me_action("/me waves") == "\x01ACTION waves\x01"
    assert twitch.me_action(".ME  waves hello ") == "\x01ACTION waves hello\x01"
    assert twitch.me_action(".me") is None and twitch.me_action("/me   ") is None
    for text in ("/mercy", "hello /me", "\x01ACTION already\x01", "me too"):
        assert twitch.me_action(text) == text
    action = irc.encode("PRIVMSG", "#degentp", twitch.me_action("/me waves"),
                        source="bob!bob@bob.tmi.twitch.tv", trailing=True)
    assert action == b":bob!bob@bob.tmi.twitch.tv PRIVMSG #degentp :\x01ACTION waves\x01\r\n"
    assert irc.parse(action).params[1] == "\x01ACTION waves\x01"
    assert twitch.action_body("\x01ACTION Kappa\x01") == "Kappa"


def test_emotes_tag_as_twitch_writes_it():
    assert twitch.emotes_tag("Kappa hello Kappa <3") == "25:0-4,12-16/9:18-19"
    assert twitch.emotes_tag("\x01ACTION Kappa\x01") == "25:0-4"        # counted after the ACTION prefix
    assert twitch.emotes_tag("Ünïcödé Kappa") == "25:8-12"              # code points, not bytes
    assert twitch.emotes_tag("kappa Kappa, no") == "" and twitch.emotes_tag("") == ""


def test_delete_target_and_recent_index_is_bounded():
    assert twitch.delete_target(".delete abc-1") == "abc-1"
    assert twitch.delete_target("/DELETE  abc-1 extra") == "abc-1"
    assert twitch.delete_target(".delete") == "" and twitch.delete_target(".deleted x") is None
    recent = twitch.RecentMessages(per_room=3)
    for i in range(5):
        recent.add("r", f"id{i}", "bob", f"text {i}", "")
    assert recent.get("r", "id0") is None and recent.get("r", "id4") == ("bob", "text 4", "")
    assert len(recent.rooms["r"]) == 3
    recent.drop("r")
    assert recent.get("r", "id4") is None


# -- room-mode rules --

@pytest.mark.parametrize("text, expected", [
    (".slow", ModeChange("slow", 30)),
    ("/slow 5", ModeChange("slow", 5)),
    (".slowoff", ModeChange("slow", 0)),
    (".emoteonly", ModeChange("emote_only", 1)),
    ("/emoteonlyoff", ModeChange("emote_only", 0)),
    (".followers", ModeChange("followers", 0)),
    (".followers 10", ModeChange("followers", 10)),
    (".followers 1h", ModeChange("followers", 60)),
    (".followers 2 days", ModeChange("followers", 2880)),
    (".followers 3mo", ModeChange("followers", 129600)),
    (".followersoff", ModeChange("followers", -1)),
    (".subscribers", ModeChange("subs_only", 1)),
    (".subscribersoff", ModeChange("subs_only", 0)),
    (".r9kbeta", ModeChange("r9k", 1)),
    ("/r9kbetaoff", ModeChange("r9k", 0)),
    (".uniquechat", ModeChange("r9k", 1)),
    (".delete 0a1b-2c", Delete("0a1b-2c")),
    ("/clear", Clear()),
    ("hello", None), (".ban bob", None), ("", None), ("/me hi", None),
])
def test_parse_room_command(text, expected):
    assert roommodes.parse_room_command(text) == expected


@pytest.mark.parametrize("text, msg_id", [
    (".slow 121", "bad_slow_duration"), (".slow 0", "usage_slow_on"), (".slow ²", "usage_slow_on"),
    (".slow five", "usage_slow_on"), (".followers 4mo", "usage_followers_on"),
    (".followers soon", "usage_followers_on"), (".followers -5", "usage_followers_on"),
    (".delete", "usage_delete"),
])
def test_parse_room_command_refusals(text, msg_id):
    refusal = roommodes.parse_room_command(text)
    assert isinstance(refusal, Refusal) and refusal.msg_id == msg_id


def test_change_notices_name_what_twitch_names():
    off = Modes()
    cases = [(ModeChange("slow", 5), "slow_on", "every 5 seconds"),
             (ModeChange("emote_only", 1), "emote_only_on", ""),
             (ModeChange("followers", 0), "followers_on_zero", ""),
             (ModeChange("followers", 10), "followers_on", "10 minutes followers-only"),
             (ModeChange("subs_only", 1), "subs_on", ""), (ModeChange("r9k", 1), "r9k_on", "unique-chat")]
    for change, msg_id, words in cases:
        changed, notice = roommodes.change_notice(off, change)
        assert changed and notice.msg_id == msg_id and words in notice.text
    on = Modes(slow=5, followers=10, subs_only=True, emote_only=True, r9k=True)
    assert roommodes.change_notice(on, ModeChange("slow", 0))[1].msg_id == "slow_off"
    assert roommodes.change_notice(on, ModeChange("followers", -1))[1].msg_id == "followers_off"
    assert roommodes.change_notice(on, ModeChange("emote_only", 0))[1].msg_id == "emote_only_off"
    assert roommodes.change_notice(on, ModeChange("slow", 5))[1].msg_id == "already_slow_on"
    assert roommodes.change_notice(on, ModeChange("slow", 7))[1].msg_id == "slow_on"
    assert roommodes.change_notice(on, ModeChange("subs_only", 1)) == (
        False, Refusal("already_subs_on", "This room is already in subscribers-only mode."))
    assert roommodes.change_notice(off, ModeChange("r9k", 0))[1].msg_id == "already_r9k_off"
    assert roommodes.change_notice(off, ModeChange("followers", -1))[1].msg_id == "already_followers_off"


def test_modes_from_redis_reads_only_what_clue_writes():
    assert Modes.from_redis([None] * 5) == Modes() and not Modes().any_on
    assert Modes.from_redis([b"5", b"0", b"1", b"0", b"1"]) == Modes(slow=5, followers=0, subs_only=True,
                                                                    r9k=True)
    assert Modes.from_redis(["-1", "-1", "0", "0", "0"]) == Modes()
    assert Modes.from_redis(["999", "x", "yes", "", "1"]) == Modes(r9k=True)     # garbage is off


def test_emote_only():
    assert roommodes.emote_only_refusal("Kappa Kappa <3") is None
    assert roommodes.emote_only_refusal("\x01ACTION Kappa\x01") is None
    assert roommodes.emote_only_refusal("Kappa lol").msg_id == "msg_emoteonly"
    assert roommodes.emote_only_refusal("kappa").msg_id == "msg_emoteonly"     # names are case-sensitive


def test_who_the_modes_ask_redis_about():
    assert roommodes.lookups(Modes(), privileged=False) is None
    strict = Modes(slow=5, followers=10, subs_only=True, r9k=True)
    assert roommodes.lookups(strict, privileged=True) is None                  # mods and the broadcaster
    need = roommodes.lookups(strict, privileged=False)
    assert need == roommodes.Lookups(subs=True, follows=True, slow=5, r9k=True) and need.reads and need.writes
    assert roommodes.lookups(Modes(emote_only=True), privileged=False) is None  # decided without Redis


def test_reads_and_writes_refusals():
    now = 1_700_000_000.0
    need = roommodes.Lookups(subs=True)
    assert roommodes.reads_refusal(Modes(subs_only=True), "r", need, 0, None, now).msg_id == "msg_subsonly"
    assert roommodes.reads_refusal(Modes(subs_only=True), "r", need, 1, None, now) is None
    follows = roommodes.Lookups(follows=True)
    zero, ten = Modes(followers=0), Modes(followers=10)
    assert roommodes.reads_refusal(zero, "r", follows, False, None, now).msg_id == "msg_followersonly_zero"
    assert roommodes.reads_refusal(zero, "r", follows, False, b"1699999999", now) is None
    assert roommodes.reads_refusal(ten, "r", follows, False, None, now).msg_id == "msg_followersonly"
    young = roommodes.reads_refusal(ten, "r", follows, False, str(int(now) - 180), now)
    assert young.msg_id == "msg_followersonly_followed" and "3 minutes" in young.text
    assert roommodes.reads_refusal(ten, "r", follows, False, str(int(now) - 600), now) is None
    slow = roommodes.Lookups(slow=5)
    wait = roommodes.writes_refusal(slow, True, None, 4)
    assert wait.msg_id == "msg_slowmode" and "again in 4 seconds" in wait.text
    assert roommodes.writes_refusal(slow, True, True, 5) is None
    r9k = roommodes.Lookups(r9k=True)
    assert roommodes.writes_refusal(r9k, None, True, 0).msg_id == "msg_r9k"
    assert roommodes.text_digest("Hello  World") == roommodes.text_digest("hello world")
    assert roommodes.text_digest("hello world") != roommodes.text_digest("hello world!")


def test_delete_refusals():
    assert roommodes.delete_refusal("broadcaster/1").msg_id == "bad_delete_message_broadcaster"
    assert roommodes.delete_refusal("moderator/1,subscriber/0").msg_id == "bad_delete_message_mod"
    assert roommodes.delete_refusal("") is None and roommodes.delete_refusal("subscriber/0") is None
    assert roommodes.delete_refusal("moderator/1", own=True) is None
    assert roommodes.delete_refusal("moderator/1", by_broadcaster=True) is None
    refused = roommodes.delete_refusal("broadcaster/1", by_broadcaster=True)
    assert refused.msg_id == "bad_delete_message_broadcaster"


def test_minutes_text():
    assert [roommodes.minutes_text(m) for m in (1, 10, 60, 90, 1440, 10080, 43200, 129600)] == [
        "1 minute", "10 minutes", "1 hour", "90 minutes", "1 day", "1 week", "1 month", "3 months"]
