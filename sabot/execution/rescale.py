"""What each task needs to carry out a live rescale of one operator (ARCHITECTURE.md section 8).

:func:`build_rescale_messages` turns the plan of ``ExecutionGraph.rescale_operator``
into deployment descriptors for the new tasks and control messages for the old
tasks, the downstream tasks and the upstream tasks; a source rescale ends with
:func:`build_source_resume_messages` once the paused old source tasks answered.
Pure functions: the control plane sends what they return.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sabot.execution.deployment import (
    ChannelTarget,
    RescaleSpec,
    TaskDeploymentDescriptor,
    build_deployment_descriptors,
    partitioning_name,
)
from sabot.execution.messages import AddInputs, Handoff, SourceFinish, SourcePause, SourceStart, SwitchOutput

__all__ = ["RescaleMessages", "build_rescale_messages", "build_source_resume_messages"]


@dataclass
class RescaleMessages:
    """The steps of one live rescale, each ``{task_id: message}``.

    ``deploy``: the new tasks' descriptors (each reads a state channel from every old
    task before its first record, or, for a source, waits held for its epoch);
    ``handoff``: where each old task sends its state; ``add_inputs``: the new channels
    each downstream task reads after the old ones; ``switch_output``: the new routing
    of each upstream task; ``source_pause``: a source's old tasks stop between two units.
    """

    deploy: dict[str, TaskDeploymentDescriptor]
    handoff: dict[str, Handoff] = field(default_factory=dict)
    add_inputs: dict[str, AddInputs] = field(default_factory=dict)
    switch_output: dict[str, SwitchOutput] = field(default_factory=dict)
    source_pause: dict[str, SourcePause] = field(default_factory=dict)

    @property
    def is_source(self) -> bool:
        return bool(self.source_pause)


def state_channel_id(job_id, rescale_id, old_attempt, new_attempt) -> str:
    """The channel an old task's state slice travels on to one new task (attempts named: fenced)."""
    return f"{job_id}/{rescale_id}/state/{old_attempt}->{new_attempt}"


def build_rescale_messages(exec_graph, job_id, operator_id, plan, rescale_id, locations=None, checkpoint=None,
                           assignment=None, assignments=None, min_checkpoint_id=0) -> RescaleMessages:
    """What each task needs to carry out a live rescale.

    Call after ``exec_graph.rescale_operator`` (``plan`` is what it returned), with
    ``locations`` covering the new tasks too. ``assignment`` is an explicit key-group
    table for the operator's new tasks (auto-rebalance); None means the default
    contiguous ranges. ``assignments`` are the key-group tables of other operators
    (the new tasks' outputs route by them). ``min_checkpoint_id`` is the first
    checkpoint the new tasks take part in: barriers of older checkpoints (still
    travelling when the rescale starts) are not awaited by them.
    """
    locations = locations or {}
    old_ids, new_ids = plan["old_task_ids"], plan["new_task_ids"]
    table = None if assignment is None else [int(x) for x in assignment]
    tables = dict(assignments or {})
    tables[operator_id] = table
    tdds = build_deployment_descriptors(exec_graph, job_id, locations, checkpoint=checkpoint, assignments=tables)
    tasks = exec_graph.tasks
    retired = exec_graph.retired_tasks
    add_inputs = _add_inputs(exec_graph, tdds, operator_id, rescale_id)
    if partitioning_name(exec_graph.job_graph.operators[operator_id].operator_type) == "source":
        deploy = {new: tdds[new].with_(rescale=RescaleSpec(rescale_id, source_hold=True)) for new in new_ids}
        return RescaleMessages(
            deploy=deploy, add_inputs=add_inputs,
            source_pause={old: SourcePause(retired[old].attempt_id, rescale_id) for old in old_ids},
        )
    old_attempts = {o: retired[o].attempt_id for o in old_ids}
    new_attempts = {n: tasks[n].attempt_id for n in new_ids}
    deploy = {
        new: tdds[new].with_(
            rescale=RescaleSpec(rescale_id, [state_channel_id(job_id, rescale_id, old_attempts[o], new_attempts[new])
                                             for o in old_ids]),
            min_checkpoint_id=min_checkpoint_id,
        )
        for new in new_ids
    }
    handoff = {}
    for old in old_ids:
        targets = [ChannelTarget(state_channel_id(job_id, rescale_id, old_attempts[old], new_attempts[new]),
                                 *(locations.get(new) or (None, None)))
                   for new in new_ids]
        handoff[old] = Handoff(retired[old].attempt_id, rescale_id, targets, table)
    switch_output = {}
    for edge in exec_graph.inputs_of(operator_id):
        for task in exec_graph.operator_tasks(edge.upstream_operator_id):
            output = next(o for o in tdds[task.task_id].outputs if o.downstream_operator_id == operator_id)
            switch_output[task.task_id] = SwitchOutput(tasks[task.task_id].attempt_id, rescale_id, operator_id,
                                                       output)
    return RescaleMessages(deploy=deploy, handoff=handoff, add_inputs=add_inputs, switch_output=switch_output)


def _add_inputs(exec_graph, tdds, operator_id, rescale_id):
    add_inputs = {}
    for edge in exec_graph.outputs_of(operator_id):
        for task in exec_graph.operator_tasks(edge.downstream_operator_id):
            gate = next(g for g in tdds[task.task_id].inputs if g.upstream_operator_id == operator_id)
            add_inputs[task.task_id] = AddInputs(task.attempt_id, rescale_id, operator_id, list(gate.channel_ids))
    return add_inputs


def build_source_resume_messages(exec_graph, plan, rescale_id, positions) -> dict[str, dict]:
    """After the old source tasks paused: ``{"source_finish": {old_task_id: SourceFinish},
    "source_start": {new_task_id: SourceStart}}``.

    ``positions`` are the split positions each old task paused at; every old task stops
    there and every new task gets all of them and takes the splits it owns under the new
    parallelism (:meth:`sabot.connectors.source.Split.owner`): each split once, from where
    it was.
    """
    if not positions:
        raise ValueError("a source rescale needs the split positions of at least one old source task")
    retired = exec_graph.retired_tasks
    return {
        "source_finish": {old: SourceFinish(retired[old].attempt_id, rescale_id) for old in plan["old_task_ids"]},
        "source_start": {new: SourceStart(exec_graph.tasks[new].attempt_id, rescale_id, list(positions))
                         for new in plan["new_task_ids"]},
    }
