"""Fault cases 30 and 30b: a host that stops answering in the middle of a probe, or of an rsync
(docs/RELIABILITY.md)."""
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from thunderlane import lab

from .conftest import FAB, ROOT, by_host
from .test_faults_probe import fab_measured

PROBE_TIMEOUT = 5
# mac5's interpreter in a test inventory: it records its PID and its parent's, then the host stops
# answering mid-probe: either the probe stops itself (SIGSTOP: the session stays up, the host's sshd
# keeps answering keepalives, but no answer comes), or it waits while the test stops the sshd
# session process relaying it (the connection falls silent), then runs the real probe.
STALLING = """#!/bin/sh
printf '%s\\n' "$$" > {mark}.tmp && mv {mark}.tmp {mark}
if [ {mode} = probe ]; then kill -STOP $$; else sleep 3; fi
exec {python} "$@"
"""


def ps(pid):
    """(parent PID, command) of ``pid``, or None once it is gone."""
    p = subprocess.run(["ps", "-o", "ppid=,command=", "-p", str(pid)], capture_output=True, text=True)
    if p.returncode != 0 or not p.stdout.strip():
        return None
    ppid, _, command = p.stdout.strip().partition(" ")
    return int(ppid), command.strip()


def lab_session_of(pid, listener):
    """The sshd session process relaying ``pid``: its nearest ``sshd:`` ancestor, checked to descend
    from the lab's own sshd for the host (never another sshd on the machine)."""
    session, chain = None, []
    while pid and pid > 1 and ps(pid):
        chain.append(pid)
        ppid, command = ps(pid)
        if session is None and command.startswith("sshd:"):
            session = pid
        pid = ppid
    assert session and listener in chain, (session, listener, chain)
    return session


def stalling_inventory(inv, tmp_path, mode):
    script, mark = tmp_path / "python", tmp_path / "probe.pid"
    script.write_text(STALLING.format(mark=mark, mode=mode, python=inv.hosts["mac5"].python))
    script.chmod(0o755)
    data = yaml.safe_load(Path(inv.path).read_text())
    data["hosts"]["mac5"]["python"] = str(script)
    data["ssh"]["probe_timeout"] = PROBE_TIMEOUT
    path = tmp_path / "stalling.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, mark


def wait_for(path, seconds=30):
    deadline = time.monotonic() + seconds
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return int(path.read_text()) if path.exists() else None


def resume(pids):
    """SIGCONT what the test stopped; the stalled probe then ends by itself (its session is gone)."""
    for pid in pids:
        if ps(pid):
            os.kill(pid, signal.SIGCONT)


def gone(pid, seconds=20):
    deadline = time.monotonic() + seconds
    while ps(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return ps(pid) is None


@pytest.mark.fault_case("30", "a host stops answering in the middle of a probe",
                        "mac5's interpreter in a test inventory (ssh.probe_timeout 5 s) SIGSTOPs itself once "
                        "started, or the test SIGSTOPs the lab sshd session process relaying it")
@pytest.mark.parametrize("mode", ["probe", "session"])
def test_30_host_silent_mid_probe_is_a_timeout_naming_it(lab_inv, lab_dir, tmp_path, reliability, mode):
    """`verify-cache` and `verify-dataset` end within the connect timeout plus the probe timeout
    (+10 s for fab itself), report mac5 as `timeout` naming it and the probe timeout, still judge
    mac4 and local from their own answers, and print no traceback."""
    inventory, mark = stalling_inventory(lab_inv, tmp_path, mode)
    listener = lab.sshd_pid(lab_dir, "mac5")
    worst = 0.0
    for task in ("verify-cache", "verify-dataset"):
        mark.unlink(missing_ok=True)
        stopped = []
        run = _Background(inventory, task)
        try:
            probe = wait_for(mark)
            assert probe, "mac5's probe never started"
            stopped.append(probe)
            if mode == "session":
                session = lab_session_of(probe, listener)
                os.kill(session, signal.SIGSTOP)
                stopped.append(session)
            code, out, err, seconds, _ = run.result()
        finally:
            resume(stopped)
        assert gone(probe), f"mac5's probe {probe} outlived the task"
        assert "Traceback" not in err, err[-3000:]
        hosts = by_host(json.loads(out))
        assert code == 1 and hosts["mac5"]["verdict"] == "timeout", (task, hosts["mac5"])
        assert f"no answer within {PROBE_TIMEOUT}s" in hosts["mac5"]["detail"], hosts["mac5"]
        assert hosts["mac4"]["verdict"] not in ("timeout", "unreachable", "error"), hosts["mac4"]
        assert hosts["local"]["ok"], hosts["local"]
        assert seconds < lab_inv.ssh.connect_timeout + PROBE_TIMEOUT + 10, (task, seconds)
        worst = max(worst, seconds)
    reliability(seconds=round(worst, 1), probe_timeout=PROBE_TIMEOUT, connect_timeout=lab_inv.ssh.connect_timeout)


class _Background:
    """``fab_measured`` in a thread, so that the test can act while fab waits on mac5."""

    def __init__(self, inventory, task):
        import threading
        self._out = {}
        self._thread = threading.Thread(target=lambda: self._out.update(r=fab_measured(inventory, task)))
        self._thread.start()

    def result(self, seconds=40):
        self._thread.join(seconds)
        assert "r" in self._out, "fab did not end"
        return self._out["r"]


RSYNC_TIMEOUT = 3


def lab_rsync_servers(listener):
    """PIDs of `rsync --server` processes below the lab's own sshd ``listener`` (never another's)."""
    p = subprocess.run(["pgrep", "-f", "rsync --server"], capture_output=True, text=True)
    found = []
    for pid in map(int, p.stdout.split()):
        chain, up = [], pid
        while up and up > 1 and ps(up):
            chain.append(up)
            up = ps(up)[0]
        if listener in chain:
            found.append(pid)
    return found


@pytest.mark.fault_case("30b", "a host stops answering in the middle of an rsync",
                        "`fab sync-cache --host mac4 --bwlimit 64` with ssh.rsync_timeout 3 s in a test inventory; "
                        "SIGSTOP of mac4's `rsync --server` (its sshd still answers), or of the lab sshd session "
                        "process relaying it (the link falls silent)")
@pytest.mark.parametrize("mode", ["rsync", "session"])
def test_30b_host_silent_mid_rsync_ends_the_sync(lab_inv, lab_dir, tmp_path, reliability, mode):
    """The sync ends once the launcher has printed nothing for `ssh.rsync_timeout` seconds, failing
    as exit 30 (timeout) naming mac4 (rsync's own `--timeout` does not fire while the local rsync's
    keepalives still go out: a stopped host rsync under a live sshd would hang it), or, the link
    silent, once ssh's keepalives went unanswered for `connect_timeout + rsync_timeout` (exit 255),
    whichever comes first; no traceback, and a stopped host rsync ends once resumed."""
    data = yaml.safe_load(Path(lab_inv.path).read_text())
    data["ssh"]["rsync_timeout"] = RSYNC_TIMEOUT
    inventory = tmp_path / "rsync_timeout.yaml"
    inventory.write_text(yaml.safe_dump(data))
    listener = lab.sshd_pid(lab_dir, "mac4")
    env = dict(os.environ, THUNDER_INVENTORY=str(inventory))
    fab = subprocess.Popen([FAB, "sync-cache", "--host", "mac4", "--bwlimit", "64", "--json"], cwd=ROOT, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stopped = []
    try:
        deadline = time.monotonic() + 60
        while not stopped and fab.poll() is None and time.monotonic() < deadline:
            servers = lab_rsync_servers(listener)
            for pid in servers if mode == "rsync" else [lab_session_of(p, listener) for p in servers[:1]]:
                os.kill(pid, signal.SIGSTOP)
                stopped.append(pid)
            time.sleep(0.05)
        assert stopped, "mac4's rsync --server was never seen running"
        t0 = time.monotonic()
        out, err = fab.communicate(timeout=90)
        seconds = time.monotonic() - t0
    finally:
        resume(stopped)
        if fab.poll() is None:
            fab.kill()
            fab.communicate()
    assert all(gone(pid) for pid in stopped if mode == "rsync"), "a stopped rsync outlived the sync"
    assert "Traceback" not in err, err[-3000:]
    assert fab.returncode == 1, (out[-2000:], err[-2000:])
    errors = json.loads(out)["errors"]
    ends = ("mac4: sync failed with exit 30: rsync: timeout",) + (("mac4: sync failed with exit 255: ssh failed",)
                                                                   if mode == "session" else ())
    assert len(errors) == 1 and errors[0].startswith(ends), errors
    # rsync keeps printing progress until the rest of the shard (under 1 MiB at 64 KiB/s: < 16 s) is
    # in the socket buffers; the silence counts from there
    assert seconds < 16 + RSYNC_TIMEOUT + 10, seconds
    reliability(seconds_after_stop=round(seconds, 1), rsync_timeout=RSYNC_TIMEOUT)
