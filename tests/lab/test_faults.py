"""The fault and abuse suite (docs/RELIABILITY.md): every failure ends in a clear, classified
error, and nothing is lost. Real sshd, rsync, mlx.launch and mlx-lm on the lab; each case numbered
as in the reliability table."""
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from thunderlane import checkpoint, lab, layout, mirror, profiles, window
from thunderlane.facts import RunFacts
from thunderlane.lab import kit
from thunderlane.sync import launcher_argv, sync_cache
from tests.lab.conftest import (ROOT, by_host, fab, fab_json, no_rank_left, run_facts, start_fab, train,
                                wait_for_step)

REPO_DIR = kit.REPO_FOLDER
TRAINING_ENV = {}


def host_repo(inv, lab_dir, host):
    return kit.host_repo(lab_dir, host) if host != "local" else Path(inv.local.hf_cache) / REPO_DIR


def revision(repo):
    return (repo / "refs" / "main").read_text().strip()


def shard_blob(repo, n=1):
    link = repo / "snapshots" / revision(repo) / f"model-0000{n}-of-00002.safetensors"
    return repo / "blobs" / os.readlink(link).split("/")[-1]


def quiet_sync(inv, host, **kw):
    with open(os.devnull, "w") as devnull:
        return sync_cache(inv, inv.hosts[host], out=devnull, **kw)


# 1 -----------------------------------------------------------------------------------------------
def test_01_rsync_killed_mid_shard_leaves_no_partial_final_name(lab_inv, lab_dir):
    mac4 = lab_inv.hosts["mac4"]
    dest = str(lab_dir / "mac4" / ".cache" / "huggingface" / "hub")
    argv = launcher_argv(lab_inv, mac4, lab_inv.local.hf_cache, dest, bwlimit=64)
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    time.sleep(3)  # at 64 KiB/s the first shard is mid-flight
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    repo = host_repo(lab_inv, lab_dir, "mac4")
    local = host_repo(lab_inv, lab_dir, "local")
    for blob in (repo / "blobs").iterdir():
        if blob.name.startswith(".") or blob.name.endswith(".incomplete"):
            continue  # not a final name
        assert blob.stat().st_size == (local / "blobs" / blob.name).stat().st_size, blob.name
    assert quiet_sync(lab_inv, "mac4").ok  # a rerun converges
    leftovers = [b.name for b in (repo / "blobs").iterdir() if b.name.startswith(".") or "incomplete" in b.name]
    assert leftovers == []
    code, report = fab_json(lab_inv, "verify-cache", "--deep")
    assert code == 0, report


# 2 -----------------------------------------------------------------------------------------------
def test_02_flipped_byte_named_by_deep_and_repaired_on_request(lab_inv, lab_dir):
    quiet_sync(lab_inv, "mac4")
    blob = shard_blob(host_repo(lab_inv, lab_dir, "mac4"), 2)
    st = blob.stat()
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01
    blob.write_bytes(bytes(data))
    os.utime(blob, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert fab_json(lab_inv, "verify-cache")[0] == 0  # size, mtime and structure unchanged
    code, report = fab_json(lab_inv, "verify-cache", "--deep")
    assert code == 1 and by_host(report)["mac4"]["verdict"] == "corrupt"
    assert blob.name in by_host(report)["mac4"]["detail"]
    quiet_sync(lab_inv, "mac4")  # a plain sync trusts size and mtime: the damage stays
    assert fab_json(lab_inv, "verify-cache", "--deep")[0] == 1
    code, out = fab_json(lab_inv, "sync-cache", "--host", "mac4", "--checksum")
    assert code == 0 and out["results"][0]["after"] == "complete", out
    assert fab_json(lab_inv, "verify-cache", "--deep")[0] == 0


# 3 -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("side", ["local", "mac4"])
@pytest.mark.parametrize("target", ["/etc/hostname", "../../../../../outside"])
def test_03_escaping_snapshot_link_is_refused_before_any_sync(lab_inv, lab_dir, side, target):
    quiet_sync(lab_inv, "mac4")
    repo = host_repo(lab_inv, lab_dir, side)
    link = repo / "snapshots" / revision(repo) / "config.json"
    link.unlink()
    link.symlink_to(target)
    code, report = fab_json(lab_inv, "verify-cache")
    assert code == 1 and by_host(report)[side]["verdict"] == "corrupt"
    assert "outside the repo folder" in by_host(report)[side]["detail"]
    before = sorted(p.name for p in (host_repo(lab_inv, lab_dir, "mac4") / "blobs").iterdir())
    p = fab(lab_inv, "sync-cache", "--host", "mac4")
    assert p.returncode == 1 and ("outside" in p.stderr or "corrupt" in p.stderr), p.stderr
    assert sorted(p.name for p in (host_repo(lab_inv, lab_dir, "mac4") / "blobs").iterdir()) == before
    assert not (lab_dir / "outside").exists()


# 4 -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("side", ["local", "mac5"])
def test_04_ref_without_snapshot_is_a_clear_error(lab_inv, lab_dir, side):
    repo = host_repo(lab_inv, lab_dir, side)
    (repo / "refs" / "main").write_text("f" * 40)
    code, report = fab_json(lab_inv, "verify-cache")
    r = by_host(report)[side]
    assert code == 1 and r["verdict"] == "corrupt"
    assert f"refs/main names {'f' * 40} but snapshots/{'f' * 40} is missing" in r["detail"]
    if side == "local":
        assert "reference" in r["detail"]
        p = fab(lab_inv, "sync-cache", "--host", "mac4")
        assert p.returncode == 1 and "cannot be the source" in p.stderr


# 5 -----------------------------------------------------------------------------------------------
def test_05_kill_during_adapter_save_keeps_last_commit_and_never_mirrors_torn(warm_lab, profile_dir):
    code, r = train(warm_lab, profile_dir, "run_a", "--target", "5", "--window", "5")
    assert code == 0, r
    code, r = train(warm_lab, profile_dir, "run_a", "--target", "10", "--window", "5", "--watchdog", "30",
                    env={"THUNDER_FAULT": "kill-during-save@10"})
    assert code == 1 and r["verdict"] in ("runtime-crash", "distributed-hang"), r
    facts = run_facts(warm_lab, "mac4", "test_run_a")
    assert checkpoint.committed_step(RunFacts.from_json(facts)) == 5
    assert checkpoint.gate("mac4", RunFacts.from_json(facts), 5).ok  # the step-5 files are whole and match
    assert any(".tmp" in t for t in facts["temp_files"])  # the torn file exists only under a temp name
    assert "0000010_adapters.safetensors" not in facts["files"]
    prof = profiles.load("run_a", profile_dir)
    result = mirror.mirror_back(warm_lab, prof)
    local = Path(result.local_dir)
    assert not [p.name for p in local.iterdir() if ".tmp" in p.name]
    assert json.loads((local / "checkpoint.json").read_text())["step"] == 5
    assert no_rank_left()


# 6 -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("damage,verdict,words", [
    (lambda d: (d / "checkpoint.json").write_text('{"step": 5, "adap'), "torn", "not JSON"),
    (lambda d: (d / "checkpoint.json").write_text("[]"), "torn", "step"),
    (lambda d: _edit_ckpt(d, step=4), "wrong-step", "below the target"),
    (lambda d: _edit_ckpt(d, step=9), "wrong-step", "past the target"),
    (lambda d: _edit_named(d, "0000005_adapters.safetensors", sha256="0" * 64), "bad-adapter", "does not match"),
    (lambda d: (d / "0000005_adapters.safetensors").write_bytes(b"\0" * 16), "bad-adapter",
     "0000005_adapters.safetensors"),
])
def test_06_damaged_checkpoint_fails_the_gate_and_says_which(warm_lab, profile_dir, damage, verdict, words):
    code, r = train(warm_lab, profile_dir, "run_a", "--target", "5", "--window", "5")
    assert code == 0
    run = Path(warm_lab.hosts["mac4"].runs_root) / "test_run_a"
    damage(run)
    facts = run_facts(warm_lab, "mac4", "test_run_a")
    g = checkpoint.gate("mac4", RunFacts.from_json(facts), 5)
    assert not g.ok and g.verdict == verdict and words in g.detail
    if verdict != "torn":  # through the real task too: a second run at the target re-checks the gate
        code, r = train(warm_lab, profile_dir, "run_a", "--target", "5", "--skip-preflight")
        assert code == 1 and words in json.dumps(r)


def _edit_ckpt(run, **changes):
    path = run / "checkpoint.json"
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def _edit_named(run, name, **changes):
    data = json.loads((run / "checkpoint.json").read_text())
    data["files"][name].update(changes)
    _edit_ckpt(run, files=data["files"])


# 7 -----------------------------------------------------------------------------------------------
def test_07_mirror_back_refuses_while_a_window_writes(warm_lab, profile_dir):
    code, _ = train(warm_lab, profile_dir, "run_a", "--target", "5", "--window", "5")
    prof = profiles.load("run_a", profile_dir)
    good = mirror.mirror_back(warm_lab, prof)
    before = sorted((p.name, p.stat().st_size) for p in Path(good.local_dir).iterdir())
    proc = start_fab(warm_lab, "train-window", "--profile", "run_a", "--target", "60", "--window", "60",
                     env={"THUNDER_PROFILES": str(profile_dir)})
    try:
        assert wait_for_step(warm_lab, "mac4", "test_run_a", 10)
        p = fab(warm_lab, "mirror-back", "--profile", "run_a", env={"THUNDER_PROFILES": str(profile_dir)})
        assert p.returncode == 1 and "still writing" in p.stderr
        assert sorted((q.name, q.stat().st_size) for q in Path(good.local_dir).iterdir()) == before
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.communicate(timeout=120)
    assert no_rank_left()


# 8 -----------------------------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    mounts = []

    def mount(path, size):
        path.mkdir(parents=True, exist_ok=True)
        p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                           capture_output=True, text=True)
        if p.returncode:
            pytest.skip(f"cannot mount a small tmpfs here ({p.stderr.strip()}); needs root")
        mounts.append(path)
    yield mount
    for m in reversed(mounts):
        subprocess.run(["umount", "-l", str(m)])


def test_08a_disk_full_during_sync(lab_inv, lab_dir, small_disk):
    repo = host_repo(lab_inv, lab_dir, "mac4")
    keep = {p.name: p.read_bytes() for p in (repo / "blobs").iterdir() if not p.name.endswith(".incomplete")}
    snap = {p.name: os.readlink(p) for p in (repo / "snapshots" / revision(repo)).iterdir()}
    small_disk(repo / "blobs", "600k")
    for name, data in keep.items():  # the files that were there, now on a disk too small for the rest
        (repo / "blobs" / name).write_bytes(data)
    code, out = fab_json(lab_inv, "sync-cache", "--host", "mac4")
    assert code == 1 and "disk is full" in out["errors"][0], out
    for name, data in keep.items():
        assert (repo / "blobs" / name).read_bytes() == data
    assert {p.name: os.readlink(p) for p in (repo / "snapshots" / revision(repo)).iterdir()} == snap


def test_08b_disk_full_during_save(warm_lab, profile_dir, small_disk):
    code, _ = train(warm_lab, profile_dir, "run_a", "--target", "5", "--window", "5")
    run = Path(warm_lab.hosts["mac5"].runs_root) / "test_run_a"
    saved = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    small_disk(run, "1m")
    for name, data in saved.items():
        (run / name).write_bytes(data)
    (run / ".lane").mkdir()
    filler = run / "filler"
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=4k", "count=1000"], capture_output=True)
    code, r = train(warm_lab, profile_dir, "run_a", "--target", "10", "--window", "5", "--skip-preflight",
                    "--watchdog", "60")
    assert code == 1 and r["verdict"] == "path-or-write-failure", r
    assert "disk is full" in r["explanation"] and "mac5" in r["explanation"]
    for name, data in saved.items():
        assert (run / name).read_bytes() == data, name
    assert no_rank_left()


def test_08c_preflight_refuses_a_host_short_of_disk(warm_lab, profile_dir):
    data = yaml.safe_load((profile_dir / "run_a.yaml").read_text())
    data["lane"]["min_free_mb"] = 10**9
    (profile_dir / "run_a.yaml").write_text(yaml.safe_dump(data))
    code, r = train(warm_lab, profile_dir, "run_a")
    assert code == 1 and r["verdict"] == "refused"
    assert all("free under" in p["detail"] for p in r["preflight"] if p["host"] in ("mac4", "mac5"))


# 9 -----------------------------------------------------------------------------------------------
def test_09_hung_rank_is_ended_by_the_watchdog_and_reaped(warm_lab, profile_dir):
    proc = start_fab(warm_lab, "train-window", "--profile", "run_a", "--target", "60", "--window", "60",
                     "--watchdog", "10", "--json", env={"THUNDER_PROFILES": str(profile_dir)})
    assert wait_for_step(warm_lab, "mac5", "test_run_a", 5)
    rank = [r for r in run_facts(warm_lab, "mac5", "test_run_a")["ranks"] if r["alive"]][0]
    os.kill(rank["pid"], signal.SIGSTOP)  # a rank that hangs: the ring waits for it forever
    t_fault = time.monotonic()
    out, _ = proc.communicate(timeout=120)
    elapsed = time.monotonic() - t_fault
    r = json.loads(out)
    assert r["verdict"] == "distributed-hang", r
    assert elapsed < 10 + 20, elapsed
    print(f"watchdog: fault to classified exit in {elapsed:.1f}s")
    assert no_rank_left()
    facts = RunFacts.from_json(run_facts(warm_lab, "mac4", "test_run_a"))
    assert checkpoint.gate("mac4", facts, checkpoint.committed_step(facts)).ok


def test_09b_host_down_mid_run(warm_lab, lab_dir, profile_dir):
    proc = start_fab(warm_lab, "train-window", "--profile", "run_a", "--target", "60", "--window", "60",
                     "--watchdog", "10", "--json", env={"THUNDER_PROFILES": str(profile_dir)})
    try:
        assert wait_for_step(warm_lab, "mac5", "test_run_a", 5)
        t_fault = time.monotonic()
        sshd = lab.sshd_pid(lab_dir, "mac5")
        subprocess.run(["pkill", "-KILL", "-P", str(sshd)])  # the sessions (and so mac5's rank) go
        os.kill(sshd, signal.SIGKILL)                         # and the host stops answering
        out, _ = proc.communicate(timeout=120)
        elapsed = time.monotonic() - t_fault
        r = json.loads(out)
        assert r["verdict"] in ("runtime-crash", "distributed-hang"), r
        assert elapsed < 10 + 30
        print(f"host down: fault to classified exit in {elapsed:.1f}s ({r['verdict']})")
    finally:
        lab.up(("mac4", "mac5"), lab=lab_dir, model_mb=1.0)
    deadline = time.monotonic() + 10
    while not no_rank_left() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert no_rank_left()


# 10 ----------------------------------------------------------------------------------------------
def test_10_ctrl_c_ends_every_rank_and_releases_the_lock(warm_lab, profile_dir):
    proc = start_fab(warm_lab, "train-window", "--profile", "run_a", "--target", "60", "--window", "60",
                     env={"THUNDER_PROFILES": str(profile_dir)})
    assert wait_for_step(warm_lab, "mac4", "test_run_a", 5)
    lock = window.lock_dir(warm_lab, profiles.load("run_a", profile_dir))
    assert lock.is_dir()
    t0 = time.monotonic()
    os.kill(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "interrupted" in (out + err)
    assert time.monotonic() - t0 < 30
    assert no_rank_left()
    assert not lock.exists()


# 11 ----------------------------------------------------------------------------------------------
def test_11_second_window_refused_by_the_lock_and_stale_lock_detected(warm_lab, profile_dir):
    first = start_fab(warm_lab, "train-window", "--profile", "run_a", "--target", "60", "--window", "60",
                      env={"THUNDER_PROFILES": str(profile_dir)})
    try:
        assert wait_for_step(warm_lab, "mac4", "test_run_a", 5)
        code, r = train(warm_lab, profile_dir, "run_a", "--target", "60")
        assert code == 1 and r["verdict"] == "refused"
        assert "another window holds the lock" in json.dumps(r) or "still running" in json.dumps(r)
        chunks = subprocess.run(["bash", str(layout.CHUNKS), "run_a", "60", "60"], capture_output=True, text=True,
                                env=dict(os.environ, THUNDER_INVENTORY=warm_lab.path,
                                         THUNDER_PROFILES=str(profile_dir)))
        assert chunks.returncode == 75 and "another window of run_a is running" in chunks.stderr
    finally:
        os.killpg(first.pid, signal.SIGINT)
        first.communicate(timeout=60)
    lock = window.lock_dir(warm_lab, profiles.load("run_b", profile_dir))
    lock.mkdir(parents=True)
    (lock / "pid").write_text("999999\n")  # a runner that died without cleaning up
    assert window.lock_state(warm_lab, profiles.load("run_b", profile_dir)) == ("stale", 999999)
    p = fab(warm_lab, "train-window", "--profile", "run_b", "--target", "5", "--window", "5",
            env={"THUNDER_PROFILES": str(profile_dir)})
    assert p.returncode == 0, p.stdout[-2000:]
    assert "stale lock" in p.stdout and "999999" in p.stdout


def test_11b_a_window_the_lock_refuses_ends_nothing(warm_lab, profile_dir):
    """Two windows that both got past preflight: the one the lock refuses (the chunk runner's exit 75)
    leaves the other's ranks alone; it used to reap every rank of the run, the winner's included."""
    first = start_fab(warm_lab, "train-window", "--profile", "run_a", "--target", "60", "--window", "60",
                      env={"THUNDER_PROFILES": str(profile_dir)})
    try:
        assert wait_for_step(warm_lab, "mac4", "test_run_a", 5)
        code, r = train(warm_lab, profile_dir, "run_a", "--target", "60", "--skip-preflight")
        assert code == 1 and r["verdict"] == "locked", r
        assert RunFacts.from_json(run_facts(warm_lab, "mac4", "test_run_a")).running  # still training
        assert wait_for_step(warm_lab, "mac4", "test_run_a", 10)  # and still committing
    finally:
        os.killpg(first.pid, signal.SIGINT)
        first.communicate(timeout=60)
    assert no_rank_left()


# 12 ----------------------------------------------------------------------------------------------
def test_12_changed_key_is_refused_by_mlx_launch_ssh_too(warm_lab, lab_dir, profile_dir, tmp_path):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")], check=True)
    other = " ".join((tmp_path / "k.pub").read_text().split()[:2])
    kh = Path(warm_lab.ssh.known_hosts)
    original = kh.read_text()
    h = warm_lab.hosts["mac5"]
    marker = f"[{h.hostname}]:{h.port} "
    kh.write_text("".join(ln + "\n" for ln in original.splitlines() if not ln.startswith(marker))
                  + marker + other + "\n")
    try:
        code, r = train(warm_lab, profile_dir, "run_a")
        assert code == 1 and r["verdict"] == "refused"
        assert any(p["host"] == "mac5" and "host-key" in p["detail"] for p in r["preflight"])
        code, r = train(warm_lab, profile_dir, "run_a", "--skip-preflight", "--watchdog", "30")
        assert code == 1 and r["verdict"] in ("stalled-before-training", "runtime-crash"), r
        log = Path(r["log"]).read_text()
        assert "Host key verification failed" in log or "REMOTE HOST IDENTIFICATION HAS CHANGED" in log
        assert not (Path(h.runs_root) / "test_run_a").exists()  # nothing ran on mac5
    finally:
        kh.write_text(original)
    assert no_rank_left()


# 13 ----------------------------------------------------------------------------------------------
CANARY = Path("/tmp/thunderlane-canary")
EVIL = [f"x; touch {CANARY}", f"$(touch {CANARY})", f"`touch {CANARY}`", f"a\ntouch {CANARY}",
        "-oProxyCommand=touch%20/tmp/thunderlane-canary", f"a b 'c' \"d\" {CANARY}"]


@pytest.fixture
def canary():
    CANARY.unlink(missing_ok=True)
    yield CANARY
    assert not CANARY.exists(), "an injected command ran"


@pytest.mark.parametrize("evil", EVIL)
def test_13_injection_in_names_and_arguments(lab_inv, canary, evil):
    for argv in (["train-window", f"--profile={evil}"], ["sync-cache", f"--host={evil}"],
                 ["verify-cache", f"--hosts={evil}"], ["mirror-back", f"--profile={evil}"]):
        p = fab(lab_inv, *argv)
        assert p.returncode == 2, (argv, p.stdout, p.stderr)
    for argv in ([evil, "10", "10"], ["synthetic_mechanics", evil, "10"], ["synthetic_mechanics", "10", evil]):
        p = subprocess.run(["bash", str(layout.CHUNKS), *argv], capture_output=True, text=True,
                           env=dict(os.environ, THUNDER_INVENTORY=lab_inv.path))
        assert p.returncode == 64
    mac4 = lab_inv.hosts["mac4"]
    dest = f"/tmp/thunderlane-literal/{evil}"
    p = subprocess.run(launcher_argv(lab_inv, mac4, lab_inv.local.hf_cache, dest), capture_output=True, text=True)
    assert p.returncode == 65 or Path(dest).is_dir()  # refused, or taken as a literal folder name
    shutil.rmtree("/tmp/thunderlane-literal", ignore_errors=True)


@pytest.mark.parametrize("evil", EVIL)
def test_13b_injection_in_inventory_values(lab_inv, canary, tmp_path, evil):
    data = yaml.safe_load(Path(lab_inv.path).read_text())
    for field in ("dataset_root", "python", "hostname", "user", "rsync_path"):
        bad = json.loads(json.dumps(data))
        bad["hosts"]["mac4"][field] = f"/tmp/{evil}" if field in ("dataset_root", "python") else evil
        path = tmp_path / f"{field}.yaml"
        path.write_text(yaml.safe_dump(bad))
        p = subprocess.run([str(Path(ROOT) / ".venv" / "bin" / "fab"), "verify-dataset"], cwd=ROOT,
                           capture_output=True, text=True, env=dict(os.environ, THUNDER_INVENTORY=str(path)))
        if p.returncode == 1:  # a literal (odd but harmless) absolute path: verified, and absent
            assert "mac4" in p.stdout and field in ("dataset_root", "python"), (field, p.stdout)
        else:
            assert p.returncode == 2 and "mac4" in p.stderr and field in p.stderr, (field, p.stderr)


# 14 ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("field,value", [("dataset_root", "/x/../etc"), ("dataset_root", ""), ("runs_root", "/"),
                                         ("runs_root", "~"), ("hf_cache", "relative/hub")])
def test_14_bad_inventory_paths_are_refused_before_anything(lab_inv, tmp_path, field, value):
    data = yaml.safe_load(Path(lab_inv.path).read_text())
    data["hosts"]["mac5"][field] = value
    path = tmp_path / "inv.yaml"
    path.write_text(yaml.safe_dump(data))
    before = sorted(os.listdir(lab_inv.hosts["mac5"].runs_root)) if os.path.isdir(lab_inv.hosts["mac5"].runs_root) else []
    for task in ("verify-dataset", "sync-cache", "train-window"):
        p = subprocess.run([str(Path(ROOT) / ".venv" / "bin" / "fab"), task], cwd=ROOT, capture_output=True,
                           text=True, env=dict(os.environ, THUNDER_INVENTORY=str(path)))
        assert p.returncode == 2 and "mac5" in p.stderr and field in p.stderr
    after = sorted(os.listdir(lab_inv.hosts["mac5"].runs_root)) if os.path.isdir(lab_inv.hosts["mac5"].runs_root) else []
    assert before == after


def test_14b_bad_profile_paths_are_refused(lab_inv, profile_dir):
    for value, words in (("../escape", "run_name"), ("", "run_name")):
        data = yaml.safe_load((profile_dir / "run_a.yaml").read_text())
        data["lane"]["run_name"] = value
        (profile_dir / "bad.yaml").write_text(yaml.safe_dump(data))
        p = fab(lab_inv, "train-window", "--profile", "bad", env={"THUNDER_PROFILES": str(profile_dir)})
        assert p.returncode == 2 and words in p.stderr
    data = yaml.safe_load((profile_dir / "run_a.yaml").read_text())
    data["data"] = "/tmp/../etc"
    (profile_dir / "bad.yaml").write_text(yaml.safe_dump(data))
    p = fab(lab_inv, "train-window", "--profile", "bad", env={"THUNDER_PROFILES": str(profile_dir)})
    assert p.returncode == 2 and "data" in p.stderr


# 15 ----------------------------------------------------------------------------------------------
def _rewrite(path, fn):
    path.write_bytes(fn(path.read_bytes()))


@pytest.mark.parametrize("fault,expect", [
    (lambda d: (d / "valid.jsonl").unlink(), "mac5:valid.jsonl: missing"),
    (lambda d: (d / "train.jsonl").write_bytes(b""), "mac5:train.jsonl:0: file is empty"),
    (lambda d: _rewrite(d / "test.jsonl", lambda b: b[:-7]), "mac5:test.jsonl:60:"),
    (lambda d: _rewrite(d / "valid.jsonl", lambda b: b.replace("ߊ".encode(), b"\xff", 1)), "not UTF-8"),
    (lambda d: _rewrite(d / "train.jsonl", lambda b: b'{"input": "x", "output": "y"}\n' + b.split(b"\n", 1)[1]),
     "mac5:train.jsonl:1: no 'messages'"),
    (lambda d: _rewrite(d / "manifest.json", lambda b: b.replace(b'"lines": 60', b'"lines": 61', 1)),
     "mac5:"),
])
def test_15_dataset_faults_are_host_file_line(lab_inv, fault, expect):
    fault(Path(lab_inv.hosts["mac5"].dataset_root))
    code, report = fab_json(lab_inv, "verify-dataset")
    r = by_host(report)["mac5"]
    assert code == 1 and not r["ok"] and expect in r["detail"], r
    assert by_host(report)["mac4"]["ok"]


# 16 ----------------------------------------------------------------------------------------------
def fake_rsync(tmp_path, version_line=None, exit_code=None):
    """A wrapper standing in for the host's rsync: reports an old version, or fails with a code."""
    script = tmp_path / "rsync"
    real = shutil.which("rsync")
    lines = ["#!/bin/sh"]
    if version_line:
        lines.append(f'if [ "$1" = "--version" ]; then echo "{version_line}"; exit 0; fi')
    if exit_code is not None:
        lines.append(f'if [ "$1" != "--version" ]; then exit {exit_code}; fi')
    lines.append(f'exec {real} "$@"')
    script.write_text("\n".join(lines) + "\n")
    script.chmod(0o755)
    return str(script)


@pytest.mark.parametrize("version", ["openrsync: protocol version 29",
                                     "rsync  version 2.6.9  protocol version 29"])
def test_16_old_remote_rsync_is_detected_and_handled(lab_inv, lab_dir, tmp_path, version):
    mac4 = lab_inv.hosts["mac4"]
    argv = launcher_argv(lab_inv, mac4, lab_inv.local.hf_cache, str(lab_dir / "mac4/.cache/huggingface/hub"))
    argv[argv.index("--rsync-path") + 1] = fake_rsync(tmp_path, version)
    p = subprocess.run(argv, capture_output=True, text=True)
    assert p.returncode == 0 and "old rsync" in p.stdout and version.split(":")[0].split()[0] in p.stdout


def test_16b_missing_remote_rsync_points_at_rsync_path(lab_inv, lab_dir):
    argv = launcher_argv(lab_inv, lab_inv.hosts["mac4"], lab_inv.local.hf_cache,
                         str(lab_dir / "mac4/.cache/huggingface/hub"))
    argv[argv.index("--rsync-path") + 1] = "/nonexistent/rsync"
    p = subprocess.run(argv, capture_output=True, text=True)
    assert p.returncode == 69 and "--rsync-path" in p.stderr


@pytest.mark.parametrize("code,words", [(23, "partial transfer"), (24, "vanished"), (30, "timeout"),
                                        (11, "file I/O error")])
def test_16c_rsync_exit_codes_each_have_their_message(lab_inv, tmp_path, monkeypatch, code, words):
    """The launcher passes rsync's own exit code through; fab names what it means."""
    local_bin = tmp_path / "bin"
    local_bin.mkdir()
    (local_bin / "rsync").write_text(f"#!/bin/sh\nexit {code}\n")
    (local_bin / "rsync").chmod(0o755)
    monkeypatch.setenv("PATH", f"{local_bin}:{os.environ['PATH']}")
    p = fab(lab_inv, "sync-cache", "--host", "mac4")
    assert p.returncode == 1 and f"exit {code}" in p.stderr and words in p.stderr


# 17 ----------------------------------------------------------------------------------------------
def test_17_version_mismatch_is_refused_naming_both(warm_lab, profile_dir, tmp_path):
    fake = tmp_path / "site"
    dist = fake / "mlx-9.9.9.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mlx\nVersion: 9.9.9\n")
    wrapper = tmp_path / "python"
    wrapper.write_text(f"#!/bin/sh\nPYTHONPATH={fake} exec {warm_lab.hosts['mac5'].python} \"$@\"\n")
    wrapper.chmod(0o755)
    data = yaml.safe_load(Path(warm_lab.path).read_text())
    data["hosts"]["mac5"]["python"] = str(wrapper)
    path = tmp_path / "inv.yaml"
    path.write_text(yaml.safe_dump(data))
    p = subprocess.run([str(Path(ROOT) / ".venv" / "bin" / "fab"), "train-window", "--profile", "run_a", "--json"],
                       cwd=ROOT, capture_output=True, text=True,
                       env=dict(os.environ, THUNDER_INVENTORY=str(path), THUNDER_PROFILES=str(profile_dir)))
    r = json.loads(p.stdout)
    assert p.returncode == 1 and r["verdict"] == "refused"
    detail = next(x["detail"] for x in r["preflight"] if x["host"] == "mac5")
    assert "mlx 9.9.9 here but 0.32.4 on mac4" in detail
