"""The published Nexmark SQL (sabot/nexmark/sql/qN.sql with ddl_gen.sql and ddl_views.sql) run
through sabot.sql, each against the Stream API version (sabot/nexmark/queries.py) and the
independent DuckDB reference (tests/nexmark/reference.py), at parallelism 1 and 2.

The only changes to the texts are the documented dialect differences (README, "Streaming
SQL"): ``${...}`` variables as Nexmark's runner sets them, and q10's file format."""

import os
import sys

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.dataset as ds
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "nexmark"))
import reference  # noqa: E402

from sabot.nexmark import generate_tables, published_sql  # noqa: E402
from sabot.nexmark.queries import QUERIES, build  # noqa: E402
from sabot.runtime.timers import ManualClock  # noqa: E402
from sabot.sql import Session  # noqa: E402
from sabot.testing import assert_tables_equal  # noqa: E402

N = 20_000
CONFIG = {"event_rate": 1_000}
BATCH = 1000
VARIABLES = {"NEXMARK_TABLE": "datagen", "EVENTS_NUM": N, "TPS": CONFIG["event_rate"], "PERSON_PROPORTION": 1,
             "AUCTION_PROPORTION": 3, "BID_PROPORTION": 46}
PLAIN = sorted((q for q in QUERIES if q not in ("q10", "q12")), key=lambda q: int(q[1:]))
FIXED_CLOCK = ManualClock(5_000)


def fixed_clock():
    return FIXED_CLOCK


def script(name):
    return published_sql("ddl_gen") + ";\n" + published_sql("ddl_views") + ";\n" + published_sql(name)


def plan(name, tmp_path=None, settings=None, text=None):
    variables = dict(VARIABLES)
    if tmp_path is not None:  # q10's output and q13's side input file, where Nexmark's runner puts them
        variables.update(FLINK_HOME=str(tmp_path), NEXMARK_DIR=str(tmp_path), SUBMIT_TIME="t")
    session = Session(variables, {"sabot.batch-size": BATCH, **(settings or {})})
    return session.execute(text or script(name))[-1]


def run_sql(name, parallelism, tmp_path=None, settings=None):
    job = plan(name, tmp_path, settings)
    return job.query.collect(name=name).run(default_parallelism=parallelism, timeout=120).table(name)


@pytest.fixture(scope="module")
def tables():
    return generate_tables(N, **CONFIG)


@pytest.fixture(scope="module")
def side_dir(tmp_path_factory):
    """data/side_input.txt as Nexmark's SideInputGenerator writes it (CSV, no header)."""
    root = tmp_path_factory.mktemp("flink_home")
    os.makedirs(root / "data")
    pacsv.write_csv(reference.side_input(), str(root / "data" / "side_input.txt"),
                    write_options=pacsv.WriteOptions(include_header=False))
    return root


@pytest.mark.parametrize("parallelism", [1, 2])
@pytest.mark.parametrize("name", PLAIN)
def test_published_query_matches_stream_api_and_reference(tables, side_dir, name, parallelism):
    got = run_sql(name, parallelism, side_dir)
    expected = reference.QUERIES[name](tables)
    assert got.schema == reference.SCHEMAS[name], name
    assert_tables_equal(got, expected)
    stream_api = build(name, N, batch_size=BATCH, **CONFIG).run(default_parallelism=parallelism,
                                                                timeout=120).table(name)
    assert_tables_equal(got, stream_api)


@pytest.mark.parametrize("parallelism", [1, 2])
def test_q10_partitioned_files(tmp_path, tables, parallelism):
    # dialect difference: the filesystem sink writes Parquet (or Arrow IPC), not CSV
    text = script("q10").replace("'format' = 'csv'", "'format' = 'parquet'")
    job = plan("q10", tmp_path, text=text)
    job.run(default_parallelism=parallelism, timeout=120)
    out = tmp_path / "data" / "output" / "t" / "bid"
    part = ds.partitioning(pa.schema([("dt", pa.string()), ("hm", pa.string())]), flavor="hive")
    got = ds.dataset(str(out), partitioning=part).to_table()
    assert_tables_equal(got.select(reference.SCHEMAS["q10"].names), reference.q10(tables))


@pytest.mark.parametrize("parallelism", [1, 2])
def test_q12_processing_time_windows(tables, parallelism):
    got = run_sql("q12", parallelism)
    reference.check_q12(got, tables)
    still = run_sql("q12", parallelism, settings={"sabot.processing-time.clock": "test_nexmark_sql:fixed_clock"})
    assert_tables_equal(still, reference.q12_with_proctime(tables, [5_000] * tables["bid"].num_rows))


@pytest.mark.parametrize("parallelism", [1, 2])
def test_q11_with_the_session_table_function(tables, parallelism):
    """q11 written with Flink's SESSION window TVF instead of the legacy group window: the same sessions."""
    text = script("q11").replace("""SELECT
    B.bidder,
    count(*) as bid_count,
    SESSION_START(B.`dateTime`, INTERVAL '10' SECOND) as starttime,
    SESSION_END(B.`dateTime`, INTERVAL '10' SECOND) as endtime
FROM bid B
GROUP BY B.bidder, SESSION(B.`dateTime`, INTERVAL '10' SECOND)""", """SELECT bidder, count(*) AS bid_count, window_start AS starttime, window_end AS endtime
FROM TABLE(SESSION(TABLE bid PARTITION BY bidder, DESCRIPTOR(`dateTime`), INTERVAL '10' SECOND))
GROUP BY bidder, window_start, window_end""")
    assert "PARTITION BY bidder" in text
    job = plan("q11", text=text)
    got = job.query.collect(name="q11").run(default_parallelism=parallelism, timeout=120).table("q11")
    assert_tables_equal(got, reference.q11(tables))
