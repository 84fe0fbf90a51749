"""A CSV file read in units of about ``unit_bytes`` bytes, so that the file source
(:class:`~sabot.runtime.operators.sources.DatasetSource`) can cut one large CSV file into
pieces read by several subtasks, as it cuts an Arrow IPC or Parquet file by its record
batches or row groups.

Unit ``u`` holds the rows that *start* in bytes ``[data_start + u * unit_bytes, data_start +
(u + 1) * unit_bytes)`` of the file, where ``data_start`` is the end of the header line. A row
starts at ``data_start`` or right after a newline: as in pyarrow's own reader with its default
``newlines_in_values=False`` (which the file source uses), a newline always ends a row, so
the units partition the rows whatever ``unit_bytes`` is, and finding a unit's bounds reads a
few bytes around them, not the file before it. (pyarrow refuses a value spanning lines in
a file over one block with that option, "CSV parser got out of sync with chunker"; a unit
that starts inside such a value usually fails to parse, with the wrong number of columns,
but a continuation line with the right number of fields would parse as a row.)

The unit size is part of a piece's description (its position counts units), so a restore
reads the units it was checkpointed with.
"""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.csv as pacsv

__all__ = ["CsvUnits", "UNIT_BYTES"]

UNIT_BYTES = 4 << 20  # about 10-40 ms of parsing: small enough to spread a file, large enough to amortise a call
_COMPRESSED = (".gz", ".bz2", ".lz4", ".zst", ".zstd", ".br")  # pyarrow decompresses by extension: not seekable
_HEADER_LIMIT = 1 << 20  # a header line longer than this: not cut (read whole)
_SCAN = 1 << 16


class CsvUnits:
    """The units of one local, uncompressed CSV file with a header line.

    Use :meth:`of` (None when the file cannot be cut). ``names`` are the header's column
    names; ``size`` the file's bytes when opened.
    """

    def __init__(self, path, unit_bytes, names, data_start, size):
        self.path = path
        self.unit_bytes = unit_bytes
        self.names = names
        self.data_start = data_start
        self.size = size

    @classmethod
    def of(cls, path, unit_bytes=None):
        """The units of ``path`` (of ``unit_bytes``, default :data:`UNIT_BYTES`), or None:
        compressed, empty, or no header line within 1 MiB."""
        if path.lower().endswith(_COMPRESSED):
            return None
        size = os.path.getsize(path)
        head = b""
        with open(path, "rb") as f:
            while True:  # the header line, read in small steps (a file source lists up to 31 files)
                chunk = f.read(_SCAN)
                end = chunk.find(b"\n")
                if end >= 0:
                    end += len(head)
                    head += chunk
                    break
                head += chunk
                if not chunk or len(head) >= _HEADER_LIMIT:
                    return None
        header = head[:end + 1]
        try:
            names = pacsv.read_csv(pa.BufferReader(header)).column_names
        except (pa.ArrowInvalid, ValueError):
            return None
        return cls(path, int(unit_bytes or UNIT_BYTES), names, end + 1, size)

    @property
    def num_units(self) -> int:
        return -(-(self.size - self.data_start) // self.unit_bytes)

    def _row_start(self, f, offset):
        """The first row start at or after ``offset`` (``size`` if none)."""
        if offset <= self.data_start:
            return self.data_start
        if offset >= self.size:
            return self.size
        f.seek(offset - 1)
        position = offset - 1
        while True:
            chunk = f.read(_SCAN)
            if not chunk:
                return self.size
            found = chunk.find(b"\n")
            if found >= 0:
                return min(position + found + 1, self.size)
            position += len(chunk)

    def bounds(self, unit, f=None):
        """Bytes ``[start, end)`` of unit ``unit``'s rows (``start == end``: it has none)."""
        if f is None:
            with open(self.path, "rb") as f:
                return self.bounds(unit, f)
        low = self.data_start + unit * self.unit_bytes
        return self._row_start(f, low), self._row_start(f, low + self.unit_bytes)

    def read(self, unit, schema):
        """Unit ``unit``'s rows as a table of ``schema``'s columns and types (None: no rows)."""
        with open(self.path, "rb") as f:
            start, end = self.bounds(unit, f)
            if start >= end:
                return None
            f.seek(start)
            data = f.read(end - start)
        types = {field.name: field.type for field in schema} if schema is not None else None
        try:
            return pacsv.read_csv(
                pa.BufferReader(data),
                read_options=pacsv.ReadOptions(column_names=self.names),
                convert_options=pacsv.ConvertOptions(column_types=types))
        except pa.ArrowInvalid as exc:
            raise pa.ArrowInvalid(
                f"{self.path}, bytes {start}-{end} (unit {unit} of {self.num_units}): {exc} (a large CSV file is "
                "read in pieces cut at newlines: a quoted value spanning lines cannot be read, as in pyarrow's "
                "reader with newlines_in_values=False)") from exc
