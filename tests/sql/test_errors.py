"""Every error class a SQL user meets names the line and column of the offending token and
what to write instead, and nothing runs or changes when a script has an error."""

import pytest

from sabot.sql import Session, SqlError

BIDS = """CREATE TABLE bids (
  auction BIGINT, bidder BIGINT, price BIGINT, channel VARCHAR, url VARCHAR,
  `dateTime` TIMESTAMP(3), extra VARCHAR,
  WATERMARK FOR `dateTime` AS `dateTime` - INTERVAL '4' SECOND
) WITH ('connector' = 'datagen', 'generator' = 'sabot.nexmark:bids'{rows});
CREATE TABLE out2 (a BIGINT, b BIGINT) WITH ('connector' = 'blackhole');
CREATE TABLE files (a BIGINT, b BIGINT) WITH ('connector' = 'filesystem', 'path' = '/tmp/never', 'format' = 'parquet');
"""


def session(bounded=True):
    s = Session()
    s.execute(BIDS.format(rows=", 'number-of-rows' = '1000'" if bounded else ""))
    return s


def error_of(sql, bounded=True):
    s = session(bounded)
    with pytest.raises(SqlError) as info:
        s.execute(sql)
    return info.value


def test_unknown_column_names_line_column_and_the_columns_there_are():
    e = error_of("INSERT INTO out2\nSELECT auction, pricee FROM bids")
    assert (e.line, e.col) == (2, 17)
    assert "unknown column 'pricee'" in e.message and "price" in e.hint
    assert "line 2, column 17" in str(e) and "^" in str(e)


def test_unknown_table():
    e = error_of("INSERT INTO out2 SELECT a, b FROM bidz")
    assert (e.line, e.col) == (1, 35) and "unknown table 'bidz'" in e.message and "bids" in e.hint


def test_unknown_function():
    e = error_of("INSERT INTO out2\n  SELECT auction, frobnicate(price) FROM bids")
    assert (e.line, e.col) == (2, 19) and "unknown function FROBNICATE" in e.message
    assert "CREATE FUNCTION" in e.hint and "SPLIT_INDEX" in e.hint


def test_type_mismatch_in_an_expression():
    e = error_of("INSERT INTO out2 SELECT auction, price + channel FROM bids")
    assert e.line == 1 and e.col == 34 and "type mismatch" in e.message and "CAST" in e.hint


def test_type_mismatch_against_the_sink_column():
    e = error_of("INSERT INTO out2 SELECT auction, channel FROM bids")
    assert e.line == 1 and e.col == 34 and "column 'b' is int64" in e.message and "CAST" in e.hint


def test_unbounded_regular_join_without_retention():
    sql = "INSERT INTO out2\nSELECT a.auction, b.price FROM bids a\nJOIN bids b ON a.auction = b.auction"
    e = error_of(sql, bounded=False)
    assert e.line == 3 and "keeps every row for ever" in e.message
    assert "table.exec.state.ttl" in e.hint and "interval join" in e.hint
    # with a retention it plans
    s = session(bounded=False)
    s.execute("SET 'table.exec.state.ttl' = '1 min'")
    [job] = s.execute(sql)
    join = [n for n in job.to_job_graph().operators.values() if n.operator_type.value == "join"][0]
    assert join.parameters["ttl"] == 60_000


def test_unsupported_constructs_say_what_is_supported():
    e = error_of("INSERT INTO out2 SELECT auction, price FROM bids ORDER BY price")
    assert "ORDER BY is not supported" in e.message and "ROW_NUMBER" in e.hint and e.line == 1
    e = error_of("INSERT INTO out2 SELECT * FROM (SELECT auction, ROW_NUMBER() OVER (PARTITION BY auction "
                 "ORDER BY price) AS rn FROM bids)")
    assert "WHERE rn <= N" in e.message and e.col is not None
    e = error_of("INSERT INTO out2 SELECT bidder, count(*) FROM TABLE(SESSION(TABLE bids, DESCRIPTOR(`dateTime`), "
                 "INTERVAL '1' SECOND)) GROUP BY bidder, window_start, window_end")
    assert "SESSION needs TABLE t PARTITION BY key" in e.message and "PARTITION BY k" in e.hint
    e = error_of("INSERT INTO out2 SELECT auction, count(*) OVER (PARTITION BY auction) FROM bids")
    assert "OVER windows other than ROW_NUMBER()" in e.message and "Top-N" in e.hint


def test_updating_result_into_an_append_only_sink_is_refused():
    e = error_of("INSERT INTO files SELECT auction, count(*) FROM bids GROUP BY auction", bounded=False)
    assert "updating" in e.message and "append-only" in e.message and "TUMBLE" in e.hint
    assert e.line == 1


def test_syntax_error():
    e = error_of("INSERT INTO out2 SELECT auction, price FROM bids WHERE (price > 1")
    assert e.line == 1 and e.col is not None and "syntax error" in e.message


def test_nothing_half_done_when_a_later_statement_fails():
    s = session()
    with pytest.raises(SqlError):
        s.execute("CREATE VIEW v AS SELECT auction FROM bids;\nINSERT INTO out2 SELECT nope, 1 FROM bids")
    assert "v" not in s.catalog.views  # the view of the failed script was not kept
    [job] = s.execute("INSERT INTO out2 SELECT auction, price FROM bids")
    assert job.table.name == "out2"


def test_what_does_not_retract_over_an_updating_result_is_refused():
    """COUNT/SUM/AVG and regular inner joins over an updating result retract
    (tests/sql/test_changelog.py); MIN, MAX and COUNT(DISTINCT) would need each key's multiset of
    values, outer / interval / window joins and windows do not apply retractions: each is refused
    at its token."""
    inner = "(SELECT auction, count(*) AS n, max(price) AS mp FROM bids GROUP BY auction)"
    e = error_of(f"INSERT INTO out2\nSELECT n, max(mp) FROM {inner} GROUP BY n", bounded=False)
    assert "MAX(...) over an updating result" in e.message and (e.line, e.col) == (2, 11)
    assert "COUNT(*), COUNT(x), SUM(x) and AVG(x) retract" in e.hint
    e = error_of(f"INSERT INTO out2\nSELECT n, count(DISTINCT mp) FROM {inner} GROUP BY n", bounded=False)
    assert "COUNT(DISTINCT ...) over an updating result" in e.message and e.line == 2
    e = error_of(f"INSERT INTO out2\nSELECT a.n, b.n FROM {inner} a LEFT JOIN {inner} b ON a.auction = b.auction",
                 bounded=False)
    assert "an outer join over an updating result" in e.message and e.line == 2 and "TUMBLE" in e.hint
    # the nested aggregation itself plans (over a bounded input the inner result is final)
    sql = f"INSERT INTO out2\nSELECT n, count(*) FROM {inner} GROUP BY n"
    [job] = session(bounded=False).execute(sql)  # out2 is a blackhole: it takes a changelog
    assert job.updating
    [job] = session(bounded=True).execute(sql)
    assert job.table.name == "out2" and not job.updating


def test_union_all_of_different_types_is_a_type_mismatch():
    e = error_of("INSERT INTO out2 SELECT auction, price FROM bids UNION ALL SELECT auction, channel FROM bids")
    assert "type mismatch in UNION ALL" in e.message and "'price'" in e.message and "CAST" in e.hint


def test_an_error_inside_explain_names_its_place_in_the_script():
    e = error_of("SELECT 1 FROM bids;\nEXPLAIN INSERT INTO out2\n  SELECT auction, nope FROM bids")
    assert (e.line, e.col) == (3, 19) and "unknown column 'nope'" in e.message


def test_the_row_kind_column_name_is_reserved():
    e = error_of("CREATE TABLE x (a BIGINT,\n  `$op` TINYINT) WITH ('connector' = 'blackhole')")
    assert "'$op' is reserved" in e.message and e.line == 2
