"""Type stubs for sabot._core.partition (compiled)."""

from typing import Literal, Sequence, overload

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from sabot.errors import SabotError

NULL_HASH: int
MAX_MAX_PARALLELISM: int
MAX_PARTITIONS: int
DEFAULT_MAX_PARALLELISM: int
STAGED_MIN_ROWS: int
PARALLEL_MIN_ROWS: int
AUTO_MAX_THREADS: int

class KeyColumnError(SabotError, ValueError): ...
class UnsupportedKeyType(SabotError, TypeError): ...

_Key = str | int
_KeyColumns = _Key | Sequence[_Key]
_Data = pa.RecordBatch | pa.Table | pa.Array | pa.ChunkedArray | Sequence[pa.Array | pa.ChunkedArray]
_Assignment = npt.ArrayLike | pa.Array

class HashPlan:
    num_columns: int
    num_rows: int
    def __init__(self, arrays: Sequence[pa.Array], names: Sequence[str] | None = ...) -> None: ...

def hash_columns(data: _Data, key_columns: _KeyColumns | None = ...) -> npt.NDArray[np.uint64]: ...
def key_groups(hashes: npt.ArrayLike | pa.Array, max_parallelism: int) -> npt.NDArray[np.int32]: ...
def key_group(hash_value: int, max_parallelism: int) -> int: ...
def subtask_for_key_group(key_group: int, max_parallelism: int, parallelism: int) -> int: ...
def key_group_range(subtask: int, max_parallelism: int, parallelism: int) -> tuple[int, int]: ...
def default_assignment(max_parallelism: int, parallelism: int) -> npt.NDArray[np.int32]: ...
def partition_ids(
    batch: pa.RecordBatch | pa.Table,
    key_columns: _KeyColumns,
    num_partitions: int | None = ...,
    *,
    assignment: _Assignment | None = ...,
    max_parallelism: int = ...,
) -> tuple[npt.NDArray[np.uint16], npt.NDArray[np.int64]]: ...
def scatter(batch: pa.RecordBatch | pa.Table, pids: npt.NDArray[np.uint16] | npt.NDArray[np.uint8], num_partitions: int) -> list[pa.RecordBatch]: ...
@overload
def repartition(
    batch: pa.RecordBatch | pa.Table,
    key_columns: _KeyColumns,
    num_partitions: int | None = ...,
    *,
    assignment: _Assignment | None = ...,
    max_parallelism: int = ...,
    key_group_counts: Literal[False] = ...,
    num_threads: int | None = ...,
) -> list[pa.RecordBatch]: ...
@overload
def repartition(
    batch: pa.RecordBatch | pa.Table,
    key_columns: _KeyColumns,
    num_partitions: int | None = ...,
    *,
    assignment: _Assignment | None = ...,
    max_parallelism: int = ...,
    key_group_counts: Literal[True],
    num_threads: int | None = ...,
) -> tuple[list[pa.RecordBatch], npt.NDArray[np.int64]]: ...
def split_state_table(
    table: pa.Table | pa.RecordBatch,
    num_partitions: int | None = ...,
    *,
    assignment: _Assignment | None = ...,
    max_parallelism: int = ...,
    key_group_column: str = ...,
) -> list[pa.Table]: ...
