# cython: language_level=3
"""DAG kernel: CSR construction, Kahn topological order, cycle extraction, regions.

The logical plan (``sabot.execution.job_graph``) and the physical plan
(``sabot.execution.execution_graph``) map operator ids to ints and call in here, so
that validation and ordering stay linear and GIL-free even for graphs of millions
of nodes (generated plans, fine-grained task graphs).

Inputs are edge arrays ``src``, ``dst`` (numpy or pyarrow, any integer type, no
nulls) and ``num_nodes``. Arguments are checked with the GIL held; the kernels then
run entirely ``with nogil:`` over pointers into numpy buffers.

Example::

    >>> import numpy as np
    >>> from sabot._core.graph import DAG
    >>> g = DAG(np.array([0, 0, 1]), np.array([1, 2, 2]), 3)
    >>> g.topological_order().tolist()
    [0, 1, 2]
"""

import logging

import numpy as np

cimport cython
from libc.stdint cimport int32_t, int64_t, uint8_t
from libc.string cimport memcpy, memset

from sabot.errors import CycleError

log = logging.getLogger(__name__)

#: Largest number of nodes (node ids are int32).
MAX_NODES = 2**31 - 1
#: Largest number of edges (in-degrees are counted in int32).
MAX_EDGES = 2**31 - 1

cdef extern from *:
    """
    #if defined(__GNUC__) || defined(__clang__)
    #define SABOT_PREFETCH(p) __builtin_prefetch((const void*)(p))
    #else
    #define SABOT_PREFETCH(p) ((void)0)
    #endif
    """
    void SABOT_PREFETCH(const void* p) noexcept nogil

# How far ahead the random-access loops prefetch (edges / queued nodes).
DEF EDGE_AHEAD = 16
DEF NODE_AHEAD = 8

ctypedef fused idx_t:
    int32_t
    int64_t


# ----------------------------------------------------------------------------------
# argument handling (GIL held)
# ----------------------------------------------------------------------------------

def _as_index_array(obj, str name):
    """``obj`` as a 1-D C-contiguous int32 or int64 numpy array (zero-copy when it is one)."""
    if hasattr(obj, "to_numpy") and hasattr(obj, "null_count") and not isinstance(obj, np.ndarray):
        # pyarrow Array / ChunkedArray: slices are handled by to_numpy (offset respected)
        if obj.null_count:
            raise ValueError(f"{name} has {obj.null_count} null value(s); node ids must not be null")
        obj = obj.to_numpy(zero_copy_only=False)
    arr = np.asarray(obj)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of node ids, got shape {arr.shape}")
    if arr.size == 0:
        return np.empty(0, dtype=np.int64)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integer node ids, got dtype {arr.dtype}")
    if arr.dtype == np.int32 or arr.dtype == np.int64:
        return np.ascontiguousarray(arr)
    if arr.dtype == np.uint64 and arr.size and arr.max() > np.iinfo(np.int64).max:
        bad = int(np.argmax(arr > np.iinfo(np.int64).max))
        raise ValueError(f"{name}[{bad}] = {int(arr[bad])} is not a valid node id")
    return np.ascontiguousarray(arr, dtype=np.int64)


def _edge_arrays(src, dst, num_nodes, check=True):
    """Checked (src, dst, num_nodes): same length, same dtype, ids in [0, num_nodes)."""
    try:
        n = int(num_nodes)
    except (TypeError, ValueError):
        raise TypeError(f"num_nodes must be an int, got {num_nodes!r}") from None
    if n != num_nodes or n < 0 or n > MAX_NODES:
        raise ValueError(f"num_nodes must be an int in [0, {MAX_NODES}], got {num_nodes!r}")
    s = _as_index_array(src, "src")
    d = _as_index_array(dst, "dst")
    if s.shape[0] != d.shape[0]:
        raise ValueError(f"src and dst must have the same length, got {s.shape[0]} and {d.shape[0]}")
    if s.shape[0] > MAX_EDGES:
        raise ValueError(f"at most {MAX_EDGES} edges are supported, got {s.shape[0]}")
    if s.dtype != d.dtype:
        s = s.astype(np.int64)
        d = d.astype(np.int64)
    if check:
        _check_range(s, n, "src")
        _check_range(d, n, "dst")
    return s, d, n


cdef int64_t _first_bad(const idx_t* a, int64_t length, int64_t limit) noexcept nogil:
    cdef int64_t i
    for i in range(length):
        if a[i] < 0 or a[i] >= limit:
            return i
    return -1


def _check_range(arr, int64_t limit, str name):
    cdef int64_t n = arr.shape[0]
    cdef int64_t bad = -1
    cdef const int32_t[::1] a32
    cdef const int64_t[::1] a64
    if n == 0:
        return
    if arr.dtype == np.int32:
        a32 = arr
        with nogil:
            bad = _first_bad(&a32[0], n, limit)
    else:
        a64 = arr
        with nogil:
            bad = _first_bad(&a64[0], n, limit)
    if bad >= 0:
        raise ValueError(
            f"{name}[{bad}] = {int(arr[bad])} is not a node id: expected 0 <= id < num_nodes = {limit}"
        )


# ----------------------------------------------------------------------------------
# kernels (no GIL)
# ----------------------------------------------------------------------------------

cdef int64_t _build_csr(const idx_t* src, const idx_t* dst, int64_t num_edges, int64_t num_nodes,
                        int64_t* indptr, int32_t* indices, int32_t* indeg) noexcept nogil:
    """Counting sort of the edges by source; stable, so out-edges keep input order.
    In-degrees are counted and ids range-checked in the same pass. Returns -1, or the
    index of the first edge with an id outside ``[0, num_nodes)`` (nothing built)."""
    cdef int64_t e, v, pos, a, b
    memset(indptr, 0, (num_nodes + 1) * sizeof(int64_t))
    memset(indeg, 0, num_nodes * sizeof(int32_t))
    for e in range(num_edges):
        if e + EDGE_AHEAD < num_edges:
            SABOT_PREFETCH(&indptr[src[e + EDGE_AHEAD] + 1])
            SABOT_PREFETCH(&indeg[dst[e + EDGE_AHEAD]])
        a = src[e]
        b = dst[e]
        if a < 0 or a >= num_nodes or b < 0 or b >= num_nodes:
            return e
        indptr[a + 1] += 1
        indeg[b] += 1
    for v in range(num_nodes):
        indptr[v + 1] += indptr[v]
    # fill using indptr[v] as the cursor of v, then shift back by one slot
    for e in range(num_edges):
        if e + 2 * EDGE_AHEAD < num_edges:
            SABOT_PREFETCH(&indptr[src[e + 2 * EDGE_AHEAD]])
        if e + EDGE_AHEAD < num_edges:
            SABOT_PREFETCH(&indices[indptr[src[e + EDGE_AHEAD]]])
        pos = indptr[src[e]]
        indices[pos] = <int32_t>dst[e]
        indptr[src[e]] = pos + 1
    v = num_nodes
    while v > 0:
        indptr[v] = indptr[v - 1]
        v -= 1
    indptr[0] = 0
    return -1


cdef inline int32_t _uf_find(int32_t* parent, int32_t v) noexcept nogil:
    while parent[v] != v:
        parent[v] = parent[parent[v]]  # path halving
        v = parent[v]
    return v


cdef void _union_edges(const idx_t* src, const idx_t* dst, const uint8_t* mask,
                       int64_t num_edges, int32_t* parent, int32_t* size) noexcept nogil:
    cdef int64_t e
    cdef int32_t a, b
    for e in range(num_edges):
        if mask != NULL and not mask[e]:
            continue
        a = _uf_find(parent, <int32_t>src[e])
        b = _uf_find(parent, <int32_t>dst[e])
        if a == b:
            continue
        if size[a] < size[b]:
            a, b = b, a
        parent[b] = a
        size[a] += size[b]


cdef int64_t _label_regions(int32_t* parent, int32_t* root_label, int32_t* labels,
                            int64_t num_nodes) noexcept nogil:
    """Compact labels, numbered in order of each region's smallest node id."""
    cdef int64_t v, count = 0
    cdef int32_t r
    for v in range(num_nodes):
        root_label[v] = -1
    for v in range(num_nodes):
        r = _uf_find(parent, <int32_t>v)
        if root_label[r] < 0:
            root_label[r] = <int32_t>count
            count += 1
        labels[v] = root_label[r]
    return count


cdef void _bfs_reach(const int64_t* indptr, const int32_t* indices, uint8_t* seen,
                     int32_t* queue, int64_t tail) noexcept nogil:
    cdef int64_t head = 0, k
    cdef int32_t v, w
    while head < tail:
        v = queue[head]
        head += 1
        for k in range(indptr[v], indptr[v + 1]):
            w = indices[k]
            if not seen[w]:
                seen[w] = 1
                queue[tail] = w
                tail += 1


# ----------------------------------------------------------------------------------
# the DAG
# ----------------------------------------------------------------------------------

cdef class DAG:
    """A directed graph in CSR form, for topological order, cycles and reachability.

    Args:
        src: source node of each edge (numpy/pyarrow integer array, no nulls).
        dst: target node of each edge, same length as ``src``.
        num_nodes: number of nodes; ids must lie in ``[0, num_nodes)``.

    Raises:
        ValueError: an id is out of range (the message names the array, index and
            value), lengths differ, or ``num_nodes`` is negative.
        TypeError: the arrays do not hold integers.
    """

    def __cinit__(self, src, dst, num_nodes):
        s, d, n = _edge_arrays(src, dst, num_nodes, check=False)  # range checked while counting
        cdef int64_t V = n
        cdef int64_t E = s.shape[0]
        self.num_nodes = V
        self.num_edges = E
        self._indptr = np.empty(V + 1, dtype=np.int64)
        self._indices = np.empty(max(E, 1), dtype=np.int32)[:E]
        cdef int64_t[::1] ip = self._indptr
        cdef int32_t[::1] ix = np.empty(1, dtype=np.int32) if E == 0 else self._indices
        self.indptr_ptr = &ip[0]
        self.indices_ptr = &ix[0] if E > 0 else NULL
        self._indeg = np.zeros(max(V, 1), dtype=np.int32)
        cdef int32_t[::1] dg = self._indeg
        self.indeg_ptr = &dg[0]
        cdef const int32_t[::1] s32, d32
        cdef const int64_t[::1] s64, d64
        cdef int64_t bad = -1
        if E == 0:
            memset(self.indptr_ptr, 0, (V + 1) * sizeof(int64_t))
        elif s.dtype == np.int32:
            s32 = s
            d32 = d
            with nogil:
                bad = _build_csr(&s32[0], &d32[0], E, V, self.indptr_ptr, self.indices_ptr, self.indeg_ptr)
        else:
            s64 = s
            d64 = d
            with nogil:
                bad = _build_csr(&s64[0], &d64[0], E, V, self.indptr_ptr, self.indices_ptr, self.indeg_ptr)
        if bad >= 0:
            name, arr = ("src", s) if not (0 <= int(s[bad]) < V) else ("dst", d)
            raise ValueError(
                f"{name}[{bad}] = {int(arr[bad])} is not a node id: expected 0 <= id < num_nodes = {V}"
            )
        self._indptr.setflags(write=False)
        self._indices.setflags(write=False)
        self._indeg.setflags(write=False)

    # -- views -------------------------------------------------------------------

    @property
    def indptr(self):
        """CSR offsets (read-only int64 array of ``num_nodes + 1``)."""
        return self._indptr

    @property
    def indices(self):
        """CSR targets (read-only int32 array of ``num_edges``)."""
        return self._indices

    def successors(self, node):
        """Targets of the out-edges of ``node`` (read-only int32 view), in input order."""
        v = self._node(node, "node")
        return self._indices[self._indptr[v]:self._indptr[v + 1]]

    def out_degree(self):
        """Out-degree of every node (int64 array)."""
        return np.diff(self._indptr)

    def in_degree(self):
        """In-degree of every node (int64 array)."""
        return self._indeg[:self.num_nodes].astype(np.int64)

    cdef int64_t _node_c(self, node, str what) except -1:
        try:
            v = int(node)
        except (TypeError, ValueError):
            raise TypeError(f"{what} must be an int node id, got {node!r}") from None
        if v != node or v < 0 or v >= self.num_nodes:
            raise ValueError(f"{what} = {node!r} is not a node id: expected 0 <= id < {self.num_nodes}")
        return v

    def _node(self, node, what):
        return self._node_c(node, what)

    # -- kernels -----------------------------------------------------------------

    cdef int64_t _toposort(self, int32_t* order, int32_t* indeg) noexcept nogil:
        """Kahn's algorithm (FIFO, roots in id order). Returns how many nodes were ordered;
        fewer than ``num_nodes`` means a cycle, and ``indeg`` is then > 0 exactly on the
        nodes that lie on or after a cycle."""
        cdef int64_t V = self.num_nodes
        cdef const int64_t* indptr = self.indptr_ptr
        cdef const int32_t* indices = self.indices_ptr
        cdef int64_t v, k, head = 0, tail = 0
        cdef int32_t u, w, x
        memcpy(indeg, self.indeg_ptr, V * sizeof(int32_t))
        for v in range(V):
            if indeg[v] == 0:
                order[tail] = <int32_t>v
                tail += 1
        while head < tail:
            # software pipeline over the queue: offsets of a node 2*NODE_AHEAD ahead,
            # its targets NODE_AHEAD ahead, their in-degree counters a few nodes ahead
            if head + 2 * NODE_AHEAD < tail:
                SABOT_PREFETCH(&indptr[order[head + 2 * NODE_AHEAD]])
            if head + NODE_AHEAD < tail:
                SABOT_PREFETCH(&indices[indptr[order[head + NODE_AHEAD]]])
            if head + 4 < tail:
                x = order[head + 4]
                for k in range(indptr[x], indptr[x + 1]):
                    SABOT_PREFETCH(&indeg[indices[k]])
            u = order[head]
            head += 1
            for k in range(indptr[u], indptr[u + 1]):
                w = indices[k]
                indeg[w] -= 1
                if indeg[w] == 0:
                    order[tail] = w
                    tail += 1
        return tail

    cdef int64_t _find_cycle(self, const int32_t* indeg, uint8_t* color,
                             int32_t* stack, int64_t* cursor, int64_t* start) noexcept nogil:
        """Iterative DFS over the nodes Kahn could not order (``indeg > 0``), which hold
        every cycle. On the first back edge ``v -> w`` the DFS stack from ``w`` to ``v``
        is the cycle: it is left in ``stack[start[0] : start[0] + length]`` and the
        length returned (0 if there is no cycle)."""
        cdef int64_t V = self.num_nodes
        cdef const int64_t* indptr = self.indptr_ptr
        cdef const int32_t* indices = self.indices_ptr
        cdef int64_t root, sp, p
        cdef int32_t v, w
        # 0 = unvisited, 1 = on the DFS stack, 2 = done (or ordered by Kahn: on no cycle)
        for root in range(V):
            color[root] = 0 if indeg[root] > 0 else 2
        for root in range(V):
            if color[root] != 0:
                continue
            sp = 0
            stack[0] = <int32_t>root
            cursor[0] = indptr[root]
            color[root] = 1
            while sp >= 0:
                v = stack[sp]
                if cursor[sp] < indptr[v + 1]:
                    w = indices[cursor[sp]]
                    cursor[sp] += 1
                    if color[w] == 1:
                        p = sp
                        while stack[p] != w:
                            p -= 1
                        start[0] = p
                        return sp - p + 1
                    if color[w] == 0:
                        color[w] = 1
                        sp += 1
                        stack[sp] = w
                        cursor[sp] = indptr[w]
                else:
                    color[v] = 2
                    sp -= 1
        return 0

    def toposort(self):
        """Topological order and cycle check in one pass.

        Returns:
            ``(order, cycle)``: ``order`` is an int32 array of the nodes Kahn's
            algorithm could order (all of them iff the graph is acyclic; sources first,
            ties in id order); ``cycle`` is None for a DAG, else an int32 array
            ``[v0, v1, ..., vk]`` with edges ``v0 -> v1 -> ... -> vk -> v0``.
        """
        cdef int64_t V = self.num_nodes
        order_arr = np.empty(max(V, 1), dtype=np.int32)
        indeg_arr = np.empty(max(V, 1), dtype=np.int32)
        cdef int32_t[::1] order = order_arr
        cdef int32_t[::1] indeg = indeg_arr
        cdef int64_t n
        with nogil:
            n = self._toposort(&order[0], &indeg[0])
        if n == V:
            return order_arr[:V], None
        return order_arr[:n], self._cycle_from(indeg_arr)

    cdef object _cycle_from(self, indeg_arr):
        cdef int64_t V = self.num_nodes
        color_arr = np.empty(V, dtype=np.uint8)
        stack_arr = np.empty(V, dtype=np.int32)
        cursor_arr = np.empty(V, dtype=np.int64)
        cdef const int32_t[::1] indeg = indeg_arr
        cdef uint8_t[::1] color = color_arr
        cdef int32_t[::1] stack = stack_arr
        cdef int64_t[::1] cursor = cursor_arr
        cdef int64_t start = 0, length
        with nogil:
            length = self._find_cycle(&indeg[0], &color[0], &stack[0], &cursor[0], &start)
        if length == 0:  # cannot happen when Kahn stopped early; kept as a hard check
            raise RuntimeError("internal error: Kahn's algorithm stopped early but no cycle was found")
        return stack_arr[start:start + length].copy()

    def topological_order(self):
        """Topological order (int32 array of all nodes).

        Raises:
            sabot.errors.CycleError: the graph has a cycle; ``.cycle`` lists its node ids.
        """
        order, cycle = self.toposort()
        if cycle is not None:
            path = " -> ".join(str(int(v)) for v in list(cycle) + [cycle[0]])
            raise CycleError(f"graph of {self.num_nodes} nodes has a cycle: {path}",
                             cycle=[int(v) for v in cycle])
        return order

    def find_cycle(self):
        """One cycle as an int32 array ``[v0, ..., vk]`` (edges ``vi -> vi+1``, ``vk -> v0``),
        or None if the graph is acyclic."""
        return self.toposort()[1]

    def is_acyclic(self):
        """True iff the graph has no cycle."""
        return self.toposort()[1] is None

    def reachable(self, seeds):
        """Boolean array: which nodes are reachable from any node in ``seeds`` (seeds included)."""
        seeds_arr = _as_index_array(seeds, "seeds")
        _check_range(seeds_arr, self.num_nodes, "seeds")
        cdef int64_t V = self.num_nodes
        seen_arr = np.zeros(max(V, 1), dtype=np.uint8)
        queue_arr = np.empty(max(V, 1), dtype=np.int32)
        cdef uint8_t[::1] seen = seen_arr
        cdef int32_t[::1] queue = queue_arr
        cdef int64_t tail = 0, i
        cdef int32_t v
        for s in seeds_arr.tolist():
            v = <int32_t>s
            if not seen[v]:
                seen[v] = 1
                queue[tail] = v
                tail += 1
        if V > 0 and self.num_edges > 0:
            with nogil:
                _bfs_reach(self.indptr_ptr, self.indices_ptr, &seen[0], &queue[0], tail)
        return seen_arr[:V].view(np.bool_)

    def __repr__(self):
        return f"<DAG num_nodes={self.num_nodes} num_edges={self.num_edges}>"


# ----------------------------------------------------------------------------------
# module-level entry points
# ----------------------------------------------------------------------------------

def topological_sort(src, dst, num_nodes):
    """``DAG(src, dst, num_nodes).toposort()``: ``(order, cycle_or_None)``."""
    return DAG(src, dst, num_nodes).toposort()


def find_cycle(src, dst, num_nodes):
    """One cycle of the graph (int32 node ids in order) or None."""
    return DAG(src, dst, num_nodes).toposort()[1]


def pipelined_regions(src, dst, num_nodes, mask=None):
    """Connected components (edges taken undirected) over the edges where ``mask`` is true.

    Args:
        src, dst: edge arrays (as for :class:`DAG`).
        num_nodes: number of nodes.
        mask: optional boolean array, one per edge: True = pipelined (joins the two
            ends into one region). None means every edge is pipelined.

    Returns:
        ``(labels, num_regions)``: ``labels`` is an int32 array giving each node its
        region, numbered ``0 .. num_regions-1`` in order of each region's smallest node id.
    """
    s, d, n = _edge_arrays(src, dst, num_nodes)
    cdef int64_t V = n
    cdef int64_t E = s.shape[0]
    cdef const uint8_t[::1] m
    cdef const uint8_t* mptr = NULL
    if mask is not None:
        if hasattr(mask, "to_numpy") and not isinstance(mask, np.ndarray):
            if mask.null_count:
                raise ValueError(f"mask has {mask.null_count} null value(s); expected booleans")
            mask = mask.to_numpy(zero_copy_only=False)
        mask_arr = np.asarray(mask)
        if mask_arr.ndim != 1 or mask_arr.shape[0] != E:
            raise ValueError(f"mask must be a 1-D array with one entry per edge ({E}), got shape {mask_arr.shape}")
        if mask_arr.dtype != np.bool_:
            raise TypeError(f"mask must be a boolean array, got dtype {mask_arr.dtype}")
        mask_arr = np.ascontiguousarray(mask_arr).view(np.uint8)
        if E > 0:
            m = mask_arr
            mptr = &m[0]
    parent_arr = np.arange(max(V, 1), dtype=np.int32)
    size_arr = np.ones(max(V, 1), dtype=np.int32)
    root_label_arr = np.empty(max(V, 1), dtype=np.int32)
    labels_arr = np.empty(max(V, 1), dtype=np.int32)
    cdef int32_t[::1] parent = parent_arr
    cdef int32_t[::1] size = size_arr
    cdef int32_t[::1] root_label = root_label_arr
    cdef int32_t[::1] labels = labels_arr
    cdef const int32_t[::1] s32, d32
    cdef const int64_t[::1] s64, d64
    cdef int64_t count
    if E > 0:
        if s.dtype == np.int32:
            s32 = s
            d32 = d
            with nogil:
                _union_edges(&s32[0], &d32[0], mptr, E, &parent[0], &size[0])
        else:
            s64 = s
            d64 = d
            with nogil:
                _union_edges(&s64[0], &d64[0], mptr, E, &parent[0], &size[0])
    with nogil:
        count = _label_regions(&parent[0], &root_label[0], &labels[0], V)
    return labels_arr[:V], int(count)
