"""InputState: per-channel watermarks, idleness, ends, and channels waiting behind a live rescale;
Outputs announcing the watermark status downstream."""

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


# -- idleness (WatermarkStatus) ---------------------------------------------------------------


def test_an_idle_channel_is_left_out_of_event_time_until_it_is_active_again():
    s = InputState([0, 0, 1])
    assert s.watermark(0, 10) is None and s.watermark(1, 20) is None  # channel 2 has sent nothing
    assert s.set_idle(2, True) == 10  # left out: min(10, 20)
    assert not s.all_idle
    assert s.watermark(0, 30) == 20
    # active again without a watermark: it holds event time back, as before its first one
    assert s.set_idle(2, False) is None
    assert s.watermark(1, 40) is None
    assert s.watermark(2, 35) == 30  # its first watermark: min(30, 40, 35)


def test_a_record_or_a_watermark_makes_an_idle_channel_count_again():
    s = InputState([0, 1])
    s.watermark(0, 5)
    s.watermark(1, 50)
    assert s.set_idle(0, True) == 50
    s.record(0)  # a record on it: it counts again, with its last watermark (5: no advance)
    assert s.watermark(1, 60) is None and s.current == 50
    assert s.watermark(0, 55) == 55
    s.set_idle(1, True)
    assert s.watermark(1, 70) is None and not s.idle[1]  # a watermark re-activates too
    assert s.watermark(0, 80) == 70


def test_with_every_live_channel_idle_event_time_moves_to_their_largest_watermark():
    s = InputState([0, 0, 0])
    s.watermark(0, 100)
    s.watermark(1, 300)
    s.set_idle(2, True)  # never sent a watermark
    assert s.current == 100
    assert s.set_idle(1, True) is None and not s.all_idle  # channel 0 (100) still counts
    assert s.set_idle(0, True) == 300 and s.all_idle  # nothing else will move event time: the flush
    assert s.set_idle(0, False) is None  # active again at 100: nothing moves back
    assert s.watermark(0, 400) == 400
    s.set_idle(0, True)
    s.finish(1)
    assert s.all_idle and s.remaining == 2


def test_an_idle_channel_is_not_finished_checkpoint_barriers_still_wait_for_it():
    from sabot.runtime.alignment import BarrierAligner
    from sabot.runtime.events import CheckpointBarrier

    s = InputState([0, 0])
    s.set_idle(1, True)
    assert not s.settled(1) and s.remaining == 2
    aligner = BarrierAligner()
    assert aligner.receive(0, CheckpointBarrier(1, 0)).block
    assert aligner.complete(len(s), s.settled) is None  # the idle channel's barrier has not come
    aligner.receive(1, CheckpointBarrier(1, 0))
    assert aligner.complete(len(s), s.settled).unblock == [0, 1]
    s.finish(1)
    assert s.settled(1) and not s.all_idle  # ended channels are not idle; channel 0 is active


def test_finished_and_added_channels_keep_the_idle_count_right():
    s = InputState([0, 0])
    s.set_idle(0, True)
    s.set_idle(0, True)  # twice: counted once
    s.set_idle(1, True)
    assert s.all_idle
    s.add(0, 1)  # a rescale adds an active (waiting) channel
    assert not s.all_idle
    s.finish(0)
    s.finish(1)
    s.set_idle(2, True)
    assert s.all_idle and s.remaining == 1
    s.finish(2)
    s.set_idle(2, False)  # a status after the end changes nothing
    assert not s.all_idle and s.remaining == 0


class RecordingChannel:
    def __init__(self):
        self.sent = []
        self.credit = 10
        self.metrics = {}

    async def send(self, item, nbytes=None):
        self.sent.append(item)

    async def close(self):
        pass


def test_outputs_announce_idle_once_and_active_before_any_record_or_watermark():
    import asyncio

    import pyarrow as pa

    from sabot.runtime import events
    from sabot.runtime.output import Outputs

    outputs = Outputs(None, {"rows_out": 0, "bytes_out": 0})
    channels = [RecordingChannel(), RecordingChannel()]
    edge = type("Edge", (), {"channels": channels})()
    outputs.edges = [edge]
    batch = pa.record_batch({"x": [1, 2]})

    async def body():
        await outputs.set_idle(True)
        await outputs.set_idle(True)
        await outputs.emit([(0, 1, batch, batch.nbytes)])  # a record while idle: active first
        await outputs.set_idle(True)
        await outputs.broadcast(events.Watermark(7))  # a watermark while idle: active first
        await outputs.broadcast(events.CheckpointBarrier(1, 0))  # a barrier does not change the status

    asyncio.run(body())
    assert channels[0].sent == [events.IDLE, events.ACTIVE, events.IDLE, events.ACTIVE, events.Watermark(7),
                                events.CheckpointBarrier(1, 0)]
    assert channels[1].sent == [events.IDLE, events.ACTIVE, batch, events.IDLE, events.ACTIVE, events.Watermark(7),
                                events.CheckpointBarrier(1, 0)]
    assert not outputs.idle


def test_outputs_switched_by_a_rescale_tell_the_new_receivers_they_are_idle():
    import asyncio
    from types import SimpleNamespace

    from sabot.runtime import events
    from sabot.runtime.output import Outputs

    opened = {}

    class Server:
        async def output_channel(self, channel_id, host, port):
            opened[channel_id] = RecordingChannel()
            return opened[channel_id]

    def spec(*channel_ids):
        return SimpleNamespace(partitioning="rebalance", key_by=None, max_parallelism=128, assignment=None, tag=None,
                               downstream_operator_id="down",
                               targets=[SimpleNamespace(channel_id=c, host=None, port=None) for c in channel_ids])

    outputs = Outputs(Server(), {"rows_out": 0, "bytes_out": 0})

    async def body():
        await outputs.open([spec("a")])
        await outputs.set_idle(True)
        await outputs.switch("down", spec("b", "c"), "r1")

    asyncio.run(body())
    assert opened["a"].sent[0] == events.IDLE and isinstance(opened["a"].sent[-1], events.EndOfStream)
    assert opened["b"].sent == [events.IDLE] and opened["c"].sent == [events.IDLE]
