"""bench/explain.py: the explanations in docs/BENCHMARKS.md are computed from each figure's own
measurements (issue 12), so changing the measurements changes the text."""
import argparse
import importlib
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture
def bench(monkeypatch):
    """bench/explain.py and bench/run_all.py as modules (neither starts a lab on import)."""
    monkeypatch.syspath_prepend(str(BENCH))
    names = ("explain", "run_all", "syncphases")
    for name in names:
        sys.modules.pop(name, None)
    yield importlib.import_module("explain"), importlib.import_module("run_all")
    for name in names:
        sys.modules.pop(name, None)


def sync_figure(fab_start=0.40, verify_before=0.50, runs=(1.42, 1.46, 1.50)):
    """A 1b-like miss: fab's sync split into phases against plain rsync's transfer."""
    phases = {"fab start": fab_start, "verify before": verify_before, "transfer": 2.80, "verify after": 0.30}
    value = sum(phases.values()) / 2.78
    return {"id": "1b", "name": "sync vs rsync", "goal": "<= 1.1", "op": "<=", "limit": 1.10, "value": value,
            "ok": value <= 1.10, "runs": list(runs), "unit": "ratio", "detail": "",
            "phases": phases, "baseline_phases": {"transfer": 2.78}, "work": ["transfer"]}


def test_a_miss_names_the_phase_that_dominates_it(bench):
    explain, _ = bench
    text = explain.explain(sync_figure())
    assert "dominates the difference is verify before (+0.50 s, 41% of the time added)" in text
    assert "faster than the baseline" not in text
    assert "Fixed cost 1.20 s (fab start, verify before, verify after) against 2.80 s" in text
    assert "the goal allows 0.28 s over the baseline's 2.78 s" in text
    assert "0 of 3 runs met the goal" in text


def test_the_work_phase_rate_is_set_against_the_link(bench):
    explain, _ = bench
    f = sync_figure()
    f["facts"] = {"bytes": 350e6, "links": {"control": {"tcp_mbit": 950.0, "ssh_mbit": 1000.0}}}
    assert "The transfer moved 350 MB at 1000 Mbit/s (100% of ssh's rate on the control link)" in explain.explain(f)
    f["phases"]["transfer"] = 5.6
    assert "moved 350 MB at 500 Mbit/s (50% of ssh's rate" in explain.explain(f)


def test_a_phase_faster_than_the_baseline_is_named_apart(bench):
    explain, _ = bench
    f = sync_figure()
    f["phases"]["transfer"] = 2.0      # fab's transfer beat plain rsync's by 0.78 s
    text = explain.explain(f)
    assert "verify before (+0.50 s, 42% of the time added), then fab start +0.40 s, verify after +0.30 s; " \
           "faster than the baseline's: transfer -0.78 s" in text
    f["value"] = 1.1004
    assert "measured 1.1 against <= 1.1: 0.0% over the limit" in explain.explain(f)


def test_other_numbers_give_another_explanation(bench):
    explain, _ = bench
    text = explain.explain(sync_figure(fab_start=1.50))
    assert "dominates the difference is fab start (+1.50 s" in text
    assert "verify before" not in text.split("dominates")[1].split(",")[0]
    assert explain.explain(sync_figure()) != text


def test_a_goal_inside_the_spread_is_called_noise(bench):
    explain, _ = bench
    text = explain.noise(sync_figure(runs=[1.05, 1.20, 1.30]))
    assert text.startswith("per run 1.05 to 1.3") and "1 of 3 runs met the goal" in text
    assert "noise decides single runs" in text
    assert "noise" not in explain.noise(sync_figure(runs=[1.2, 1.3]))


def test_a_figure_without_phases_says_so(bench):
    explain, _ = bench
    f = {"id": "4", "name": "verify-dataset", "goal": "<= 2", "op": "<=", "limit": 2.0, "value": 13.5,
         "ok": False, "runs": [13.5], "unit": "ratio", "detail": "22 MB per copy"}
    text = explain.explain(f)
    assert "no phase split measured" in text and "fixed cost" not in text and "dominates" not in text
    assert "measured 13.5 against <= 2: 575% over the limit" in text


def test_the_peer_figure_is_explained_from_measured_link_rates(bench):
    explain, run_all = bench
    f = {"id": "9", "name": "peer", "goal": ">= 5", "op": ">=", "limit": 5.0, "value": 2.1, "ok": False,
         "runs": [2.0, 2.1, 2.2], "unit": "ratio", "detail": "",
         "facts": {"links": {"data": {"shaped_mbit": 10000, "tcp_mbit": 9300.0, "ssh_mbit": 2100.0},
                             "control": {"shaped_mbit": 1000, "tcp_mbit": 950.0, "ssh_mbit": 930.0}},
                   "ssh_ceiling_mbit": 2150.0, "fast_link": "data", "slow_link": "control"}}
    text = explain.explain(f)
    assert "Data link: shaped 10000 Mbit/s, tcp 9300 Mbit/s, ssh 2100 Mbit/s" in text
    assert ("shaped to a ratio of 10.00; raw TCP reached 9.79 (data 93% of its shaped rate, control 95%)") in text
    assert ("the data link carries at most 2100 Mbit/s (ssh: raw TCP carried 9300 Mbit/s on this link, "
            "ssh 2150 Mbit/s with no link in the way)") in text
    assert "the control link 930 Mbit/s (the link's own rate)" in text and "allow a ratio of 2.26" in text
    assert "the run measured 2.10 (93% of what the rates allow)" in text
    # through the rsync daemon the data link's bytes skip ssh: raw TCP bounds that side
    rsyncd = explain.explain({**f, "facts": {**f["facts"], "fast_transport": "rsyncd"}})
    assert ("Through the rsync daemon (no ssh) the data link carries at most 9300 Mbit/s (raw TCP) and, over "
            "ssh, the control link 930 Mbit/s (the link's own rate): these rates allow a ratio of 10.00") in rsyncd
    f["facts"]["ssh_ceiling_mbit"] = 1800.0   # measured below a link's ssh rate: the machine was busier
    text = explain.explain(f)
    assert "alone (no link) 1800 Mbit/s (below the 2100 Mbit/s ssh carried over a link: load; 2100 taken" in text
    assert "the data link carries at most 2100 Mbit/s" in text and "allow a ratio of 2.26" in text
    details = render(run_all, [f]).split("## Details")[1].split("## Misses")[0]
    assert "  Measured link rates: data link: shaped 10000 Mbit/s, tcp 9300 Mbit/s, ssh 2100 Mbit/s; control" in details
    del f["facts"]["links"]["data"]["ssh_mbit"]    # not measured over the link: its ceiling bounds it
    f["facts"]["ssh_ceiling_mbit"] = 2150.0
    text = explain.explain(f)
    assert "carries at most 2150 Mbit/s (ssh's own ceiling, measured with no link in the way)" in text and "allow a ratio of 2.31" in text


def render(run_all, figures):
    args = argparse.Namespace(model_mb=100.0, train_model_mb=2.0)
    results = [{"script": "sync", "command": "bench/sync.py", "seconds": 12.0, "load": (1.0, 3.0),
                "params": {"runs": 3}, "figures": figures, "notes": []}]
    return run_all.render(results, args, 0.0, 60.0, (0.5, 2.5), "commit abc")


def test_the_document_explains_misses_from_the_run(bench):
    explain, run_all = bench
    assert not hasattr(run_all, "ANALYSIS") and not hasattr(run_all, "GENERAL_NOTES")
    miss = render(run_all, [sync_figure()]).split("## Misses")[1].split("## Notes")[0]
    assert "verify before (+0.50 s, 41% of the time added)" in miss
    assert "load average 1.00 -> 3.00 while it ran" in miss
    passed = sync_figure(fab_start=0.0, verify_before=0.10, runs=[1.05, 1.07])
    passed.update(value=1.05, ok=True)
    text = render(run_all, [passed])
    assert "Every goal measured in this run was met." in text
    assert "  Computed: measured 1.05 against <= 1.1: 4.5% under the limit" in text
    assert "2 of 2 runs met the goal" in text
    assert "runs per figure in this document: 2" in text


def test_skipped_figures_and_shared_ids(bench):
    """A figure not measured (no netns here) is 'skipped' with its reason, never a miss; a figure id
    measured by two scripts (a no-op sync on loopback and on a link) is shown twice, told apart."""
    _, run_all = bench
    skipped = {"id": "9", "name": "peer", "goal": ">= 5", "op": ">=", "limit": 5.0, "value": None, "ok": None,
               "runs": None, "unit": "ratio", "detail": "skipped: network namespaces need root"}
    results = [{"script": "sync", "command": "bench/sync.py", "seconds": 1.0, "load": (1.0, 1.0), "params": {},
                "figures": [dict(sync_figure(), id="1c")], "notes": []},
               {"script": "links", "command": "bench/links.py", "seconds": 1.0, "load": (1.0, 1.0), "params": {},
                "figures": [dict(sync_figure(), id="1c"), skipped], "notes": []}]
    text = run_all.render(results, argparse.Namespace(model_mb=100.0, train_model_mb=2.0), 0.0, 60.0, (1.0, 1.0), "c")
    assert "| 9 | peer | >= 5 | - | - | skipped |" in text
    misses = text.split("## Misses")[1].split("## Notes")[0]
    assert "**9**" not in misses and "Not measured: 9 (skipped: network namespaces need root)" in misses
    assert "| 1c | sync vs rsync |" in text and "| 1c (links) | sync vs rsync |" in text


LINES = [(0.9, "mac4: partial before sync; missing 900 MB"), (1.0, "$ bash launchers/sync... mac4"),
         (4.0, "mac4: 900 MB sent"), (6.0, "mac4: done"), (6.5, "")]


def test_a_sync_run_is_split_by_its_own_lines_or_by_fab_s_timings(bench):
    phases_of = importlib.import_module("syncphases").phases_of
    assert phases_of(LINES, 7.0, {}) == {"fab start + verify before": 1.0, "launcher": 5.0, "verify after + exit": 1.0}
    split = phases_of(LINES, 7.0, {}, noop_launcher=1.5)
    assert list(split) == ["fab start + verify before", "launcher fixed cost", "transfer", "verify after + exit"]
    assert (split["launcher fixed cost"], split["transfer"]) == (1.5, 3.5)
    own = {"verify_before": 0.5, "launcher": 4.0, "verify_after": 0.25}
    assert phases_of(LINES, 7.0, {"phases": own}) == {"fab start + exit": 2.25, **own}
    assert phases_of(LINES[:1], 0.9, {}) is None    # nothing sent, no timings of fab's own: no split


PULL = [(0.5, "mac4 <- mac5 over the data link (198.19.82.130): --from mac5"), (0.9, "$ bash launchers/sync... mac4"),
        (1.0, "[mac4] sync: removed leftover models--x/blobs/abc.incomplete"),
        (1.6, "[mac4] sync: rsync daemon on root@10.0.0.5 at 10.0.0.5 port 32400 for 10.0.0.4 only"),
        (1.7, "[mac4] sync: root@10.0.0.5:/c/models--x (rsync daemon at 10.0.0.5) -> mac4:/h/models--x (revision ab12)"),
        (4.2, "[mac4] sync: done: file data sent 900 bytes, total sent 950 bytes"), (5.5, "mac4: complete")]


def test_the_launcher_is_split_by_its_own_lines_into_setup_passes_and_close(bench):
    phases_of = importlib.import_module("syncphases").phases_of
    own = {"verify_before": 0.4, "launcher": 3.5, "verify_after": 0.3}
    split = phases_of(PULL, 5.6, {"phases": own}, split_launcher=True)
    assert list(split) == ["fab start + exit", "verify_before", "launcher setup", "launcher passes", "launcher close",
                           "verify_after"]
    assert split["launcher setup"] == pytest.approx(0.8) and split["launcher passes"] == pytest.approx(2.5)
    assert split["launcher close"] == pytest.approx(0.2)    # fab's launcher time less setup and passes
    assert sum(split.values()) == pytest.approx(5.6)
    no_done = [x for x in PULL if "sync: done" not in x[1]]
    assert phases_of(no_done, 5.6, {"phases": own}, split_launcher=True) == {"fab start + exit": pytest.approx(1.4), **own}
    assert phases_of(PULL, 5.6, {"phases": own}) == {"fab start + exit": pytest.approx(1.4), **own}   # not asked
    late = phases_of(PULL, 5.6, {"phases": dict(own, launcher=3.0)}, split_launcher=True)   # lines beyond fab's time
    assert "launcher" in late and "launcher setup" not in late


def test_a_wall_total_among_the_phases_is_no_phase(bench):
    """fab's own split (bench/sync.py) carries its wall time and fab's internal total beside the
    phases: they are totals, and what the phases leave of the wall time is a phase of its own."""
    explain, _ = bench
    f = {"id": "1d", "name": "no-op sync", "goal": "<= 0.5 s", "op": "<=", "limit": 0.5, "value": 3.0, "ok": False,
         "runs": [3.0], "unit": "s", "detail": "",
         "phases": {"wall": 3.0, "internal": 2.5, "start": 0.5, "verify_before": 1.6, "verify_after": 0.2}}
    text = explain.explain(f)
    assert "3.00 s in all, verify_before dominates with 1.60 s (53%)" in text and "overlap" not in text
    assert explain.parts(f["phases"]) == {"start": 0.5, "verify_before": 1.6, "verify_after": 0.2,
                                          "not timed apart": pytest.approx(0.7)}
    f["phases"]["verify_after"] = 1.2
    text = explain.explain(f)
    assert "3.00 s in all" in text and "The phases add up to 3.30 s, more than the 3.00 s the run took: some overlap" in text


def test_the_split_shown_is_the_median_run_s(bench):
    median_run = importlib.import_module("syncphases").median_run
    runs = [{"a": 1.0, "b": 4.0}, {"a": 2.0, "b": 1.0}, {"a": 0.5, "b": 1.0}]
    assert median_run([5.0, 3.0, 1.5], runs) == {"a": 2.0, "b": 1.0}
    assert median_run([5.0, 3.0], runs[:2]) == {"a": 2.0, "b": 1.0}     # even: the lower middle
    assert median_run([5.0, 3.0, 1.5], [runs[0], None, runs[2]]) is None  # a run without a split


def test_a_higher_is_better_miss_says_what_the_goal_leaves_for_fixed_costs(bench):
    explain, _ = bench
    f = {"id": "9", "name": "peer", "goal": ">= 5", "op": ">=", "limit": 5.0, "value": 8.8 / 2.3, "ok": False,
         "runs": [3.7, 3.8, 3.9], "unit": "ratio", "detail": "", "work": ["launcher passes"],
         "phases": {"fab start + exit": 0.5, "launcher setup": 0.3, "launcher passes": 1.5},
         "baseline_phases": {"fab start + exit": 0.3, "launcher passes": 8.5}}
    text = explain.explain(f)
    assert ("the goal needs the whole at most 1.76 s (the baseline's 8.80 s / 5): the transfer/compute alone "
            "took 1.50 s, which leaves 0.26 s for every fixed cost, against 0.80 s measured") in text
    f["phases"]["launcher passes"] = 1.0
    assert "alone took 1.00 s, which leaves 0.76 s for every fixed cost" in explain.explain(f)


def test_a_cpu_bound_figure_says_the_least_time_its_own_cpu_allows(bench):
    explain, _ = bench
    f = {"id": "2c", "name": "8 vs 1", "goal": "<= 1.3", "op": "<=", "limit": 1.3, "value": 1.67, "ok": False,
         "runs": [1.6, 1.67, 1.7], "unit": "ratio", "detail": "",
         "facts": {"cpu": {"cores": 2, "start_cpu_s": 0.2, "cpu_s": 0.73, "baseline_cpu_s": 0.36,
                           "baseline_wall_s": 0.293, "extra_units": 7, "unit": "extra host"}}}
    text = explain.explain(f)
    assert ("2 cores the measured side's CPU (medians: 0.73 s, 0.20 s of it a single-threaded start) needs "
            "0.465 s at best, the rest spread over every core: a ratio of 1.59 against the baseline's 0.293 s, "
            "where the run measured 1.67: as fast as its CPU allows on these cores; the goal would need at most "
            "29 ms of CPU per extra host (53 ms measured)") in text
    f["facts"]["cpu"]["cores"] = 8
    text = explain.explain(f)
    assert "needs 0.266 s at best, the rest spread over every core: a ratio of 0.91 against" in text
    assert "as fast as its CPU allows" not in text   # 1.67 is far above that floor
    f["facts"]["cpu"].update(cores=2, start_cpu_s=0.45)   # the start alone over the goal's time
    assert "out of reach on these cores whatever each extra unit costs" in explain.explain(f)


def test_a_document_written_again_names_the_run_that_measured_it(bench):
    _, run_all = bench
    args = argparse.Namespace(model_mb=100.0, train_model_mb=2.0)
    results = [{"script": "sync", "command": "bench/sync.py", "seconds": 12.0, "load": (1.0, 3.0),
                "params": {"runs": 3}, "figures": [], "notes": []}]
    again = run_all.render(results, args, 0.0, 60.0, (0.5, 2.5), "commit abc", ["--model-mb", "1000", "--runs", "5"])
    assert again.split("\n")[2].startswith("Measured by `.venv/bin/python bench/run_all.py --model-mb 1000 --runs 5` "
                                           "(this text written again from its measurements by `")
    assert "Code measured: commit abc." in again
    assert "written again" not in run_all.render(results, args, 0.0, 60.0, (0.5, 2.5), "commit abc")
