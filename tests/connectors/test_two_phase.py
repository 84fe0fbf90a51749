"""TwoPhaseCommitSink (sabot/connectors/two_phase.py) against a fake target that can fail at
every step: a crash before a commit, a crash after the target committed (the worker dies
before it learns so), a commit the target refuses, and restores with pending checkpoints.

The fake comes in the two flavours of real targets: one that checks the progress record
inside its transaction (PostgreSQL) and one that cannot (Kafka: the restore reads the
progress records first). What the target holds at the end is compared with the input rows,
computed independently with pyarrow: every row exactly once."""

import random

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from sabot.connectors import ConnectorError
from sabot.connectors.two_phase import TwoPhaseCommitSink
from sabot.runtime.operators.base import TaskContext
from sabot.runtime.operators.sinks import END_OF_INPUT

pytestmark = pytest.mark.timeout(120)


class Crash(Exception):
    """The worker died here (nothing after it in this attempt runs)."""


class FakeTarget:
    """A durable store of rows and progress records ``(job, sink, subtask, checkpoint)``.

    ``fail`` maps a step to how many times it fails next: ``"before_commit"`` (crash before
    anything is written), ``"after_commit"`` (the transaction committed, then the worker
    died), ``"refuse"`` (the target refuses the transaction: ConnectorError, nothing written),
    ``"read_progress"`` (reading the progress records fails)."""

    def __init__(self, checks_progress_in_transaction):
        self.atomic_check = checks_progress_in_transaction
        self.rows = []  # committed ids, in commit order
        self.progress = set()
        self.fail = {}

    def _trip(self, step, exc):
        if self.fail.get(step, 0) > 0:
            self.fail[step] -= 1
            raise exc

    def transaction(self, record, ids):
        self._trip("before_commit", Crash("before commit"))
        self._trip("refuse", ConnectorError("the target refused the transaction"))
        if record is not None and self.atomic_check and record in self.progress:
            return False
        self.rows.extend(ids)
        if record is not None:
            self.progress.add(record)
        self._trip("after_commit", Crash("after commit"))
        return True

    def last(self, job, sink, subtask):
        self._trip("read_progress", ConnectorError("cannot read the progress records"))
        ids = [c for j, s, t, c in self.progress if (j, s, t) == (job, sink, subtask)]
        return max(ids, default=-1)


class FakeSink(TwoPhaseCommitSink):
    def __init__(self, ctx, target):
        super().__init__(ctx)
        self.fake = target

    def commit(self, table, progress):
        ids = table.column("id").to_pylist() if table is not None else []
        return self.fake.transaction(progress, ids)

    def last_committed_checkpoint(self, job):
        return self.fake.last(job, self.ctx.operator_name, self.ctx.subtask_index)


def sink(target, *, job="job-1", subtask=0, checkpointing=True, flush_rows=None):
    operator = {"name": "out", "operator_id": "out", "operator_type": "sink", "key_by": None, "function": None,
                "parameters": {"kind": "fake"}}
    ctx = TaskContext(job_id=job, task_id=f"out-{subtask}", attempt=0, operator=operator, subtask_index=subtask,
                      parallelism=1, max_parallelism=128, checkpointing=checkpointing)
    s = FakeSink(ctx, target)
    s.flush_rows = flush_rows
    s.open()
    return s


def rows(a, b):
    return pa.record_batch([pa.array(range(a, b), pa.int64())], names=["id"])


def exactly(target, input_table):
    """The target holds every input row exactly once (compared as sorted Arrow arrays)."""
    got = pa.array(sorted(target.rows), pa.int64())
    expected = pc.sort_indices(input_table.column("id"))
    return got.equals(pc.take(input_table.column("id"), expected).combine_chunks())


FLAVOURS = [pytest.param(True, id="checks-in-transaction"), pytest.param(False, id="reads-progress-on-restore")]


@pytest.mark.parametrize("atomic", FLAVOURS)
def test_rows_become_visible_only_when_their_checkpoint_completes(atomic):
    target = FakeTarget(atomic)
    s = sink(target)
    s.process(rows(0, 10), 0)
    s.snapshot_state(1)
    s.process(rows(10, 25), 0)
    s.snapshot_state(2)
    s.process(rows(25, 30), 0)  # after the last barrier: in the open transaction
    assert target.rows == []
    s.notify_checkpoint_complete(1)
    assert target.rows == list(range(10))
    s.notify_checkpoint_complete(1)  # twice: nothing more
    s.notify_checkpoint_complete(2)
    assert target.rows == list(range(25))
    assert sorted(c for *_, c in target.progress) == [1, 2]
    assert (s.committed_checkpoints, s.skipped_checkpoints) == (2, 0)
    s.finish()  # with checkpoints the rest waits for the job's end
    assert target.rows == list(range(25)) and END_OF_INPUT in s.pending
    s.notify_job_finished()
    assert target.rows == list(range(30))


@pytest.mark.parametrize("atomic", FLAVOURS)
def test_crash_after_the_target_committed_is_not_written_again_on_restore(atomic):
    target = FakeTarget(atomic)
    s = sink(target)
    s.process(rows(0, 10), 0)
    state = s.snapshot_state(1)["state"]
    target.fail["after_commit"] = 1
    with pytest.raises(Crash):
        s.notify_checkpoint_complete(1)
    assert target.rows == list(range(10))  # durable, but the old attempt never learned it
    again = sink(target)
    again.restore_state(None, state, 1)
    assert target.rows == list(range(10))
    assert (again.committed_checkpoints, again.skipped_checkpoints) == (0, 1)


@pytest.mark.parametrize("atomic", FLAVOURS)
def test_crash_before_the_commit_is_committed_by_the_restore(atomic):
    target = FakeTarget(atomic)
    s = sink(target)
    s.process(rows(0, 10), 0)
    s.snapshot_state(1)
    s.process(rows(10, 20), 0)
    state = s.snapshot_state(2)["state"]
    target.fail["before_commit"] = 1
    with pytest.raises(Crash):
        s.notify_checkpoint_complete(2)
    assert target.rows == []
    again = sink(target)
    again.restore_state(None, state, 2)  # both notifications were lost: both pending are committed
    assert target.rows == list(range(20)) and again.committed_checkpoints == 2


@pytest.mark.parametrize("atomic", FLAVOURS)
def test_restore_aborts_what_its_checkpoint_does_not_cover(atomic):
    target = FakeTarget(atomic)
    s = sink(target)
    s.process(rows(0, 10), 0)
    s.snapshot_state(1)
    s.process(rows(10, 20), 0)
    state = s.snapshot_state(2)["state"]
    again = sink(target)
    again.restore_state(None, state, 1)  # checkpoint 2 never completed: its rows are replayed
    assert target.rows == list(range(10))
    assert again.pending == {} and again.committed_checkpoints == 1


def test_a_refused_commit_keeps_its_rows_pending_and_declines_the_next_checkpoint():
    target = FakeTarget(True)
    s = sink(target)
    s.process(rows(0, 10), 0)
    s.snapshot_state(1)
    target.fail["refuse"] = 1
    with pytest.raises(ConnectorError, match="refused"):
        s.notify_checkpoint_complete(1)
    assert 1 in s.pending and target.rows == []
    # never acknowledge a checkpoint after a write that was not made durable
    with pytest.raises(ConnectorError, match="an earlier write to the target failed"):
        s.snapshot_state(2)
    with pytest.raises(ConnectorError, match="an earlier write to the target failed"):
        s.process(rows(10, 11), 0)
    with pytest.raises(ConnectorError, match="an earlier write to the target failed"):
        s.finish()


def test_a_progress_read_that_fails_fails_the_restore_without_writing():
    target = FakeTarget(False)
    s = sink(target)
    s.process(rows(0, 10), 0)
    state = s.snapshot_state(1)["state"]
    target.fail["read_progress"] = 1
    with pytest.raises(ConnectorError, match="cannot read the progress records"):
        sink(target).restore_state(None, state, 1)
    assert target.rows == []
    sink(target).restore_state(None, state, 1)  # the next attempt succeeds
    assert target.rows == list(range(10))


def test_without_checkpoints_rows_are_written_every_flush_rows_without_progress_records():
    target = FakeTarget(True)
    s = sink(target, checkpointing=False, flush_rows=25)
    for a in range(0, 50, 10):
        s.process(rows(a, a + 10), 0)
    assert target.rows == list(range(30))  # 30 >= 25 rows: one write; 20 wait
    s.finish()
    assert target.rows == list(range(50)) and target.progress == set()


def test_restore_into_a_new_job_goes_on_with_the_old_lineage():
    target = FakeTarget(False)
    s = sink(target, job="job-1")
    s.process(rows(0, 10), 0)
    state = s.snapshot_state(1)["state"]
    s.notify_checkpoint_complete(1)
    other = sink(target, job="job-2")
    other.restore_state(None, state, 1)
    assert other.job == s.job and target.rows == list(range(10))


@pytest.mark.parametrize("atomic", FLAVOURS)
def test_a_job_restored_from_another_jobs_checkpoint_counts_checkpoints_anew_and_loses_nothing(atomic):
    """A job submitted with restore_from numbers its checkpoints from 1 again: its progress
    records must not be mistaken for the old job's ones of the same numbers."""
    target = FakeTarget(atomic)
    old = sink(target, job="job-1")
    old.process(rows(0, 10), 0)
    old.snapshot_state(1)
    old.notify_checkpoint_complete(1)
    old.process(rows(10, 20), 0)
    state = old.snapshot_state(2)["state"]  # job 1 stops before checkpoint 2's notification
    new = sink(target, job="job-2")
    new.restore_state(None, state, 2)
    assert target.rows == list(range(20))
    new.process(rows(20, 30), 0)
    new.snapshot_state(1)
    new.notify_checkpoint_complete(1)
    assert target.rows == list(range(30)), "job 2's checkpoint 1 was taken for job 1's"
    new.process(rows(30, 40), 0)
    state = new.snapshot_state(2)["state"]  # job 2's worker dies before this notification
    again = sink(target, job="job-2")
    again.restore_state(None, state, 2)
    assert target.rows == list(range(40)), "job 2's checkpoint 2 was taken for job 1's"
    assert again.job == old.job  # the output lineage goes on (Kafka: the same transactional ids)


def test_state_of_another_operator_is_refused_with_what_was_expected():
    with pytest.raises(ConnectorError, match=r"unexpected keys \['offsets'\]; expected 'job', 'progress_job', 'pending'"):
        sink(FakeTarget(True)).restore_state(None, {"offsets": {}}, 3)


def run_job(target, input_table, rng, *, batch_rows, crash_rate, max_attempts=400):
    """Feed ``input_table`` through a sink with checkpoints, crashing at random steps; every
    attempt restores the latest completed checkpoint (source position + sink state), as the
    job's restart does. Returns the number of attempts."""
    completed = None  # (checkpoint id, rows the source had emitted, sink state)
    next_checkpoint = 1
    steps = ["before_commit", "after_commit", "refuse", "read_progress"]
    for attempt in range(1, max_attempts + 1):
        s = sink(target)
        try:
            position = 0
            if completed is not None:
                c, position, state = completed
                if rng.random() < crash_rate:
                    target.fail[rng.choice(steps)] = 1
                s.restore_state(None, state, c)
            while position < input_table.num_rows:
                n = min(batch_rows, input_table.num_rows - position)
                s.process(input_table.slice(position, n).to_batches()[0], 0)
                position += n
                if rng.random() < 0.3:  # a barrier
                    c = next_checkpoint
                    next_checkpoint += 1
                    if rng.random() < crash_rate:
                        raise Crash("before the snapshot")
                    state = s.snapshot_state(c)["state"]
                    completed = (c, position, state)  # every task acknowledged it
                    if rng.random() < crash_rate:
                        raise Crash("the notification was lost with the worker")
                    if rng.random() < crash_rate:
                        target.fail[rng.choice(steps[:3])] = 1
                    s.notify_checkpoint_complete(c)
            s.finish()
            s.notify_job_finished()
            return attempt
        except (Crash, ConnectorError):
            target.fail.clear()
            continue
    raise AssertionError(f"the job did not finish in {max_attempts} attempts")


@pytest.mark.parametrize("atomic", FLAVOURS)
@pytest.mark.parametrize("seed", range(12))
def test_exactly_once_through_random_crashes_at_every_step(atomic, seed):
    rng = random.Random(seed)
    n = rng.randrange(200, 2000)
    ids = list(range(n))
    rng.shuffle(ids)
    input_table = pa.table({"id": pa.array(ids, pa.int64())})
    target = FakeTarget(atomic)
    attempts = run_job(target, input_table, rng, batch_rows=rng.randrange(7, 60), crash_rate=0.2)
    assert attempts > 1, "the seed injected no failure; pick another"
    counts = pc.value_counts(pa.array(target.rows, pa.int64()))
    twice = counts.filter(pc.greater(pc.struct_field(counts, "counts"), 1))
    assert exactly(target, input_table), f"{len(target.rows)} rows for {n} inputs; written more than once: {twice.field('values').to_pylist()[:5]}"
