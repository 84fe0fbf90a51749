"""SQL jobs on a LocalCluster (real worker processes): published Nexmark SQL planned by
sabot.sql, checkpointed every 200 ms, a worker killed with SIGKILL mid-run; the result must
equal the independent reference. And `sabot sql -f --coordinator URL` submits to the cluster."""

import os
import sys

import duckdb
import pyarrow as pa
import pytest

from sabot.cli import main
from sabot.nexmark import bids as bid_rows
from sabot.nexmark import generate_tables, published_sql
from sabot.runtime import changelog
from sabot.runtime.checkpoint_storage import CheckpointStorage
from sabot.sql import Session
from sabot.testing import assert_tables_equal
from tests.conftest import started_local_cluster, wait_until

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "nexmark"))
import reference  # noqa: E402

pytestmark = pytest.mark.timeout(180)

N = 16_000
CONFIG = {"event_rate": 1_000}
VARIABLES = {"NEXMARK_TABLE": "datagen", "EVENTS_NUM": N, "TPS": 1000, "PERSON_PROPORTION": 1,
             "AUCTION_PROPORTION": 3, "BID_PROPORTION": 46}


@pytest.fixture(scope="module")
def tables():
    return generate_tables(N, **CONFIG)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with started_local_cluster(checkpoint_dir=str(tmp_path_factory.mktemp("sql-checkpoints")),
                               restart_slot_wait_s=20) as c:
        yield c


def script(name):
    return published_sql("ddl_gen") + ";\n" + published_sql("ddl_views") + ";\n" + published_sql(name)


@pytest.mark.parametrize("name", ["q5", "q9", "q15", "q19"])
def test_sql_query_survives_kill_9_exactly(cluster, tables, name):
    settings = {"sabot.batch-size": 400, "sabot.nexmark.generator": "nexmark_udfs:slow_events"}
    job = Session(VARIABLES, settings).execute(script(name))[-1]
    graph = job.query.collect(name=name).to_job_graph(name, default_parallelism=2, shippable=True,
                                                      checkpoint_interval_ms=200)
    job_id = cluster.submit(graph)
    wait_until(lambda: (cluster.checkpoints(job_id)["counts"] or {}).get("completed", 0) >= 1, 30,
               "a completed checkpoint")
    info = cluster.job(job_id)
    assert info["state"] == "RUNNING", "the job ended before the kill; slow it down"
    tasks = sorted(info["tasks"], key=lambda t: (t["subtask_index"] != 1, t["operator_name"] == "datagen"))
    cluster.kill_worker(cluster.node_ids.index(tasks[0]["node_id"]))
    cluster.add_worker()
    assert cluster.wait(job_id, 120) == "FINISHED", cluster.job(job_id).get("failure")
    info = cluster.job(job_id)
    assert info["restarts"] >= 1 and info["restored_from"] is not None
    assert_tables_equal(cluster.result(job_id).table(name), reference.QUERIES[name](tables))


def test_cli_submits_sql_to_the_cluster(cluster, tables, tmp_path, monkeypatch, capsys):
    token_file = tmp_path / "token"
    token_file.write_text(cluster.token + "\n")
    token_file.chmod(0o600)
    monkeypatch.setenv("SABOT_TOKEN_FILE", str(token_file))
    sql = tmp_path / "q2.sql"
    sql.write_text(script("q2").replace("'connector' = 'blackhole'", "'connector' = 'collect'"))
    args = ["sql", "-f", str(sql), "--coordinator", cluster.url, "--parallelism", "2"]
    for name, value in VARIABLES.items():
        args += ["--var", f"{name}={value}"]
    assert main(args) == 0
    out = capsys.readouterr().out
    job_id = out.strip().split()[-1]
    assert cluster.wait(job_id, 60) == "FINISHED", cluster.job(job_id).get("failure")
    assert_tables_equal(cluster.result(job_id).table("nexmark_q2"), reference.q2(tables))


def test_a_python_udf_runs_on_the_workers(cluster, tables):
    """q14 calls count_char (a Python UDF): the workers register it when they read the job."""
    job = Session(VARIABLES, {"sabot.batch-size": 1000}).execute(script("q14"))[-1]
    graph = job.query.collect(name="q14").to_job_graph("q14", default_parallelism=2, shippable=True)
    job_id = cluster.submit(graph)
    assert cluster.wait(job_id, 60) == "FINISHED", cluster.job(job_id).get("failure")
    assert_tables_equal(cluster.result(job_id).table("q14"), reference.q14(tables))


@pytest.mark.parametrize("name", ["q17", "q19"])
def test_sql_job_rescales_live(cluster, tables, name):
    """The SQL job's stateful operator (q17's aggregate, q19's Top-N) goes from 2 to 3 subtasks
    while data flows: the same key-group rescale as any Stream API job."""
    settings = {"sabot.batch-size": 400, "sabot.nexmark.generator": "nexmark_udfs:slow_events"}
    job = Session(VARIABLES, settings).execute(script(name))[-1]
    graph = job.query.collect(name=name).to_job_graph(name, default_parallelism=2, shippable=True)
    kind = {"q17": "aggregate", "q19": "top_n"}[name]
    op = next(n for n in graph.operators.values() if n.operator_type.value == kind)
    job_id = cluster.submit(graph)
    client = cluster.client()
    wait_until(lambda: client.job(job_id)["state"] == "RUNNING" and any(
        t["rows_processed"] for t in client.job(job_id)["tasks"] if t["operator_name"] == op.name), 30, "data flowing")
    plan = client.request("POST", f"/jobs/{job_id}/rescale", {"operator_id": op.operator_id, "new_parallelism": 3})
    assert plan["status"] == "rescaling"

    def done():
        detail = client.job(job_id)
        record = next((r for r in detail["rescales"] if r["rescale_id"] == plan["rescale_id"]), None)
        return record is not None and record["state"] != "IN_PROGRESS"

    wait_until(done, 60, "the rescale")
    record = next(r for r in client.job(job_id)["rescales"] if r["rescale_id"] == plan["rescale_id"])
    assert record["state"] == "COMPLETED", record
    assert cluster.wait(job_id, 120) == "FINISHED", cluster.job(job_id).get("failure")
    assert_tables_equal(cluster.result(job_id).table(name), reference.QUERIES[name](tables))


def test_a_retracting_sql_job_survives_kill_9_and_each_checkpoint_is_a_consistent_cut(cluster, tmp_path):
    """Flink's nested aggregation (a GROUP BY over a GROUP BY's changelog) at parallelism 2,
    checkpointed every 200 ms, a worker killed with SIGKILL: the final table equals DuckDB's.
    And every completed checkpoint is a consistent cut: the changelog the collect sink holds
    in it, materialised, equals DuckDB's result over exactly the batches the source had
    emitted in that checkpoint."""
    rows, batch = 12_000, 200
    ddl = f"""CREATE TABLE bids (auction BIGINT, bidder BIGINT, price BIGINT, channel VARCHAR, url VARCHAR,
                                 `dateTime` TIMESTAMP(3), extra VARCHAR)
              WITH ('connector' = 'datagen', 'generator' = 'nexmark_udfs:slow_bids', 'number-of-rows' = '{rows}',
                    'rows-per-batch' = '{batch}');"""
    nested = ("SELECT cnt, COUNT(*) AS freq, SUM(total) AS total FROM (SELECT auction, COUNT(*) AS cnt, "
              "SUM(price) AS total FROM bids GROUP BY auction) GROUP BY cnt")
    duck_sql = nested.replace("SUM(total) AS total FROM (", "CAST(SUM(total) AS BIGINT) AS total FROM (")
    stream = Session({}, {"sabot.updating-results": "always"}).execute(ddl + nested)[-1]
    graph = stream.collect(name="hist").to_job_graph("hist", default_parallelism=2, shippable=True,
                                                     checkpoint_interval_ms=200, checkpoint_dir=str(tmp_path),
                                                     checkpoint_retain=10_000)
    source = next(n for n in graph.operators.values() if n.operator_type.value == "source")
    sink = next(n for n in graph.operators.values() if n.name == "hist")
    job_id = cluster.submit(graph)
    wait_until(lambda: (cluster.checkpoints(job_id)["counts"] or {}).get("completed", 0) >= 2, 30,
               "two completed checkpoints")
    info = cluster.job(job_id)
    assert info["state"] == "RUNNING", "the job ended before the kill; slow it down"
    victim = next(t for t in info["tasks"] if t["operator_name"] == sink.name and t["subtask_index"] == 1)
    cluster.kill_worker(cluster.node_ids.index(victim["node_id"]))
    cluster.add_worker()
    assert cluster.wait(job_id, 150) == "FINISHED", cluster.job(job_id).get("failure")
    assert cluster.job(job_id)["restarts"] >= 1

    def duck(table):
        con = duckdb.connect()
        con.register("bids", table)
        out = con.sql(duck_sql).arrow()
        return out.read_all() if hasattr(out, "read_all") else out

    got = cluster.result(job_id).table("hist")
    assert_tables_equal(got, duck(bid_rows(0, rows)).cast(got.schema))
    storage = CheckpointStorage(str(tmp_path))
    checkpoints = storage.list_completed(job_id)
    assert len(checkpoints) >= 2
    cuts = 0
    for chk in checkpoints:
        positions = storage.read_operator_state(chk, source.operator_id)
        units = []
        for state in positions.values():  # the source's splits: split k holds batches k, k + S, ...
            for entry in state["splits"].values():
                split = entry["split"]["description"]
                units += [split["k"] + j * split["of"] for j in range(entry["position"])]
        sink_states = storage.read_operator_state(chk, sink.operator_id) if chk.operator_handles(sink.operator_id) \
            else {}
        parts = [pa.ipc.open_stream(pa.py_buffer(s["ipc"])).read_all() for s in sink_states.values() if s]
        held = changelog.materialise(pa.concat_tables(parts)) if parts else got.schema.empty_table()
        covered = pa.Table.from_batches([bid_rows(u * batch, batch) for u in sorted(units)]) if units else None
        expected = duck(covered).cast(got.schema) if covered is not None else got.schema.empty_table()
        assert_tables_equal(held, expected)
        cuts += bool(units)
    assert cuts >= 2


def test_a_changelog_into_postgresql_survives_kill_9_exactly(cluster, postgres_server, pg_table):
    """The nested aggregation INSERTed into a jdbc table with a PRIMARY KEY (upserts and deletes by
    key), checkpointed every 200 ms, the worker of a sink subtask killed with SIGKILL: the table
    equals DuckDB's result (the sink's progress table keeps each checkpoint's writes once)."""
    import psycopg

    rows, batch = 12_000, 200
    with psycopg.connect(postgres_server.dsn, autocommit=True) as conn:
        conn.execute(f'CREATE TABLE "{pg_table}" (cnt bigint PRIMARY KEY, freq bigint NOT NULL, total bigint)')
    url = f"jdbc:postgresql://127.0.0.1:{postgres_server.port}/postgres"
    script = f"""
        CREATE TABLE bids (auction BIGINT, bidder BIGINT, price BIGINT, channel VARCHAR, url VARCHAR,
                           `dateTime` TIMESTAMP(3), extra VARCHAR)
        WITH ('connector' = 'datagen', 'generator' = 'nexmark_udfs:slow_bids', 'number-of-rows' = '{rows}',
              'rows-per-batch' = '{batch}');
        CREATE TABLE hist (cnt BIGINT, freq BIGINT, total BIGINT, PRIMARY KEY (cnt) NOT ENFORCED)
        WITH ('connector' = 'jdbc', 'url' = '{url}', 'table-name' = '{pg_table}', 'username' = 'postgres',
              'password' = '{postgres_server.password}');
        INSERT INTO hist SELECT cnt, COUNT(*), SUM(total) FROM (SELECT auction, COUNT(*) AS cnt, SUM(price) AS total
                                                                FROM bids GROUP BY auction) GROUP BY cnt;"""
    job = Session({}, {"sabot.updating-results": "always"}).execute(script)[-1]
    graph = job.to_job_graph("hist-pg", default_parallelism=2, shippable=True, checkpoint_interval_ms=200)
    job_id = cluster.submit(graph)
    wait_until(lambda: (cluster.checkpoints(job_id)["counts"] or {}).get("completed", 0) >= 2, 30,
               "two completed checkpoints")
    info = cluster.job(job_id)
    assert info["state"] == "RUNNING", "the job ended before the kill; slow it down"
    victim = next(t for t in info["tasks"] if t["operator_name"] == "hist" and t["subtask_index"] == 1)
    cluster.kill_worker(cluster.node_ids.index(victim["node_id"]))
    cluster.add_worker()
    assert cluster.wait(job_id, 150) == "FINISHED", cluster.job(job_id).get("failure")
    assert cluster.job(job_id)["restarts"] >= 1
    with psycopg.connect(postgres_server.dsn) as conn:
        got_rows = conn.execute(f'SELECT cnt, freq, total FROM "{pg_table}" ORDER BY cnt').fetchall()
    got = pa.Table.from_pylist([dict(zip(["cnt", "freq", "total"], r)) for r in got_rows])
    con = duckdb.connect()
    con.register("bids", bid_rows(0, rows))
    expected = con.sql("SELECT cnt, COUNT(*) AS freq, CAST(SUM(total) AS BIGINT) AS total FROM (SELECT auction, "
                       "COUNT(*) AS cnt, SUM(price) AS total FROM bids GROUP BY auction) GROUP BY cnt").arrow()
    expected = expected.read_all() if hasattr(expected, "read_all") else expected
    assert_tables_equal(got, expected.cast(got.schema))
