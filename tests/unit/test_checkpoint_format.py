"""checkpoint.json format 2 without training: the names it may carry (control side), and the
commit protocol's pure parts (on-host): which commits a record keeps, pruning, the fault syntax."""
import pytest

from tests.unit.test_window_logic import run_facts
from thunderlane import checkpoint
from thunderlane.checkpoint import CheckpointError, named_files
from thunderlane.facts import RunFacts
from thunderlane.onhost import commit


def record(step=10, **files):
    names = {f"{step:07d}_adapters.safetensors": {"sha256": "a" * 64, "size": 100},
             f"{step:07d}_lane_state.safetensors": {"sha256": "b" * 64, "size": 200}}
    names.update(files)
    return {"format": 2, "step": step, "step_file": f"{step:07d}_adapters.safetensors",
            "state_file": f"{step:07d}_lane_state.safetensors", "files": names}


def test_named_files_lists_names_with_sha_and_size():
    got = named_files(record(**{"adapter_config.json": {"sha256": "c" * 64, "size": 3}}))
    assert got == {"0000010_adapters.safetensors": ("a" * 64, 100), "0000010_lane_state.safetensors": ("b" * 64, 200),
                   "adapter_config.json": ("c" * 64, 3)}


@pytest.mark.parametrize("name", ["../x", "sub/x", ".hidden", ".x.tmp1.safetensors", "a\\b", "a\nb", "", ".",
                                  "..", "x" * 256, 7])
def test_named_files_refuses_anything_but_a_plain_name(name):
    with pytest.raises(CheckpointError, match="not a plain file name"):
        r = record()
        r["files"][name] = {"sha256": "c" * 64, "size": 1}
        named_files(r)


@pytest.mark.parametrize("change,words", [
    ({"format": 1}, "format 1, not 2"),
    ({"files": {}}, "names no files"),
    ({"files": []}, "names no files"),
    ({"step_file": "0000009_adapters.safetensors"}, "step_file '0000009_adapters.safetensors' is not among"),
    ({"files": {"0000010_adapters.safetensors": {"sha256": "A" * 64, "size": 1}}}, "needs a sha256 and a size"),
    ({"files": {"0000010_adapters.safetensors": {"sha256": "a" * 64, "size": True}}}, "needs a sha256 and a size"),
    ({"files": {"0000010_adapters.safetensors": {"sha256": "a" * 64, "size": -1}}}, "needs a sha256 and a size"),
    ({"files": {"0000010_adapters.safetensors": "a" * 64}}, "needs a sha256 and a size"),
    ({"step_file": {}}, "step_file {} is not among"),  # unhashable: a refusal, not a TypeError
    ({"state_file": ["x"]}, "state_file \\['x'\\] is not among"),
])
def test_named_files_refuses_a_malformed_record(change, words):
    with pytest.raises(CheckpointError, match=words):
        named_files({**record(), **change})


def test_the_gate_never_looks_at_the_fixed_name_adapters():
    f = run_facts()  # its adapters.safetensors is torn and matches nothing: the gate passes anyway
    assert checkpoint.gate("mac4", RunFacts.from_json(f), 10).ok
    assert checkpoint.gate("mac4", RunFacts.from_json(f), 10).figures["adapter_sha256"] == "a" * 12
    f["checkpoint"]["data"]["files"]["../escape"] = {"sha256": "e" * 64, "size": 1}
    g = checkpoint.gate("mac4", RunFacts.from_json(f), 10)
    assert (g.ok, g.verdict) == (False, "bad-checkpoint") and "'../escape'" in g.detail


# --- on-host pure parts --------------------------------------------------------------------------

def test_a_record_keeps_the_last_keep_minus_one_commits_before_it():
    r5 = dict(record(5), previous=[dict(record(4))])
    assert [r["step"] for r in commit.previous_commits(r5, 6, keep=3)] == [5, 4]
    assert [r["step"] for r in commit.previous_commits(r5, 6, keep=2)] == [5]
    assert all("previous" not in r for r in commit.previous_commits(r5, 6, keep=3))
    assert [r["step"] for r in commit.previous_commits(r5, 5, keep=3)] == [4], "a re-commit of 5 drops the old 5"
    assert commit.previous_commits(None, 6, keep=2) == []


def test_record_at_finds_a_kept_commit_with_its_own_previous():
    r = dict(record(10), previous=[record(9), record(8)])
    assert commit.record_at(r, 10) is not None and commit.record_at(r, 10)["previous"][0]["step"] == 9
    assert commit.record_at(r, 9)["step"] == 9 and [p["step"] for p in commit.record_at(r, 9)["previous"]] == [8]
    assert commit.record_at(r, 7) is None


def test_prune_keeps_what_the_record_and_its_previous_commits_name(tmp_path):
    names = ["0000003_adapters.safetensors", "0000003_lane_state.safetensors", "0000006_adapters.safetensors",
             "0000006_lane_state.safetensors", "0000009_adapters.safetensors", "0000009_lane_state.safetensors",
             "0000012_adapters.safetensors", "adapters.safetensors", "adapter_config.json", "notes.txt"]
    for n in names:
        (tmp_path / n).write_text(n)
    commit.prune(tmp_path, dict(record(9), previous=[record(6)]))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(set(names) - {
        "0000003_adapters.safetensors", "0000003_lane_state.safetensors", "0000012_adapters.safetensors"})
    format1 = {"step": 6, "step_file": "0000006_adapters.safetensors", "state_file": "lane_state.safetensors"}
    commit.prune(tmp_path, dict(record(9), previous=[format1]))
    assert not (tmp_path / "0000006_lane_state.safetensors").exists()
    assert (tmp_path / "0000006_adapters.safetensors").exists(), "an older lane's commit keeps its step file"


@pytest.mark.parametrize("fault", [None, "kill-during-save@5", "kill-at@5:after-checkpoint",
                                   "kill-at@12:during-refresh:1"])
def test_fault_syntax_accepted(fault):
    commit.check_fault(fault)


@pytest.mark.parametrize("fault", ["kill-at@5:after-lunch", "kill-at@5", "kill-during-save@x", "kill-at@5:after-prune:"])
def test_fault_syntax_refused_naming_the_points(fault):
    with pytest.raises(commit.LaneError) as info:
        commit.check_fault(fault)
    assert info.value.kind == "spec" and "after-checkpoint" in str(info.value)


@pytest.mark.parametrize("keep,words", [(1, "below 2"), (0, "not a positive whole number"),
                                        (True, "not a positive whole number"), ("3", "not a positive whole number")])
def test_keep_steps_is_at_least_two(keep, words):
    import yaml
    from thunderlane import profiles
    data = yaml.safe_load((profiles.PROFILE_DIR / "synthetic_mechanics.yaml").read_text())
    assert profiles.parse("p", data, "p.yaml").keep_steps == 2
    assert profiles.parse("p", {**data, "lane": {**data["lane"], "keep_steps": 3}}, "p.yaml").keep_steps == 3
    with pytest.raises(profiles.ProfileError, match=f"p.yaml: lane.keep_steps: .*{words}"):
        profiles.parse("p", {**data, "lane": {**data["lane"], "keep_steps": keep}}, "p.yaml")


def test_status_shows_whether_the_committed_files_hold():
    from thunderlane.report import HostResult
    from thunderlane.status import _row
    ok = HostResult("mac4", "complete", True)
    f = run_facts()
    f["versions"] = {"python": "3.11", "mlx": "0.1", "mlx-lm": "0.2"}
    row = _row("mac4", ok, ok, RunFacts.from_json(f))
    assert (row.ok, row.figures["step"], row.figures["commit"]) == (True, 10, "reached")
    f["files"]["0000010_lane_state.safetensors"]["sha256"] = "e" * 64
    row = _row("mac4", ok, ok, RunFacts.from_json(f))
    assert (row.ok, row.figures["commit"]) == (False, "bad-adapter")
    assert row.detail.startswith("commit: 0000010_lane_state.safetensors sha256 eeeeeeeeeeee does not match")
    fresh = RunFacts.from_json({"exists": True, "run_dir": "/r", "checkpoint": {"present": False}})
    assert _row("mac4", ok, ok, fresh).figures["commit"] == "-" and _row("mac4", ok, ok, fresh).ok


def test_a_rank_that_resumed_below_its_checkpoint_points_it_back_before_rewriting(tmp_path):
    """settle_rollback: the older commit's record replaces checkpoint.json (its files are still
    there); with no older commit the newer record moves into .lane (never deleted)."""
    import json
    from types import SimpleNamespace
    (tmp_path / ".lane").mkdir()
    newer = dict(record(10), previous=[record(5)])
    (tmp_path / "checkpoint.json").write_text(json.dumps(newer))
    lane = SimpleNamespace(run_dir=tmp_path, ahead=False, committed=None)
    commit.settle_rollback(lane)
    assert json.loads((tmp_path / "checkpoint.json").read_text()) == newer, "not ahead: untouched"
    lane = SimpleNamespace(run_dir=tmp_path, ahead=True, committed=commit.record_at(newer, 5))
    commit.settle_rollback(lane)
    assert json.loads((tmp_path / "checkpoint.json").read_text()) == dict(record(5), previous=[])
    assert lane.ahead is False
    (tmp_path / "checkpoint.json").write_text(json.dumps(newer))
    commit.settle_rollback(SimpleNamespace(run_dir=tmp_path, ahead=True, committed=None))
    assert not (tmp_path / "checkpoint.json").exists()
    assert json.loads((tmp_path / ".lane" / "checkpoint.rolled-back.json").read_text()) == newer


def test_a_rank_keeps_a_step_it_committed_or_still_holds_in_previous():
    first, later = record(5), dict(record(10), previous=[record(5)])
    assert checkpoint.keeps(first, 5) and checkpoint.keeps(later, 10) and checkpoint.keeps(later, 5)
    assert not checkpoint.keeps(later, 3)
    assert checkpoint.keeps(first, 0)  # its first commit: restarting from 0 drops nothing kept
    assert not checkpoint.keeps(later, 0)  # it had committed before: 0 would drop steps


def test_preflight_lets_ranks_one_commit_apart_resume_together_and_refuses_a_rank_that_lost_the_step():
    from thunderlane.window.preflight import _steps_apart
    ahead = RunFacts.from_json(run_facts(10, previous=[record(5)]))
    behind, none = RunFacts.from_json(run_facts(5)), RunFacts.from_json({"exists": False, "run_dir": "/r",
                                                                         "checkpoint": {"present": False}})
    problems = {"mac4": [], "mac5": []}
    _steps_apart({"mac4": ahead, "mac5": behind}, problems)
    assert problems == {"mac4": [], "mac5": []}
    _steps_apart({"mac4": ahead, "mac5": none}, problems)
    assert problems["mac5"] == [] and problems["mac4"] == [
        "committed step 10 here and step 0's files are no longer kept, so the ranks cannot resume "
        "together ({'mac4': 10, 'mac5': 0})"]
