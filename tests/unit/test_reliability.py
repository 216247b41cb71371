"""docs/RELIABILITY.md's table is rendered from the fault suite's own results (tests/lab/reliability.py)."""
import pytest

from tests.lab import reliability as rel


def line(case, test, outcome="passed", figures=None, when="call", seconds=1.0, doc="The lane refuses."):
    return {"id": case, "fault": f"fault {case}", "injection": f"how {case}", "doc": doc, "test": test,
            "outcome": outcome, "when": when, "seconds": seconds, "figures": figures or {}}


def test_rows_group_a_case_in_natural_order_with_its_worst_outcome():
    lines = [line("10", "t.py::test_10"), line("9b", "t.py::test_09b", figures={"seconds": 1.25}),
             line("9", "t.py::test_09"), line("3", "t.py::test_03[a]"), line("3", "t.py::test_03[b]", "failed"),
             line("3", "t.py::test_03[b]", "failed", when="teardown")]
    rows = rel.rows(lines)
    assert [r[0] for r in rows] == ["3", "9", "9b", "10"]
    assert rows[0][4] == "**FAIL** (1 of 2: test_03[b])"
    assert rows[1][4] == "pass" and rows[2][5] == {"seconds": 1.25, "test seconds": 1.0}
    assert rows[0][5]["test seconds"] == 2.0  # call phases only


def test_figures_of_parametrized_tests_name_their_parameters():
    rows = rel.rows([line("22", "t.py::test_22[deep]", figures={"rss": 80}),
                     line("22", "t.py::test_22[huge]", figures={"rss": 140})])
    assert rows[0][5] == {"rss [deep]": 80, "rss [huge]": 140, "test seconds": 2.0}
    assert rows[0][4] == "pass (2/2)"


def test_a_skip_says_why():
    rows = rel.rows([{**line("8a", "t.py::test_08a", "skipped", when="setup"), "reason": "needs root"}])
    assert rows[0][4] == "skipped (1 of 1: needs root)"


def test_document_keeps_the_prose_and_replaces_the_table():
    prose = "# Reliability\n\nHand-written.\n\n" + rel.CUT + "\n| old | table |\n"
    doc = rel.document(prose, [line("1", "t.py::test_01", figures={"bytes": 5})], "commit abc1234 + local changes",
                       "2026-11-29 17:00 UTC", "2 cores", "python -m tests.lab.reliability")
    assert doc.startswith("# Reliability\n\nHand-written.\n\n" + rel.CUT)
    assert "| old | table |" not in doc
    assert "| 1 | fault 1 | how 1 | The lane refuses. | pass | bytes: 5; test seconds: 1.0 |" in doc
    assert "commit abc1234 + local changes" in doc and "2026-11-29 17:00 UTC" in doc
    assert "1 tests passed, 0 failed, 0 skipped" in doc


def test_a_pipe_in_a_cell_does_not_split_the_row():
    assert rel.cell("a | b\nc") == "a \\| b c"


@pytest.mark.parametrize("args", [("1",), ("x1", "f", "i"), ("1", "", "i"), ("1", "f", 3)])
def test_malformed_markers_are_refused(args):
    with pytest.raises(ValueError):
        rel.case_fields(args, "t.py::test")


def test_first_paragraph_is_one_line():
    assert rel.first_paragraph("""Refused: "x";
        nothing written.

        More detail.""") == 'Refused: "x"; nothing written.'
