"""Updating results as changelogs (+I/-U/+U/-D in column $op): nested aggregations, filters,
UNION ALL and Top-N over them, materialised by collect and by the PostgreSQL upsert sink,
printed as Flink prints them; every final result against DuckDB over the same generated
rows, and every changelog checked to withdraw only rows it added before."""

import duckdb
import psycopg
import pyarrow as pa
import pytest

from sabot.nexmark import bids as bid_rows
from sabot.runtime import changelog as cl
from sabot.sql import Session
from sabot.testing import assert_tables_equal

pytestmark = pytest.mark.timeout(180)

ROWS = 6000
BIDS = f"""CREATE TABLE bids (
  auction BIGINT, bidder BIGINT, price BIGINT, channel VARCHAR, url VARCHAR,
  `dateTime` TIMESTAMP(3), extra VARCHAR,
  WATERMARK FOR `dateTime` AS `dateTime` - INTERVAL '4' SECOND
) WITH ('connector' = 'datagen', 'generator' = 'sabot.nexmark:bids', 'number-of-rows' = '{ROWS}',
        'rows-per-batch' = '250');
"""
# Flink's classic example of a retracting aggregation, with SUM and AVG of the inner result
NESTED = ("SELECT cnt, COUNT(*) AS freq, SUM(total) AS total, AVG(total) AS avg_total FROM "
          "(SELECT auction, COUNT(*) AS cnt, SUM(price) AS total FROM bids GROUP BY auction) GROUP BY cnt")
NESTED_DUCK = ("SELECT cnt, COUNT(*) AS freq, CAST(SUM(total) AS BIGINT) AS total, "
               "CAST(TRUNC(AVG(total)) AS BIGINT) AS avg_total FROM "
               "(SELECT auction, COUNT(*) AS cnt, SUM(price) AS total FROM bids GROUP BY auction) GROUP BY cnt")


@pytest.fixture(scope="module")
def bids():
    return pa.Table.from_batches([bid_rows(0, ROWS)])


def duck(sql, **tables):
    con = duckdb.connect()
    for name, t in tables.items():
        con.register(name, t)
    out = con.sql(sql).arrow()
    return out.read_all() if hasattr(out, "read_all") else out


def updating_session():
    """A bounded input whose GROUP BYs still emit every update, as over an unbounded one."""
    s = Session({}, {"sabot.updating-results": "always"})
    s.execute(BIDS)
    return s


def run_select(sql, parallelism):
    [stream] = updating_session().execute(sql)
    assert cl.OP in stream.schema.names and stream.updating
    result = stream.collect(name="o").run(default_parallelism=parallelism, timeout=120)
    return result.table("o"), result.changelog("o")


def check_changelog(raw, key):
    """Applying the changelog in order, per key: +I only for an absent key, -U/-D withdraw exactly
    the key's present row, +U right after the key's -U. Returns the rows left."""
    present, pending = {}, set()
    values = raw.drop_columns([cl.OP]).to_pylist()
    for kind, row in zip(raw.column(cl.OP).to_pylist(), values):
        k = tuple(row[c] for c in key)
        if kind == cl.INSERT:
            assert k not in present and k not in pending, row
            present[k] = row
        elif kind in (cl.UPDATE_BEFORE, cl.DELETE):
            assert present.get(k) == row, (cl.KIND_NAMES[kind], row, present.get(k))
            del present[k]
            if kind == cl.UPDATE_BEFORE:
                pending.add(k)
        else:
            assert kind == cl.UPDATE_AFTER and k in pending and k not in present, row
            pending.discard(k)
            present[k] = row
    assert not pending, f"-U without its +U for keys {sorted(pending)[:5]}"
    return list(present.values())


@pytest.mark.parametrize("parallelism", [1, 2])
def test_nested_aggregation_retracts_and_equals_duckdb(bids, parallelism):
    got, raw = run_select(NESTED, parallelism)
    expected = duck(NESTED_DUCK, bids=bids)
    assert_tables_equal(got, expected.cast(got.schema))
    left = check_changelog(raw, ["cnt"])
    assert_tables_equal(pa.Table.from_pylist(left, schema=got.schema), expected.cast(got.schema))
    kinds = set(raw.column(cl.OP).to_pylist())
    assert kinds == {cl.INSERT, cl.UPDATE_BEFORE, cl.UPDATE_AFTER, cl.DELETE}, kinds  # groups emptied: -D
    assert raw.num_rows > 3 * got.num_rows


@pytest.mark.parametrize("parallelism", [1, 2])
def test_a_filter_and_having_over_a_changelog(bids, parallelism):
    """WHERE over an updating result applies to -U and +U rows alike (an update may leave the
    result as a lone -U); HAVING filters the retracting aggregate's changelog."""
    sql = ("SELECT cnt, COUNT(*) AS freq FROM (SELECT auction, COUNT(*) AS cnt FROM bids GROUP BY auction) "
           "WHERE cnt % 3 <> 0 GROUP BY cnt HAVING COUNT(*) > 2")
    got, raw = run_select(sql, parallelism)
    expected = duck(sql, bids=bids)
    assert_tables_equal(got, expected.cast(got.schema))
    inner = "SELECT auction, cnt FROM (SELECT auction, COUNT(*) AS cnt FROM bids GROUP BY auction) WHERE cnt > 5"
    got, raw = run_select(inner, parallelism)
    assert_tables_equal(got, duck(inner, bids=bids).cast(got.schema))
    ops = raw.column(cl.OP).to_pylist()
    # cnt passing 5 turns an update into a lone +U: the row was not in the result before
    assert ops.count(cl.UPDATE_AFTER) > ops.count(cl.UPDATE_BEFORE)


def test_union_all_of_a_changelog_and_an_insert_only_stream(bids):
    sql = ("SELECT k, SUM(n) AS n FROM (SELECT channel AS k, COUNT(*) AS n FROM bids GROUP BY channel "
           "UNION ALL SELECT channel AS k, bidder % 2 AS n FROM bids) GROUP BY k")
    got, raw = run_select(sql, 2)
    expected = duck(sql.replace("SUM(n)", "CAST(SUM(n) AS BIGINT)"), bids=bids)
    assert_tables_equal(got, expected.cast(got.schema))
    check_changelog(raw, ["k"])


@pytest.mark.parametrize("parallelism", [1, 2])
def test_top_n_emits_the_rows_entering_and_leaving(bids, parallelism):
    sql = ("SELECT auction, price, rn FROM (SELECT auction, price, ROW_NUMBER() OVER (PARTITION BY auction "
           "ORDER BY price DESC) AS rn FROM bids) WHERE rn <= 3")
    got, raw = run_select(sql, parallelism)
    assert_tables_equal(got, duck(sql, bids=bids).cast(got.schema))
    check_changelog(raw, ["auction", "rn"])
    # ... and a GROUP BY over the Top-N's changelog retracts the rows that left it
    top = ("SELECT auction, SUM(price) AS top3, COUNT(*) AS n FROM (" + sql.replace("auction, price, rn", "*")
           + ") GROUP BY auction")
    got, raw = run_select(top, parallelism)
    assert_tables_equal(got, duck(top, bids=bids).cast(got.schema).select(got.schema.names))
    check_changelog(raw, ["auction"])


def test_print_writes_flinks_row_kinds(bids, capfd):
    s = updating_session()
    [job] = s.execute("CREATE TABLE out (channel STRING, n BIGINT) WITH ('connector' = 'print');\n"
                      "INSERT INTO out SELECT channel, COUNT(*) FROM bids GROUP BY channel")[1:]
    job.run(default_parallelism=1, timeout=120)
    lines = [ln.split("> ", 1)[1] for ln in capfd.readouterr().out.splitlines() if "> " in ln]
    counts = {}
    for line in lines:
        kind, rest = line[:2], line[3:-1]
        assert kind in ("+I", "-U", "+U") and line[2] == "[" and line.endswith("]"), line
        channel, n = rest.split(", ")
        counts[channel] = counts.get(channel, 0) + (1 if kind[0] == "+" else -1) * int(n)
    expected = duck("SELECT channel, COUNT(*) AS n FROM bids GROUP BY channel", bids=bids)
    assert counts == dict(zip(expected["channel"].to_pylist(), expected["n"].to_pylist()))
    assert len(lines) > len(counts) and any(ln.startswith("-U[") for ln in lines)


def test_an_upserting_jdbc_sink_applies_updates_and_deletes(bids, postgres_server, pg_table):
    with psycopg.connect(postgres_server.dsn, autocommit=True) as conn:
        conn.execute(f'CREATE TABLE "{pg_table}" (cnt bigint PRIMARY KEY, freq bigint NOT NULL, total bigint, '
                     'avg_total bigint)')
    s = updating_session()
    url = f"jdbc:postgresql://127.0.0.1:{postgres_server.port}/postgres"
    [job] = s.execute(f"""
        CREATE TABLE hist (cnt BIGINT, freq BIGINT, total BIGINT, avg_total BIGINT,
                           PRIMARY KEY (cnt) NOT ENFORCED)
        WITH ('connector' = 'jdbc', 'url' = '{url}', 'table-name' = '{pg_table}', 'username' = 'postgres',
              'password' = '{postgres_server.password}', 'sink.buffer-flush.max-rows' = '40');
        INSERT INTO hist {NESTED}""")[1:]
    # a row that a -D must remove (no cnt reaches 10_000): the sink deletes by key, it does not truncate
    with psycopg.connect(postgres_server.dsn, autocommit=True) as conn:
        conn.execute(f'INSERT INTO "{pg_table}" VALUES (10000, 1, 1, 1)')
    job.run(default_parallelism=2, timeout=120)
    with psycopg.connect(postgres_server.dsn) as conn:
        rows = conn.execute(f'SELECT cnt, freq, total, avg_total FROM "{pg_table}" WHERE cnt < 10000 '
                            "ORDER BY cnt").fetchall()
        kept = conn.execute(f'SELECT count(*) FROM "{pg_table}" WHERE cnt = 10000').fetchone()[0]
    got = pa.Table.from_pylist([dict(zip(["cnt", "freq", "total", "avg_total"], r)) for r in rows])
    expected = duck(NESTED_DUCK, bids=bids)
    assert_tables_equal(got, expected.cast(got.schema))
    assert kept == 1
    # written every 40 rows, groups emptied on the way were deleted from the table (PostgreSQL counts them)
    import time

    deadline = time.monotonic() + 20
    while True:
        with psycopg.connect(postgres_server.dsn, autocommit=True) as conn:
            deleted = conn.execute("SELECT n_tup_del FROM pg_stat_user_tables WHERE relname = %s",
                                   (pg_table,)).fetchone()[0]
        if deleted or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert deleted > 0


def test_a_global_top_n_changelog_at_parallelism_2(bids):
    """Without PARTITION BY the Top-N runs at parallelism 1 inside a p=2 job; its changelog is
    routed by the rank, so each rank position's rows stay in order (checked per subtask)."""
    sql = ("SELECT price, rn FROM (SELECT price, ROW_NUMBER() OVER (ORDER BY price DESC) AS rn FROM bids) "
           "WHERE rn <= 5")
    got, raw = run_select(sql, 2)
    assert_tables_equal(got, duck(sql, bids=bids).cast(got.schema))
    check_changelog(raw, ["rn"])
    assert cl.UPDATE_BEFORE in raw.column(cl.OP).to_pylist()


@pytest.mark.parametrize("parallelism", [1, 2])
def test_inner_joins_over_changelogs_and_a_group_by_over_the_join(bids, parallelism):
    """A regular inner join applies its inputs' retractions (+I / -D rows out, as Flink's); a
    GROUP BY over the join retracts again: each final table is DuckDB's."""
    both = ("SELECT a.auction, a.n, b.mx FROM (SELECT auction, COUNT(*) AS n FROM bids GROUP BY auction) a "
            "JOIN (SELECT auction, MAX(price) AS mx FROM bids GROUP BY auction) b ON a.auction = b.auction")
    got, raw = run_select(both, parallelism)
    assert_tables_equal(got, duck(both, bids=bids).cast(got.schema))
    assert set(raw.column(cl.OP).to_pylist()) == {cl.INSERT, cl.DELETE}
    one = ("SELECT a.auction, a.n, b.bidder FROM (SELECT auction, COUNT(*) AS n FROM bids GROUP BY auction) a "
           "JOIN bids b ON a.auction = b.auction WHERE b.price > 50000000")
    got, _ = run_select(one, parallelism)
    assert_tables_equal(got, duck(one, bids=bids).cast(got.schema))
    grouped = f"SELECT n, COUNT(*) AS pairs, SUM(bidder) AS s FROM ({one}) GROUP BY n"
    got, raw = run_select(grouped, parallelism)
    expected = duck(grouped.replace("SUM(bidder)", "CAST(SUM(bidder) AS BIGINT)"), bids=bids)
    assert_tables_equal(got, expected.cast(got.schema))
    check_changelog(raw, ["n"])


def test_sabot_sql_dash_f_prints_the_materialised_table(bids, tmp_path, capsys):
    from sabot.cli import main

    script = tmp_path / "nested.sql"
    script.write_text(BIDS + "CREATE TABLE out (cnt BIGINT, freq BIGINT) WITH ('connector' = 'collect');\n"
                      "SET 'sabot.updating-results' = 'always';\n"
                      "INSERT INTO out SELECT cnt, COUNT(*) FROM (SELECT auction, COUNT(*) AS cnt FROM bids "
                      "GROUP BY auction) GROUP BY cnt;\n")
    assert main(["sql", "-f", str(script), "--limit", "1000"]) == 0
    out = capsys.readouterr().out
    expected = duck("SELECT cnt, COUNT(*) AS freq FROM (SELECT auction, COUNT(*) AS cnt FROM bids GROUP BY auction) "
                    "GROUP BY cnt", bids=bids)
    assert f"out: {expected.num_rows} rows" in out and "$op" not in out
    printed = {tuple(int(v) for v in line.split()) for line in out.splitlines()[3:] if line.strip()
               and line.split()[0].isdigit()}
    assert printed == set(zip(expected["cnt"].to_pylist(), expected["freq"].to_pylist()))


def test_retracting_sums_of_decimals_keep_their_type(bids):
    sql = ("SELECT cnt, SUM(d) AS sd, AVG(d) AS ad, COUNT(d) AS c FROM (SELECT auction, COUNT(*) AS cnt, "
           "SUM(0.908 * price) AS d FROM bids GROUP BY auction) GROUP BY cnt")
    got, raw = run_select(sql, 2)
    assert pa.types.is_decimal(got.schema.field("sd").type)
    assert_tables_equal(got, duck(sql, bids=bids).cast(got.schema))
    check_changelog(raw, ["cnt"])
