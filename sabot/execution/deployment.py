"""Task deployment descriptors (TDDs): what a worker needs to run one task.

A TDD is plain JSON: the operator, the task's place among its peers, the channel
ids it reads, and for each output edge the partitioning and the address of every
target subtask's data server. Both the embedded executor and the coordinator
build them here, so a job runs the same way in one process or across many.
"""


def partitioning_name(partitioning):
    name = getattr(partitioning, "value", partitioning)
    return str(name).lower()


def channel_id(job_id, upstream_task, downstream_task):
    """One channel per (sender attempt, receiver attempt): a restart gets fresh channels."""
    return (
        f"{job_id}/{upstream_task.task_id}#{upstream_task.attempt}"
        f"->{downstream_task.task_id}#{downstream_task.attempt}"
    )


def _pairs(partitioning, upstream_tasks, downstream_tasks):
    """(upstream subtask, downstream subtask) pairs that a channel connects."""
    if partitioning == "forward":
        if len(upstream_tasks) != len(downstream_tasks):
            raise ValueError(
                f"a FORWARD edge needs equal parallelism, got {len(upstream_tasks)} -> "
                f"{len(downstream_tasks)}"
            )
        return [(i, i) for i in range(len(upstream_tasks))]
    return [(u, d) for u in range(len(upstream_tasks)) for d in range(len(downstream_tasks))]


def build_deployment_descriptors(exec_graph, job_id, locations=None, restore=None, checkpoint=None,
                                 assignments=None):
    """Return ``{task_id: tdd}`` for every live task of ``exec_graph``.

    Args:
        exec_graph: the job's ExecutionGraph.
        job_id: the job's id (channel ids are scoped by it).
        locations: ``{task_id: (host, port) | None}``, the data-server address of
            the worker hosting each task; None or missing means this process.
        restore: optional restore spec handed to every task: ``{"storage": uri,
            "checkpoint": CompletedCheckpoint.to_dict(), "assignment": None}``; each
            task reads its own key groups and subtask state from it.
        checkpoint: optional ``{"storage": uri, "retain": n}``: where tasks write
            their snapshots when a checkpoint barrier passes.
        assignments: optional ``{operator_id: key-group table}`` for keyed operators
            whose key groups were rebalanced away from the default ranges.
    """
    locations = locations or {}
    assignments = {op: [int(x) for x in table] for op, table in (assignments or {}).items() if table is not None}
    operators = exec_graph.job_graph.operators
    tdds = {}
    for op_id, node in operators.items():
        node_dict = node.to_dict()
        for task in exec_graph.operator_tasks(op_id):
            tdds[task.task_id] = {
                "job_id": job_id,
                "task_id": task.task_id,
                "attempt": task.attempt,
                "operator": node_dict,
                "subtask_index": task.subtask_index,
                "parallelism": task.parallelism,
                "max_parallelism": task.max_parallelism,
                "inputs": [],
                "outputs": [],
                "restore": restore,
                "checkpoint": checkpoint,
                "assignment": assignments.get(op_id),
            }
    for edge in exec_graph.edges:
        partitioning = partitioning_name(edge.partitioning)
        ups = exec_graph.operator_tasks(edge.upstream_operator_id)
        downs = exec_graph.operator_tasks(edge.downstream_operator_id)
        pairs = _pairs(partitioning, ups, downs)
        targets = {u: [] for u in range(len(ups))}
        sources = {d: [] for d in range(len(downs))}
        for u, d in pairs:
            cid = channel_id(job_id, ups[u], downs[d])
            host_port = locations.get(downs[d].task_id)
            host, port = host_port if host_port else (None, None)
            targets[u].append({"channel_id": cid, "host": host, "port": port})
            sources[d].append(cid)
        key_by = list(edge.key_by) if edge.key_by else None
        max_parallelism = operators[edge.downstream_operator_id].max_parallelism
        for u, task in enumerate(ups):
            tdds[task.task_id]["outputs"].append(
                {
                    "downstream_operator_id": edge.downstream_operator_id,
                    "partitioning": partitioning,
                    "key_by": key_by,
                    "max_parallelism": max_parallelism,
                    "targets": targets[u],
                    "assignment": assignments.get(edge.downstream_operator_id) if partitioning == "hash" else None,
                }
            )
        for d, task in enumerate(downs):
            tdds[task.task_id]["inputs"].append(
                {
                    "upstream_operator_id": edge.upstream_operator_id,
                    "partitioning": partitioning,
                    "channel_ids": sources[d],
                }
            )
    return tdds


def build_rescale_messages(exec_graph, job_id, operator_id, plan, rescale_id, locations=None, checkpoint=None,
                           assignment=None, assignments=None, min_checkpoint_id=0):
    """What each task needs to carry out a live rescale (ARCHITECTURE.md section 8).

    Call after ``exec_graph.rescale_operator`` (``plan`` is what it returned), with
    ``locations`` covering the new tasks too. ``assignment`` is an explicit key-group
    table for the operator's new tasks (auto-rebalance); None means the default
    contiguous ranges.

    ``min_checkpoint_id``: the first checkpoint the new tasks take part in; barriers of
    older checkpoints (still travelling when the rescale starts) are not awaited by them.

    Returns a dict with:
        ``deploy``: ``{task_id: tdd}`` of the new tasks (each reads a state channel
            from every old task before its first record),
        ``handoff``: ``{old_task_id: message}``: where each old task sends its state,
        ``add_inputs``: ``{downstream_task_id: message}``: channels from the new tasks,
        ``switch_output``: ``{upstream_task_id: message}``: the new output routing.

    For a source operator there is no state and no upstream: the new tasks are
    deployed held (``rescale.source_hold``), ``handoff`` and ``switch_output`` are
    empty, and ``source_pause`` (``{old_task_id: message}``) asks each old task for
    its next unit; :func:`build_source_resume_messages` then gives the frontier.
    ``assignments`` are the key-group tables of other operators (the new tasks'
    outputs route by them).
    """
    locations = locations or {}
    old_ids, new_ids = plan["old_task_ids"], plan["new_task_ids"]
    table = None if assignment is None else [int(x) for x in assignment]
    tables = dict(assignments or {})
    tables[operator_id] = table
    tdds = build_deployment_descriptors(exec_graph, job_id, locations, checkpoint=checkpoint, assignments=tables)
    if partitioning_name(exec_graph.job_graph.operators[operator_id].operator_type) == "source":
        return _source_rescale_messages(exec_graph, tdds, operator_id, old_ids, new_ids, rescale_id)

    def state_channel(old, new):
        return f"{job_id}/{rescale_id}/state/{old}->{new}"

    deploy = {}
    for new in new_ids:
        tdd = tdds[new]
        tdd["rescale"] = {"rescale_id": rescale_id, "state_channel_ids": [state_channel(o, new) for o in old_ids]}
        tdd["min_checkpoint_id"] = min_checkpoint_id  # older barriers may still be in flight
        deploy[new] = tdd
    handoff = {}
    for old in old_ids:
        targets = []
        for new in new_ids:
            host, port = locations.get(new) or (None, None)
            targets.append({"channel_id": state_channel(old, new), "host": host, "port": port})
        handoff[old] = {"type": "handoff", "rescale_id": rescale_id, "state_targets": targets, "assignment": table}
    add_inputs, switch_output = {}, {}
    for edge in exec_graph.outputs_of(operator_id):
        for task in exec_graph.operator_tasks(edge.downstream_operator_id):
            gate = next(g for g in tdds[task.task_id]["inputs"] if g["upstream_operator_id"] == operator_id)
            add_inputs[task.task_id] = {
                "type": "add_inputs", "rescale_id": rescale_id,
                "upstream_operator_id": operator_id, "channel_ids": gate["channel_ids"],
            }
    for edge in exec_graph.inputs_of(operator_id):
        for task in exec_graph.operator_tasks(edge.upstream_operator_id):
            output = next(o for o in tdds[task.task_id]["outputs"] if o["downstream_operator_id"] == operator_id)
            switch_output[task.task_id] = {
                "type": "switch_output", "rescale_id": rescale_id,
                "downstream_operator_id": operator_id, "output": output,
            }
    return {"deploy": deploy, "handoff": handoff, "add_inputs": add_inputs, "switch_output": switch_output}


def _add_inputs(exec_graph, tdds, operator_id, rescale_id):
    add_inputs = {}
    for edge in exec_graph.outputs_of(operator_id):
        for task in exec_graph.operator_tasks(edge.downstream_operator_id):
            gate = next(g for g in tdds[task.task_id]["inputs"] if g["upstream_operator_id"] == operator_id)
            add_inputs[task.task_id] = {
                "type": "add_inputs", "rescale_id": rescale_id,
                "upstream_operator_id": operator_id, "channel_ids": gate["channel_ids"],
            }
    return add_inputs


def _source_rescale_messages(exec_graph, tdds, operator_id, old_ids, new_ids, rescale_id):
    deploy = {}
    for new in new_ids:
        tdd = tdds[new]
        tdd["rescale"] = {"rescale_id": rescale_id, "source_hold": True}
        deploy[new] = tdd
    return {
        "deploy": deploy,
        "handoff": {},
        "add_inputs": _add_inputs(exec_graph, tdds, operator_id, rescale_id),
        "switch_output": {},
        "source_pause": {old: {"type": "source_pause", "rescale_id": rescale_id} for old in old_ids},
    }


def source_frontier(replies):
    """The frontier of a source rescale: the highest next unit the paused old tasks answered."""
    units = [r["next_unit"] for r in replies]
    if not units:
        raise ValueError("a source rescale needs the reply of at least one old source task")
    return max(units)


def build_source_resume_messages(plan, rescale_id, frontier):
    """After the old source tasks paused: ``{"source_finish": {old_task_id: message},
    "source_start": {new_task_id: message}}``.

    Old task ``i`` emits its units below ``frontier`` and finishes; new task ``j`` of
    ``P'`` emits units ``frontier + j + n * P'``. Together every unit once.
    """
    new_ids = plan["new_task_ids"]
    return {
        "source_finish": {old: {"type": "source_finish", "rescale_id": rescale_id, "frontier": int(frontier)}
                          for old in plan["old_task_ids"]},
        "source_start": {
            new: {"type": "source_start", "rescale_id": rescale_id,
                  "epoch": {"start": int(frontier), "stride": len(new_ids), "offset": j}}
            for j, new in enumerate(new_ids)
        },
    }
