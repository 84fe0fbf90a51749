# Module map of sabot._core.shm: the release words of a shared-memory ring
# (sabot.runtime.shm), stored and loaded with release/acquire ordering.

from libc.stdint cimport uint64_t


cdef class Lease:
    cdef readonly object owner   # keeps both mappings (data and release words) alive
    cdef char* ptr
    cdef readonly Py_ssize_t size
    cdef uint64_t* word          # the region's release word; seq is stored there when freed
    cdef readonly uint64_t seq
