"""A partitioned file sink: Hive-style directories from columns (``dt=2024-01-01/hm=10%3A05/``).

Parameters: ``{"kind": "partitioned_files", "path": dir, "partition_by": [columns],
"format": "parquet" | "ipc", "mode": "error" | "overwrite" | "append", "rows_per_file": int |
None, "success_file": "_SUCCESS" | None}`` (``mode`` and the part-file names per partition
directory as :class:`~sabot.runtime.operators.sinks.FileSink` has them).

Each batch is split by the values of the partition columns (one grouping pass); each
partition's rows (without the partition columns, as Hive stores them) go to that
partition's directory through its own two-phase-commit file writer
(:class:`~sabot.runtime.operators.sinks.FileSink`: staged hidden files, published when
the checkpoint that covers them completes, or at the end of the job). A partition's
files are published exactly once: a restore publishes what its checkpoint covered and
deletes this subtask's other files in every partition directory, including partitions
created after the checkpoint. Values are URI-encoded in directory names (``:`` becomes
``%3A``), so ``pyarrow.dataset(path, partitioning="hive")`` reads them back; a null
value is the directory ``__HIVE_DEFAULT_PARTITION__``.

Partition commit: when the job has finished, every partition directory this subtask
wrote gets an empty ``success_file`` (``_SUCCESS`` by default), after its files were
published: a reader that waits for it sees the partition complete.
"""

from __future__ import annotations

import copy
import logging
import os
import threading
from urllib.parse import quote

import pyarrow as pa
import pyarrow.fs as pafs

from sabot.errors import OperatorError
from sabot.runtime.operators.base import TaskContext, register
from sabot.runtime.operators.keyed_state import group_ids
from sabot.runtime.operators.sinks import FileSink, _Sink, list_directory

log = logging.getLogger(__name__)

NULL_PARTITION = "__HIVE_DEFAULT_PARTITION__"


def partition_dir(names, values):
    """``"dt=2024-01-01/hm=10%3A05"`` for the values of one partition."""
    parts = []
    for name, value in zip(names, values):
        text = NULL_PARTITION if value is None else quote(str(value), safe="")
        parts.append(f"{name}={text}")
    return "/".join(parts)


@register("sink", kind="partitioned_files")
class PartitionedFileSink(_Sink):
    """Part files in Hive-style partition directories (see the module docs)."""

    def __init__(self, ctx):
        super().__init__(ctx)
        name = ctx.operator_name
        self.partition_by = list(self.params.get("partition_by") or [])
        if not self.partition_by:
            raise OperatorError(f"partitioned file sink {name!r} needs partition_by columns")
        self.path = self.params.get("path")
        if not isinstance(self.path, str) or not self.path:
            raise OperatorError(f"partitioned file sink {name!r} needs parameter 'path' (a directory)")
        self.success_file = self.params.get("success_file", "_SUCCESS")
        self.children = {}  # partition directory (relative) -> FileSink
        self._lock = threading.Lock()
        self.lineage = None  # the restored lineage (a job restored from another's checkpoint), else the job's
        probe = self._child("probe")  # checks format and path once, and gives the file system
        self.fs = probe.fs
        self.children.clear()
        self.lineage = probe.lineage
        self._own = probe._own  # this lineage's and subtask's part files, in any partition
        self.schema = None

    def _child(self, rel):
        if rel in self.children:
            return self.children[rel]
        operator = copy.deepcopy(self.ctx.operator)
        params = operator["parameters"]
        params["kind"] = "files"
        params["path"] = f"{self.path.rstrip('/')}/{rel}"
        ctx = TaskContext(self.ctx.job_id, self.ctx.task_id, self.ctx.attempt, operator, self.ctx.subtask_index,
                          self.ctx.parallelism, self.ctx.max_parallelism, {}, self.ctx.checkpointing,
                          tables=self.ctx.tables)
        child = FileSink(ctx)
        if self.lineage is not None and child.lineage != self.lineage:
            child._set_lineage(self.lineage)
        self.children[rel] = child
        return child

    def process(self, batch, input_index):
        missing = [c for c in self.partition_by if batch.schema.get_field_index(c) < 0]
        if missing:
            raise OperatorError(f"partitioned file sink {self.ctx.operator_name!r}: partition column(s) {missing} "
                                f"not in the input; available columns: {batch.schema.names}")
        self._count(batch)
        if batch.num_rows == 0:
            return []
        table = pa.Table.from_batches([batch])
        gid, first = group_ids([table.column(c) for c in self.partition_by])
        values = table.select(self.partition_by).take(pa.array(first)).to_pylist()
        body = table.drop_columns(self.partition_by)
        with self._lock:
            for g, row in enumerate(values):
                rel = partition_dir(self.partition_by, [row[c] for c in self.partition_by])
                rows = body.filter(pa.array(gid == g)) if len(values) > 1 else body
                for b in rows.combine_chunks().to_batches():
                    self._child(rel).process(b, input_index)
        return []

    # -- two-phase commit, delegated per partition -----------------------------------------

    def snapshot_state(self, checkpoint_id):
        with self._lock:
            states = {rel: child.snapshot_state(checkpoint_id)["state"] for rel, child in self.children.items()}
        return {"keyed": None, "state": {"lineage": self.lineage, "partitions": states}}

    def notify_checkpoint_complete(self, checkpoint_id):
        with self._lock:
            for child in self.children.values():
                child.notify_checkpoint_complete(checkpoint_id)

    def restore_state(self, keyed, state, checkpoint_id):
        if keyed is not None and keyed.num_rows:
            raise OperatorError(f"partitioned file sink {self.ctx.operator_name!r} keeps no keyed state")
        partitions = (state or {}).get("partitions") or {}
        lineage = (state or {}).get("lineage")
        if lineage is not None and lineage != self.lineage:  # go on with the files of the restored job
            self.lineage = lineage
            probe = self._child("probe")
            self.children.clear()
            self._own = probe._own
        with self._lock:
            for rel, child_state in partitions.items():
                self._child(rel).restore_state(None, child_state, checkpoint_id)
            self._discard_outside(set(partitions), checkpoint_id)

    def _discard_outside(self, known, checkpoint_id):
        """Delete this subtask's files in partition directories the checkpoint does not know."""
        root = self.path.rstrip("/")
        root = pafs.FileSystem.from_uri(root)[1] if "://" in root else os.path.abspath(root)
        infos = list_directory(self.fs, root, recursive=True)
        removed = 0
        for info in infos:
            if info.type != pafs.FileType.File or not self._own.match(info.base_name):
                continue
            rel = info.path[len(root) + 1:].rsplit("/", 1)[0] if "/" in info.path[len(root) + 1:] else ""
            if rel in known:
                continue
            self.fs.delete_file(info.path)
            removed += 1
        if removed:
            log.info("partitioned file sink %r[%d]: restored checkpoint %s; removed %d file(s) of partitions it "
                     "does not cover", self.ctx.operator_name, self.ctx.subtask_index, checkpoint_id, removed)

    def finish(self):
        with self._lock:
            for child in self.children.values():
                child.finish()
        return []

    def notify_job_finished(self):
        with self._lock:
            for rel, child in self.children.items():
                child.notify_job_finished()
                if self.success_file:
                    with self.fs.open_output_stream(f"{child.dir}/{self.success_file}"):
                        pass

    def close(self):
        for child in self.children.values():
            child.close()

    def summary(self):
        out = super().summary()
        out["partitions"] = sorted(self.children)
        out["files"] = [f for child in self.children.values() for f in child.files]
        return out

