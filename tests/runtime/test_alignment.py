"""BarrierAligner: checkpoint barrier alignment as pure bookkeeping, driven with integers."""

from sabot.runtime.alignment import BarrierAligner
from sabot.runtime.events import CheckpointBarrier


def barrier(checkpoint_id):
    return CheckpointBarrier(checkpoint_id, 0)


def never_settled(_):
    return False


def test_aligns_once_every_channel_delivered_the_barrier():
    aligner = BarrierAligner(clock=iter([1.0, 1.25]).__next__)
    assert aligner.receive(0, barrier(1)).block
    assert aligner.complete(3, never_settled) is None
    aligner.receive(2, barrier(1))
    assert aligner.complete(3, never_settled) is None
    aligner.receive(1, barrier(1))
    done = aligner.complete(3, never_settled)
    assert done.barrier.checkpoint_id == 1 and done.unblock == [0, 1, 2]
    assert done.alignment_ms == 250.0
    assert aligner.checkpoint_id is None and aligner.complete(3, never_settled) is None


def test_settled_channels_do_not_hold_the_alignment_up():
    aligner = BarrierAligner()
    aligner.receive(1, barrier(4))
    assert aligner.complete(3, never_settled) is None
    done = aligner.complete(3, lambda i: i in (0, 2))  # e.g. ended, or waiting behind a rescale
    assert done.unblock == [1]


def test_a_newer_barrier_declines_the_checkpoint_that_never_aligned():
    aligner = BarrierAligner()
    aligner.receive(0, barrier(1))
    aligner.receive(1, barrier(1))
    outcome = aligner.receive(1, barrier(2))
    assert outcome.block and outcome.declined == 1 and outcome.unblock == [0, 1]
    assert aligner.checkpoint_id == 2 and aligner.arrived == {1}
    stale = aligner.receive(2, barrier(1))  # the old one's last barrier, after it was given up
    assert not stale.block and stale.declined is None
    aligner.receive(0, barrier(2))
    aligner.receive(2, barrier(2))
    assert aligner.complete(3, never_settled).barrier.checkpoint_id == 2


def test_barriers_older_than_the_tasks_first_checkpoint_are_ignored():
    aligner = BarrierAligner(min_checkpoint_id=5)
    assert not aligner.receive(0, barrier(4)).block
    assert aligner.checkpoint_id is None
    assert aligner.receive(0, barrier(5)).block
