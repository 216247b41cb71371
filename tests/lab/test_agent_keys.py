"""Issue 11, item 2: a passphrase-protected control key held by an ssh-agent (a Mac's Keychain key),
on the real lab: `lab.up(key_in_agent=True)` (`fab lab-up --key-in-agent`) encrypts the lab's key and
loads it into an agent the lab starts; every kind of step the lane takes then goes through that
agent, and without the agent the hosts' verdict is `key`, naming the key file."""
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from thunderlane import keys, lab
from thunderlane.lab import agent

from .conftest import FAB, HOSTS, LAYOUT, ROOT, by_host, no_rank_left


def agent_env(lab_dir):
    """The environment `.lab/agent.env` sets when sourced, read by a real shell."""
    out = subprocess.run(["sh", "-c", f'. "{lab_dir / "agent.env"}" && env'], capture_output=True, text=True,
                         check=True).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if line.startswith("SSH_A"))


def fab_with(inv, env, *args, timeout=300):
    """``fab ARGS`` with exactly ``env``'s agent (none if empty), whatever the test runner has."""
    full = {k: v for k, v in os.environ.items() if k not in ("SSH_AUTH_SOCK", "SSH_AGENT_PID")}
    full.update(env, THUNDER_INVENTORY=inv.path)
    return subprocess.run([FAB, *args], cwd=ROOT, env=full, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def key_in_agent(lab_inv, lab_dir):
    """The lab with its key in an agent; afterwards the lab's usual passphrase-less key and no agent."""
    lab.up(HOSTS, lab=lab_dir, model_mb=1.0, layout=LAYOUT, key_in_agent=True)
    try:
        yield agent_env(lab_dir)
    finally:
        lab.up(HOSTS, lab=lab_dir, model_mb=1.0, layout=LAYOUT)


def test_every_step_of_a_handoff_goes_through_the_agent(lab_inv, lab_dir, key_in_agent):
    """`fab handoff` (Fabric probes, the sync launcher's ssh and rsync, mlx.launch's ssh, the
    mirror's and the report's rsync) succeeds with the key usable only through the agent; a plain
    `ssh -F .lab/ssh_config` (what mlx.launch and a person run) too."""
    identity = lab_inv.ssh.identity
    assert keys.needs_passphrase(identity) and set(key_in_agent) == {"SSH_AUTH_SOCK", "SSH_AGENT_PID"}
    assert agent.agent_pid(lab_dir) == int(key_in_agent["SSH_AGENT_PID"])
    p = fab_with(lab_inv, key_in_agent, "handoff", "--profile", "partial_real_stage1_stable", "--json")
    data = json.loads(p.stdout) if p.stdout.startswith("{") else {}
    assert p.returncode == 0, (p.stdout[-2000:], p.stderr[-2000:])
    assert data["sync"]["mac4"]["after"] == "complete" and data["train"]["verdict"] == "success"
    assert data["mirror"]["ok"] and data["mirror"]["step"] == 10
    writer_run = Path(lab_inv.hosts["mac4"].runs_root) / "gemma4_e2b_nko_correction_partial_real_stage1_stable"
    assert (writer_run / "handoff_report.json").is_file()  # the report's rsync push, through the agent too
    ssh = subprocess.run(["ssh", "-F", str(lab_dir / "ssh_config"), "mac5", "echo", "via-agent"],
                         env={"PATH": os.environ["PATH"], **key_in_agent}, capture_output=True, text=True,
                         stdin=subprocess.DEVNULL, timeout=60)
    assert ssh.returncode == 0 and ssh.stdout.strip() == "via-agent", ssh.stderr
    assert no_rank_left()


def test_without_the_agent_the_verdict_is_key_naming_the_file(lab_inv, lab_dir, key_in_agent):
    identity = lab_inv.ssh.identity
    for task in ("verify-dataset", "verify-cache"):
        p = fab_with(lab_inv, {}, task, "--json", timeout=120)
        assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr[-2000:]
        hosts = by_host(json.loads(p.stdout))
        for name in HOSTS:
            assert hosts[name]["verdict"] == "key", hosts[name]
            assert f"key {identity} is passphrase-protected" in hosts[name]["detail"]
            assert f"ssh-add {identity}" in hosts[name]["detail"]
        assert hosts["local"]["ok"]  # the control machine needs no key
    p = fab_with(lab_inv, {}, "verify-dataset")  # the table a person reads
    assert re.search(r"^mac4 +key +", p.stdout, re.M) and "verify-dataset: FAILED on mac4, mac5" in p.stdout, p.stdout


def test_switching_back_takes_the_passphrase_off_and_stops_the_agent(lab_inv, lab_dir):
    lab.up(HOSTS, lab=lab_dir, model_mb=1.0, layout=LAYOUT, key_in_agent=True)
    pid = agent.agent_pid(lab_dir)
    assert pid and keys.needs_passphrase(lab_inv.ssh.identity)
    lab.up(HOSTS, lab=lab_dir, model_mb=1.0, layout=LAYOUT)
    assert agent.agent_pid(lab_dir) is None and not (lab_dir / "agent.env").exists()
    assert subprocess.run(["ps", "-p", str(pid)], capture_output=True).returncode == 1
    assert not keys.needs_passphrase(lab_inv.ssh.identity)
    p = fab_with(lab_inv, {}, "verify-dataset", "--json", timeout=120)
    assert p.returncode == 0, p.stdout[-2000:]
