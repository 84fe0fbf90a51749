"""What every benchmark here shares: warm-up, interleaved repetitions, median and spread,
ratios to a baseline measured in the same process, and an optional JSON report.

Interleaving (round-robin over the cases in each repetition) makes machine noise hit
every case alike, so ratios stay meaningful on a shared machine.

    results = measure({"pyarrow": base, "sabot p=1": run1}, repeat=5)
    print(table(results, baseline="pyarrow", work=rows, unit="records"))
    write_json("out.json", "bench_runtime", results, baseline="pyarrow")
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass


@dataclass
class Stats:
    """Seconds of one case over its repetitions."""

    name: str
    median: float
    low: float
    high: float
    samples: list

    @property
    def spread_pct(self):
        """(slowest - fastest) / median, in percent."""
        return (self.high - self.low) / self.median * 100 if self.median else 0.0


def measure(cases, *, repeat=5, warmup=1, check=None):
    """Time each ``cases[name]()`` ``repeat`` times, interleaved, after ``warmup`` untimed rounds.

    ``check(name, result)`` (optional) validates each result (e.g. against a reference), so
    a fast wrong answer never counts. Returns ``{name: Stats}`` in the order given.
    """
    for _ in range(warmup):
        for name, fn in cases.items():
            out = fn()
            if check is not None:
                check(name, out)
    samples = {name: [] for name in cases}
    for _ in range(repeat):
        for name, fn in cases.items():
            start = time.perf_counter()
            out = fn()
            samples[name].append(time.perf_counter() - start)
            if check is not None:
                check(name, out)
    return {name: Stats(name, statistics.median(s), min(s), max(s), s) for name, s in samples.items()}


def table(results, *, baseline, work=None, unit="records", ratio="time / baseline"):
    """A text table: median, spread, rate (``work`` per second) and the ratio to ``baseline``."""
    base = results[baseline].median
    width = max(len(n) for n in results)
    lines = [f"{'case':<{width}}  {'median':>10}  {'spread':>7}  {'rate':>16}  {ratio}"]
    for name, st in results.items():
        rate = f"{work / st.median / 1e6:9.2f} M {unit}/s" if work else ""
        lines.append(f"{name:<{width}}  {st.median * 1e3:8.1f} ms  {st.spread_pct:5.0f} %  {rate:>16}  "
                     f"{st.median / base:5.2f}x")
    return "\n".join(lines)


def write_json(path, bench, results, *, baseline, **extra):
    """Write the results (seconds, and the ratio of each median to the baseline's) as JSON."""
    base = results[baseline].median
    doc = {"bench": bench, "baseline": baseline, **extra,
           "cases": {name: dict(asdict(st), ratio=st.median / base) for name, st in results.items()}}
    with open(path, "w") as f:
        json.dump(doc, f, indent=2)
