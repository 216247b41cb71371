"""Single-address mode, as a Mac runs the lab (no 127.x aliases): a second lab of its own, every
host on 127.0.0.1 with its own sshd port, pinned as [127.0.0.1]:port; verify, sync and a short
ring training window (every rank's ring port on the one address) through the real fab."""
import json
import subprocess
from pathlib import Path

import pytest

from tests.lab.conftest import HOSTS, LAYOUT, by_host, fab, fab_json
from thunderlane import inventory, lab
from thunderlane.lab import kit


@pytest.fixture(scope="module")
def single_lab(tmp_path_factory):
    d = tmp_path_factory.mktemp("single-address-lab")
    try:
        path = lab.up(HOSTS, lab=d, model_mb=1.0, layout=LAYOUT, addresses="single")
        yield d, inventory.load(path)
    finally:
        lab.down(d)


def no_rank_of(lab_dir):
    p = subprocess.run(["pgrep", "-f", f"thunderlane-lane-train.*{lab_dir}"], capture_output=True, text=True)
    return p.stdout.strip() == ""


def test_single_address_lab_verifies_syncs_and_trains(single_lab, tmp_path):
    d, inv = single_lab
    hosts = inv.hosts.values()
    assert {h.hostname for h in hosts} == {h.data_ip for h in hosts} == {"127.0.0.1"}
    assert len({h.port for h in hosts}) == len(HOSTS)
    assert lab.net.remembered(d) == "single"
    pinned = {line.split()[0] for line in (d / "known_hosts").read_text().splitlines()}
    assert pinned == {f"[127.0.0.1]:{h.port}" for h in hosts}

    code, report = fab_json(inv, "verify-dataset")
    assert code == 0 and report["ok"] and set(by_host(report)) == {"local", *HOSTS}, report
    code, report = fab_json(inv, "verify-cache")
    assert by_host(report)["mac4"]["verdict"] == "partial" and by_host(report)["mac5"]["verdict"] == "complete"
    p = fab(inv, "sync-cache", "--host", "mac4")
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    code, report = fab_json(inv, "verify-cache")
    assert code == 0 and by_host(report)["mac4"]["verdict"] == "complete", report

    kit.write_profile(tmp_path, "single", "test_single_address", source="synthetic_mechanics",
                      lane={"min_free_mb": 0})
    code, r = fab_json(inv, "train-window", "--profile", "single", "--target", "2", "--window", "2",
                       env={"THUNDER_PROFILES": str(tmp_path)})
    assert code == 0 and r["verdict"] == "success", r
    hostfile = json.loads((Path(r["plans"][0]) / "hostfile.json").read_text())
    assert [h["ips"] for h in hostfile] == [["127.0.0.1"]] * len(HOSTS)   # ring ports differ per rank
    ckpt = json.loads((d / "mac4" / lab.RUNS_REL / "test_single_address" / "checkpoint.json").read_text())
    assert ckpt["step"] == 2 and ckpt["world_size"] == len(HOSTS)
    assert no_rank_of(d)


def test_lab_up_moves_running_sshds_when_the_mode_changes(single_lab):
    """A lab brought up again in the other mode restarts its sshds at the new addresses (a running
    one left at the old address would no longer match the inventory); the mode is remembered."""
    d, _ = single_lab
    before = lab.status(d)
    inv = inventory.load(lab.up(HOSTS, lab=d, model_mb=1.0, layout=LAYOUT, addresses="per-host"))
    assert [h.hostname for h in inv.hosts.values()] == [lab.address(i, "per-host") for i in range(len(HOSTS))]
    assert lab.net.remembered(d) == "per-host" and lab.status(d) != before
    code, report = fab_json(inv, "verify-dataset")
    assert code == 0 and report["ok"], report
    inv = inventory.load(lab.up(HOSTS, lab=d, model_mb=1.0, layout=LAYOUT))   # the remembered mode
    assert {h.hostname for h in inv.hosts.values()} != {"127.0.0.1"}
