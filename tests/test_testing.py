"""sabot.testing.assert_tables_equal must catch what it claims to catch."""

import pyarrow as pa
import pytest

from sabot.testing import assert_tables_equal


def test_equal_multisets_in_any_order_pass():
    a = pa.table({"k": [1, 2, 2], "v": [0.5, 1.0, 2.0]})
    b = pa.table({"k": [2, 1, 2], "v": [2.0, 0.5, 1.0 + 1e-12]})
    assert_tables_equal(a, b)


@pytest.mark.parametrize("actual,expected,message", [
    (pa.table({"k": [1, 2]}), pa.table({"k": [1, 3]}), "differs at row"),
    (pa.table({"k": [1, 2]}), pa.table({"k": [1, 2, 2]}), "row counts differ"),
    (pa.table({"k": pa.array([1, 2], pa.int32())}), pa.table({"k": [1, 2]}), "types differ"),
    (pa.table({"v": [1.0, None]}), pa.table({"v": [1.0, float("nan")]}), "null in one table only"),
    (pa.table({"v": [1.0, 2.0]}), pa.table({"v": [1.0, 2.1]}), "differs at row 1"),
    (pa.table({"a": [1]}), pa.table({"b": [1]}), "columns differ"),
])
def test_differences_are_reported(actual, expected, message):
    with pytest.raises(AssertionError, match=message):
        assert_tables_equal(actual, expected)
