"""Checkpoint snapshot storage through ``pyarrow.fs``.

A checkpoint is a directory ``<root>/<job_id>/chk-<n>/`` holding

* keyed state as Arrow IPC files, one per contiguous range of key groups of one
  subtask (``<operator>/keyed-s<subtask>-kg<start>-<stop>.arrow``), so a restore
  at another parallelism reads only the files that overlap the key groups it now
  owns and filters them to exactly those groups;
* operator state (source offsets, small window state) as one JSON file per
  subtask (``<operator>/operator-s<subtask>.json``);
* ``_metadata.json``, written last and atomically (temp name, then ``move``),
  listing every file with its size and CRC-32. A directory without a valid
  metadata file is not a checkpoint: it is an aborted or unfinished one.

Readers never half-load: :meth:`CheckpointStorage.latest` checks the metadata,
the presence, size and (by default) checksum of every file before it returns a
checkpoint, skips anything wrong with a logged reason (kept in
:attr:`CheckpointStorage.skipped`), and falls back to the previous good one.

Example:
    >>> storage = CheckpointStorage("/tmp/sabot-checkpoints", retain=3)
    >>> handles = storage.write_keyed_state("job-1", 7, "count", 0, snapshot, 128)
    >>> handles.append(storage.write_operator_state("job-1", 7, "source", 0, {"offset": 42}))
    >>> chk = storage.commit("job-1", 7, {"trigger_time": 1.5e9}, handles=handles)
    >>> part = storage.read_keyed_state(storage.latest("job-1"), "count", (0, 43))

Files are written by the tasks (workers) and committed by the coordinator: a
handle is a plain JSON-able dict that travels in the task's acknowledgement.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import os
import threading
import time
import uuid
import zlib
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence
from urllib.parse import quote

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.ipc as ipc

from sabot.errors import SabotError
from sabot.execution.operator_spec import MAX_MAX_PARALLELISM

logger = logging.getLogger(__name__)

__all__ = [
    "CheckpointStorage",
    "CompletedCheckpoint",
    "SkippedCheckpoint",
    "CheckpointStorageError",
    "CorruptCheckpoint",
    "CheckpointInputError",
    "UnknownCheckpointState",
    "METADATA_FILE",
]

METADATA_FILE = "_metadata.json"
FORMAT = "sabot-checkpoint"
FORMAT_VERSION = 1
KEY_GROUP_COLUMN = "_key_group"
_CHK_PREFIX = "chk-"
_BYTES_TAG = "__sabot_bytes_b64__"


# --------------------------------------------------------------------------- errors

class CheckpointStorageError(SabotError, OSError):
    """A checkpoint could not be written, committed or read (the message says which file)."""

    def __str__(self):  # OSError would format (errno, strerror) when given two args
        return str(self.args[0]) if self.args else ""


class CorruptCheckpoint(CheckpointStorageError):
    """A checkpoint file does not match what its metadata promised (size, checksum, rows)."""


class CheckpointInputError(SabotError, ValueError):
    """Arguments to the checkpoint storage do not fit (ids, tables, key-group selections)."""


class UnknownCheckpointState(SabotError, KeyError):
    """The checkpoint holds no state for the asked operator; the message lists what it has."""

    def __str__(self):  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


# --------------------------------------------------------------------------- records

@dataclass
class CompletedCheckpoint:
    """A committed, verified checkpoint (what :meth:`CheckpointStorage.latest` returns).

    Attributes:
        job_id: The job it belongs to.
        checkpoint_id: Its number (1, 2, 3, ...).
        path: The checkpoint directory inside the storage's filesystem.
        timestamp: Wall-clock time of the commit (seconds since the epoch) unless the
            committer passed another one.
        metadata: The committer's own metadata (trigger time, source offsets summary ...).
        size_bytes: Total bytes of all state files (the metadata file excluded).
        handles: Every state file handle (dicts, see :meth:`CheckpointStorage.write_keyed_state`).
    """

    job_id: str
    checkpoint_id: int
    path: str
    timestamp: float
    metadata: dict = field(default_factory=dict)
    size_bytes: int = 0
    handles: list = field(default_factory=list)

    def operator_ids(self) -> list[str]:
        """Operators that have any state (keyed or operator) in this checkpoint."""
        return sorted({h["operator_id"] for h in self.handles})

    def keyed_handles(self, operator_id: str) -> list[dict]:
        """Keyed-state file handles of one operator, ordered by key-group range."""
        return sorted(
            (h for h in self.handles if h["kind"] == "keyed" and h["operator_id"] == operator_id),
            key=lambda h: (h["key_group_start"], h["key_group_stop"], h["subtask_index"]),
        )

    def operator_handles(self, operator_id: str) -> list[dict]:
        """Operator-state file handles of one operator, ordered by subtask."""
        return sorted(
            (h for h in self.handles if h["kind"] == "operator" and h["operator_id"] == operator_id),
            key=lambda h: h["subtask_index"],
        )

    def to_dict(self) -> dict:
        """Plain-JSON summary (for the REST API and logs)."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class SkippedCheckpoint:
    """A checkpoint directory a scan passed over, and why."""

    job_id: str
    checkpoint_id: int
    path: str
    reason: str


# --------------------------------------------------------------------------- helpers

def _checksum(data) -> str:
    return f"crc32:{zlib.crc32(data) & 0xFFFFFFFF:08x}"


def _encode_component(name: str, what: str) -> str:
    if not isinstance(name, str) or not name:
        raise CheckpointInputError(f"{what} must be a non-empty string, got {name!r}")
    encoded = quote(name, safe="-_.")
    if encoded in (".", ".."):
        raise CheckpointInputError(f"{what} {name!r} cannot be used as a directory name")
    return encoded


def _check_checkpoint_id(checkpoint_id) -> int:
    if isinstance(checkpoint_id, bool) or not isinstance(checkpoint_id, (int, np.integer)) \
            or int(checkpoint_id) < 0:
        raise CheckpointInputError(f"checkpoint_id must be a non-negative int, got {checkpoint_id!r}")
    return int(checkpoint_id)


def _check_subtask(subtask_index) -> int:
    if isinstance(subtask_index, bool) or not isinstance(subtask_index, (int, np.integer)) \
            or int(subtask_index) < 0:
        raise CheckpointInputError(f"subtask_index must be a non-negative int, got {subtask_index!r}")
    return int(subtask_index)


def _check_max_parallelism(max_parallelism) -> int:
    if isinstance(max_parallelism, bool) or not isinstance(max_parallelism, (int, np.integer)) \
            or not 1 <= int(max_parallelism) <= MAX_MAX_PARALLELISM:
        raise CheckpointInputError(
            f"max_parallelism must be an int in 1..{MAX_MAX_PARALLELISM}, got {max_parallelism!r}")
    return int(max_parallelism)


def _key_group_mask(key_groups, max_parallelism: int) -> np.ndarray:
    """Boolean mask over key groups from (start, stop), a range, a bool mask or ids."""
    mp = max_parallelism
    if isinstance(key_groups, range):
        if key_groups.step != 1:
            key_groups = np.asarray(key_groups)
        else:
            key_groups = (key_groups.start, key_groups.stop)
    if isinstance(key_groups, tuple) and len(key_groups) == 2 and all(
            isinstance(x, (int, np.integer)) and not isinstance(x, bool) for x in key_groups):
        start, stop = int(key_groups[0]), int(key_groups[1])
        if not 0 <= start <= stop <= mp:
            raise CheckpointInputError(
                f"key-group range ({start}, {stop}) must satisfy 0 <= start <= stop <= "
                f"max_parallelism={mp}")
        mask = np.zeros(mp, dtype=bool)
        mask[start:stop] = True
        return mask
    sel = np.asarray(key_groups)
    if sel.dtype == bool:
        if sel.shape != (mp,):
            raise CheckpointInputError(
                f"a key-group mask needs one entry per key group ({mp}), got shape {sel.shape}")
        return sel
    if sel.ndim == 1 and (sel.size == 0 or sel.dtype.kind in "iu"):
        if sel.size and (sel.min() < 0 or sel.max() >= mp):
            raise CheckpointInputError(
                f"key groups must lie in [0, {mp}); got values from {sel.min()} to {sel.max()}")
        mask = np.zeros(mp, dtype=bool)
        mask[sel.astype(np.int64)] = True
        return mask
    raise CheckpointInputError(
        "select key groups with a (start, stop) tuple, a boolean mask of length "
        f"{mp} or an array of key-group ids; got {key_groups!r}")


def _json_default(obj):
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return {_BYTES_TAG: base64.b64encode(bytes(obj)).decode("ascii")}
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"cannot store a {type(obj).__name__} in operator state "
                    "(use JSON types, bytes or numpy scalars/arrays)")


def _json_object_hook(obj):
    if len(obj) == 1 and _BYTES_TAG in obj:
        return base64.b64decode(obj[_BYTES_TAG])
    return obj


def _canonical(body: dict) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


# --------------------------------------------------------------------------- storage

class CheckpointStorage:
    """Writes, commits, scans and reads checkpoints under one root directory.

    Args:
        uri_or_path: A local directory (default kind) or any URI that
            ``pyarrow.fs.FileSystem.from_uri`` understands (``file://``, ``s3://``,
            ``gs://``, ``hdfs://`` ...). With ``filesystem`` given, a path inside it.
        retain: How many completed checkpoints of a job to keep (>= 1).
        filesystem: A ``pyarrow.fs.FileSystem`` to use instead of resolving the URI.
        target_file_rows: A subtask's keyed state is cut into files of at most about
            this many rows (at key-group boundaries), so a restore at another
            parallelism reads little more than the key groups it needs.
        min_file_rows: Key groups a subtask does not hold split its files only once a
            file has this many rows (keeps sparse state from making many tiny files).
        compression: ``None``, ``"lz4"`` or ``"zstd"`` for the Arrow IPC files.

    Thread-safe for concurrent writers of different subtasks in one process.
    """

    def __init__(self, uri_or_path, retain: int = 3, *, filesystem: pafs.FileSystem | None = None,
                 target_file_rows: int = 1 << 20, min_file_rows: int = 1 << 14,
                 compression: str | None = None):
        if isinstance(retain, bool) or not isinstance(retain, int) or retain < 1:
            raise CheckpointInputError(f"retain must be an int >= 1, got {retain!r}")
        for name, value in (("target_file_rows", target_file_rows), ("min_file_rows", min_file_rows)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise CheckpointInputError(f"{name} must be an int >= 1, got {value!r}")
        if compression not in (None, "lz4", "zstd"):
            raise CheckpointInputError(f"compression must be None, 'lz4' or 'zstd', got {compression!r}")
        root = os.fspath(uri_or_path)
        if filesystem is not None:
            if not isinstance(filesystem, pafs.FileSystem):
                raise CheckpointInputError(
                    f"filesystem must be a pyarrow.fs.FileSystem, got {type(filesystem).__name__}")
            self.filesystem = filesystem
            self.root = root.rstrip("/") if root not in ("", "/") else root
        elif "://" in root:
            try:
                self.filesystem, path = pafs.FileSystem.from_uri(root)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as exc:
                raise CheckpointInputError(
                    f"checkpoint location {root!r} is not a URI pyarrow.fs understands: {exc}") from exc
            self.root = path.rstrip("/") if path not in ("", "/") else path
        else:
            self.filesystem = pafs.LocalFileSystem()
            self.root = os.path.abspath(root)
        self.uri = root
        self.retain = retain
        self.target_file_rows = target_file_rows
        self.min_file_rows = min_file_rows
        self.compression = compression
        #: why the last :meth:`latest` / :meth:`list_completed` scan passed over directories
        self.skipped: list[SkippedCheckpoint] = []
        self._written: dict[tuple[str, int], list[dict]] = {}
        self._lock = threading.Lock()
        if self.root:
            self.filesystem.create_dir(self.root, recursive=True)

    def __repr__(self):
        return f"CheckpointStorage({self.uri!r}, retain={self.retain})"

    # ------------------------------------------------------------------ paths

    def _join(self, *parts: str) -> str:
        base = self.root
        rest = "/".join(p for p in parts if p)
        if not base:
            return rest
        return f"{base}/{rest}" if base != "/" else f"/{rest}"

    def job_path(self, job_id: str) -> str:
        """Directory of a job's checkpoints."""
        return self._join(_encode_component(job_id, "job_id"))

    def checkpoint_path(self, job_id: str, checkpoint_id: int) -> str:
        """Directory of one checkpoint (``<root>/<job_id>/chk-<n>``)."""
        return self._join(_encode_component(job_id, "job_id"),
                          f"{_CHK_PREFIX}{_check_checkpoint_id(checkpoint_id)}")

    def _record(self, job_id: str, checkpoint_id: int, handles: Iterable[dict]) -> None:
        with self._lock:
            self._written.setdefault((job_id, checkpoint_id), []).extend(handles)

    def _write_file(self, path: str, data) -> None:
        try:
            with self.filesystem.open_output_stream(path) as out:
                out.write(data)
        except (OSError, pa.ArrowException) as exc:
            raise CheckpointStorageError(f"could not write checkpoint file {path}: {exc}") from exc

    def _read_file(self, path: str) -> pa.Buffer:
        try:
            with self.filesystem.open_input_file(path) as f:
                return f.read_buffer()
        except FileNotFoundError as exc:
            raise CorruptCheckpoint(f"checkpoint file {path} is missing") from exc
        except (OSError, pa.ArrowException) as exc:
            raise CheckpointStorageError(f"could not read checkpoint file {path}: {exc}") from exc

    # ------------------------------------------------------------------ writing

    def write_keyed_state(self, job_id: str, checkpoint_id: int, operator_id: str, subtask_index: int,
                          table: pa.Table | pa.RecordBatch, max_parallelism: int) -> list[dict]:
        """Write one subtask's keyed-state snapshot as Arrow IPC files per key-group range.

        Args:
            job_id: The job.
            checkpoint_id: The checkpoint being taken.
            operator_id: The operator whose state this is.
            subtask_index: Which subtask of the operator wrote it.
            table: A snapshot with an int32 ``_key_group`` column, as
                ``KeyedAggregateTable.snapshot()`` makes it; rows may come in any order.
            max_parallelism: The operator's number of key groups.

        Returns:
            One handle per file: ``{"kind": "keyed", "job_id", "checkpoint_id",
            "operator_id", "subtask_index", "path" (relative to the checkpoint
            directory), "key_group_start", "key_group_stop" (half-open range covering
            every row of the file), "max_parallelism", "rows", "size_bytes",
            "checksum"}``. An empty table gives one zero-row file with an empty range,
            so the schema survives.
        """
        job_dir = _encode_component(job_id, "job_id")
        op_dir = _encode_component(operator_id, "operator_id")
        chk = _check_checkpoint_id(checkpoint_id)
        sub = _check_subtask(subtask_index)
        mp = _check_max_parallelism(max_parallelism)
        if isinstance(table, pa.RecordBatch):
            table = pa.Table.from_batches([table])
        if not isinstance(table, pa.Table):
            raise CheckpointInputError(
                f"keyed state must be a pyarrow Table or RecordBatch, got {type(table).__name__}")
        if KEY_GROUP_COLUMN not in table.column_names:
            raise CheckpointInputError(
                f"keyed state needs an int32 {KEY_GROUP_COLUMN!r} column; it has {table.column_names}")
        kg_col = table.column(KEY_GROUP_COLUMN)
        if kg_col.type != pa.int32():
            raise CheckpointInputError(
                f"column {KEY_GROUP_COLUMN!r} must be int32, got {kg_col.type}")
        if kg_col.null_count:
            raise CheckpointInputError(f"column {KEY_GROUP_COLUMN!r} has {kg_col.null_count} nulls")
        kg = kg_col.to_numpy()  # int32, no nulls: zero-copy when single-chunked
        if len(kg) and (kg.min() < 0 or kg.max() >= mp):
            raise CheckpointInputError(
                f"key groups must lie in [0, {mp}) (max_parallelism={mp}); "
                f"the table has values from {kg.min()} to {kg.max()}")

        ranges = self._plan_files(np.bincount(kg, minlength=mp)) if len(kg) else [(0, 0)]
        chk_dir = self._join(job_dir, f"{_CHK_PREFIX}{chk}")
        self.filesystem.create_dir(f"{chk_dir}/{op_dir}", recursive=True)
        options = ipc.IpcWriteOptions(compression=self.compression)
        handles = []
        for (start, stop), part in zip(ranges, self._cut(table, kg, ranges, mp)):
            sink = pa.BufferOutputStream()
            with ipc.new_file(sink, table.schema, options=options) as writer:
                writer.write_table(part)
            buf = sink.getvalue()
            rel = f"{op_dir}/keyed-s{sub:05d}-kg{start:05d}-{stop:05d}.arrow"
            self._write_file(f"{chk_dir}/{rel}", buf)
            handles.append({
                "kind": "keyed", "job_id": job_id, "checkpoint_id": chk, "operator_id": operator_id,
                "subtask_index": sub, "path": rel, "key_group_start": int(start),
                "key_group_stop": int(stop), "max_parallelism": mp, "rows": part.num_rows,
                "size_bytes": buf.size, "checksum": _checksum(buf),
            })
        self._record(job_id, chk, handles)
        logger.debug("checkpoint %s/%d: wrote %d keyed-state file(s) of %s[%d] (%d rows, %d bytes)",
                     job_id, chk, len(handles), operator_id, sub, table.num_rows,
                     sum(h["size_bytes"] for h in handles))
        return handles

    @staticmethod
    def _cut(table: pa.Table, kg: np.ndarray, ranges: list, mp: int) -> list[pa.Table]:
        """The rows of each range, in one stable gather (not one filter pass per file)."""
        if len(ranges) == 1:
            return [table]
        file_of_group = np.zeros(mp, dtype=np.int32)
        for i, (start, stop) in enumerate(ranges):
            file_of_group[start:stop] = i
        file_of_row = file_of_group[kg]
        order = np.argsort(file_of_row, kind="stable")
        ordered = table.take(pa.array(order))
        bounds = np.concatenate(([0], np.cumsum(np.bincount(file_of_row, minlength=len(ranges)))))
        return [ordered.slice(int(bounds[i]), int(bounds[i + 1] - bounds[i])) for i in range(len(ranges))]

    def _plan_files(self, counts: np.ndarray) -> list[tuple[int, int]]:
        """Cut the present key groups into (start, stop) file ranges (see the class docs)."""
        present = np.flatnonzero(counts)
        ranges = []
        start = prev = int(present[0])
        rows = 0
        for g in present.tolist():
            c = int(counts[g])
            gap = g != prev + 1 and g != start
            if rows and ((gap and rows >= self.min_file_rows) or rows + c > self.target_file_rows):
                ranges.append((start, prev + 1))
                start, rows = g, 0
            rows += c
            prev = g
        ranges.append((start, prev + 1))
        return ranges

    def write_operator_state(self, job_id: str, checkpoint_id: int, operator_id: str,
                             subtask_index: int, state: Mapping[str, Any]) -> dict:
        """Write one subtask's operator state (source offsets, small window state) as JSON.

        ``state`` holds JSON values; ``bytes`` come back as ``bytes`` (stored base64),
        numpy scalars/arrays as Python numbers/lists, tuples as lists.

        Returns:
            ``{"kind": "operator", "job_id", "checkpoint_id", "operator_id",
            "subtask_index", "path", "size_bytes", "checksum"}``.
        """
        job_dir = _encode_component(job_id, "job_id")
        op_dir = _encode_component(operator_id, "operator_id")
        chk = _check_checkpoint_id(checkpoint_id)
        sub = _check_subtask(subtask_index)
        if not isinstance(state, Mapping):
            raise CheckpointInputError(f"operator state must be a dict, got {type(state).__name__}")
        try:
            data = json.dumps(dict(state), default=_json_default, allow_nan=True).encode()
        except (TypeError, ValueError) as exc:
            raise CheckpointInputError(
                f"operator state of {operator_id}[{sub}] cannot be stored: {exc}") from exc
        chk_dir = self._join(job_dir, f"{_CHK_PREFIX}{chk}")
        self.filesystem.create_dir(f"{chk_dir}/{op_dir}", recursive=True)
        rel = f"{op_dir}/operator-s{sub:05d}.json"
        self._write_file(f"{chk_dir}/{rel}", data)
        handle = {
            "kind": "operator", "job_id": job_id, "checkpoint_id": chk, "operator_id": operator_id,
            "subtask_index": sub, "path": rel, "size_bytes": len(data), "checksum": _checksum(data),
        }
        self._record(job_id, chk, [handle])
        return handle

    # ------------------------------------------------------------------ commit / discard

    def commit(self, job_id: str, checkpoint_id: int, metadata: Mapping[str, Any] | None = None, *,
               handles: Sequence[dict] | None = None, timestamp: float | None = None
               ) -> CompletedCheckpoint:
        """Make a checkpoint exist: write ``_metadata.json`` last, atomically, then apply retention.

        Args:
            job_id: The job.
            checkpoint_id: The checkpoint whose files are all written.
            metadata: The committer's JSON-able metadata (kept as ``checkpoint.metadata``).
                A ``"handles"`` entry in it is taken as the handle list.
            handles: Every file handle of the checkpoint (from the tasks' acks). If
                neither this nor ``metadata["handles"]`` is given, the handles this
                storage object wrote for the checkpoint are used (single-process use).
            timestamp: Commit time to record (default ``time.time()``).

        Raises:
            CheckpointStorageError: a handle's file is missing or has another size, a
                handle belongs to another job/checkpoint, or the checkpoint is already
                committed. Nothing is made visible then.
        """
        job_dir = _encode_component(job_id, "job_id")
        chk = _check_checkpoint_id(checkpoint_id)
        user_md = dict(metadata or {})
        if handles is None:
            handles = user_md.pop("handles", None)
        else:
            user_md.pop("handles", None)
        if handles is None:
            with self._lock:
                handles = list(self._written.get((job_id, chk), ()))
        handles = [dict(h) for h in handles]
        chk_dir = self._join(job_dir, f"{_CHK_PREFIX}{chk}")
        meta_path = f"{chk_dir}/{METADATA_FILE}"
        if self.filesystem.get_file_info(meta_path).type != pafs.FileType.NotFound:
            raise CheckpointStorageError(f"checkpoint {chk} of job {job_id!r} is already committed "
                                         f"({meta_path} exists)")
        problem = self._check_handles(job_id, chk, chk_dir, handles, verify_checksums=False,
                                      check_ids=True)
        if problem:
            raise CheckpointStorageError(f"cannot commit checkpoint {chk} of job {job_id!r}: {problem}")
        ts = time.time() if timestamp is None else float(timestamp)
        size = sum(int(h["size_bytes"]) for h in handles)
        body = {"format": FORMAT, "version": FORMAT_VERSION, "job_id": job_id, "checkpoint_id": chk,
                "timestamp": ts, "size_bytes": size, "metadata": user_md, "handles": handles}
        try:
            payload = _canonical(body)
        except (TypeError, ValueError) as exc:
            raise CheckpointInputError(
                f"checkpoint metadata of {job_id!r}/{chk} is not JSON-serialisable: {exc}") from exc
        envelope = json.dumps({"body": json.loads(payload), "checksum": _checksum(payload)},
                              sort_keys=True).encode()
        self.filesystem.create_dir(chk_dir, recursive=True)
        tmp = f"{chk_dir}/.{METADATA_FILE}.{uuid.uuid4().hex}.tmp"
        self._write_file(tmp, envelope)
        try:
            # rename on local disks (atomic); a single PUT on object stores
            self.filesystem.move(tmp, meta_path)
        except (OSError, pa.ArrowException) as exc:
            self._delete_quietly(tmp, is_dir=False)
            raise CheckpointStorageError(f"could not move {tmp} to {meta_path}: {exc}") from exc
        with self._lock:
            self._written.pop((job_id, chk), None)
        logger.info("checkpoint %d of job %s committed: %d files, %d bytes", chk, job_id,
                    len(handles), size)
        completed = CompletedCheckpoint(job_id=job_id, checkpoint_id=chk, path=chk_dir, timestamp=ts,
                                        metadata=user_md, size_bytes=size, handles=handles)
        self._apply_retention(job_id)
        return completed

    def discard(self, job_id: str, checkpoint_id: int, *, force: bool = False) -> bool:
        """Remove an aborted checkpoint's files; True if there was anything to remove.

        Refuses (``CheckpointStorageError``) to delete a committed checkpoint unless
        ``force=True``: a late abort must not destroy a completed one.
        """
        chk = _check_checkpoint_id(checkpoint_id)
        chk_dir = self.checkpoint_path(job_id, chk)
        with self._lock:
            self._written.pop((job_id, chk), None)
        if not force and self.filesystem.get_file_info(
                f"{chk_dir}/{METADATA_FILE}").type != pafs.FileType.NotFound:
            raise CheckpointStorageError(
                f"checkpoint {chk} of job {job_id!r} is committed; discard(force=True) to delete it")
        if self.filesystem.get_file_info(chk_dir).type == pafs.FileType.NotFound:
            return False
        self.filesystem.delete_dir(chk_dir)
        logger.debug("discarded checkpoint %d of job %s", chk, job_id)
        return True

    def _delete_quietly(self, path: str, is_dir: bool = True) -> None:
        try:
            if is_dir:
                self.filesystem.delete_dir(path)
            else:
                self.filesystem.delete_file(path)
        except FileNotFoundError:
            pass
        except (OSError, pa.ArrowException) as exc:
            logger.warning("could not delete %s: %s", path, exc)

    def _apply_retention(self, job_id: str) -> None:
        dirs = self._checkpoint_dirs(job_id)
        completed = []
        for chk, path in dirs:
            body, _ = self._load_metadata(job_id, chk, path)
            if body is not None:
                completed.append(chk)
        if not completed:
            return
        keep = set(completed[:self.retain])
        newest = completed[0]
        for chk, path in dirs:
            if chk in keep:
                continue
            if chk in completed or chk < newest:
                logger.info("retention: deleting checkpoint %d of job %s (%s)", chk, job_id,
                            "older than the last %d completed" % self.retain if chk in completed
                            else "incomplete and older than the newest completed")
                self._delete_quietly(path)

    # ------------------------------------------------------------------ scanning

    def _checkpoint_dirs(self, job_id: str) -> list[tuple[int, str]]:
        """(checkpoint id, path) of every chk-<n> directory of the job, newest first."""
        selector = pafs.FileSelector(self.job_path(job_id), allow_not_found=True)
        out = []
        for info in self.filesystem.get_file_info(selector):
            if info.type != pafs.FileType.Directory or not info.base_name.startswith(_CHK_PREFIX):
                continue
            num = info.base_name[len(_CHK_PREFIX):]
            if num.isdigit():
                out.append((int(num), info.path))
        out.sort(reverse=True)
        return out

    def _load_metadata(self, job_id: str, chk: int, path: str) -> tuple[dict | None, str | None]:
        """(metadata body, None) or (None, reason it is not a valid checkpoint)."""
        meta_path = f"{path}/{METADATA_FILE}"
        try:
            with self.filesystem.open_input_stream(meta_path) as f:
                raw = f.readall()
        except FileNotFoundError:
            return None, f"no {METADATA_FILE} (aborted or unfinished checkpoint)"
        except (OSError, pa.ArrowException) as exc:
            return None, f"cannot read {METADATA_FILE}: {exc}"
        try:
            envelope = json.loads(raw)
            body = envelope["body"]
            stored_sum = envelope["checksum"]
        except (ValueError, KeyError, TypeError) as exc:
            return None, f"unparsable {METADATA_FILE}: {type(exc).__name__}: {exc}"
        if not isinstance(body, dict):
            return None, f"unparsable {METADATA_FILE}: body is a {type(body).__name__}, not an object"
        try:
            actual = _checksum(_canonical(body))
        except (TypeError, ValueError) as exc:
            return None, f"unparsable {METADATA_FILE}: {exc}"
        if actual != stored_sum:
            return None, f"{METADATA_FILE} checksum mismatch (stored {stored_sum}, computed {actual})"
        if body.get("format") != FORMAT or body.get("version") != FORMAT_VERSION:
            return None, (f"{METADATA_FILE} has format {body.get('format')!r} version "
                          f"{body.get('version')!r}; expected {FORMAT!r} version {FORMAT_VERSION}")
        if body.get("job_id") != job_id:
            return None, f"metadata belongs to job {body.get('job_id')!r}, not {job_id!r}"
        if body.get("checkpoint_id") != chk:
            return None, (f"metadata is for checkpoint {body.get('checkpoint_id')!r} but lies in "
                          f"directory {_CHK_PREFIX}{chk}")
        if not isinstance(body.get("handles"), list):
            return None, f"{METADATA_FILE} has no handle list"
        return body, None

    def _check_handles(self, job_id: str, chk: int, chk_dir: str, handles: list, *,
                       verify_checksums: bool, check_ids: bool) -> str | None:
        """None if every handle's file is there (and intact), else the first problem."""
        seen = set()
        for h in handles:
            if not isinstance(h, dict):
                return f"handle {h!r} is not a dict"
            missing = [k for k in ("kind", "operator_id", "subtask_index", "path", "size_bytes",
                                   "checksum") if k not in h]
            if h.get("kind") == "keyed":
                missing += [k for k in ("key_group_start", "key_group_stop", "max_parallelism", "rows")
                            if k not in h]
            elif "kind" in h and h["kind"] != "operator":
                return f"handle {h.get('path')!r} has unknown kind {h['kind']!r}"
            if missing:
                return f"handle {h.get('path')!r} lacks {missing}"
            if check_ids and (h.get("job_id") != job_id or h.get("checkpoint_id") != chk):
                return (f"handle {h['path']!r} was written for job {h.get('job_id')!r} checkpoint "
                        f"{h.get('checkpoint_id')!r}, not job {job_id!r} checkpoint {chk}")
            rel = h["path"]
            if not isinstance(rel, str) or rel.startswith("/") or ".." in rel.split("/"):
                return f"handle path {rel!r} is not inside the checkpoint directory"
            if rel in seen:
                return f"file {rel!r} is listed twice"
            seen.add(rel)
        if not handles:
            return None
        infos = self.filesystem.get_file_info([f"{chk_dir}/{h['path']}" for h in handles])
        for h, info in zip(handles, infos):
            if info.type == pafs.FileType.NotFound:
                return f"file {h['path']} is missing"
            if info.size != h["size_bytes"]:
                return (f"file {h['path']} has {info.size} bytes, the metadata says "
                        f"{h['size_bytes']} (truncated or overwritten)")
        if verify_checksums:
            for h in handles:
                try:
                    buf = self._read_file(f"{chk_dir}/{h['path']}")
                except CheckpointStorageError as exc:
                    return str(exc)
                actual = _checksum(buf)
                if actual != h["checksum"]:
                    return f"file {h['path']} checksum mismatch (metadata {h['checksum']}, file {actual})"
        return None

    def _scan(self, job_id: str, verify_checksums: bool, first_only: bool) -> list[CompletedCheckpoint]:
        skipped = []
        found = []
        for chk, path in self._checkpoint_dirs(job_id):
            body, reason = self._load_metadata(job_id, chk, path)
            if body is not None:
                reason = self._check_handles(job_id, chk, path, body["handles"],
                                             verify_checksums=verify_checksums, check_ids=False)
            if reason is not None:
                logger.warning("skipping checkpoint %d of job %s at %s: %s", chk, job_id, path, reason)
                skipped.append(SkippedCheckpoint(job_id, chk, path, reason))
                continue
            found.append(CompletedCheckpoint(
                job_id=job_id, checkpoint_id=chk, path=path, timestamp=float(body["timestamp"]),
                metadata=body.get("metadata") or {}, size_bytes=int(body.get("size_bytes", 0)),
                handles=body["handles"]))
            if first_only:
                break
        self.skipped = skipped
        return found

    def latest(self, job_id: str, *, verify_checksums: bool = True) -> CompletedCheckpoint | None:
        """The newest valid completed checkpoint of the job, or None.

        Newer directories that are incomplete or damaged are skipped with a logged
        warning and listed in :attr:`skipped`. With ``verify_checksums`` (default)
        every file's CRC-32 is checked, so a restore never starts from a damaged
        checkpoint.
        """
        found = self._scan(job_id, verify_checksums, first_only=True)
        return found[0] if found else None

    def list_completed(self, job_id: str, *, verify_checksums: bool = True) -> list[CompletedCheckpoint]:
        """Every valid completed checkpoint of the job, newest first (see :meth:`latest`)."""
        return self._scan(job_id, verify_checksums, first_only=False)

    # ------------------------------------------------------------------ reading

    def _checked_buffer(self, checkpoint: CompletedCheckpoint, handle: dict) -> pa.Buffer:
        path = f"{checkpoint.path}/{handle['path']}"
        buf = self._read_file(path)
        if buf.size != handle["size_bytes"]:
            raise CorruptCheckpoint(f"checkpoint file {path} has {buf.size} bytes, the metadata says "
                                    f"{handle['size_bytes']}")
        actual = _checksum(buf)
        if actual != handle["checksum"]:
            raise CorruptCheckpoint(f"checkpoint file {path} checksum mismatch "
                                    f"(metadata {handle['checksum']}, file {actual})")
        return buf

    def _read_ipc(self, checkpoint: CompletedCheckpoint, handle: dict) -> pa.Table:
        buf = self._checked_buffer(checkpoint, handle)
        try:
            table = ipc.open_file(buf).read_all()
        except pa.ArrowException as exc:
            raise CorruptCheckpoint(
                f"checkpoint file {checkpoint.path}/{handle['path']} is not Arrow IPC: {exc}") from exc
        if table.num_rows != handle["rows"]:
            raise CorruptCheckpoint(f"checkpoint file {checkpoint.path}/{handle['path']} has "
                                    f"{table.num_rows} rows, the metadata says {handle['rows']}")
        return table

    def read_keyed_state(self, checkpoint: CompletedCheckpoint, operator_id: str,
                         key_groups=None) -> pa.Table:
        """Keyed state of some key groups of one operator, from every subtask that wrote it.

        Args:
            checkpoint: From :meth:`latest` / :meth:`list_completed`.
            operator_id: The operator.
            key_groups: ``None`` (all), a ``(start, stop)`` tuple, a boolean mask of
                length ``max_parallelism``, or an array of key-group ids (a rebalanced
                assignment). Only files whose range overlaps it are read; their rows
                are filtered to exactly these key groups.

        Returns:
            One table (the snapshot schema) ready for ``KeyedAggregateTable.restore``.

        Raises:
            UnknownCheckpointState: no keyed state of ``operator_id`` in the checkpoint.
            CorruptCheckpoint: a file's size, checksum or row count is off.
        """
        handles = checkpoint.keyed_handles(operator_id)
        if not handles:
            have = sorted({h["operator_id"] for h in checkpoint.handles if h["kind"] == "keyed"})
            raise UnknownCheckpointState(
                f"checkpoint {checkpoint.checkpoint_id} of job {checkpoint.job_id!r} has no keyed state "
                f"for operator {operator_id!r}; operators with keyed state: {have}")
        mps = {h["max_parallelism"] for h in handles}
        if len(mps) != 1:
            raise CorruptCheckpoint(f"keyed state of {operator_id!r} in checkpoint "
                                    f"{checkpoint.checkpoint_id} mixes max_parallelism {sorted(mps)}")
        mp = mps.pop()
        mask = None if key_groups is None else _key_group_mask(key_groups, mp)
        tables = []
        for h in handles:
            start, stop = h["key_group_start"], h["key_group_stop"]
            if mask is not None and not mask[start:stop].any():
                continue
            t = self._read_ipc(checkpoint, h)
            if mask is not None and not mask[start:stop].all():
                kg = t.column(KEY_GROUP_COLUMN).to_numpy()
                t = t.filter(pa.array(mask[kg]))
            tables.append(t)
        if not tables:
            # the schema from the smallest non-empty file (an empty subtask may not have
            # fixed its value types), so an empty result still restores cleanly
            source = min(handles, key=lambda h: (h["rows"] == 0, h["size_bytes"]))
            return self._read_ipc(checkpoint, source).slice(0, 0)
        if len(tables) == 1:
            return tables[0]
        try:
            return pa.concat_tables(tables)
        except pa.ArrowInvalid as exc:
            raise CorruptCheckpoint(f"keyed-state files of {operator_id!r} in checkpoint "
                                    f"{checkpoint.checkpoint_id} have different schemas: {exc}") from exc

    def read_operator_state(self, checkpoint: CompletedCheckpoint, operator_id: str) -> dict[int, dict]:
        """Operator state of every subtask of ``operator_id``: ``{subtask_index: state}``.

        Raises:
            UnknownCheckpointState: no operator state of ``operator_id`` in the checkpoint.
            CorruptCheckpoint: a file's size or checksum is off.
        """
        handles = checkpoint.operator_handles(operator_id)
        if not handles:
            have = sorted({h["operator_id"] for h in checkpoint.handles if h["kind"] == "operator"})
            raise UnknownCheckpointState(
                f"checkpoint {checkpoint.checkpoint_id} of job {checkpoint.job_id!r} has no operator "
                f"state for operator {operator_id!r}; operators with operator state: {have}")
        out = {}
        for h in handles:
            buf = self._checked_buffer(checkpoint, h)
            try:
                out[h["subtask_index"]] = json.loads(buf.to_pybytes(), object_hook=_json_object_hook)
            except ValueError as exc:
                raise CorruptCheckpoint(
                    f"checkpoint file {checkpoint.path}/{h['path']} is not valid JSON: {exc}") from exc
        return out
