"""Sink operators: collect in memory, part files in a directory, a callable, print.

A sink's ``process`` returns no batches. ``summary()`` (reported with the task's
final state, so JSON-able) holds at least ``{"rows": n, "bytes": n}`` (bytes =
Arrow buffer bytes received).

Parameter formats (``parameters["kind"]``):

* ``"collect"``: ``{"schema": b64 | None}``; ``result()`` is the gathered ``pyarrow.Table``
  (no batch at all: an empty table of the declared schema, or None without one).
* ``"files"``: ``{"path": dir, "format": "parquet" | "ipc", "rows_per_file": int |
  None, "mode": "error" | "overwrite" | "append"}``; writes
  ``part-{lineage}-{subtask}-{n:05d}.parquet`` / ``.arrow``, published by two-phase
  commit at checkpoints (see :class:`FileSink`).
* ``"callable"``: ``{"function": "module:fn"}``; ``fn(batch)`` per batch.
* ``"print"``: ``{"limit": int | None}``; prints up to ``limit`` rows to stdout.
"""

import hashlib
import json
import logging
import os
import re
import threading

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from sabot.errors import OperatorError
from sabot.execution.operator_spec import decode_schema
from sabot.runtime import changelog, functions
from sabot.runtime.operators.base import Operator, register

log = logging.getLogger(__name__)

FILE_FORMATS = {"parquet": "parquet", "ipc": "arrow"}

# pending key of files staged at end of input: later than any checkpoint, so no
# checkpoint notification publishes them and no restore keeps them
END_OF_INPUT = 1 << 62


class _Sink(Operator):
    def __init__(self, ctx):
        super().__init__(ctx)
        self.rows = 0
        self.bytes = 0
        self.batches = 0

    def _count(self, batch):
        self.rows += batch.num_rows
        self.bytes += batch.nbytes
        self.batches += 1

    def summary(self):
        return {"rows": self.rows, "bytes": self.bytes, "batches": self.batches}


@register("sink", kind="collect")
class CollectSink(_Sink):
    """Keeps every batch; ``result()`` is a Table (``None`` if no batch ever came).

    Checkpoints: the state is the whole collected table as Arrow IPC bytes
    (``{"ipc": bytes, "rows", "bytes", "batches"}``), so every checkpoint copies
    everything collected so far. Meant for tests and small outputs only; use the
    file sink for real output.
    """

    def __init__(self, ctx):
        super().__init__(ctx)
        self._batches = []
        self.schema = None
        declared = self.params.get("schema")
        # the plan's schema for the stream: an empty result is an empty table of it
        self.declared = decode_schema(declared) if declared else None

    def process(self, batch, input_index):
        if self.schema is None:
            self.schema = batch.schema
        elif not batch.schema.equals(self.schema, check_metadata=False):
            raise OperatorError(
                f"collect sink {self.ctx.operator_name!r} received a batch with schema {batch.schema}; "
                f"earlier batches had {self.schema}"
            )
        self._count(batch)
        if batch.num_rows:
            self._batches.append(batch)
        return []

    def result(self):
        if self.schema is None:
            return self.declared.empty_table() if self.declared is not None else None
        return pa.Table.from_batches(self._batches, schema=self.schema)

    def snapshot_state(self, checkpoint_id):
        if self.schema is None:
            return None
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, self.schema) as writer:
            for batch in self._batches:
                writer.write_batch(batch)
        return {"keyed": None, "state": {"ipc": sink.getvalue().to_pybytes(), "rows": self.rows,
                                         "bytes": self.bytes, "batches": self.batches}}

    def restore_state(self, keyed, state, checkpoint_id):
        name = self.ctx.operator_name
        if keyed is not None and keyed.num_rows:
            raise OperatorError(f"collect sink {name!r} keeps no keyed state, but checkpoint "
                                f"{checkpoint_id} holds {keyed.num_rows} keyed rows for it")
        if not state:
            return
        data = state.get("ipc")
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise OperatorError(
                f"collect sink {name!r}: the state in checkpoint {checkpoint_id} has no Arrow IPC bytes "
                f"under 'ipc' (keys: {sorted(state)})"
            )
        table = pa.ipc.open_stream(pa.py_buffer(bytes(data))).read_all()
        self.schema = table.schema
        self._batches = [b for b in table.to_batches() if b.num_rows]
        self.rows = int(state.get("rows", table.num_rows))
        self.bytes = int(state.get("bytes", table.nbytes))
        self.batches = int(state.get("batches", len(self._batches)))


_STAGING_SUFFIX = ".inprogress"
#: the file that says which output lineage a directory holds (``_`` hides it from readers)
OUTPUT_MARKER = "_SABOT_OUTPUT.json"
OUTPUT_MODES = ("error", "overwrite", "append")


def output_lineage(job_id):
    """The lineage of a job's file output: part files are named by it, so two jobs never
    write the same name. A job restored from another's checkpoint keeps that lineage."""
    return hashlib.blake2s(str(job_id).encode(), digest_size=4).hexdigest()


def _part_lineage(name):
    """The lineage of a (final or staged) part file name, None for other files."""
    m = re.match(r"^\.?part-([0-9a-f]{8})-\d+-\d+\.", name)
    return m.group(1) if m else None


def check_output_directory(fs, directory, lineage, mode):
    """Why lineage ``lineage`` must not write into ``directory`` (None: it may).

    A directory belongs to the lineage its marker names. In mode ``"error"`` another
    lineage's marker or part files (a rerun, another job, an older Sabot's
    ``part-N-...`` files) refuse the write; ``"append"`` and ``"overwrite"`` accept them
    (``overwrite`` deletes them first, see :func:`claim_output_directory`).
    """
    if mode not in OUTPUT_MODES:
        return f"unknown mode {mode!r}; expected one of {OUTPUT_MODES}"
    if mode != "error":
        return None
    infos = list_directory(fs, directory)
    marker = _read_marker(fs, directory)
    if marker is not None and marker.get("lineage") != lineage:
        return (f"{directory} holds the output of job {marker.get('job_id')}; "
                "write to another directory, or pass mode='overwrite' to replace that output or "
                "mode='append' to add to it")
    foreign = sorted(i.base_name for i in infos if i.type == pafs.FileType.File
                     and i.base_name.startswith(("part-", ".part-")) and _part_lineage(i.base_name) != lineage)
    if foreign:
        return (f"{directory} already holds part files of another job ({', '.join(foreign[:3])}"
                f"{' ...' if len(foreign) > 3 else ''}); write to another directory, or pass mode='overwrite' "
                "to replace them or mode='append' to add to them")
    return None


def list_directory(fs, directory, recursive=False):
    """The entries of ``directory`` ([] when it does not exist).

    pyarrow's ``allow_not_found`` is not atomic: while another subtask creates the directory
    (or its parent) the listing can still fail with FileNotFoundError, so a failed listing of
    a directory that exists is tried again.
    """
    for _ in range(5):
        try:
            return fs.get_file_info(pafs.FileSelector(directory, recursive=recursive, allow_not_found=True))
        except FileNotFoundError:
            if fs.get_file_info(directory).type == pafs.FileType.NotFound:
                return []
    return fs.get_file_info(pafs.FileSelector(directory, recursive=recursive, allow_not_found=True))


def _read_marker(fs, directory):
    try:
        with fs.open_input_stream(f"{directory}/{OUTPUT_MARKER}") as f:
            return json.loads(f.read())
    except (FileNotFoundError, OSError, ValueError):
        return None


def claim_output_directory(fs, directory, lineage, mode, job_id):
    """Make ``directory`` this lineage's output (after :func:`check_output_directory` passed):
    ``overwrite`` deletes other lineages' part files; the marker names this lineage. A local
    directory's marker is created exclusively, so of two jobs starting at once one is refused."""
    fs.create_dir(directory, recursive=True)
    marker = _read_marker(fs, directory)
    if marker is not None and marker.get("lineage") == lineage:
        return
    if mode == "overwrite":
        for info in list_directory(fs, directory):
            if info.type == pafs.FileType.File and _part_lineage(info.base_name) not in (None, lineage):
                try:
                    fs.delete_file(info.path)
                except FileNotFoundError:
                    pass  # another subtask of this job deleted it
    elif marker is not None:
        return  # append: the directory keeps naming its first owner
    body = json.dumps({"lineage": lineage, "job_id": job_id}).encode()
    path = f"{directory}/{OUTPUT_MARKER}"
    if isinstance(fs, pafs.LocalFileSystem) and mode == "error":
        # written whole under a private name, then linked: creation is exclusive and a reader
        # never sees a half-written marker
        tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
        with open(tmp, "wb") as f:
            f.write(body)
        try:
            os.link(tmp, path)
        except FileExistsError:
            marker = _read_marker(fs, directory) or {}
            if marker.get("lineage") != lineage:
                raise OperatorError(f"{directory} was claimed at the same moment by job {marker.get('job_id')}; "
                                    "two jobs do not share an output directory") from None
        finally:
            os.unlink(tmp)
        return
    with fs.open_output_stream(path) as f:
        f.write(body)


@register("sink", kind="files")
class FileSink(_Sink):
    """Part files ``part-{lineage}-{subtask_index}-{n:05d}.{parquet|arrow}`` in one directory,
    published by two-phase commit (Flink's ``TwoPhaseCommitSinkFunction``).

    Names are fenced: ``lineage`` (:func:`output_lineage`: the job's, or the one of the
    job whose checkpoint this one was restored from) keeps two jobs from ever writing
    the same name, and each attempt stages under a name of its own, so an attempt that
    a restart superseded (say, on a worker that was stopped and resumed) can write only
    files nobody publishes: a checkpoint commits the files of the attempt it covers. A
    directory holding another lineage's output is refused unless ``mode`` says
    ``"overwrite"`` or ``"append"`` (:func:`check_output_directory`).

    A new part starts every ``rows_per_file`` rows (default: one file per subtask
    between two checkpoints). ``path`` may be a local directory or a URI that
    ``pyarrow.fs`` understands (``s3://…``); the directory is created on the first
    batch.

    Rows go to a staging file ``.part-{lineage}-{subtask}-{n:05d}.{ext}.a{attempt}.inprogress``
    in the same directory; the leading ``.`` hides it from ``pyarrow.dataset`` (and
    Spark, Hive, …), which skip names starting with ``.`` or ``_``. Its life:

    * ``snapshot_state(c)`` (pre-commit): closes the open file; every file closed
      since the last snapshot becomes pending for checkpoint ``c``. State:
      ``{"lineage": l, "pending": {"c": [staged names…]}, "committed": [names…],
      "next_part": k}`` (checkpoint ids as strings: the state goes through JSON).
    * ``notify_checkpoint_complete(c)`` (commit): renames (``FileSystem.move``) the
      files pending for every checkpoint ``<= c`` to their final names.
    * ``restore_state(state, c)`` (recovery): commits the files the state lists as
      pending (their checkpoint completed; only the notification may have been
      lost), then deletes every other file of this subtask in the directory:
      staging leftovers of any attempt and final part files not in ``committed``
      (written after the checkpoint by an attempt that failed later). The directory
      then holds exactly what checkpoint ``c`` covers; numbering goes on from ``next_part``.
    * ``finish()`` (end of a bounded input is final): commits everything.

    Without checkpoints this amounts to: files become visible when the sink
    finishes. Only files named for this lineage and subtask are ever renamed or deleted
    (and, in ``overwrite`` mode, other lineages' part files, once, at the start).
    """

    def __init__(self, ctx):
        super().__init__(ctx)
        name = ctx.operator_name
        path = self.params.get("path")
        if not isinstance(path, str) or not path:
            raise OperatorError(f"file sink {name!r} needs parameter 'path' (a directory)")
        self.format = self.params.get("format") or "parquet"
        if self.format not in FILE_FORMATS:
            raise OperatorError(
                f"file sink {name!r}: unknown format {self.format!r}; expected one of {sorted(FILE_FORMATS)}"
            )
        rpf = self.params.get("rows_per_file")
        if rpf is not None and (isinstance(rpf, bool) or not isinstance(rpf, int) or rpf <= 0):
            raise OperatorError(f"file sink {name!r}: rows_per_file must be a positive integer or None, got {rpf!r}")
        self.rows_per_file = rpf
        self.mode = self.params.get("mode") or "error"
        if self.mode not in OUTPUT_MODES:
            raise OperatorError(f"file sink {name!r}: unknown mode {self.mode!r}; expected one of {OUTPUT_MODES}")
        if "://" in path:
            self.fs, self.dir = pafs.FileSystem.from_uri(path)
        else:
            self.fs, self.dir = pafs.LocalFileSystem(), os.path.abspath(path)
        self.dir = self.dir.rstrip("/") or "/"
        self.ext = FILE_FORMATS[self.format]
        self._set_lineage(output_lineage(ctx.job_id))
        self.next_part = 0
        self.committed = []  # final names, in commit order
        self.closed = []  # staged and closed, not yet pending for a checkpoint
        self.pending = {}  # checkpoint id -> staged names (pre-committed)
        self._current = None  # name of the part being written
        self._dir_ready = False
        self._stream = None
        self._writer = None
        self._rows_in_file = 0
        self._lock = threading.Lock()  # notify_checkpoint_complete may come from another thread
        self.schema = None

    # -- names -------------------------------------------------------------------------

    def _set_lineage(self, lineage):
        self.lineage = lineage
        # this lineage's and subtask's files, final and staged: group 1 the part, 2 the attempt
        self._own = re.compile(rf"^\.?part-{lineage}-{self.ctx.subtask_index}-(\d+)\.{re.escape(self.ext)}"
                               rf"(?:\.a(\d+){re.escape(_STAGING_SUFFIX)})?$")

    def final_name(self, part):
        return f"part-{self.lineage}-{self.ctx.subtask_index}-{part:05d}.{self.ext}"

    def staging_name(self, part, attempt=None):
        attempt = self.ctx.attempt if attempt is None else attempt
        return f".{self.final_name(part)}.a{attempt}{_STAGING_SUFFIX}"

    def _final_of(self, staged):
        m = self._own.match(staged)
        return self.final_name(int(m.group(1)))

    def _path(self, name):
        return f"{self.dir.rstrip('/')}/{name}"

    @property
    def files(self):
        """Paths of the committed (visible) part files, oldest first."""
        return [self._path(n) for n in self.committed]

    # -- writing -----------------------------------------------------------------------

    def _open_file(self):
        if not self._dir_ready:
            why = check_output_directory(self.fs, self.dir, self.lineage, self.mode)
            if why:
                raise OperatorError(f"file sink {self.ctx.operator_name!r}: {why}")
            claim_output_directory(self.fs, self.dir, self.lineage, self.mode, self.ctx.job_id)
            self._dir_ready = True
        part = self.next_part
        self._stream = self.fs.open_output_stream(self._path(self.staging_name(part)))
        if self.format == "parquet":
            self._writer = pq.ParquetWriter(self._stream, self.schema)
        else:
            self._writer = pa.ipc.new_file(self._stream, self.schema)
        self.next_part += 1
        self._current = part
        self._rows_in_file = 0

    def _close_file(self):
        if self._writer is not None:
            self._writer.close()
            self._stream.close()
            self._writer = self._stream = None
            self.closed.append(self.staging_name(self._current))
            self._current = None

    def process(self, batch, input_index):
        with self._lock:
            if self.schema is None:
                self.schema = batch.schema
            elif not batch.schema.equals(self.schema, check_metadata=False):
                raise OperatorError(
                    f"file sink {self.ctx.operator_name!r} received a batch with schema {batch.schema}; "
                    f"the files being written have {self.schema}"
                )
            self._count(batch)
            offset = 0
            # An empty first batch still makes one (empty) file, so the schema is on disk.
            while offset < batch.num_rows or (self._writer is None and self.next_part == 0):
                if self._writer is None:
                    self._open_file()
                room = batch.num_rows - offset
                if self.rows_per_file is not None:
                    room = min(room, self.rows_per_file - self._rows_in_file)
                if room:
                    self._writer.write_batch(batch.slice(offset, room))
                offset += room
                self._rows_in_file += room
                if self.rows_per_file is not None and self._rows_in_file >= self.rows_per_file:
                    self._close_file()
            return []

    # -- two-phase commit --------------------------------------------------------------

    def _commit(self, names, checkpoint_id, recovering=False):
        """Rename staged files to their final names (already final: nothing to do)."""
        for staged_name in names:
            final = self._final_of(staged_name)
            staged = self._path(staged_name)
            if self.fs.get_file_info(staged).type == pafs.FileType.File:
                self.fs.move(staged, self._path(final))
            elif self.fs.get_file_info(self._path(final)).type != pafs.FileType.File:
                raise OperatorError(
                    f"file sink {self.ctx.operator_name!r}: cannot commit {final} of checkpoint "
                    f"{checkpoint_id}: neither the staging file {staged} nor the final file exists "
                    f"in {self.dir} (deleted by something else?); its rows would be lost"
                )
            elif not recovering:
                log.warning("file sink %r: %s was already committed", self.ctx.operator_name, final)
            if final not in self.committed:
                self.committed.append(final)

    def snapshot_state(self, checkpoint_id):
        """Pre-commit: close the open part; files closed since the last snapshot wait for ``checkpoint_id``."""
        with self._lock:
            self._close_file()
            if self.closed:
                self.pending.setdefault(int(checkpoint_id), []).extend(self.closed)
                self.closed = []
            return {
                "keyed": None,
                "state": {
                    "lineage": self.lineage,
                    "pending": {str(c): list(names) for c, names in sorted(self.pending.items())},
                    "committed": list(self.committed),
                    "next_part": self.next_part,
                },
            }

    def notify_checkpoint_complete(self, checkpoint_id):
        """Commit: publish the files of every checkpoint ``<= checkpoint_id``."""
        with self._lock:
            for c in sorted(c for c in self.pending if c <= checkpoint_id):
                self._commit(self.pending[c], c)
                del self.pending[c]

    def restore_state(self, keyed, state, checkpoint_id):
        """Recover to exactly what ``checkpoint_id`` covers (see the class docs)."""
        name = self.ctx.operator_name
        if keyed is not None and keyed.num_rows:
            raise OperatorError(f"file sink {name!r} keeps no keyed state, but checkpoint "
                                f"{checkpoint_id} holds {keyed.num_rows} keyed rows for it")
        state = state or {}
        unknown = sorted(set(state) - {"lineage", "pending", "committed", "next_part"})
        if unknown:
            raise OperatorError(
                f"file sink {name!r}: the state in checkpoint {checkpoint_id} has unknown keys {unknown}; "
                "expected 'lineage', 'pending', 'committed', 'next_part'"
            )
        with self._lock:
            if self._writer is not None or self.next_part or self.committed:
                raise OperatorError(f"file sink {name!r}: restore_state must come before any batch")
            lineage = state.get("lineage")
            if lineage is not None:
                if not isinstance(lineage, str) or not re.fullmatch(r"[0-9a-f]{8}", lineage):
                    raise OperatorError(f"file sink {name!r}: checkpoint {checkpoint_id} names lineage "
                                        f"{lineage!r}; expected 8 hex digits")
                self._set_lineage(lineage)  # a job restored from another's checkpoint goes on with its files
            committed = list(state.get("committed") or [])
            pending = {int(c): list(names) for c, names in (state.get("pending") or {}).items()}
            bad = [n for n in committed if not isinstance(n, str) or not self._own.match(n) or n.startswith(".")]
            bad += [n for ns in pending.values() for n in ns
                    if not isinstance(n, str) or not self._own.match(n) or not n.startswith(".")]
            if bad:
                raise OperatorError(
                    f"file sink {name!r}: checkpoint {checkpoint_id} lists files {bad[:5]} that are not "
                    f"part files of lineage {self.lineage} and subtask {self.ctx.subtask_index} "
                    f"({self.final_name(0)} and its staged forms)"
                )
            self.committed = committed
            self.next_part = int(state.get("next_part") or 0)
            for c in sorted(pending):
                if c <= checkpoint_id:
                    self._commit(pending[c], c, recovering=True)
                else:  # cannot be in a consistent checkpoint; treat as not covered
                    log.warning("file sink %r: checkpoint %s lists files pending for later checkpoint %s; "
                                "discarding them", name, checkpoint_id, c)
            self._discard_uncovered(checkpoint_id)

    def _discard_uncovered(self, checkpoint_id):
        """Delete this subtask's files that checkpoint ``checkpoint_id`` does not cover."""
        infos = list_directory(self.fs, self.dir)
        keep = set(self.committed)
        removed = []
        for info in infos:
            if info.type != pafs.FileType.File or not self._own.match(info.base_name):
                continue
            if info.base_name in keep:
                continue
            try:
                self.fs.delete_file(info.path)
            except FileNotFoundError:
                continue  # a superseded attempt's staging file, gone meanwhile
            removed.append(info.base_name)
        if removed:
            log.info("file sink %r[%d]: restored checkpoint %s; removed %d file(s) it does not cover: %s",
                     self.ctx.operator_name, self.ctx.subtask_index, checkpoint_id, len(removed),
                     ", ".join(sorted(removed)[:10]) + (" …" if len(removed) > 10 else ""))
        missing = [n for n in self.committed if n not in {i.base_name for i in infos}]
        if missing:
            raise OperatorError(
                f"file sink {self.ctx.operator_name!r}: checkpoint {checkpoint_id} covers part files "
                f"{missing[:5]} that are no longer in {self.dir}; the output would miss their rows"
            )

    def finish(self):
        """End of input.

        Without checkpoints, end of input is final: every file is published. With
        checkpoints, another task of the job may still fail and the job restart
        from a checkpoint, which would take published files back; so the files
        stay staged until every task of the job finished (:meth:`notify_job_finished`).
        """
        with self._lock:
            self._close_file()
            if self.ctx.checkpointing:
                self.pending.setdefault(END_OF_INPUT, []).extend(self.closed)
                self.closed = []
                return []
            for c in sorted(self.pending):
                self._commit(self.pending.pop(c), c)
            self._commit(self.closed, "end-of-input")
            self.closed = []
            return []

    def notify_job_finished(self):
        """The whole job finished: publish everything still staged, and remove what superseded
        attempts of this subtask left staged (nobody publishes it)."""
        with self._lock:
            for c in sorted(self.pending):
                self._commit(self.pending.pop(c), c)
            self._commit(self.closed, "end-of-input")
            self.closed = []
            for info in list_directory(self.fs, self.dir):
                m = self._own.match(info.base_name)
                if m and m.group(2) is not None and int(m.group(2)) != self.ctx.attempt:
                    try:
                        self.fs.delete_file(info.path)
                    except FileNotFoundError:
                        pass

    def close(self):
        # After a failure the open part stays a staging file (restore deletes it).
        try:
            with self._lock:
                if self._writer is not None:
                    self._writer.close()
                    self._stream.close()
                    self._writer = self._stream = None
        except Exception:  # the task is already failing; keep its error, not this one
            log.exception("file sink %r: closing part %s failed", self.ctx.operator_name, self._current)

    def summary(self):
        out = super().summary()
        out["files"] = self.files
        if self.pending or self.closed:
            out["uncommitted_files"] = sum(len(v) for v in self.pending.values()) + len(self.closed)
        return out


@register("sink", kind="callable")
class CallableSink(_Sink):
    """Calls ``fn(batch)`` for every batch (its return value is ignored)."""

    def open(self):
        self.ref = self.params.get("function") or self.ctx.operator.get("function")
        if self.ref is None:
            raise OperatorError(f"callable sink {self.ctx.operator_name!r} needs parameter 'function' ('module:fn')")
        try:
            self.fn = functions.resolve(self.ref)
        except functions.FunctionReferenceError as exc:
            raise OperatorError(f"callable sink {self.ctx.operator_name!r}: {exc}") from exc

    def process(self, batch, input_index):
        self._count(batch)
        self.call_user(self.ref, self.fn, batch)
        return []


@register("sink", kind="print")
class PrintSink(_Sink):
    """Prints rows to stdout, prefixed by operator and subtask, up to ``limit`` rows in all;
    a changelog's rows (with the ``$op`` column) as Flink prints them: ``+I[a, b]``, ``-U[...]``."""

    def __init__(self, ctx):
        super().__init__(ctx)
        limit = self.params.get("limit")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
            raise OperatorError(
                f"print sink {ctx.operator_name!r}: limit must be an integer >= 0 or None, got {limit!r}"
            )
        self.limit = limit
        self.printed = 0

    def process(self, batch, input_index):
        self._count(batch)
        n = batch.num_rows if self.limit is None else min(batch.num_rows, self.limit - self.printed)
        if n > 0:
            prefix = f"{self.ctx.operator_name}[{self.ctx.subtask_index}]>"
            # Only the printed rows become Python objects.
            rows = batch.slice(0, n)
            if changelog.is_changelog(batch.schema):  # Flink's format: +I[a, b], -U[...], +U[...], -D[...]
                kinds = rows.column(changelog.OP).to_pylist()
                values = rows.drop_columns([changelog.OP]) if hasattr(rows, "drop_columns") else \
                    rows.select([c for c in rows.schema.names if c != changelog.OP])
                for kind, row in zip(kinds, values.to_pylist()):
                    print(prefix, changelog.format_row(kind, row.values()), flush=False)
            else:
                for row in rows.to_pylist():
                    print(prefix, row, flush=False)
            self.printed += n
        return []

    def finish(self):
        if self.limit is not None and self.rows > self.printed:
            print(f"{self.ctx.operator_name}[{self.ctx.subtask_index}]> ... {self.rows - self.printed} more rows")
        return []
