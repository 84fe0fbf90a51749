"""The Flink dialect on sqlglot: every published Nexmark text parses; syntax errors name line and column."""

import pytest
from sqlglot import exp

from sabot.nexmark import QUERIES, published_sql
from sabot.sql.errors import SqlError
from sabot.sql.parser import TableArgument, Watermark, parse


@pytest.mark.parametrize("name", ["ddl_gen", "ddl_views", *QUERIES])
def test_every_published_nexmark_text_parses(name):
    _, statements = parse(published_sql(name), {"NEXMARK_TABLE": "datagen"})
    assert statements and all(isinstance(s, (exp.Create, exp.Insert)) for s in statements)


def test_flink_table_syntax():
    _, [create] = parse("CREATE TABLE t (\n  a BIGINT,\n  r ROW<x INT, y VARCHAR>,\n  ts AS a,\n"
                        "  WATERMARK FOR ts AS ts - INTERVAL '4' SECOND\n) WITH ('connector' = 'print')")
    cols = create.this.expressions
    assert [type(c).__name__ for c in cols] == ["ColumnDef", "ColumnDef", "ColumnDef", "Watermark"]
    assert cols[1].args["kind"].this == exp.DataType.Type.STRUCT
    assert isinstance(cols[3], Watermark) and cols[3].meta["line"] == 5


def test_window_tvf_takes_a_table_argument():
    _, [select] = parse("SELECT * FROM TABLE(HOP(TABLE bid, DESCRIPTOR(ts), INTERVAL '2' SECOND, INTERVAL '10' SECOND))")
    tvf = select.args["from_"].this.this.expressions[0]
    assert tvf.name.upper() == "HOP" and isinstance(tvf.expressions[0], TableArgument)


def test_variables_are_substituted():
    _, [select] = parse("SELECT a FROM ${T}", {"T": "bids"})
    assert select.args["from_"].this.name == "bids"


def test_syntax_error_names_line_and_column():
    with pytest.raises(SqlError) as info:
        parse("SELECT a,\n  b FROM t WHERE (a > 1")
    assert info.value.line == 2 and info.value.col is not None
    assert "line 2" in str(info.value)
