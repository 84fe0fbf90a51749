"""Sabot's own cost per batch and operator, next to what the batch's work costs.

Every operator of a job costs something per batch besides its work: the hand-off to the
operator thread pool and back, routing, the channel to the next operator, the task loop.
This measures that cost and puts it beside the work of the keyed-count job's operators
(``bench_runtime.py``) on a batch of the default size (65,536 rows):

* **per hop**: a job ``source -> k identity maps -> first row of each batch -> collect``,
  embedded at parallelism 1 on one operator thread, operators not chained; the time of
  ``k = 4`` minus the time of ``k = 0``, over 4 x the number of batches, is what one more
  operator adds per batch when it does nothing (and the same with the maps chained: what
  one more member of a chain adds);
* **the work**, in the same process, without Sabot: the filter (``value > 0.5``), the map
  (``value2 = value * 2``) and the keyed aggregate (hash, key groups, count and sum of
  ``value2`` into the state table) over the same batches.

It prints the cost per hop and its share of each operator's time (hop / (hop + work)),
and the job's total share (4 operators' hops over the keyed-count job's work). Interleaved
repetitions, median and spread.

* **small batches**: the keyed-count job (filter, key_by, count and sum) over 2M of the
  rows fed as batches of 4,096 rows, with the filter's small outputs coalesced per channel
  (the default, ``sabot.runtime.output``) and with ``output_coalesce_rows=0`` (every part
  sent as it is): the share of Sabot's per-batch cost that coalescing takes away.

    python bench/bench_overhead.py [--quick] [--repeat 5] [--json out.json]
"""

import argparse
import os
import sys

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _harness import Report, measure, table as results_table  # noqa: E402

from sabot import Stream  # noqa: E402
from sabot._core import partition  # noqa: E402
from sabot._core.state import KeyedAggregateTable  # noqa: E402
from sabot.runtime.embedded import run_job_graph  # noqa: E402
from sabot.runtime.generators import keyed_records  # noqa: E402
from sabot.runtime.output import COALESCE_ROWS  # noqa: E402

BATCH = 65536
KEYS = 100_000
HOPS = 4
MAX_PARALLELISM = 128
SMALL_BATCH = 4096
SMALL_ROWS = 2_000_000


def identity(batch):
    return batch


def value_over_half(batch):
    return pc.greater(batch.column("value"), 0.5)


def first_row(batch):
    return batch.slice(0, 1)


def hops_job(table, hops, chaining=False):
    stream = Stream.from_table(table, batch_size=BATCH)
    for i in range(hops):
        stream = stream.map(identity, name=f"identity{i}")
    return stream.map(first_row, name="first_row").collect(name="sink").to_job_graph("overhead", chaining=chaining)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="100 batches instead of 400")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    args = parser.parse_args()
    nbatches = 100 if args.quick else 400
    batches = [keyed_records(i * BATCH, BATCH, num_keys=KEYS) for i in range(nbatches)]
    table = pa.Table.from_batches(batches)
    filtered = [b.filter(pc.greater(b.column("value"), 0.5)) for b in batches]
    mapped = [b.append_column("value2", pc.multiply(b.column("value"), 2.0)) for b in filtered]

    def run(hops, chaining=False):
        result = run_job_graph(hops_job(table, hops, chaining), threads=1)
        assert result.table("sink").num_rows == nbatches  # every batch went through every hop
        return result

    def aggregate():
        state = KeyedAggregateTable(pa.int64(), [("value2", "count"), ("value2", "sum")], MAX_PARALLELISM,
                                    key_name="key")
        for b in mapped:
            hashes = partition.hash_columns(b, ["key"])
            state.update(b.column("key"), hashes, partition.key_groups(hashes, MAX_PARALLELISM),
                         {"value2": b.column("value2")})
        return state

    small_table = table.slice(0, SMALL_ROWS // (4 if args.quick else 1))

    def small_batches(coalesce_rows):
        job = (Stream.from_table(small_table, batch_size=SMALL_BATCH).filter(value_over_half).key_by("key")
               .aggregate({"value": ["count", "sum"]}).collect(name="sink")
               .to_job_graph("small-batches", output_coalesce_rows=coalesce_rows))
        return run_job_graph(job).table("sink")

    cases = {
        "job, 0 hops": lambda: run(0),
        f"job, {HOPS} hops": lambda: run(HOPS),
        f"job, {HOPS} hops chained": lambda: run(HOPS, chaining=True),
        "filter work": lambda: [b.filter(pc.greater(b.column("value"), 0.5)) for b in batches],
        "map work": lambda: [b.append_column("value2", pc.multiply(b.column("value"), 2.0)) for b in filtered],
        "aggregate work": aggregate,
    }
    results = measure(cases, repeat=args.repeat, warmup=1)
    # the reference for the aggregate's work: pyarrow's group_by gives the same counts and sums
    got = aggregate().result().sort_by("key")
    want = pa.Table.from_batches(mapped).group_by("key").aggregate(
        [("value2", "count"), ("value2", "sum")]).sort_by("key")
    assert got.column("key").equals(want.column("key"))
    assert np.allclose(got.column(2).to_numpy(), want.column("value2_sum").to_numpy())

    # both ways give pyarrow's counts and sums
    want = small_table.filter(pc.greater(small_table.column("value"), 0.5)).group_by("key").aggregate(
        [("value", "count"), ("value", "sum")]).sort_by("key")
    for coalesce_rows in (COALESCE_ROWS, 0):
        got = small_batches(coalesce_rows).sort_by("key")
        assert got.column("key").equals(want.column("key"))
        assert got.column("value_count").equals(want.column("value_count"))
        assert np.allclose(got.column("value_sum").to_numpy(), want.column("value_sum").to_numpy())

    print(f"{nbatches} batches of {BATCH:,} rows, median of {args.repeat} interleaved runs")
    print(results_table(results, baseline="job, 0 hops", work=nbatches, unit="batches"))
    hop = (results[f"job, {HOPS} hops"].median - results["job, 0 hops"].median) / (HOPS * nbatches)
    chained = (results[f"job, {HOPS} hops chained"].median - results["job, 0 hops"].median) / (HOPS * nbatches)
    print(f"one more operator costs {hop * 1e6:.0f} us per batch (the hand-off, routing, channel and task loop); "
          f"chained to its neighbours (sabot.execution.chaining), {chained * 1e6:.0f} us")
    report = Report("bench_overhead", batches=nbatches, batch_rows=BATCH, hops=HOPS, repeat=args.repeat)
    report.add("overhead", results, baseline="job, 0 hops")
    report.figure("hop_seconds_per_batch", hop)
    report.figure("chained_hop_seconds_per_batch", chained)
    total_work = 0.0
    for name in ("filter", "map", "aggregate"):
        work = results[f"{name} work"].median / nbatches
        total_work += work
        print(f"  {name:>9}: work {work * 1e6:6.0f} us per batch; the hop is {hop / (hop + work):5.1%} of its time")
        report.figure(f"{name}_work_seconds_per_batch", work)
    # the source, the chain "filter -> map" and the aggregate each hand a batch on; the map is
    # a member of the filter's chain
    own = 3 * hop + max(chained, 0.0)
    share = own / (own + total_work)
    print(f"  keyed-count job (chained): 3 hops and one chain member per batch are {share:.1%} of its time "
          "per batch (target < 10 %)")
    report.figure("keyed_count_overhead_share", share)
    small_cases = {
        "small batches, coalesced": lambda: small_batches(COALESCE_ROWS),
        "small batches, not coalesced": lambda: small_batches(0),
    }
    small = measure(small_cases, repeat=args.repeat, warmup=1)
    print(results_table(small, baseline="small batches, not coalesced", work=small_table.num_rows, unit="rows"))
    report.add("small_batches", small, baseline="small batches, not coalesced")
    coalesced = small["small batches, coalesced"].median / small["small batches, not coalesced"].median
    print(f"  keyed-count job fed {SMALL_BATCH:,}-row batches: small outputs coalesced take {coalesced:.2f}x "
          "the time of sending every part as it is (output_coalesce_rows=0)")
    report.figure("small_batches_coalesced_over_not", coalesced)
    report.headline("Sabot's own cost per batch and operator (identity hop, embedded, 65,536 rows)",
                    text=f"{hop * 1e6:.0f} us per batch; {share:.1%} of the keyed-count job's time per batch")
    if args.json:
        report.write(args.json)


if __name__ == "__main__":
    main()
