"""Figure 5 is the median of per-pair ratios, not a ratio of medians: the table's 'of' column says so."""
import argparse

from tests.unit import test_bench_explain as explain_tests

bench = explain_tests.bench  # the same fixture: bench/explain.py and bench/run_all.py as modules
sync_figure = explain_tests.sync_figure


def test_a_figure_of_pairs_says_so_in_the_table(bench):
    _, run_all = bench
    pairs = dict(sync_figure(runs=(1.0, 1.1, 1.2, 1.05, 1.08, 1.3, 0.99)), id="5", of="median of 7 pairs")
    results = [{"script": "train_overhead", "command": "bench/train_overhead.py", "seconds": 1.0, "load": (1.0, 1.0),
                "params": {"runs": 5}, "figures": [pairs, dict(sync_figure(), id="1b")], "notes": []}]
    text = run_all.render(results, argparse.Namespace(model_mb=100.0, train_model_mb=2.0), 0.0, 60.0, (1.0, 1.0), "c")
    assert "| median of 7 pairs | **MISS** |" in text
    assert "| median of 3 | **MISS** |" in text
