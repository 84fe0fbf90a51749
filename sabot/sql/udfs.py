"""Functions SQL jobs name by reference, so they ship to workers (a cluster admits this module:
``sabot.runtime.functions.SABOT_MODULES``): the blackhole sink and Sabot's ports of published UDFs."""

import pyarrow as pa
import pyarrow.compute as pc


def discard(batch):
    """The blackhole sink's function: drops every batch."""
    return None


def count_char(text, char):
    """Nexmark's CountChar UDF (``com.github.nexmark.flink.udf.CountChar``): occurrences of
    ``char`` in ``text``, vectorised."""
    chars = pc.unique(char) if isinstance(char, (pa.Array, pa.ChunkedArray)) else pa.array([char.as_py()])
    if len(chars) == 1:
        return pc.count_substring(text, chars[0].as_py()).cast(pa.int64())
    return pa.array([None if t is None else t.count(c) for t, c in zip(text.to_pylist(), char.to_pylist())],
                    pa.int64())


count_char.return_type = pa.int64()
