"""Issue 11 items 6 and 7 on the lab: preflight proves the ring's data path between every pair of
hosts (real listeners and connects on the hosts' data IPs, through their real sshd), and refuses a
jaccl profile where ibv_devices is missing. Fault-suite id 32."""
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest
import yaml

from thunderlane import inventory, lab
from thunderlane.lab import kit
from thunderlane.window import datapath

from .conftest import PROFILE, ROOT, train


def test_a_port_in_use_on_a_host_is_said_so_not_called_a_broken_link(lab_inv, profile_dir):
    """mac5's ring port (starting port + its rank) held by another program: preflight says `port in
    use` on mac5 and reports no data-link, on either host."""
    mac5 = lab_inv.hosts["mac5"]
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind((mac5.data_ip, datapath.starting_port() + 1))
        holder.listen(1)
        code, r = train(lab_inv, profile_dir, "run_a", "--target", "1")
    hosts = {x["host"]: x for x in r["preflight"]}
    assert code == 1 and r["verdict"] == "refused", r
    assert f"port in use: ring port {mac5.data_ip}:{datapath.starting_port() + 1}" in hosts["mac5"]["detail"]
    assert "data-link" not in hosts["mac4"]["detail"] + hosts["mac5"]["detail"]


def _blackhole(address):
    """Route ``address`` (RFC 2544 benchmarking range, no host has it) into the loopback device:
    a SYN to it is dropped as a martian, as a firewall in stealth mode or a dead cable drops it, and
    nothing leaves this machine. Needs root and iproute2."""
    subprocess.run(["ip", "route", "replace", f"{address}/32", "dev", "lo"], check=True, capture_output=True)


@pytest.fixture
def dead_data_ip():
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("routing a dead data address needs root and iproute2 (Linux)")
    second = os.environ.get(lab.NET_VAR, "127.77.0").split(".")[1]
    address = f"198.18.{second}.11"  # one per lab net, so two labs' tests never share it
    _blackhole(address)
    yield address
    subprocess.run(["ip", "route", "del", f"{address}/32", "dev", "lo"], capture_output=True)


@pytest.mark.fault_case("32", "a data link between two hosts is dead",
                        "mac5's data_ip in the inventory is an address whose packets are dropped "
                        "(routed into the loopback device, so no host listens there and no SYN is answered)")
def test_a_dead_data_link_is_refused_as_data_link_naming_the_pair(warm_lab, profile_dir, tmp_path, dead_data_ip,
                                                                   reliability):
    """The lab's hosts reach each other's ring ports (the other tests train through them); with mac5's
    data_ip dead, preflight refuses before launch with `data-link` naming the pair and the endpoint,
    within the connect timeout: no window starts and nothing hangs."""
    data = yaml.safe_load(open(warm_lab.path))
    data["hosts"]["mac5"]["data_ip"] = dead_data_ip
    variant = tmp_path / "hosts.yaml"
    variant.write_text(yaml.safe_dump(data))
    inv = inventory.load(variant)
    t0 = time.monotonic()
    code, r = train(inv, profile_dir, "run_a", "--target", "1")
    seconds = time.monotonic() - t0
    hosts = {x["host"]: x for x in r["preflight"]}
    end = f"{dead_data_ip}:{datapath.starting_port() + 1}"
    assert code == 1 and r["verdict"] == "data-link", r
    assert hosts["mac4"]["verdict"] == "data-link"
    assert f"data-link: mac4 -> mac5 {end}: timed out" in hosts["mac4"]["detail"]
    assert f"data-link: cannot listen on {end} here" in hosts["mac5"]["detail"]
    assert "port in use" not in hosts["mac4"]["detail"] + hosts["mac5"]["detail"]
    assert r["command"] is None and r["launches"] == [], r  # nothing was launched
    assert seconds < 30, seconds
    reliability(refusal_seconds=round(seconds, 1))


def test_a_jaccl_profile_is_refused_where_ibv_devices_is_missing(lab_inv, profile_dir):
    """jaccl needs RDMA over Thunderbolt (macOS 26.2+): on the Linux lab ibv_devices is missing,
    and preflight refuses on every host, naming the host and the tool."""
    kit.write_profile(profile_dir, "run_j", "test_run_j", source=PROFILE, lane={"min_free_mb": 0, "backend": "jaccl"})
    code, r = train(lab_inv, profile_dir, "run_j", "--target", "1")
    hosts = {x["host"]: x for x in r["preflight"]}
    assert code == 1 and r["verdict"] == "refused", r
    for name in ("mac4", "mac5"):
        assert "jaccl: ibv_devices not found on this host" in hosts[name]["detail"], hosts[name]


@pytest.mark.parametrize("backend", ["ring", "jaccl"])
def test_the_plan_writes_the_backends_hostfile_mlx_reads(lab_inv, profile_dir, tmp_path, backend):
    """plan-window (what the launcher runs) writes the backend the launcher passes to mlx.launch and
    a hostfile mlx's own parser reads: jaccl's with the inventory's RDMA devices, null for itself."""
    from mlx._distributed_utils.common import Hostfile
    data = yaml.safe_load(open(lab_inv.path))
    data["hosts"]["mac4"]["rdma"] = {"mac5": "rdma_en3"}
    data["hosts"]["mac5"]["rdma"] = {"mac4": "rdma_en4"}
    variant = tmp_path / "hosts.yaml"
    variant.write_text(yaml.safe_dump(data))
    kit.write_profile(profile_dir, "run_p", "test_run_p", source=PROFILE, lane={"backend": backend})
    out = tmp_path / "plan"
    env = dict(os.environ, THUNDER_INVENTORY=str(variant), THUNDER_PROFILES=str(profile_dir))
    p = subprocess.run([sys.executable, "-m", "thunderlane.launcher_helpers", "plan-window", "run_p", "--to", "1",
                        "--target", "1", "--out", str(out)], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert (out / "backend").read_text() == backend + "\n"
    assert json.loads((out / "spec.json").read_text())["backend"] == backend
    parsed = Hostfile.from_file(out / "hostfile.json")
    assert [(h.ssh_hostname, h.ips) for h in parsed.hosts] == [("mac4", [lab_inv.hosts["mac4"].data_ip]),
                                                               ("mac5", [lab_inv.hosts["mac5"].data_ip])]
    want = [[None, "rdma_en3"], ["rdma_en4", None]] if backend == "jaccl" else [[], []]
    assert [h.rdma for h in parsed.hosts] == want and parsed.backend == ("jaccl" if backend == "jaccl" else "")


def test_without_preflight_the_ring_that_cannot_form_is_still_a_data_link(warm_lab, profile_dir, tmp_path,
                                                                          dead_data_ip):
    """--skip-preflight with mac5's data_ip dead: mlx's ring fails on mac5 ("Couldn't bind socket"),
    mlx.launch ends mac4's rank, and triage names it `data-link`, not a runtime crash."""
    data = yaml.safe_load(open(warm_lab.path))
    data["hosts"]["mac5"]["data_ip"] = dead_data_ip
    variant = tmp_path / "hosts.yaml"
    variant.write_text(yaml.safe_dump(data))
    code, r = train(inventory.load(variant), profile_dir, "run_a", "--target", "1", "--skip-preflight")
    assert code == 1 and r["verdict"] == "data-link", r
    assert "the ring could not be formed: mac5: " in r["explanation"] and "Couldn't bind socket" in r["explanation"]


def test_a_plan_from_a_step_the_writer_is_not_at_is_refused(lab_inv, profile_dir, tmp_path):
    """The chunk runner hands each window's start step to plan-window (fab's preflight read it, before
    the lock was taken): a writer no longer there (another window ran since) fails the plan, naming it."""
    kit.write_profile(profile_dir, "run_f", "test_run_f", source=PROFILE)
    env = dict(os.environ, THUNDER_INVENTORY=lab_inv.path, THUNDER_PROFILES=str(profile_dir))

    def plan(start):
        return subprocess.run([sys.executable, "-m", "thunderlane.launcher_helpers", "plan-window", "run_f", "--to", "2",
                               "--target", "2", "--from", start, "--out", str(tmp_path / start)],
                              env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    moved, here = plan("1"), plan("0")
    assert moved.returncode == 3 and "is at step 0, not at step 1" in moved.stderr, moved.stderr
    assert not (tmp_path / "1" / "spec.json").exists()
    assert here.returncode == 0, here.stderr
