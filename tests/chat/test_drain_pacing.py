"""The drain's pace (chat/drain.py), pure: nobody closed during the first half of the period, those
still there then evenly over the second half (the first at once), everyone by its end; clients gone
by themselves count."""

from chat import drain


def test_first_half_is_left_to_clients_that_honour_reconnect():
    assert [drain.closed_by(100, 10.0, t) for t in (0, 1, 4.99)] == [0, 0, 0]


def test_second_half_closes_those_still_there_evenly_the_first_at_once():
    assert drain.closed_by(100, 10.0, 5.0) == 1
    assert drain.closed_by(100, 10.0, 6.0) == 21
    assert drain.closed_by(100, 10.0, 7.5) == 51
    assert drain.closed_by(100, 10.0, 9.96) == 100
    assert drain.closed_by(100, 10.0, 10.0) == 100
    assert drain.closed_by(100, 10.0, 60.0) == 100
    # One straggler (a client that cannot move, as the canary on its edge's own port) is closed
    # as soon as the first half is over, not at the end of the period.
    assert drain.closed_by(1, 10.0, 5.0) == 1
    seq = [drain.closed_by(7, 4.0, t / 100) for t in range(0, 401)]
    assert seq == sorted(seq) and seq[-1] == 7 and seq[199] == 0 and seq[200] == 1


def test_zero_period_closes_at_once():
    assert drain.closed_by(5, 0.0, 0.0) == 5
    assert drain.to_close(5, 5, 0.0, 0.0) == 5
    assert drain.closed_by(0, 10.0, 10.0) == 0


def test_clients_gone_by_themselves_count_toward_the_pace():
    # 100 still there at half-time, 60 of them since gone by themselves: at 7.5 s 51 are due,
    # so none is closed now...
    assert drain.to_close(100, 40, 10.0, 7.5) == 0
    # ...and at 9 s, 81 are due: 21 of the 40 still here.
    assert drain.to_close(100, 40, 10.0, 9.0) == 21
    assert drain.to_close(100, 40, 10.0, 10.0) == 40
    assert drain.to_close(100, 0, 10.0, 10.0) == 0
    assert drain.to_close(100, 100, 10.0, 4.9) == 0


def test_reconnect_line_is_twitchs():
    assert drain.reconnect_line("tmi.twitch.tv") == b":tmi.twitch.tv RECONNECT\r\n"
