"""The foundation on the lab, end to end through the real `fab` command."""
import hashlib
import json
import os
import subprocess
import time
from pathlib import Path

from thunderlane import lab
from thunderlane.lab import kit
from thunderlane.sync import launcher_argv
from tests.lab.conftest import by_host, fab, fab_json


def test_fresh_lab_dataset_passes_everywhere(lab_inv):
    code, report = fab_json(lab_inv, "verify-dataset")
    assert code == 0, report
    hosts = by_host(report)
    assert set(hosts) == {"local", "mac4", "mac5"}
    assert len({h["figures"]["digest"] for h in hosts.values()}) == 1


def test_mac4_partial_then_sync_then_complete(lab_inv):
    code, report = fab_json(lab_inv, "verify-cache")
    hosts = by_host(report)
    assert code == 1 and report["failed"] == ["mac4"]
    assert hosts["mac4"]["verdict"] == "partial"
    assert "model-00001-of-00002.safetensors" in hosts["mac4"]["detail"]
    assert "model-00002-of-00002.safetensors" in hosts["mac4"]["detail"]
    assert ".incomplete" in hosts["mac4"]["detail"]
    missing = hosts["mac4"]["figures"]["missing_bytes"]
    assert missing > 0.8 * hosts["local"]["figures"]["bytes_exact"]
    assert hosts["mac5"]["verdict"] == "complete"

    code, out = fab_json(lab_inv, "sync-cache", "--host", "mac4")
    assert code == 0, out
    row = out["results"][0]
    assert (row["before"], row["after"]) == ("partial", "complete")
    assert row["literal_bytes"] == missing  # exactly the missing bytes went over the wire

    code, report = fab_json(lab_inv, "verify-cache", "--deep")
    assert code == 0 and by_host(report)["mac4"]["verdict"] == "complete"
    blobs = os.listdir(os.path.join(by_host(report)["mac4"]["figures"]["cache_root"],
                                    kit.REPO_FOLDER, "blobs"))
    assert not [b for b in blobs if b.endswith(".incomplete") or b.startswith(".")]

    code, out = fab_json(lab_inv, "sync-cache", "--host", "mac4")
    assert code == 0 and out["results"][0]["literal_bytes"] == 0  # second run sends no file data


def test_dry_run_changes_nothing(lab_inv):
    before = fab_json(lab_inv, "verify-cache")[1]
    p = fab(lab_inv, "sync-cache", "--host", "mac4", "--dry-run")
    assert p.returncode == 0, p.stderr
    assert "would remove" in p.stdout and "dry-run" in p.stdout
    after = fab_json(lab_inv, "verify-cache")[1]
    assert by_host(after)["mac4"] == by_host(before)["mac4"]


def test_sync_host_takes_inventory_names_only(lab_inv):
    p = fab(lab_inv, "sync-cache", "--host", "root@127.0.0.1")
    assert p.returncode == 2 and "no host named 'root@127.0.0.1'" in p.stderr


def edit_row(root, name, line, new_text):
    path = os.path.join(root, name)
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    lines[line - 1] = new_text + "\n"
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(lines)


def test_row_changed_on_mac5_same_line_count(lab_inv):
    root = lab_inv.hosts["mac5"].dataset_root
    with open(os.path.join(root, "train.jsonl"), encoding="utf-8") as f:
        row = json.loads(f.readlines()[9])
    row["messages"][1]["content"] = row["messages"][1]["content"][::-1]
    edit_row(root, "train.jsonl", 10, json.dumps(row, ensure_ascii=False))
    code, report = fab_json(lab_inv, "verify-dataset")
    assert code == 1 and report["failed"] == ["mac5"]
    assert "train.jsonl" in by_host(report)["mac5"]["detail"]


def test_broken_json_row_is_host_file_line(lab_inv):
    edit_row(lab_inv.hosts["mac4"].dataset_root, "valid.jsonl", 7, '{"messages": [{"role": "user"')
    p = fab(lab_inv, "verify-dataset")
    assert p.returncode == 1
    assert "mac4:valid.jsonl:7: not JSON" in p.stdout


def test_local_row_verdicts_are_parsed_once_then_read_from_the_memo(lab_inv):
    """A changed local file is parsed (a memo miss) and its verdict kept under the local runs root;
    the next run reads it from there (an entry edited with its keys intact shows through) and reports
    exactly what the parse reported."""
    memo = Path(lab_inv.local.runs_root) / ".row-memo"
    edit_row(lab_inv.local.dataset_root, "valid.jsonl", 7, '{"messages": [{"role": "user"')
    cold = fab(lab_inv, "verify-dataset")
    assert cold.returncode == 1 and "local:valid.jsonl:7: not JSON" in cold.stdout
    warm = fab(lab_inv, "verify-dataset")
    assert (warm.returncode, warm.stdout) == (cold.returncode, cold.stdout)
    sha = hashlib.sha256(Path(lab_inv.local.dataset_root, "valid.jsonl").read_bytes()).hexdigest()
    entry = memo / f"{sha}.json"
    entry.write_text(entry.read_text().replace("not JSON", "remembered"))
    assert "local:valid.jsonl:7: remembered" in fab(lab_inv, "verify-dataset").stdout


def test_stopped_host_is_unreachable_while_other_is_verified(lab_inv, lab_dir):
    pid = lab.sshd_pid(lab_dir, "mac5")
    os.kill(pid, 15)
    try:
        t0 = time.monotonic()
        code, report = fab_json(lab_inv, "verify-dataset")
        elapsed = time.monotonic() - t0
        hosts = by_host(report)
        assert code == 1 and hosts["mac5"]["verdict"] == "unreachable"
        assert hosts["mac4"]["verdict"] == "ok" and hosts["local"]["verdict"] == "ok"
        assert elapsed < lab_inv.ssh.connect_timeout + 10
    finally:
        lab.up(("mac4", "mac5"), lab=lab_dir, model_mb=1.0)


def test_hung_host_is_reported_within_connect_timeout(lab_inv, lab_dir):
    """A host that accepts TCP but never speaks (a stopped sshd) must not hang the task."""
    pid = lab.sshd_pid(lab_dir, "mac4")
    os.kill(pid, 19)  # SIGSTOP
    try:
        t0 = time.monotonic()
        code, report = fab_json(lab_inv, "verify-cache")
        elapsed = time.monotonic() - t0
        assert by_host(report)["mac4"]["verdict"] == "unreachable"
        assert by_host(report)["mac5"]["verdict"] == "complete"
        assert elapsed < 2 * lab_inv.ssh.connect_timeout + 10
    finally:
        os.kill(pid, 18)  # SIGCONT


def swap_known_host(inv, host, replacement):
    """Replace ``host``'s pinned key line in known_hosts; return the original text."""
    path = inv.ssh.known_hosts
    with open(path) as f:
        original = f.read()
    h = inv.hosts[host]
    marker = f"[{h.hostname}]:{h.port} "
    lines = [ln for ln in original.splitlines() if not ln.startswith(marker)]
    if replacement:
        lines.append(marker + replacement)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return original


def other_key(tmp_path):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")], check=True)
    return " ".join((tmp_path / "k.pub").read_text().split()[:2])


def test_changed_host_key_is_refused_by_fabric_and_rsync(lab_inv, tmp_path):
    original = swap_known_host(lab_inv, "mac5", other_key(tmp_path))
    try:
        code, report = fab_json(lab_inv, "verify-dataset")
        hosts = by_host(report)
        assert code == 1 and hosts["mac5"]["verdict"] == "host-key"
        assert "CHANGED" in hosts["mac5"]["detail"] and hosts["mac4"]["verdict"] == "ok"
        p = fab(lab_inv, "sync-cache", "--host", "mac5")
        assert p.returncode == 1 and "mac5" in p.stderr and "CHANGED" in p.stderr
        # the launcher's own ssh and rsync refuse too, even when called directly
        argv = launcher_argv(lab_inv, lab_inv.hosts["mac5"], lab_inv.local.hf_cache, "/tmp/never-written")
        run = subprocess.run(argv, capture_output=True, text=True)
        assert run.returncode == 255 and "Host key verification failed" in run.stderr
        assert not os.path.exists("/tmp/never-written")
    finally:
        with open(lab_inv.ssh.known_hosts, "w") as f:
            f.write(original)


def test_unknown_host_key_is_refused(lab_inv):
    original = swap_known_host(lab_inv, "mac4", None)
    try:
        code, report = fab_json(lab_inv, "verify-cache")
        assert code == 1 and by_host(report)["mac4"]["verdict"] == "host-key"
        assert "unknown host key" in by_host(report)["mac4"]["detail"]
        ssh = subprocess.run(["ssh", "-F", lab_inv.ssh.config, "mac4", "true"], capture_output=True, text=True)
        assert ssh.returncode == 255 and "Host key verification failed" in ssh.stderr
    finally:
        with open(lab_inv.ssh.known_hosts, "w") as f:
            f.write(original)


def test_each_host_has_its_own_home_and_key(lab_inv, lab_dir):
    seen = {}
    for name in ("mac4", "mac5"):
        out = subprocess.run(["ssh", "-F", lab_inv.ssh.config, name, "echo $HOME $THUNDER_LAB_HOST"],
                             capture_output=True, text=True, check=True).stdout.split()
        assert out == [str(lab_dir / name), name]
        seen[name] = (lab_dir / "sshd" / name / "ssh_host_ed25519_key.pub").read_text()
    assert seen["mac4"] != seen["mac5"]


def test_lab_up_is_idempotent(lab_inv, lab_dir):
    pids = lab.status(lab_dir)
    lab.up(("mac4", "mac5"), lab=lab_dir, model_mb=1.0)
    assert lab.status(lab_dir) == pids and all(pids.values())


def test_sync_shows_one_progress_line_and_a_summary_not_rsync_output(lab_inv, lab_dir):
    """The operator's view: a handful of lines per host; rsync's file list and stats only with --verbose."""
    p = fab(lab_inv, "sync-cache", "--host", "mac4")
    assert p.returncode == 0, p.stderr
    shown = (p.stdout + p.stderr).splitlines()
    assert len(shown) <= 15, shown
    for stats in ("Literal data", "Number of files", "Total bytes sent", "model-00001-of-00002.safetensors\n"):
        assert stats not in p.stdout + p.stderr
    assert "mac4: partial -> complete; file data sent" in p.stdout
    assert sum("[mac4] sent " in line or "[mac4] sending " in line for line in shown) >= 1
    blobs = kit.host_repo(lab_dir, "mac4") / "blobs"  # a shard lost again: a complete host gets no launcher
    os.unlink(next(b for b in blobs.iterdir() if len(b.name) == 64))
    verbose = fab(lab_inv, "sync-cache", "--host", "mac4", "--verbose")
    assert verbose.returncode == 0 and "Literal data" in verbose.stdout
