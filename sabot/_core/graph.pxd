# cython: language_level=3
"""Contract of the DAG kernel (``sabot._core.graph``).

A directed graph over nodes ``0 .. num_nodes-1`` in CSR form:

* ``indptr``  (int64, ``num_nodes + 1``): out-edges of ``v`` are
  ``indices[indptr[v]:indptr[v+1]]``, in the order the edges were given;
* ``indices`` (int32, ``num_edges``): target node of each out-edge.

Node ids are int32 (so ``num_nodes < 2**31``), edge offsets int64. Every kernel
below runs without the GIL over raw pointers; the Python-facing methods check
arguments and allocate outputs with the GIL held first.
"""

from libc.stdint cimport int32_t, int64_t, uint8_t


cdef class DAG:
    cdef readonly Py_ssize_t num_nodes
    cdef readonly Py_ssize_t num_edges
    # numpy arrays owning the CSR buffers (exposed read-only to Python)
    cdef object _indptr
    cdef object _indices
    cdef object _indeg
    cdef int32_t* indeg_ptr
    cdef int64_t* indptr_ptr
    cdef int32_t* indices_ptr

    cdef int64_t _toposort(self, int32_t* order, int32_t* indeg) noexcept nogil
    cdef int64_t _node_c(self, node, str what) except -1
    cdef object _cycle_from(self, indeg_arr)
    cdef int64_t _find_cycle(self, const int32_t* indeg, uint8_t* color,
                             int32_t* stack, int64_t* cursor, int64_t* start) noexcept nogil
