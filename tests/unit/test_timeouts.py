"""Timeouts everywhere (issue 11, item 4) without SSH: the inventory's timeouts, the probe's
command timeout chosen by the kind of query (asked of the local host, whose probe is a real
subprocess: here a script that stops answering), and rsync's --timeout on every command line."""
import dataclasses
import subprocess
import sys
import time

import pytest

from thunderlane import facts, inventory, mirror, remote, sync
from thunderlane.remote import HostError

from .test_remote import hostile, make_inv


def with_ssh(inv, **values):
    return dataclasses.replace(inv, ssh=dataclasses.replace(inv.ssh, **values))


def silent(tmp_path, seconds):
    """The local host with an interpreter that says nothing for ``seconds``, then prints {}."""
    return hostile(tmp_path, f"import time\ntime.sleep({seconds})\nprint('{{}}')")


def inventory_data(**ssh):
    host = {"ssh_name": "mac4", "hostname": "127.0.0.4", "user": "me", "port": 22, "data_ip": "10.0.0.4",
            "python": "/v/bin/python", "dataset_root": "/d", "runs_root": "/r"}
    return {"ssh": {"known_hosts": "/k", **ssh}, "local": {"dataset_root": "/d", "runs_root": "/r"},
            "hosts": {"mac4": host}}


def test_inventory_timeouts_default_and_are_read(tmp_path):
    inv = make_inv(tmp_path)
    assert (inv.ssh.probe_timeout, inv.ssh.deep_probe_timeout, inv.ssh.rsync_timeout) == (120, 1800, 300)
    ssh = inventory.parse(inventory_data(probe_timeout=30, deep_probe_timeout=600, rsync_timeout=60), "inv.yaml").ssh
    assert (ssh.probe_timeout, ssh.deep_probe_timeout, ssh.rsync_timeout) == (30, 600, 60)


@pytest.mark.parametrize("key,value", [("probe_timeout", 0), ("rsync_timeout", "60"), ("deep_probe_timeout", True),
                                       ("probe_timeout", 99999)])
def test_bad_timeouts_are_refused_naming_the_field(key, value):
    with pytest.raises(inventory.InventoryError, match=rf"inv.yaml: ssh.{key}: "):
        inventory.parse(inventory_data(**{key: value}), "inv.yaml")


def test_a_probe_that_stops_answering_is_the_hosts_timeout(tmp_path):
    inv, host = silent(tmp_path, 30)
    t0 = time.monotonic()
    with pytest.raises(HostError) as e:
        remote.ask(with_ssh(inv, probe_timeout=1), host, facts.dataset("/data"))
    assert time.monotonic() - t0 < 5
    assert e.value.kind == "timeout" and e.value.host == "local" and "no answer within 1s" in e.value.message


def test_a_deep_scan_gets_the_deep_timeout_and_a_plain_probe_does_not(tmp_path):
    inv, host = silent(tmp_path, 3)
    inv = with_ssh(inv, probe_timeout=60, deep_probe_timeout=1)
    with pytest.raises(HostError, match="no answer within 1s"):
        remote.ask(inv, host, facts.dataset("/data"), facts.cache("org/name", "/c", deep=True))
    with pytest.raises(HostError) as e:  # waits the 3 s out, then cannot parse {}: not a timeout
        remote.ask(inv, host, facts.cache("org/name", "/c"))
    assert e.value.kind == "error"


def test_the_mirrors_rsync_carries_the_io_timeout(tmp_path):
    inv = with_ssh(make_inv(tmp_path), rsync_timeout=77)
    argv = mirror.rsync_argv(inv, inv.hosts["mac4"], "/runs/x", "/stage", "/list", 10)
    assert "--timeout=77" in argv and argv.index("--timeout=77") < argv.index("-e")


def test_the_sync_launcher_is_given_the_io_timeout(tmp_path):
    inv = with_ssh(make_inv(tmp_path), rsync_timeout=77)
    argv = sync.launcher_argv(inv, inv.hosts["mac4"], "/src", "/dest")
    assert argv[argv.index("--timeout") + 1] == "77"


def test_a_checksum_sync_may_stay_silent_as_long_as_a_deep_verify(tmp_path):
    """--checksum hashes the whole cache on both sides before rsync prints a thing."""
    inv = with_ssh(make_inv(tmp_path), rsync_timeout=77, deep_probe_timeout=900)
    argv = sync.launcher_argv(inv, inv.hosts["mac4"], "/src", "/dest", checksum=True)
    assert argv[argv.index("--timeout") + 1] == "900" and sync.io_timeout(inv, True) == 900
    assert sync.io_timeout(inv, False) == 77


def test_a_local_program_holding_the_pipe_through_a_child_is_killed_whole():
    """capture's timeout kills the process group: a child (an rsync's ssh) keeping stderr open
    cannot hold the readers, and fab, waiting."""
    t0 = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        remote.capture(["bash", "-c", "sleep 30 >&2 & sleep 30"], timeout=1)
    assert time.monotonic() - t0 < 5


def test_the_sync_launcher_passes_timeout_to_rsync_and_refuses_a_bad_one():
    text = sync.LAUNCHER.read_text()
    assert '"--timeout=$io_timeout"' in text.split("flags=(", 1)[1].split(")", 1)[0]
    for bad in ("0", "5s", ""):
        p = subprocess.run(["bash", str(sync.LAUNCHER), "--timeout", bad, "--dest-cache", "/d", "mac4"],
                           capture_output=True, text=True)
        assert p.returncode == 64 and "--timeout" in p.stderr, (bad, p.returncode, p.stderr)


def test_what_a_local_program_prints_is_capped(monkeypatch):
    """remote.capture (the mirror's rsync, the local probe): past the cap the program is stopped."""
    monkeypatch.setattr(remote, "MAX_OUTPUT", 2**20)
    with pytest.raises(remote.OutputTooLarge):
        remote.capture([sys.executable, "-c", "import sys\nwhile True: sys.stderr.write('x' * 65536)"], timeout=60)
    assert remote.capture([sys.executable, "-c", "print('ok')"]) == (0, b"ok\n", b"")


def test_a_local_program_past_its_timeout_is_killed():
    t0 = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        remote.capture([sys.executable, "-c", "import time; time.sleep(30)"], timeout=1)
    assert time.monotonic() - t0 < 5


def test_a_sync_launcher_that_falls_silent_is_stopped_as_a_timeout(tmp_path):
    """transfer.stream's watchdog: rsync's --timeout misses a host rsync stopped under a live sshd."""
    from thunderlane import transfer
    out = tmp_path / "screen"
    t0 = time.monotonic()
    with open(out, "w") as screen:
        # children that hold the pipe (as rsync, ssh and tee do), and a bash that waits for them
        code, text = transfer.stream(["bash", "-c", "echo sync: started; sleep 30 | cat; echo after"], "mac4", 0,
                                     out=screen, verbose=True, silence=1)
    assert code == transfer.SILENT_EXIT == 30 and time.monotonic() - t0 < 6
    assert "after" not in text
    assert "sync: no output for 1s: stopped it" in text and "no output for 1s" in out.read_text()
    with open(out, "w") as screen:  # talking is not silence
        code, _ = transfer.stream(["bash", "-c", "for i in 1 2 3 4; do echo $i; sleep 0.5; done"], "mac4", 0,
                                  out=screen, verbose=True, silence=1)
    assert code == 0


def test_the_chunk_runners_output_is_read_in_bounded_lines(tmp_path, monkeypatch):
    """A host printing one endless line cannot make fab hold it whole: lines come in MAX_LINE pieces."""
    import io
    from thunderlane.window import runner
    monkeypatch.setattr(runner, "MAX_LINE", 1000)
    seen = []
    monkeypatch.setattr(runner, "parse_event", lambda line: seen.append(len(line)))
    p = subprocess.Popen([sys.executable, "-c", "print('x' * 5500)"], stdout=subprocess.PIPE)
    outcome = runner.RunOutcome(command="", exit_code=-1, seconds=0.0, log="")
    with open(tmp_path / "log", "w") as log:
        runner._read(p, log, outcome, [0.0], io.StringIO())
    p.wait()
    assert sum(seen) == 5500 and max(seen) == 1000, seen
