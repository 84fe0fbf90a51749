"""Flink SQL's dialect on sqlglot: the syntax Flink has and Spark's dialect lacks.

sqlglot parses the statements; this module adds what Flink writes differently:

* ``ROW<name TYPE, ...>`` column types (Flink's structs);
* ``WATERMARK FOR col AS expr`` and computed columns ``col AS expr`` in ``CREATE TABLE``;
* the windowing table-valued functions with table arguments:
  ``TABLE(TUMBLE(TABLE bid, DESCRIPTOR(ts), INTERVAL '10' SECOND))`` (and ``HOP``,
  ``CUMULATE``, ``SESSION``), and the legacy group window ``SESSION(ts, gap)``;
* ``${NAME}`` variables, replaced before parsing (as Nexmark's runner does).

Errors carry the line and column of the offending token (:class:`sabot.sql.errors.SqlError`).
"""

from __future__ import annotations

import logging
import re

import sqlglot
from sqlglot import exp
from sqlglot.dialects.spark import Spark
from sqlglot.errors import ParseError, TokenError
from sqlglot.tokens import TokenType

from sabot.sql.errors import SqlError

# sqlglot warns when it falls back to a generic command (EXPLAIN); Sabot reports what it cannot run itself
logging.getLogger("sqlglot").setLevel(logging.ERROR)

WINDOW_TVFS = ("TUMBLE", "HOP", "CUMULATE", "SESSION")


class Watermark(exp.Expression):
    """``WATERMARK FOR this AS expression`` inside ``CREATE TABLE``."""

    arg_types = {"this": True, "expression": True}


class TableArgument(exp.Expression):
    """``TABLE name [PARTITION BY col, ...]`` as an argument of a table-valued function."""

    arg_types = {"this": True, "partition": False}


def _window_tvf(name):
    def parse(self):
        args = []
        while True:
            if self._match(TokenType.TABLE):
                token = self._prev
                table = exp.Table(this=self._parse_id_var(any_token=False))
                partition = None
                if self._match(TokenType.PARTITION_BY) or self._match_text_seq("PARTITION", "BY"):  # a or (a, b)
                    if self._match(TokenType.L_PAREN):
                        partition = self._parse_csv(self._parse_column)
                        self._match_r_paren()
                    else:
                        partition = [self._parse_column()]
                node = TableArgument(this=table, partition=partition)
                node.meta.update(line=token.line, col=token.col, start=token.start, end=token.end)
                args.append(node)
            else:
                args.append(self._parse_lambda())
            if not self._match(TokenType.COMMA):
                break
        return exp.Anonymous(this=name, expressions=args)

    return parse


class Flink(Spark):
    """Spark's dialect (backquoted identifiers, ``FILTER (WHERE ...)``, ``PARTITIONED BY``) plus Flink's syntax."""

    class Tokenizer(Spark.Tokenizer):
        KEYWORDS = {k: v for k, v in Spark.Tokenizer.KEYWORDS.items() if k != "SESSION"}

    class Parser(Spark.Parser):
        # Flink's DATE_FORMAT takes Java patterns: kept as written (sabot.sql.functions reads them)
        FUNCTIONS = {k: v for k, v in Spark.Parser.FUNCTIONS.items() if k not in ("DATE_FORMAT",)}
        FUNCTION_PARSERS = {**Spark.Parser.FUNCTION_PARSERS, **{n: _window_tvf(n) for n in WINDOW_TVFS}}

        def _parse_field_def(self):
            if (self._curr and self._next and self._curr.text.upper() == "WATERMARK"
                    and self._next.text.upper() == "FOR"):
                token = self._curr
                self._advance(2)
                column = self._parse_field(any_token=True)
                if not self._match(TokenType.ALIAS):
                    self.raise_error("Expected AS after WATERMARK FOR <column>")
                node = Watermark(this=column, expression=self._parse_disjunction())
                node.meta.update(line=token.line, col=token.col, start=token.start, end=token.end)
                return node
            return super()._parse_field_def()

        def _parse_types(self, *args, **kwargs):
            if (self._curr and self._next and self._curr.token_type == TokenType.ROW
                    and self._next.token_type == TokenType.LT):
                self._advance(2)
                fields = self._parse_csv(self._parse_struct_types)
                if not self._match(TokenType.GT):
                    self.raise_error("Expected > to end ROW<...>")
                return exp.DataType(this=exp.DataType.Type.STRUCT, expressions=fields, nested=True)
            return super()._parse_types(*args, **kwargs)


_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def substitute(text, variables):
    """Replace ``${NAME}`` with ``variables[NAME]``; unknown names are left as written."""
    if not variables:
        return text
    return _VARIABLE.sub(lambda m: str(variables[m.group(1)]) if m.group(1) in variables else m.group(0), text)


def parse(text, variables=None):
    """The statements of a script, each an sqlglot expression with ``meta`` positions."""
    text = substitute(text, variables)
    try:
        statements = sqlglot.parse(text, dialect=Flink, error_level=sqlglot.ErrorLevel.RAISE)
    except ParseError as exc:
        err = exc.errors[0] if exc.errors else {}
        description = err.get("description") or str(exc)
        raise SqlError(f"syntax error: {description}", text=text, line=err.get("line"), col=err.get("col"),
                       hint="check the statement's syntax against Flink SQL's") from None
    except TokenError as exc:
        raise SqlError(f"syntax error: {exc}", text=text,
                       hint="check quotes and brackets are closed") from None
    out = []
    for statement in statements:
        if statement is None:
            continue
        if isinstance(statement, exp.Command) and statement.name.upper() != "EXPLAIN":
            raise SqlError(f"unsupported statement {statement.sql(dialect=Flink)[:60]!r}", text=text,
                           node=statement, hint=SUPPORTED_STATEMENTS)
        out.append(statement)
    return text, out


SUPPORTED_STATEMENTS = ("supported statements: CREATE TABLE ... WITH (...), CREATE VIEW ... AS SELECT, "
                        "CREATE FUNCTION name AS 'module:function', SET 'key' = 'value', "
                        "INSERT INTO table SELECT ..., SELECT ..., EXPLAIN <statement>")
