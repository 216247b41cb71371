"""The sync launcher pulling from a peer (--from-host): mac4 runs rsync itself and pulls mac5's cache
over its own ssh to mac5, with a throwaway key pair this test installs (mac4 holds the private key,
mac5's sshd accepts it only from mac4's address). On loopback each host's data_ip is its ssh address."""
import re
import subprocess

import pytest

from thunderlane import inventory, lab
from thunderlane.lab import hosts as lab_hosts, kit
from thunderlane.sync import launcher_argv
from tests.lab.conftest import HOSTS, LAYOUT, by_host, fab_json

DONE = re.compile(r"sync: done: file data sent (\d+) bytes, total sent (\d+) bytes")


def peer_ssh(inv, lab_dir):
    """Install a key pair for mac4 -> mac5 and return the --peer-ssh command mac4 runs."""
    mac4, mac5 = inv.hosts["mac4"], inv.hosts["mac5"]
    folder = lab_dir / "mac4" / ".thunderlane" / "peer-test"
    folder.mkdir(parents=True, exist_ok=True)
    key = folder / "id_ed25519"
    if not key.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "lab-peer-test", "-f", str(key)],
                       check=True)
    pub = key.with_suffix(".pub").read_text().strip()
    # lab.up rewrites this file: the next test's fixture takes the key away again
    with open(lab_dir / "sshd" / "mac5" / "authorized_keys", "a") as f:
        f.write(f'from="{mac4.hostname}",restrict {pub}\n')
    pinned = [line for line in open(inv.ssh.known_hosts) if line.startswith(f"[{mac5.hostname}]:{mac5.port} ")]
    assert len(pinned) == 1
    (folder / "known_hosts").write_text(pinned[0])
    return (f"ssh -F none -i {key} -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=yes "
            f"-o UserKnownHostsFile={folder / 'known_hosts'} -o GlobalKnownHostsFile=/dev/null "
            f"-o ForwardAgent=no -o ClearAllForwardings=yes -o ConnectTimeout=5 "
            f"-o BindAddress={mac4.hostname} -p {mac5.port}")


def pull_argv(inv, lab_dir, *extra, peer=None):
    mac4, mac5 = inv.hosts["mac4"], inv.hosts["mac5"]
    argv = launcher_argv(inv, mac4, inv.local.hf_cache, str(kit.host_cache(lab_dir, "mac4")))
    return argv[:-1] + ["--from-host", f"{mac5.user}@{mac5.data_ip}", "--from-cache",
                        str(kit.host_cache(lab_dir, "mac5")), "--peer-ssh", peer or peer_ssh(inv, lab_dir),
                        *extra, argv[-1]]


def run(argv):
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


def blobs(lab_dir, host):
    """{blob name: (is a link, inode, size)} of the host's repo folder."""
    folder = kit.host_repo(lab_dir, host) / "blobs"
    return {p.name: (p.is_symlink(), p.stat().st_ino, p.stat().st_size) for p in folder.iterdir()}


def complete(inv, host):
    code, report = fab_json(inv, "verify-cache", "--deep")
    return by_host(report)[host]["verdict"] == "complete"


def test_pull_from_a_peer_sends_only_what_is_missing(lab_inv, lab_dir):
    """mac5 complete, mac4 partial: mac4 pulls from mac5 and is complete (verified against local);
    the bytes sent are the missing blobs' and mac4's own blobs stay as they were."""
    assert complete(lab_inv, "mac5") and not complete(lab_inv, "mac4")
    before = blobs(lab_dir, "mac4")
    p = run(pull_argv(lab_inv, lab_dir))
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    after = blobs(lab_dir, "mac4")
    assert complete(lab_inv, "mac4")
    kept = {n: v for n, v in before.items() if not n.endswith(".incomplete")}
    assert all(after[n] == v for n, v in kept.items()), "a blob mac4 had was sent again"
    new = {n: v for n, v in after.items() if n not in kept}
    assert new and not any(link for link, _, _ in new.values())
    literal, total = map(int, DONE.search(p.stdout).groups())
    assert literal == sum(size for _, _, size in new.values())
    assert total >= literal
    assert re.search(r"^>f\S+ ", p.stdout, re.M), "no itemized line relayed from mac4's rsync"
    assert f"{lab_inv.hosts['mac5'].data_ip}:" in p.stdout   # the output names the source
    again = run(pull_argv(lab_inv, lab_dir))
    assert again.returncode == 0 and DONE.search(again.stdout).group(1) == "0", again.stdout[-2000:]


def test_a_shared_store_on_the_peer_arrives_as_files(lab_inv, lab_dir):
    """mac5 keeps its weight blobs in huggingface_hub's shared store: they reach mac4 as files."""
    lab.up(HOSTS, lab=lab_dir, model_mb=1.0, reseed=True, layout="local=shared,mac4=classic,mac5=shared")
    assert kit.host_layout(lab_dir, "mac5") == "shared"
    src_links = [n for n, (link, _, _) in blobs(lab_dir, "mac5").items() if link]
    assert src_links
    p = run(pull_argv(lab_inv, lab_dir))
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    after = blobs(lab_dir, "mac4")
    assert all(not after[n][0] for n in src_links), "a store link arrived as a link"
    assert complete(lab_inv, "mac4")


def test_peer_dry_run_changes_nothing(lab_inv, lab_dir):
    before = blobs(lab_dir, "mac4")
    p = run(pull_argv(lab_inv, lab_dir, "--dry-run"))
    assert p.returncode == 0, p.stderr[-2000:]
    assert "sync: dry run: would send" in p.stdout and re.search(r"^>f\S+ ", p.stdout, re.M)
    assert blobs(lab_dir, "mac4") == before


@pytest.fixture
def same_lab(lab_dir):
    """The lab as the last test left it (no reseed): for cases that change nothing."""
    if any(lab_hosts.sshd_pid(lab_dir, h) is None for h in HOSTS):
        lab.up(HOSTS, lab=lab_dir, model_mb=1.0, layout=LAYOUT)
    return inventory.load(lab_dir / "hosts.yaml")


def test_a_missing_repo_on_the_peer_is_a_bad_source(same_lab, lab_dir):
    argv = pull_argv(same_lab, lab_dir)
    i = argv.index("--from-cache")
    argv[i + 1] = str(lab_dir / "mac5" / "nowhere")
    p = run(argv)
    assert p.returncode == 66 and "no " in p.stderr and "nowhere" in p.stderr, p.stderr


@pytest.mark.parametrize("peer,why", [
    ("ssh -i key/id", "not an absolute path"),
    ("ssh -o 'UserKnownHostsFile=/a b'", "has a quote"),
    ("ssh -i $HOME/id", "has a quote"),
    ("ssh -o ProxyCommand=/bin/nc", "runs a command"),
    ("ssh -i /x/../etc/id", "climbs"),
])
def test_a_bad_peer_ssh_is_refused(same_lab, lab_dir, peer, why):
    before = blobs(lab_dir, "mac4")
    p = run(pull_argv(same_lab, lab_dir, peer=peer))
    assert p.returncode == 65 and why in p.stderr, p.stderr
    assert blobs(lab_dir, "mac4") == before


def test_a_stopped_peer_is_exit_255_and_nothing_lands(lab_inv, lab_dir):
    """mac5's sshd stopped: mac4 cannot reach it: 255, said so, and no blob under a final name."""
    argv = pull_argv(lab_inv, lab_dir)
    before = blobs(lab_dir, "mac4")
    assert lab_hosts._stop(lab_dir, "mac5") is not None   # the next test's lab_inv starts it again
    p = run(argv)
    assert p.returncode == 255, p.stdout[-2000:] + p.stderr[-2000:]
    assert "could not reach" in p.stderr and lab_inv.hosts["mac5"].data_ip in p.stderr
    finals = {n: v for n, v in before.items() if not n.endswith(".incomplete")}   # stale leftovers go
    assert blobs(lab_dir, "mac4") == finals
