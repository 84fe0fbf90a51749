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
"""

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sabot.nexmark import auctions, bids, events, persons  # noqa: E402


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def write_bytes(nbytes):
    buf = np.empty(nbytes, dtype=np.uint8)
    buf.fill(1)
    return buf


def random_bytes(nbytes, seed):
    return np.random.default_rng(seed).integers(0, 2 ** 64 - 1, size=(nbytes + 7) // 8, dtype=np.uint64,
                                                 endpoint=True)


def run(rows, repeat, config):
    """Interleaved measurements: {name: {"gen": [s], "write": [s], "random": [s], "nbytes": int}}."""
    functions = {"bids": (bids, rows), "persons": (persons, rows // 5), "auctions": (auctions, rows // 5),
                 "events": (events, rows)}
    results = {name: {"gen": [], "write": [], "fill": [], "random": [], "nbytes": 0, "rows": n}
               for name, (_, n) in functions.items()}
    touched = {}
    for name, (fn, n) in functions.items():  # warm-up: caches (pools, channel table), first-touch pages
        results[name]["nbytes"] = fn(0, n, **config).nbytes
        touched[name] = write_bytes(results[name]["nbytes"])
        random_bytes(results[name]["nbytes"], 0)
    for r in range(repeat):
        for name, (fn, n) in functions.items():
            offset = (r + 1) * n  # fresh rows each time: nothing is cached per batch
            nbytes = results[name]["nbytes"]
            seconds, batch = timed(lambda: fn(offset, n, **config))
            assert batch.num_rows == n
            results[name]["gen"].append(seconds)
            del batch
            results[name]["write"].append(timed(lambda: write_bytes(nbytes))[0])
            results[name]["fill"].append(timed(lambda: touched[name].fill(1))[0])
            results[name]["random"].append(timed(lambda: random_bytes(nbytes, r))[0])
    return results


def report(results):
    print(f"rows/s = rows per call / median seconds of {len(results['bids']['gen'])} interleaved runs "
          f"(min..max in brackets); baselines produce the generator's bytes per call")
    print(f"{'function':<10}{'rows/call':>10}{'bytes/row':>10}{'generator rows/s':>29}{'write (same bytes)':>29}"
          f"{'fill (same bytes)':>29}{'random (same bytes)':>29}{'vs write':>10}{'vs fill':>9}{'vs random':>10}")
    for name, r in results.items():
        rows = r["rows"]

        def rate(samples):
            med = statistics.median(samples)
            return rows / med, rows / max(samples), rows / min(samples)

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
    args = parser.parse_args(argv)
    rows = args.rows or (200_000 if args.quick else 1_000_000)
    repeat = args.repeat or (5 if args.quick else 9)
    # the Flink benchmark's rate (10M events/s of event time) and the reference defaults otherwise
    config = {"event_rate": 10_000_000}
    report(run(rows, repeat, config))


if __name__ == "__main__":
    main()
