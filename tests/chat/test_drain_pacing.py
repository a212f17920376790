"""The drain's pace (chat/drain.py), pure: nobody closed during the first half of the period, the
rest evenly over the second half, everyone by its end; clients gone by themselves count."""

from chat import drain


def test_first_half_is_left_to_clients_that_honour_reconnect():
    assert [drain.closed_by(100, 10.0, t) for t in (0, 1, 4.99)] == [0, 0, 0]


def test_second_half_closes_evenly_and_everyone_by_the_end():
    assert drain.closed_by(100, 10.0, 5.0) == 0
    assert drain.closed_by(100, 10.0, 6.0) == 20
    assert drain.closed_by(100, 10.0, 7.5) == 50
    assert drain.closed_by(100, 10.0, 9.99) == 99
    assert drain.closed_by(100, 10.0, 10.0) == 100
    assert drain.closed_by(100, 10.0, 60.0) == 100
    seq = [drain.closed_by(7, 4.0, t / 100) for t in range(0, 401)]
    assert seq == sorted(seq) and seq[-1] == 7


def test_zero_period_closes_at_once():
    assert drain.closed_by(5, 0.0, 0.0) == 5
    assert drain.to_close(5, 5, 0.0, 0.0) == 5
    assert drain.closed_by(0, 10.0, 10.0) == 0


def test_clients_gone_by_themselves_count_toward_the_pace():
    # 100 at the start, 60 already moved away: at 7.5 s 50 are due, so none is closed now...
    assert drain.to_close(100, 40, 10.0, 7.5) == 0
    # ...and at 9 s, 80 are due: 20 of the 40 still here.
    assert drain.to_close(100, 40, 10.0, 9.0) == 20
    assert drain.to_close(100, 40, 10.0, 10.0) == 40
    assert drain.to_close(100, 0, 10.0, 10.0) == 0


def test_reconnect_line_is_twitchs():
    assert drain.reconnect_line("tmi.twitch.tv") == b":tmi.twitch.tv RECONNECT\r\n"
