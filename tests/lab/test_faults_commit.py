"""Fault case 18, the torn commit, across two ranks (mac4 the writer, mac5): a rank killed at the
commit points where the writer and another rank differ. Every point on one process is covered by
tests/unit/test_lane_train.py (test_a_kill_at_every_commit_point_...); here the barrier and the two
hosts' own checkpoint.json writes are what is tested."""
import json
import shutil
from pathlib import Path

import pytest

from tests.lab.conftest import no_rank_left, run_facts, train
from thunderlane import checkpoint
from thunderlane.facts import RunFacts
from thunderlane.window.runner import parse_event


def steps(inv):
    """Each host's committed step of test_run_a."""
    return {h: checkpoint.committed_step(RunFacts.from_json(run_facts(inv, h, "test_run_a"))) for h in ("mac4", "mac5")}


def resumed(result):
    """host -> the step its rank resumed from, as the window's log shows."""
    events = [parse_event(line) for line in Path(result["log"]).read_text().splitlines()]
    return {e["host"]: e["step"] for e in events if e and e.get("phase") == "resume"}


def killed(inv, profile_dir, target, fault):
    code, r = train(inv, profile_dir, "run_a", "--target", str(target), "--window", "5", "--watchdog", "30",
                    env={"THUNDER_FAULT": fault})  # with preflight: ranks one commit apart may go on
    assert code == 1 or r["gate_ok"], r  # a rank that dies after the writer's commit may go unnoticed
    return r


@pytest.mark.fault_case("18", "torn commit: a rank killed between the files of a commit and its checkpoint.json",
                        "THUNDER_FAULT=kill-at@STEP:POINT:RANK in the training entry (lab hosts only)")
def test_18_a_rank_killed_mid_commit_loses_no_step_and_the_run_ends_equal(warm_lab, profile_dir):
    """Kills after the barrier leave the ranks one commit apart, either way round; a kill before it
    leaves both at the old step. Each next window resumes every rank from the lowest committed step
    (the rank ahead keeps it in checkpoint.json's ``previous``) and the run ends equal (<= 1e-6) to
    an uninterrupted one, on both ranks. Measured outcome: no step lost, adapters equal."""
    import mlx.core as mx
    code, whole = train(warm_lab, profile_dir, "run_b", "--target", "15", "--window", "15")
    assert code == 0 and whole["verdict"] == "success", whole
    code, r = train(warm_lab, profile_dir, "run_a", "--target", "5", "--window", "5")
    assert code == 0 and steps(warm_lab) == {"mac4": 5, "mac5": 5}

    # mac5 dies after the barrier, before its checkpoint.json: the writer commits 10 and ends
    r = killed(warm_lab, profile_dir, 10, "kill-at@10:before-checkpoint:1")
    assert r["gate_ok"] and steps(warm_lab) == {"mac4": 10, "mac5": 5}, r
    # both resume from 5; the writer, now the one killed before its checkpoint.json, keeps step 5
    r = killed(warm_lab, profile_dir, 15, "kill-at@10:before-checkpoint:0")
    assert resumed(r) == {"mac4": 5, "mac5": 5} and steps(warm_lab) == {"mac4": 5, "mac5": 10}, r
    assert checkpoint.gate("mac4", RunFacts.from_json(run_facts(warm_lab, "mac4", "test_run_a")), 5).ok
    # mac5 dies before the barrier (after its own files): the writer waits at the barrier, commits nothing
    r = killed(warm_lab, profile_dir, 15, "kill-at@10:after-config:1")
    assert resumed(r) == {"mac4": 5, "mac5": 5} and steps(warm_lab) == {"mac4": 5, "mac5": 5}, r

    code, r = train(warm_lab, profile_dir, "run_a", "--target", "15", "--window", "10")
    assert code == 0 and r["verdict"] == "success" and resumed(r) == {"mac4": 5, "mac5": 5}, r
    runs = {h: Path(warm_lab.hosts[h].runs_root) for h in ("mac4", "mac5")}
    a, b, on5 = (mx.load(str(root / run / "0000015_adapters.safetensors"))
                 for root, run in ((runs["mac4"], "test_run_a"), (runs["mac4"], "test_run_b"), (runs["mac5"], "test_run_a")))
    assert max(mx.abs(a[k] - b[k]).max().item() for k in b) <= 1e-6
    assert max(mx.abs(a[k] - on5[k]).max().item() for k in a) == 0
    for host in ("mac4", "mac5"):
        ckpt = json.loads((runs[host] / "test_run_a" / "checkpoint.json").read_text())
        assert [p["step"] for p in ckpt["previous"]] == [10]
        assert sorted(p.name for p in (runs[host] / "test_run_a").glob("0*")) == [
            f"00000{s}_{k}.safetensors" for s in (10, 15) for k in ("adapters", "lane_state")]
    assert no_rank_left()

    # mac5's run directory lost: restarting from 0 would drop mac4's commits; refused by preflight
    # and, past it, by the ranks themselves (kind resume), mac4's files untouched
    before = sorted((p.name, p.read_bytes()) for p in (runs["mac4"] / "test_run_a").glob("0*"))
    shutil.rmtree(runs["mac5"] / "test_run_a")
    code, r = train(warm_lab, profile_dir, "run_a", "--target", "20", "--window", "5")
    assert code == 1 and "step 0's files are no longer kept" in json.dumps(r), r
    code, r = train(warm_lab, profile_dir, "run_a", "--target", "20", "--window", "5", "--skip-preflight")
    assert code == 1 and "restarting from 0 would drop them" in json.dumps(r), r
    assert sorted((p.name, p.read_bytes()) for p in (runs["mac4"] / "test_run_a").glob("0*")) == before
    assert steps(warm_lab)["mac4"] == 15 and no_rank_left()
