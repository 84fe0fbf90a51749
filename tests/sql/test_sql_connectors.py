"""Kafka and PostgreSQL as SQL tables ('connector' = 'kafka' / 'jdbc', Flink's option
names), against librdkafka's mock cluster and a private PostgreSQL server; results
checked against DuckDB over the produced input."""

import json

import duckdb
import psycopg
import pyarrow as pa
import pytest

import sabot
from sabot.sql import SqlError
from sabot.testing import assert_tables_equal

pytestmark = pytest.mark.timeout(120)


def produce_bids(kafka_cluster, topic, n):
    rows = [{"auction": i % 13, "price": (i * 7919) % 1000, "ts": 1_000 * i} for i in range(n)]
    kafka_cluster.produce(topic, [json.dumps(r).encode() for r in rows])
    return pa.Table.from_pylist(rows)


def jdbc_url(server):
    return f"jdbc:postgresql://127.0.0.1:{server.port}/postgres"


def test_kafka_to_an_upserting_jdbc_table_equals_duckdb(kafka_cluster, kafka_topic, postgres_server, pg_table):
    topic = kafka_topic("bids")
    bids = produce_bids(kafka_cluster, topic, 5_000)
    with psycopg.connect(postgres_server.dsn, autocommit=True) as conn:
        conn.execute(f'CREATE TABLE "{pg_table}" (auction bigint PRIMARY KEY, n bigint, top bigint)')
    sabot.sql(f"""
        CREATE TABLE bids (auction BIGINT, price BIGINT, ts BIGINT) WITH (
            'connector' = 'kafka', 'topic' = '{topic}',
            'properties.bootstrap.servers' = '{kafka_cluster.bootstrap}',
            'scan.startup.mode' = 'earliest-offset', 'scan.bounded.mode' = 'latest-offset', 'format' = 'json');
        CREATE TABLE per_auction (auction BIGINT, n BIGINT, top BIGINT, PRIMARY KEY (auction) NOT ENFORCED) WITH (
            'connector' = 'jdbc', 'url' = '{jdbc_url(postgres_server)}', 'table-name' = '{pg_table}',
            'username' = 'postgres', 'password' = '{postgres_server.password}');
        INSERT INTO per_auction SELECT auction, COUNT(*), MAX(price) FROM bids GROUP BY auction;
    """)
    with psycopg.connect(postgres_server.dsn) as conn:
        rows = conn.execute(f'SELECT auction, n, top FROM "{pg_table}" ORDER BY auction').fetchall()
    got = pa.Table.from_pylist([{"auction": a, "n": n, "top": t} for a, n, t in rows])
    expected = duckdb.sql("SELECT auction, COUNT(*) AS n, MAX(price) AS top FROM bids GROUP BY auction "
                          "ORDER BY auction").arrow().read_all()
    assert_tables_equal(got, expected)


def test_jdbc_source_to_a_kafka_sink_with_a_key(kafka_cluster, kafka_topic, postgres_server, pg_table):
    out = kafka_topic("out")
    with psycopg.connect(postgres_server.dsn, autocommit=True) as conn:
        conn.execute(f'CREATE TABLE "{pg_table}" (id bigint PRIMARY KEY, name text)')
        conn.execute(f'INSERT INTO "{pg_table}" SELECT g, \'n\' || g FROM generate_series(1, 300) g')
    sabot.sql(f"""
        CREATE TABLE people (id BIGINT, name STRING) WITH (
            'connector' = 'jdbc', 'url' = '{jdbc_url(postgres_server)}', 'table-name' = '{pg_table}',
            'username' = 'postgres', 'password' = '{postgres_server.password}');
        CREATE TABLE shouts (id BIGINT, name STRING) WITH (
            'connector' = 'kafka', 'topic' = '{out}', 'properties.bootstrap.servers' = '{kafka_cluster.bootstrap}',
            'format' = 'json', 'key.fields' = 'id', 'sink.delivery-guarantee' = 'at-least-once');
        INSERT INTO shouts SELECT id, UPPER(name) FROM people WHERE id % 3 = 0;
    """)
    records = kafka_cluster.read(out)
    got = sorted((json.loads(v)["id"], json.loads(v)["name"], k) for _, _, k, v, _ in records)
    assert got == [(i, f"N{i}", str(i).encode()) for i in range(3, 301, 3)]


def test_an_updating_result_needs_a_primary_key_and_bad_options_say_why(postgres_server, pg_table):
    ddl = f"""
        CREATE TABLE gen (key BIGINT, value DOUBLE, ts BIGINT) WITH ('connector' = 'datagen',
            'generator' = 'sabot.runtime.generators:keyed_records');
        CREATE TABLE sink (k BIGINT, n BIGINT) WITH ('connector' = 'jdbc', 'url' = '{jdbc_url(postgres_server)}',
            'table-name' = '{pg_table}');
    """
    with pytest.raises(SqlError, match="append-only") as err:
        sabot.sql(ddl + "INSERT INTO sink SELECT key, COUNT(*) FROM gen GROUP BY key;", run=False)
    assert "PRIMARY KEY" in str(err.value)
    with pytest.raises(SqlError, match="not a PostgreSQL JDBC URL"):
        sabot.sql("CREATE TABLE s (k BIGINT) WITH ('connector' = 'jdbc', 'url' = 'jdbc:mysql://x/db', "
                  "'table-name' = 't'); CREATE TABLE g (key BIGINT) WITH ('connector' = 'datagen', "
                  "'generator' = 'sabot.runtime.generators:keyed_records', 'number-of-rows' = '10');"
                  "INSERT INTO s SELECT key FROM g;", run=False)
    with pytest.raises(SqlError, match="PRIMARY KEY \\['nope'\\]"):
        sabot.sql("CREATE TABLE s (k BIGINT, PRIMARY KEY (nope) NOT ENFORCED) WITH ('connector' = 'jdbc');")
    with pytest.raises(SqlError, match="properties.bootstrap.servers"):
        sabot.sql("CREATE TABLE k (a BIGINT) WITH ('connector' = 'kafka', 'topic' = 't'); SELECT a FROM k;")


def test_a_jdbc_table_as_the_side_of_a_lookup_join(postgres_server, pg_table):
    with psycopg.connect(postgres_server.dsn, autocommit=True) as conn:
        conn.execute(f'CREATE TABLE "{pg_table}" (key bigint PRIMARY KEY, label text)')
        conn.execute(f'INSERT INTO "{pg_table}" SELECT g, \'k\' || g FROM generate_series(0, 99999, 2) g')
    out = sabot.sql(f"""
        CREATE TABLE gen (key BIGINT, value DOUBLE, ts BIGINT, p AS PROCTIME()) WITH ('connector' = 'datagen',
            'generator' = 'sabot.runtime.generators:keyed_records', 'number-of-rows' = '2000');
        CREATE TABLE labels (key BIGINT, label STRING) WITH ('connector' = 'jdbc',
            'url' = '{jdbc_url(postgres_server)}', 'table-name' = '{pg_table}',
            'username' = 'postgres', 'password' = '{postgres_server.password}');
        CREATE TABLE out (key BIGINT, label STRING) WITH ('connector' = 'collect');
        INSERT INTO out SELECT g.key, l.label FROM gen AS g JOIN labels FOR SYSTEM_TIME AS OF g.p AS l
            ON g.key = l.key;
    """)
    got = out.table("out")
    from sabot.runtime.generators import keyed_records

    gen = keyed_records(0, 2000)  # the rows the datagen table produced (the same generator, same offsets)
    labels = pa.table({"key": list(range(0, 100_000, 2)), "label": [f"k{k}" for k in range(0, 100_000, 2)]})
    expected = duckdb.sql("SELECT g.key, l.label FROM gen g JOIN labels l ON g.key = l.key").arrow().read_all()
    assert expected.num_rows > 500  # even keys of 100,000: about half the rows match
    assert_tables_equal(got, expected)


def test_source_options_of_the_source_api(tmp_path):
    """'source.monitor-interval' makes a filesystem table a continuous (unbounded) file source,
    also over a directory that is still empty; 'scan.topic-partition-discovery.interval' turns on
    Kafka partition discovery; both are Flink durations, and a bad one says what is expected."""
    import pyarrow.parquet as pq

    empty, files = tmp_path / "empty", tmp_path / "files"
    empty.mkdir()
    files.mkdir()
    pq.write_table(pa.table({"a": pa.array([1, 2], pa.int64()), "t": pa.array([5, 6], pa.int64())}),
                   files / "x.parquet")

    def source_params(script):
        graph = sabot.sql(script, run=False).to_job_graph()
        return next(n.parameters for n in graph.operators.values() if n.operator_type.value == "source")

    out = tmp_path / "out"
    for directory, interval, seconds in ((files, "500 ms", 0.5), (empty, "2 s", 2.0), (files, "1500", 1.5)):
        params = source_params(
            f"CREATE TABLE f (a BIGINT, t BIGINT, WATERMARK FOR t AS t) WITH ('connector' = 'filesystem', "
            f"'path' = '{directory}', 'format' = 'parquet', 'source.monitor-interval' = '{interval}', "
            f"'scan.watermark.idle-timeout' = '300');"
            f"CREATE TABLE o (a BIGINT) WITH ('connector' = 'filesystem', 'path' = '{out}', 'format' = 'parquet');"
            "INSERT INTO o SELECT a FROM f;")
        assert params["monitor_interval_s"] == seconds and params["idle_timeout_ms"] == 300
    with pytest.raises(SqlError, match="'source.monitor-interval' = 'soon' is not a positive duration"):
        source_params(f"CREATE TABLE f (a BIGINT) WITH ('connector' = 'filesystem', 'path' = '{files}', "
                      "'source.monitor-interval' = 'soon'); "
                      f"CREATE TABLE o (a BIGINT) WITH ('connector' = 'filesystem', 'path' = '{out}');"
                      "INSERT INTO o SELECT a FROM f;")
    params = source_params(
        "CREATE TABLE k (a BIGINT) WITH ('connector' = 'kafka', 'topic' = 't', 'properties.bootstrap.servers' = "
        "'localhost:1', 'scan.topic-partition-discovery.interval' = '1 min'); "
        f"CREATE TABLE o (a BIGINT) WITH ('connector' = 'filesystem', 'path' = '{out}', 'format' = 'parquet');"
        "INSERT INTO o SELECT a FROM k;")
    assert params["partition_discovery_interval_ms"] == 60_000
