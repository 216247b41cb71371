"""sync-cache's fixed cost on the lab: a host the verify before proves complete gets no launcher and
no second verify; after a real transfer, the verify after is a probe started ahead on the host and
told to go once the launcher has exited (so it reads the host after the transfer)."""
import dataclasses
import io
import os
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.lab.conftest import fab, fab_json
from thunderlane import early_launch, layout, mux, remote, standby
from thunderlane.lab import kit
from thunderlane.sync import SyncError, sync_cache
from thunderlane.verify import cache_query


def test_the_verify_after_is_the_probe_started_ahead_and_reads_the_host_after_the_transfer(lab_inv):
    code, out = fab_json(lab_inv, "sync-cache", "--host", "mac4")
    row = out["results"][0]
    assert code == 0 and (row["before"], row["after"]) == ("partial", "complete"), out
    assert set(row["phases"]) == {"verify_before", "ssh_master_wait", "launcher", "verify_after"}, row  # no standby_unused
    # the launcher's sessions went through the master fab opened during the verify before, now gone
    assert f"-o ControlPath={layout.local(lab_inv).root}/{mux.FOLDER}/" in row["command"], row["command"]
    assert _masters_left(lab_inv) == [], "a master connection outlived its sync"


def test_a_complete_host_gets_no_launcher_and_no_second_verify(lab_inv):
    with open(os.devnull, "w") as devnull:
        assert sync_cache(lab_inv, lab_inv.hosts["mac4"], out=devnull).ok
    p = fab(lab_inv, "sync-cache", "--host", "mac4")
    assert p.returncode == 0, p.stderr
    assert "nothing missing" in p.stdout and "$ bash" not in p.stdout and "[mac4]" not in p.stdout, p.stdout
    code, out = fab_json(lab_inv, "sync-cache", "--host", "mac4", "--checksum")  # deeply verified: still nothing
    row = out["results"][0]
    assert code == 0 and row["command"] == "" and list(row["phases"]) == ["verify_before"], row
    assert (row["after"], row["literal_bytes"], row["total_sent"]) == ("complete", 0, 0), row
    assert _masters_left(lab_inv) == [], "the master opened for a launcher that never ran is left"


def test_a_session_through_the_master_needs_no_connection_of_its_own_and_close_ends_it(lab_inv):
    mac4 = lab_inv.hosts["mac4"]
    stale = mux.control_path(lab_inv, mac4)  # as a killed earlier master of this pid would leave it
    os.makedirs(os.path.dirname(stale), exist_ok=True)
    open(stale, "w").close()
    master = mux.Master(lab_inv, mac4)
    try:
        assert master.ready(lab_inv.ssh.connect_timeout), "the master did not come up"
        nowhere = dataclasses.replace(mac4, port=1)  # nothing listens there: only the master can carry it
        argv = ["ssh", *mux.client_options(master.path), *remote.ssh_options(lab_inv, nowhere), mac4.destination,
                "echo through-the-master"]
        p = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        assert p.returncode == 0 and p.stdout.strip() == "through-the-master", p.stderr
        mux.terminate(master.path)  # OpenSSH's own request (PROTOCOL.mux), no ssh started: the master goes
        assert mux._gone(master.path, 5.0), "the master did not exit on MUX_C_TERMINATE"
    finally:
        master.close()
    assert _masters_left(lab_inv) == [] and not os.path.exists(master.path)


def _masters_left(inv):
    """Sockets and ssh processes of master connections under local's runs root."""
    folder = layout.local(inv).root / mux.FOLDER
    sockets = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    p = subprocess.run(["pgrep", "-f", f"ControlPath={folder}/"], capture_output=True, text=True)
    return sockets + p.stdout.split()


def test_a_complete_host_with_an_orphaned_incomplete_still_gets_the_launcher_cleanup(lab_inv, lab_dir):
    with open(os.devnull, "w") as devnull:
        assert sync_cache(lab_inv, lab_inv.hosts["mac4"], out=devnull).ok
    blobs = kit.host_repo(lab_dir, "mac4") / "blobs"
    blob = next(b for b in blobs.iterdir() if len(b.name) == 64)
    orphan = blobs / f"{blob.name}.0123abcd.incomplete"
    orphan.write_bytes(b"part")
    code, out = fab_json(lab_inv, "sync-cache", "--host", "mac4")
    assert code == 0 and out["results"][0]["command"], out
    assert not orphan.exists()


def test_a_standby_closed_without_go_leaves_nothing_on_the_host_and_an_unusable_one_says_so(lab_inv):
    mac5 = lab_inv.hosts["mac5"]  # its cache root is in the inventory, so on the standby's command line
    probe = standby.StandbyProbe(lab_inv, mac5, cache_query(lab_inv, mac5))
    deadline = time.monotonic() + 10
    while not _standbys(mac5) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _standbys(mac5) and not probe.failed
    probe.close()
    deadline = time.monotonic() + 10
    while _standbys(mac5) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _standbys(mac5)
    gone = dataclasses.replace(mac5, port=1)  # nothing listens there
    inv = dataclasses.replace(lab_inv, hosts={**lab_inv.hosts, "mac5": gone})
    assert standby.StandbyProbe(inv, gone, cache_query(inv, gone)).answer() is None
    unreadable = dataclasses.replace(cache_query(lab_inv, mac5), parse=lambda answer: answer["no such key"])
    assert standby.StandbyProbe(lab_inv, mac5, unreadable).answer() is None  # asked again the usual way


def _standbys(host):
    """Waiting standby probes of ``host`` (their command line: the wrapper, then the host's cache root)."""
    p = subprocess.run(["pgrep", "-f", f"thunderlane_probe.*{host.hf_cache}"], capture_output=True, text=True)
    return p.stdout.split()


def seen_early(monkeypatch):
    """The launchers sync-cache starts early from now on (a list filled as they start); the early
    start on (the default, unless $THUNDER_EARLY_LAUNCH is 0: early_launch.enabled)."""
    monkeypatch.setenv(early_launch.ENV, "1")
    started = []

    class Seen(early_launch.EarlyLauncher):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            started.append(self)
    monkeypatch.setattr(early_launch, "EarlyLauncher", Seen)
    return started


def test_a_launcher_started_early_never_reaches_the_host_when_the_verify_before_refuses(lab_inv, lab_dir, monkeypatch):
    """The launcher starts beside the verify before; a verify that refuses (local's shard cut short:
    only the verify sees it, the launcher would send it over mac4's whole one) shuts its gate, so the
    host is left as it was: its leftover not cleaned up, its shard not replaced."""
    mac4 = lab_inv.hosts["mac4"]
    with open(os.devnull, "w") as devnull:
        assert sync_cache(lab_inv, mac4, out=devnull).ok  # mac4 complete; its cache root remembered
    started = seen_early(monkeypatch)
    repo4 = kit.host_repo(lab_dir, "mac4")
    orphan = next(b for b in (repo4 / "blobs").iterdir() if len(b.name) == 64).with_suffix(".0123abcd.incomplete")
    orphan.write_bytes(b"part")
    snap = kit.host_repo(lab_dir, "local") / "snapshots"
    shard = Path(os.path.realpath(next(snap.glob("*/model*.safetensors"))))
    theirs = repo4 / "snapshots" / shard_link(snap, shard)
    whole, st = shard.read_bytes(), shard.stat()
    try:
        shard.write_bytes(whole[:-1000])
        with open(os.devnull, "w") as devnull, pytest.raises(SyncError, match="local cache is"):
            sync_cache(lab_inv, mac4, out=devnull)
    finally:
        shard.write_bytes(whole)
        os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert len(started) == 1 and started[0].proc.returncode not in (None, 0), "no launcher was started early"
    assert orphan.exists(), "the launcher's host preparation ran"
    assert theirs.stat().st_size == len(whole), "mac4's shard was replaced"
    assert not os.path.exists(started[0].gate.folder)
    orphan.unlink()


def shard_link(snap, shard):
    """The snapshot path (rev/name) of local's ``shard``."""
    link = next(p for p in snap.glob("*/model*.safetensors") if os.path.realpath(p) == str(shard))
    return link.relative_to(snap)


def test_a_launcher_started_early_sends_what_is_missing_and_reports_a_command_without_its_gate(lab_inv, lab_dir,
                                                                                                 monkeypatch):
    """mac4 partial, its cache root remembered: the launcher starts at its gate, the verify passes,
    the gate opens, the host ends complete; the command printed and reported is the launcher with
    the lane's own ssh (one a person can run again), not the gate's wrapper."""
    mac4 = lab_inv.hosts["mac4"]
    with open(os.devnull, "w") as devnull:
        assert sync_cache(lab_inv, mac4, out=devnull).ok  # the handoff's partial mac4 filled; roots remembered
    started = seen_early(monkeypatch)
    shutil.rmtree(kit.host_repo(lab_dir, "mac4") / "refs")   # something missing again: refs/main
    printed = io.StringIO()
    outcome = sync_cache(lab_inv, mac4, out=printed)
    assert outcome.ok and outcome.after.verdict == "complete" and len(started) == 1
    assert "thunder-gate" not in outcome.command and "thunder-gate" not in printed.getvalue()
    ssh = shlex.split(outcome.command)[shlex.split(outcome.command).index("--ssh") + 1]
    assert ssh.startswith(remote.ssh_command(lab_inv, mac4)), ssh


@pytest.mark.parametrize("master_up", [True, False], ids=["master-up", "master-failed"])
def test_an_early_launchers_ssh_is_the_late_ones_whether_or_not_the_master_came_up(lab_inv, lab_dir, monkeypatch,
                                                                                    master_up):
    """The ssh options that put the launcher's sessions on fab's master are decided once the master
    has answered (``_shared_ssh``), for the early launcher as for the late one: the gate's ``go``
    carries them to its wrapper. A master that failed (its ssh exiting 255 at once) gives neither
    launcher its path; both sync mac4 with their own connection. Same fab, same pid, same master
    path: the two commands reported are the same, and so is what the wrapper was let through with."""
    mac4 = lab_inv.hosts["mac4"]
    with open(os.devnull, "w") as devnull:
        assert sync_cache(lab_inv, mac4, out=devnull).ok  # the handoff's partial mac4 filled; roots remembered
    if not master_up:
        monkeypatch.setattr(mux, "master_argv", lambda *a: ["sh", "-c", "exit 255"])
    commands, let_through = [], []
    monkeypatch.setattr(early_launch.Gate, "open", _recording(early_launch.Gate.open, let_through))
    for early in ("0", "1"):
        started = seen_early(monkeypatch)
        monkeypatch.setenv(early_launch.ENV, early)
        shutil.rmtree(kit.host_repo(lab_dir, "mac4") / "refs")   # something missing again: refs/main
        with open(os.devnull, "w") as devnull:
            outcome = sync_cache(lab_inv, mac4, out=devnull)
        assert outcome.ok and len(started) == int(early), (early, outcome.phases)
        commands.append(outcome.command)
    shared = f"-o ControlPath={mux.control_path(lab_inv, mac4)} -o ControlMaster=auto"
    assert commands[0] == commands[1] and (shared in commands[0]) == master_up, commands
    assert let_through == [shared if master_up else ""], let_through
    assert _masters_left(lab_inv) == []


def _recording(open_gate, seen):
    def open_and_record(gate, options=()):
        open_gate(gate, options)
        with open(os.path.join(gate.folder, "go"), encoding="utf-8") as f:
            seen.append(f.read().strip())
    return open_and_record
