"""sabot.testing.assert_tables_equal must catch what it claims to catch."""

import pyarrow as pa
import pytest

from sabot.testing import assert_tables_equal


def test_equal_multisets_in_any_order_pass():
    a = pa.table({"k": [1, 2, 2], "v": [0.5, 1.0, 2.0]})
    b = pa.table({"k": [2, 1, 2], "v": [2.0, 0.5, 1.0 + 1e-12]})
    assert_tables_equal(a, b)


@pytest.mark.parametrize("actual,expected,message", [
    (pa.table({"k": [1, 2]}), pa.table({"k": [1, 3]}), "differs at row"),
    (pa.table({"k": [1, 2]}), pa.table({"k": [1, 2, 2]}), "row counts differ"),
    (pa.table({"k": pa.array([1, 2], pa.int32())}), pa.table({"k": [1, 2]}), "types differ"),
    (pa.table({"v": [1.0, None]}), pa.table({"v": [1.0, float("nan")]}), "null in one table only"),
    (pa.table({"v": [1.0, 2.0]}), pa.table({"v": [1.0, 2.1]}), "differs at row 1"),
    (pa.table({"a": [1]}), pa.table({"b": [1]}), "columns differ"),
])
def test_differences_are_reported(actual, expected, message):
    with pytest.raises(AssertionError, match=message):
        assert_tables_equal(actual, expected)


def test_chaos_monkey_deals_every_kind_once_per_round():
    """The kinds come from a shuffled deck: every kind within each round of four events
    (seed 11 drew no rescale in nine independent draws and failed the chaos test)."""
    from sabot.testing import ChaosMonkey

    class FakeClient:
        def jobs(self):
            return [{"job_id": "j", "state": "RUNNING"}]

        def trigger_checkpoint(self, job_id):
            return 1

        def rescale(self, job_id, operator_id, new):
            return {"old_parallelism": 2}

    class FakeCluster:
        worker_pids = [None, None, None]  # nothing runs: kill and pause are refused, and recorded

        def client(self):
            return FakeClient()

    for seed in range(20):
        monkey = ChaosMonkey(FakeCluster(), seed=seed, interval_s=(0, 0), rescalable={"j": "op"})
        report = monkey.run(seconds=5, stop=lambda: len(monkey.events) >= 12)
        events = [e.kind for e in report.events]
        assert len(events) == 12
        for start in range(0, 12, 4):
            assert sorted(events[start:start + 4]) == sorted(ChaosMonkey.KINDS), (seed, events)
        again = ChaosMonkey(FakeCluster(), seed=seed, interval_s=(0, 0), rescalable={"j": "op"})
        assert [e.kind for e in again.run(seconds=5, stop=lambda: len(again.events) >= 12).events] == events
