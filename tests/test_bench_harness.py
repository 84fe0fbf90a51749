"""bench/_harness.py's statistics and interleaving, and bench/run_all.py's table builder.

Fake cases only: no timed assertions (the figures a case reports come from a fake clock
or from :class:`Timed`, never from how fast this machine happens to be).
"""

import json
import os
import statistics
import sys

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")
sys.path.insert(0, BENCH)

import _harness  # noqa: E402
import run_all  # noqa: E402
from _harness import Report, Timed, collect, constant, format_value, measure, stats, summarize  # noqa: E402


def test_interleaving_order_warmup_and_check():
    calls, checked = [], []

    def case(name):
        def fn():
            calls.append(name)
            return name.upper()
        return fn

    measure({"a": case("a"), "b": case("b"), "c": case("c")}, repeat=3, warmup=2,
            check=lambda name, out: checked.append((name, out)))
    # two untimed rounds, then three timed ones; round-robin, never a run of one case
    assert calls == ["a", "b", "c"] * 5
    # every result is checked, warm-up included, with the case's own output
    assert checked == [(n, n.upper()) for n in ["a", "b", "c"] * 5]


def test_a_failing_check_stops_the_measurement():
    def check(name, out):
        if name == "wrong":
            raise AssertionError("wrong answer")

    with pytest.raises(AssertionError, match="wrong answer"):
        measure({"right": lambda: 1, "wrong": lambda: 2}, repeat=3, warmup=0, check=check)


def test_timed_cases_report_their_own_seconds_and_statistics():
    fake = {"base": iter([2.0, 4.0, 3.0, 100.0]), "fast": iter([1.0, 1.5, 0.5, 1.0])}
    results = measure({name: (lambda it=it: Timed(next(it), "ok")) for name, it in fake.items()},
                      repeat=4, warmup=0)
    base = [2.0, 4.0, 3.0, 100.0]
    assert results["base"].samples == base
    assert results["base"].median == statistics.median(base) == 3.5
    assert (results["base"].low, results["base"].high) == (2.0, 100.0)
    assert results["base"].spread_pct == pytest.approx((100.0 - 2.0) / 3.5 * 100)
    assert results["fast"].median == 1.0
    assert _harness.ratio(results, "fast", "base") == pytest.approx(1.0 / 3.5)


def test_number_divides_the_time_by_the_calls(monkeypatch):
    ticks = iter(range(0, 1000, 10))  # a fake clock: 10 s between readings
    monkeypatch.setattr(_harness.time, "perf_counter", lambda: next(ticks))
    calls = []
    results = measure({"x": lambda: calls.append(1)}, repeat=2, warmup=0, number=5)
    assert len(calls) == 10
    assert results["x"].samples == [2.0, 2.0]  # 10 s for 5 calls


def test_collect_keeps_what_cases_return_and_summarize_makes_stats():
    seq = iter(range(100))
    out = collect({"kill": lambda: {"detect": next(seq)}, "stop": lambda: {"detect": next(seq)}},
                  repeat=3, warmup=1)
    # warm-up took 0 and 1; the timed rounds interleave kill, stop, kill, ...
    assert [o["detect"] for o in out["kill"]] == [2, 4, 6]
    assert [o["detect"] for o in out["stop"]] == [3, 5, 7]
    s = summarize({"kill": [o["detect"] for o in out["kill"]]}, unit="ms")
    assert (s["kill"].median, s["kill"].low, s["kill"].high, s["kill"].unit) == (4, 2, 6, "ms")
    assert constant("target", 1.0).spread_pct == 0


def test_bad_arguments_say_what_was_wrong():
    with pytest.raises(ValueError, match="repeat must be >= 1"):
        measure({"x": lambda: None}, repeat=0)
    with pytest.raises(ValueError, match="no samples"):
        stats("x", [])
    report = Report("b")
    with pytest.raises(KeyError, match="baseline 'nope'"):
        report.add("g", {"x": constant("x", 1.0)}, baseline="nope")
    report.add("g", {"x": constant("x", 1.0)}, baseline="x")
    with pytest.raises(KeyError, match="no case 'y'"):
        report.headline("t", "g", "y")


def test_format_value():
    assert format_value(0.0415) == "41.5 ms"
    assert format_value(2.5) == "2.50 s"
    assert format_value(12e-6) == "12.0 us"
    assert format_value(2.1e9, "B/s") == "2.10 GB/s"
    assert format_value(240e6, "B") == "240.00 MB"
    assert format_value(12.3e6, "ops/s") == "12.30 M ops/s"
    assert _harness.format_ratio(1.333) == "1.33x" and _harness.format_ratio(0.0373) == "0.037x"


def sample_report(tmp_path):
    """A report as a script writes it: two groups, a headline with its group's baseline,
    one with another baseline, and a soak-style text headline."""
    report = Report("bench_fake", rows=1000)
    report.add("partition", {"memcpy": stats("memcpy", [0.030, 0.031, 0.032]),
                             "sabot": stats("sabot", [0.040, 0.041, 0.045]),
                             "polars": stats("polars", [0.25, 0.26, 0.27])}, baseline="memcpy")
    report.add("rate", summarize({"sabot": [10e6, 11e6], "embedded": [20e6, 22e6]}, unit="records/s"),
               baseline="embedded")
    report.headline("repartition", "partition", "sabot", note="target <= 2x")
    report.headline("repartition vs polars", "partition", "sabot", baseline="polars")
    report.headline("throughput", "rate", "sabot")
    report.headline("chaos", text="0 rows missing, 0 duplicated")
    path = tmp_path / "fake.json"
    report.write(str(path))
    return json.loads(path.read_text())


def test_report_json_schema(tmp_path):
    doc = sample_report(tmp_path)
    assert doc["bench"] == "bench_fake" and doc["params"] == {"rows": 1000}
    cases = doc["groups"]["partition"]["cases"]
    assert doc["groups"]["partition"]["baseline"] == "memcpy"
    assert cases["sabot"]["median"] == 0.041 and cases["sabot"]["samples"] == [0.040, 0.041, 0.045]
    assert cases["sabot"]["ratio"] == pytest.approx(0.041 / 0.031)
    assert cases["memcpy"]["ratio"] == 1.0


def test_run_all_rows_from_sample_reports(tmp_path):
    doc = sample_report(tmp_path)
    rows = run_all.rows_of(doc, "python bench/bench_fake.py --quick")
    assert rows == [
        ("repartition", "python bench/bench_fake.py --quick",
         "41.0 ms (spread 12 %) = 1.32× memcpy (31.0 ms); target <= 2x"),
        ("repartition vs polars", "python bench/bench_fake.py --quick",
         "41.0 ms (spread 12 %) = 0.16× polars (260.0 ms)"),
        ("throughput", "python bench/bench_fake.py --quick",
         "10.50 M records/s (spread 10 %) = 0.50× embedded (21.00 M records/s)"),
        ("chaos", "python bench/bench_fake.py --quick", "0 rows missing, 0 duplicated"),
    ]
    table = run_all.markdown(rows + [run_all.failed_row(run_all.Script("bench_x.py"), "python bench/bench_x.py",
                                                         "exit 1: boom | bad")])
    lines = table.splitlines()
    assert lines[0] == "| benchmark | command | result |" and lines[1] == "|---|---|---|"
    assert lines[2] == ("| repartition | `python bench/bench_fake.py --quick` | "
                        "41.0 ms (spread 12 %) = 1.32× memcpy (31.0 ms); target <= 2x |")
    assert lines[-1] == "| bench_x | `python bench/bench_x.py` | **FAILED**: exit 1: boom \\| bad |"
    assert run_all.rows_of({"bench": "b", "headlines": []}, "c") == [("b", "c", "no headline in the report")]


def test_readme_table_rows_of_the_scripts_run_are_replaced_the_others_kept():
    old = ("\n| benchmark | command | result |\n|---|---|---|\n"
           "| old graph | `python bench/bench_graph.py` | 1 ms |\n"
           "| old state | `python bench/bench_state.py` | 2 ms |\n"
           "| by hand | `python other.py` | 3 ms |\n")
    text = f"intro\n{run_all.BEGIN}{old}{run_all.END}\nafter\n"
    rows = [("new state", "python bench/bench_state.py --quick", "4 ms"),
            ("new partition", "python bench/bench_partition.py", "5 ms")]
    out = run_all.replace_readme_table(text, rows, {"bench_state", "bench_partition"})
    assert out == (f"intro\n{run_all.BEGIN}\n| benchmark | command | result |\n|---|---|---|\n"
                   "| old graph | `python bench/bench_graph.py` | 1 ms |\n"
                   "| new partition | `python bench/bench_partition.py` | 5 ms |\n"
                   "| new state | `python bench/bench_state.py --quick` | 4 ms |\n"
                   "| by hand | `python other.py` | 3 ms |\n"
                   f"{run_all.END}\nafter\n")
    with pytest.raises(ValueError, match="markers"):
        run_all.replace_readme_table("no markers", rows, set())
    readme = os.path.join(os.path.dirname(BENCH), "README.md")
    with open(readme) as f:
        assert run_all.BEGIN in f.read(), "README.md lost the benchmarks table's markers"


def test_run_all_reports_a_failing_script_and_goes_on(tmp_path, monkeypatch):
    """A script that exits non-zero becomes a FAILED row; the next one still runs."""
    (tmp_path / "bench_bad.py").write_text("import sys; print('it broke'); sys.exit(3)\n")
    (tmp_path / "bench_good.py").write_text(
        "import sys; sys.path.insert(0, %r)\n"
        "from _harness import Report, constant\n"
        "r = Report('bench_good'); r.add('g', {'x': constant('x', 2.0), 'b': constant('b', 1.0)}, baseline='b')\n"
        "r.headline('good one', 'g', 'x'); r.write(sys.argv[sys.argv.index('--json') + 1])\n" % BENCH)
    monkeypatch.setattr(run_all, "HERE", str(tmp_path))
    monkeypatch.setattr(run_all, "SCRIPTS", [run_all.Script("bench_bad.py"), run_all.Script("bench_good.py")])
    out = tmp_path / "out"
    assert run_all.main(["--quick", "--json-dir", str(out)]) == 1
    bad = run_all.run_script(run_all.SCRIPTS[0], True, str(out), lambda line: None)
    assert bad == [("bench_bad", "python bench/bench_bad.py --quick", "**FAILED**: exit 3: it broke")]
    good = run_all.run_script(run_all.SCRIPTS[1], True, str(out), lambda line: None)
    assert good == [("good one", "python bench/bench_good.py --quick", "2.00 s (spread 0 %) = 2.00× b (1.00 s)")]


def test_measure_drops_each_output_once_checked():
    """Outputs must not pile up while the other cases run (big batches would swap)."""
    import weakref

    class Out:
        pass

    refs = []

    def case():
        o = Out()
        refs.append(weakref.ref(o))
        return o

    measure({"a": case}, repeat=3, warmup=1)
    assert all(r() is None for r in refs)
