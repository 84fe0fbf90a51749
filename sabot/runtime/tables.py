"""In-memory tables a job refers to: ``Stream.from_table``, ``from_batches`` and the
static side of ``join_table``.

A job graph never carries a table's rows. An operator's parameters hold a *table
reference*, ``{"table_id": "<32 hex>", "num_rows": n, "nbytes": b}``, and the rows
live in the :class:`TableStore` of the process that runs the task:

* **Embedded run** (``Stream.run``): the store holds the job graph's own tables
  (``JobGraph.tables``), handed over by reference: no copy, no serialisation.
* **Cluster**: the submitting client uploads each table once (``PUT /tables/{id}``,
  an Arrow IPC stream); the coordinator keeps it as a file. A worker fetches it once
  before it deploys the first task that needs it, and memory-maps it: the worker's
  subtasks share those pages, and each reads only its own slices of the table. A
  worker on the coordinator's host maps the coordinator's own file (its identity, from
  ``GET /tables/{id}/file``, proves it is the same file: no copy at all); any other
  worker downloads it (``GET /tables/{id}``) into an anonymous memory file (``memfd``:
  nothing is left behind, even by ``kill -9``).

A store knows which jobs use which table (:meth:`TableStore.use`) and drops a table
when the last of them is released.
"""

import os
import re
import threading
import uuid

import pyarrow as pa

from sabot.errors import SabotError

__all__ = ["TABLE_ID_PATTERN", "MissingTable", "TableStore", "file_identity", "is_ref", "new_ref", "refs_in",
           "validate_ipc_file", "write_ipc"]

#: a table id: 32 lowercase hex digits (a uuid4)
TABLE_ID_PATTERN = "[0-9a-f]{32}"
_TABLE_ID = re.compile(f"^{TABLE_ID_PATTERN}$")


class MissingTable(SabotError, LookupError):
    """A task refers to a table this process does not have."""


def new_ref(table):
    """A fresh reference to ``table`` (the caller keeps the table under ``ref["table_id"]``)."""
    return {"table_id": uuid.uuid4().hex, "num_rows": table.num_rows, "nbytes": table.nbytes}


def is_ref(value):
    return isinstance(value, dict) and isinstance(value.get("table_id"), str) and bool(
        _TABLE_ID.match(value["table_id"]))


def refs_in(parameters):
    """The table references among an operator's parameters (top level, as sources and
    ``join_table`` put them)."""
    return [v for v in (parameters or {}).values() if is_ref(v)]


def write_ipc(table, sink):
    """``table`` as one Arrow IPC stream into ``sink`` (a path or a writable file);
    its record batches stay as they are."""
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)


def validate_ipc_file(path, expect_rows=None):
    """Open ``path`` as an Arrow IPC stream, memory-mapped (zero-copy); the table.

    Raises:
        ValueError: not an Arrow IPC stream, or not ``expect_rows`` rows.
    """
    try:
        with pa.memory_map(str(path)) as source:
            table = pa.ipc.open_stream(source).read_all()
    except (pa.ArrowInvalid, OSError) as exc:
        raise ValueError(f"not an Arrow IPC stream: {exc}") from None
    if expect_rows is not None and table.num_rows != expect_rows:
        raise ValueError(f"the table has {table.num_rows} rows, its reference says {expect_rows}")
    return table


def file_identity(st):
    """What tells one file from any other, of an ``os.stat_result``: device, inode, size
    and modification time (a file the coordinator wrote once and never changes)."""
    return {"device": st.st_dev, "inode": st.st_ino, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


class TableStore:
    """The tables of one process, by id, and which jobs use each.

    Args:
        tables: ``{table_id: pyarrow.Table}`` to start with (an embedded run's
            ``JobGraph.tables``).
        directory: where :meth:`add` writes tables as files (the coordinator's store);
            None keeps them in memory only.
    """

    def __init__(self, tables=None, directory=None):
        self.directory = directory
        self._tables = dict(tables or {})
        self._files = {}  # table id -> path of its file (None: an anonymous memory file)
        self._fds = {}  # table id -> fd of its memory file
        self._users = {}  # table id -> ids of the jobs that use it
        self._lock = threading.Lock()

    def __contains__(self, table_id):
        return table_id in self._tables

    def __len__(self):
        return len(self._tables)

    def ids(self):
        return list(self._tables)

    @property
    def nbytes(self):
        return sum(t.nbytes for t in list(self._tables.values()))

    def get(self, ref):
        """The table a reference (or a table id) names.

        Raises:
            MissingTable: this process does not have it.
        """
        table_id = ref["table_id"] if isinstance(ref, dict) else ref
        table = self._tables.get(table_id)
        if table is None:
            raise MissingTable(
                f"table {table_id} is not in this process: a job graph that refers to in-memory tables runs "
                "where it was built (Stream.run) or is submitted with its tables (SabotClient.submit, "
                "LocalCluster.submit); JobGraph.to_dict() alone does not carry them")
        return table

    def put(self, table_id, table):
        with self._lock:
            self._tables[table_id] = table

    def path_of(self, table_id):
        """The file that holds the table as an Arrow IPC stream (written on first use)."""
        with self._lock:
            path = self._files.get(table_id)
        if path is None:
            table = self.get(table_id)
            path = self._write(table_id, table)
        return path

    def add(self, tables):
        """Keep ``{table_id: table}``; with a directory, write each once as an IPC file
        (what ``GET /tables/{id}`` sends)."""
        for table_id, table in tables.items():
            if table_id in self._tables:
                continue
            self.put(table_id, table)
            if self.directory is not None:
                self._write(table_id, table)

    def _write(self, table_id, table):
        if self.directory is None:
            raise RuntimeError("this table store has no directory to write files to")
        path = os.path.join(self.directory, f"{table_id}.arrows")
        tmp = path + ".tmp"
        with pa.OSFile(tmp, "wb") as sink:
            write_ipc(table, sink)
        os.replace(tmp, path)
        with self._lock:
            self._files[table_id] = path
        return path

    def adopt_file(self, table_id, path, expect_rows=None):
        """Keep the table in ``path`` (an IPC stream), memory-mapped; the file is this
        store's from now on (removed when the table is dropped)."""
        try:
            table = validate_ipc_file(path, expect_rows)
        except ValueError:
            os.unlink(path)
            raise
        with self._lock:
            self._tables[table_id] = table
            self._files[table_id] = path
        return table

    def adopt_fd(self, table_id, fd, expect_rows=None):
        """Keep the table held by the open file ``fd`` (a memory file a download filled,
        or the coordinator's own file opened read-only), memory-mapped (the fd is the
        store's from now on, closed when the table is dropped)."""
        try:
            table = validate_ipc_file(f"/proc/self/fd/{fd}", expect_rows)
        except ValueError:
            os.close(fd)
            raise
        with self._lock:
            self._tables[table_id] = table
            self._fds[table_id] = fd
        return table

    def use(self, job_id, table_ids):
        """``job_id`` uses these tables (they stay until :meth:`release_job`)."""
        with self._lock:
            for table_id in table_ids:
                self._users.setdefault(table_id, set()).add(job_id)

    def limit_unused(self, max_unused):
        """Drop the oldest tables no job uses beyond ``max_unused`` (uploads whose job
        never came); their ids."""
        with self._lock:
            unused = [t for t in self._tables if t not in self._users]
        dropped = unused[:max(0, len(unused) - max_unused)]
        for table_id in dropped:
            self.drop(table_id)
        return dropped

    def release_job(self, job_id):
        """The job is gone: drop the tables no other job uses; their ids."""
        dropped = []
        with self._lock:
            for table_id, users in list(self._users.items()):
                users.discard(job_id)
                if not users:
                    del self._users[table_id]
                    dropped.append(table_id)
        for table_id in dropped:
            self.drop(table_id)
        return dropped

    def drop(self, table_id):
        with self._lock:
            self._tables.pop(table_id, None)
            path = self._files.pop(table_id, None)
            fd = self._fds.pop(table_id, None)
        # the mapping itself lives on in batches still referring to it (the kernel keeps
        # the pages of an unlinked file or closed memfd until the last mapping goes)
        if path is not None:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        if fd is not None:
            os.close(fd)

    def clear(self):
        for table_id in list(self._tables):
            self.drop(table_id)
        with self._lock:
            self._users.clear()
