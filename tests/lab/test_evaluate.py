"""fab evaluate and the handoff's "Promotion decision" on the lab: a real window, a real mirror,
mlx-lm decoding the lab's test split with the committed adapters. The lab's model is tiny and
random, so the figures are poor: the tests check that they are the right figures, not good ones."""
import json
import os
import re
import signal
import time
from pathlib import Path

import pytest
from rapidfuzz.distance import Levenshtein

from tests.lab.conftest import HOSTS, LAYOUT, by_host, fab, fab_json, start_fab
from thunderlane import inventory, lab
from thunderlane.lab import kit

RUN = "test_eval_run"


@pytest.fixture(scope="module")
def evaluated(lab_dir, tmp_path_factory):
    """A handoff to step 5 of a profile that asks for the evaluation (6 rows of the test split)."""
    inv = inventory.load(lab.up(HOSTS, lab=lab_dir, model_mb=1.0, reseed=True, layout=LAYOUT))
    folder = tmp_path_factory.mktemp("eval-profiles")
    kit.write_profile(folder, "eval_run", RUN, lane={"min_free_mb": 0}, promotion={"on_handoff": True, "limit": 6})
    env = {"THUNDER_PROFILES": str(folder)}
    code, data = fab_json(inv, "handoff", "--profile", "eval_run", "--target", "5", "--window", "5", env=env)
    assert code == 0, data.get("blockers")
    return inv, folder, env, data


def first_rows(inv, n):
    lines = (Path(inv.local.dataset_root) / "test.jsonl").read_text(encoding="utf-8").splitlines()[:n]
    return [[m["content"] for m in json.loads(line)["messages"]] for line in lines]


def test_handoff_evaluates_the_mirrored_step_and_reports_the_decision(evaluated):
    inv, _, _, data = evaluated
    ev = data["evaluation"]
    m = ev["metrics"]
    assert ev["step"] == 5 and m["rows"] == 6 and ev["bad_count"] == 0 and "rows" not in ev
    # CER before, recomputed here from the file: the hypothesis is the user turn after its instruction
    rows = first_rows(inv, 6)
    before = sum(Levenshtein.distance(user.split("\n", 1)[1], ref) for user, ref in rows)
    assert m["edits_before"] == before and m["ref_chars"] == sum(len(ref) for _, ref in rows)
    assert ev["verdict"]["decision"] in ("promote", "hold", "reject") and ev["verdict"]["reasons"]
    assert m["better"] + m["same"] + m["worse"] == 6 and ev["test_loss"] > 0
    saved = Path(ev["saved"])
    assert saved == Path(data["mirror"]["local_dir"]) / "eval_step5_test_first6.json"   # the profile's limit: 6
    stored = json.loads(saved.read_text(encoding="utf-8"))
    assert [r["where"].rsplit(":", 1)[1] for r in stored["rows"]] == ["1", "2", "3", "4", "5", "6"]
    assert stored["metrics"] == m
    md = (saved.parent / "handoff_report.md").read_text(encoding="utf-8")
    assert "## Promotion decision" in md and f"Verdict: **{ev['verdict']['decision']}**" in md
    assert "fab evaluate --profile eval_run --step 5 --split test --limit 6" in md
    assert md.index("## Promotion decision") < md.index("## What still blocks the next window")
    assert "evaluate" in data["phases"]


def test_fab_evaluate_prints_json_and_progress(evaluated):
    inv, _, env, _ = evaluated
    p = fab(inv, "evaluate", "--profile", "eval_run", "--limit", "3", "--batch", "2", "--json", env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    data = json.loads(p.stdout)  # progress went to stderr: stdout is the JSON alone
    assert data["metrics"]["rows"] == 3 and len(data["rows"]) == 3 and data["decode"]["batch"] == 2
    assert "evaluate: 3/3 rows" in p.stderr and "rows/s, ETA" in p.stderr
    row = data["rows"][0]
    assert row["edits_after"] == Levenshtein.distance(row["correction"], row["reference"])


def test_the_whole_test_split_is_evaluated_and_saved_apart_from_a_limited_run(evaluated):
    """Issue 13: the whole evaluation on the lab's test split, every row, in the suite; its file is
    the whole split's name, beside (not replacing) the handoff's --limit 6 result."""
    inv, _, env, data = evaluated
    rows = first_rows(inv, 10**6)
    p = fab(inv, "evaluate", "--profile", "eval_run", "--json", env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    whole = json.loads(p.stdout)
    m = whole["metrics"]
    assert m["rows"] == len(rows) == len(whole["rows"]) and whole["bad_count"] == 0 and len(rows) > 6
    assert m["edits_before"] == sum(Levenshtein.distance(user.split("\n", 1)[1], ref) for user, ref in rows)
    assert m["edits_after"] == sum(Levenshtein.distance(r["correction"], r["reference"]) for r in whole["rows"])
    assert m["better"] + m["same"] + m["worse"] == len(rows)
    mirror = Path(data["mirror"]["local_dir"])
    assert Path(whole["saved"]) == mirror / "eval_step5_test.json"
    assert json.loads((mirror / "eval_step5_test.json").read_text(encoding="utf-8"))["metrics"] == m
    assert json.loads((mirror / "eval_step5_test_first6.json").read_text(encoding="utf-8"))["metrics"]["rows"] == 6


def test_bad_input_is_refused_or_reported(evaluated, tmp_path):
    inv, folder, env, data = evaluated
    p = fab(inv, "evaluate", "--profile", "eval_run", "--step", "4", env=env)
    assert p.returncode == 1 and "step 4: it is not committed" in p.stderr
    # a split of its own: an empty test file, a valid file with bad rows among good ones
    good = (Path(inv.local.dataset_root) / "test.jsonl").read_text(encoding="utf-8").splitlines()[:2]
    (tmp_path / "test.jsonl").write_text("")
    (tmp_path / "valid.jsonl").write_text("\n".join([good[0], '{"text": "x"}', good[1]]) + "\n")
    kit.write_profile(folder, "eval_data", RUN, lane={"min_free_mb": 0}, data=str(tmp_path))
    p = fab(inv, "evaluate", "--profile", "eval_data", env=env)
    assert p.returncode == 1 and f"{tmp_path}/test.jsonl: the split is empty" in p.stderr
    p = fab(inv, "evaluate", "--profile", "eval_data", "--split", "valid", env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    assert f"bad row {tmp_path}/valid.jsonl:2: no 'messages' list" in p.stdout and "rows 2 (1 bad rows" in p.stdout
    # adapters that fail the gate: one byte changed in the mirror's step file
    step_file = Path(data["mirror"]["local_dir"]) / "0000005_adapters.safetensors"
    raw = bytearray(step_file.read_bytes())
    raw[-1] ^= 1
    step_file.write_bytes(bytes(raw))
    try:
        p = fab(inv, "evaluate", "--profile", "eval_run", env=env)
    finally:
        raw[-1] ^= 1
        step_file.write_bytes(bytes(raw))
    assert p.returncode == 1 and "fails the gate (bad-adapter)" in p.stderr and "sha256" in p.stderr


def test_evaluate_on_a_host_gives_local_figures_and_saves_beside_its_checkpoint(evaluated):
    """The host decodes its own copy of the split with its own cache; greedy decoding on a CPU is
    deterministic, so the host's corrections and figures are those of local's mirror of that step."""
    inv, _, env, data = evaluated
    p = fab(inv, "evaluate", "--profile", "eval_run", "--on", "mac4", "--limit", "3", "--json", env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    there = json.loads(p.stdout)
    assert "mac4: evaluate: 3/3 rows" in p.stderr and "rows/s, ETA" in p.stderr  # the host's progress, relayed
    code, here = fab_json(inv, "evaluate", "--profile", "eval_run", "--limit", "3", env=env)
    assert code == 0
    assert there["on"] == "mac4" and here["on"] == "local" and there["step"] == here["step"] == 5

    def row(r):
        return {k: v for k, v in r.items() if k != "where"}
    assert [row(r) for r in there["rows"]] == [row(r) for r in here["rows"]]
    assert [r["where"] for r in there["rows"]] == [f"mac4:{inv.hosts['mac4'].dataset_root}/test.jsonl:{i}"
                                                  for i in (1, 2, 3)]
    assert there["metrics"] == here["metrics"] and there["verdict"] == here["verdict"]
    assert there["test_loss"] == pytest.approx(here["test_loss"], rel=1e-5)
    assert "--on mac4" in there["command"] and "--on" not in here["command"]
    run_dir = Path(inv.hosts["mac4"].runs_root) / RUN
    assert there["saved"] == f"mac4:{run_dir}/eval_step5_test_first3.json"
    stored = json.loads((run_dir / "eval_step5_test_first3.json").read_text(encoding="utf-8"))
    assert stored["rows"] == there["rows"] and stored["on"] == "mac4"
    assert not [n for n in run_dir.iterdir() if ".tmp" in n.name]
    # mirror-back brings the writer's result home; local's of the same name is newer and keeps the name
    code, _ = fab_json(inv, "mirror-back", "--profile", "eval_run", env=env)
    assert code == 0
    mirror = Path(data["mirror"]["local_dir"])
    kept = json.loads((mirror / "eval_step5_test_first3.json").read_text(encoding="utf-8"))
    assert kept["on"] == "local" and kept["evaluated_at"] == here["evaluated_at"]
    aside = list(mirror.glob("eval_step5_test_first3.mac4-*.json"))
    assert len(aside) == 1 and json.loads(aside[0].read_text(encoding="utf-8"))["rows"] == there["rows"]


def test_evaluate_on_a_host_refuses_a_step_it_has_not_committed(evaluated):
    inv, _, env, _ = evaluated
    p = fab(inv, "evaluate", "--profile", "eval_run", "--on", "mac4", "--step", "4", env=env)
    run_dir = Path(inv.hosts["mac4"].runs_root) / RUN
    assert p.returncode == 1
    assert f"step 4: it is not committed; mac4:{run_dir}/checkpoint.json commits step 5" in p.stderr


def test_a_result_the_host_cannot_save_is_printed_and_kept_locally(evaluated):
    """The host's save fails (here a folder holds the result's name): the decoded, scored evaluation
    is printed and kept in the local reports folder; fab exits 1 with a warning saying all that."""
    inv, _, env, _ = evaluated
    run_dir = Path(inv.hosts["mac4"].runs_root) / RUN
    dest = run_dir / "eval_step5_test_first1.json"
    dest.mkdir()
    try:
        p = fab(inv, "evaluate", "--profile", "eval_run", "--on", "mac4", "--limit", "1", "--json", env=env)
    finally:
        dest.rmdir()
    kept = Path(inv.local.runs_root) / ".reports" / RUN / "eval_step5_test_first1.json"
    assert p.returncode == 1, p.stderr[-2000:]
    printed = json.loads(p.stdout)
    assert printed["saved"] == str(kept) and printed["metrics"]["rows"] == 1
    assert json.loads(kept.read_text(encoding="utf-8"))["rows"] == printed["rows"]
    assert f"evaluate: warning: mac4: could not write {dest} ({dest}: cannot be written" in p.stderr
    assert f"the result is kept at {kept}" in p.stderr


def test_while_evaluate_on_holds_the_window_lock_the_refusals_name_it(evaluated):
    """`fab evaluate --on mac4` holds the window lock (here stopped with SIGSTOP once it has taken
    it, so that it still holds it while the others look): status, mirror-back and train-window name
    it ("fab evaluate --on mac4 (pid N, since T) holds the window lock"), not "a window"; status
    does not count it as a window running. Continued, it ends as usual."""
    inv, _, env, _ = evaluated
    lock = Path(inv.local.runs_root) / ".locks" / f"{RUN}.lock"
    proc = start_fab(inv, "evaluate", "--profile", "eval_run", "--on", "mac4", "--limit", "2", "--json", env=env)
    try:
        deadline = time.monotonic() + 60
        while not (lock / "holder").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGSTOP)
        assert (lock / "holder").exists(), "evaluate never took the window lock"
        code, report = fab_json(inv, "status", "--profile", "eval_run", env=env)
        local = by_host(report)["local"]
        mirror = fab(inv, "mirror-back", "--profile", "eval_run", env=env)
        trained, train = fab_json(inv, "train-window", "--profile", "eval_run", "--target", "10", "--window", "5",
                                  env=env)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGCONT)
        out, err = proc.communicate(timeout=300)
    who = re.escape(f"fab evaluate --on mac4 (pid {proc.pid}, since ") + r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\)"
    assert re.fullmatch(f"window lock held by {who}", local["detail"]), local
    assert local["figures"]["running"] is False, local
    assert mirror.returncode == 1 and re.search(f"mirror-back: {who} holds the window lock; run mirror-back after "
                                                "it ends", mirror.stderr), mirror.stderr[-2000:]
    assert trained == 1 and train["verdict"] == "refused", train
    assert re.search(f"{who} holds the window lock {re.escape(str(lock))}", json.dumps(train)), train
    assert proc.returncode == 0 and json.loads(out)["on"] == "mac4", err[-2000:]
    assert not lock.exists()
