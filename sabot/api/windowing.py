"""Windows, session windows, top-N, side outputs and process functions of the Stream API.

Mixed into :class:`sabot.api.stream.Stream`; the runtime operators are in
``sabot/runtime/operators/{window,session,topn,process}.py``.
"""

from __future__ import annotations

import pyarrow as pa

from sabot.errors import GraphValidationError, UnsupportedStateType
from sabot.execution.job_graph import OperatorType
from sabot.execution.operator_spec import (
    RANK_FUNCTIONS,
    check_aggregate_types,
    check_key_fields,
    encode_schema,
    normalise_aggregates,
    normalise_order_by,
    parse_aggregates,
    top_n_output_schema,
    window_output_schema,
)
from sabot.runtime import functions

_PROC_TIME = pa.timestamp("ms")


class WindowingMixin:
    """Window, top-N and process-function methods of :class:`~sabot.api.stream.Stream`."""

    def _windowed(self, operator_type, name, schema, parameters, function=None):
        """A keyed operator, or (no key_by) a global one at parallelism 1."""
        keys = self._key_by
        if keys and self.schema is not None:
            try:
                check_key_fields([self.schema.field(k) for k in keys], f"{operator_type.value} after key_by{tuple(keys)}")
            except UnsupportedStateType as exc:
                raise GraphValidationError(str(exc)) from None
        out = self._then(operator_type, name, schema, key_by=keys, stateful=True, parameters=parameters,
                         function=function)
        if not keys:  # one window (ranking) over everything: one subtask holds it
            out._node.parallelism = 1
            out._node.max_parallelism = 1
        return out

    def _check_aggregates(self, specs, what):
        try:
            parse_aggregates(specs)
        except ValueError as exc:
            raise GraphValidationError(f"{what}: {exc}") from None
        self._check_columns([c for s in specs for c in ([s[0]] if s[0] != "*" else []) +
                             ([s[2]["by"]] if len(s) > 2 and s[2].get("by") else [])], what)
        try:
            check_aggregate_types(self.schema, specs, what)
        except UnsupportedStateType as exc:
            raise GraphValidationError(str(exc)) from None

    def window(self, size=None, aggregates=None, *, slide=None, step=None, time_column=None, window_columns=None,
               time="event", clock=None, name=None):
        """Window aggregates per key (after ``key_by``) or over everything (no ``key_by``: a
        global window, run at parallelism 1).

        Args:
            size: window length in units of the time column (ms for processing time).
            aggregates: as for :meth:`aggregate` (functions, :func:`sabot.agg` with
                ``where=`` / ``by=`` / ``name=``).
            slide: sliding windows every ``slide``.
            step: cumulative windows (Flink's CUMULATE): one ends every ``step``, growing to ``size``.
            time_column: the event-time column (default: the source's watermark column).
            window_columns: ``(start, end)``: each row names its window (e.g. another
                window's output): a second aggregation per window.
            time: ``"event"`` or ``"processing"`` (the task's clock at arrival; windows fire
                when the clock passes their end, even without input).
            clock: processing time's clock: an import reference to a function returning one
                (``sabot.runtime.timers.ManualClock`` in tests; default: the system clock).

        Output: keys, ``window_start``, ``window_end``, then the aggregates. Late records
        (every window of theirs has fired) go to :meth:`late_records`.

        Example:
            >>> bids.key_by("auction").window(10_000, {"*": "count"}, slide=2_000)  # doctest: +SKIP
        """
        if aggregates is None:
            raise ValueError("window needs aggregates")
        specs = normalise_aggregates(aggregates)
        if time not in ("event", "processing"):
            raise ValueError(f"time must be 'event' or 'processing', got {time!r}")
        params = {"aggregates": specs, "time": time}
        if window_columns is not None:
            if size is not None or slide is not None or step is not None:
                raise ValueError("window: give size/slide/step or window_columns, not both")
            window_columns = list(window_columns)
            self._check_columns(window_columns, "window")
            params["window_columns"] = window_columns
            time_type = None if self.schema is None else self.schema.field(window_columns[0]).type
        else:
            if size is None:
                raise ValueError("window needs size= (or window_columns=)")
            params.update({"size": int(size), "slide": int(slide) if slide else None,
                           "step": int(step) if step else None})
            if time == "processing":
                time_type = _PROC_TIME
            else:
                time_column = time_column or self._event_time_column()
                if time_column is None:
                    raise GraphValidationError("window needs time_column= (or a source with_watermarks)")
                self._check_columns([time_column], "window")
                params["time_column"] = time_column
                time_type = None if self.schema is None else self.schema.field(time_column).type
        if clock is not None:
            params["clock"] = functions.reference_of(clock)
        self._check_aggregates(specs, "window")
        schema = None if time_type is None else window_output_schema(self.schema, self._key_by or [], specs, time_type)
        return self._windowed(OperatorType.WINDOW, name, schema, params)

    def session_window(self, gap, aggregates, *, time_column=None, name=None):
        """Session windows per key: records closer than ``gap`` form one session
        ``[first, last + gap)``; sessions merge when a record bridges them.

        Example:
            >>> bids.key_by("bidder").session_window(10_000, {"*": "count"})  # doctest: +SKIP
        """
        specs = normalise_aggregates(aggregates)
        time_column = time_column or self._event_time_column()
        if time_column is None:
            raise GraphValidationError("session_window needs time_column= (or a source with_watermarks)")
        self._check_columns([time_column], "session_window")
        self._check_aggregates(specs, "session_window")
        schema = None
        if self.schema is not None:
            schema = window_output_schema(self.schema, self._key_by or [], specs, self.schema.field(time_column).type)
        params = {"kind": "session", "gap": int(gap), "time_column": time_column, "aggregates": specs}
        return self._windowed(OperatorType.WINDOW, name, schema, params)

    def top_n(self, n, order_by, *, rank="row_number", rank_column=None, emit="final", size=None, slide=None,
              time_column=None, window_columns=None, name=None):
        """The top ``n`` rows per key (after ``key_by``; without it, over everything), or per
        key and window (``size`` / ``slide`` on the time column, or ``window_columns``).

        Args:
            order_by: columns, each a name (ascending) or ``(name, "descending")``; nulls last.
            rank: ``"row_number"`` (ties by arrival, earlier first), ``"rank"`` or ``"dense_rank"``.
            rank_column: name of an output column holding the rank (None: no column).
            emit: ``"final"`` (when the input ends, or per window when it closes) or
                ``"updates"`` (after each batch, the current top rows of the keys it touched).

        Example:
            >>> bids.key_by("auction").top_n(10, [("price", "descending")], rank_column="rank")  # doctest: +SKIP
        """
        order = normalise_order_by(order_by)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"top_n needs a positive integer n, got {n!r}")
        if rank not in RANK_FUNCTIONS:
            raise ValueError(f"rank must be one of {RANK_FUNCTIONS}, got {rank!r}")
        if emit not in ("final", "updates"):
            raise ValueError(f"emit must be 'final' or 'updates', got {emit!r}")
        self._check_columns([c for c, _ in order], "top_n")
        params = {"n": n, "order_by": order, "rank": rank, "rank_column": rank_column, "emit": emit}
        time_type = None
        if window_columns is not None:
            self._check_columns(list(window_columns), "top_n")
            params["window_columns"] = list(window_columns)
        elif size is not None:
            time_column = time_column or self._event_time_column()
            if time_column is None:
                raise GraphValidationError("top_n per window needs time_column= (or a source with_watermarks)")
            self._check_columns([time_column], "top_n")
            params.update({"size": int(size), "slide": int(slide) if slide else None, "time_column": time_column})
            time_type = None if self.schema is None else self.schema.field(time_column).type
        if self.schema is not None and rank_column and rank_column in self.schema.names:
            raise GraphValidationError(f"top_n: rank_column {rank_column!r} is already a column")
        schema = top_n_output_schema(self.schema, rank_column, time_type)
        return self._windowed(OperatorType.TOP_N, name, schema, params)

    def late_records(self, *, name=None):
        """The records the operator this stream comes from dropped as late (its side output
        ``"late"``), with the operator's input columns.

        Example:
            >>> windowed = bids.key_by("auction").window(10_000, {"*": "count"})  # doctest: +SKIP
            >>> windowed.late_records().to_parquet("late/")                       # doctest: +SKIP
        """
        kinds = (OperatorType.WINDOW, OperatorType.JOIN, OperatorType.TOP_N)
        if self._node.operator_type not in kinds:
            raise GraphValidationError(f"late_records: {self._node.name!r} ({self._node.operator_type.value}) has "
                                       "no late side output; windows, window joins and windowed top-N do")
        return self._then(OperatorType.UNION, name or f"{self._node.name}_late", self._input_schema,
                          parameters={"side_output": "late"})

    def process(self, function, *, schema=None, name=None):
        """Run a :class:`sabot.KeyedProcessFunction` over the keyed stream (after ``key_by``).

        ``function`` is the class (or a factory returning an instance), shipped as an import
        reference; one instance runs per subtask. ``schema`` declares its output.
        """
        keys = self._keys("process")
        params = {"schema": encode_schema(schema)} if schema is not None else {}
        out = self._then(OperatorType.PROCESS, name, schema, key_by=keys, stateful=True, parameters=params,
                         function=functions.reference_of(function))
        return out
