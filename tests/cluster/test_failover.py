"""Failover, in-process and deterministic: which tasks restart, when, where, from which
checkpoint; and when a job fails instead (TestingCluster: fake workers, manual clock)."""

from sabot.cluster.failover import FailDecision, FailureHandler, RestartDecision
from sabot.cluster.restart import restart_strategy_from_config
from sabot.execution.job_graph import JobGraph, OperatorType, StreamOperatorNode
from sabot.testing import TestingCluster
from tests.cluster.plans import pipeline, tasks_of


def deployed_attempts(tc, job):
    return {t.task_id: t.attempt for _, t in tc.gateway.deployed if t.task_id in job.exec_graph.tasks}


async def running_job(tc, graph):
    job_id = await tc.coordinator.submit_stream_job(graph)
    tc.report_all(job_id, "RUNNING")
    return tc.job(job_id)


def test_a_lost_worker_restarts_the_region_on_free_slots_after_the_delay(arun, tmp_path):
    async def scenario():
        async with TestingCluster(checkpoint_dir=str(tmp_path)) as tc:
            tc.add_worker("w1", slots=2)
            tc.add_worker("w2", slots=2)
            strategy = {"type": "fixed-delay", "attempts": 3, "delay_ms": 500}
            job = await running_job(tc, pipeline(2, restart_strategy=strategy, checkpoint_interval_ms=60_000))
            checkpoint_id = await tc.coordinator.trigger_checkpoint(job.job_id)
            tc.acknowledge(job.job_id, checkpoint_id)
            await tc.settle()
            assert job.checkpointing.latest["checkpoint_id"] == checkpoint_id
            on_w2 = {t.task_id for t in job.exec_graph.tasks.values() if t.node_id == "w2"}
            deployed_before = len(tc.gateway.deployed)
            tc.kill_worker("w2")
            await tc.settle()
            assert job.state.value == "RESTARTING"
            # the survivors of the region were canceled on w1; nothing is redeployed before the delay
            assert {t for n, t in tc.gateway.canceled} == set(job.exec_graph.tasks) - on_w2
            await tc.advance(0.4)
            assert len(tc.gateway.deployed) == deployed_before
            await tc.advance(0.2)
            assert job.state.value == "RUNNING" and job.restarts == 1
            redeployed = tc.gateway.deployed[deployed_before:]
            assert sorted(t.task_id for _, t in redeployed) == sorted(job.exec_graph.tasks)
            assert all(t.attempt == 1 for _, t in redeployed)
            assert {n for n, _ in redeployed} == {"w1"}  # the only live worker, 2 slots: room for all
            assert {t.restore.checkpoint["checkpoint_id"] for _, t in redeployed} == {checkpoint_id}
            assert "w2" in job.last_failure["error"] and "lost" in job.last_failure["error"]
            assert job.restart_history[0]["checkpoint_id"] == checkpoint_id

    arun(scenario())


def test_a_restart_waits_for_a_replacement_worker(arun):
    async def scenario():
        async with TestingCluster(restart_slot_wait_s=30) as tc:
            tc.add_worker("w1", slots=2)
            job = await running_job(tc, pipeline(2))
            tc.kill_worker("w1")
            await tc.advance(5)
            assert job.state.value == "RESTARTING"
            before = len(tc.gateway.deployed)
            tc.add_worker("w2", slots=2)
            await tc.settle()
            assert job.state.value == "RUNNING"
            assert {n for n, _ in tc.gateway.deployed[before:]} == {"w2"}

    arun(scenario())


def test_no_slots_within_the_wait_fails_the_job(arun):
    async def scenario():
        async with TestingCluster(restart_slot_wait_s=3) as tc:
            tc.add_worker("w1", slots=2)
            job = await running_job(tc, pipeline(2))
            tc.kill_worker("w1")
            await tc.advance(3.5)
            assert job.state.value == "FAILED"
            assert "no free slots" in job.failure["error"] and "within 3 s" in job.failure["error"]

    arun(scenario())


def test_an_exhausted_restart_strategy_fails_the_job(arun):
    async def scenario():
        async with TestingCluster() as tc:
            tc.add_worker("w1", slots=2)
            strategy = {"type": "fixed-delay", "attempts": 1, "delay_ms": 100}
            job = await running_job(tc, pipeline(1, restart_strategy=strategy))
            agg = tasks_of(job, "aggregate")[0].task_id
            tc.report(job.job_id, agg, "FAILED", error="boom", error_type="ZeroDivisionError")
            await tc.advance(0.2)
            assert job.state.value == "RUNNING" and job.restarts == 1
            tc.report_all(job.job_id, "RUNNING")
            tc.report(job.job_id, agg, "FAILED", error="boom again", error_type="ZeroDivisionError")
            await tc.settle()
            assert job.state.value == "FAILED"
            assert "boom again" in job.failure["error"] and "exhausted after 1 restart" in job.failure["error"]
            assert tc.coordinator.slot_pool.free_slots == 2

    arun(scenario())


def test_a_broken_channel_gives_the_peers_loss_the_chance_to_be_named(arun):
    async def scenario():
        async with TestingCluster() as tc:
            tc.add_worker("w1", slots=1)
            tc.add_worker("w2", slots=1)
            job = await running_job(tc, pipeline(2))
            victim = next(t for t in job.exec_graph.tasks.values() if t.node_id == "w1")
            tc.report(job.job_id, victim.task_id, "FAILED", error="channel closed", error_type="ChannelClosed")
            await tc.settle()
            assert job.state.value == "RUNNING"  # not yet: a broken channel is usually a symptom
            tc.kill_worker("w2")
            await tc.advance(1.0)
            assert job.failures == 1 and "w2" in job.last_failure["error"]

    arun(scenario())


def test_reports_of_a_superseded_attempt_are_dropped(arun):
    async def scenario():
        async with TestingCluster() as tc:
            tc.add_worker("w1", slots=2)
            job = await running_job(tc, pipeline(1))
            agg = tasks_of(job, "aggregate")[0]
            tc.report(job.job_id, agg.task_id, "FAILED", error="x", error_type="ValueError")
            await tc.advance(0.2)
            assert agg.attempt == 1 and job.state.value == "RUNNING"
            tc.report(job.job_id, agg.task_id, "FAILED", error="old news", attempt=0)
            await tc.advance(0.2)
            assert job.failures == 1 and job.state.value == "RUNNING"

    arun(scenario())


def two_pipelines():
    job = JobGraph(job_name="two", default_parallelism=1)
    nodes = {}
    for name, kind in [("a_src", OperatorType.SOURCE), ("a_map", OperatorType.MAP),
                       ("b_src", OperatorType.SOURCE), ("b_map", OperatorType.MAP)]:
        nodes[name] = StreamOperatorNode(operator_type=kind, name=name)
        job.add_operator(nodes[name])
    job.connect(nodes["a_src"].operator_id, nodes["a_map"].operator_id)
    job.connect(nodes["b_src"].operator_id, nodes["b_map"].operator_id)
    return job, nodes


class _Job:
    def __init__(self, graph, strategy, failures=0, restarts=0):
        self.exec_graph = graph.to_execution_graph()
        self.restart_strategy = strategy
        self.failures = failures
        self.restarts = restarts


def test_the_failure_handler_restarts_only_the_failed_region():
    graph, nodes = two_pipelines()
    job = _Job(graph, restart_strategy_from_config({"type": "fixed-delay", "attempts": 2, "delay_ms": 30}))
    failed = job.exec_graph.operator_tasks(nodes["a_map"].operator_id)[0].task_id
    decision = FailureHandler().decide(job, [failed], "boom")
    assert isinstance(decision, RestartDecision) and decision.delay_s == 0.03 and decision.failure_number == 1
    assert set(decision.operator_ids) == {nodes["a_src"].operator_id, nodes["a_map"].operator_id}
    # a task of the region already being restarted: nothing to do
    assert FailureHandler().decide(job, [failed], "again", restarting=decision.task_ids) is None
    job.failures = 2
    assert isinstance(FailureHandler().decide(job, [failed], "boom"), FailDecision)
