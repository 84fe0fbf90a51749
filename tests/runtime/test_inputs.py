"""InputState: per-channel watermarks, ends, and channels waiting behind a live rescale."""

from sabot.runtime.inputs import InputState


def test_event_time_is_the_minimum_over_live_channels_and_only_moves_forward():
    s = InputState([0, 0, 1])
    assert s.watermark(0, 10) is None and s.watermark(1, 5) is None  # channel 2 has none yet
    assert s.watermark(2, 8) == 5
    assert s.watermark(1, 4) is None  # a channel going back does not move event time back
    assert s.watermark(1, 9) == 8
    s.finish(2)
    assert s.advance() == 9 and s.current == 9
    s.finish(0)
    s.finish(1)
    assert s.remaining == 0 and s.advance() is None


def test_added_channels_wait_until_every_older_channel_of_their_input_ended():
    s = InputState([0, 0, 1])
    new = s.add(0, 2)
    assert new == [3, 4] and s.remaining == 5
    assert s.is_waiting(3) and s.settled(4) and not s.settled(2)
    s.finish(0)
    assert s.releasable() == []
    s.finish(1)  # channel 2 (input 1) does not matter
    assert s.releasable() == [3, 4]
    assert not s.is_waiting(3) and s.releasable() == []


def test_a_new_task_starts_event_time_where_the_old_ones_were():
    s = InputState([0])
    s.start_at(100)
    assert s.watermark(0, 90) is None and s.current == 100
    assert s.watermark(0, 120) == 120
