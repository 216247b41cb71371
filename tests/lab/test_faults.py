"""The fault and abuse suite (docs/RELIABILITY.md): every failure ends in a clear, classified
error, and nothing is lost. Real sshd, rsync, mlx.launch and mlx-lm on the lab; each case numbered
as in the reliability table. Each test's marker gives the table's fault and injection, its docstring
what the lane does, and its ``reliability(...)`` figures the measured column (`inv reliability`)."""
import json
import os
import re
import shutil
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from thunderlane import checkpoint, inventory, lab, layout, mirror, profiles, window
from thunderlane.facts import RunFacts
from thunderlane.lab import kit
from thunderlane.sync import launcher_argv, sync_cache
from tests.lab.conftest import (FAB, ROOT, by_host, fab, fab_json, no_rank_left, run_facts, start_fab, train,
                                tree, wait_for_step)

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
def rsync_temp(blobs, sizes):
    """(name, bytes so far) of an rsync temp file (`.<blob>.XXXXXX`) holding part of a blob, or None."""
    for p in blobs.iterdir():
        blob = p.name[1:].rsplit(".", 1)[0]
        if p.name.startswith(".") and blob in sizes:
            have = p.stat().st_size
            if 0 < have < sizes[blob]:
                return blob, have
    return None


@pytest.mark.fault_case("1", "rsync killed mid-push of a shard",
                        "the sync launcher with `--bwlimit 64`, SIGKILL to its process group once part of a "
                        "shard has arrived in rsync's temp file on mac4")
def test_01_rsync_killed_mid_shard_leaves_no_partial_final_name(lab_inv, lab_dir, reliability):
    """The kill lands mid-shard (part of the shard is in rsync's `.name.XXXXXX` temp file on mac4); every
    blob under a final name on mac4 has the source's exact bytes (rsync writes beside and renames); the
    next `sync-cache` removes rsync's temp files and `*.incomplete` in `blobs/`, converges, and
    `verify-cache --deep` passes; no leftovers remain."""
    mac4 = lab_inv.hosts["mac4"]
    dest = str(lab_dir / "mac4" / ".cache" / "huggingface" / "hub")
    repo = host_repo(lab_inv, lab_dir, "mac4")
    local = host_repo(lab_inv, lab_dir, "local")
    sizes = {b.name: b.stat().st_size for b in (local / "blobs").iterdir()}
    argv = launcher_argv(lab_inv, mac4, lab_inv.local.hf_cache, dest, bwlimit=64)
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    deadline, partial = time.monotonic() + 60, None
    while partial is None and p.poll() is None and time.monotonic() < deadline:
        partial = rsync_temp(repo / "blobs", sizes)
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    assert partial, "the kill did not land mid-shard: no partly written rsync temp file was seen"
    blob, have = partial
    reliability(shard_bytes=sizes[blob], bytes_arrived_at_kill=have)
    for b in (repo / "blobs").iterdir():
        if b.name.startswith(".") or b.name.endswith(".incomplete"):
            continue  # not a final name
        assert b.read_bytes() == (local / "blobs" / b.name).read_bytes(), b.name
    assert quiet_sync(lab_inv, "mac4").ok  # a rerun converges
    leftovers = [b.name for b in (repo / "blobs").iterdir() if b.name.startswith(".") or "incomplete" in b.name]
    assert leftovers == []
    code, report = fab_json(lab_inv, "verify-cache", "--deep")
    assert code == 0, report


# 2 -----------------------------------------------------------------------------------------------
@pytest.mark.fault_case("2", "one byte flipped in a synced blob, same size and mtime", "XOR one byte, restore the mtime")
def test_02_flipped_byte_named_by_deep_and_repaired_on_request(lab_inv, lab_dir):
    """Fast `verify-cache` passes (size and structure unchanged: by design it reads no weight bytes);
    `verify-cache --deep` says `corrupt` naming the blob; a plain sync leaves it (rsync's quick check);
    `sync-cache --checksum` repairs it and verifies deeply."""
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
@pytest.mark.fault_case("3", "a snapshot link that is absolute or climbs out of the repo folder, on local or on "
                        "a partial host", "replace `config.json`'s link with one to an existing file outside the "
                        "repo (absolute, or `../..` climbing out)")
@pytest.mark.parametrize("side", ["local", "mac4"])
@pytest.mark.parametrize("kind", ["absolute", "climbing"])
def test_03_escaping_snapshot_link_is_refused_before_any_sync(lab_inv, lab_dir, tmp_path, side, kind):
    """`verify-cache` says `corrupt`, "links outside the repo folder"; `sync-cache` to mac4 (partial, so a
    sync would send) refuses before any transfer (local: the launcher's link check, exit 65; host:
    refused from its facts): mac4's cache is unchanged, nothing was sent or followed, the file the
    link points at is unchanged."""
    secret = tmp_path / "secret.json"
    secret.write_text('{"secret": "outside the cache"}')
    repo = host_repo(lab_inv, lab_dir, side)
    link = repo / "snapshots" / revision(repo) / "config.json"
    target = str(secret) if kind == "absolute" else os.path.relpath(secret, link.parent)
    link.unlink()
    link.symlink_to(target)
    assert link.read_text() == secret.read_text()  # the link leads to a real file
    code, report = fab_json(lab_inv, "verify-cache")
    assert code == 1 and by_host(report)[side]["verdict"] == "corrupt"
    final = {b.name for b in (host_repo(lab_inv, lab_dir, "mac4") / "blobs").iterdir() if not b.name.startswith(".")}
    assert {b.name for b in (host_repo(lab_inv, lab_dir, "local") / "blobs").iterdir()} - final  # a sync would send
    assert "outside the repo folder" in by_host(report)[side]["detail"]
    mac4_cache = lab_dir / "mac4" / ".cache"
    before, local_before = tree(mac4_cache), tree(host_repo(lab_inv, lab_dir, "local"))
    p = fab(lab_inv, "sync-cache", "--host", "mac4")
    assert p.returncode == 1, p.stdout[-2000:]
    want = ("cannot be the source" if side == "local" else "point outside the repo folder on the host")
    assert want in p.stderr, p.stderr
    assert tree(mac4_cache) == before  # nothing sent, nothing removed, no link replaced
    assert tree(host_repo(lab_inv, lab_dir, "local")) == local_before
    assert secret.read_text() == '{"secret": "outside the cache"}'


# 4 -----------------------------------------------------------------------------------------------
@pytest.mark.fault_case("4", "`refs/main` naming a revision with no snapshot", "write `ffff…` into `refs/main` on "
                        "local or mac5")
@pytest.mark.parametrize("side", ["local", "mac5"])
def test_04_ref_without_snapshot_is_a_clear_error(lab_inv, lab_dir, side):
    """`corrupt`: "refs/main names … but snapshots/… is missing"; on local also "(local is the
    reference)" and `sync-cache` refuses: the local cache "cannot be the source"."""
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
@pytest.mark.fault_case("5", "a window killed (SIGKILL) during the adapter save",
                        "`THUNDER_FAULT=kill-during-save@10`: the rank truncates the temp file of step 10 and kills "
                        "itself")
def test_05_kill_during_adapter_save_keeps_last_commit_and_never_mirrors_torn(warm_lab, profile_dir):
    """`checkpoint.json` stays at step 5 and passes the gate (files whole, sha256 match); the torn file
    exists only under a temp name, never under a final name; `mirror-back` skips temp files; the next
    window deletes them."""
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
def _edit_ckpt(run, **changes):
    path = run / "checkpoint.json"
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def _step_file(run):
    return json.loads((run / "checkpoint.json").read_text())["step_file"]


def _wrong_hash(run):
    """The step file's recorded sha256 replaced (in `files` too, where the format lists it)."""
    data = json.loads((run / "checkpoint.json").read_text())
    data["step_file_sha256"] = "0" * 64
    if isinstance(data.get("files"), dict) and data["step_file"] in data["files"]:
        data["files"][data["step_file"]]["sha256"] = "0" * 64
    (run / "checkpoint.json").write_text(json.dumps(data))


DAMAGE = {  # what is done to the writer's run directory: (verdict, the gate's whole reason as a regex)
    "torn": (lambda d: (d / "checkpoint.json").write_text('{"step": 5, "adap'), "torn",
             lambda d: r"checkpoint\.json is torn or not JSON: not valid JSON: .+"),
    "no-step": (lambda d: (d / "checkpoint.json").write_text("[]"), "torn",
                lambda d: r"checkpoint\.json has no whole-number step"),
    "below": (lambda d: _edit_ckpt(d, step=4), "wrong-step",
              lambda d: r"checkpoint\.json is at step 4, below the target 5"),
    "past": (lambda d: _edit_ckpt(d, step=9), "wrong-step",
             lambda d: r"checkpoint\.json is at step 9, past the target 5"),
    "hash": (_wrong_hash, "bad-adapter",
             lambda d: re.escape(_step_file(d)) + r" sha256 [0-9a-f]{12} does not match checkpoint\.json's 0{12}"),
    "replaced": (lambda d: (d / _step_file(d)).write_bytes(b"\0" * 16), "bad-adapter",
                 lambda d: re.escape(_step_file(d)) + r" is not a whole safetensors file: .+"),
}


@pytest.mark.fault_case("6", "`checkpoint.json` torn, not JSON, step below or past the target, adapter hash "
                        "mismatch, the step's adapter file replaced", "edit the writer's run directory")
@pytest.mark.parametrize("damage", list(DAMAGE))
def test_06_damaged_checkpoint_fails_the_gate_and_says_which(warm_lab, profile_dir, damage):
    """The gate fails and says which, in full: `torn` ("not JSON" / "no whole-number step"),
    `wrong-step` ("at step 4, below the target 5" / "past the target"), `bad-adapter` (the step file's
    "sha256 … does not match" / "is not a whole safetensors file"); `train-window --target N` at the
    committed step (or past it) re-checks the gate, fails with the gate's reason and trains nothing."""
    code, r = train(warm_lab, profile_dir, "run_a", "--target", "5", "--window", "5")
    assert code == 0
    run = Path(warm_lab.hosts["mac4"].runs_root) / "test_run_a"
    harm, verdict, reason = DAMAGE[damage]
    want = reason(run)  # read before the damage: it may name the file the damage replaces
    harm(run)
    facts = run_facts(warm_lab, "mac4", "test_run_a")
    g = checkpoint.gate("mac4", RunFacts.from_json(facts), 5)
    assert not g.ok and g.verdict == verdict and re.fullmatch(want, g.detail), (g.verdict, g.detail)
    if damage in ("past", "hash", "replaced"):  # the real task at or past the committed step re-checks the gate
        after = (run / "checkpoint.json").read_bytes()
        code, r = train(warm_lab, profile_dir, "run_a", "--target", "5", "--skip-preflight")
        assert code == 1 and r["verdict"] == "gate-failed" and not r["trained"], r
        assert re.search(want, r["explanation"]), r["explanation"]
        assert (run / "checkpoint.json").read_bytes() == after  # nothing written over the evidence


# 7 -----------------------------------------------------------------------------------------------
@pytest.mark.fault_case("7", "`mirror-back` while a window is writing", "a 60-step window in the background")
def test_07_mirror_back_refuses_while_a_window_writes(warm_lab, profile_dir):
    """Refused: "a window is still writing (ranks […] on mac4); run mirror-back after it ends"; the
    verified local mirror is byte-for-byte unchanged. A mirror is only ever replaced after every file
    matches the writer's sha256 (staging folder, then rename)."""
    code, _ = train(warm_lab, profile_dir, "run_a", "--target", "5", "--window", "5")
    assert code == 0
    prof = profiles.load("run_a", profile_dir)
    good = mirror.mirror_back(warm_lab, prof)
    before = tree(Path(good.local_dir))
    assert json.loads((Path(good.local_dir) / "checkpoint.json").read_text())["step"] == 5
    proc = start_fab(warm_lab, "train-window", "--profile", "run_a", "--target", "60", "--window", "60",
                     env={"THUNDER_PROFILES": str(profile_dir)})
    try:
        assert wait_for_step(warm_lab, "mac4", "test_run_a", 10)
        p = fab(warm_lab, "mirror-back", "--profile", "run_a", env={"THUNDER_PROFILES": str(profile_dir)})
        assert p.returncode == 1 and re.search(r"a window is still writing \(ranks .+ on mac4\)", p.stderr), p.stderr
        assert tree(Path(good.local_dir)) == before  # every byte, every name
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


@pytest.mark.fault_case("8a", "the disk full during a sync", "a 600 KiB tmpfs over mac4's `blobs/`")
def test_08a_disk_full_during_sync(lab_inv, lab_dir, small_disk):
    """Exit 1, "the host's disk is full (No space left on device; … free, … needed)" (rsync exit 11 or
    23, free space asked when rsync does not relay the message); existing blobs and snapshot links
    unchanged (blobs are sent before the links to them)."""
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


def free_bytes(path):
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


@pytest.mark.fault_case("8b", "the disk full during the adapter save", "a tmpfs over mac5's run directory, filled "
                        "to leave room for the window's start but not for the step-10 save")
def test_08b_disk_full_during_save(warm_lab, profile_dir, small_disk, reliability):
    """The window starts and trains; the save of step 10 fails on mac5: `path-or-write-failure`,
    "mac5: saving step 10 … failed (the disk is full)", naming the file; every file of step 5 is byte
    for byte intact and the gate still passes at step 5; nothing new under a final name."""
    code, _ = train(warm_lab, profile_dir, "run_a", "--target", "5", "--window", "5")
    assert code == 0
    run = Path(warm_lab.hosts["mac5"].runs_root) / "test_run_a"
    saved = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    smallest = min(len(data) for name, data in saved.items() if name.endswith(".safetensors"))
    small_disk(run, "8m")
    for name, data in saved.items():
        (run / name).write_bytes(data)
    (run / ".lane").mkdir()
    room = max(smallest // 2, 8192)  # the start (pid file) fits; no adapter or state file does
    assert room < smallest, f"the step files ({smallest} bytes) are too small for this test"
    (run / "filler").write_bytes(b"\0" * (free_bytes(run) - room))
    reliability(room_bytes=free_bytes(run), smallest_step_file_bytes=smallest)
    code, r = train(warm_lab, profile_dir, "run_a", "--target", "10", "--window", "5", "--skip-preflight",
                    "--watchdog", "60")
    assert code == 1 and r["verdict"] == "path-or-write-failure", r
    assert re.search(r"^mac5: saving step 10 in .+ failed \(the disk is full\)", r["explanation"]), r["explanation"]
    assert re.search(r"[\w.]+\.(safetensors|json)\b", r["explanation"]), r["explanation"]  # the file
    for name, data in saved.items():
        assert (run / name).read_bytes() == data, name
    assert sorted(p.name for p in run.iterdir() if not p.name.startswith(".")) == sorted([*saved, "filler"])
    facts = RunFacts.from_json(run_facts(warm_lab, "mac5", "test_run_a"))
    assert checkpoint.gate("mac5", facts, 5).ok
    assert no_rank_left()


@pytest.mark.fault_case("8c", "a host with less free disk than the profile asks", "`min_free_mb` above what the "
                        "hosts have")
def test_08c_preflight_refuses_a_host_short_of_disk(warm_lab, profile_dir):
    """Preflight refuses every host below the profile's `min_free_mb`, saying "free under"."""
    data = yaml.safe_load((profile_dir / "run_a.yaml").read_text())
    data["lane"]["min_free_mb"] = 10**9
    (profile_dir / "run_a.yaml").write_text(yaml.safe_dump(data))
    code, r = train(warm_lab, profile_dir, "run_a")
    assert code == 1 and r["verdict"] == "refused"
    assert all("free under" in p["detail"] for p in r["preflight"] if p["host"] in ("mac4", "mac5"))


# 9 -----------------------------------------------------------------------------------------------
@pytest.mark.fault_case("9", "a rank hangs mid-run", "SIGSTOP of mac5's rank; a 10 s watchdog")
def test_09_hung_rank_is_ended_by_the_watchdog_and_reaped(warm_lab, profile_dir, reliability):
    """The watchdog ends the window, every rank is reaped by PID (TERM, then KILL), verdict
    `distributed-hang`; the last commit passes the gate. The watchdog counts from the last progress
    line, so the time from fault to classified exit is the watchdog plus reaping."""
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
    reliability(watchdog_seconds=10, fault_to_verdict_seconds=round(elapsed, 1))
    assert no_rank_left()
    facts = RunFacts.from_json(run_facts(warm_lab, "mac4", "test_run_a"))
    assert checkpoint.gate("mac4", facts, checkpoint.committed_step(facts)).ok


@pytest.mark.fault_case("9b", "a host goes down mid-run", "SIGKILL of mac5's sshd and its sessions; a 10 s watchdog")
def test_09b_host_down_mid_run(warm_lab, lab_dir, profile_dir, reliability):
    """`mlx.launch` sees the rank's ssh end and stops the others: verdict `runtime-crash` naming mac5,
    before the watchdog would have fired; nothing left running; the last commit passes the gate."""
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
        assert r["verdict"] == "runtime-crash" and "mac5" in r["explanation"], r
        assert elapsed < 10, elapsed  # the crash is seen, not waited out by the watchdog
        reliability(fault_to_verdict_seconds=round(elapsed, 1))
    finally:
        lab.up(("mac4", "mac5"), lab=lab_dir, model_mb=1.0)
    deadline = time.monotonic() + 10
    while not no_rank_left() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert no_rank_left()
    facts = RunFacts.from_json(run_facts(warm_lab, "mac4", "test_run_a"))
    assert checkpoint.gate("mac4", facts, checkpoint.committed_step(facts)).ok


# 10 ----------------------------------------------------------------------------------------------
@pytest.mark.fault_case("10", "Ctrl-C to `fab train-window`", "SIGINT to the `fab` process mid-window")
def test_10_ctrl_c_ends_every_rank_and_releases_the_lock(warm_lab, profile_dir, reliability):
    """Every rank on every host ends (process group TERM, then reaping by PID), the lock directory is
    removed, the result's verdict is `interrupted`; the last commit stands and passes the gate."""
    proc = start_fab(warm_lab, "train-window", "--profile", "run_a", "--target", "60", "--window", "60",
                     "--json", env={"THUNDER_PROFILES": str(profile_dir)})
    assert wait_for_step(warm_lab, "mac4", "test_run_a", 5)
    lock = window.lock_dir(warm_lab, profiles.load("run_a", profile_dir))
    assert lock.is_dir()
    t0 = time.monotonic()
    os.kill(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    elapsed = time.monotonic() - t0
    r = json.loads(out)
    assert proc.returncode == 1 and r["verdict"] == "interrupted", (r, err[-2000:])
    assert elapsed < 30
    reliability(ctrl_c_to_exit_seconds=round(elapsed, 1))
    assert no_rank_left()
    assert not lock.exists()
    facts = RunFacts.from_json(run_facts(warm_lab, "mac4", "test_run_a"))
    step = checkpoint.committed_step(facts)
    assert step >= 5 and checkpoint.gate("mac4", facts, step).ok


# 11 ----------------------------------------------------------------------------------------------
@pytest.mark.fault_case("11", "two `train-window` at once; a stale lock", "a second `train-window` and the chunk "
                        "runner while one runs; a lock directory holding a dead pid")
def test_11_second_window_refused_by_the_lock_and_stale_lock_detected(warm_lab, profile_dir):
    """Preflight refuses ("fab train-window (pid F; chunk runner pid N, since T) holds the window
    lock …", "a window is still running here"); the chunk runner exits 75 "another window of run_a is
    running (pid N holds …)"; a dead pid's lock is reported "stale lock … from pid 999999 (not running): taken over" and the window
    runs. (The lock's atomicity: `tests/unit/test_lock.py`, 8 processes racing get exactly one lock.)"""
    first = start_fab(warm_lab, "train-window", "--profile", "run_a", "--target", "60", "--window", "60",
                      env={"THUNDER_PROFILES": str(profile_dir)})
    try:
        assert wait_for_step(warm_lab, "mac4", "test_run_a", 5)
        code, r = train(warm_lab, profile_dir, "run_a", "--target", "60")
        assert code == 1 and r["verdict"] == "refused"
        assert re.search(rf"fab train-window \(pid {first.pid}; chunk runner pid \d+, since [^)]+\) holds the window "
                         "lock", json.dumps(r)), r
        chunks = subprocess.run(["bash", str(layout.CHUNKS), "run_a", "60", "60"], capture_output=True, text=True,
                                env=dict(os.environ, THUNDER_INVENTORY=warm_lab.path, THUNDER_PYTHON=sys.executable,
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


@pytest.mark.fault_case("11b", "two windows both past preflight", "a second `train-window --skip-preflight` while "
                        "one trains")
def test_11b_a_window_the_lock_refuses_ends_nothing(warm_lab, profile_dir):
    """The chunk runner's lock refusal (exit 75) is verdict `locked`, exit 1; it reaps nothing: the
    first window's ranks keep training and committing (it used to reap every rank of the run)."""
    first = start_fab(warm_lab, "train-window", "--profile", "run_a", "--target", "60", "--window", "60",
                      env={"THUNDER_PROFILES": str(profile_dir)})
    try:
        assert wait_for_step(warm_lab, "mac4", "test_run_a", 5)
        code, r = train(warm_lab, profile_dir, "run_a", "--target", "60", "--skip-preflight")
        assert code == 1 and r["verdict"] == "locked", r
        assert re.match(rf"fab train-window \(pid {first.pid}; chunk runner pid \d+, since [^)]+\) holds the window "
                        "lock; this one started nothing", r["explanation"]), r
        assert RunFacts.from_json(run_facts(warm_lab, "mac4", "test_run_a")).running  # still training
        assert wait_for_step(warm_lab, "mac4", "test_run_a", 10)  # and still committing
    finally:
        os.killpg(first.pid, signal.SIGINT)
        first.communicate(timeout=60)
    assert no_rank_left()


# 12 ----------------------------------------------------------------------------------------------
@pytest.mark.fault_case("12", "unknown or changed host key", "replace mac5's line in the pinned `known_hosts`")
def test_12_changed_key_is_refused_by_mlx_launch_ssh_too(warm_lab, lab_dir, profile_dir, tmp_path):
    """Fabric: `host-key` verdict in preflight; `mlx.launch`'s ssh (through the window's ssh config,
    `StrictHostKeyChecking yes`): "Host key verification failed", the rank never starts, nothing is
    created on that host."""
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
NAIVE = {  # each payload, and a careless way of passing a value on in which it does create the canary
    f"x; touch {CANARY}": lambda v: ["sh", "-c", f"echo {v}"],
    f"$(touch {CANARY})": lambda v: ["sh", "-c", f'echo "{v}"'],
    f"`touch {CANARY}`": lambda v: ["sh", "-c", f'echo "{v}"'],
    f"a\ntouch {CANARY}": lambda v: ["sh", "-c", f"echo {v}"],
    f"-oProxyCommand=touch {CANARY}": lambda v: ["ssh", "-F", "/dev/null", v, "-oConnectTimeout=2", "127.0.0.1",
                                                 "true"],
    f"x'; touch {CANARY}; '": lambda v: ["sh", "-c", f"echo '{v}'"],
    f'x"; touch {CANARY}; "': lambda v: ["sh", "-c", f'echo "{v}"'],
}
EVIL = list(NAIVE)
CASE_13 = pytest.mark.fault_case(
    "13", "injection: `; rm`, `$(…)`, backticks, a newline, a leading `-`, quotes that close early",
    "in profile names, `--host`, `--hosts`, chunk-runner arguments, the sync launcher's destination, and "
    "inventory values (paths, python, hostname, user, rsync_path)")


@pytest.fixture
def canary():
    CANARY.unlink(missing_ok=True)
    yield CANARY
    assert not CANARY.exists(), "an injected command ran"


@CASE_13
@pytest.mark.parametrize("evil", EVIL)
def test_13_payloads_create_the_canary_when_injected(evil):
    """Each payload does create the canary when pasted carelessly into a command (so the cases below
    could see an injection): `sh -c` without quotes, in double or single quotes, or an ssh option."""
    CANARY.unlink(missing_ok=True)
    subprocess.run(NAIVE[evil](evil), capture_output=True, timeout=30)
    assert CANARY.exists(), "the payload would not show an injection"
    CANARY.unlink()


@CASE_13
@pytest.mark.parametrize("evil", EVIL)
def test_13_injection_in_names_and_arguments(lab_inv, canary, evil):
    """Refused (exit 2 naming the field, or 64/65 from the launchers), or taken as literal text; the
    canary file never appears. Inventory paths may hold spaces and most punctuation, but no control
    character, `%`, quote, backslash, `$`, backtick or `* ? [`; every value reaching a shell is
    `shlex.quote`d (Python) or single-quoted (bash), remote rsync paths included (rsync 2.6.9 /
    openrsync pass them through the remote shell)."""
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
    if not (inventory.path_refusal(dest) or inventory.PATH_BAD_CHARS.search(dest)):  # a path the lane takes
        assert p.returncode == 0 and Path(dest).is_dir(), p.stderr[-2000:]
    shutil.rmtree("/tmp/thunderlane-literal", ignore_errors=True)


@CASE_13
@pytest.mark.parametrize("evil", EVIL)
def test_13b_injection_in_inventory_values(lab_inv, canary, tmp_path, evil):
    data = yaml.safe_load(Path(lab_inv.path).read_text())
    for field in ("dataset_root", "python", "hostname", "user", "rsync_path"):
        bad = json.loads(json.dumps(data))
        bad["hosts"]["mac4"][field] = f"/tmp/{evil}" if field in ("dataset_root", "python") else evil
        path = tmp_path / f"{field}.yaml"
        path.write_text(yaml.safe_dump(bad))
        p = subprocess.run([FAB, "verify-dataset"], cwd=ROOT,
                           capture_output=True, text=True, env=dict(os.environ, THUNDER_INVENTORY=str(path)))
        if p.returncode == 1:  # a literal (odd but harmless) absolute path: verified, and absent
            assert "mac4" in p.stdout and field in ("dataset_root", "python"), (field, p.stdout)
        else:
            assert p.returncode == 2 and "mac4" in p.stderr and field in p.stderr, (field, p.stderr)


# 14 ----------------------------------------------------------------------------------------------
CASE_14 = pytest.mark.fault_case("14", "bad paths in the inventory or a profile", "`..`, empty, `/`, `~`, a relative "
                                 "path; a profile `run_name` of `../escape` or empty, `data: /tmp/../etc`")


@CASE_14
@pytest.mark.parametrize("field,value", [("dataset_root", "/x/../etc"), ("dataset_root", ""), ("runs_root", "/"),
                                         ("runs_root", "~"), ("hf_cache", "relative/hub")])
def test_14_bad_inventory_paths_are_refused_before_anything(lab_inv, tmp_path, field, value):
    """Refused before anything is touched (exit 2, naming host or profile and field); nothing changes
    under the hosts' runs roots."""
    data = yaml.safe_load(Path(lab_inv.path).read_text())
    data["hosts"]["mac5"][field] = value
    path = tmp_path / "inv.yaml"
    path.write_text(yaml.safe_dump(data))
    before = sorted(os.listdir(lab_inv.hosts["mac5"].runs_root)) if os.path.isdir(lab_inv.hosts["mac5"].runs_root) else []
    for task in ("verify-dataset", "sync-cache", "train-window"):
        p = subprocess.run([FAB, task], cwd=ROOT, capture_output=True,
                           text=True, env=dict(os.environ, THUNDER_INVENTORY=str(path)))
        assert p.returncode == 2 and "mac5" in p.stderr and field in p.stderr
    after = sorted(os.listdir(lab_inv.hosts["mac5"].runs_root)) if os.path.isdir(lab_inv.hosts["mac5"].runs_root) else []
    assert before == after


@CASE_14
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


@pytest.mark.fault_case("15", "dataset faults", "on mac5: a missing file, an empty train split, a truncated last "
                        "line, a non-UTF-8 byte, a row in no mlx-lm format, a manifest that disagrees")
@pytest.mark.parametrize("fault,expect", [
    (lambda d: (d / "valid.jsonl").unlink(), r"mac5:valid\.jsonl: missing in {root}"),
    (lambda d: (d / "train.jsonl").write_bytes(b""), r"mac5:train\.jsonl:0: file is empty"),
    (lambda d: _rewrite(d / "test.jsonl", lambda b: b[:-7]), r"mac5:test\.jsonl:60: not JSON: .+ at column [0-9]+"),
    (lambda d: _rewrite(d / "valid.jsonl", lambda b: b.replace("ߊ".encode(), b"\xff", 1)),
     r"mac5:valid\.jsonl:{line}: not UTF-8 \(byte {byte}\)"),
    (lambda d: _rewrite(d / "train.jsonl", lambda b: b'{"input": "x", "output": "y"}\n' + b.split(b"\n", 1)[1]),
     r"mac5:train\.jsonl:1: no 'messages', 'prompt'\+'completion' or 'text' field"),
    (lambda d: _rewrite(d / "manifest.json", lambda b: b.replace(b'"lines": 60', b'"lines": 61', 1)),
     r"mac5:test\.jsonl: lines is 60, manifest\.json says 61"),
], ids=["missing", "empty", "truncated", "not-utf8", "no-format", "manifest"])
def test_15_dataset_faults_are_host_file_line(lab_inv, fault, expect):
    """Each reported as `host:file:line` with its reason, in full: `mac5:valid.jsonl: missing in …`,
    `mac5:train.jsonl:0: file is empty`, `mac5:test.jsonl:60: not JSON …`, `mac5:valid.jsonl:N: not
    UTF-8 (byte …)`, `mac5:train.jsonl:1: no 'messages', 'prompt'+'completion' or 'text' field`,
    `mac5:test.jsonl: lines is 60, manifest.json says 61`; mac4 is still reported, and passes."""
    root = lab_inv.hosts["mac5"].dataset_root
    raw = (Path(root) / "valid.jsonl").read_bytes()
    at = raw.index("ߊ".encode())  # where the non-UTF-8 case puts its byte: line and byte in that line
    line, byte = raw.count(b"\n", 0, at) + 1, at - (raw.rfind(b"\n", 0, at) + 1)
    fault(Path(root))
    code, report = fab_json(lab_inv, "verify-dataset")
    r = by_host(report)["mac5"]
    assert code == 1 and not r["ok"], r
    assert re.search(expect.format(root=re.escape(root), line=line, byte=byte), r["detail"]), r["detail"]
    assert by_host(report)["mac4"]["ok"]


# 16 ----------------------------------------------------------------------------------------------
# Long options rsync 3.x added (2.6.9 and openrsync refuse them) and short ones they lack (-s, -A, -X)
NEWER_LONG = ("--info", "--debug", "--append-verify", "--mkpath", "--protect-args", "--iconv", "--preallocate",
              "--delete-delay", "--delete-missing-args", "--ignore-missing-args", "--chown", "--usermap",
              "--groupmap", "--outbuf", "--checksum-choice", "--compress-choice", "--max-alloc", "--stop-after",
              "--stop-at", "--copy-as", "--open-noatime", "--fake-super", "--acls", "--xattrs", "--old-args",
              "--secluded-args", "--trust-sender", "--munge-links", "--msgs2stderr", "--noatime")
REFUSAL = {  # the old rsync's own words for an option it does not know, and its exit code (1: usage)
    "rsync  version 2.6.9  protocol version 29":
        'echo "rsync: $a: unknown option" >&2; echo "rsync error: syntax or usage error (code 1) at '
        'main.c(1443) [$side=2.6.9]" >&2',
    "openrsync: protocol version 29":
        'echo "rsync: unrecognized option \\`$a\'" >&2; echo "usage: rsync [-0741BCDEHIJKLNOPRSUVWXbcdghklmnopqrtuvxz] '
        '[-e program] [--rsync-path=program] ... source ... directory" >&2',
}


def old_rsync(tmp_path, version):
    """An rsync that behaves like macOS's old ones on its command line: ``--version`` says it is old,
    and any option they do not know is refused with their error text and exit 1 (before the real
    rsync behind it sees anything); each refusal is also logged in ``refused.log``."""
    script, log = tmp_path / "rsync", tmp_path / "refused.log"
    longs = "|".join(f"{o}|{o}=*" for o in NEWER_LONG)
    script.write_text(f"""#!/bin/bash
if [ "$1" = "--version" ]; then echo "{version}"; exit 0; fi
side=client; for a in "$@"; do [ "$a" = "--server" ] && side=server; done
for a in "$@"; do
  case "$a" in
    {longs}) ;;
    --*) continue ;;
    -e*) continue ;;  # -e and its value
    -*) short=${{a%%e.*}}  # a server's short options end in its capability string e.xxx
        case "$short" in *[sAX]*) ;; *) continue ;; esac ;;
    *) continue ;;
  esac
  echo "$a" >> {shlex.quote(str(log))}
  {REFUSAL[version]}
  exit 1
done
exec {shutil.which("rsync")} "$@"
""")
    script.chmod(0o755)
    return str(script), log


CASE_16 = pytest.mark.fault_case(
    "16", "an old rsync (2.6.9, openrsync) on the host and on the control machine",
    "an rsync wrapper, as the host's `--rsync-path` and first on the local PATH, reporting the old version and "
    "refusing every rsync 3.x option with the old rsync's own error and exit 1")


@CASE_16
@pytest.mark.parametrize("version", list(REFUSAL), ids=["rsync-2.6.9", "openrsync"])
def test_16_old_rsync_refusals_are_never_met(lab_inv, lab_dir, tmp_path, version):
    """The old remote is named ("runs an old rsync (…): using only flags it accepts") and the sync
    converges to a complete cache: no option either side refuses is ever passed (flags `-rlt --stats
    --progress --exclude -e --rsync-path`, with `--checksum` and `--bwlimit` on request)."""
    rsync, refused = old_rsync(tmp_path, version)
    mac4 = lab_inv.hosts["mac4"]
    argv = launcher_argv(lab_inv, mac4, lab_inv.local.hf_cache, str(lab_dir / "mac4/.cache/huggingface/hub"),
                         checksum=True, bwlimit=100000)
    argv[argv.index("--rsync-path") + 1] = rsync
    env = dict(os.environ, PATH=f"{tmp_path}:{os.environ['PATH']}")
    assert shutil.which("rsync", path=env["PATH"]) == rsync
    p = subprocess.run(argv, capture_output=True, text=True, env=env)
    assert not refused.exists(), f"refused: {refused.read_text()}\n{p.stderr[-2000:]}"
    assert p.returncode == 0, p.stderr[-2000:]
    assert f"runs an old rsync ({version}): using only flags it accepts" in p.stdout
    code, report = fab_json(lab_inv, "verify-cache", "--deep")
    assert code == 0 and by_host(report)["mac4"]["verdict"] == "complete", report


@CASE_16
def test_16_the_old_rsync_stand_in_refuses_newer_options(tmp_path):
    """The stand-in refuses what the old rsyncs refuse (so the case above can fail)."""
    for version in REFUSAL:
        rsync, refused = old_rsync(tmp_path, version)
        for option in ("--info=progress2", "--append-verify", "--mkpath", "-s", "-rltX"):
            p = subprocess.run([rsync, option, "-rlt", str(tmp_path / "a"), str(tmp_path / "b")],
                               capture_output=True, text=True)
            assert p.returncode == 1 and ("unknown option" in p.stderr or "unrecognized option" in p.stderr)
        assert refused.read_text().split() == ["--info=progress2", "--append-verify", "--mkpath", "-s", "-rltX"]
        refused.unlink()


@pytest.mark.fault_case("16b", "no rsync on the host", "`--rsync-path /nonexistent/rsync`")
def test_16b_missing_remote_rsync_points_at_rsync_path(lab_inv, lab_dir):
    """Exit 69, pointing at `--rsync-path`."""
    argv = launcher_argv(lab_inv, lab_inv.hosts["mac4"], lab_inv.local.hf_cache,
                         str(lab_dir / "mac4/.cache/huggingface/hub"))
    argv[argv.index("--rsync-path") + 1] = "/nonexistent/rsync"
    p = subprocess.run(argv, capture_output=True, text=True)
    assert p.returncode == 69 and "--rsync-path" in p.stderr


@pytest.mark.fault_case("16c", "rsync failing on its own", "a local rsync exiting 11, 23, 24 or 30")
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
@pytest.mark.fault_case("17", "Python, mlx or mlx-lm versions differ between hosts", "mac5's interpreter sees an "
                        "`mlx 9.9.9` distribution first on its path")
def test_17_version_mismatch_is_refused_naming_both(warm_lab, profile_dir, tmp_path):
    """Preflight refuses naming both: "mac5: mlx 9.9.9 here but 0.32.4 on mac4"."""
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
    p = subprocess.run([FAB, "train-window", "--profile", "run_a", "--json"],
                       cwd=ROOT, capture_output=True, text=True,
                       env=dict(os.environ, THUNDER_INVENTORY=str(path), THUNDER_PROFILES=str(profile_dir)))
    r = json.loads(p.stdout)
    assert p.returncode == 1 and r["verdict"] == "refused"
    detail = next(x["detail"] for x in r["preflight"] if x["host"] == "mac5")
    assert "mlx 9.9.9 here but 0.32.4 on mac4" in detail
