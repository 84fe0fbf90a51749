"""What a submitted job must be before the coordinator accepts it.

A job arrives as a :class:`~sabot.execution.job_graph.JobGraph`, its ``to_dict()``
(HTTP) or a Stream; it must validate, its user functions must be module-level
references the workers can import, and its ids must not clash with a job this
coordinator already ran (:func:`with_unique_ids`). Every refusal is an
:class:`~sabot.errors.InvalidRequest` naming what was wrong.
"""

from __future__ import annotations

from sabot.cluster.placement import TaskPlacer
from sabot.errors import GraphValidationError, InvalidRequest
from sabot.execution.execution_graph import ExecutionGraph
from sabot.execution.job_graph import JobGraph
from sabot.runtime import functions

__all__ = ["admit", "check_functions", "check_limits", "expand", "parse_job_graph", "validate", "with_unique_ids"]


def parse_job_graph(job_graph):
    """A JobGraph from a JobGraph, a Stream ending in a sink, or ``JobGraph.to_dict()``."""
    if isinstance(job_graph, JobGraph):
        return job_graph
    if hasattr(job_graph, "to_job_graph"):
        return job_graph.to_job_graph(shippable=True)
    if not isinstance(job_graph, dict):
        raise InvalidRequest(
            f"a job must be a JobGraph or its to_dict() form (a JSON object), got {type(job_graph).__name__}")
    if "operators" not in job_graph:
        raise InvalidRequest(
            f"the body is not a job graph: JobGraph.to_dict() has an 'operators' field; got fields "
            f"{sorted(job_graph)[:10]}")
    try:
        return JobGraph.from_dict(job_graph)
    except GraphValidationError as exc:
        raise InvalidRequest(f"invalid job graph: {exc}") from exc
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InvalidRequest(f"the body is not a valid job graph (JobGraph.to_dict()): "
                             f"{type(exc).__name__}: {exc}") from exc


def check_functions(job_graph, check_imports=True, policy=None):
    """Refuse lambdas and closures, references the policy refuses and (``check_imports``)
    references whose top-level package cannot be found here. Nothing is imported: the
    coordinator never runs user code (a module's top-level code runs only on the workers)."""
    policy = policy or functions.FunctionPolicy()
    for op in job_graph.operators.values():
        for ref in functions.references_of(op):
            if ref is None:
                continue
            if functions.is_local(ref):
                raise InvalidRequest(
                    f"operator {op.name!r} uses a lambda or closure ({ref}); only module-level functions "
                    "('package.module:function') can be shipped to workers")
            try:
                policy.check(ref, where=f"operator {op.name!r}: ")
            except functions.FunctionReferenceError as exc:
                raise InvalidRequest(str(exc)) from exc
            if check_imports and not functions.module_exists(ref):
                raise InvalidRequest(
                    f"operator {op.name!r}: function {ref!r}: no module {ref.split(':')[0].split('.')[0]!r} can be "
                    "found here (install the job's package where the coordinator runs, or turn check_imports off)")


def with_unique_ids(job_graph, jobs, operator_ids):
    """Give a resubmitted graph a fresh job id and operator ids.

    Task ids derive from operator ids, and workers, the slot pool and results are
    keyed by task id, so submitting one JobGraph (or JSON file) twice must not
    let the two runs share ids. The copy differs only in those ids.
    """
    ids = list(job_graph.operators)
    if job_graph.job_id not in jobs and not operator_ids.intersection(ids):
        return job_graph
    n = 2
    while f"{job_graph.job_id}-{n}" in jobs or any(f"{o}-{n}" in operator_ids for o in ids):
        n += 1
    rename = {o: f"{o}-{n}" for o in ids}
    data = job_graph.to_dict()
    data["job_id"] = f"{job_graph.job_id}-{n}"
    for op in data["operators"]:
        op["operator_id"] = rename[op["operator_id"]]
        op["upstream_ids"] = [rename[u] for u in op.get("upstream_ids") or []]
        op["downstream_ids"] = [rename[d] for d in op.get("downstream_ids") or []]
    for edge in data.get("edges") or []:
        edge["upstream_id"] = rename[edge["upstream_id"]]
        edge["downstream_id"] = rename[edge["downstream_id"]]
    return JobGraph.from_dict(data)


def check_limits(job_graph, max_operators, max_tasks):
    """Refuse a job over the coordinator's limits before anything of it is expanded."""
    operators = len(job_graph.operators)
    if operators > max_operators:
        raise InvalidRequest(f"job {job_graph.job_name!r} has {operators} operators; this coordinator takes at most "
                             f"{max_operators} per job (max_operators_per_job)")
    tasks = 0
    for op_id, op in job_graph.operators.items():
        parallelism = job_graph.parallelism_of(op_id)
        if isinstance(parallelism, bool) or not isinstance(parallelism, int) or parallelism < 1:
            raise InvalidRequest(f"operator {op.name!r}: parallelism must be an integer >= 1, got {parallelism!r}")
        tasks += parallelism
    if tasks > max_tasks:
        raise InvalidRequest(f"job {job_graph.job_name!r} has {tasks} tasks (its operators' parallelisms added up); "
                             f"this coordinator takes at most {max_tasks} per job (max_tasks_per_job)")


def admit(job_graph, *, max_operators, max_tasks, check_imports, policy=None):
    """Parse a submission and check it against the limits, the graph rules and the function
    rules (pure: runs on a thread for big jobs); the JobGraph and its slot demand."""
    job_graph = parse_job_graph(job_graph)
    check_limits(job_graph, max_operators, max_tasks)
    validate(job_graph, check_imports=check_imports, policy=policy)
    return job_graph, TaskPlacer.demand(job_graph)


def expand(job_graph):
    """The physical plan and the topological order of a job (pure: runs on a thread)."""
    return ExecutionGraph(job_graph), [op.operator_id for op in job_graph.topological_sort()]


def validate(job_graph, check_imports=True, policy=None):
    """Refuse a job graph that does not validate or names functions the workers cannot use."""
    try:
        job_graph.validate()
    except GraphValidationError as exc:
        raise InvalidRequest(f"invalid job graph {getattr(job_graph, 'job_name', '?')!r}: {exc}") from exc
    check_functions(job_graph, check_imports, policy)
