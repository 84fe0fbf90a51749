"""The PostgreSQL sink and source against a real PostgreSQL server (a private one the tests
start: :class:`sabot.testing.PostgresServer`). What the table holds is read back with plain
psycopg and compared with a reference computed with pyarrow."""

import datetime
import decimal
import itertools

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from sabot import JobFailed, Stream
from sabot.connectors import ConnectorError
from sabot.connectors.postgres import pg_type
from sabot.errors import GraphValidationError
from sabot.runtime.operators.base import TaskContext, create_operator
from sabot.testing import assert_tables_equal

pytestmark = pytest.mark.timeout(120)


def read_table(dsn, table, columns, order_by):
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(f'SELECT {", ".join(columns)} FROM "{table}" ORDER BY {order_by}').fetchall()
    return [dict(zip(columns, r)) for r in rows]


def sink_op(dsn, table, *, subtask=0, job=None, checkpointing=True, **params):
    operator = {"name": "pg", "operator_id": "pg", "operator_type": "sink", "key_by": None, "function": None,
                "parameters": {"kind": "postgres", "dsn": dsn, "table": table, **params}}
    ctx = TaskContext(job_id=job or f"job-of-{table}", task_id=f"pg-{subtask}", attempt=0, operator=operator, subtask_index=subtask,
                      parallelism=1, max_parallelism=128, checkpointing=checkpointing)
    op = create_operator(ctx)
    op.open()
    return op


def rows(start, stop):
    ids = pa.array(range(start, stop), pa.int64())
    return pa.record_batch([ids, pc.cast(pc.multiply(ids, 3), pa.float64())], names=["id", "v"])


def create(dsn, ddl):
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(ddl)


def test_append_round_trips_every_supported_type(postgres_server, pg_table):
    t = pa.table({
        "i": pa.array([1, None, -(2 ** 63)], pa.int64()),
        "s": pa.array(['plain', 'a "quoted", comma\nnewline', ""], pa.string()),
        "n": pa.array([None, "x", None], pa.string()),
        "f": pa.array([0.1, float("inf"), -1.5e300], pa.float64()),
        "b": pa.array([True, False, None]),
        "d": pa.array([datetime.date(2024, 2, 29), None, datetime.date(1970, 1, 1)]),
        "ts": pa.array([datetime.datetime(2024, 1, 1, 12, 30, 0, 123456), None,
                        datetime.datetime(1999, 12, 31, 23, 59, 59)], pa.timestamp("us")),
        "dec": pa.array([decimal.Decimal("12.34"), decimal.Decimal("-0.01"), None], pa.decimal128(10, 2)),
        "bin": pa.array([b"\x00\xffab", None, b""], pa.binary()),
        "small": pa.array([1, 2, 3], pa.int16()),
        "cat": pa.array(["x", "y", "x"]).dictionary_encode(),
    })
    Stream.from_table(t).to_postgres(postgres_server.dsn, pg_table, create_table=True).run()
    got = read_table(postgres_server.dsn, pg_table, t.column_names, "small")
    expected = t.cast(t.schema.set(10, pa.field("cat", pa.string()))).to_pylist()
    assert got == expected
    with psycopg.connect(postgres_server.dsn) as conn:
        types = dict(conn.execute("SELECT column_name, data_type FROM information_schema.columns "
                                  "WHERE table_name = %s", (pg_table,)).fetchall())
    assert types["i"] == "bigint" and types["dec"] == "numeric" and types["bin"] == "bytea"
    assert types["ts"] == "timestamp without time zone" and types["cat"] == "text"


def test_upsert_holds_the_latest_aggregate_per_key(postgres_server, pg_table):
    n = 20_000
    keys = pa.array([(i * 7919) % 97 for i in range(n)], pa.int64())
    t = pa.table({"key": keys, "value": pa.array([float(i % 13) for i in range(n)])})
    create(postgres_server.dsn, f'CREATE TABLE "{pg_table}" (key bigint PRIMARY KEY, value_count bigint, '
                                'value_sum double precision)')
    (Stream.from_table(t, batch_size=1000).key_by("key").aggregate({"value": ["count", "sum"]}, emit="updates")
     .to_postgres(postgres_server.dsn, pg_table, mode="upsert", batch_rows=3000).run())
    expected = t.group_by("key").aggregate([("value", "count"), ("value", "sum")]).sort_by("key")
    got = pa.Table.from_pylist(read_table(postgres_server.dsn, pg_table, ["key", "value_count", "value_sum"], "key"))
    assert_tables_equal(got, expected.select(["key", "value_count", "value_sum"]), sort_by=["key"],
                        check_types=False)


def test_checkpoint_rows_are_written_once_across_replays_and_restores(postgres_server, pg_table):
    dsn = postgres_server.dsn
    create(dsn, f'CREATE TABLE "{pg_table}" (id bigint, v double precision)')
    count = lambda: read_table(dsn, pg_table, ["id"], "id")  # noqa: E731
    op = sink_op(dsn, pg_table)
    op.process(rows(0, 100), 0)
    s1 = op.snapshot_state(1)
    op.process(rows(100, 250), 0)
    s2 = op.snapshot_state(2)
    op.process(rows(250, 300), 0)  # after the last barrier: never covered
    assert count() == []  # nothing is visible before a checkpoint completes
    op.notify_checkpoint_complete(1)
    assert [r["id"] for r in count()] == list(range(100))
    op.notify_checkpoint_complete(1)  # a duplicate notification writes nothing
    assert len(count()) == 100
    # the worker dies before checkpoint 2's notification: a new attempt restores checkpoint 2
    op.close()
    again = sink_op(dsn, pg_table)
    again.restore_state(None, s2["state"], 2)
    assert [r["id"] for r in count()] == list(range(250))
    assert again.skipped_checkpoints == 1 and again.committed_checkpoints == 1  # 1 was already there, 2 written
    # a restore of checkpoint 2 again (a second failure right after): nothing more
    third = sink_op(dsn, pg_table)
    third.restore_state(None, s2["state"], 2)
    third.restore_state(None, s1["state"], 1)
    assert [r["id"] for r in count()] == list(range(250))
    # rows pending for a checkpoint the restore does not cover are dropped (the source replays them)
    fourth = sink_op(dsn, pg_table, job="another-job")
    fourth.restore_state(None, {"job": "other", "pending": s2["state"]["pending"]}, 1)
    with psycopg.connect(dsn) as conn:
        progress = conn.execute("SELECT job, subtask, checkpoint_id, rows FROM sabot_sink_progress "
                                "WHERE job IN ('other', %s)", (op.job,)).fetchall()
    assert sorted(progress) == sorted([("other", 0, 1, 100), (op.job, 0, 1, 100), (op.job, 0, 2, 150)])
    for o in (again, third, fourth):
        o.close()


def test_a_job_restored_from_another_jobs_checkpoint_writes_its_own_checkpoints(postgres_server, pg_table):
    """The restored job numbers its checkpoints from 1 again; the old job's progress rows of
    those numbers must not make it skip them."""
    dsn = postgres_server.dsn
    create(dsn, f'CREATE TABLE "{pg_table}" (id bigint, v double precision)')
    old = sink_op(dsn, pg_table, job=f"first-{pg_table}")
    old.process(rows(0, 100), 0)
    old.snapshot_state(1)
    old.notify_checkpoint_complete(1)
    old.process(rows(100, 200), 0)
    state = old.snapshot_state(2)["state"]  # the first job stops before this notification
    new = sink_op(dsn, pg_table, job=f"second-{pg_table}")
    new.restore_state(None, state, 2)
    new.process(rows(200, 300), 0)
    new.snapshot_state(1)
    new.notify_checkpoint_complete(1)
    assert [r["id"] for r in read_table(dsn, pg_table, ["id"], "id")] == list(range(300))
    assert new.job == old.job and new.progress_job != old.progress_job
    for o in (old, new):
        o.close()


def test_end_of_input_with_checkpoints_waits_for_the_job_to_finish(postgres_server, pg_table):
    dsn = postgres_server.dsn
    create(dsn, f'CREATE TABLE "{pg_table}" (id bigint, v double precision)')
    op = sink_op(dsn, pg_table)
    op.process(rows(0, 10), 0)
    op.finish()
    assert read_table(dsn, pg_table, ["id"], "id") == []
    op.notify_job_finished()
    assert len(read_table(dsn, pg_table, ["id"], "id")) == 10
    op.close()


def test_a_failed_write_fails_the_next_step_and_declines_the_checkpoint(postgres_server, pg_table):
    dsn = postgres_server.dsn
    create(dsn, f'CREATE TABLE "{pg_table}" (id bigint, v double precision CHECK (v < 100))')
    op = sink_op(dsn, pg_table)
    op.process(rows(0, 50), 0)  # v = 3 * id reaches 147: the CHECK refuses the write
    op.snapshot_state(1)
    with pytest.raises(ConnectorError, match=r"writing 50 rows .* for checkpoint 1 failed: CheckViolation"):
        op.notify_checkpoint_complete(1)
    assert op.pending, "rows that were not written stay pending"
    with pytest.raises(ConnectorError, match="an earlier write .* failed"):
        op.snapshot_state(2)
    with pytest.raises(ConnectorError, match="an earlier write .* failed"):
        op.process(rows(50, 60), 0)
    assert read_table(dsn, pg_table, ["id"], "id") == []
    op.close()


def test_clear_errors_for_bad_credentials_missing_server_table_and_types(postgres_server, pg_table):
    dsn = postgres_server.dsn
    with pytest.raises(ConnectorError, match="password authentication failed.*check the user and password") as e:
        sink_op(dsn.replace("password=sabot-test", "password=wrong"), pg_table)
    assert "wrong" not in str(e.value)  # the password is not repeated in the message
    with pytest.raises(ConnectorError, match="cannot connect to PostgreSQL.*check that the server runs"):
        sink_op(f"host=127.0.0.1 port={postgres_server.port + 1} user=postgres connect_timeout=2", pg_table)
    with pytest.raises(ConnectorError, match=f"table '{pg_table}' does not exist.*create_table=True"):
        sink_op(dsn, pg_table)
    create(dsn, f'CREATE TABLE "{pg_table}" (id bigint, v double precision)')
    with pytest.raises(ConnectorError, match="upsert .* needs a key: the table has no primary key"):
        sink_op(dsn, pg_table, mode="upsert")
    op = sink_op(dsn, pg_table)
    with pytest.raises(ConnectorError, match=r"column\(s\) \['extra'\] that table .* lacks"):
        op.process(pa.record_batch([pa.array([1]), pa.array([2])], names=["id", "extra"]), 0)
    op.close()
    with pytest.raises(ConnectorError, match="Arrow type list<item: int64>.*lists and structs to JSON"):
        pg_type(pa.list_(pa.int64()), "tags")
    nested = pa.table({"tags": pa.array([[1]], pa.list_(pa.int64()))})
    with pytest.raises(GraphValidationError, match="'tags' has Arrow type list"):
        Stream.from_table(nested).to_postgres(dsn, pg_table)


def test_a_missing_table_fails_the_job_with_the_reason(postgres_server, pg_table):
    with pytest.raises(JobFailed, match=f"table '{pg_table}' does not exist"):
        Stream.from_table(pa.table({"id": [1]})).to_postgres(postgres_server.dsn, pg_table).run(timeout=30)


def test_source_reads_a_table_split_by_a_column_and_resumes(postgres_server, pg_table):
    dsn = postgres_server.dsn
    create(dsn, f'CREATE TABLE "{pg_table}" (id bigint PRIMARY KEY, name text, amount numeric(12,2), '
                'at timestamptz, flag boolean)')
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"INSERT INTO \"{pg_table}\" SELECT g, 'n' || (g % 10), g / 4.0, "
                     "timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second', g % 3 = 0 "
                     "FROM generate_series(1, 5000) g")
    got = Stream.from_postgres(dsn, table=pg_table, partition_column="id", batch_size=700).parallelism(3) \
        .collect().run().table()
    ids = pa.array(range(1, 5001), pa.int64())
    expected = pa.table({
        "id": ids,
        "name": pc.binary_join_element_wise("n", pc.cast(pc.remainder(ids, 10), pa.string()), ""),
        "amount": pa.array([decimal.Decimal(i) / 4 for i in range(1, 5001)], pa.decimal128(12, 2)),
        "at": pc.add(pa.scalar(datetime.datetime(2024, 1, 1), pa.timestamp("us", tz="UTC")),
                     pc.cast(pc.multiply(ids, 1_000_000), pa.duration("us"))),
        "flag": pc.equal(pc.remainder(ids, 3), 0),
    })
    assert_tables_equal(got, expected, sort_by=["id"])
    # a query, resumed after 1200 rows (ordered by id)
    q = f'SELECT id, name FROM "{pg_table}" WHERE id <= 3000'
    operator = {"name": "src", "operator_id": "src", "operator_type": "source", "key_by": None, "function": None,
                "parameters": {"kind": "postgres", "dsn": dsn, "query": q, "order_by": ["id"], "batch_size": 500,
                               "start_position": 1200}}
    src = create_operator(TaskContext(job_id="j", task_id="s", attempt=0, operator=operator, subtask_index=0,
                                      parallelism=1, max_parallelism=128))
    src.open()
    rest = pa.Table.from_batches(list(src.read()))
    src.close()
    assert rest.column("id").to_pylist() == list(range(1201, 3001))
    assert src.position["splits"]["all"] == {"split": {"id": "all", "ordinal": 0, "group": None, "description": {}},
                                             "position": 3000, "finished": True}
    # split by id: read part at parallelism 2, restore the checkpointed split positions at 3
    params = {"kind": "postgres", "dsn": dsn, "table": pg_table, "columns": ["id"], "partition_column": "id",
              "batch_size": 100}

    def source(i, p):
        op = create_operator(TaskContext(job_id="j", task_id=f"s{i}", attempt=0, operator=dict(operator, parameters=params),
                                         subtask_index=i, parallelism=p, max_parallelism=128))
        op.open()
        return op

    seen, states = [], {}
    for i, k in enumerate((7, 23)):
        op = source(i, 2)
        seen += [v for b in itertools.islice(op.read(), k) for v in b.column("id").to_pylist()]
        states[i] = op.snapshot_state(1)["state"]
        op.close()
    assert 0 < len(seen) < 5000
    for j in range(3):
        op = source(j, 3)
        op.restore_subtask_states(states, 1)
        seen += [v for b in op.read() for v in b.column("id").to_pylist()]
        op.close()
    assert sorted(seen) == list(range(1, 5001))
