"""Peer sync on the lab's real sshd: fab setup-peers installs the peer key over the control ssh,
then mac4 pulls the cache from mac5 with it (each host's data_ip is its loopback address, its sshd
listening there) and is verified against local. The control key never reaches a host; the peer
key is refused from an address its from= does not name; a peer that fails falls back to local."""
import shutil
import subprocess

import pytest

from thunderlane import inventory, peer_setup, peer_sync, peers
from thunderlane.onhost.peer import authorized_text
from thunderlane.remote import run

from .conftest import by_host, fab, fab_json
from .test_setup_hosts import write_inventory

pytestmark = pytest.mark.skipif(not peer_sync.launcher_pulls(),
                                reason="the sync launcher has no --from-host yet (helper i3's part)")


def remove_peers(inv, lab_dir):
    """Back to a lab without the peer key: the other lab tests expect sync-cache to push from local."""
    shutil.rmtree(peer_setup.key_path(inv).parent, ignore_errors=True)
    for name in inv.hosts:
        shutil.rmtree(lab_dir / name / ".thunderlane", ignore_errors=True)
        keys = lab_dir / name / ".ssh" / "authorized_keys"
        if keys.is_file():
            keys.write_text(authorized_text(keys.read_text(), None))


@pytest.fixture(scope="module", autouse=True)
def no_peers_after(lab_dir):
    """The peer key stays installed from test to test (reseeding leaves homes alone); gone at the end."""
    yield
    remove_peers(inventory.load(lab_dir / "hosts.yaml"), lab_dir)


@pytest.fixture
def peered(lab_inv):
    report = peer_setup.setup_peers(lab_inv)  # in-process: "nothing to do" after the first time
    assert report.ok, report.to_json()
    return lab_inv, report


def test_setup_peers_installs_once_and_never_the_control_key(lab_inv, lab_dir):
    remove_peers(lab_inv, lab_dir)
    code, report = fab_json(lab_inv, "setup-peers")
    assert code == 0, report
    inv = lab_inv
    assert {r["host"]: r["verdict"] for r in report["results"]} == {"mac4": "installed", "mac5": "installed"}
    code, again = fab_json(inv, "setup-peers")
    assert code == 0 and {r["verdict"] for r in again["results"]} == {"nothing to do"}
    control = (lab_dir / "local" / "id_ed25519").read_text().strip().splitlines()[1]
    p = subprocess.run(["grep", "-rlF", control, str(lab_dir / "mac4"), str(lab_dir / "mac5")],
                       capture_output=True, text=True)
    assert p.returncode == 1 and p.stdout == "", p.stdout  # no file on a host holds the control key
    authorized = (lab_dir / "mac5" / ".ssh" / "authorized_keys").read_text().splitlines()
    assert authorized == [f'from="{inv.hosts["mac4"].data_ip}",restrict ssh-ed25519 '
                          f'{peer_setup.local_key(inv)[1]} thunderlane-peer']


def test_mac4_pulls_from_mac5_over_the_data_link(peered):
    inv, _ = peered
    missing = by_host(fab_json(inv, "verify-cache")[1])["mac4"]["figures"]["missing_bytes"]
    p = fab(inv, "sync-cache", "--host", "mac4", "--from", "mac5")
    assert p.returncode == 0, p.stdout + p.stderr
    assert f"mac4 <- mac5 over the data link ({inv.hosts['mac5'].data_ip})" in p.stdout
    assert "mac4 <- mac5: partial -> complete" in p.stdout
    code, report = fab_json(inv, "verify-cache", "--deep")
    assert code == 0 and by_host(report)["mac4"]["verdict"] == "complete"
    assert missing > 0


def test_without_from_the_complete_peer_is_chosen(peered):
    inv, _ = peered
    code, out = fab_json(inv, "sync-cache", "--host", "mac4")
    assert code == 0, out
    row = out["results"][0]
    assert (row["source"], row["before"], row["after"]) == ("mac5", "partial", "complete")
    assert "mac5 is complete and reachable over the data link" in row["why"]


def test_from_refuses_before_setup_peers_and_from_an_incomplete_host(lab_inv, lab_dir):
    remove_peers(lab_inv, lab_dir)
    p = fab(lab_inv, "sync-cache", "--host", "mac4", "--from", "mac5")
    assert p.returncode == 1 and "--from mac5: there is no peer key on local (fab setup-peers makes and " \
        "installs it)" in p.stderr, p.stderr
    p = fab(lab_inv, "sync-cache", "--host", "mac5", "--from", "mac4")
    assert p.returncode == 1 and "--from mac4: its cache is partial" in p.stderr, p.stderr
    try:
        peer_setup.local_key(lab_inv, create=True)  # made on local, not yet installed on the hosts
        p = fab(lab_inv, "sync-cache", "--host", "mac4", "--from", "mac5")
        assert p.returncode == 1 and "--from mac5: mac4 cannot pull from mac5: the peer key is not installed " \
            "on mac4 (fab setup-peers installs it)" in p.stderr, p.stderr
    finally:
        remove_peers(lab_inv, lab_dir)
    code, out = fab_json(lab_inv, "sync-cache", "--host", "mac4")  # no peer key: local, saying why
    assert code == 0 and out["results"][0]["source"] == "local"
    assert "no peer can serve it: there is no peer key on local" in out["results"][0]["why"]


def test_the_peer_key_is_refused_from_another_address(peered):
    inv, _ = peered
    mac4, mac5 = inv.hosts["mac4"], inv.hosts["mac5"]
    if mac4.data_ip == "127.0.0.1":
        pytest.skip("single-address lab: every host shares 127.0.0.1, so from= cannot tell them apart")
    got = {h.name: run_peer_facts(inv, h) for h in (mac4, mac5)}
    command = peers.peer_ssh(mac4, got["mac4"], inv.ssh, mac5).split()
    good = [*command, f"{mac5.user}@{mac5.data_ip}", "true"]
    assert run(inv, mac4, good)[0] == 0
    elsewhere = [a if not a.startswith("BindAddress=") else "BindAddress=127.0.0.1" for a in good]
    code, _, err = run(inv, mac4, elsewhere)
    assert code == 255 and "Permission denied" in err


def test_the_rsyncd_peer_ssh_agrees_on_curve25519_and_the_ssh_one_keeps_opensshs_default(peered):
    """With peer_transport rsyncd the peer ssh only starts the daemon (the bytes cross in clear):
    it asks for curve25519 first, not OpenSSH's slower post-quantum default; with the ssh
    transport (the bytes inside that ssh) the default stays."""
    inv, _ = peered
    mac4, mac5 = inv.hosts["mac4"], inv.hosts["mac5"]
    got = run_peer_facts(inv, mac4)
    chosen = {}
    for transport in ("rsyncd", "ssh"):
        command = peers.peer_ssh(mac4, got, inv.ssh, mac5, transport).split()
        code, _, err = run(inv, mac4, [*command, "-v", f"{mac5.user}@{mac5.data_ip}", "true"])
        assert code == 0, err
        chosen[transport] = [line.split("kex: algorithm: ", 1)[1].strip() for line in err.splitlines()
                             if "kex: algorithm: " in line]
    assert chosen["rsyncd"] == ["curve25519-sha256"], chosen
    assert chosen["ssh"] and chosen["ssh"] != ["curve25519-sha256"], chosen


def run_peer_facts(inv, host):
    from thunderlane.remote import ask
    return ask(inv, host, peers.query())[0]


def test_a_peer_that_fails_falls_back_to_local(peered, lab_dir, tmp_path):
    inv, _ = peered
    path = write_inventory(lab_dir, tmp_path / "hosts.yaml", mac5={"rsync_path": "/nonexistent/rsync"})
    broken = inventory.load(path)
    p = fab(broken, "sync-cache", "--host", "mac4")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "mac4 <- mac5 over the data link" in p.stdout
    assert "mac5 failed; falling back to local" in p.stdout
    assert "mac4: partial -> complete" in p.stdout and "mac5 failed first:" in p.stdout


def test_every_host_with_the_rsyncd_transport(peered, tmp_path):
    """`fab sync-cache` without --host (mac5 complete is a target too) with ssh.peer_transport rsyncd:
    mac5 serves mac4 through a one-shot rsync daemon on its data address; mac4 ends complete,
    verified against local; mac5 sends nothing to itself."""
    import yaml
    inv, _ = peered
    data = yaml.safe_load(open(inv.path).read())
    data["ssh"]["peer_transport"] = "rsyncd"
    path = tmp_path / "rsyncd.yaml"
    path.write_text(yaml.safe_dump(data))
    rsyncd = inventory.load(str(path))
    code, out = fab_json(rsyncd, "sync-cache")
    assert code == 0, out
    rows = {r["host"]: r for r in out["results"]}
    assert (rows["mac4"]["source"], rows["mac4"]["before"], rows["mac4"]["after"]) == ("mac5", "partial", "complete")
    assert "--peer-transport rsyncd" in rows["mac4"]["command"], rows["mac4"]["command"]
    assert rows["mac5"]["after"] == "complete" and not rows["mac5"]["command"]   # nothing missing there
    code, report = fab_json(inv, "verify-cache", "--deep")
    assert code == 0 and by_host(report)["mac4"]["verdict"] == "complete"
