"""Small output parts are coalesced per channel (sabot.runtime.output), and nothing crosses an event.

The unit tests drive :class:`~sabot.runtime.output.Outputs` over recording channels; the job
tests run real embedded jobs and compare with pyarrow.
"""

import asyncio
import threading
import time
from types import SimpleNamespace

import pyarrow as pa
import pytest

from test_inputs import RecordingChannel

from sabot.runtime import events, output
from sabot.runtime.output import Outputs


class Server:
    def __init__(self):
        self.opened = {}

    async def output_channel(self, channel_id, host, port):
        self.opened[channel_id] = RecordingChannel()
        return self.opened[channel_id]


def spec(*channel_ids, partitioning="hash", key_by=("k",), downstream="down"):
    return SimpleNamespace(partitioning=partitioning, key_by=list(key_by) if key_by else None, max_parallelism=128,
                           assignment=None, tag=None, downstream_operator_id=downstream,
                           targets=[SimpleNamespace(channel_id=c, host=None, port=None) for c in channel_ids])


def open_outputs(coalesce_rows, *specs):
    server = Server()
    outputs = Outputs(server, {"rows_out": 0, "bytes_out": 0}, coalesce_rows=coalesce_rows)
    asyncio.run(outputs.open(list(specs)))
    return outputs, server.opened


def batch(start, n):
    return pa.record_batch({"k": pa.array(range(start, start + n), pa.int64()),
                            "v": pa.array([float(i) for i in range(start, start + n)])})


def batches_of(channel):
    return [item for item in channel.sent if isinstance(item, pa.RecordBatch)]


def send_all(outputs, inputs):
    async def body():
        for b in inputs:
            await outputs.emit(outputs.route([b]))
    asyncio.run(body())


def test_small_parts_go_out_together_in_order_once_a_channel_has_enough_rows():
    outputs, opened = open_outputs(1000, spec("a", "b"))
    inputs = [batch(i * 100, 100) for i in range(25)]  # 2,500 rows, ~50 per channel per batch
    send_all(outputs, inputs)
    assert outputs.buffered  # the rest waits for more rows or an event
    asyncio.run(outputs.flush())
    assert not outputs.buffered
    # each channel got what the partitioner routes to it, in the same order, in few batches
    for i, name in enumerate(["a", "b"]):
        got = batches_of(opened[name])
        assert 1 < len(got) < 25 // 2 + 1
        assert all(b.num_rows >= 1000 for b in got[:-1]) and got[-1].num_rows > 0
        expected = pa.Table.from_batches([part for b in inputs
                                          for c, part in outputs.edges[0].partitioner.route(b) if c == i])
        assert pa.Table.from_batches(got).equals(expected)
    assert sum(b.num_rows for name in "ab" for b in batches_of(opened[name])) == 2500
    assert outputs.metrics["rows_out"] == 2500


def test_a_flush_concatenates_on_the_operator_threads():
    """Joining buffered parts (a concatenation: Arrow's C++, which gives the GIL away) runs
    through ``offload``, not on the event loop; a buffer of one part needs no join."""
    calls = []

    async def offload(fn):
        calls.append(fn)
        return fn()

    outputs, opened = open_outputs(1000, spec("a", partitioning="forward", key_by=None))
    outputs.offload = offload
    send_all(outputs, [batch(0, 3)])
    asyncio.run(outputs.flush())
    assert calls == [] and [b.num_rows for b in batches_of(opened["a"])] == [3]
    send_all(outputs, [batch(3, 3), batch(6, 4)])
    asyncio.run(outputs.flush())
    assert len(calls) == 1
    got = batches_of(opened["a"])
    assert [b.num_rows for b in got] == [3, 7]
    assert got[1].column("k").to_pylist() == list(range(3, 10))


def test_without_coalescing_every_part_goes_at_once():
    outputs, opened = open_outputs(0, spec("a", "b"))
    send_all(outputs, [batch(0, 100), batch(100, 100)])
    assert not outputs.buffered
    assert len(batches_of(opened["a"])) == 2 and len(batches_of(opened["b"])) == 2


def test_a_big_part_is_sent_as_it_is_after_what_waited():
    outputs, opened = open_outputs(1000, spec("a", partitioning="forward", key_by=None))
    small, big = batch(0, 10), batch(10, 5000)
    send_all(outputs, [small, big])
    got = batches_of(opened["a"])
    assert [b.num_rows for b in got] == [10, 5000]
    assert got[1] is big  # not copied


def test_every_event_sends_what_waits_before_it():
    outputs, opened = open_outputs(1000, spec("a", partitioning="forward", key_by=None))
    channel = opened["a"]

    async def body():
        for event in (events.Watermark(5), events.CheckpointBarrier(1, 0), events.EndOfStream()):
            await outputs.emit(outputs.route([batch(0, 3)]))
            await outputs.emit(outputs.route([batch(3, 4)]))
            await outputs.broadcast(event)

    asyncio.run(body())
    kinds = [item.num_rows if isinstance(item, pa.RecordBatch) else type(item).__name__ for item in channel.sent]
    assert kinds == [7, "Watermark", 7, "CheckpointBarrier", 7, "EndOfStream"]


def test_going_idle_sends_what_waits_while_still_active():
    outputs, opened = open_outputs(1000, spec("a", partitioning="forward", key_by=None))
    b = batch(0, 3)

    async def body():
        await outputs.emit(outputs.route([b]))
        await outputs.set_idle(True)
        await outputs.emit(outputs.route([batch(3, 2)]))  # buffered while idle: nothing announced yet
        sent_while_buffered = list(opened["a"].sent)
        await outputs.flush()
        return sent_while_buffered

    sent_while_buffered = asyncio.run(body())
    assert sent_while_buffered == [b, events.IDLE]
    assert opened["a"].sent[2:] == [events.ACTIVE, opened["a"].sent[3]] and opened["a"].sent[3].num_rows == 2
    assert not outputs.idle


def test_a_rescale_switch_sends_what_waits_to_the_old_tasks():
    outputs, opened = open_outputs(1000, spec("a", "b"))

    async def body():
        await outputs.emit(outputs.route([batch(0, 50)]))
        await outputs.switch("down", spec("c", "d"), "r1")

    asyncio.run(body())
    for name in ("a", "b"):
        kinds = [type(item).__name__ for item in opened[name].sent]
        assert kinds == ["RecordBatch", "RescaleBarrier", "EndOfStream"]
    assert sum(b.num_rows for name in "ab" for b in batches_of(opened[name])) == 50
    assert opened["c"].sent == [] and opened["d"].sent == []


def test_parts_of_another_schema_do_not_join_the_buffer():
    outputs, opened = open_outputs(1000, spec("a", partitioning="forward", key_by=None))
    other = pa.record_batch({"k": pa.array([1], pa.int32())})
    send_all(outputs, [batch(0, 2), other, batch(2, 2)])
    asyncio.run(outputs.flush())
    got = batches_of(opened["a"])
    assert [(b.num_rows, b.schema.field("k").type) for b in got] == [(2, pa.int64()), (1, pa.int32()),
                                                                      (2, pa.int64())]


def test_credit_routed_edges_coalesce_too():
    outputs, opened = open_outputs(100, spec("a", "b", partitioning="rebalance", key_by=None))
    send_all(outputs, [batch(i * 10, 10) for i in range(20)])
    asyncio.run(outputs.flush())
    got = batches_of(opened["a"]) + batches_of(opened["b"])
    assert sorted(r for b in got for r in b.column("k").to_pylist()) == list(range(200))
    assert len(got) <= 3


def test_buffers_older_than_the_delay_go_out_while_the_task_is_busy(monkeypatch):
    outputs, opened = open_outputs(1000, spec("a", partitioning="forward", key_by=None))
    now = [100.0]
    monkeypatch.setattr(output.time, "monotonic", lambda: now[0])

    async def body():
        await outputs.emit(outputs.route([batch(0, 3)]))
        now[0] += output.COALESCE_DELAY_S / 2
        await outputs.flush_due()
        assert batches_of(opened["a"]) == []
        now[0] += output.COALESCE_DELAY_S
        await outputs.flush_due()
        assert [b.num_rows for b in batches_of(opened["a"])] == [3]

    asyncio.run(body())


def test_coalesce_rows_is_checked():
    for bad in (-1, 1.5, True, "10"):
        with pytest.raises(ValueError, match="coalesce_rows must be an int >= 0"):
            Outputs(None, {}, coalesce_rows=bad)


# -- in real jobs ------------------------------------------------------------------------------

def test_a_job_of_many_small_batches_hands_its_sink_fewer_batches_with_the_same_rows():
    from sabot import Stream
    from sabot.runtime.embedded import run_job_graph

    table = pa.table({"k": pa.array([i % 97 for i in range(20_000)], pa.int64()),
                      "v": pa.array(range(20_000), pa.int64())})

    def slow_map(b):  # the source outruns it, so its input is seldom dry
        time.sleep(0.0005)
        return b

    def job(coalesce_rows):
        received = []
        stream = Stream.from_table(table, batch_size=50).map(slow_map).sink(received.append)
        run_job_graph(stream.to_job_graph(output_coalesce_rows=coalesce_rows), timeout=120)
        return received

    off, on = job(0), job(output.COALESCE_ROWS)
    for received in (off, on):
        assert pa.Table.from_batches(received).equals(table)  # one subtask: the table's order
    assert len(off) == 400
    assert len(on) < len(off) / 4


def test_output_coalesce_rows_is_checked():
    from sabot import Stream
    from sabot.runtime.embedded import run_job_graph

    stream = Stream.from_table(pa.table({"x": [1]})).collect()
    with pytest.raises(ValueError, match="output_coalesce_rows must be an int >= 0"):
        run_job_graph(stream.to_job_graph(output_coalesce_rows=-5), timeout=60)


def test_a_trickling_input_is_not_held_back():
    """Each row reaches the sink before the source makes the next one (which it only does once
    the row arrived): the task in between sends what waits whenever its input runs dry."""
    from sabot import Stream

    log = []
    lock = threading.Lock()
    arrived = threading.Event()

    def generate(offset, num_rows):
        if num_rows and offset:
            arrived.wait(10)  # the last row arrived (or 10 s passed: the test then fails)
            arrived.clear()
        with lock:
            log.extend(("made", i) for i in range(offset, offset + num_rows))
        return pa.record_batch({"i": pa.array(range(offset, offset + num_rows), pa.int64())})

    def arrive(b):
        with lock:
            log.extend(("arrived", i) for i in b.column("i").to_pylist())
        arrived.set()

    Stream.from_generator(generate, total_rows=4, batch_size=1).map(lambda b: b).sink(arrive).run(timeout=120)
    assert log == [(kind, i) for i in range(4) for kind in ("made", "arrived")]
