"""./bootstrap's platform part, run with fake tools on PATH (a fake ``uname``, ``brew``, Pythons
that pass or fail its version check): what it installs and which Python it names, on macOS and
Linux, without installing anything."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

BOOTSTRAP = Path(__file__).resolve().parents[2] / "bootstrap"
REAL = ("bash", "sort", "tr", "sed", "id", "dirname", "cat")   # what its functions call besides fakes


def fake(bin_dir, name, body):
    path = bin_dir / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


@pytest.fixture
def world(tmp_path):
    """A PATH of fakes plus the few real tools bootstrap's functions use; ``log`` records every
    brew / apt-get call."""
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    for tool in REAL:
        os.symlink(shutil.which(tool), bin_dir / tool)
    for tool in ("ssh", "ssh-keygen", "pgrep", "rsync"):
        fake(bin_dir, tool, "exit 0")
    fake(bin_dir, "brew", f'[ "$1" = --prefix ] && {{ echo {tmp_path}/brew; exit 0; }}; echo "brew $*" >> {log}')
    fake(bin_dir, "apt-get", f'echo "apt-get $*" >> {log}')
    fake(bin_dir, "sudo", '"$@"')
    # the Command Line Tools' 3.9: fails a check for 3.11, would pass one for an older floor
    fake(bin_dir, "python3", 'case "$*" in *"(3, 11)"*) exit 1 ;; esac; exit 0')
    return bin_dir, log


def run(world, function, system="Darwin"):
    bin_dir, log = world
    fake(bin_dir, "uname", f"echo {system}")
    env = {"PATH": str(bin_dir), "BOOTSTRAP_FUNCTIONS_ONLY": "1", "HOME": str(bin_dir)}
    p = subprocess.run([str(bin_dir / "bash"), "-c", f'. "$0"; {function}', str(BOOTSTRAP)],
                       env=env, capture_output=True, text=True)
    calls = log.read_text().splitlines() if log.exists() else []
    return p, calls


def test_macos_installs_missing_shellcheck_with_brew_and_picks_brews_python(world):
    fake(world[0], "python3.12", "exit 0")
    p, calls = run(world, "setup_system")
    assert p.returncode == 0, p.stderr
    assert calls == ["brew install shellcheck"]   # sshd is macOS's /usr/sbin/sshd; rsync, pgrep there
    assert p.stdout.strip() == str(world[0] / "python3.12")
    assert "macOS: brew install shellcheck" in p.stderr


def test_macos_without_a_new_enough_python_installs_one(world):
    fake(world[0], "shellcheck", "exit 0")
    p, calls = run(world, "setup_macos")
    assert calls == ["brew install python@3.12"], p.stderr


def test_macos_with_everything_installs_nothing_and_names_python3_if_new_enough(world):
    fake(world[0], "shellcheck", "exit 0")
    fake(world[0], "python3", "exit 0")
    p, calls = run(world, "setup_system")
    assert p.returncode == 0 and calls == [] and "nothing to install" in p.stderr
    assert p.stdout.strip() == str(world[0] / "python3")


def test_macos_without_homebrew_says_what_to_install(world):
    (world[0] / "brew").unlink()
    p, calls = run(world, "setup_macos")
    assert p.returncode == 1 and "https://brew.sh" in p.stderr and "shellcheck python@3.12" in p.stderr


def test_linux_keeps_apt_get(world):
    p, calls = run(world, "setup_linux", system="Linux")
    assert [c.split()[:2] for c in calls] == [["apt-get", "update"], ["apt-get", "install"]]
    assert not any(c.startswith("brew") for c in calls)


def test_brew_formulae_map_tools_once():
    p = subprocess.run(["bash", "-c", '. "$0"; brew_formulae sshd ssh ssh-keygen rsync pgrep shellcheck',
                        str(BOOTSTRAP)], env={"PATH": os.environ["PATH"], "BOOTSTRAP_FUNCTIONS_ONLY": "1"},
                       capture_output=True, text=True)
    assert p.stdout.split() == ["openssh", "rsync", "shellcheck"]


def test_linux_installs_iproute2_for_the_namespaced_lab(world):
    p, calls = run(world, "setup_linux", system="Linux")
    assert "iproute2" in calls[-1].split() and "iproute2" in p.stdout, calls


def test_linux_with_every_tool_installs_nothing(world):
    for tool in ("sshd", "shellcheck", "ip", "tc", "python3"):
        fake(world[0], tool, "exit 0")
    p, calls = run(world, "setup_linux", system="Linux")
    assert p.returncode == 0 and calls == [], (calls, p.stderr)
