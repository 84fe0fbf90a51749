"""Type stubs for the compiled module sabot._core.state (see state.pyx for the docs)."""

from typing import Iterable, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from sabot.errors import StateInputError as StateInputError, UnsupportedStateType as UnsupportedStateType

AGGREGATE_FUNCTIONS: Tuple[str, ...]

def aggregate_output_name(column: Optional[str], fn: str) -> str: ...


_ArrayLike = Union[pa.Array, pa.ChunkedArray, np.ndarray]
_Values = Union[Mapping[str, _ArrayLike], pa.RecordBatch, pa.Table]
_KeyGroupSelection = Union[
    None, Tuple[int, int], npt.NDArray[np.bool_], Sequence[int], npt.NDArray[np.integer]
]

class KeyedAggregateTable:
    key_type: pa.DataType
    key_name: str
    max_parallelism: int
    aggregates: Tuple[Tuple[Optional[str], str], ...]
    num_keys: int
    def __init__(
        self,
        key_type: pa.DataType,
        aggregates: Iterable[Tuple[Optional[str], str]],
        max_parallelism: int = 128,
        *,
        key_name: str = "key",
        value_types: Optional[Mapping[str, pa.DataType]] = None,
        initial_capacity: int = 1024,
    ) -> None: ...
    def update(
        self,
        keys: _ArrayLike,
        hashes: npt.NDArray[np.uint64],
        key_groups: npt.NDArray[np.integer],
        values: Optional[_Values] = None,
        *,
        return_groups: bool = False,
    ) -> Optional[npt.NDArray[np.int64]]: ...
    def result(self, groups: Optional[npt.ArrayLike] = None) -> pa.Table: ...
    def snapshot(self, key_groups: _KeyGroupSelection = None) -> pa.Table: ...
    def merge(self, snapshot: Union[pa.Table, pa.RecordBatch]) -> None: ...
    def restore(self, snapshot: Union[pa.Table, pa.RecordBatch]) -> None: ...
    def extract(self, key_groups: _KeyGroupSelection) -> pa.Table: ...
    def remove_key_groups(self, key_groups: _KeyGroupSelection) -> int: ...
    def clear(self) -> None: ...
    def reserve(self, n_keys: int) -> None: ...
    def key_group_counts(self) -> npt.NDArray[np.int64]: ...
    @property
    def memory_bytes(self) -> int: ...
    def __len__(self) -> int: ...


def pack_keys(
    columns: Union[Sequence[_ArrayLike], pa.RecordBatch, pa.Table],
) -> pa.LargeBinaryArray: ...
def unpack_keys(
    packed: Union[pa.Array, pa.ChunkedArray], types: Sequence[pa.DataType]
) -> list[pa.Array]: ...
def check_key_types(
    types: Iterable[pa.DataType], names: Optional[Sequence[str]] = None
) -> None: ...
