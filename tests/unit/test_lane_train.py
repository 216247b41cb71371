"""The training entry (thunderlane/onhost/lane_train.py): its config merge, its event lines, and,
run as the bundle mlx.launch sends, exact resume on one process of the tiny fixture model."""
import json
import os
import subprocess
import sys

import pytest

from thunderlane import onhost
from thunderlane.lab.fixtures import corpus
from thunderlane.lab.fixtures import model as fixture
from thunderlane.onhost import files, lane_train
from thunderlane.onhost.lane_train import EXIT_CODES, LaneError, epoch_and_skip, epoch_seed

# launchers/profiles/synthetic_mechanics.yaml without its lane: section, sized for 2 CPU cores,
# and without lora_parameters.dropout: mlx-lm's default (0.0) must fill it in.
CONFIG = {
    "model": fixture.REPO_ID, "fine_tune_type": "lora", "optimizer": "adam", "batch_size": 2,
    "learning_rate": 1.0e-3, "num_layers": 2, "lora_parameters": {"rank": 4, "scale": 20.0},
    "max_seq_length": 128, "mask_prompt": True, "save_every": 3, "val_batches": 1, "seed": 0,
}


def decode_events(text):
    """Every event in a rank's output, as the control side reads them: from the ``{`` after the
    last ``LANE `` of a line."""
    events = []
    for line in text.splitlines():
        at = line.rfind("LANE ")
        if at >= 0:
            event, end = json.JSONDecoder().raw_decode(line, at + len("LANE "))
            assert line[end:].strip() == "", line
            events.append(event)
    return events


# --- pure parts ----------------------------------------------------------------------------------

def test_config_merge_fills_nested_defaults_and_keeps_profile_values():
    from mlx_lm.lora import CONFIG_DEFAULTS

    profile = {"lora_parameters": {"rank": 4, "scale": 10.0}, "learning_rate": 3e-4, "seed": None}
    config = lane_train.merged_config(profile, CONFIG_DEFAULTS)
    assert config["lora_parameters"] == {"rank": 4, "scale": 10.0, "dropout": 0.0}
    assert config["learning_rate"] == 3e-4
    assert config["seed"] == CONFIG_DEFAULTS["seed"], "null in a profile means unset, as in mlx-lm"
    assert config["val_batches"] == 2 and CONFIG_DEFAULTS["val_batches"] != 2, "the lane's override"
    assert (config["mask_prompt"], config["optimizer"], config["grad_checkpoint"]) == (False, "adam", False)
    assert config["num_layers"] == CONFIG_DEFAULTS["num_layers"]
    assert lane_train.merged_config({"val_batches": 7, "mask_prompt": True}, CONFIG_DEFAULTS)[
        "val_batches"] == 7
    config["lora_parameters"]["rank"] = 99
    config["optimizer_config"]["adam"]["x"] = 1
    assert CONFIG_DEFAULTS["lora_parameters"]["rank"] == 8 and CONFIG_DEFAULTS["optimizer_config"]["adam"] == {}


def test_an_event_is_one_line_and_round_trips_any_message(capfd):
    msg = 'cannot read /srv/run_dir/my_data set/"train".jsonl\nsecond line: it\'s_here'
    lane_train.emit(3, "mac_4", "error", kind="dataset", msg=msg, loss=0.123456789, step=7, val_loss=None)
    out = capfd.readouterr().out
    assert out.startswith("\nLANE {") and out.endswith("}\n") and out.count("\n") == 2
    (event,) = decode_events("progress bar junk " + out.strip("\n"))
    assert event == {"rank": 3, "host": "mac_4", "phase": "error", "kind": "dataset", "msg": msg,
                     "loss": 0.123457, "step": 7, "val_loss": None}
    assert list(event)[:3] == ["rank", "host", "phase"]


def test_data_position_edges():
    assert epoch_and_skip(0, 6, 2) == (0, 0)
    assert epoch_and_skip(5, 6, 2) == (1, 2)
    assert epoch_and_skip(6, 7, 2) == (2, 0), "a row left over at an epoch's end is never used"
    with pytest.raises(LaneError) as info:
        epoch_and_skip(1, 1, 2)
    assert info.value.kind == "dataset"
    assert epoch_seed(0, 5) == 5 and epoch_seed(1, 0) == 1_000_003
    assert epoch_seed(2**32, 0) == 0 and 0 <= epoch_seed(12345, 67) < 2**32


# --- the entry, run as mlx.launch runs it (one rank) ---------------------------------------------

@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A hub cache with the fixture model and a 16-row corpus: 8 training rows are 4 batches an
    epoch, so 10 steps cross two epochs and a resume at 5 starts mid-epoch; 4 validation rows are 2
    batches, of which val_batches=1 takes one by the seed."""
    root = tmp_path_factory.mktemp("lane")
    data = root / "nko_data"
    corpus.build_corpus(data, rows=16, split=(0.5, 0.25, 0.25))
    built = fixture.build_model_cache(root / "hub", corpus.corpus_texts(data))
    return {"root": root, "data": data, "hub": root / "hub", "revision": built["revision"]}


def window_spec(world, run_dir, to_step, data=None):
    """A spec as window.plan builds it, for one rank on this machine."""
    return {
        "fault": None, "profile": "unit_mechanics", "run_id": "unit_mechanics-0001", "target": 10,
        "to_step": to_step, "model": fixture.REPO_ID, "revision": world["revision"],
        "dataset_digest": "unit", "config": CONFIG, "command": "unit test",
        "ranks": [{"host": "local_host", "run_dir": str(run_dir), "hf_cache": str(world["hub"]),
                   "data": str(data or world["data"])}],
    }


def run_entry(world, spec, lab=True):
    """The bundled entry as a rank, as on a lab host (its sshd sets THUNDER_LAB_HOST) unless ``lab``
    is False (a real host)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLX_", "HF_", "THUNDER_LAB"))}
    env.update(HF_HUB_CACHE=str(world["hub"]), HF_HUB_OFFLINE="1", **({"THUNDER_LAB_HOST": "unit"} if lab else {}))
    proc = subprocess.run([sys.executable, "-c", onhost.entry_source(), json.dumps(spec)],
                          env=env, cwd=world["root"], capture_output=True, text=True, timeout=300)
    return proc, decode_events(proc.stdout)


def train_to(world, run_dir, to_step):
    proc, events = run_entry(world, window_spec(world, run_dir, to_step))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert events[-1]["phase"] == "done" and events[-1]["step"] == to_step, events
    return events


def test_two_windows_give_the_adapters_of_one(world):
    whole, halves = world["root"] / "run_whole", world["root"] / "run_halves"
    events = train_to(world, whole, 10)
    train_to(world, halves, 5)
    resumed = train_to(world, halves, 10)
    assert [e["step"] for e in resumed if e["phase"] == "resume"] == [5]
    assert [e["step"] for e in events if e["phase"] == "commit"] == [3, 6, 9, 10]
    steps = [e for e in events if e["phase"] == "step"]
    assert [e["step"] for e in steps] == list(range(1, 11))
    assert all(isinstance(e["loss"], float) and isinstance(e["lr"], float) for e in steps)
    one, two = (json.loads((d / "checkpoint.json").read_text()) for d in (whole, halves))
    assert one["step"] == two["step"] == 10
    assert two["window"] == {"from": 5, "to": 10}
    assert one["data_position"] == two["data_position"] == {"epoch": 2, "batch": 2, "seed": 0}
    assert one["weights_digest"] == two["weights_digest"]
    assert one["format"] == two["format"] == 2
    assert one["files"]["0000010_adapters.safetensors"] == two["files"]["0000010_adapters.safetensors"]
    assert set(one["files"]) == {"0000010_adapters.safetensors", "0000010_lane_state.safetensors", "adapter_config.json"}
    for name, entry in one["files"].items():
        assert entry == {"sha256": files.sha256_file(whole / name), "size": (whole / name).stat().st_size}
    assert one["step_file_sha256"] == one["files"][one["step_file"]]["sha256"]
    assert [r["step"] for r in one["previous"]] == [9], "lane.keep_steps defaults to 2"
    assert sorted(p.name for p in whole.glob("0*")) == [
        "0000009_adapters.safetensors", "0000009_lane_state.safetensors",
        "0000010_adapters.safetensors", "0000010_lane_state.safetensors"], "older step files are pruned"
    assert (whole / "adapters.safetensors").read_bytes() == (whole / "0000010_adapters.safetensors").read_bytes()
    assert one["val_loss"] == two["val_loss"], "the same validation batches in every window"
    adapter_config = json.loads((halves / "adapter_config.json").read_text())
    assert adapter_config["lora_parameters"]["dropout"] == 0.0
    assert (halves / ".lane" / "rank0.pid").is_file()
    assert not list(halves.glob(".*.tmp*")) and not (halves / ".lane" / "unused.safetensors").exists()


def test_a_missing_dataset_is_an_event_with_the_path_intact(world):
    missing = world["root"] / "no_such_data_dir"
    proc, events = run_entry(world, window_spec(world, world["root"] / "run_err", 2, data=missing))
    assert proc.returncode == EXIT_CODES["dataset"], proc.stdout + proc.stderr
    error = events[-1]
    assert (error["phase"], error["kind"], error["rank"], error["host"]) == ("error", "dataset", 0, "local_host")
    assert f"{missing / 'train.jsonl'} is missing on local_host" in error["msg"]


def test_a_kill_during_save_leaves_no_torn_file_under_a_final_name(world):
    run_dir = world["root"] / "run_fault"
    spec = dict(window_spec(world, run_dir, 3), fault="kill-during-save@3")
    proc, _ = run_entry(world, spec)
    assert proc.returncode == -9, proc.stdout + proc.stderr
    (torn,) = run_dir.glob(".*.tmp*")
    assert torn.name.startswith(".0000003_adapters.tmp") and torn.suffix == ".safetensors"
    assert not (run_dir / "checkpoint.json").exists() and not (run_dir / "0000003_adapters.safetensors").exists()
    train_to(world, run_dir, 3)
    assert not list(run_dir.glob(".*.tmp*"))
    assert json.loads((run_dir / "checkpoint.json").read_text())["window"] == {"from": 0, "to": 3}


def test_the_fault_hook_is_refused_outside_the_lab(world):
    """THUNDER_FAULT in a real run's environment must not kill real ranks: the rank refuses to train."""
    run_dir = world["root"] / "run_real"
    proc, events = run_entry(world, dict(window_spec(world, run_dir, 3), fault="kill-during-save@3"), lab=False)
    assert proc.returncode == EXIT_CODES["spec"], proc.stdout + proc.stderr
    assert (events[-1]["phase"], events[-1]["kind"]) == ("error", "spec")
    assert "lab" in events[-1]["msg"] and "THUNDER_FAULT" in events[-1]["msg"]
    assert not (run_dir / "checkpoint.json").exists() and not list(run_dir.glob("*.safetensors"))


def test_a_bad_spec_is_a_spec_event():
    proc = subprocess.run([sys.executable, "-c", onhost.entry_source(), "{not json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == EXIT_CODES["spec"], proc.stdout + proc.stderr
    (event,) = decode_events(proc.stdout)
    assert (event["phase"], event["kind"], event["rank"]) == ("error", "spec", 0)
    assert isinstance(event["host"], str) and event["msg"].startswith("bad window spec: ")


# --- a kill at every point of a commit (fault case 18 on one process; the lab test adds ranks) ----

# commit.POINTS that are distinct moments on one process: "before-state" is "after-adapters", and so
# on; "before-checkpoint" differs from "after-config" only across ranks (the barrier between them).
KILL_POINTS = ("before-adapters", "during-adapters", "after-adapters", "during-state", "after-state",
               "during-config", "after-config", "during-checkpoint", "after-checkpoint", "during-refresh",
               "after-refresh", "after-prune")
COMMITTED_AT = ("after-checkpoint", "during-refresh", "after-refresh", "after-prune")  # step N stands


def committed(run_dir):
    path = run_dir / "checkpoint.json"
    return json.loads(path.read_text())["step"] if path.exists() else 0


def assert_gate_at(run_dir, step):
    """The control side's gate over the probe's facts of this run directory, at ``step``."""
    from thunderlane import checkpoint
    from thunderlane.facts import RunFacts
    from thunderlane.onhost.runs import lane_facts
    g = checkpoint.gate("local_host", RunFacts.from_json(lane_facts(str(run_dir.parent), run_dir.name)), step)
    assert g.ok, g.detail


def test_a_kill_at_every_commit_point_resumes_from_the_last_commit_and_ends_equal(world):
    """Each window is killed at the next point of its first commit (one commit a step); after each
    kill checkpoint.json names whole matching files of the last committed step, the next window
    resumes from exactly that step, and the chain ends equal to an uninterrupted run."""
    import mlx.core as mx
    config = dict(CONFIG, save_every=1)
    chain, whole, last = world["root"] / "run_chain", world["root"] / "run_chain_whole", len(COMMITTED_AT) + 4
    proc, _ = run_entry(world, dict(window_spec(world, chain, 2), config=config))  # a commit to tear
    assert proc.returncode == 0, proc.stdout + proc.stderr
    expected = 2
    for point in KILL_POINTS:
        spec = dict(window_spec(world, chain, last), config=config, fault=f"kill-at@{expected + 1}:{point}")
        proc, events = run_entry(world, spec)
        assert proc.returncode == -9, (point, proc.stdout[-2000:] + proc.stderr[-2000:])
        assert [e["step"] for e in events if e["phase"] == "resume"] == [expected], point
        expected += point in COMMITTED_AT
        assert committed(chain) == expected, point
        assert_gate_at(chain, expected)
    proc, events = run_entry(world, dict(window_spec(world, chain, last), config=config))
    assert proc.returncode == 0 and [e["step"] for e in events if e["phase"] == "resume"] == [expected]
    proc, _ = run_entry(world, dict(window_spec(world, whole, last), config=config))
    assert proc.returncode == 0
    a, b = (mx.load(str(d / f"{last:07d}_adapters.safetensors")) for d in (chain, whole))
    assert set(a) == set(b) and max(mx.abs(a[k] - b[k]).max().item() for k in a) <= 1e-6
    assert_gate_at(chain, last)
    assert not list(chain.glob(".*.tmp*"))


def test_resume_verifies_the_named_files_and_refuses_a_changed_one(world):
    """An older lane's checkpoint.json (format 1) still resumes and is rewritten as format 2; a named
    file whose bytes changed (same size) is a ``resume`` refusal naming it, and nothing is touched."""
    run_dir = world["root"] / "run_verify"
    train_to(world, run_dir, 3)
    ckpt = json.loads((run_dir / "checkpoint.json").read_text())
    old = {k: v for k, v in ckpt.items() if k not in ("format", "files", "previous")}
    (run_dir / "checkpoint.json").write_text(json.dumps(old))
    events = train_to(world, run_dir, 4)
    assert [e["step"] for e in events if e["phase"] == "resume"] == [3]
    assert json.loads((run_dir / "checkpoint.json").read_text())["format"] == 2
    state = run_dir / "0000004_lane_state.safetensors"
    data = bytearray(state.read_bytes())
    data[-1] ^= 0xFF
    state.write_bytes(bytes(data))
    before = (run_dir / "checkpoint.json").read_bytes()
    proc, events = run_entry(world, window_spec(world, run_dir, 5))
    assert proc.returncode == EXIT_CODES["resume"] == 17, proc.stdout + proc.stderr
    assert (events[-1]["phase"], events[-1]["kind"]) == ("error", "resume")
    assert f"{state} does not match the size and sha256" in events[-1]["msg"] and "step 4" in events[-1]["msg"]
    assert (run_dir / "checkpoint.json").read_bytes() == before and state.read_bytes() == bytes(data)


def test_a_backend_that_cannot_init_is_a_backend_event(world):
    """The rank asks mlx for the spec's backend by name (never 'any'): one mlx refuses is a clear
    error naming it and the host, before any model is loaded. The start event shows the cache the
    prologue gave the rank."""
    run_dir = world["root"] / "run_backend"
    proc, events = run_entry(world, dict(window_spec(world, run_dir, 2), backend="no-such-backend"))
    assert proc.returncode == EXIT_CODES["backend"], proc.stdout + proc.stderr
    assert events[0]["phase"] == "start" and events[0]["hf_hub_cache"] == str(world["hub"])
    assert (events[-1]["phase"], events[-1]["kind"]) == ("error", "backend")
    assert "backend='no-such-backend'" in events[-1]["msg"] and "local_host" in events[-1]["msg"]


def test_a_window_planned_from_another_step_trains_nothing(world):
    """fab plans the first window from preflight's facts, before the chunk runner takes the lock: the
    spec carries the writer's step it was planned from, and the ranks refuse it if another window
    moved checkpoint.json since (here: planned from 1, the run has no commit)."""
    run_dir = world["root"] / "run_moved"
    proc, events = run_entry(world, dict(window_spec(world, run_dir, 2), from_step=1))
    assert proc.returncode == EXIT_CODES["resume"], proc.stdout + proc.stderr
    assert (events[-1]["phase"], events[-1]["kind"]) == ("error", "resume")
    assert "planned from the writer's step 1" in events[-1]["msg"] and "at step 0" in events[-1]["msg"]
    assert not (run_dir / "checkpoint.json").exists()
    proc, events = run_entry(world, dict(window_spec(world, run_dir, 1), from_step=0))
    assert proc.returncode == 0 and events[-1]["phase"] == "done", proc.stdout + proc.stderr
