"""sabot.sql() and `sabot sql -f`: scalar functions and UDFs against Python, windows and joins
of a small script against DuckDB, EXPLAIN, and the CLI in a subprocess."""

import os
import subprocess
import sys

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pytest

import sabot
from sabot.sql import Session, udf
from sabot.testing import assert_tables_equal

ROWS = 3000
BIDS = """CREATE TABLE bids (
  auction BIGINT, bidder BIGINT, price BIGINT, channel VARCHAR, url VARCHAR,
  `dateTime` TIMESTAMP(3), extra VARCHAR,
  WATERMARK FOR `dateTime` AS `dateTime` - INTERVAL '4' SECOND
) WITH ('connector' = 'datagen', 'generator' = 'sabot.nexmark:bids', 'number-of-rows' = '3000');
"""


@pytest.fixture(scope="module")
def bids():
    from sabot.nexmark import bids as gen
    return pa.Table.from_batches([gen(0, ROWS)])


@udf(pa.int64())
def vowels(text):
    """A vectorised UDF: the number of vowels of each string."""
    return pc.add(pc.add(pc.count_substring(text, "a"), pc.count_substring(text, "e")),
                  pc.count_substring(text, "o")).cast(pa.int64())


def test_scalar_functions_and_a_udf_against_python(bids):
    out = sabot.sql(BIDS + """
        CREATE FUNCTION vowels AS 'test_sql_api:vowels';
        SELECT auction, DATE_FORMAT(`dateTime`, 'yyyy/MM/dd HH:mm:ss') AS f, SPLIT_INDEX(url, '/', 9) AS far,
               SPLIT_INDEX(url, '/', 2) AS host, REGEXP_EXTRACT(url, 'channel_id=([^&]*)', 1) AS ch,
               vowels(extra) AS v, CASE WHEN price > 1000 THEN 'hi' ELSE 'lo' END AS band,
               MOD(auction, 7) AS m
        FROM bids WHERE channel IN ('Google', 'Apple', 'channel-1')""").collect(name="o").run().table("o")
    rows = [r for r in bids.to_pylist() if r["channel"] in ("Google", "Apple", "channel-1")]
    assert out.num_rows == len(rows) > 0
    import re
    for r, o in zip(rows, out.to_pylist()):
        parts = r["url"].split("/")
        m = re.search("channel_id=([^&]*)", r["url"])
        assert o == {"auction": r["auction"], "f": r["dateTime"].strftime("%Y/%m/%d %H:%M:%S"),
                     "far": parts[9] if len(parts) > 9 else None, "host": parts[2], "ch": m.group(1) if m else None,
                     "v": sum(r["extra"].count(c) for c in "aeo"), "band": "hi" if r["price"] > 1000 else "lo",
                     "m": r["auction"] % 7}


def test_windows_and_having_against_duckdb(bids):
    got = sabot.sql(BIDS + """
        CREATE TABLE out1 (auction BIGINT, n BIGINT, mx BIGINT, wstart TIMESTAMP(3)) WITH ('connector' = 'collect');
        INSERT INTO out1
        SELECT auction, count(*), max(price) FILTER (WHERE bidder > 1000), window_start
        FROM TABLE(HOP(TABLE bids, DESCRIPTOR(`dateTime`), INTERVAL '1' SECOND, INTERVAL '3' SECOND))
        GROUP BY auction, window_start, window_end HAVING count(*) > 1""", parallelism=2).table("out1")
    expected = duckdb.sql("""
        WITH w AS (SELECT b.*, make_timestamp(((epoch_ms(b.dateTime::TIMESTAMP) // 1000 - r.k) * 1000000)::BIGINT) AS ws
                   FROM bids b, (SELECT range AS k FROM range(3)) r)
        SELECT auction, count(*) AS n, max(price) FILTER (WHERE bidder > 1000) AS mx,
               CAST(ws AS TIMESTAMP_MS) AS wstart
        FROM w GROUP BY auction, ws HAVING count(*) > 1""").arrow().read_all()
    expected = expected.cast(got.schema)
    assert_tables_equal(got, expected)


def test_interval_join_and_explain(bids):
    script = BIDS + """
        CREATE TABLE out2 (a BIGINT, b BIGINT) WITH ('connector' = 'collect');
        INSERT INTO out2 SELECT x.bidder, y.bidder FROM bids x JOIN bids y ON x.auction = y.auction
        WHERE x.`dateTime` BETWEEN y.`dateTime` - INTERVAL '1' SECOND AND y.`dateTime`"""
    job = sabot.sql(script, run=False)
    text = job.explain(2)
    assert "join" in text and "lower=-1000" in text and "upper=0" in text and "hash by ['auction']" in text
    got = job.run(default_parallelism=2).table("out2")
    expected = duckdb.sql("""SELECT x.bidder AS a, y.bidder AS b FROM bids x JOIN bids y ON x.auction = y.auction
        WHERE x.dateTime BETWEEN y.dateTime - INTERVAL 1 SECOND AND y.dateTime""").arrow().read_all()
    assert_tables_equal(got, expected)


def test_session_keeps_tables_across_calls_and_python_udfs(bids):
    s = Session()
    s.execute(BIDS)
    s.create_function("double_it", lambda a: pc.multiply(a, 2), return_type=pa.int64())
    out = sabot.sql("SELECT auction, double_it(price) AS p2 FROM bids WHERE price < 500", session=s)
    got = out.collect(name="o").run().table("o")
    mask = pc.less(bids["price"], 500)
    assert got["p2"].to_pylist() == pc.multiply(bids.filter(mask)["price"], 2).to_pylist()


def test_cli_runs_a_script(tmp_path):
    script = tmp_path / "job.sql"
    script.write_text(BIDS + """
        CREATE TABLE out3 (channel VARCHAR, n BIGINT) WITH ('connector' = 'collect');
        EXPLAIN INSERT INTO out3 SELECT channel, count(*) FROM bids GROUP BY channel;
        INSERT INTO out3 SELECT channel, count(*) FROM bids GROUP BY channel;""")
    env = dict(os.environ, PYTHONPATH=os.path.dirname(__file__))
    done = subprocess.run([sys.executable, "-m", "sabot.cli", "sql", "-f", str(script), "--parallelism", "2",
                           "--limit", "100"], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert "== job 'insert-into-out3' (default parallelism 2) ==" in done.stdout
    assert "out3: " in done.stdout and "rows" in done.stdout
    bad = tmp_path / "bad.sql"
    bad.write_text(BIDS + "INSERT INTO nowhere SELECT 1 FROM bids;")
    done = subprocess.run([sys.executable, "-m", "sabot.cli", "sql", "-f", str(bad)], capture_output=True, text=True,
                          timeout=120, env=env)
    assert done.returncode == 1 and "unknown table 'nowhere'" in done.stderr and "line 6" in done.stderr


def test_interactive_client_reads_statements_from_stdin(tmp_path):
    session_input = (BIDS.replace("'3000'", "'200'") + "SET 'parallelism.default' = '2';\n"
                     "SELECT auction, price * 2 AS p2\n  FROM bids WHERE price > 100;\n"
                     "SELECT nope FROM bids;\nEXPLAIN SELECT auction FROM bids;\nquit\n")
    env = dict(os.environ, SABOT_SQL_HISTORY=str(tmp_path / "history"))
    done = subprocess.run([sys.executable, "-m", "sabot.cli", "sql", "--limit", "5"], input=session_input,
                          capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    from sabot.nexmark import bids as gen

    expected = sum(1 for p in gen(0, 200).column("price").to_pylist() if p > 100)
    assert f"({expected} rows)" in done.stdout
    assert "error: line 1, column 8: unknown column 'nope'" in done.stdout
    assert "== job" in done.stdout and "parallelism=2" in done.stdout


def _duck(sql, **tables):
    con = duckdb.connect()
    for name, t in tables.items():
        con.register(name, t)
    return con.sql(sql).arrow().read_all()


def test_window_top_n_cumulate_left_join_and_union_against_duckdb(bids):
    s = Session()
    s.execute(BIDS)
    # Top-2 auctions by bid count per 2 s tumbling window (ties by auction id)
    top = sabot.sql("""
        SELECT auction, n, window_start FROM (
          SELECT *, ROW_NUMBER() OVER (PARTITION BY window_start, window_end ORDER BY n DESC, auction) AS rn
          FROM (SELECT auction, count(*) AS n, window_start, window_end
                FROM TABLE(TUMBLE(TABLE bids, DESCRIPTOR(`dateTime`), INTERVAL '2' SECOND))
                GROUP BY auction, window_start, window_end))
        WHERE rn <= 2""", session=s).collect(name="o").run(default_parallelism=2).table("o")
    expected = _duck("""
        WITH c AS (SELECT auction, count(*) AS n, time_bucket(INTERVAL 2 SECOND, dateTime::TIMESTAMP) AS ws
                   FROM bids GROUP BY auction, ws),
             r AS (SELECT *, row_number() OVER (PARTITION BY ws ORDER BY n DESC, auction) AS rn FROM c)
        SELECT auction, n, CAST(ws AS TIMESTAMP_MS) AS window_start FROM r WHERE rn <= 2""", bids=bids)
    assert_tables_equal(top, expected.cast(top.schema))
    # CUMULATE: 1 s steps up to 3 s
    cum = sabot.sql("""
        SELECT window_end, count(*) AS n, sum(price) AS total
        FROM TABLE(CUMULATE(TABLE bids, DESCRIPTOR(`dateTime`), INTERVAL '1' SECOND, INTERVAL '3' SECOND))
        GROUP BY window_start, window_end""", session=s).collect(name="o").run().table("o")
    expected = _duck("""
        WITH w AS (SELECT b.*, time_bucket(INTERVAL 3 SECOND, dateTime::TIMESTAMP) AS ws FROM bids b),
             e AS (SELECT ws + INTERVAL (k) SECOND AS we, ws FROM (SELECT DISTINCT ws FROM w), range(1, 4) r(k))
        SELECT CAST(e.we AS TIMESTAMP_MS) AS window_end, count(*) AS n, sum(price) AS total
        FROM e JOIN w ON w.ws = e.ws AND w.dateTime::TIMESTAMP < e.we GROUP BY e.we""", bids=bids)
    assert_tables_equal(cum, expected.cast(cum.schema))
    # LEFT JOIN of bounded inputs, and UNION ALL
    left = sabot.sql("""
        SELECT a.auction, a.price, b.bidder FROM (SELECT * FROM bids WHERE price < 500) a
        LEFT JOIN (SELECT * FROM bids WHERE bidder < 1005) b ON a.auction = b.auction
        UNION ALL SELECT auction, price, bidder FROM bids WHERE price > 5000000""", session=s).collect(
        name="o").run(default_parallelism=2).table("o")
    expected = _duck("""
        SELECT a.auction, a.price, b.bidder FROM (SELECT * FROM bids WHERE price < 500) a
        LEFT JOIN (SELECT * FROM bids WHERE bidder < 1005) b ON a.auction = b.auction
        UNION ALL SELECT auction, price, bidder FROM bids WHERE price > 5000000""", bids=bids)
    assert_tables_equal(left, expected.cast(left.schema))


def test_legacy_group_window_tumble_against_duckdb(bids):
    s = Session()
    s.execute(BIDS)
    got = sabot.sql("""SELECT auction, count(*) AS n, TUMBLE_START(`dateTime`, INTERVAL '1' SECOND) AS ws,
                              TUMBLE_END(`dateTime`, INTERVAL '1' SECOND) AS we
                       FROM bids GROUP BY auction, TUMBLE(`dateTime`, INTERVAL '1' SECOND)""",
                    session=s).collect(name="o").run(default_parallelism=2).table("o")
    expected = _duck("""SELECT auction, count(*) AS n, CAST(time_bucket(INTERVAL 1 SECOND, dateTime::TIMESTAMP) AS
                        TIMESTAMP_MS) AS ws, CAST(time_bucket(INTERVAL 1 SECOND, dateTime::TIMESTAMP) + INTERVAL 1
                        SECOND AS TIMESTAMP_MS) AS we FROM bids GROUP BY ALL""", bids=bids)
    assert_tables_equal(got, expected.cast(got.schema))


def test_client_shows_an_updating_result_as_a_table_replaced_by_key(bids):
    """With 'sabot.updating-results' = 'always' a bounded GROUP BY emits updates as an unbounded one
    does; the client keeps the last row per key: its final table is DuckDB's GROUP BY."""
    session_input = (BIDS.replace("'3000')", "'3000', 'rows-per-batch' = '300')")
                     + "SET 'sabot.updating-results' = 'always';\n"
                     "SELECT channel, count(*) AS n, max(price) AS mx FROM bids GROUP BY channel;\nquit\n")
    done = subprocess.run([sys.executable, "-m", "sabot.cli", "sql", "--limit", "100000"], input=session_input,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    from sabot.cli import format_table

    expected = _duck("SELECT channel, count(*) AS n, max(price) AS mx FROM bids GROUP BY channel ORDER BY channel",
                     bids=bids)
    assert format_table(expected, 100000) in done.stdout
    updates = int(done.stdout.split(" updates")[0].rsplit(", ", 1)[-1])
    assert updates > expected.num_rows  # keys were updated more than once, and replaced
    s = Session({}, {"sabot.updating-results": "always"})
    s.execute(BIDS)
    [stream] = s.execute("SELECT channel, count(*) AS n FROM bids GROUP BY channel")
    assert stream.updating and stream.upsert_keys == ["channel"]


def test_sabot_sql_is_callable_after_a_plain_import_sabot():
    code = ("import sabot; t = sabot.sql(\"CREATE TABLE b (auction BIGINT) WITH ('connector' = 'datagen', "
            "'generator' = 'sabot.nexmark:bids', 'number-of-rows' = '10'); SELECT auction FROM b\")"
            ".collect(name='o').run().table('o'); print(t.num_rows)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "10"
