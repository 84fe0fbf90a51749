"""Records that cross the coordinator/task boundary: exact round trips and clear refusals."""

import pytest

from sabot.errors import InvalidRequest
from sabot.execution.deployment import (
    ChannelTarget, CheckpointSpec, InputGateSpec, OutputEdgeSpec, RescaleSpec, TaskDeploymentDescriptor,
    build_deployment_descriptors,
)
from sabot.execution.execution_graph import TaskState
from sabot.execution.ids import AttemptId
from sabot.execution.job_graph import JobGraph, OperatorType, StreamOperatorNode
from sabot.execution.messages import (
    CONTROL_MESSAGES, AddInputs, CheckpointAck, CheckpointDecline, Handoff, SourceStart, SwitchOutput, TaskUpdate,
    checkpoint_answer_from_dict, control_from_dict,
)


def tdd():
    return TaskDeploymentDescriptor(
        job_id="j", attempt_id=AttemptId("map:0", 2), operator={"operator_id": "map", "operator_type": "map"},
        subtask_index=0, parallelism=2, max_parallelism=128,
        inputs=[InputGateSpec("src", "hash", ["a", "b"])],
        outputs=[OutputEdgeSpec("sink", "forward", 128, [ChannelTarget("c", "10.0.0.2", 7000)])],
        checkpoint=CheckpointSpec("file:///tmp/x", 2), rescale=RescaleSpec("r1", ["s1"]),
    )


def test_deployment_descriptor_round_trips_exactly():
    original = tdd()
    data = original.to_dict()
    assert data["attempt_id"] == {"task_id": "map:0", "attempt": 2}
    assert data["outputs"][0]["targets"][0] == {"channel_id": "c", "host": "10.0.0.2", "port": 7000}
    again = TaskDeploymentDescriptor.from_dict(data)
    assert again == original and again.task_id == "map:0" and again.attempt == 2


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.pop("job_id"), "missing 'job_id'"),
    (lambda d: d.update(surprise=1), "unknown field(s) ['surprise']"),
    (lambda d: d.update(subtask_index="0"), "'subtask_index' must be an integer"),
    (lambda d: d.update(subtask_index=True), "'subtask_index' must be an integer"),
    (lambda d: d["outputs"][0]["targets"][0].update(port="x"), "'port'"),
    (lambda d: d.update(attempt_id={"task_id": "t"}), "'attempt_id' must be an object"),
    (lambda d: d.update(inputs={"not": "a list"}), "must be a list"),
])
def test_a_malformed_descriptor_is_refused_naming_the_field(mutate, message):
    data = tdd().to_dict()
    mutate(data)
    with pytest.raises(InvalidRequest) as err:
        TaskDeploymentDescriptor.from_dict(data, "descriptor")
    assert message in str(err.value)


def test_task_update_round_trips_with_its_state_enum():
    update = TaskUpdate("j", AttemptId("t", 1), "op", "name", 0, TaskState.FAILED, error="boom",
                        error_type="ZeroDivisionError", metrics={"rows_in": 3})
    again = TaskUpdate.from_dict(update.to_dict())
    assert again == update and again.state is TaskState.FAILED
    with pytest.raises(InvalidRequest, match="must be one of"):
        TaskUpdate.from_dict(dict(update.to_dict(), state="EXPLODED"))


def test_checkpoint_answers_and_control_messages_are_typed_by_their_tag():
    ack = CheckpointAck("j", AttemptId("t", 0), 3, {"size_bytes": 1})
    decline = CheckpointDecline("j", AttemptId("t", 0), 3, "no")
    assert checkpoint_answer_from_dict(ack.to_dict()) == ack
    assert checkpoint_answer_from_dict(decline.to_dict()) == decline
    with pytest.raises(InvalidRequest, match="unknown checkpoint message type"):
        checkpoint_answer_from_dict({"type": "checkpoint_maybe"})
    messages = [
        Handoff(AttemptId("a", 0), "r", [ChannelTarget("s")], [0, 1]),
        AddInputs(AttemptId("b", 0), "r", "op", ["c1"]),
        SwitchOutput(AttemptId("c", 0), "r", "op", OutputEdgeSpec("op", "hash", 8, [], ["k"])),
        SourceStart(AttemptId("d", 0), "r", [{"splits": {}}]),
    ]
    for message in messages:
        assert control_from_dict(message.to_dict()) == message
    with pytest.raises(InvalidRequest, match="unknown control message type 'explode'"):
        control_from_dict({"type": "explode"})
    assert set(CONTROL_MESSAGES) == {"handoff", "add_inputs", "switch_output", "source_pause", "source_finish",
                                     "source_start"}


def test_descriptors_of_a_plan_name_each_attempt_and_its_channels():
    job = JobGraph(job_name="j", default_parallelism=2)
    src = StreamOperatorNode(operator_type=OperatorType.SOURCE, name="src")
    agg = StreamOperatorNode(operator_type=OperatorType.AGGREGATE, name="agg", key_by=["k"])
    job.add_operator(src)
    job.add_operator(agg)
    job.connect(src.operator_id, agg.operator_id)
    graph = job.to_execution_graph()
    down = graph.operator_tasks(agg.operator_id)[1]
    down.transition("SCHEDULED")
    down.transition("FAILED")
    down.transition("CREATED")  # a restarted attempt gets fresh channels
    tdds = build_deployment_descriptors(graph, "j", locations={down.task_id: ("h", 1)})
    assert tdds[down.task_id].attempt_id == AttemptId(down.task_id, 1)
    sent = [t for s in graph.operator_tasks(src.operator_id) for t in tdds[s.task_id].outputs[0].targets]
    assert {t.channel_id for t in sent} == {
        f"j/{s.task_id}#0->{d.task_id}#{d.attempt}"
        for s in graph.operator_tasks(src.operator_id) for d in graph.operator_tasks(agg.operator_id)}
    assert {(t.host, t.port) for t in sent if t.channel_id.endswith("#1")} == {("h", 1)}
    assert tdds[down.task_id].inputs[0].channel_ids == [
        f"j/{s.task_id}#0->{down.task_id}#1" for s in graph.operator_tasks(src.operator_id)]
