"""Benchmark: the Nexmark generator functions against same-size baselines, in one process.

    python bench/bench_nexmark_generator.py            # 1,000,000 bids / events per call
    python bench/bench_nexmark_generator.py --quick    # 200,000 bids / events per call

For each generator function (``bids``, ``persons``, ``auctions``, ``events``) one call
produces a RecordBatch of N rows (N / 5 for persons and auctions, which are 2% and 6% of
the events); the figure is rows per second (for ``events``, events of all kinds). Next
to it, in the same process and interleaved with it (generator, baselines, generator,
baselines, ...), two baselines produce exactly as many bytes as that batch holds
(``RecordBatch.nbytes``):

* ``write``  ``np.empty(nbytes, uint8).fill(1)``: materialising that much memory at all
             (allocation, page faults, one write pass), as the generator must;
* ``fill``   ``buf.fill(1)`` on a buffer allocated and touched before: one write pass at
             memory bandwidth, without the page faults (which are slow and erratic in
             this VM, so ``write`` swings more than the others);
* ``random`` ``np.random.default_rng(seed).integers(..., dtype=uint64)`` over nbytes / 8
             words: numpy's PCG64 filling the same bytes with random data, the cheapest
             vectorised random generator of that size.

``ratio`` = generator rows/s divided by the rows/s the baseline would reach if a row
cost its bytes at the baseline's speed (1.0 = as fast as the baseline writes those
bytes). Each figure is the median of the interleaved repetitions, with min..max. The
machine is shared: keep runs short and compare ratios rather than absolute figures.
Every generated batch is checked (its row count, and its first rows equal a second call's:
the generator is deterministic per offset).

    python bench/bench_nexmark_generator.py [--quick] [--rows N] [--repeat R] [--json out.json]
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _harness import Report, measure  # noqa: E402

from sabot.nexmark import auctions, bids, events, persons  # noqa: E402


def write_bytes(nbytes):
    buf = np.empty(nbytes, dtype=np.uint8)
    buf.fill(1)
    return buf


def random_bytes(nbytes, seed):
    return np.random.default_rng(seed).integers(0, 2 ** 64 - 1, size=(nbytes + 7) // 8, dtype=np.uint64,
                                                 endpoint=True)


def run(rows, repeat, config):
    """Interleaved measurements: {function: {"gen"|"write"|"fill"|"random": Stats, "nbytes": int, "rows": int}}."""
    functions = {"bids": (bids, rows), "persons": (persons, rows // 5), "auctions": (auctions, rows // 5),
                 "events": (events, rows)}
    info, touched, cases = {}, {}, {}
    for name, (fn, n) in functions.items():
        nbytes = fn(0, n, **config).nbytes
        info[name] = {"nbytes": nbytes, "rows": n}
        touched[name] = write_bytes(nbytes)
        offsets = iter(range(1, 1 << 30))

        def gen(fn=fn, n=n, offsets=offsets):
            offset = next(offsets) * n  # fresh rows each time: nothing is cached per batch
            return offset, fn(offset, n, **config)

        seeds = iter(range(1 << 30))
        cases[f"{name}"] = gen
        cases[f"{name} write"] = lambda nbytes=nbytes: write_bytes(nbytes)
        cases[f"{name} fill"] = lambda name=name: touched[name].fill(1)
        cases[f"{name} random"] = lambda nbytes=nbytes, seeds=seeds: random_bytes(nbytes, next(seeds))

    def check(case, out):
        if case in functions:
            offset, batch = out
            fn, n = functions[case]
            assert batch.num_rows == n, f"{case}: {batch.num_rows} rows, expected {n}"
            again = fn(offset, 16, **config)
            assert batch.slice(0, 16).equals(again), f"{case} is not deterministic at offset {offset}"

    results = measure(cases, repeat=repeat, warmup=1, check=check)
    for name in functions:
        for kind in ("write", "fill", "random"):
            info[name][kind] = results[f"{name} {kind}"]
        info[name]["gen"] = results[name]
    return info, results


def report(results):
    print(f"rows/s = rows per call / median seconds of {len(results['bids']['gen'].samples)} interleaved runs "
          f"(min..max in brackets); baselines produce the generator's bytes per call")
    print(f"{'function':<10}{'rows/call':>10}{'bytes/row':>10}{'generator rows/s':>29}{'write (same bytes)':>29}"
          f"{'fill (same bytes)':>29}{'random (same bytes)':>29}{'vs write':>10}{'vs fill':>9}{'vs random':>10}")
    for name, r in results.items():
        rows = r["rows"]

        def rate(st):
            return rows / st.median, rows / st.high, rows / st.low

        gen, write, fill, rand = rate(r["gen"]), rate(r["write"]), rate(r["fill"]), rate(r["random"])

        def fmt(x):
            return f"{x[0] / 1e6:.2f} M [{x[1] / 1e6:.2f}..{x[2] / 1e6:.2f}]"

        print(f"{name:<10}{rows:>10,}{r['nbytes'] / rows:>10.0f}{fmt(gen):>29}{fmt(write):>29}{fmt(fill):>29}"
              f"{fmt(rand):>29}{gen[0] / write[0]:>10.3f}{gen[0] / fill[0]:>9.3f}{gen[0] / rand[0]:>10.3f}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="200,000 bids / events per call, 5 repetitions")
    parser.add_argument("--rows", type=int, default=None, help="bids / events per call (default 1,000,000)")
    parser.add_argument("--repeat", type=int, default=None, help="interleaved repetitions (default 9)")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    args = parser.parse_args(argv)
    rows = args.rows or (200_000 if args.quick else 1_000_000)
    repeat = args.repeat or (5 if args.quick else 9)
    # the Flink benchmark's rate (10M events/s of event time) and the reference defaults otherwise
    config = {"event_rate": 10_000_000}
    info, results = run(rows, repeat, config)
    report(info)
    doc = Report("bench_nexmark_generator", rows=rows, repeat=repeat, **config)
    for name, r in info.items():
        doc.add(name, {"generator": r["gen"], "write": r["write"], "fill": r["fill"], "random": r["random"]},
                baseline="random")
        doc.figure(f"{name}_bytes_per_row", r["nbytes"] / r["rows"])
    doc.headline(f"Nexmark events(), {rows:,} events per call, vs numpy PCG64 filling the same bytes",
                 "events", "generator",
                 note=f"{rows / info['events']['gen'].median / 1e6:.2f} M events/s")
    if args.json:
        doc.write(args.json)


if __name__ == "__main__":
    main()
