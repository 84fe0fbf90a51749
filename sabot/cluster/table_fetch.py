"""A worker's side of in-memory tables (see :mod:`sabot.runtime.tables`): getting the
tables its tasks refer to from the coordinator, once per worker, before it deploys them.

Two ways, tried in this order:

* **Map the coordinator's file** (a worker on the coordinator's host): ``GET
  /tables/{id}/file`` names the file and what identifies it (device, inode, size,
  modification time); the worker opens that path read-only and maps it when the file
  it opened is that very file. No byte is copied; the pages are the coordinator's.
* **Download a copy** (any other worker, or when the file is not the same one):
  ``GET /tables/{id}`` into an anonymous memory file (``memfd``: nothing is left
  behind, even by ``kill -9``), then map that.

Either way the table's fd is the worker's :class:`~sabot.runtime.tables.TableStore`'s,
and the subtasks share one mapping.
"""

import asyncio
import logging
import os
import time

import aiohttp

from sabot.errors import InvalidRequest
from sabot.runtime.tables import file_identity, refs_in

log = logging.getLogger(__name__)

__all__ = ["TABLE_READ_TIMEOUT_S", "TableFetcher"]

#: seconds a table download may go without a byte before it fails
TABLE_READ_TIMEOUT_S = 30.0


class TableFetcher:
    """Fetches tables from the coordinator into a worker's table store.

    Args:
        node_id: the worker's id (for messages).
        coordinator_url: the coordinator's base URL.
        session: the worker's authenticated ``aiohttp.ClientSession``.
        store: the worker's :class:`~sabot.runtime.tables.TableStore`.
    """

    def __init__(self, node_id, coordinator_url, session, store):
        self.node_id = node_id
        self.coordinator_url = coordinator_url
        self.session = session
        self.store = store
        self.mapped = 0  # tables mapped from the coordinator's own file
        self.downloaded = 0  # tables downloaded as a copy
        self._fetches = {}  # table id -> the fetch in progress

    async def fetch_for(self, tdds):
        """Make sure every table these deployment descriptors refer to is here."""
        refs = {ref["table_id"]: ref for tdd in tdds for ref in refs_in(tdd.operator.get("parameters"))}
        missing = [ref for table_id, ref in refs.items() if table_id not in self.store]
        if missing:
            await asyncio.gather(*(self._fetch(ref) for ref in missing))

    async def _fetch(self, ref):
        table_id = ref["table_id"]
        fetching = self._fetches.get(table_id)
        if fetching is None:  # one fetch per table, however many deployments wait for it
            fetching = self._fetches[table_id] = asyncio.ensure_future(self._get(ref))
            fetching.add_done_callback(lambda _: self._fetches.pop(table_id, None))
        try:
            await asyncio.shield(fetching)
        except Exception as exc:
            raise InvalidRequest(f"worker {self.node_id} cannot fetch table {table_id} from the coordinator: "
                                 f"{type(exc).__name__}: {exc}") from exc

    async def _get(self, ref):
        table_id = ref["table_id"]
        started = time.perf_counter()
        fd = await self._open_coordinators_file(table_id)
        how = "mapped the coordinator's file"
        if fd is None:
            fd = await self._download(table_id)
            how = "downloaded"
        table = await asyncio.to_thread(self.store.adopt_fd, table_id, fd, ref.get("num_rows"))
        if how == "downloaded":
            self.downloaded += 1
        else:
            self.mapped += 1
        log.info("worker %s %s table %s (%d rows, %.1f MB) in %.3f s", self.node_id, how, table_id,
                 table.num_rows, table.nbytes / 1e6, time.perf_counter() - started)

    async def _open_coordinators_file(self, table_id):
        """An fd of the coordinator's own file of the table, opened read-only, when this
        worker can open it and it is the file the coordinator names; else None."""
        try:
            async with self.session.get(f"{self.coordinator_url}/tables/{table_id}/file",
                                        timeout=aiohttp.ClientTimeout(total=TABLE_READ_TIMEOUT_S)) as resp:
                if resp.status != 200:
                    return None
                where = await resp.json()
            path = where["path"]
            expected = {k: where[k] for k in ("device", "inode", "size", "mtime_ns")}
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, KeyError, TypeError):
            return None
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except (OSError, TypeError, ValueError):
            return None  # another host, or a file this worker may not read
        if file_identity(os.fstat(fd)) != expected:  # a different file at the same path
            os.close(fd)
            return None
        return fd

    async def _download(self, table_id):
        fd = os.memfd_create(f"sabot-table-{table_id}", os.MFD_CLOEXEC)
        try:
            async with self.session.get(f"{self.coordinator_url}/tables/{table_id}",
                                        timeout=aiohttp.ClientTimeout(sock_connect=TABLE_READ_TIMEOUT_S,
                                                                      sock_read=TABLE_READ_TIMEOUT_S)) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"GET /tables/{table_id}: HTTP {resp.status}: {(await resp.text())[:300]}")
                async for chunk in resp.content.iter_chunked(1 << 20):
                    view = memoryview(chunk)
                    while view:  # a write may take less than it was given
                        view = view[os.write(fd, view):]
        except BaseException:
            os.close(fd)
            raise
        return fd
