"""The coordinator's side of in-memory tables (see :mod:`sabot.runtime.tables`).

:class:`JobTables` owns the coordinator's :class:`~sabot.runtime.tables.TableStore`:
it keeps what clients upload (``PUT /tables/{id}``) or hand over in process, serves
the files workers fetch (``GET /tables/{id}``), refuses a job naming a table it does
not have, and drops each table with the last job using it.
"""

import logging
import os
import secrets
import shutil
import tempfile

from sabot.errors import InvalidRequest, NotFound, PayloadTooLarge
from sabot.runtime.tables import TableStore, file_identity, refs_in

log = logging.getLogger(__name__)

__all__ = ["JobTables"]


class JobTables:
    """Tables of the coordinator's jobs, as files in a temporary directory.

    Args:
        max_table_bytes: the largest upload accepted (413 above).
        max_unused_tables: uploads no job uses yet, kept at most (the oldest goes).
        offload: runs blocking work off the event loop (the coordinator's).
    """

    def __init__(self, max_table_bytes, max_unused_tables, offload):
        self.max_table_bytes = max_table_bytes
        self.max_unused_tables = max_unused_tables
        self.offload = offload
        self.store = TableStore()

    def __contains__(self, table_id):
        return table_id in self.store

    def __len__(self):
        return len(self.store)

    def ids(self):
        return self.store.ids()

    def start(self):
        self.store.directory = tempfile.mkdtemp(prefix="sabot-tables-")

    def stop(self):
        self.store.clear()
        if self.store.directory is not None:
            shutil.rmtree(self.store.directory, ignore_errors=True)
            self.store.directory = None

    async def hand_over(self, tables):
        """Tables given in this process (a Stream or JobGraph submitted in process)."""
        if tables:
            await self.offload(self.store.add, tables)

    def check(self, job_graph):
        """The ids of the tables the job refers to; InvalidRequest if one is not here."""
        table_ids = []
        for op in job_graph.operators.values():
            for ref in refs_in(op.parameters):
                if ref["table_id"] not in self.store:
                    raise InvalidRequest(
                        f"operator {op.name!r} refers to table {ref['table_id']}, which this coordinator does not "
                        "have: upload it first (PUT /tables/{table_id}, an Arrow IPC stream; SabotClient.submit "
                        "does it)")
                table_ids.append(ref["table_id"])
        return table_ids

    def use(self, job_id, table_ids):
        self.store.use(job_id, table_ids)

    def release_job(self, job_id):
        return self.store.release_job(job_id)

    async def receive(self, table_id, chunks, size_hint=None):
        """Keep the Arrow IPC stream ``chunks`` (an async iterator of bytes) as table
        ``table_id``; its ``{"table_id", "num_rows", "nbytes", "new"}``."""
        limit = self.max_table_bytes
        if size_hint is not None and size_hint > limit:
            raise PayloadTooLarge(f"a table of {size_hint} bytes is larger than max_table_bytes={limit}")
        if table_id in self.store:
            table = self.store.get(table_id)
            return {"table_id": table_id, "num_rows": table.num_rows, "nbytes": table.nbytes, "new": False}
        path = os.path.join(self.store.directory, f"{table_id}.upload-{secrets.token_hex(4)}")
        received = 0
        try:
            with open(path, "wb") as out:
                async for chunk in chunks:
                    received += len(chunk)
                    if received > limit:
                        raise PayloadTooLarge(f"the table upload passed max_table_bytes={limit}")
                    out.write(chunk)
            final = os.path.join(self.store.directory, f"{table_id}.arrows")
            os.replace(path, final)
            path = final
            table = await self.offload(self.store.adopt_file, table_id, path)
        except ValueError as exc:
            raise InvalidRequest(f"PUT /tables/{table_id}: the body must be one Arrow IPC stream: {exc}") from None
        finally:
            if os.path.exists(path) and table_id not in self.store:
                os.unlink(path)
        self.store.limit_unused(self.max_unused_tables)
        log.info("table %s received: %d rows, %d bytes", table_id, table.num_rows, received)
        return {"table_id": table_id, "num_rows": table.num_rows, "nbytes": table.nbytes, "new": True}

    def path_of(self, table_id):
        """The file of table ``table_id``; NotFound if unknown."""
        if table_id not in self.store:
            raise NotFound(f"no table {table_id} here (uploaded tables live until the jobs using them are "
                           "forgotten)")
        return self.store.path_of(table_id)

    def file_of(self, table_id):
        """Where table ``table_id``'s file is and what identifies it: a worker on this host
        maps the file itself when it finds the same file there (same device, inode, size
        and modification time), instead of downloading a copy."""
        path = self.path_of(table_id)
        return {"table_id": table_id, "path": path, **file_identity(os.stat(path))}
