"""What every benchmark here shares: warm-up, interleaved repetitions, median and spread,
ratios to a baseline measured in the same process, and an optional JSON report.

Interleaving (round-robin over the cases in each repetition) makes machine noise hit
every case alike, so ratios stay meaningful on a shared machine.

    results = measure({"pyarrow": base, "sabot p=1": run1}, repeat=5, check=check)
    print(table(results, baseline="pyarrow", work=rows, unit="records"))
    report = Report("bench_runtime", rows=rows)
    report.add("keyed count", results, baseline="pyarrow")
    report.headline("keyed-count job, 5M records", "keyed count", "table p=1")
    report.write("out.json")

The pieces:

* :func:`measure` times cases (seconds per call). A case that must time only part of its
  work (a run in a child process, a pump after its set-up) returns :class:`Timed`.
* :func:`collect` runs cases the same way (warm-up, interleaved) and keeps what they
  return, for figures that are not the case's own time (detection latency, pause of a
  rescale, throughput read from metrics); :func:`summarize` turns such samples into
  :class:`Stats` of any unit, and :func:`constant` makes a stated target a baseline.
* :class:`Report` writes the JSON that ``bench/run_all.py`` turns into the README's
  table: groups of results, each with its baseline, and the headline figures.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any, NamedTuple


@dataclass
class Stats:
    """One case's samples over its repetitions (seconds, unless ``unit`` says otherwise)."""

    name: str
    median: float
    low: float
    high: float
    samples: list
    unit: str = "s"

    @property
    def spread_pct(self):
        """(largest - smallest) / median, in percent."""
        return (self.high - self.low) / abs(self.median) * 100 if self.median else 0.0

    def as_dict(self):
        return {"median": self.median, "low": self.low, "high": self.high, "spread_pct": self.spread_pct,
                "unit": self.unit, "samples": list(self.samples)}


class Timed(NamedTuple):
    """What a case returns when only part of its work is to be timed: ``seconds`` is its
    time, ``value`` what :func:`measure`'s ``check`` sees."""

    seconds: float
    value: Any = None


def _rounds(cases, repeat, warmup, check, number=1, keep=False):
    """Run every case ``warmup`` rounds untimed, then ``repeat`` rounds, round-robin.

    Returns ``{name: [(seconds, value), ...]}``; seconds are per call (``number`` calls
    per sample) and come from a returned :class:`Timed` when there is one. Values are
    kept only with ``keep`` (else None): a case's output is dropped once checked, so
    results do not pile up in memory while the others run.
    """
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    if number < 1:
        raise ValueError(f"number must be >= 1, got {number}")

    def once(name, fn):
        start = time.perf_counter()
        for _ in range(number):
            out = fn()
        elapsed = (time.perf_counter() - start) / number
        if isinstance(out, Timed):
            elapsed, out = out.seconds, out.value
        if check is not None:
            check(name, out)
        return elapsed, out

    for _ in range(warmup):
        for name, fn in cases.items():
            once(name, fn)
    runs = {name: [] for name in cases}
    for _ in range(repeat):
        for name, fn in cases.items():
            elapsed, out = once(name, fn)
            runs[name].append((elapsed, out if keep else None))
            del out
    return runs


def stats(name, samples, unit="s"):
    """:class:`Stats` (median, smallest, largest) of ``samples``."""
    samples = [float(s) for s in samples]
    if not samples:
        raise ValueError(f"no samples for {name!r}")
    return Stats(name, statistics.median(samples), min(samples), max(samples), samples, unit)


def summarize(samples, unit="s"):
    """``{name: [numbers]}`` -> ``{name: Stats}`` in the order given."""
    return {name: stats(name, values, unit) for name, values in samples.items()}


def constant(name, value, unit="s"):
    """A stated figure (a target, a documented timeout) as a baseline: one sample, no spread."""
    return stats(name, [value], unit)


def measure(cases, *, repeat=5, warmup=1, check=None, number=1):
    """Time each ``cases[name]()`` ``repeat`` times, interleaved, after ``warmup`` untimed rounds.

    ``check(name, result)`` (optional) validates each result (e.g. against a reference), so
    a fast wrong answer never counts. ``number`` calls make one sample (for calls too short
    to time alone); samples are seconds per call. Returns ``{name: Stats}`` in the order given.
    """
    runs = _rounds(cases, repeat, warmup, check, number)
    return {name: stats(name, [s for s, _ in r]) for name, r in runs.items()}


def collect(cases, *, repeat=5, warmup=0, check=None):
    """Run each case like :func:`measure` does (warm-up, interleaved) and return
    ``{name: [what each timed call returned]}``: for figures a case reports itself."""
    runs = _rounds(cases, repeat, warmup, check, keep=True)
    return {name: [v for _, v in r] for name, r in runs.items()}


def ratio(results, case, baseline):
    """Median of ``case`` over the median of ``baseline``."""
    return results[case].median / results[baseline].median


# -- formatting -------------------------------------------------------------------------------


def format_value(value, unit="s"):
    """A figure with its unit, scaled for reading: 0.0415 s -> '41.5 ms', 2.1e9 B/s -> '2.10 GB/s'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if unit == "s":
        a = abs(value)
        if a >= 1:
            return f"{value:.2f} s"
        if a >= 1e-3:
            return f"{value * 1e3:.1f} ms"
        return f"{value * 1e6:.1f} us"
    if unit in ("B", "B/s"):
        for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
            if abs(value) >= scale:
                return f"{value / scale:.2f} {prefix}{unit}"
        return f"{value:.0f} {unit}"
    if unit.endswith("/s"):
        for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
            if abs(value) >= scale:
                return f"{value / scale:.2f} {prefix} {unit}"
        return f"{value:.1f} {unit}"
    if unit in ("", "x"):
        return f"{value:.3g}{unit}"
    return f"{value:.3g} {unit}"


def format_ratio(r):
    """A ratio with two decimals, or two significant digits below 0.1 (0.037x, not 0.04x)."""
    if r is None or (isinstance(r, float) and math.isnan(r)):
        return "n/a"
    return f"{r:.2f}x" if abs(r) >= 0.1 else f"{r:.2g}x"


def table(results, *, baseline, work=None, unit="records", ratio="time / baseline"):
    """A text table: median, spread, rate (``work`` per second, for times) and the ratio
    of each median to ``baseline``'s."""
    base = results[baseline].median
    width = max(len(n) for n in results)
    lines = [f"{'case':<{width}}  {'median':>12}  {'spread':>7}  {'rate':>18}  {ratio} ({baseline})"]
    for name, st in results.items():
        rate = format_value(work / st.median, f"{unit}/s") if work and st.unit == "s" else ""
        lines.append(f"{name:<{width}}  {format_value(st.median, st.unit):>12}  {st.spread_pct:5.0f} %  {rate:>18}  "
                     f"{format_ratio(st.median / base):>6}")
    return "\n".join(lines)


# -- JSON report ------------------------------------------------------------------------------


class Report:
    """The JSON a benchmark writes with ``--json``: its parameters, groups of results (each
    with its baseline) and headlines (the figures the README's table shows).

    Schema::

        {"bench": "bench_partition", "argv": [...], "params": {...},
         "groups": {group: {"baseline": case, "cases": {case: {median, low, high,
                                                                spread_pct, unit, samples, ratio}}}},
         "headlines": [{"title": ..., "group": ..., "case": ..., "baseline": ..., "note": ...}
                       or {"title": ..., "text": ...}],
         "figures": {...}}
    """

    def __init__(self, bench, **params):
        self.bench, self.params, self.groups, self.headlines, self.figures = bench, params, {}, [], {}

    def add(self, group, results, *, baseline=None):
        """Record ``results`` ({name: Stats}) under ``group``; ratios are to ``baseline``."""
        if baseline is not None and baseline not in results:
            raise KeyError(f"baseline {baseline!r} is not one of the results of {group!r}: {list(results)}")
        self.groups[group] = {"baseline": baseline, "results": dict(results)}
        return results

    def headline(self, title, group=None, case=None, *, baseline=None, note="", text=None):
        """A row of the README's table: ``case`` of ``group`` and its ratio to the group's (or
        the given) baseline; or, for a figure with no baseline (a soak run), a ``text``."""
        if text is None:
            if group not in self.groups or case not in self.groups[group]["results"]:
                raise KeyError(f"no case {case!r} in group {group!r}")
            base = baseline or self.groups[group]["baseline"]
            if base is not None and base not in self.groups[group]["results"]:
                raise KeyError(f"no baseline {base!r} in group {group!r}")
            self.headlines.append({"title": title, "group": group, "case": case, "baseline": base, "note": note})
        else:
            self.headlines.append({"title": title, "text": text, "note": note})

    def figure(self, name, value):
        """A figure that is neither a case nor a ratio (rows, a count, a check's outcome)."""
        self.figures[name] = value

    def as_dict(self):
        groups = {}
        for group, g in self.groups.items():
            base = g["results"][g["baseline"]].median if g["baseline"] is not None else None
            groups[group] = {"baseline": g["baseline"], "cases": {
                name: dict(st.as_dict(), ratio=st.median / base if base else None)
                for name, st in g["results"].items()}}
        return {"bench": self.bench, "argv": sys.argv[1:], "params": self.params, "groups": groups,
                "headlines": self.headlines, "figures": self.figures}

    def write(self, path):
        with open(path, "w") as f:
            json.dump(self.as_dict(), f, indent=2, default=str)


def write_json(path, bench, results, *, baseline, **params):
    """Shorthand for one group of results and no headline."""
    report = Report(bench, **params)
    report.add("results", results, baseline=baseline)
    report.write(path)
