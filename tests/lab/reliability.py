"""docs/RELIABILITY.md's table, written from a run of the fault suite (never typed by hand).

Every fault test under tests/lab carries ``@pytest.mark.fault_case(id, fault, injection)``; its
docstring says what the lane does (what the test asserts), and it may record measured figures with
the ``reliability`` fixture (tests/lab/conftest.py): ``reliability(seconds=10.4)``.

``python -m tests.lab.reliability [-k EXPR]`` (or ``inv reliability``) runs every test with the
marker, in a pytest that loads this module as a plugin; the plugin writes one JSON line per test
(id, fault, injection, docstring, outcome, seconds, figures). The table is then rendered from those
lines, with the commit measured and the date, below the hand-written prose of docs/RELIABILITY.md.
"""
import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "RELIABILITY.md"
OUT_ENV = "THUNDER_RELIABILITY_OUT"  # where the plugin writes its JSON lines
CUT = "<!-- The table and everything below it: written by `inv reliability`; do not edit by hand. -->"
ID = re.compile(r"[0-9]+[a-z]?")


# The plugin (loaded with -p tests.lab.reliability) ------------------------------------------------
def pytest_collection_modifyitems(config, items):
    """A fault test without the marker would be missing from the table: refuse the run."""
    unmarked = [i.nodeid for i in items if Path(str(i.fspath)).name.startswith("test_faults")
                and i.get_closest_marker("fault_case") is None]
    if unmarked:
        raise pytest.UsageError("fault tests without @pytest.mark.fault_case: " + ", ".join(unmarked))
    for item in items:
        case = item.get_closest_marker("fault_case")
        if case is not None:
            case_fields(case.args, item.nodeid)


def case_fields(args, where):
    """(id, fault, injection) of a marker, checked: the table's rows depend on them."""
    if len(args) != 3 or not all(isinstance(a, str) and a.strip() for a in args):
        raise ValueError(f"{where}: fault_case needs (id, fault, injection) as three non-empty strings")
    if not ID.fullmatch(args[0]):
        raise ValueError(f"{where}: fault_case id {args[0]!r} is not a number with an optional letter")
    return args


def pytest_runtest_logreport(report):
    path = os.environ.get(OUT_ENV)
    if not path or not _last_phase(report):
        return
    info = dict(report.user_properties)
    case = info.pop("_fault_case", None)
    if case is None:
        return
    line = {"id": case[0], "fault": case[1], "injection": case[2], "doc": info.pop("_doc", ""),
            "test": report.nodeid, "outcome": report.outcome, "when": report.when,
            "seconds": round(report.duration, 2), "figures": info}
    if report.outcome == "skipped" and isinstance(report.longrepr, tuple):
        line["reason"] = str(report.longrepr[2])
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")


def _last_phase(report):
    """One line per test: the call's report, or the setup's when the test never ran (skip, error),
    or the teardown's when the teardown failed."""
    if report.when == "call":
        return True
    return report.outcome != "passed" and (report.when == "setup" or report.when == "teardown")


@pytest.hookimpl(tryfirst=True)  # before the fixtures: a setup error still reports its case
def pytest_runtest_setup(item):
    case = item.get_closest_marker("fault_case")
    if case is not None:
        item.user_properties.append(("_fault_case", list(case.args)))
        item.user_properties.append(("_doc", first_paragraph(item.function.__doc__)))


def first_paragraph(doc):
    """A docstring's first paragraph on one line (the table's 'what the lane does')."""
    text = (doc or "").strip().split("\n\n")[0]
    return " ".join(text.split())


# The table (pure: lines in, Markdown out) ----------------------------------------------------------
def id_key(case_id):
    m = re.fullmatch(r"([0-9]+)([a-z]?)", case_id)
    return (int(m.group(1)), m.group(2)) if m else (10**9, case_id)


def rows(lines):
    """One row per case id, its tests grouped: [(id, fault, injection, doc, outcome, figures)]."""
    cases = {}
    for line in lines:
        case = cases.setdefault(line["id"], {"fault": line["fault"], "injection": line["injection"],
                                             "docs": [], "tests": {}, "figures": {}, "seconds": 0.0})
        if line["doc"] and line["doc"] not in case["docs"]:
            case["docs"].append(line["doc"])
        test = case["tests"].setdefault(line["test"], {"outcome": "passed", "reason": ""})
        if line["outcome"] != "passed" and test["outcome"] != "failed":
            test["outcome"], test["reason"] = line["outcome"], line.get("reason", "")
        if line.get("when", "call") == "call":
            case["seconds"] += line["seconds"]
        for name, value in line["figures"].items():
            case["figures"][_figure_name(name, line["test"])] = value
    return [(cid, c["fault"], c["injection"], " ".join(c["docs"]), outcome(c["tests"]),
             {**c["figures"], "test seconds": round(c["seconds"], 1)})
            for cid, c in sorted(cases.items(), key=lambda kv: id_key(kv[0]))]


def _figure_name(name, test):
    """A figure keeps its name; a parametrized test's is qualified by the test's parameters."""
    return f"{name} [{test.split('[', 1)[1].rstrip(']')}]" if "[" in test else name


def outcome(tests):
    """'pass (4/4)', 'FAIL (1 of 4: test[x])' or 'skipped (reason)': what the run showed."""
    n = len(tests)
    failed = [t for t, r in tests.items() if r["outcome"] == "failed"]
    skipped = [r["reason"] for r in tests.values() if r["outcome"] == "skipped"]
    if failed:
        return f"**FAIL** ({len(failed)} of {n}: {', '.join(t.split('::')[-1] for t in failed)})"
    if skipped:
        return f"skipped ({len(skipped)} of {n}: {skipped[0]})"
    return f"pass ({n}/{n})" if n > 1 else "pass"


def cell(text):
    return str(text).replace("|", "\\|").replace("\n", " ")


def figures_cell(figures):
    return "; ".join(f"{k}: {_fmt(v)}" for k, v in figures.items())


def _fmt(value):
    return f"{value:.1f}" if isinstance(value, float) else str(value)


def table(lines, code, when, where, command):
    """The generated part of RELIABILITY.md: the table, then what was measured, when and how."""
    out = [CUT, "", "| # | fault | how it is injected | what the lane does (the test's claim) | outcome | "
           "measured |", "|---|---|---|---|---|---|"]
    found = rows(lines)
    for cid, fault, injection, doc, result, figures in found:
        out.append("| " + " | ".join(cell(x) for x in (cid, fault, injection, doc, result,
                                                        figures_cell(figures))) + " |")
    total = {o: sum(1 for t in _tests(lines).values() if t == o) for o in ("passed", "failed", "skipped")}
    out += ["", f"Measured by `{command}` on {when}, {code}, on {where}: {len(found)} cases, "
            f"{total['passed']} tests passed, {total['failed']} failed, {total['skipped']} skipped. "
            "'test seconds' is the wall time of the case's tests (lab setup excluded).", ""]
    return "\n".join(out)


def _tests(lines):
    """Each test's outcome over its phases: failed wins, then skipped."""
    out = {}
    for line in lines:
        prev = out.get(line["test"], "passed")
        out[line["test"]] = prev if prev == "failed" or line["outcome"] == "passed" else line["outcome"]
    return out


def document(prose, lines, code, when, where, command):
    """The hand-written prose (everything above the cut) followed by the generated table."""
    head = prose.split(CUT)[0].rstrip() + "\n\n"
    return head + table(lines, code, when, where, command)


# The command ----------------------------------------------------------------------------------------
def code_state():
    """'commit abc1234' (+ local changes when the tree differs from it, this file's output aside)."""
    def git(*a):
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout
    head = git("rev-parse", "--short", "HEAD").strip() or "unknown"
    dirty = [ln for ln in git("status", "--porcelain").splitlines() if not ln.endswith("docs/RELIABILITY.md")]
    return f"commit {head}" + (" + local changes" if dirty else "")


def machine():
    return f"{os.cpu_count()} cores, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def run_suite(out_path, select, basetemp=""):
    """pytest over tests/lab with only the fault_case tests, this module as the recording plugin."""
    argv = [sys.executable, "-m", "pytest", "tests/lab", "-m", "fault_case", "-p", "tests.lab.reliability",
            "-q", "-p", "no:cacheprovider"]
    if select:
        argv += ["-k", select]
    if basetemp:
        argv += ["--basetemp", basetemp]
    env = dict(os.environ, **{OUT_ENV: str(out_path)})
    return subprocess.run(argv, cwd=ROOT, env=env).returncode


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-k", default="", help="only the fault tests matching this pytest -k expression")
    parser.add_argument("--basetemp", default="", help="pytest's --basetemp (a private lab folder)")
    args = parser.parse_args(argv)
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        out_path = Path(tmp) / "reliability.jsonl"
        out_path.touch()
        code = code_state()
        when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        rc = run_suite(out_path, args.k, args.basetemp)
        lines = [json.loads(ln) for ln in out_path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if rc not in (0, 1) or not lines:  # interrupted, or no test ran: the table in place stays
        print(f"reliability: pytest exit {rc} with {len(lines)} results (interrupted, a usage error or no "
              "fault test ran); docs/RELIABILITY.md left unchanged", file=sys.stderr)
        return rc or 1
    command = "python -m tests.lab.reliability" + (f" -k {args.k!r}" if args.k else "")
    text = document(DOC.read_text(encoding="utf-8"), lines, code, when, machine(), command)
    tmp_doc = DOC.with_name(".RELIABILITY.md.tmp")
    tmp_doc.write_text(text, encoding="utf-8")
    os.replace(tmp_doc, DOC)
    print(f"reliability: {len(lines)} results written to {DOC.relative_to(ROOT)}; pytest exit {rc}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
