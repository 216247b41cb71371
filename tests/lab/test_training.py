"""The training lane on the lab: real sshd, real mlx.launch (ring backend) across the lab hosts,
real mlx-lm training, real rsync. Uses copies of the shipped profiles with their own run names."""
import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.lab.conftest import fab_json, no_rank_left, run_facts, start_fab, train, wait_for_step


def adapters(path):
    import mlx.core as mx
    return mx.load(str(path))


def test_handoff_end_to_end_from_fresh_lab(lab_inv):
    """The milestone: mac4 partial -> sync -> step 10 in one 10-step window -> mirrored, reported."""
    code, data = fab_json(lab_inv, "handoff", "--profile", "partial_real_stage1_stable")
    assert code == 0, data.get("blockers")
    assert {r["host"]: r["verdict"] for r in data["cache_before"]}["mac4"] == "partial"
    assert data["sync"]["mac4"]["before"] == "partial" and data["sync"]["mac4"]["after"] == "complete"
    assert data["train"]["verdict"] == "success" and data["train"]["gate_ok"]
    assert data["mirror"]["ok"] and data["mirror"]["step"] == 10
    mirror = Path(data["mirror"]["local_dir"])
    ckpt = json.loads((mirror / "checkpoint.json").read_text())
    assert ckpt["step"] == 10 and ckpt["world_size"] == 2 and ckpt["hosts"] == ["mac4", "mac5"]
    for name, entry in ckpt["files"].items():  # the files the commit consists of, as committed
        assert (mirror / name).stat().st_size == entry["size"] > 0
    assert set(ckpt["files"]) >= {"0000010_adapters.safetensors", "0000010_lane_state.safetensors"}
    md = (mirror / "handoff_report.md").read_text()
    assert "reached step 10: **yes**" in md and "mac4 was partial before the sync" in md
    plan = Path(data["train"]["plans"][0])  # Markdown names the plan's file; JSON keeps the whole line
    assert f"`{plan}/mlx_launch_line`" in md and "--backend ring" not in md
    assert "--backend ring" in data["train"]["launches"][0]
    assert (plan / "mlx_launch_line").read_text().strip() == data["train"]["launches"][0]
    remote = Path(lab_inv.hosts["mac4"].runs_root) / "gemma4_e2b_nko_correction_partial_real_stage1_stable"
    assert (remote / "handoff_report.json").is_file()
    assert no_rank_left()


def test_two_windows_equal_one_and_resume(warm_lab, profile_dir):
    code, one = train(warm_lab, profile_dir, "run_a", "--target", "10", "--window", "10")
    assert code == 0 and one["verdict"] == "success", one
    code, two = train(warm_lab, profile_dir, "run_b", "--target", "10", "--window", "5")
    assert code == 0 and two["verdict"] == "success", two
    assert len(two["launches"]) == 2  # two windows, each its own mlx.launch
    a = adapters(Path(warm_lab.hosts["mac4"].runs_root) / "test_run_a" / "0000010_adapters.safetensors")
    b = adapters(Path(warm_lab.hosts["mac4"].runs_root) / "test_run_b" / "0000010_adapters.safetensors")
    import mlx.core as mx
    assert set(a) == set(b)
    diff = max(mx.abs(a[k] - b[k]).max().item() for k in a)
    assert diff <= 1e-6, diff
    # every rank keeps its own identical replica
    on5 = adapters(Path(warm_lab.hosts["mac5"].runs_root) / "test_run_b" / "0000010_adapters.safetensors")
    assert max(mx.abs(b[k] - on5[k]).max().item() for k in b) == 0

    before = run_facts(warm_lab, "mac4", "test_run_a")["checkpoint"]["sha256"]
    code, again = train(warm_lab, profile_dir, "run_a", "--target", "10", "--window", "10")
    assert code == 0 and again["verdict"] == "already-at-target" and not again["trained"]
    assert run_facts(warm_lab, "mac4", "test_run_a")["checkpoint"]["sha256"] == before

    code, more = train(warm_lab, profile_dir, "run_a", "--target", "20", "--window", "10")
    assert code == 0 and more["verdict"] == "success" and more["start_step"] == 10
    ckpt = run_facts(warm_lab, "mac4", "test_run_a")["checkpoint"]["data"]
    assert ckpt["step"] == 20 and ckpt["window"] == {"from": 10, "to": 20}
    assert no_rank_left()


def test_cold_cache_is_refused_then_fails_fast_as_cache(lab_inv, profile_dir):
    """mac4 is partial (fresh lab): preflight refuses naming mac4; bypassed, the launch fails at
    once (HF_HUB_OFFLINE) and is classified as cache/model materialization, not left hanging."""
    code, r = train(lab_inv, profile_dir, "run_a")
    assert code == 1 and r["verdict"] == "refused"
    refused = [p for p in r["preflight"] if not p["ok"]]
    assert [p["host"] for p in refused] == ["mac4"] and "cache partial" in refused[0]["detail"]
    t0 = time.monotonic()
    code, r = train(lab_inv, profile_dir, "run_a", "--skip-preflight", "--watchdog", "120")
    assert code == 1 and r["verdict"] == "stalled-before-training", r
    assert "mac4" in r["explanation"] and "cache" in r["explanation"]
    assert time.monotonic() - t0 < 100
    assert no_rank_left()


def test_dataset_missing_on_mac5_is_refused(warm_lab, profile_dir):
    os.rename(warm_lab.hosts["mac5"].dataset_root, warm_lab.hosts["mac5"].dataset_root + ".away")
    code, r = train(warm_lab, profile_dir, "run_a")
    assert code == 1 and r["verdict"] == "refused"
    refused = {p["host"]: p["detail"] for p in r["preflight"] if not p["ok"]}
    assert list(refused) == ["mac5"] and "does not exist" in refused["mac5"]


def test_killed_rank_leaves_last_commit_and_no_process(warm_lab, profile_dir):
    proc = start_fab(warm_lab, "train-window", "--profile", "run_a", "--target", "60", "--window", "60",
                     "--watchdog", "20", "--json", env={"THUNDER_PROFILES": str(profile_dir)})
    if not wait_for_step(warm_lab, "mac5", "test_run_a", 5):
        proc.kill()
        pytest.fail("no commit at step 5 within 120 s")
    victim = [r for r in run_facts(warm_lab, "mac5", "test_run_a")["ranks"] if r["alive"]][0]
    os.kill(victim["pid"], signal.SIGKILL)
    t_kill = time.monotonic()
    out, err = proc.communicate(timeout=180)
    result = json.loads(out)
    print("killed-rank outcome:", result["verdict"], result["explanation"], f"{time.monotonic() - t_kill:.1f}s")
    assert proc.returncode == 1
    assert result["verdict"] in ("runtime-crash", "distributed-hang"), result
    assert time.monotonic() - t_kill < 20 + 30
    facts = run_facts(warm_lab, "mac4", "test_run_a")
    step = facts["checkpoint"]["data"]["step"]
    assert step % 5 == 0 and step < 60  # the last commit stands; nothing torn under a final name
    from thunderlane.checkpoint import gate
    from thunderlane.facts import RunFacts
    assert gate("mac4", RunFacts.from_json(facts), step).ok
    assert not facts["temp_files"] or all(".tmp" in t for t in facts["temp_files"])
    assert no_rank_left()
