"""In-memory tables on a cluster: uploaded once to the coordinator (PUT /tables/{id}),
got once per worker (the coordinator's own file mapped on its host, else a download of
GET /tables/{id} into a memory file) and shared by its subtasks, dropped everywhere when
the job is forgotten; hostile uploads get 4xx."""

import asyncio
import os
import uuid

import pyarrow as pa
import pytest

from sabot.api.stream import Stream
from sabot.cluster.client import ApiError, SabotClient
from sabot.testing import assert_tables_equal
from tests.cluster.test_coordinator import cluster, http, keyed_table, reference_counts, until

pytestmark = pytest.mark.timeout(120)


def ipc_bytes(table):
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def test_a_table_job_runs_on_workers_that_each_fetch_the_table_once(arun):
    table = keyed_table(30_000)
    dim = pa.table({"key": pa.array(range(97), pa.int64()), "bucket": pa.array([k % 5 for k in range(97)])})

    async def body():
        async with cluster(workers=2, slots=2) as (c, workers):
            client = SabotClient(c.url)
            stream = (Stream.from_table(table, batch_size=1000, parallelism=4).join_table(dim, on="key")
                      .key_by("key").aggregate({"value": ["count", "sum"]}).collect(name="counts"))
            job_id = await asyncio.to_thread(client.submit, stream)
            assert sorted(c.tables.ids()) == sorted(stream.to_job_graph().tables)  # the source's and the join's
            assert await c.wait_for_job(job_id, 60) == "FINISHED"
            # the source's 4 subtasks ran on both workers, the join (parallelism 1) on one:
            # one copy of a table per worker that needs it, however many subtasks read it
            copies = sorted(len(w.task_manager.tables) for w in workers)
            assert copies == [1, 2]
            # on the coordinator's host, the workers map its own files: nothing was downloaded
            assert sum(w.table_fetcher.mapped for w in workers) == 3
            assert sum(w.table_fetcher.downloaded for w in workers) == 0
            got = (await c.job_result(job_id)).tables["counts"]
            assert_tables_equal(got.sort_by("key"), reference_counts(table).sort_by("key"))
            # the result was fetched: the workers let go of the job, its tables included
            for w in workers:
                await until(lambda w=w: len(w.task_manager.tables) == 0, what="the worker dropped the tables")
            await c.forget_job(job_id)
            assert len(c.tables) == 0
            for table_id in stream.to_job_graph().tables:
                status, err = await http("GET", f"{c.url}/tables/{table_id}")
                assert status == 404 and table_id in err["error"]

    arun(body(), 90)


def test_an_in_process_submission_hands_its_tables_over(arun):
    table = keyed_table(5_000)

    async def body():
        async with cluster(workers=1, slots=2) as (c, (w,)):
            stream = Stream.from_table(table, batch_size=700, parallelism=2).key_by("key") \
                .aggregate({"value": ["count", "sum"]}).collect(name="counts")
            job_id = await c.submit_stream_job(stream)
            assert await c.wait_for_job(job_id, 60) == "FINISHED"
            got = (await c.job_result(job_id)).tables["counts"]
            assert_tables_equal(got.sort_by("key"), reference_counts(table).sort_by("key"))

    arun(body(), 60)


@pytest.mark.parametrize("stranger", ["another file at that path", "a path this worker cannot open"])
def test_a_worker_that_does_not_find_the_coordinators_file_downloads_a_copy(arun, monkeypatch, stranger):
    """What a worker on another host sees: the path names no file, or another file."""
    from sabot.cluster import job_tables, table_fetch
    if stranger == "another file at that path":
        real = table_fetch.file_identity
        monkeypatch.setattr(table_fetch, "file_identity", lambda st: {**real(st), "inode": real(st)["inode"] + 1})
    else:
        real_file_of = job_tables.JobTables.file_of
        monkeypatch.setattr(job_tables.JobTables, "file_of",
                            lambda self, table_id: {**real_file_of(self, table_id), "path": "/nonexistent/t.arrows"})
    table = keyed_table(8_000)

    async def body():
        async with cluster(workers=2, slots=2) as (c, workers):
            stream = Stream.from_table(table, batch_size=700, parallelism=4).key_by("key") \
                .aggregate({"value": ["count", "sum"]}).collect(name="counts")
            job_id = await c.submit_stream_job(stream)
            assert await c.wait_for_job(job_id, 60) == "FINISHED"
            assert [w.table_fetcher.downloaded for w in workers] == [1, 1]
            assert sum(w.table_fetcher.mapped for w in workers) == 0
            got = (await c.job_result(job_id)).tables["counts"]
            assert_tables_equal(got.sort_by("key"), reference_counts(table).sort_by("key"))

    arun(body(), 60)


def test_uploads_are_checked_and_jobs_must_name_uploaded_tables(arun):
    table = pa.table({"x": list(range(100))})

    async def body():
        async with cluster(workers=1, slots=1, max_table_bytes=4096) as (c, _):
            table_id = uuid.uuid4().hex
            status, err = await http("PUT", f"{c.url}/tables/{table_id}", data=b"\x00garbage" * 50)
            assert status == 400 and "Arrow IPC stream" in err["error"]
            status, err = await http("PUT", f"{c.url}/tables/not-an-id", data=ipc_bytes(table))
            assert status == 400 and "32 lowercase hex" in err["error"]
            status, err = await http("PUT", f"{c.url}/tables/{table_id}",
                                     data=ipc_bytes(pa.table({"x": list(range(10_000))})))
            assert status == 413 and "max_table_bytes" in err["error"]
            assert len(c.tables) == 0
            status, info = await http("PUT", f"{c.url}/tables/{table_id}", data=ipc_bytes(table))
            assert status == 201 and info == {"table_id": table_id, "num_rows": 100, "nbytes": table.nbytes}
            status, again = await http("PUT", f"{c.url}/tables/{table_id}", data=ipc_bytes(table))
            assert status == 200
            status, body_ = await http("GET", f"{c.url}/tables/{table_id}")
            assert status == 200 and pa.ipc.open_stream(body_).read_all().equals(table)
            status, where = await http("GET", f"{c.url}/tables/{table_id}/file")
            st = os.stat(where["path"])
            assert status == 200 and (where["inode"], where["size"]) == (st.st_ino, st.st_size)
            status, err = await http("GET", f"{c.url}/tables/{uuid.uuid4().hex}/file")
            assert status == 404 and "no table" in err["error"]
            status, err = await http("GET", f"{c.url}/tables/not-an-id/file")
            assert status == 400 and "32 lowercase hex" in err["error"]
            # a job naming a table nobody uploaded is refused whole
            graph = Stream.from_table(table).collect().to_job_graph("orphan", shippable=True).to_dict()
            status, err = await http("POST", f"{c.url}/jobs/submit", json=graph)
            assert status == 400 and "upload it first" in err["error"]
            assert not c.jobs

    arun(body(), 60)


def test_the_client_says_what_went_wrong_with_an_upload(arun):
    async def body():
        async with cluster(workers=1, slots=1, max_table_bytes=1024) as (c, _):
            client = SabotClient(c.url)
            big = Stream.from_table(pa.table({"x": list(range(10_000))})).collect()
            with pytest.raises(ApiError, match="413.*max_table_bytes"):
                await asyncio.to_thread(client.submit, big)
            assert not c.jobs

    arun(body(), 60)
