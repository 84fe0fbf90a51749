"""Rebalance planner: from measured per-key-group load to a new key-group assignment.

Keys are hashed into ``max_parallelism`` key groups (``docs/hash.md``) and a table
``assignment[key_group] -> subtask`` says which task of a keyed operator owns each
group (the default is the contiguous range table of
``sabot._core.partition.default_assignment``). Auto-rebalance measures how many rows
each key group received (``HashPartitioner.key_group_counts``) and, when an operator's
load is too uneven, asks this module for a better table. Moving a key group means
moving its keyed state over the network while the job runs, so the planner minimises
the busiest task's load *and* the load it moves. It is pure planning: no I/O, no
state, deterministic for a given input.

The measure of unevenness is :func:`imbalance`, ``(max - mean) / mean`` of the task
loads, the figure the seed's ``imbalance_threshold=0.3`` ("30% max imbalance") is
compared with.

Example:
    >>> import numpy as np
    >>> loads = np.array([50, 1, 1, 1, 40, 3, 2, 2], dtype=np.int64)    # rows per key group
    >>> current = np.array([0, 0, 0, 0, 1, 1, 1, 1], dtype=np.int32)    # range assignment, P = 2
    >>> plan = plan_assignment(loads, current, 2)
    >>> round(plan.imbalance_before, 3), round(plan.imbalance_after, 3)   # 53/47 -> 50/50
    (0.06, 0.0)
    >>> plan.moves
    [(1, 0, 1), (2, 0, 1), (3, 0, 1)]
"""

from __future__ import annotations

import bisect
import logging
import numbers
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "RebalancePlan",
    "imbalance",
    "lower_bound_imbalance",
    "plan_assignment",
    "task_loads",
]

logger = logging.getLogger(__name__)

# Rounds of the pairwise-swap phase of the local search. A swap round costs
# O(G log G) (vectorised); swaps only matter when a task holds few, coarse key
# groups, where a handful of rounds suffices. The cap bounds planning time on
# adversarial inputs (the result is still never worse than the current table).
_MAX_SWAP_ROUNDS = 64
# Bisection steps when searching the smallest reachable target load.
_TARGET_SEARCH_STEPS = 40
# Tasks (least loaded first) the busiest task may exchange a key group with per round.
_SWAP_PARTNERS = 16


# ----------------------------------------------------------------------------- checks


def _check_parallelism(parallelism):
    if isinstance(parallelism, (bool, np.bool_)) or not isinstance(parallelism, numbers.Integral):
        raise ValueError(f"parallelism must be an integer >= 1, got {parallelism!r}")
    if parallelism < 1:
        raise ValueError(f"parallelism must be >= 1, got {parallelism}")
    return int(parallelism)


def _to_numpy(values, what):
    try:
        import pyarrow as pa
    except ImportError:  # pragma: no cover - pyarrow is a core dependency
        pa = None
    if pa is not None and isinstance(values, (pa.Array, pa.ChunkedArray)):
        if values.null_count:
            raise ValueError(f"{what} has {values.null_count} null entries; every key group needs a value")
        values = values.to_numpy(zero_copy_only=False)
    return np.asarray(values)


def _check_loads(loads, what="key_group_loads"):
    """Loads as a 1-D float64 array, non-empty, finite and non-negative."""
    a = _to_numpy(loads, what)
    if a.ndim != 1:
        raise ValueError(f"{what} must be 1-D (one load per entry), got shape {a.shape}")
    if a.dtype.kind not in "iuf" or a.dtype == np.bool_:
        raise ValueError(f"{what} must be numeric (row counts or rates), got dtype {a.dtype}")
    if len(a) == 0:
        raise ValueError(f"{what} is empty; expected at least one load")
    w = a.astype(np.float64, copy=False)
    bad = ~np.isfinite(w)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{what}[{i}] = {a[i].item()!r} is not finite; loads must be finite numbers >= 0")
    neg = w < 0
    if neg.any():
        i = int(np.flatnonzero(neg)[0])
        raise ValueError(f"{what}[{i}] = {a[i].item()!r} is negative; "
                         "loads must be >= 0 (row counts or rates)")
    return w


def _check_assignment(assignment, num_key_groups, parallelism, what="current_assignment"):
    """Assignment as a 1-D int32 array of length G with values in [0, parallelism)."""
    a = _to_numpy(assignment, what)
    if a.ndim != 1:
        raise ValueError(f"{what} must be 1-D (key group -> task), got shape {a.shape}")
    if a.dtype.kind not in "iu":
        if a.dtype.kind == "f" and len(a) and np.all(np.isfinite(a)) and np.all(a == np.round(a)):
            pass  # integral floats (e.g. a JSON round trip) are accepted
        else:
            raise ValueError(f"{what} must hold integer task indices, got dtype {a.dtype}")
    if len(a) != num_key_groups:
        raise ValueError(f"{what} has {len(a)} entries but key_group_loads has {num_key_groups}; "
                         "both need one entry per key group (max_parallelism)")
    out = (a < 0) | (a >= parallelism)
    if out.any():
        i = int(np.flatnonzero(out)[0])
        raise ValueError(f"{what}[{i}] = {a[i]} is out of range for parallelism {parallelism}; "
                         f"expected a task index in 0..{parallelism - 1}")
    return a.astype(np.int32)


def _check_fraction(value, name):
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number or None, got {value!r}")
    value = float(value)
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return value


# ----------------------------------------------------------------------------- measures


def imbalance(loads):
    """Imbalance of a set of task loads: ``(max - mean) / mean``.

    0 means perfectly even; 0.3 means the busiest task carries 30 % more than the
    average task, which is what ``imbalance_threshold=0.3`` ("30% max imbalance") of
    ``enable_auto_rebalance`` compares with. The figure is scale-free (row counts,
    rows/s or busy fractions give the same value for proportional loads) and lies in
    ``[0, P - 1]`` for ``P`` tasks. All-zero loads (an idle operator) have imbalance 0.

    Args:
        loads: one non-negative load per task (array-like).

    Returns:
        The imbalance as a float.

    Raises:
        ValueError: empty, non-numeric, non-finite or negative loads.
    """
    w = _check_loads(loads, "loads")
    total = float(w.sum())
    mean = total / len(w)
    if not mean > 0.0:  # all zero, or so close that the mean underflows (denormal loads)
        return 0.0
    return max(0.0, (float(w.max()) - mean) / mean)


def task_loads(key_group_loads, assignment, parallelism):
    """Per-task load (float64 array of length ``parallelism``) under an assignment.

    Args:
        key_group_loads: load per key group (length G = max_parallelism).
        assignment: key group -> task table (length G, values in ``0..parallelism-1``).
        parallelism: number of tasks.

    Raises:
        ValueError: lengths differ, a task index is out of range, a load is negative.
    """
    p = _check_parallelism(parallelism)
    w = _check_loads(key_group_loads)
    a = _check_assignment(assignment, len(w), p, "assignment")
    return np.bincount(a, weights=w, minlength=p).astype(np.float64, copy=False)


def _lower_bound_max(w, parallelism):
    """A lower bound on the busiest task's load under *any* assignment.

    The largest of: the mean (total / P); the heaviest key group (a key group cannot
    be split); and the two lightest of the P+1 heaviest key groups (P+1 groups on P
    tasks put two of them on one task, pigeonhole).
    """
    total = float(w.sum())
    bound = max(total / parallelism, float(w.max()))
    if len(w) > parallelism:
        top = np.partition(w, len(w) - parallelism - 1)[len(w) - parallelism - 1:]
        top.sort()
        bound = max(bound, float(top[0] + top[1]))
    return bound


def lower_bound_imbalance(key_group_loads, parallelism):
    """The smallest imbalance any key-group assignment could reach.

    Key groups are indivisible, so one hot key group (or a few) can make even the best
    table uneven; when this bound exceeds a rebalance threshold, the threshold is
    unreachable by reassigning key groups (it needs more key groups, i.e. a larger
    ``max_parallelism``, or key splitting). The bound uses the mean, the heaviest key
    group and a pigeonhole argument over the P+1 heaviest groups; the optimum may lie
    above it.

    Raises:
        ValueError: bad loads or parallelism.
    """
    p = _check_parallelism(parallelism)
    w = _check_loads(key_group_loads)
    total = float(w.sum())
    mean = total / p
    if not mean > 0.0:  # all zero, or so close that the mean underflows (denormal loads)
        return 0.0
    return max(0.0, (_lower_bound_max(w, p) - mean) / mean)


# ----------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class RebalancePlan:
    """A new key-group -> task table and what it changes.

    Attributes:
        assignment: the new table (int32, one task index per key group).
        moves: ``(key_group, from_task, to_task)`` for every key group whose owner
            changes, in key-group order; exactly the difference between the current
            and the new table.
        imbalance_before: :func:`imbalance` of the task loads under the current table.
        imbalance_after: the same under the new table (never above ``imbalance_before``).
        lower_bound_imbalance: no table can do better than this (see
            :func:`lower_bound_imbalance`); compare it with a threshold to tell an
            unreachable threshold from a poor plan.
        moved_load_fraction: load of the moved key groups / total load, the share of
            (measured) traffic whose keyed state changes owner.
        task_loads_before: per-task loads under the current table.
        task_loads_after: per-task loads under the new table.
    """

    assignment: np.ndarray
    moves: list
    imbalance_before: float
    imbalance_after: float
    lower_bound_imbalance: float
    moved_load_fraction: float
    task_loads_before: np.ndarray = field(repr=False)
    task_loads_after: np.ndarray = field(repr=False)

    @property
    def changed(self):
        """True if the plan moves at least one key group."""
        return bool(self.moves)

    def to_dict(self):
        """JSON-ready summary (for a job's detail view); the table itself is left out,
        the moves give it relative to the current one."""
        return {
            "imbalance_before": self.imbalance_before,
            "imbalance_after": self.imbalance_after,
            "lower_bound_imbalance": self.lower_bound_imbalance,
            "moved_load_fraction": self.moved_load_fraction,
            "num_moves": len(self.moves),
            "moves": [list(m) for m in self.moves],
            "task_loads_before": self.task_loads_before.tolist(),
            "task_loads_after": self.task_loads_after.tolist(),
        }


class _Search:
    """Mutable state of the local search: per-task load and sorted key groups.

    Each task keeps its key groups of positive load as a sorted list of
    ``(load, key_group)`` (zero-load groups never need to move), so "the key group of
    task t whose load is nearest x" is one bisection.
    """

    def __init__(self, w, home, parallelism, items):
        self.w = w
        self.home = home                       # current table (list of ints)
        self.cur = list(home)                  # table being built
        self.p = parallelism
        self.loads = np.bincount(np.asarray(home), weights=w, minlength=parallelism).astype(np.float64)
        self.items = [list(lst) for lst in items]
        self.moved = 0.0                       # load of key groups away from home

    def move_cost(self, kg, dst):
        """Change of moved load if ``kg`` goes to ``dst``."""
        if self.cur[kg] == self.home[kg]:
            return self.w[kg]
        return -self.w[kg] if dst == self.home[kg] else 0.0

    def move(self, kg, src, dst):
        wk = float(self.w[kg])
        self.moved += self.move_cost(kg, dst)
        lst = self.items[src]
        del lst[bisect.bisect_left(lst, (wk, kg))]
        bisect.insort(self.items[dst], (wk, kg))
        self.loads[src] -= wk
        self.loads[dst] += wk
        self.cur[kg] = dst

    def _best_single_move(self, h, lo, eps, budget, stop_at):
        """Key group of task ``h`` whose move to task ``lo`` best lowers max(L[h], L[lo])."""
        lh, ll = float(self.loads[h]), float(self.loads[lo])
        gap = lh - ll
        lst = self.items[h]
        if not lst:
            return None
        if stop_at is not None:
            # Only need L[h] <= stop_at: the smallest group doing it moves the least.
            need = lh - stop_at
            i = bisect.bisect_left(lst, (need - eps, -1))
            if i < len(lst) and ll + lst[i][0] <= stop_at + eps and \
                    self.moved + self.move_cost(lst[i][1], lo) <= budget + eps:
                return lst[i][1]
        half = gap / 2.0
        i = bisect.bisect_left(lst, (half, -1))
        best = None
        best_key = None
        # The two groups nearest gap/2, then (budget permitting) smaller ones.
        candidates = []
        if i < len(lst) and lst[i][0] < gap - eps:
            candidates.append(i)
        j = i - 1
        scanned = 0
        while j >= 0 and scanned < 64:
            candidates.append(j)
            if self.moved + self.move_cost(lst[j][1], lo) <= budget + eps:
                break
            j -= 1
            scanned += 1
        for k in candidates:
            wk, kg = lst[k]
            if wk <= eps or wk >= gap - eps:
                continue
            if self.moved + self.move_cost(kg, lo) > budget + eps:
                continue
            key = (max(lh - wk, ll + wk), wk)
            if best_key is None or key < best_key:
                best, best_key = kg, key
        return best

    def move_phase(self, eps, budget, stop_at, max_moves):
        moves = 0
        while moves < max_moves:
            h = int(np.argmax(self.loads))
            if stop_at is not None and self.loads[h] <= stop_at + eps:
                return
            lo = int(np.argmin(self.loads))
            if self.loads[h] - self.loads[lo] <= eps:
                return
            kg = self._best_single_move(h, lo, eps, budget, stop_at)
            if kg is None:
                return
            self.move(kg, h, lo)
            moves += 1

    def swap_once(self, eps, budget):
        """Best exchange of one key group of the busiest task with one of another task.

        Returns True if a swap lowered the pair's maximum (sum of squares strictly
        falls, so the search terminates).
        """
        h = int(np.argmax(self.loads))
        lh = float(self.loads[h])
        hl = self.items[h]
        if not hl:
            return False
        a_w = np.fromiter((x[0] for x in hl), dtype=np.float64, count=len(hl))
        best = None
        # The least loaded tasks leave the most room; looking further rarely helps
        # and would make a round O(P) vectorised searches.
        partners = np.argsort(self.loads, kind="stable")[:_SWAP_PARTNERS].tolist()
        for t in partners:
            lt = float(self.loads[t])
            gap = lh - lt
            if t == h or gap <= 2 * eps or not self.items[t]:
                continue
            tl = self.items[t]
            b_w = np.fromiter((x[0] for x in tl), dtype=np.float64, count=len(tl))
            # For each a, the b's nearest a - gap/2 (d = a - b nearest gap/2).
            pos = np.searchsorted(b_w, a_w - gap / 2.0)
            for cand in (pos - 1, pos):
                ok = (cand >= 0) & (cand < len(b_w))
                if not ok.any():
                    continue
                ia = np.flatnonzero(ok)
                ib = cand[ok]
                d = a_w[ia] - b_w[ib]
                good = (d > eps) & (d < gap - eps)
                if not good.any():
                    continue
                ia, ib, d = ia[good], ib[good], d[good]
                pair_max = np.maximum(lh - d, lt + d)
                for k in np.argsort(pair_max, kind="stable")[:8]:
                    ka, kb = hl[int(ia[k])][1], tl[int(ib[k])][1]
                    cost = self.move_cost(ka, t) + self.move_cost(kb, h)
                    if self.moved + cost > budget + eps:
                        continue
                    key = (float(pair_max[k]), cost)
                    if best is None or key < best[0]:
                        best = (key, ka, kb, t)
                    break
        if best is None:
            return False
        _, ka, kb, t = best
        self.move(ka, h, t)
        self.move(kb, t, h)
        return True


def _local_search(w, home, p, items, eps, budget, stop_at=None, good_enough=None):
    """Greedy moves from the busiest to the least busy task, then pairwise swaps.

    Swapping stops once the maximum is at most ``good_enough`` (the lower bound plus
    the tolerance: no table could gain more than the caller cares about).
    """
    s = _Search(w, home, p, items)
    max_moves = 4 * len(w) + 16
    s.move_phase(eps, budget, stop_at, max_moves)
    for _ in range(_MAX_SWAP_ROUNDS):
        top = float(s.loads.max())
        if stop_at is not None and top <= stop_at + eps:
            break
        if good_enough is not None and top <= good_enough:
            break
        if not s.swap_once(eps, budget):
            break
        s.move_phase(eps, budget, stop_at, max_moves)
    return np.asarray(s.cur, dtype=np.int32)


def _relocate(w, home, loads, items, target, eps):
    """Bring every task to load <= ``target`` by moving key groups off overloaded tasks only.

    Each overloaded task sheds key groups covering its excess (either the smallest
    single group that covers it, or largest-first groups below the excess, whichever
    sheds less); the shed groups are then packed best-fit-decreasing into the room
    ``target - load`` left on all tasks. Returns the new table or None if packing fails.
    """
    p = len(loads)
    new_loads = loads.copy()
    shed = []
    under = loads <= target + eps
    if not under.any():
        return None
    # A group heavier than the most room any task below target has cannot go anywhere.
    max_room = float((target - loads[under]).max())
    for o in np.flatnonzero(~under):
        excess = float(loads[o]) - target
        lst = items[o]
        movable = bisect.bisect_right(lst, (max_room + eps, len(w)))
        # Option A: the smallest single (movable) key group covering the excess.
        i = bisect.bisect_left(lst, (excess - eps, -1), 0, movable)
        single = [lst[i]] if i < movable else None
        # Option B: repeatedly the largest group below what is left of the excess
        # (subset-sum greedy), then, if still short, the smallest remaining group
        # covering the rest.
        multi, rest, hi, taken = [], excess, movable, set()
        while rest > eps:
            j = bisect.bisect_left(lst, (rest - eps, -1), 0, hi)   # lst[:j] lie below rest
            if j == 0:
                break
            multi.append(lst[j - 1])
            taken.add(j - 1)
            rest -= lst[j - 1][0]
            hi = j - 1
        if rest > eps:
            k = bisect.bisect_left(lst, (rest - eps, -1), 0, movable)
            while k < movable and k in taken:
                k += 1
            if k < movable:
                multi.append(lst[k])
            else:
                multi = None
        options = [opt for opt in (single, multi) if opt]
        if not options:
            return None
        chosen = min(options, key=lambda opt: (sum(x[0] for x in opt), len(opt)))
        for wk, kg in chosen:
            shed.append((wk, kg, int(o)))
            new_loads[o] -= wk
    if not shed:
        return np.asarray(home, dtype=np.int32)
    room = sorted((target - float(new_loads[t]), t) for t in range(p))
    out = np.asarray(home, dtype=np.int32).copy()
    shed.sort(reverse=True)
    for wk, kg, src in shed:
        k = bisect.bisect_left(room, (wk - eps, -1))
        if k == len(room):
            return None
        r, t = room.pop(k)
        bisect.insort(room, (r - wk, t))
        out[kg] = t
    return out


def _sorted_items(w, home, p):
    """Per task, its key groups of positive load as a sorted list of (load, key_group)."""
    order = np.lexsort((np.arange(len(w)), w))        # by load, then key group
    order = order[w[order] > 0]
    items = [[] for _ in range(p)]
    for kg, t, wk in zip(order.tolist(), home[order].tolist(), w[order].tolist()):
        items[t].append((wk, kg))
    return items


def plan_assignment(key_group_loads, current_assignment, parallelism, *,
                    max_moved_fraction=None, target_imbalance=None, load_tolerance=0.01):
    """Plan a new key-group -> task table that evens out the measured load.

    The objective: first the smallest achievable load of the busiest task (up to
    ``load_tolerance``), then the least moved load (moving a key group moves its keyed
    state). The plan is never worse than the current table: without a strict
    improvement of the maximum it is the current table with no moves.

    Method, and why: minimising the maximum is multiprocessor scheduling (NP-hard),
    so the planner combines two heuristics and keeps the better result:

    1. *Local search from the current table* (chosen over LPT-from-scratch because it
       starts where the state already is, so it only moves what it must): repeatedly
       move, from the busiest task to the least busy one, the key group whose load is
       nearest half their difference (the move that best lowers the pair's maximum);
       when no single move helps, exchange one key group of the busiest task with one
       of a less loaded task (the 16 least loaded are tried). Each step strictly
       lowers the sum of squared task loads, so it terminates; a final state without
       an improving move is within ``2 - 2/(P+1)`` of the optimum (with
       ``load_tolerance=0``; in tests it finds the exact optimum in most tiny cases).
    2. *Targeted relocation*: with the local search's maximum as an upper bound, a
       bisection over a target load T looks for the smallest T reachable by moving key
       groups only off tasks above T (least load that covers each task's excess,
       best-fit-decreasing into the room left below T). This usually matches the
       local search's maximum while moving less (no load is shuffled through tasks
       that were never overloaded), and sometimes beats it.

    Each step is a bisection in per-task sorted lists or a vectorised search, so
    planning is O(G log G)-ish for G key groups: G = 32768 at P = 64 plans in tens
    of milliseconds from a range table (``bench/bench_rebalance.py``); with every
    key group on one task (32768 moves needed) it takes about half a second.

    Args:
        key_group_loads: measured load per key group (rows counted by
            ``HashPartitioner.key_group_counts``, or rates), length G = max_parallelism.
        current_assignment: the current key group -> task table (length G).
        parallelism: number of tasks of the operator.
        max_moved_fraction: optional cap on moved load / total load; the plan then
            does the best it can within that budget.
        target_imbalance: optional; if given and reachable, stop at the least-moving
            plan whose imbalance is at most this (e.g. a fraction of the rebalance
            threshold, for hysteresis) instead of minimising the maximum fully. If the
            current imbalance is already at most this, nothing moves.
        load_tolerance: busiest-task loads that differ by less than this fraction of
            the mean task load count as equal, and among them the plan moving the
            least load wins (default 0.01: measured loads are noisy, and shaving the
            last 1 % of imbalance is not worth moving much more state). 0 makes the
            objective strictly "smallest maximum first".

    Returns:
        A :class:`RebalancePlan`.

    Raises:
        ValueError: wrong lengths, task indices out of range, negative or non-finite
            loads, ``parallelism < 1``, or a negative ``max_moved_fraction`` /
            ``target_imbalance`` / ``load_tolerance``.

    Example:
        >>> from sabot._core.partition import default_assignment
        >>> import numpy as np
        >>> loads = np.zeros(8); loads[:2] = 10.0; loads[2:] = 1.0
        >>> plan = plan_assignment(loads, default_assignment(8, 2), 2)
        >>> plan.imbalance_before > plan.imbalance_after
        True
    """
    p = _check_parallelism(parallelism)
    w = _check_loads(key_group_loads)
    current = _check_assignment(current_assignment, len(w), p)
    max_moved_fraction = _check_fraction(max_moved_fraction, "max_moved_fraction")
    target_imbalance = _check_fraction(target_imbalance, "target_imbalance")
    load_tolerance = _check_fraction(load_tolerance, "load_tolerance")

    loads_before = np.bincount(current, weights=w, minlength=p).astype(np.float64)
    total = float(w.sum())
    imb_before = imbalance(loads_before)

    def result(assignment):
        loads_after = np.bincount(assignment, weights=w, minlength=p).astype(np.float64)
        moved = np.flatnonzero(assignment != current)
        plan = RebalancePlan(
            assignment=assignment,
            moves=[(int(k), int(current[k]), int(assignment[k])) for k in moved],
            imbalance_before=imb_before,
            imbalance_after=imbalance(loads_after),
            lower_bound_imbalance=lower_bound_imbalance(w, p),
            moved_load_fraction=float(w[moved].sum()) / total if total > 0 else 0.0,
            task_loads_before=loads_before,
            task_loads_after=loads_after,
        )
        logger.debug("rebalance plan: imbalance %.4f -> %.4f (bound %.4f), %d moves, %.2f%% of load moved",
                     plan.imbalance_before, plan.imbalance_after, plan.lower_bound_imbalance,
                     len(plan.moves), 100 * plan.moved_load_fraction)
        return plan

    if p == 1 or not total / p > 0.0:  # one task, or no load (the mean may underflow)
        return result(current.copy())

    eps = 1e-12 * total
    tol = eps + load_tolerance * total / p
    budget = float("inf") if max_moved_fraction is None else max_moved_fraction * total
    max_before = float(loads_before.max())
    mean = total / p
    bound = _lower_bound_max(w, p)
    items = _sorted_items(w, current, p)
    home = current.tolist()

    def evaluate(assignment):
        if assignment is None:
            return None
        la = np.bincount(assignment, weights=w, minlength=p)
        moved = float(w[assignment != current].sum())
        if moved > budget + eps:
            return None
        return (float(la.max()), moved, assignment)

    if target_imbalance is not None:
        stop_at = mean * (1.0 + target_imbalance)
        if max_before <= stop_at + eps:
            return result(current.copy())
        if stop_at + eps >= bound:
            cands = [evaluate(_local_search(w, home, p, items, eps, budget, stop_at)),
                     evaluate(_relocate(w, home, loads_before, items, stop_at, eps))]
            fits = [c for c in cands if c is not None and c[0] <= stop_at + eps]
            if fits:
                return result(min(fits, key=lambda c: c[1])[2])

    found = []                                  # (max load, moved load, table)

    def consider(assignment):
        c = evaluate(assignment)
        if c is not None:
            found.append(c)
        return c

    consider(_local_search(w, home, p, items, eps, budget, good_enough=bound + tol))
    top = min([c[0] for c in found], default=max_before)
    lo = bound
    if top > lo + eps:
        cand = consider(_relocate(w, home, loads_before, items, lo, eps))
        if cand is None or cand[0] > lo + eps:
            # Bisection for the smallest target relocation reaches (not monotone, so
            # every success is kept, not only the last).
            for _ in range(_TARGET_SEARCH_STEPS):
                if top - lo <= max(eps * 16, tol / 4):
                    break                   # finer than the tolerance buys nothing
                mid = (lo + top) / 2.0
                cand = consider(_relocate(w, home, loads_before, items, mid, eps))
                if cand is not None and cand[0] <= mid + eps:
                    top = mid
                else:
                    lo = mid
    if not found:
        return result(current.copy())
    # Maxima within the tolerance count as equal; then the least moved load wins.
    # Relocating straight to the tolerated level is often the cheapest way there.
    # Near the lower bound the tolerance is measured from the bound, so the plan ends
    # within ``load_tolerance`` of what any table could do.
    best_max = min(c[0] for c in found)
    level = bound + tol if best_max <= bound + tol else best_max + tol
    consider(_relocate(w, home, loads_before, items, level, eps))
    if tol > 0:
        consider(_relocate(w, home, loads_before, items, best_max, eps))
    best = min((c for c in found if c[0] <= level), key=lambda c: (c[1], c[0]))
    if best[0] >= max_before - eps:
        return result(current.copy())
    return result(best[2])
