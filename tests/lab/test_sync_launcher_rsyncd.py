"""The sync launcher's --peer-transport rsyncd: mac4 uses its peer ssh to mac5 only to start a one-shot
rsync daemon there (launchers/peer_rsyncd.sh) and pulls over plain TCP with a secret it made. On
loopback each host's data_ip is its ssh address (the lab hosts share this machine: their processes
and temp folders are visible here)."""
import glob
import re
import subprocess
import threading
import time
from pathlib import Path

import pytest

from thunderlane import lab
from thunderlane.lab import hosts as lab_hosts, kit
from tests.lab.conftest import HOSTS, by_host, fab_json
from tests.lab.test_sync_launcher_peer import DONE, blobs, pull_argv

WRAPPER = Path(__file__).resolve().parents[2] / "launchers" / "peer_rsyncd.sh"
LAUNCHER = WRAPPER.parent / "sync_gemma4_e2b_cache_to_thunder.sh"


def rsyncd_argv(inv, lab_dir, *extra):
    mac4, mac5 = inv.hosts["mac4"], inv.hosts["mac5"]
    return pull_argv(inv, lab_dir, "--peer-transport", "rsyncd", "--from-addr", mac5.data_ip,
                     "--host-addr", mac4.data_ip, *extra)


def daemons():
    """Command lines of the rsync daemons peer_rsyncd.sh started (their config in its folder)."""
    out = subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "--daemon" in line and "thunder-rsyncd." in line]


class Watch:
    """Samples `ps -ww -eo args` (whole lines) and the secrets on disk (SRC's secrets file, HOST's pw
    file) while a sync runs."""

    def __init__(self):
        self.lines, self.secrets, self.stop = set(), set(), threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)

    def loop(self):
        while not self.stop.is_set():
            out = subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True).stdout
            self.lines.update(out.splitlines())
            for path in glob.glob("/tmp/thunder-rsyncd.*/secrets") + glob.glob("/tmp/thunder-peer.*/pw"):
                try:
                    self.secrets.add(Path(path).read_text().strip().removeprefix("lane:"))
                except OSError:
                    pass
            time.sleep(0.02)


def test_rsyncd_pull_completes_sends_only_missing_and_leaves_nothing(lab_inv, lab_dir):
    """mac5 keeps its weight blobs in the shared store (-L resolved by the daemon), mac4 partial:
    mac4 is complete, only the missing bytes came, the secret is in no `ps` line nor the output,
    and the daemon and its folder are gone after."""
    lab.up(HOSTS, lab=lab_dir, model_mb=1.0, reseed=True, layout="local=shared,mac4=classic,mac5=shared")
    src_links = [n for n, (link, _, _) in blobs(lab_dir, "mac5").items() if link]
    assert src_links
    before = blobs(lab_dir, "mac4")
    argv = rsyncd_argv(lab_inv, lab_dir)
    watch = Watch()
    watch.thread.start()
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    finally:
        watch.stop.set()
        watch.thread.join()
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert "rsync daemon on" in p.stdout and f"(rsync daemon at {lab_inv.hosts['mac5'].data_ip})" in p.stdout
    code, report = fab_json(lab_inv, "verify-cache", "--deep")
    assert by_host(report)["mac4"]["verdict"] == "complete"
    after = blobs(lab_dir, "mac4")
    kept = {n: v for n, v in before.items() if not n.endswith(".incomplete")}
    assert all(after[n] == v for n, v in kept.items()), "a blob mac4 had was sent again"
    assert all(not after[n][0] for n in src_links), "a store link arrived as a link"
    new = {n: v for n, v in after.items() if n not in kept}
    literal, _ = map(int, DONE.search(p.stdout).groups())
    assert new and literal == sum(size for _, _, size in new.values())
    assert len(watch.secrets) == 1, watch.secrets   # seen on disk: the checks below are not vacuous
    secret = watch.secrets.pop()
    assert len(secret) == 32
    assert any("--daemon" in line and "thunder-rsyncd." in line for line in watch.lines)   # sampled in time
    assert not [line for line in watch.lines if secret in line]
    assert secret not in p.stdout + p.stderr
    assert not daemons() and not glob.glob("/tmp/thunder-rsyncd.*") and not glob.glob("/tmp/thunder-peer.*")
    again = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and DONE.search(again.stdout).group(1) == "0", again.stdout[-2000:]


def test_rsyncd_refuses_a_wrong_secret_and_another_address(lab_inv, lab_dir, tmp_path):
    """The wrapper as SRC runs it: a wrong secret and an address not allowed get rsync's exit 5 and
    nothing lands; the right pair is let in; closing its stdin stops the daemon and removes its folder."""
    mac4, mac5 = lab_inv.hosts["mac4"], lab_inv.hosts["mac5"]
    cache = kit.host_cache(lab_dir, "mac5")
    d = subprocess.Popen(["sh", str(WRAPPER), str(cache), "rsync", mac4.data_ip, mac5.data_ip],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        d.stdin.write("0123456789abcdef0123456789abcdef\n")
        d.stdin.flush()
        line = d.stdout.readline().split()
        assert line[0] == "port", line
        repo = kit.host_repo(lab_dir, "mac5").name
        url = f"rsync://lane@{mac5.data_ip}:{line[1]}/lane/{repo}/refs/"

        def pull(secret, addr, dest):
            time.sleep(0.3)   # max connections = 1: let the last one's daemon child go
            return subprocess.run(["rsync", "-rlt", f"--address={addr}", "--timeout=20", url, str(dest)],
                                  env={"PATH": "/usr/bin:/bin", "RSYNC_PASSWORD": secret},
                                  capture_output=True, text=True, timeout=60)

        wrong = pull("0" * 32, mac4.data_ip, tmp_path / "a")
        assert wrong.returncode == 5 and "auth failed" in wrong.stderr, wrong.stderr
        other = pull("0123456789abcdef0123456789abcdef", mac5.data_ip, tmp_path / "b")
        assert other.returncode == 5, other.stderr
        assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
        right = pull("0123456789abcdef0123456789abcdef", mac4.data_ip, tmp_path / "c")
        assert right.returncode == 0 and (tmp_path / "c" / "main").is_file(), right.stderr
        assert daemons()
    finally:
        d.stdin.close()
        d.wait(timeout=20)
    assert not daemons() and not glob.glob("/tmp/thunder-rsyncd.*")


@pytest.mark.parametrize("extra,why", [
    (["--peer-transport", "rsyncd", "--from-addr", "10.0.0.1"], "needs --from-addr and --host-addr"),
    (["--peer-transport", "rsyncd", "--from-addr", "10.0.0.300", "--host-addr", "10.0.0.2"], "not an IPv4/IPv6"),
    (["--peer-transport", "rsyncd", "--from-addr", "fe80::1", "--host-addr", "a;b"], "not an IPv4/IPv6"),
    (["--peer-transport", "tcp"], "not ssh or rsyncd"),
    (["--from-addr", "10.0.0.1"], "go with --peer-transport rsyncd"),
])
def test_bad_rsyncd_options_are_usage_errors(extra, why):
    p = subprocess.run(["bash", str(LAUNCHER), "--dest-cache", "/nowhere/hub", "--from-host", "u@10.0.0.1",
                        "--from-cache", "/nowhere/hub", "--peer-ssh", "ssh", *extra, "mac4"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 64 and why in p.stderr, p.stderr


def test_rsyncd_dry_run_changes_nothing_and_leaves_no_daemon(lab_inv, lab_dir):
    before = blobs(lab_dir, "mac4")
    p = subprocess.run(rsyncd_argv(lab_inv, lab_dir, "--dry-run"), capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert "sync: dry run: would send" in p.stdout and re.search(r"^>f\S+ ", p.stdout, re.M), p.stdout[-2000:]
    finals = {n: v for n, v in before.items() if not n.endswith(".incomplete")}   # dry run keeps leftovers
    assert {n: v for n, v in blobs(lab_dir, "mac4").items() if not n.endswith(".incomplete")} == finals
    assert not daemons() and not glob.glob("/tmp/thunder-rsyncd.*") and not glob.glob("/tmp/thunder-peer.*")


def test_a_failed_rsyncd_pass_is_rsyncs_exit_and_leaves_no_daemon(lab_inv, lab_dir):
    """HOST cannot reach the daemon (it listens on SRC's IPv6 loopback, HOST binds IPv4): rsync's own
    exit code, nothing new under a final name, and the daemon and folders still go."""
    before = {n: v for n, v in blobs(lab_dir, "mac4").items() if not n.endswith(".incomplete")}
    argv = rsyncd_argv(lab_inv, lab_dir)
    argv[argv.index("--from-addr") + 1] = "::1"
    p = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert p.returncode == 10, p.stdout[-2000:] + p.stderr[-2000:]
    assert "rsync daemon on" in p.stdout, p.stdout[-2000:]
    assert {n: v for n, v in blobs(lab_dir, "mac4").items() if not n.endswith(".incomplete")} == before
    assert not daemons() and not glob.glob("/tmp/thunder-rsyncd.*") and not glob.glob("/tmp/thunder-peer.*")


def test_rsyncd_a_missing_repo_on_the_peer_is_a_bad_source_and_no_daemon_stays(lab_inv, lab_dir):
    """SRC's check runs in the daemon's own session (beside the host's preparation): a repo missing
    there is still exit 66 naming it, no daemon is started for it, nothing lands, nothing stays."""
    argv = rsyncd_argv(lab_inv, lab_dir)
    argv[argv.index("--from-cache") + 1] = str(lab_dir / "mac5" / "nowhere")
    before = blobs(lab_dir, "mac4")
    t0 = time.monotonic()
    p = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert p.returncode == 66 and "nowhere" in p.stderr, p.stdout[-2000:] + p.stderr[-2000:]
    assert time.monotonic() - t0 < 20   # told when SRC's session ends, not after the 30 s wait for a port
    assert "rsync daemon on" not in p.stdout and "listening on port" not in p.stdout + p.stderr
    assert {n: v for n, v in blobs(lab_dir, "mac4").items() if not n.endswith(".incomplete")} == \
        {n: v for n, v in before.items() if not n.endswith(".incomplete")}
    assert not daemons() and not glob.glob("/tmp/thunder-rsyncd.*") and not glob.glob("/tmp/thunder-peer.*")


def test_rsyncd_a_stopped_peer_is_exit_255(lab_inv, lab_dir):
    """mac5's sshd stopped: the daemon's session cannot reach it: 255 and said so (as the ssh
    transport's peer check says), no folder left on HOST."""
    argv = rsyncd_argv(lab_inv, lab_dir)
    assert lab_hosts._stop(lab_dir, "mac5") is not None   # the next test's lab_inv starts it again
    t0 = time.monotonic()
    p = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert p.returncode == 255, p.stdout[-2000:] + p.stderr[-2000:]
    assert time.monotonic() - t0 < 20
    assert "could not reach" in p.stderr and lab_inv.hosts["mac5"].data_ip in p.stderr, p.stderr
    assert not glob.glob("/tmp/thunder-peer.*")
