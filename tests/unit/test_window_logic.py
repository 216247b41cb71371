"""Pure parts of the training lane: profiles, LANE lines, triage, the checkpoint gate, data position."""
import copy
import json

import pytest

from thunderlane import checkpoint, profiles, window
from thunderlane.onhost.lane_train import LaneError, epoch_and_skip, epoch_seed
from thunderlane.facts import RunFacts
from thunderlane.report import printable
from thunderlane.window import RunOutcome, classify, describe, parse_event


def test_shipped_profiles_load():
    assert {"partial_real_stage1_stable", "partial_real_stage1", "synthetic_mechanics"} <= set(profiles.known())
    p = profiles.load("partial_real_stage1_stable")
    assert p.writer == "mac4" and p.hosts == ("mac4", "mac5")
    assert p.config["batch_size"] % len(p.hosts) == 0


@pytest.mark.parametrize("name", ["nope", "../etc/passwd", "a;rm", "Partial"])
def test_unknown_or_bad_profile_lists_known(name):
    with pytest.raises(profiles.ProfileError, match="synthetic_mechanics"):
        profiles.load(name)


def test_profile_name_with_a_trailing_newline_is_refused():
    with pytest.raises(profiles.ProfileError, match=r"must match \[a-z0-9_\]"):
        profiles.load("partial_real_stage1_stable\n")


BASE = {"batch_size": 4, "num_layers": 2, "lora_parameters": {"rank": 4, "scale": 20.0},
        "max_seq_length": 128, "save_every": 5, "seed": 0, "learning_rate": 1e-4,
        "lane": {"hosts": ["mac4", "mac5"], "run_name": "r"}}


@pytest.mark.parametrize("edit,why", [
    (lambda d: d.update(batch_size=3), "divisible"),
    (lambda d: d.update(bogus=1), "unknown field .bogus."),
    (lambda d: d["lane"].update(hosts=["mac4", "mac4"]), "distinct"),
    (lambda d: d["lane"].update(run_name="../x"), "run_name"),
    (lambda d: d.update(lora_parameters={"rank": 4, "alpha": 8}), "scale"),
    (lambda d: d.update(data="relative/dir"), "relative"),
    (lambda d: d.update(save_every=0), "save_every"),
    (lambda d: d.pop("lane"), "lane"),
    (lambda d: d["lane"].update(run_name="r\n"), "run_name"),
    (lambda d: d["lane"].update(hosts=["mac4\n", "mac5"]), "lane.hosts"),
    (lambda d: d["lane"].update(hosts=["mac4", "local"]), r"p\.yaml: lane\.hosts: 'local' is the control machine"),
    (lambda d: d["lane"].update(hosts=["local"]), "control machine"),
    (lambda d: d["lane"].update(hosts=[["mac4"], "mac5"]), "lane.hosts"),
])
def test_bad_profiles_are_refused(edit, why):
    data = copy.deepcopy(BASE)
    edit(data)
    with pytest.raises(profiles.ProfileError, match=why):
        profiles.parse("p", data, "p.yaml")


def test_parse_lane_lines_even_after_other_output():
    assert parse_event('LANE {"rank": 0, "host": "mac4", "phase": "step", "step": 3, "loss": 7.1}') == \
        {"rank": 0, "host": "mac4", "phase": "step", "step": 3, "loss": 7.1}
    assert parse_event('\x1b[2Ktrain 40%LANE {"rank": 1, "host": "mac5", "phase": "done", "step": 5}')["host"] == "mac5"
    assert parse_event("chunks: window 0 -> 5") is None
    assert parse_event('PLANE {"rank": 0}') is None
    assert parse_event('LANE {"rank": 0, "host": "mac4", "phase": "st') is None  # cut short: not an event


RUN_DIR = "runs/gemma4_e2b_nko_correction_partial_real_stage1_stable/adapters.safetensors"


def test_rank_errors_keep_paths_exactly_as_written():
    """Paths and messages from a rank reach the operator as written: underscores intact."""
    msg = f"saving step 5 in {RUN_DIR} failed: local_files_only"
    line = "LANE " + json.dumps({"rank": 0, "host": "mac4", "phase": "error", "kind": "write", "msg": msg})
    event = parse_event("mlx.launch noise " + line)
    assert event["msg"] == msg
    assert RUN_DIR in describe(event) and "local_files_only" in describe(event)
    assert RUN_DIR in classify(outcome([ev("mac4", "start"), event], code=12), False)[1]


def test_control_characters_from_a_host_are_escaped():
    event = {"host": "mac4", "phase": "error", "kind": "runtime", "msg": "boom\x1b[2J\rgone\nnext"}
    shown = describe(event)
    assert "\x1b" not in shown and "\r" not in shown and "\n" not in shown
    assert "boom\\x1b[2J\\rgone\\nnext" in shown
    assert printable("ߊ_b/c") == "ߊ_b/c"


def outcome(events, code=0, watchdog=False, interrupted=False):
    return RunOutcome(command="x", exit_code=code, seconds=1.0, watchdog_fired=watchdog,
                      interrupted=interrupted, events=events)


def ev(host, phase, **kw):
    return {"host": host, "phase": phase, **kw}


STARTED = [ev("mac4", "start"), ev("mac5", "start")]
LOADED = STARTED + [ev("mac4", "model-loaded"), ev("mac5", "model-loaded")]


@pytest.mark.parametrize("o,gate_ok,verdict", [
    (outcome(LOADED + [ev("mac4", "done"), ev("mac5", "done")]), True, window.SUCCESS),
    (outcome(LOADED + [ev("mac4", "done")], code=1), True, window.NOISY),
    (outcome(STARTED + [ev("mac4", "error", kind="cache", msg="no shards")], code=10), False, window.STALLED),
    (outcome(STARTED, watchdog=True), False, window.STALLED),
    (outcome(LOADED + [ev("mac5", "error", kind="dataset", msg="missing")], code=11), False, window.DATASET),
    (outcome(LOADED + [ev("mac4", "step", step="3")], watchdog=True), False, window.HANG),
    (outcome(LOADED + [ev("mac4", "error", kind="write", msg="disk full")], code=12), False, window.WRITE),
    (outcome(LOADED + [ev("mac4", "error", kind="runtime", msg="boom")], code=1), False, window.CRASH),
    (outcome(LOADED + [ev("mac4", "done")], code=76), False, window.CRASH),
    (outcome(LOADED, interrupted=True, code=130), False, window.INTERRUPTED),
])
def test_triage(o, gate_ok, verdict):
    assert classify(o, gate_ok)[0] == verdict


def test_triage_names_the_silent_rank():
    v, why = classify(outcome(LOADED + [ev("mac4", "done")], code=76), False)
    assert "mac5" in why and "mac4" not in why.split("ended")[0]


def run_facts(step=10, **over):
    adapters, state = f"{step:07d}_adapters.safetensors", f"{step:07d}_lane_state.safetensors"
    named = {adapters: ("a" * 64, 100), state: ("b" * 64, 200), "adapter_config.json": ("c" * 64, 30)}
    data = {"format": 2, "step": step, "step_file": adapters, "step_file_sha256": "a" * 64,
            "state_file": state, "state_sha256": "b" * 64,
            "files": {n: {"sha256": h, "size": z} for n, (h, z) in named.items()}}
    data.update(over)
    files = {n: {"sha256": h, "size": z, "whole": True} for n, (h, z) in named.items()}
    files["adapters.safetensors"] = {"sha256": "d" * 64, "size": 5, "whole": False, "reason": "never trusted"}
    return {"exists": True, "run_dir": "/runs/r", "checkpoint": {"present": True, "data": data}, "files": files}


def test_gate_passes_only_on_target_with_matching_files():
    assert checkpoint.gate("mac4", RunFacts.from_json(run_facts()), 10).ok
    assert checkpoint.gate("mac4", RunFacts.from_json(run_facts(step=5)), 10).verdict == "wrong-step"
    assert "below" in checkpoint.gate("mac4", RunFacts.from_json(run_facts(step=5)), 10).detail
    assert "past" in checkpoint.gate("mac4", RunFacts.from_json(run_facts(step=15)), 10).detail


def test_gate_failures_say_which():
    f = run_facts()
    f["files"]["0000010_adapters.safetensors"]["sha256"] = "c" * 64
    assert "0000010_adapters.safetensors sha256" in checkpoint.gate("mac4", RunFacts.from_json(f), 10).detail
    f = run_facts()
    f["files"]["0000010_lane_state.safetensors"]["whole"] = False
    assert checkpoint.gate("mac4", RunFacts.from_json(f), 10).verdict == "bad-adapter"
    f = run_facts()
    f["files"]["adapter_config.json"]["size"] = 31
    assert "adapter_config.json is 31 bytes, checkpoint.json says 30" in checkpoint.gate(
        "mac4", RunFacts.from_json(f), 10).detail
    f = run_facts()
    del f["files"]["0000010_adapters.safetensors"]
    assert "missing" in checkpoint.gate("mac4", RunFacts.from_json(f), 10).detail
    f = run_facts()
    f["checkpoint"] = {"present": True, "error": "not valid JSON"}
    assert checkpoint.gate("mac4", RunFacts.from_json(f), 10).verdict == "torn"
    assert checkpoint.committed_step(RunFacts.from_json(f)) is None
    empty = RunFacts.from_json({"exists": True, "run_dir": "/r", "checkpoint": {"present": False}})
    assert checkpoint.gate("mac4", empty, 10).verdict == "no-checkpoint"


def test_data_position_is_a_function_of_the_step():
    assert epoch_and_skip(0, 480, 4) == (0, 0)
    assert epoch_and_skip(125, 480, 4) == (1, 5)
    assert epoch_seed(3, 1) != epoch_seed(3, 2)
    with pytest.raises(LaneError, match="fewer than batch_size"):
        epoch_and_skip(1, 3, 4)
