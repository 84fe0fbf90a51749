"""Type stubs for sabot._core.morsel (compiled)."""

from typing import Any, Callable, Iterable, Sequence, TypeVar

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from sabot.errors import SabotError

T = TypeVar("T")
R = TypeVar("R")

DEFAULT_MORSEL_ROWS: int

class MorselError(SabotError, RuntimeError):
    morsel_index: int
    def __init__(self, message: str, morsel_index: int) -> None: ...

def cut_morsels(batch: pa.RecordBatch | pa.Table, morsel_bytes: int) -> list[pa.RecordBatch]: ...

class MorselScheduler:
    num_threads: int
    def __init__(self, num_threads: int = ...) -> None: ...
    def map(self, fn: Callable[[T], R], morsels: Iterable[T]) -> list[R]: ...
    def hash_columns(
        self, data: Any, key_columns: str | int | Sequence[str | int] | None = ..., morsel_rows: int = ...
    ) -> npt.NDArray[np.uint64]: ...
    def partition_ids(
        self,
        data: pa.RecordBatch | pa.Table,
        key_columns: str | int | Sequence[str | int],
        num_partitions: int | None = ...,
        *,
        assignment: npt.ArrayLike | None = ...,
        max_parallelism: int = ...,
        morsel_rows: int = ...,
    ) -> tuple[npt.NDArray[np.uint16], npt.NDArray[np.int64]]: ...
