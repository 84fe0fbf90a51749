"""What users need to test their own Sabot jobs.

Example:
    >>> import pyarrow as pa
    >>> from sabot import Stream
    >>> from sabot.testing import run_stream, assert_tables_equal
    >>> out = run_stream(Stream.from_table(pa.table({"x": [1, 2, 3]})).select("x"))
    >>> assert_tables_equal(out, pa.table({"x": [1, 2, 3]}))
"""

import pyarrow as pa

from sabot.runtime.embedded import JobResult, run_job_graph, run_job_graph_async

__all__ = [
    "JobResult",
    "assert_tables_equal",
    "canonical",
    "run_graph",
    "run_graph_async",
    "run_stream",
    "testing_source",
]


def testing_source(rows_or_table, *, batch_size=None, parallelism=None, name=None):
    """A bounded source from a table, a RecordBatch, or a dict of columns."""
    from sabot.api.stream import Stream

    table = rows_or_table
    if isinstance(table, dict):
        table = pa.table(table)
    kwargs = {"name": name, "parallelism": parallelism}
    if batch_size:
        kwargs["batch_size"] = batch_size
    return Stream.from_table(table, **kwargs)


def run_stream(stream, *, default_parallelism=1, timeout=60):
    """Run ``stream`` in this process, collecting its output, and return the table.

    A stream that already ends in a sink is run as it is and its only collect
    sink's table is returned.
    """
    from sabot.api.stream import StreamSink

    if not isinstance(stream, StreamSink):
        stream = stream.collect()
    return stream.run(default_parallelism=default_parallelism, timeout=timeout).table()


def run_graph(job_graph, *, timeout=60):
    """Run a JobGraph in this process and return its JobResult."""
    return run_job_graph(job_graph, timeout=timeout)


async def run_graph_async(job_graph, *, timeout=60):
    return await run_job_graph_async(job_graph, timeout=timeout)


def canonical(table, sort_by=None):
    """The table's rows in a canonical order (all columns, or ``sort_by``), chunks combined."""
    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    keys = sort_by or table.column_names
    keys = [keys] if isinstance(keys, str) else keys
    sortable = [k for k in keys if not pa.types.is_nested(table.schema.field(k).type)]
    return table.sort_by([(k, "ascending") for k in sortable]).combine_chunks()


def assert_tables_equal(actual, expected, *, sort_by=None, check_order=False, check_types=True, rel_tol=1e-9):
    """Assert two tables hold the same rows (as multisets unless ``check_order``).

    Column names and (with ``check_types``) types must match. Floating-point
    columns are compared with a relative tolerance, since a parallel sum adds in
    a different order than a serial one; a null never equals a NaN.
    """
    if actual.schema.names != expected.schema.names:
        raise AssertionError(f"columns differ: {actual.schema.names} != {expected.schema.names}")
    if check_types and actual.schema.types != expected.schema.types:
        diff = [(n, str(a), str(e)) for n, a, e in zip(expected.schema.names, actual.schema.types,
                                                        expected.schema.types) if a != e]
        raise AssertionError(f"column types differ (name, actual, expected): {diff}")
    if actual.num_rows != expected.num_rows:
        raise AssertionError(f"row counts differ: {actual.num_rows} != {expected.num_rows}")
    if not check_order:
        # exact columns first, so float rounding rarely decides the order
        floats = [n for n in expected.column_names if pa.types.is_floating(expected.schema.field(n).type)]
        order = sort_by or [n for n in expected.column_names if n not in floats] + floats
        actual, expected = canonical(actual, order), canonical(expected, order)
    for name in expected.column_names:
        a, e = actual.column(name), expected.column(name)
        if pa.types.is_floating(e.type):
            import numpy as np

            a_null = a.is_null().to_numpy(zero_copy_only=False)
            e_null = e.is_null().to_numpy(zero_copy_only=False)
            if not np.array_equal(a_null, e_null):
                bad = int(np.argmax(a_null != e_null))
                raise AssertionError(f"column {name!r} differs at row {bad}: null in one table only")
            av = a.fill_null(0.0).to_numpy(zero_copy_only=False).astype("float64")
            ev = e.fill_null(0.0).to_numpy(zero_copy_only=False).astype("float64")
            if not np.allclose(av, ev, rtol=rel_tol, atol=0.0, equal_nan=True):
                bad = int(np.argmax(~np.isclose(av, ev, rtol=rel_tol, atol=0.0, equal_nan=True)))
                raise AssertionError(f"column {name!r} differs at row {bad}: {av[bad]!r} != {ev[bad]!r}")
            continue
        if a.type != e.type:
            a = a.cast(e.type)
        if not a.equals(e):
            al, el = a.to_pylist(), e.to_pylist()
            bad = next((i for i, (x, y) in enumerate(zip(al, el)) if x != y), None)
            if bad is None:
                raise AssertionError(f"column {name!r} differs ({a.type} vs {e.type}) though its values compare equal")
            raise AssertionError(f"column {name!r} differs at row {bad}: {al[bad]!r} != {el[bad]!r}")
