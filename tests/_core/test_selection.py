"""The filter kernel (sabot._core.selection) against Arrow's own filter of the same mask."""

import datetime
import decimal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from sabot._core.selection import filter_batch_by_mask


def _batch(n, rng, nulls=False):
    def maybe_null(values, t):
        arr = pa.array(values, type=t)
        if nulls and n:
            return pa.array(values, type=t, mask=rng.random(n) < 0.2)
        return arr

    ints = rng.integers(-(2 ** 40), 2 ** 40, n)
    cols = {
        "i8": maybe_null(rng.integers(-128, 127, n).astype(np.int8), pa.int8()),
        "u16": maybe_null(rng.integers(0, 65535, n).astype(np.uint16), pa.uint16()),
        "i32": maybe_null(rng.integers(-(2 ** 31), 2 ** 31 - 1, n).astype(np.int32), pa.int32()),
        "i64": maybe_null(ints, pa.int64()),
        "u64": pa.array(rng.integers(0, 2 ** 63, n).astype(np.uint64), type=pa.uint64()),
        "f16": pa.array(rng.random(n).astype(np.float16), type=pa.float16()),
        "f32": pa.array(rng.random(n).astype(np.float32), type=pa.float32()),
        "f64": maybe_null(rng.random(n), pa.float64()),
        "date32": pa.array(rng.integers(0, 20000, n).astype(np.int32), type=pa.int32()).cast(pa.date32()),
        "date64": pa.array(rng.integers(0, 2 ** 40, n) // 86400000 * 86400000, type=pa.int64()).cast(pa.date64()),
        "time64": pa.array(rng.integers(0, 86400 * 10 ** 6, n), type=pa.int64()).cast(pa.time64("us")),
        "ts": pa.array(ints, type=pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
        "dur": pa.array(ints, type=pa.int64()).cast(pa.duration("ns")),
        "s": maybe_null([f"v{i}" * (i % 4) for i in range(n)], pa.string()),
        "ls": pa.array([f"w{i}" for i in range(n)], type=pa.large_string()),
        "b": maybe_null(rng.random(n) < 0.5, pa.bool_()),
        "dec": pa.array([decimal.Decimal(int(i) % 1000) / 10 for i in ints], type=pa.decimal128(10, 1)),
        "list": pa.array([[int(i) % 7] * (int(i) % 3) for i in ints], type=pa.list_(pa.int64())),
        "dict": pa.array([f"k{int(i) % 5}" for i in ints]).dictionary_encode(),
        "struct": pa.StructArray.from_arrays([pa.array(ints), pa.array(rng.random(n))], ["a", "b"]),
        "nul": pa.nulls(n),
    }
    schema = pa.schema([pa.field(k, v.type) for k, v in cols.items()], metadata={"origin": "test"})
    return pa.RecordBatch.from_arrays(list(cols.values()), schema=schema)


def _mask(n, rng, selectivity, nulls=False):
    values = rng.random(n) < selectivity
    return pa.array(values, type=pa.bool_(), mask=(rng.random(n) < 0.1) if nulls and n else None)


SIZES = [1, 7, 63, 64, 65, 127, 128, 129, 1000, 4096 + 5]
SELECTIVITIES = [0.0, 0.02, 0.3, 0.5, 0.9, 0.99, 1.0]


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("selectivity", SELECTIVITIES)
def test_same_rows_as_arrow_filter(n, selectivity):
    rng = np.random.default_rng(n * 1000 + int(selectivity * 100))
    batch = _batch(n, rng)
    mask = _mask(n, rng, selectivity)
    expected = batch.filter(mask)
    got = filter_batch_by_mask(batch, mask)
    assert got.schema == batch.schema and got.schema.metadata == batch.schema.metadata
    assert got.equals(expected)


@pytest.mark.parametrize("n", [65, 1000, 4101])
def test_nulls_in_mask_drop_rows_and_null_columns_are_kept(n):
    rng = np.random.default_rng(n)
    batch = _batch(n, rng, nulls=True)
    mask = _mask(n, rng, 0.6, nulls=True)
    expected = batch.filter(mask)  # null_selection_behavior="drop", Arrow's default
    got = filter_batch_by_mask(batch, mask)
    assert got.equals(expected)
    assert got.num_rows == pc.sum(pc.fill_null(mask, False).cast(pa.int64())).as_py()


@pytest.mark.parametrize("batch_offset,mask_offset", [(0, 3), (5, 0), (13, 64), (64, 67), (1, 1)])
def test_sliced_batches_and_masks(batch_offset, mask_offset):
    rng = np.random.default_rng(batch_offset * 100 + mask_offset)
    n = 900
    whole = _batch(n + batch_offset, rng, nulls=True)
    batch = whole.slice(batch_offset, n)
    whole_mask = _mask(n + mask_offset + 11, rng, 0.5, nulls=True)
    mask = whole_mask.slice(mask_offset, n)
    assert mask.offset == mask_offset
    assert filter_batch_by_mask(batch, mask).equals(batch.filter(mask))


def test_mask_bits_past_its_end_are_not_rows():
    # a mask sliced short of its buffer: the bits after it are true, and must not count
    mask = pa.array([True] * 200).slice(10, 70)
    batch = pa.record_batch({"x": pa.array(np.arange(70, dtype=np.int64))})
    assert filter_batch_by_mask(batch, mask) is batch
    sparse = pa.array([i % 3 == 0 for i in range(200)]).slice(1, 70)
    assert filter_batch_by_mask(batch, sparse).equals(batch.filter(sparse))


def test_every_row_is_the_batch_itself_and_none_is_empty():
    batch = pa.record_batch({"x": pa.array([1, 2, 3], type=pa.int64()), "s": ["a", "b", "c"]})
    assert filter_batch_by_mask(batch, pa.array([True, True, True])) is batch
    empty = filter_batch_by_mask(batch, pa.array([False, None, False]))
    assert empty.num_rows == 0 and empty.schema == batch.schema
    zero = batch.slice(0, 0)
    assert filter_batch_by_mask(zero, pa.array([], type=pa.bool_())).num_rows == 0


def test_large_batch_against_numpy():
    # an independent reference for the compacted columns: numpy boolean indexing
    rng = np.random.default_rng(7)
    n = 300_001
    values = rng.integers(0, 2 ** 62, n)
    floats = rng.random(n)
    keep = rng.random(n) < 0.5
    batch = pa.record_batch({"v": values, "f": floats, "i": values.astype(np.int32)})
    got = filter_batch_by_mask(batch, pa.array(keep))
    np.testing.assert_array_equal(got.column("v").to_numpy(), values[keep])
    np.testing.assert_array_equal(got.column("f").to_numpy(), floats[keep])
    np.testing.assert_array_equal(got.column("i").to_numpy(), values.astype(np.int32)[keep])


def test_bad_input_says_what_was_expected():
    batch = pa.record_batch({"x": [1, 2]})
    with pytest.raises(TypeError, match="BooleanArray, got Int64Array of int64"):
        filter_batch_by_mask(batch, pa.array([1, 0]))
    with pytest.raises(TypeError, match="BooleanArray, got list"):
        filter_batch_by_mask(batch, [True, False])
    with pytest.raises(ValueError, match="3 values for a batch of 2 rows"):
        filter_batch_by_mask(batch, pa.array([True, False, True]))
    with pytest.raises(TypeError, match="RecordBatch, got Table"):
        filter_batch_by_mask(pa.table({"x": [1]}), pa.array([True]))


def test_dates_and_times_keep_their_values():
    batch = pa.record_batch({"d": pa.array([datetime.date(2026, 1, i) for i in range(1, 11)])})
    mask = pa.array([i % 2 == 1 for i in range(10)])
    assert filter_batch_by_mask(batch, mask).column("d").to_pylist() == [
        datetime.date(2026, 1, i) for i in range(2, 11, 2)]
