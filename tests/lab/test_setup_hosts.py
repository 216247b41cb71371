"""fab setup-hosts on the lab's real sshd: a fresh venv built from a real base interpreter, pinned
packages installed by pip; a second run finds nothing to do, in seconds; an old base is refused."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from thunderlane import requirements

from .conftest import FAB, ROOT

BASE = os.path.realpath(sys._base_executable)  # the interpreter behind the project's .venv


def write_inventory(lab_dir, path, **hosts):
    """The lab's inventory with ``hosts`` overriding fields: {name: {field: value or None (drop)}}."""
    data = yaml.safe_load((lab_dir / "hosts.yaml").read_text())
    for name, fields in hosts.items():
        for key, value in fields.items():
            data["hosts"][name].pop(key, None) if value is None else data["hosts"][name].update({key: value})
    path.write_text(yaml.safe_dump(data))
    return path


def setup(inventory_path, *args, json_out=True):
    started = time.monotonic()
    p = subprocess.run([FAB, "setup-hosts", *args, *(["--json"] if json_out else [])], cwd=ROOT,
                       capture_output=True, text=True, timeout=900,
                       env=dict(os.environ, THUNDER_INVENTORY=str(inventory_path)))
    seconds = time.monotonic() - started
    if not json_out:
        return p, seconds
    try:
        return p, json.loads(p.stdout), seconds
    except ValueError:
        raise AssertionError(f"no JSON (exit {p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}") from None


def rows(report):
    return {r["host"]: r for r in report["results"]}


@pytest.fixture(scope="module")
def installed(lab_dir, tmp_path_factory):
    """Both hosts' python is one fresh venv (the lab's hosts share a disk); mac4 builds it once."""
    tmp = tmp_path_factory.mktemp("setup-hosts")
    python = tmp / "lane-venv" / "bin" / "python"
    fields = {"python": str(python), "base_python": BASE}
    inv = write_inventory(lab_dir, tmp / "hosts.yaml", mac4=fields, mac5=fields)
    p, report, seconds = setup(inv, "--hosts", "mac4")
    print(f"setup-hosts first run (venv + pip install): {seconds:.1f}s")
    return inv, python, p, report, seconds


def test_first_run_builds_the_venv_with_every_pin(installed):
    inv, python, p, report, _ = installed
    assert p.returncode == 0, p.stderr[-3000:]
    row = rows(report)["mac4"]
    assert row["verdict"] == "installed" and row["ok"]
    pinned = requirements.for_platform(requirements.shipped(), sys.platform)
    assert {k: v for k, v in row["figures"].items() if k != "python"} == pinned
    # the venv is real, built from the base: its own interpreter imports mlx_lm at the pinned version
    out = subprocess.run([str(python), "-c", "import sys, mlx_lm; print(mlx_lm.__version__, sys.prefix)"],
                         capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == [pinned["mlx-lm"], str(python.parent.parent)]
    assert row["figures"]["python"] == sys.version.split()[0]


def test_a_package_that_drifted_is_put_back_and_only_it(installed):
    inv, python, *_ = installed
    subprocess.run([str(python), "-m", "pip", "uninstall", "-y", "-q", "safetensors"], check=True, timeout=120)
    p, report, _ = setup(inv, "--hosts", "mac4")
    row = rows(report)["mac4"]
    assert p.returncode == 0 and row["verdict"] == "installed", p.stderr[-2000:]
    assert row["detail"].startswith("safetensors missing -> 0.8.0")
    assert row["figures"]["safetensors"] == "0.8.0"


def test_second_run_finds_nothing_to_do_in_seconds(installed):
    inv, python, *_ = installed
    before = python.parent.parent.stat().st_mtime_ns, (python.parent.parent / "pyvenv.cfg").read_bytes()
    p, report, seconds = setup(inv)
    assert p.returncode == 0, p.stderr[-2000:]
    assert {h: (r["verdict"], r["ok"]) for h, r in rows(report).items()} == {
        "mac4": ("nothing to do", True), "mac5": ("nothing to do", True)}
    assert seconds < 20, f"a run with nothing to do took {seconds:.1f}s"
    assert (python.parent.parent.stat().st_mtime_ns, (python.parent.parent / "pyvenv.cfg").read_bytes()) == before
    print(f"setup-hosts with nothing to do: {seconds:.1f}s")
    table, _ = setup(inv, json_out=False)
    head = table.stdout.splitlines()[0].split()
    assert head[:4] == ["host", "verdict", "python", "mlx"] and "safetensors" in head
    assert table.stdout.count("nothing to do") == 2 and "setup-hosts: OK" in table.stdout


def test_a_base_python_below_3_11_or_none_is_refused_naming_host_and_version(lab_dir, tmp_path):
    old = tmp_path / "python3.9"
    old.write_text("#!/bin/sh\necho 3.9.6\n")  # prints its version as a real 3.9 answers the check
    old.chmod(0o755)
    venv = tmp_path / "venv"
    inv = write_inventory(lab_dir, tmp_path / "hosts.yaml",
                          mac4={"python": str(venv / "bin" / "python"), "base_python": None},
                          mac5={"python": str(venv / "bin" / "python"), "base_python": str(old)})
    p, report, _ = setup(inv)
    got = rows(report)
    assert p.returncode == 1 and not report["ok"]
    assert got["mac5"]["verdict"] == "refused" and f"mac5: base_python {old} is Python 3.9.6" in got["mac5"]["detail"]
    assert got["mac4"]["verdict"] == "refused" and "mac4: base_python is not set" in got["mac4"]["detail"]
    assert not venv.exists()


def test_verify_cache_names_any_pinned_package_that_differs_between_hosts(lab_inv, tmp_path):
    """Not only python/mlx/mlx-lm: mac5's interpreter seeing a `transformers 9.9.9` first fails mac5,
    naming both sides; mac4 stays as its cache makes it."""
    fake = tmp_path / "site" / "transformers-9.9.9.dist-info"
    fake.mkdir(parents=True)
    (fake / "METADATA").write_text("Metadata-Version: 2.1\nName: transformers\nVersion: 9.9.9\n")
    wrapper = tmp_path / "python"
    wrapper.write_text(f"#!/bin/sh\nPYTHONPATH={fake.parent} exec {lab_inv.hosts['mac5'].python} \"$@\"\n")
    wrapper.chmod(0o755)
    inv = write_inventory(Path(lab_inv.path).parent, tmp_path / "hosts.yaml", mac5={"python": str(wrapper)})
    p = subprocess.run([FAB, "verify-cache", "--json"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, THUNDER_INVENTORY=str(inv)))
    got = rows(json.loads(p.stdout))
    assert p.returncode == 1 and not got["mac5"]["ok"]
    pinned = requirements.for_platform(requirements.shipped(), sys.platform)["transformers"]
    assert f"transformers 9.9.9 here but {pinned} on mac4" in got["mac5"]["detail"]
    assert "transformers" not in got["mac4"]["detail"]


def test_the_lab_s_own_hosts_need_nothing(lab_dir):
    """`fab lab-up` names the project's .venv and the interpreter it was made from: already set up."""
    data = yaml.safe_load((lab_dir / "hosts.yaml").read_text())
    assert {h["base_python"] for h in data["hosts"].values()} == {BASE}
    p, report, _ = setup(lab_dir / "hosts.yaml")
    assert p.returncode == 0 and {r["verdict"] for r in report["results"]} == {"nothing to do"}, p.stderr
