"""The lab for integration tests: real sshd per host on loopback, real rsync, real fab."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from thunderlane import inventory, lab

ROOT = Path(__file__).resolve().parents[2]
FAB = str(Path(sys.executable).parent / "fab")
HOSTS = ("mac4", "mac5")


@pytest.fixture(scope="session")
def lab_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("lab")
    lab.up(HOSTS, lab=d, model_mb=1.0)
    yield d
    lab.down(d)


@pytest.fixture
def lab_inv(lab_dir):
    """A lab reset to the handoff's situation (mac4 partial) before each test."""
    path = lab.up(HOSTS, lab=lab_dir, model_mb=1.0, reseed=True)
    return inventory.load(path)


def fab(inv, *args, timeout=300, env=None):
    """Run the real ``fab`` CLI against the lab inventory."""
    env = dict(os.environ, THUNDER_INVENTORY=inv.path, **(env or {}))
    return subprocess.run([FAB, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def fab_json(inv, *args, env=None):
    p = fab(inv, *args, "--json", env=env)
    try:
        return p.returncode, json.loads(p.stdout)
    except ValueError:
        raise AssertionError(f"fab {' '.join(args)} printed no JSON (exit {p.returncode}):\n"
                             f"{p.stdout[-2000:]}\n{p.stderr[-3000:]}") from None


def by_host(report):
    return {r["host"]: r for r in report["results"]}
