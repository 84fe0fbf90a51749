"""Joins of the Stream API: stream-stream (regular, interval, window) and against a table.

Mixed into :class:`sabot.api.stream.Stream`; everything here builds plan nodes, the
runtime operators are in ``sabot/runtime/operators/joins.py`` and ``join.py``.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from sabot.errors import GraphValidationError
from sabot.runtime.changelog import OP, OP_TYPE, is_changelog
from sabot.execution.job_graph import OperatorType
from sabot.execution.operator_spec import (
    JOIN_TYPES,
    check_join_keys,
    encode_expression,
    encode_schema,
    expression_types,
    join_output_names,
    join_output_schema,
)


def _as_list(cols):
    if cols is None:
        return None
    return [cols] if isinstance(cols, str) else list(cols)


def _pair(value, what):
    if value is None or isinstance(value, str):
        return value, value
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return value[0], value[1]
    raise ValueError(f"{what} takes a column name or a (left, right) pair, got {value!r}")


class JoiningMixin:
    """Join methods of :class:`~sabot.api.stream.Stream`."""

    def _join(self, other, kind, on, left_on, right_on, how, where, suffix, name, extra, time_columns=None,
              window_time_type=None):
        left_on = _as_list(left_on or on)
        right_on = _as_list(right_on or on)
        if not left_on or not right_on:
            raise ValueError("a join needs on= (the same key columns on both sides) or left_on= and right_on=")
        if len(left_on) != len(right_on):
            raise ValueError(f"left_on {left_on} and right_on {right_on} must pair up one to one")
        if how not in JOIN_TYPES:
            raise ValueError(f"how must be one of {JOIN_TYPES}, got {how!r}")
        self._check_columns(left_on + ([time_columns[0]] if time_columns else []), f"{kind} join (left)")
        other._check_columns(right_on + ([time_columns[1]] if time_columns else []), f"{kind} join (right)")
        try:
            check_join_keys(self.schema, other.schema, left_on, right_on, f"{kind} join")
        except ValueError as exc:
            raise GraphValidationError(str(exc)) from None
        if other._node is self._node:  # a self-join: the plan needs two edges, so read the right side through an identity
            other = other._then(OperatorType.UNION, None, other.schema)
        # a changelog input (the "$op" column): a regular inner join applies its retractions
        changelog = is_changelog(self.schema) or is_changelog(other.schema)
        if changelog and (kind != "regular" or how != "inner"):
            raise GraphValidationError(
                f"a {kind} {how} join over a changelog (an input with the {OP!r} column) is not supported; a regular "
                "inner join (join(..., how='inner')) applies retractions")
        lschema, rschema = _without_op(self.schema), _without_op(other.schema)
        left_names = list(lschema.names) if lschema is not None else None
        right_names = None
        if lschema is not None and rschema is not None:
            try:
                right_names = join_output_names(left_names, rschema.names, suffix)
            except ValueError as exc:
                raise GraphValidationError(str(exc)) from None
        schema = join_output_schema(lschema, rschema, right_names, how, window_time_type)
        if changelog and schema is not None:
            schema = schema.append(pa.field(OP, OP_TYPE))
        params = {"kind": kind, "how": how, "left": self._node.operator_id, "right": other._node.operator_id,
                  "left_on": left_on, "right_on": right_on, "left_names": left_names, "right_names": right_names,
                  **extra}
        if changelog:
            params["changelog"] = True
        for side, side_schema in (("left", lschema), ("right", rschema)):
            if side_schema is not None:
                params[f"{side}_schema"] = encode_schema(side_schema)
        if where is not None:
            if not isinstance(where, pc.Expression):
                raise TypeError(f"where= takes a pyarrow compute expression, got {type(where).__name__}")
            if schema is not None:
                try:
                    [t] = expression_types(schema, [where])
                except ValueError as exc:
                    raise GraphValidationError(f"{kind} join where=: {exc}") from None
                if t != pa.bool_():
                    raise GraphValidationError(f"{kind} join where={where} is {t}, not a boolean condition")
            params["where"] = encode_expression(where)
        out = self._then(OperatorType.JOIN, name, schema, parameters=params, key_by=left_on, stateful=True,
                         upstreams=[self, other])
        out._node.input_key_by = {self._node.operator_id: left_on, other._node.operator_id: right_on}
        return out

    def _times(self, other, time_column):
        left, right = _pair(time_column, "time_column")
        left = left or self._event_time_column()
        right = right or other._event_time_column()
        if not left or not right:
            raise GraphValidationError("this join needs time_column= (or sources with_watermarks)")
        return left, right

    def join(self, other, on=None, *, left_on=None, right_on=None, how="inner", where=None, ttl=None,
             time_column=None, suffix="_right", name=None):
        """Regular stream-stream join: every pair of rows with equal keys, as they arrive.

        Args:
            other: the right stream.
            on / left_on, right_on: key columns (same types on both sides).
            how: ``"inner"``, ``"left"``, ``"right"`` or ``"full"``. An outer join emits a row
                padded with nulls when it leaves the state unmatched (at its TTL, or at the
                end of the input).
            where: a residual condition over the output columns (SQL's non-equi ``ON`` part).
            ttl: state retention in event time (units of the time columns): a row is
                dropped once the watermark reaches its time + ttl. None: held for ever.
            time_column: the rows' time for ``ttl`` (a name, or a (left, right) pair;
                default: each source's watermark column).
            suffix: appended to right column names the left side has.

        Example:
            >>> auctions.join(persons, left_on="seller", right_on="id")  # doctest: +SKIP
        """
        extra = {}
        times = None
        if ttl is not None:
            if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl <= 0:
                raise ValueError(f"ttl must be a positive integer (event-time units), got {ttl!r}")
            times = self._times(other, time_column)
            extra = {"ttl": ttl, "left_time": times[0], "right_time": times[1]}
        return self._join(other, "regular", on, left_on, right_on, how, where, suffix, name, extra, times)

    def interval_join(self, other, on=None, *, lower, upper, left_on=None, right_on=None, time_column=None,
                      how="inner", where=None, suffix="_right", name=None):
        """Interval join: equal keys and ``left.time BETWEEN right.time + lower AND right.time + upper``.

        Rows are held only while a future row of the other side could match them (the
        watermark bounds that), so state stays small. Outer joins emit an unmatched row
        when it leaves the state.

        Example:
            >>> bids.interval_join(maxima, left_on="price", right_on="maxprice",
            ...                    lower=-10_000, upper=0, time_column=("dateTime", "window_end"))  # doctest: +SKIP
        """
        if lower > upper:
            raise ValueError(f"interval join: lower ({lower}) must be <= upper ({upper})")
        times = self._times(other, time_column)
        extra = {"lower": int(lower), "upper": int(upper), "left_time": times[0], "right_time": times[1]}
        return self._join(other, "interval", on, left_on, right_on, how, where, suffix, name, extra, times)

    def window_join(self, other, on=None, *, size=None, slide=None, time_column=None, window_columns=None,
                    left_on=None, right_on=None, how="inner", where=None, suffix="_right", name=None):
        """Window join: rows of both sides with equal keys in the same window, emitted when the
        window closes (watermark >= end).

        Windows are tumbling (``size``) or sliding (``size``, ``slide``) on the time columns,
        and the output gets ``window_start`` / ``window_end``; or the rows name their window
        (``window_columns``: a (start, end) pair of column names, or a pair of pairs), as
        two window aggregates' outputs do.

        Example:
            >>> persons_w.window_join(auctions_w, left_on="id", right_on="seller",
            ...                       window_columns=("window_start", "window_end"))  # doctest: +SKIP
        """
        extra, times, time_type = {}, None, None
        if window_columns is not None:
            if size is not None or slide is not None:
                raise ValueError("window_join: give size/slide or window_columns, not both")
            wc = list(window_columns)
            left_w, right_w = (wc[0], wc[1]) if isinstance(wc[0], (list, tuple)) else (wc, wc)
            self._check_columns(list(left_w), "window_join")
            other._check_columns(list(right_w), "window_join")
            extra = {"left_window": list(left_w), "right_window": list(right_w)}
        else:
            if size is None:
                raise ValueError("window_join needs size= (and slide=) or window_columns=")
            times = self._times(other, time_column)
            extra = {"size": int(size), "slide": int(slide) if slide else None,
                     "left_time": times[0], "right_time": times[1]}
            if self.schema is not None:
                time_type = self.schema.field(times[0]).type
        return self._join(other, "window", on, left_on, right_on, how, where, suffix, name, extra, times, time_type)

    def join_table(self, table, on, *, right_on=None, how="left", suffix="_right", name=None):
        """Enrich each row with the matching row of a static table (unique keys).

        A table column whose name the stream already has gets ``suffix``.
        """
        on = [on] if isinstance(on, str) else list(on)
        right_on = [right_on] if isinstance(right_on, str) else list(right_on or on)
        self._check_columns(on, "join_table")
        missing = [c for c in right_on if table.schema.get_field_index(c) < 0]
        if missing:
            raise GraphValidationError(
                f"join_table (static table): column(s) {missing} not found; available columns: {table.schema.names}")
        if how not in ("left", "inner"):
            raise ValueError(f"how must be 'left' or 'inner', got {how!r}")
        schema = None
        if self.schema is not None:
            extra = [f for f in table.schema if f.name not in right_on]
            try:
                names = join_output_names(self.schema.names, [f.name for f in extra], suffix)
            except ValueError as exc:
                raise GraphValidationError(f"join_table: {exc}") from None
            schema = pa.schema(list(self.schema) + [f.with_name(n) for f, n in zip(extra, names)])
        params = {"table": self._plan.add_table(table), "on": on, "right_on": right_on, "how": how, "suffix": suffix}
        return self._then(OperatorType.JOIN, name, schema, key_by=self._key_by, parameters=params)


def _without_op(schema):
    """A changelog's schema without its row-kind column (the join holds rows without it)."""
    if schema is None or not is_changelog(schema):
        return schema
    return pa.schema([f for f in schema if f.name != OP])
