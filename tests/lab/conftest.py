"""The lab for integration tests: real sshd per host on loopback, real rsync, real fab."""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from thunderlane import inventory, lab
from thunderlane.lab import kit, netns
from thunderlane.onhost.runs import lane_facts
from thunderlane.sync import sync_cache

ROOT = Path(__file__).resolve().parents[2]
FAB = str(Path(sys.executable).parent / "fab")
HOSTS = ("mac4", "mac5")
TEST_LABS = "pytest-of-"  # replaced by this session's lab folder once the lab is up
# The caches' layout every lab test starts from: the lab's default (a new control machine in the
# shared layout beside older classic hosts), spelled in full so that a test that changed a host's
# layout does not leak it into the next; tests/lab/test_lab_layouts.py and test_layouts_sync.py
# cover the other mixes.
LAYOUT = "local=shared,mac4=classic,mac5=classic"


@pytest.fixture(scope="session")
def lab_dir(tmp_path_factory):
    global TEST_LABS
    d = tmp_path_factory.mktemp("lab")
    TEST_LABS = str(d.parent)  # this session's ranks only: another session's lab is not ours
    lab.up(HOSTS, lab=d, model_mb=1.0, layout=LAYOUT)
    yield d
    lab.down(d)


def namespaced_lab(tmp_path_factory, name, control_mbit, data_mbit):
    """A namespaced lab of its own (``lab.up(net='netns', scope='test')``), yielded as (folder,
    inventory) and removed after; the test is skipped where namespaces cannot be made."""
    why = netns.unsupported()
    if why:
        pytest.skip(f"the namespaced lab: {why}")
    d = tmp_path_factory.mktemp(name)
    try:
        path = lab.up(HOSTS, lab=d, model_mb=1.0, layout=LAYOUT, net="netns", control_mbit=control_mbit,
                      data_mbit=data_mbit, scope="test")
        yield d, inventory.load(path)
    finally:
        lab.down(d)


@pytest.fixture
def lab_inv(lab_dir):
    """A lab reset to the handoff's situation (mac4 partial) before each test."""
    path = lab.up(HOSTS, lab=lab_dir, model_mb=1.0, reseed=True, layout=LAYOUT)
    return inventory.load(path)


@pytest.fixture
def reliability(record_property):
    """``reliability(**figures)``: measured figures of a fault case (seconds, bytes...), written into
    docs/RELIABILITY.md's table by `inv reliability` (tests/lab/reliability.py) and printed (-s)."""
    def record(**figures):
        for name, value in figures.items():
            record_property(name, value)
        print("reliability:", ", ".join(f"{k}={v}" for k, v in figures.items()))
    return record


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


PROFILE = "synthetic_mechanics"


@pytest.fixture
def profile_dir(tmp_path):
    """Copies of the shipped mechanics profile under other names, each with its own run directory."""
    for name in ("run_a", "run_b"):
        kit.write_profile(tmp_path, name, f"test_{name}", source=PROFILE, lane={"min_free_mb": 0})
    return tmp_path


@pytest.fixture
def warm_lab(lab_inv):
    """The lab with mac4's cache made complete (the handoff's state after sync-cache)."""
    with open(os.devnull, "w") as devnull:
        assert sync_cache(lab_inv, lab_inv.hosts["mac4"], out=devnull).ok
    return lab_inv


def train(inv, profile_dir, profile, *args, env=None):
    return fab_json(inv, "train-window", "--profile", profile, *args,
                    env={"THUNDER_PROFILES": str(profile_dir), **(env or {})})


def run_facts(inv, host, run_name):
    h = inv.hosts[host]
    return lane_facts(h.runs_root, run_name)


def no_rank_left():
    """No training rank of a test lab is alive (ranks carry the lane's marker and their spec,
    which names the test lab's run directories)."""
    p = subprocess.run(["pgrep", "-f", f"thunderlane-lane-train.*{TEST_LABS}"], capture_output=True, text=True)
    return p.stdout.strip() == ""


def start_fab(inv, *args, env=None):
    """``fab`` in the background, in its own process group (for Ctrl-C and concurrency cases)."""
    full = dict(os.environ, THUNDER_INVENTORY=inv.path, **(env or {}))
    return subprocess.Popen([FAB, *args], cwd=ROOT, env=full, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=_default_sigint)


def _default_sigint():
    """A runner may start the tests with SIGINT ignored (a background job of a non-interactive
    shell), which fab would inherit and so never see Ctrl-C: give it the default back."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_for_step(inv, host, run_name, step, seconds=300):
    import time
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        ckpt = (run_facts(inv, host, run_name).get("checkpoint") or {}).get("data") or {}
        if ckpt.get("step", 0) >= step:
            return True
        time.sleep(0.2)
    return False


def tree(folder):
    """Everything under ``folder`` as lstat sees it, to compare before and after:
    {relative path: the file's sha256, 'link -> target' or 'folder'}."""
    out = {}
    for dirpath, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(dirpath) / name
            rel = str(path.relative_to(folder))
            if path.is_symlink():
                out[rel] = f"link -> {os.readlink(path)}"
            elif path.is_dir():
                out[rel] = "folder"
            else:
                out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out
