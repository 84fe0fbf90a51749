"""The 22 Nexmark queries written with the Stream API (sabot/nexmark/queries.py) against the
independent DuckDB reference (reference.py), at parallelism 1 and 2 and two batch sizes."""

import pyarrow as pa
import pyarrow.dataset as ds
import pytest
import reference

from sabot.nexmark import generate_tables
from sabot.nexmark.queries import QUERIES, build
from sabot.runtime.timers import ManualClock
from sabot.testing import assert_tables_equal

N = 20_000
# 1,000 events per second of event time: 20 s of it, so every window kind fires many times
CONFIG = {"event_rate": 1_000}
RUNS = [(1, 1000), (2, 1000), (1, 357), (2, 357)]  # (parallelism, batch size)
PLAIN = sorted((q for q in QUERIES if q not in ("q10", "q12")), key=lambda q: int(q[1:]))
FIXED_CLOCK = ManualClock(5_000)


def fixed_clock():
    return FIXED_CLOCK


@pytest.fixture(scope="module")
def tables():
    return generate_tables(N, **CONFIG)


def test_every_query_but_q6_is_written():
    assert sorted(QUERIES, key=lambda q: int(q[1:])) == [f"q{i}" for i in range(23) if i != 6]


@pytest.mark.parametrize("parallelism,batch_size", RUNS)
@pytest.mark.parametrize("name", PLAIN)
def test_query_matches_the_reference(tables, name, parallelism, batch_size):
    got = build(name, N, batch_size=batch_size, **CONFIG).run(default_parallelism=parallelism, timeout=120).table(name)
    expected = reference.QUERIES[name](tables)
    assert got.schema == reference.SCHEMAS[name], name
    assert_tables_equal(got, expected)


@pytest.mark.parametrize("parallelism,batch_size", RUNS)
def test_q10_partitioned_files(tmp_path, tables, parallelism, batch_size):
    build("q10", N, batch_size=batch_size, path=str(tmp_path / "q10"), **CONFIG).run(
        default_parallelism=parallelism, timeout=120)
    part = ds.partitioning(pa.schema([("dt", pa.string()), ("hm", pa.string())]), flavor="hive")
    got = ds.dataset(str(tmp_path / "q10"), partitioning=part).to_table()
    assert_tables_equal(got.select(reference.SCHEMAS["q10"].names), reference.q10(tables))


@pytest.mark.parametrize("parallelism,batch_size", RUNS)
def test_q12_processing_time_windows(tables, parallelism, batch_size):
    got = build("q12", N, batch_size=batch_size, **CONFIG).run(default_parallelism=parallelism,
                                                               timeout=120).table("q12")
    reference.check_q12(got, tables)  # the wall clock decides the windows: check what cannot vary
    # with a clock that stands still every bid has processing time 5,000 ms
    still = build("q12", N, batch_size=batch_size, clock="test_queries:fixed_clock", **CONFIG).run(
        default_parallelism=parallelism, timeout=120).table("q12")
    expected = reference.q12_with_proctime(tables, [5_000] * tables["bid"].num_rows)
    assert_tables_equal(still, expected)
