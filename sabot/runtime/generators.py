"""Deterministic built-in data generators for generator sources and benchmarks.

Every generator has the signature ``fn(offset, num_rows, **parameters)`` and
returns a ``pyarrow.RecordBatch`` holding global rows ``[offset, offset + num_rows)``.
Row ``r``'s values depend only on ``r`` and the parameters (``seed`` …), never on
how the rows are cut into batches, which process computes them, or what ran
before: each value is a counter-based hash (SplitMix64 finaliser) of the row
number, computed vectorised with numpy. That is what makes a generator source
replayable from an offset.

Example:
    >>> batch = keyed_records(1000, 3, num_keys=10, seed=7)  # doctest: +SKIP
    >>> batch.column("ts").to_pylist()  # doctest: +SKIP
    [1000, 1001, 1002]
"""

import functools
import logging

import numpy as np
import pyarrow as pa

log = logging.getLogger(__name__)

__all__ = ["keyed_records", "zipf_keyed_records", "transactions", "uniform", "MERCHANTS"]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_INV_2_53 = 1.0 / float(1 << 53)

# One independent stream per generated column: the stream id is mixed into the
# counter so that two columns of the same row are uncorrelated.
_STREAM_KEY, _STREAM_VALUE, _STREAM_ACCOUNT, _STREAM_AMOUNT1, _STREAM_AMOUNT2, _STREAM_MERCHANT, _STREAM_FRAUD = range(7)

MERCHANTS = (
    "amazon", "walmart", "target", "costco", "kroger", "walgreens", "cvs", "home_depot",
    "lowes", "best_buy", "starbucks", "mcdonalds", "shell", "exxon", "uber", "lyft",
    "netflix", "spotify", "apple", "steam",
)


def _check(offset, num_rows):
    if isinstance(offset, bool) or not isinstance(offset, (int, np.integer)) or offset < 0:
        raise ValueError(f"offset must be an integer >= 0, got {offset!r}")
    if isinstance(num_rows, bool) or not isinstance(num_rows, (int, np.integer)) or num_rows < 0:
        raise ValueError(f"num_rows must be an integer >= 0, got {num_rows!r}")


def _splitmix(x):
    """SplitMix64 finaliser over a uint64 array (wrapping arithmetic, in place)."""
    x ^= x >> np.uint64(30)
    x *= _M1
    x ^= x >> np.uint64(27)
    x *= _M2
    x ^= x >> np.uint64(31)
    return x


def uniform(offset, num_rows, seed=0, stream=0):
    """Counter-based 64-bit random words for rows ``[offset, offset + num_rows)``.

    Args:
        offset: first global row number.
        num_rows: how many rows.
        seed: any integer; different seeds give independent sequences.
        stream: a small integer selecting an independent sequence (one per column).

    Returns:
        numpy uint64 array; element ``i`` depends only on (seed, stream, offset + i).
    """
    rows = np.arange(offset, offset + num_rows, dtype=np.uint64)
    # Key the counter by (seed, stream) through one splitmix round, so seeds that
    # differ by one do not produce shifted copies of each other.
    salt = _splitmix(np.array([(int(seed) * 0x100000001B3 + stream * 0x9E3779B1) & 0xFFFFFFFFFFFFFFFF],
                              dtype=np.uint64))[0]
    x = rows * _GOLDEN
    x += salt
    return _splitmix(x)


def _unit_float(words):
    """uint64 words -> float64 uniform in [0, 1) (the top 53 bits)."""
    return (words >> np.uint64(11)).astype(np.float64) * _INV_2_53


def _bounded(words, n):
    """uint64 words -> integers in [0, n) by multiply-high (no modulo bias beyond 2**-32)."""
    if n <= 0:
        raise ValueError(f"the number of distinct values must be >= 1, got {n}")
    if n >= 1 << 32:
        return (words % np.uint64(n)).astype(np.int64)
    return (((words >> np.uint64(32)) * np.uint64(n)) >> np.uint64(32)).astype(np.int64)


def keyed_records(offset, num_rows, num_keys=100_000, seed=0):
    """Uniform keyed records: the input of the keyed-count benchmark.

    Args:
        offset: first global row number.
        num_rows: number of rows.
        num_keys: keys are drawn uniformly from ``[0, num_keys)``.
        seed: selects the sequence.

    Returns:
        RecordBatch(key int64, value float64 in [0, 1), ts int64 = row number).
    """
    _check(offset, num_rows)
    key = _bounded(uniform(offset, num_rows, seed, _STREAM_KEY), int(num_keys))
    value = _unit_float(uniform(offset, num_rows, seed, _STREAM_VALUE))
    ts = np.arange(offset, offset + num_rows, dtype=np.int64)
    return pa.RecordBatch.from_arrays(
        [pa.array(key), pa.array(value), pa.array(ts)], names=["key", "value", "ts"]
    )


@functools.lru_cache(maxsize=16)
def _zipf_cdf(num_keys, s):
    ranks = np.arange(1, num_keys + 1, dtype=np.float64)
    weights = ranks ** -float(s)
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]
    cdf[-1] = 1.0
    cdf.setflags(write=False)
    return cdf


def zipf_keyed_records(offset, num_rows, num_keys=100_000, s=1.2, seed=0):
    """Keyed records with Zipf-skewed keys: key ``k`` has weight ``(k + 1) ** -s``.

    Key 0 is the hottest. Same columns and determinism as :func:`keyed_records`
    (keys come from the inverse CDF of a bounded Zipf law over ``[0, num_keys)``).
    """
    _check(offset, num_rows)
    if num_keys < 1:
        raise ValueError(f"num_keys must be >= 1, got {num_keys}")
    if s < 0:
        raise ValueError(f"the Zipf exponent s must be >= 0, got {s}")
    u = _unit_float(uniform(offset, num_rows, seed, _STREAM_KEY))
    key = np.searchsorted(_zipf_cdf(int(num_keys), float(s)), u, side="right").astype(np.int64)
    np.minimum(key, num_keys - 1, out=key)
    value = _unit_float(uniform(offset, num_rows, seed, _STREAM_VALUE))
    ts = np.arange(offset, offset + num_rows, dtype=np.int64)
    return pa.RecordBatch.from_arrays(
        [pa.array(key), pa.array(value), pa.array(ts)], names=["key", "value", "ts"]
    )


def transactions(offset, num_rows, seed=0, num_accounts=10_000, fraud_rate=0.002):
    """Card transactions for the fraud-detection example.

    Amounts are log-normal (median about 33) and a ``fraud_rate`` share of rows is
    an outlier about 40x larger. Event time ``ts`` is the row number, read as
    milliseconds.

    Returns:
        RecordBatch(account_id int64 in [0, num_accounts), amount float64 (cents
        rounded), merchant string (one of :data:`MERCHANTS`), ts int64).
    """
    _check(offset, num_rows)
    if not 0.0 <= fraud_rate <= 1.0:
        raise ValueError(f"fraud_rate must be in [0, 1], got {fraud_rate}")
    account = _bounded(uniform(offset, num_rows, seed, _STREAM_ACCOUNT), int(num_accounts))
    # Box-Muller from two independent uniforms; 1 - u keeps log() away from 0.
    u1 = 1.0 - _unit_float(uniform(offset, num_rows, seed, _STREAM_AMOUNT1))
    u2 = _unit_float(uniform(offset, num_rows, seed, _STREAM_AMOUNT2))
    normal = np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)
    amount = np.exp(3.5 + 1.0 * normal)
    fraud = _unit_float(uniform(offset, num_rows, seed, _STREAM_FRAUD)) < fraud_rate
    amount[fraud] *= 40.0
    amount = np.round(amount, 2)
    merchant_index = _bounded(uniform(offset, num_rows, seed, _STREAM_MERCHANT), len(MERCHANTS))
    merchant = pa.array(MERCHANTS, type=pa.string()).take(pa.array(merchant_index))
    ts = np.arange(offset, offset + num_rows, dtype=np.int64)
    return pa.RecordBatch.from_arrays(
        [pa.array(account), pa.array(amount), merchant, pa.array(ts)],
        names=["account_id", "amount", "merchant", "ts"],
    )
