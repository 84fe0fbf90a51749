"""Type stubs for sabot._core.selection (compiled)."""

import pyarrow as pa

def filter_batch_by_mask(batch: pa.RecordBatch, mask: pa.BooleanArray) -> pa.RecordBatch: ...
