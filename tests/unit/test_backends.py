"""Backends (ring | jaccl): the profile field, the inventory's rdma devices, and every hostfile the
plan writes read back by mlx's own parser."""
import copy
import json
import os
import subprocess
from pathlib import Path

import pytest
from mlx._distributed_utils.common import Hostfile

from thunderlane import inventory, profiles
from thunderlane.inventory import InventoryError
from thunderlane.window.hostfile import HostfileError, hostfile

from .test_inventory import GOOD

DEVICES = {"mac4": {"mac5": "rdma_en3", "mac6": "rdma_en4"},
           "mac5": {"mac4": "rdma_en3", "mac6": "rdma_en5"},
           "mac6": {"mac4": "rdma_en4", "mac5": "rdma_en5"}}


def inv_with(count, rdma=True):
    data = copy.deepcopy(GOOD)
    data["hosts"]["mac6"] = dict(data["hosts"]["mac5"], ssh_name="mac6", hostname="mac6.local",
                                 data_ip="169.254.10.6")
    names = ["mac4", "mac5", "mac6"][:count]
    data["hosts"] = {n: data["hosts"][n] for n in names}
    if rdma:
        for n in names:
            data["hosts"][n]["rdma"] = {p: d for p, d in DEVICES[n].items() if p in names}
    return inventory.parse(data, "inv.yaml"), names


@pytest.mark.parametrize("count", [2, 3])
@pytest.mark.parametrize("backend", ["ring", "jaccl"])
def test_every_hostfile_parses_with_mlx_own_parser(tmp_path, backend, count):
    inv, names = inv_with(count)
    hosts = [inv.hosts[n] for n in names]
    path = tmp_path / "hostfile.json"
    path.write_text(json.dumps(hostfile(hosts, backend)))
    parsed = Hostfile.from_file(path)
    assert [h.ssh_hostname for h in parsed.hosts] == names
    assert [h.ips for h in parsed.hosts] == [[h.data_ip] for h in hosts]
    assert [h.rank for h in parsed.hosts] == list(range(count))
    if backend == "ring":
        assert parsed.backend == "" and all(h.rdma == [] for h in parsed.hosts)
        return
    assert parsed.backend == "jaccl" and parsed.envs == []
    # mlx.launch's own checks (launch_jaccl): one entry per rank, null for itself, a device for every peer
    for i, h in enumerate(parsed.hosts):
        assert len(h.rdma) == count and h.rdma[i] is None
        assert h.rdma == [None if j == i else DEVICES[names[i]][names[j]] for j in range(count)]
    assert json.loads(path.read_text()) == Hostfile.from_file(path).to_json()  # the format distributed_config writes


def test_jaccl_hostfile_without_a_device_names_the_host_and_the_peer():
    inv, names = inv_with(3)
    mac6 = inv.hosts["mac6"]
    broken = [inv.hosts["mac4"], inv.hosts["mac5"], type(mac6)(**{**mac6.__dict__, "rdma": (("mac4", "rdma_en4"),)})]
    with pytest.raises(HostfileError, match="host mac6: rdma: no device toward mac5"):
        hostfile(broken, "jaccl")


def test_ring_needs_no_rdma():
    inv, names = inv_with(2, rdma=False)
    assert hostfile([inv.hosts[n] for n in names], "ring") == [
        {"ssh": "mac4", "ips": ["169.254.10.4"]}, {"ssh": "mac5", "ips": ["169.254.10.5"]}]


@pytest.mark.parametrize("value,why", [
    ({"mac5": "en3"}, r"host mac4: rdma\.mac5: 'en3' is not an RDMA device name"),
    ({"mac5": "rdma_en3; rm -rf /"}, r"host mac4: rdma\.mac5: .* is not an RDMA device name"),
    ({"mac4": "rdma_en3"}, "host mac4: rdma: a mapping of other hosts' names"),
    ({"mac9": "rdma_en3"}, "host mac4: rdma: 'mac9' is not an inventory host"),
    (["rdma_en3"], "host mac4: rdma: a mapping"),
])
def test_bad_rdma_field_names_file_host_and_field(value, why):
    data = copy.deepcopy(GOOD)
    data["hosts"]["mac4"]["rdma"] = value
    with pytest.raises(InventoryError, match=f"inv.yaml: {why}"):
        inventory.parse(data, "inv.yaml")


PROFILE = {"batch_size": 4, "num_layers": 2, "lora_parameters": {"rank": 4, "scale": 20.0},
           "max_seq_length": 128, "save_every": 5, "seed": 0, "learning_rate": 1e-4,
           "lane": {"hosts": ["mac4", "mac5"], "run_name": "r"}}


def test_backend_defaults_to_ring_and_takes_jaccl():
    assert profiles.parse("p", copy.deepcopy(PROFILE), "p.yaml").backend == "ring"
    data = copy.deepcopy(PROFILE)
    data["lane"]["backend"] = "jaccl"
    assert profiles.parse("p", data, "p.yaml").backend == "jaccl"


@pytest.mark.parametrize("value", ["mpi", "nccl", "Ring", "", None, ["ring"]])
def test_unknown_backend_names_file_and_field(value):
    data = copy.deepcopy(PROFILE)
    data["lane"]["backend"] = value
    with pytest.raises(profiles.ProfileError, match=r"p\.yaml: lane\.backend: .* is not one of ring, jaccl"):
        profiles.parse("p", data, "p.yaml")


LAUNCH = Path(__file__).resolve().parents[2] / "launchers" / "launch_gemma4_e2b_nko_correction_thunder.sh"
# Stands in for the project's python: writes the plan folder plan-window would (the launcher's
# input), with the backend under test; and for mlx.launch: prints the arguments it was given.
PLAN_STUB = """#!/bin/sh
while [ $# -gt 0 ]; do [ "$1" = --out ] && out=$2; shift; done
printf '%s\\n' "$BACKEND" > "$out/backend"
printf '%s\\n' /usr/bin/python3 > "$out/python"
printf '%s\\n' "$STUB_DIR/mlx.launch" > "$out/mlx_launch"
echo '[]' > "$out/hostfile.json"; echo '{}' > "$out/spec.json"; echo 'pass' > "$out/entry.py"
"""


@pytest.mark.parametrize("backend,code", [("ring", 0), ("jaccl", 0), ("mpi", 78), ("ring;id", 78)])
def test_the_launcher_passes_the_planned_backend_and_refuses_others(tmp_path, backend, code):
    stub = tmp_path / "python"
    stub.write_text(PLAN_STUB)
    (tmp_path / "mlx.launch").write_text('#!/bin/sh\necho "mlx.launch $*"\n')
    for f in (stub, tmp_path / "mlx.launch"):
        f.chmod(0o755)
    env = dict(os.environ, THUNDER_PYTHON=str(stub), THUNDER_PLAN_ROOT=str(tmp_path / "plans"), BACKEND=backend,
               STUB_DIR=str(tmp_path))
    env.pop("THUNDER_RING_PORT", None)
    p = subprocess.run(["bash", str(LAUNCH), "p", "1"], env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == code, p.stdout + p.stderr
    if code:
        assert f"launch: backend '{backend}'" in p.stderr and "is not ring or jaccl" in p.stderr
    else:
        ran = [line for line in p.stdout.splitlines() if line.startswith("mlx.launch ")]  # the stub's own line
        assert len(ran) == 1 and ran[0].startswith(f"mlx.launch --backend {backend} --starting-port 32323 --hostfile")
