"""Where the lab's sshds listen: per-host loopback addresses (Linux) or one address with its own
port per host (macOS, which has no 127.x aliases), chosen by flag, by the lab's memory, by
$THUNDER_LAB_NET or by platform; and the lab finds its sshd by ps (no /proc on macOS)."""
import subprocess
import sys

import pytest

from thunderlane.lab import LabError, net
from thunderlane.fsutil import command_line


@pytest.mark.parametrize("platform,env,mode", [
    ("darwin", {}, "single"), ("linux", {}, "per-host"),
    ("darwin", {net.NET_VAR: "127.78.0"}, "per-host"),      # someone added aliases on the Mac
    ("linux", {net.NET_VAR: "127.0.0.1"}, "single"),
])
def test_default_mode_follows_the_platform_unless_the_net_says(platform, env, mode):
    assert net.default_mode(platform, env) == mode


def test_a_chosen_mode_is_remembered_and_a_flag_wins(tmp_path):
    assert net.choose(None, tmp_path, "linux", {}) == "per-host"
    net.remember(tmp_path, "single")
    assert net.choose(None, tmp_path, "linux", {}) == "single"
    assert net.choose("per-host", tmp_path, "darwin", {}) == "per-host"
    with pytest.raises(LabError, match="single, per-host"):
        net.choose("both", tmp_path)


@pytest.mark.parametrize("mode,env,addresses", [
    ("per-host", {}, ["127.77.0.10", "127.77.0.11"]),
    ("per-host", {net.NET_VAR: "127.76.0"}, ["127.76.0.10", "127.76.0.11"]),
    ("single", {net.NET_VAR: "127.76.0"}, ["127.0.0.1", "127.0.0.1"]),   # only 127.0.0.1 is sure on a Mac
    ("single", {net.NET_VAR: "127.0.0.2"}, ["127.0.0.2", "127.0.0.2"]),
])
def test_addresses_of_each_mode(mode, env, addresses):
    assert [net.address(i, mode, env) for i in range(2)] == addresses


def test_a_whole_address_is_refused_for_per_host_mode():
    with pytest.raises(LabError, match="single-address mode"):
        net.address(0, "per-host", {net.NET_VAR: "127.0.0.1"})


def test_command_line_is_read_with_ps():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "lab-sshd-marker"])
    try:
        assert "lab-sshd-marker" in command_line(child.pid)
    finally:
        child.kill()
        child.wait()
    assert command_line(child.pid) == ""


def test_fab_lab_up_refuses_an_unknown_address_mode_with_exit_2():
    from pathlib import Path
    root = Path(__file__).resolve().parents[2]
    fab = str(Path(sys.executable).parent / "fab")
    p = subprocess.run([fab, "lab-up", "--addresses", "aliases"], cwd=root, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "lab-up: --addresses 'aliases': choose one of single, per-host" in p.stderr, p.stderr
