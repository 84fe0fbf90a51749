"""Tests of sabot._core.graph against pure-Python references (graphlib, DFS, union-find)."""

import graphlib

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sabot._core.graph import DAG, find_cycle, pipelined_regions, topological_sort
from sabot.errors import CycleError, GraphValidationError


# ------------------------------------------------------------------ references

def ref_has_cycle(n, edges):
    """graphlib's verdict (independent implementation)."""
    ts = graphlib.TopologicalSorter({v: set() for v in range(n)})
    for u, v in edges:
        ts.add(v, u)
    try:
        ts.prepare()
    except graphlib.CycleError:
        return True
    return False


def ref_components(n, edges):
    parent = list(range(n))

    def find(x):
        while parent[x] != x:
            x = parent[x]
        return x

    for u, v in edges:
        a, b = find(u), find(v)
        if a != b:
            parent[max(a, b)] = min(a, b)
    return [find(v) for v in range(n)]


def assert_topological(n, edges, order):
    order = list(order)
    assert sorted(order) == list(range(n))
    pos = {v: i for i, v in enumerate(order)}
    for u, v in edges:
        assert pos[u] < pos[v], (u, v)


def assert_is_cycle(edges, cycle):
    edge_set = set(edges)
    cycle = [int(c) for c in cycle]
    assert len(cycle) >= 1
    assert len(set(cycle)) == len(cycle), "a simple cycle visits each node once"
    for i, u in enumerate(cycle):
        assert (u, cycle[(i + 1) % len(cycle)]) in edge_set


graphs = st.integers(min_value=1, max_value=25).flatmap(
    lambda n: st.tuples(
        st.just(n),
        st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=60),
    )
)


def dag_from_random(n, edges):
    """Orient every edge low -> high id under a random relabelling: always acyclic."""
    return [(u, v) for u, v in edges if u < v]


# ------------------------------------------------------------------ properties

@settings(max_examples=300, deadline=None)
@given(graphs)
def test_toposort_and_cycle_match_reference(g):
    n, edges = g
    src = np.array([u for u, _ in edges], dtype=np.int64)
    dst = np.array([v for _, v in edges], dtype=np.int64)
    order, cycle = DAG(src, dst, n).toposort()
    if ref_has_cycle(n, edges):
        assert cycle is not None
        assert_is_cycle(edges, cycle)
        assert len(order) < n
    else:
        assert cycle is None
        assert_topological(n, edges, order)


@settings(max_examples=200, deadline=None)
@given(graphs, st.randoms(use_true_random=False))
def test_dags_are_ordered(g, rnd):
    n, edges = g
    perm = list(range(n))
    rnd.shuffle(perm)
    dag_edges = [(perm[u], perm[v]) for u, v in dag_from_random(n, edges)]
    src = np.array([u for u, _ in dag_edges], dtype=np.int32)
    dst = np.array([v for _, v in dag_edges], dtype=np.int32)
    order = DAG(src, dst, n).topological_order()
    assert order.dtype == np.int32
    assert_topological(n, dag_edges, order)


@settings(max_examples=200, deadline=None)
@given(graphs, st.data())
def test_regions_match_union_find(g, data):
    n, edges = g
    mask = data.draw(st.lists(st.booleans(), min_size=len(edges), max_size=len(edges)))
    src = np.array([u for u, _ in edges], dtype=np.int64)
    dst = np.array([v for _, v in edges], dtype=np.int64)
    labels, count = pipelined_regions(src, dst, n, np.array(mask, dtype=bool))
    ref = ref_components(n, [e for e, m in zip(edges, mask) if m])
    assert count == len(set(ref))
    # same partition: two nodes share a label iff they share a reference root
    for a in range(n):
        for b in range(n):
            assert (labels[a] == labels[b]) == (ref[a] == ref[b])
    # labels numbered by each region's smallest node
    firsts = [int(labels[v]) for v in range(n) if all(labels[u] != labels[v] for u in range(v))]
    assert firsts == list(range(count))


# ------------------------------------------------------------------ examples

def test_small_dag_and_csr():
    g = DAG(np.array([0, 0, 1, 3]), np.array([2, 1, 2, 2]), 4)
    assert g.num_nodes == 4 and g.num_edges == 4
    assert g.indptr.tolist() == [0, 2, 3, 3, 4]
    assert g.successors(0).tolist() == [2, 1]  # input order kept
    assert g.in_degree().tolist() == [0, 1, 3, 0]
    assert g.out_degree().tolist() == [2, 1, 0, 1]
    assert g.topological_order().tolist() == [0, 3, 1, 2]
    assert g.is_acyclic()
    assert g.reachable([1]).tolist() == [False, True, True, False]
    with pytest.raises(ValueError):
        g.indptr[0] = 5  # read-only view


def test_self_loop_and_cycle_error():
    g = DAG([0, 1, 2], [1, 1, 0], 3)
    assert g.find_cycle().tolist() == [1]
    with pytest.raises(CycleError) as info:
        g.topological_order()
    assert info.value.cycle == [1]
    assert isinstance(info.value, GraphValidationError) and isinstance(info.value, ValueError)


def test_cycle_behind_a_chain():
    # 0 -> 1 -> 2 -> 3 -> 4 -> 2, plus 4 -> 5 (downstream of the cycle)
    edges = [(0, 1), (1, 2), (2, 3), (3, 4), (4, 2), (4, 5)]
    cyc = find_cycle([u for u, _ in edges], [v for _, v in edges], 6)
    assert sorted(cyc.tolist()) == [2, 3, 4]
    assert_is_cycle(edges, cyc)


def test_empty_graphs():
    order, cycle = topological_sort([], [], 0)
    assert order.tolist() == [] and cycle is None
    order, cycle = topological_sort(np.array([], dtype=np.int32), np.array([], dtype=np.int32), 3)
    assert order.tolist() == [0, 1, 2] and cycle is None
    labels, count = pipelined_regions([], [], 3)
    assert labels.tolist() == [0, 1, 2] and count == 3


def test_out_of_range_ids_name_index_and_value():
    with pytest.raises(ValueError, match=r"dst\[2\] = 7 .*num_nodes = 5"):
        DAG([0, 1, 2], [1, 2, 7], 5)
    with pytest.raises(ValueError, match=r"src\[1\] = -1"):
        DAG(np.array([0, -1], dtype=np.int32), np.array([1, 2], dtype=np.int32), 5)
    with pytest.raises(ValueError, match=r"src\[0\] = 9"):
        pipelined_regions([9], [0], 3)
    with pytest.raises(ValueError, match="same length"):
        DAG([0, 1], [1], 3)
    with pytest.raises(ValueError, match="num_nodes"):
        DAG([0], [1], -1)
    with pytest.raises(TypeError, match="integer"):
        DAG(np.array([0.0]), np.array([1.0]), 2)
    with pytest.raises(ValueError, match="1-D"):
        DAG(np.zeros((2, 2), dtype=np.int64), np.zeros((2, 2), dtype=np.int64), 2)
    with pytest.raises(ValueError, match="mask"):
        pipelined_regions([0], [1], 2, mask=np.array([True, False]))
    with pytest.raises(TypeError, match="boolean"):
        pipelined_regions([0], [1], 2, mask=np.array([1]))


def test_arrow_inputs_respect_offsets_and_reject_nulls():
    src = pa.array([9, 0, 1, 2], type=pa.int32()).slice(1)  # the 9 is outside the slice
    dst = pa.chunked_array([pa.array([1, 2], pa.int64()), pa.array([3], pa.int64())])
    order = DAG(src, dst, 4).topological_order()
    assert order.tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="null"):
        DAG(pa.array([0, None]), pa.array([1, 2]), 3)
    labels, count = pipelined_regions(src, dst, 4, mask=pa.array([True, False, True]).slice(0))
    assert count == 2 and labels.tolist() == [0, 0, 1, 1]


def test_mixed_and_small_integer_dtypes():
    src = np.array([0, 1], dtype=np.uint8)
    dst = np.array([1, 2], dtype=np.int32)
    assert DAG(src, dst, 3).topological_order().tolist() == [0, 1, 2]


def test_large_graph_cycle_is_returned():
    rng = np.random.default_rng(7)
    n, m = 200_000, 800_000
    a = rng.integers(0, n, m)
    b = rng.integers(0, n, m)
    keep = a < b
    src, dst = a[keep], b[keep]
    g = DAG(src, dst, n)
    assert g.find_cycle() is None
    order = g.topological_order()
    pos = np.empty(n, dtype=np.int64)
    pos[order] = np.arange(n)
    assert np.all(pos[src] < pos[dst])
    # close a long path into a cycle: follow edges from a node, then add the back edge
    path = [int(src[0])]
    while True:
        succ = g.successors(path[-1])
        if len(succ) == 0 or len(path) > 50:
            break
        path.append(int(succ[0]))
    assert len(path) >= 2
    src2 = np.append(src, path[-1])
    dst2 = np.append(dst, path[0])
    cyc = DAG(src2, dst2, n).find_cycle()
    assert cyc is not None
    edge_set = set(zip(src2.tolist(), dst2.tolist()))
    cyc = cyc.tolist()
    for i, u in enumerate(cyc):
        assert (u, cyc[(i + 1) % len(cyc)]) in edge_set
