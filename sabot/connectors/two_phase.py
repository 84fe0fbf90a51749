"""Two-phase-commit sinks: exactly-once output to an external system (Flink's
``TwoPhaseCommitSinkFunction``), the part every such sink shares.

:class:`TwoPhaseCommitSink` owns the bookkeeping; a subclass (``KafkaSink``,
``PostgresSink``) implements only what is particular to its target. The life of the rows
one subtask receives between two checkpoint barriers (its *transaction*):

* **begin**: after a barrier, batches go into the open transaction (``stage`` turns each
  batch into the Arrow table to keep, e.g. encoded Kafka records);
* **pre-commit** at barrier ``c`` (``snapshot_state``): the open transaction is sealed as
  *pending for* ``c``; every pending transaction goes into the operator's snapshot as Arrow
  IPC (``{"job": lineage, "progress_job": lineage, "pending": {"c": ipc}}``), so it survives
  the worker;
* **commit** when checkpoint ``c`` completes (``notify_checkpoint_complete``): the pending
  transactions of every checkpoint ``<= c`` are written in checkpoint order, each in ONE
  transaction of the target that also records the :class:`Progress` record ``(job, sink,
  subtask, checkpoint)`` (``commit``);
* **recover** from checkpoint ``c`` (``restore_state``): the transactions pending in ``c``'s
  state are committed again, except those whose progress record is already there (checkpoints
  of a subtask commit in increasing order, so ``last_committed_checkpoint`` says which): their
  notification may have been lost with the worker, and a replay never writes anything twice;
* **abort**: what ``c``'s state holds pending for a later checkpoint, and whatever the
  failed attempt had not sealed, is dropped; the sources replay those rows.

A sink never acknowledges a checkpoint it has not made durable: a failed write (target down,
constraint violated, delivery error) keeps its rows pending and fails the task at its next
batch, barrier or notification (the job's restart strategy takes over), so no later
snapshot succeeds after it.

Two lineages (:func:`~sabot.runtime.operators.sinks.output_lineage`): ``job`` names the
output and goes on when a job is submitted restored from another's checkpoint (the Kafka
sink's transactional ids keep fencing the old producers); ``progress_job`` is the job whose
checkpoint ids the progress records count, always the running job's: a restored job numbers
its checkpoints from 1 again, and its records must not be taken for the old job's ones of
the same numbers. The pending transactions a restore finds are committed under the
``progress_job`` the state names.

Without checkpoints there is nothing to recover to: rows are written every ``flush_rows``
rows (when set) and at the end of input, each write in its own target transaction without a
progress record. With checkpoints, the end of input seals the last rows under
:data:`END_OF_INPUT`, committed when the whole job finished (``notify_job_finished``): another
task may still fail and the job restart from a checkpoint.

The subclass implements:

* ``stage(batch)``: the Arrow table (or batch) to keep for ``batch`` (may raise
  ``ConnectorError`` for rows the target cannot take); ``check_batch(batch)``: schema checks;
* ``commit(table, progress)``: write ``table`` (None: no rows) and, unless ``progress`` is
  None (no checkpoints), the :class:`Progress` record, in one transaction of the target;
  return False (writing nothing) when the target can see in that transaction that the
  record is there;
* ``last_committed_checkpoint(job)``: the highest checkpoint id of this subtask's progress
  records of lineage ``job`` in the target (-1 for none);
* optionally ``check_restored(table)`` (a pending table read back from a checkpoint),
  ``lineage_changed()`` (restored into another job: its lineage goes on) and
  ``write_unbuffered(table)`` (when ``two_phase`` is False, e.g. Kafka's at-least-once).
"""

import logging
import threading
from typing import NamedTuple

import pyarrow as pa

from sabot.connectors import ConnectorError, ipc_to_table, table_to_ipc
from sabot.runtime.operators.sinks import END_OF_INPUT, _Sink, output_lineage

log = logging.getLogger(__name__)

STATE_KEYS = ("job", "progress_job", "pending")


class Progress(NamedTuple):
    """The record that says a subtask's rows of one checkpoint are in the target."""

    job: str  # the lineage of the job that took the checkpoint
    sink: str  # the sink operator's name
    subtask: int
    checkpoint_id: int


class TwoPhaseCommitSink(_Sink):
    """Rows per checkpoint, committed to the target when the checkpoint completes (module docs)."""

    #: the sink buffers rows per checkpoint and commits them (False: ``write_unbuffered`` per batch)
    two_phase = True
    #: without checkpoints: write every this many rows (None: only at the end of input)
    flush_rows = None

    def __init__(self, ctx):
        super().__init__(ctx)
        self.what = f"sink {ctx.operator_name!r}"  # subclasses name their kind
        self.target = "the target"  # what the errors call the place rows go to
        #: the output's lineage (kept across a restore into a new job)
        self.job = output_lineage(ctx.job_id)
        #: the lineage of the job whose checkpoint ids the progress records count: this job's
        self.progress_job = self.job
        self._open = []  # tables staged since the last barrier: the open transaction
        self._open_rows = 0
        self.pending = {}  # checkpoint id -> sealed Table, waiting for the checkpoint to complete
        self.committed_checkpoints = 0
        self.skipped_checkpoints = 0  # their progress record was there already (a replay)
        self._failure = None  # the error of a failed write: fails the task at its next step
        self._lock = threading.Lock()  # notify_checkpoint_complete comes from another pool thread

    # -- what a subclass implements ----------------------------------------------------

    def check_batch(self, batch):
        """Refuse a batch the target cannot take (schema checks)."""

    def stage(self, batch):
        """The Arrow table or batch to keep for ``batch`` (default: the batch itself)."""
        return batch

    def commit(self, table, progress):
        """Write ``table`` (None: no rows) and, when ``progress`` (a :class:`Progress`) is not
        None, that record in ONE transaction of the target. False if the record was there
        already (then nothing is written)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement commit()")

    def last_committed_checkpoint(self, job):
        """The highest checkpoint id of this subtask's progress records of lineage ``job`` in
        the target, or -1."""
        raise NotImplementedError(f"{type(self).__name__} does not implement last_committed_checkpoint()")

    def check_restored(self, table):
        """A pending table read back from a checkpoint, before it is committed."""

    def lineage_changed(self):
        """``self.job`` became the lineage of the job a restore came from."""

    def write_unbuffered(self, table):
        raise NotImplementedError(f"{type(self).__name__} does not implement write_unbuffered()")

    def failure_detail(self):
        """Errors the target reported asynchronously (None: none); they fail the next step."""
        return None

    # -- failures ----------------------------------------------------------------------

    def _raise_failure(self):
        if self._failure is None:
            detail = self.failure_detail()
            if detail is None:
                return
            self._failure = ConnectorError(detail)
            raise ConnectorError(f"{self.what}: {detail}")
        raise ConnectorError(f"{self.what}: an earlier write to {self.target} failed: {self._failure}") \
            from self._failure

    def progress(self, checkpoint_id, job=None):
        """The progress record of this subtask's ``checkpoint_id`` (of this job, or ``job``)."""
        return Progress(job or self.progress_job, self.ctx.operator_name, self.ctx.subtask_index, checkpoint_id)

    def _commit(self, table, checkpoint_id, job=None):
        try:
            written = self.commit(table, None if checkpoint_id is None else self.progress(checkpoint_id, job))
        except BaseException as exc:
            self._failure = exc
            raise
        if checkpoint_id is None:
            return
        if written:
            self.committed_checkpoints += 1
        else:
            self.skipped_checkpoints += 1
            log.info("%s[%d]: checkpoint %s was committed before; not writing it again", self.what,
                     self.ctx.subtask_index, checkpoint_id)

    # -- rows: begin -------------------------------------------------------------------

    def process(self, batch, input_index):
        with self._lock:
            self._raise_failure()
            self.check_batch(batch)
            self._count(batch)
            if not batch.num_rows:
                return []
            staged = self.stage(batch)
            if not self.two_phase:
                self.write_unbuffered(staged)
                return []
            self._open.append(staged)
            self._open_rows += staged.num_rows
            if not self.ctx.checkpointing and self.flush_rows and self._open_rows >= self.flush_rows:
                self._commit(self._seal(), None)
        return []

    def _seal(self):
        """The open transaction as one Table (None if empty); a new one begins."""
        if not self._open:
            return None
        tables = [pa.Table.from_batches([t]) if isinstance(t, pa.RecordBatch) else t for t in self._open]
        self._open, self._open_rows = [], 0
        return pa.concat_tables(tables) if len(tables) > 1 else tables[0]

    # -- checkpoints: pre-commit, commit, recover ------------------------------------

    def snapshot_state(self, checkpoint_id):
        """Pre-commit: seal the open transaction for ``checkpoint_id``; the state holds every
        pending one. A failed write declines the checkpoint (raises)."""
        with self._lock:
            self._raise_failure()
            table = self._seal()
            if table is not None:
                self.pending[int(checkpoint_id)] = table
            return {"keyed": None, "state": {
                "job": self.job,
                "progress_job": self.progress_job,
                "pending": {str(c): table_to_ipc(t) for c, t in sorted(self.pending.items())},
            }}

    def notify_checkpoint_complete(self, checkpoint_id):
        """Commit the pending transactions of every checkpoint ``<= checkpoint_id``, in order."""
        with self._lock:
            self._commit_pending_up_to(checkpoint_id)

    def _commit_pending_up_to(self, checkpoint_id):
        for c in sorted(c for c in self.pending if c <= checkpoint_id):
            self._commit(self.pending[c], c)
            del self.pending[c]

    def restore_state(self, keyed, state, checkpoint_id):
        """Recover: commit what ``checkpoint_id``'s state holds pending unless the target's
        progress records say it was committed; abort (drop) the rest."""
        state = state or {}
        unknown = sorted(set(state) - set(STATE_KEYS))
        if unknown or (keyed is not None and keyed.num_rows):
            raise ConnectorError(f"{self.what}: the state in checkpoint {checkpoint_id} is not a two-phase-commit "
                                 f"sink's (unexpected keys {unknown}; expected {', '.join(map(repr, STATE_KEYS))})")
        if not state:
            return
        with self._lock:
            job = state.get("job") or self.job
            if job != self.job:  # restored into a new job: its output goes on
                self.job = job
                self.lineage_changed()
            # the job that took the checkpoints of these pending transactions (older states: job)
            progress_job = state.get("progress_job") or job
            pending = {int(c): d for c, d in (state.get("pending") or {}).items()}
            aborted = sorted(c for c in pending if c > checkpoint_id)
            if aborted:  # cannot be in a consistent checkpoint; the sources replay these rows
                log.warning("%s[%d]: checkpoint %s holds rows pending for later checkpoint(s) %s; dropping them",
                            self.what, self.ctx.subtask_index, checkpoint_id, aborted)
            covered = sorted(c for c in pending if c <= checkpoint_id)
            if not covered:
                return
            last = self.last_committed_checkpoint(progress_job)
            for c in covered:
                if c <= last:
                    self.skipped_checkpoints += 1
                    log.info("%s[%d]: checkpoint %s was committed before; not writing it again", self.what,
                             self.ctx.subtask_index, c)
                    continue
                table = ipc_to_table(pending[c])
                self.check_restored(table)
                self._commit(table, c, progress_job)

    # -- end of input ------------------------------------------------------------------

    def finish(self):
        """Without checkpoints the end of input is final: write the rest. With them, the rest
        waits for the whole job to finish (another task may fail and the job restart)."""
        with self._lock:
            self._raise_failure()
            table = self._seal()
            if self.ctx.checkpointing:
                if table is not None:
                    self.pending[END_OF_INPUT] = table
            elif table is not None:
                self._commit(table, None)
        return []

    def notify_job_finished(self):
        with self._lock:
            self._commit_pending_up_to(END_OF_INPUT)

    def summary(self):
        out = super().summary()
        out.update({"committed_checkpoints": self.committed_checkpoints,
                    "skipped_checkpoints": self.skipped_checkpoints})
        if self.pending:
            out["pending_rows"] = sum(t.num_rows for t in self.pending.values())
        return out
