"""What sync-cache overlaps with its verify before, and what it no longer repeats: the launcher held
at a gate (early_launch.py), the cache roots it is started with, the host lock taken beside the
verify, the first transfers of a peer round taking the survey's facts."""
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from thunderlane import early_launch, fsutil, inventory, peer_sync
from thunderlane.peer_sync import Sources
from thunderlane.sync import HostLock, SyncError, lock_path

ROOT = Path(__file__).resolve().parents[2]


def inv_at(tmp_path, mac4_cache=None):
    hosts = {name: {"ssh_name": name, "hostname": f"127.0.0.{i}", "user": "me", "port": 22, "data_ip": f"10.0.0.{i}",
                    "python": sys.executable, "dataset_root": "/d", "runs_root": "/r"}
             for i, name in ((4, "mac4"), (6, "mac6"))}
    if mac4_cache:
        hosts["mac4"]["hf_cache"] = mac4_cache
    return inventory.parse({"ssh": {"known_hosts": str(tmp_path / "known_hosts")}, "hosts": hosts,
                            "local": {"dataset_root": "/d", "runs_root": str(tmp_path / "runs"), "python": sys.executable}},
                           str(tmp_path / "inv.yaml"))


def test_the_launcher_gets_the_inventory_root_else_the_one_the_last_verify_resolved(tmp_path):
    inv = inv_at(tmp_path)
    mac4, mac6 = inv.host("mac4"), inv.host("mac6")
    assert early_launch.predicted_root(inv, mac4) is None          # never verified: no early start
    early_launch.remember_root(inv, mac4, "/Users/me/.cache/huggingface/hub")
    early_launch.remember_root(inv, inv.local, "/Users/ops/hub")
    assert early_launch.predicted_root(inv, mac4) == "/Users/me/.cache/huggingface/hub"
    assert early_launch.predicted_root(inv, inv.local) == "/Users/ops/hub"
    assert early_launch.predicted_root(inv, mac6) is None          # per host
    moved = inv_at(tmp_path, mac4_cache="/Volumes/T7/hub")
    assert early_launch.predicted_root(moved, moved.host("mac4")) == "/Volumes/T7/hub"  # the inventory's first
    (tmp_path / "runs" / early_launch.MEMO).write_text("[not a memo")
    assert early_launch.predicted_root(inv, mac4) is None          # unreadable: no prediction, no error


def _held(gate, *args):
    return subprocess.Popen(["sh", gate.ssh, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_the_gate_holds_every_ssh_until_fab_decides(tmp_path):
    inv = inv_at(tmp_path)
    gate = early_launch.Gate(inv, inv.host("mac4"))
    try:
        assert " " not in gate.ssh and oct(os.stat(gate.ssh).st_mode & 0o777) == "0o700"
        waiting = _held(gate, "-V")
        time.sleep(0.3)
        assert waiting.poll() is None, "an ssh went through before the verify's verdict"
        gate.open()
        _, err = waiting.communicate(timeout=10)
        assert waiting.returncode == 0 and "OpenSSH" in err     # the lane's ssh itself, run as given
        stopped = early_launch.Gate(inv, inv.host("mac4"))
        try:
            held = _held(stopped, "-V")
            stopped.shut()
            _, err = held.communicate(timeout=10)
            assert held.returncode == 255 and "OpenSSH" not in err  # never ran ssh
        finally:
            stopped.remove()
        gone = early_launch.Gate(inv, inv.host("mac4"))
        held = _held(gone, "-V")
        time.sleep(0.3)  # waiting at the gate
        gone.remove()    # fab ended without a word: the ssh it held never runs
        assert held.wait(timeout=10) == 255
    finally:
        gate.remove()
    assert not os.path.exists(gate.folder)


def _config(gate, *args):
    """The settings ssh takes from the wrapper's command line with ``args`` after it (``ssh -G``)."""
    p = _held(gate, *args, "-G", "mac4")
    out, err = p.communicate(timeout=10)
    assert p.returncode == 0, err
    return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)


def test_the_ssh_options_fab_decides_at_go_come_before_the_launchers_own(tmp_path):
    """What the go file carries (fab's master, decided once its ready() has answered) goes where the
    late launcher's ``--ssh`` puts it: after the lane's options, before the launcher's own (ssh takes
    an option's first value); an empty go adds nothing; a word that would need quoting is refused."""
    inv = inv_at(tmp_path)
    mine = ["-o", "ControlMaster=auto", "-o", "ControlPath=/tmp/launcher/%C"]   # as the launcher adds them
    shared = early_launch.Gate(inv, inv.host("mac4"))
    alone = early_launch.Gate(inv, inv.host("mac4"))
    try:
        shared.open(["-o", "ControlPath=/r/.ssh-mux/abc.1", "-o", "ControlMaster=auto"])
        got = _config(shared, *mine)
        assert (got["controlpath"], got["controlmaster"]) == ("/r/.ssh-mux/abc.1", "auto"), got
        assert got["userknownhostsfile"] == str(tmp_path / "known_hosts")  # the lane's options are there
        alone.open()
        assert _config(alone, *mine)["controlpath"].startswith("/tmp/launcher/")  # -G expands %C
        for bad in (["-o", "ControlPath=/a b"], ["-o", "ControlPath=/r/*"], [""]):
            with pytest.raises(ValueError):
                shared.open(bad)
    finally:
        shared.remove()
        alone.remove()


def test_the_host_lock_names_a_live_owner_and_is_released_only_by_its_own(tmp_path):
    inv = inv_at(tmp_path)
    mac4 = inv.host("mac4")
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert fsutil.take_lock(lock_path(inv, mac4), other.pid)[0] == "taken"
        lock = HostLock(inv, mac4)
        with pytest.raises(SyncError, match=f"another sync-cache \\(pid {other.pid}\\)"):
            lock.hold()
        lock.release()
        assert fsutil.lock_holder(lock_path(inv, mac4)) == ("held", other.pid)   # not ours: kept
    finally:
        other.kill()
        other.wait()
    lock = HostLock(inv, mac4)   # its owner gone: taken over
    lock.hold()
    assert fsutil.lock_holder(lock_path(inv, mac4)) == ("held", os.getpid())
    lock.release()
    assert not lock_path(inv, mac4).exists()


class FakeMaster:
    made = []

    def __init__(self, inv, host):
        self.host, self.closed = host.name, False
        FakeMaster.made.append(self)

    def close(self):
        self.closed = True


def test_the_first_transfers_of_a_peer_round_take_the_surveys_facts_and_its_master(tmp_path, monkeypatch):
    """Two cold hosts, local the only source (one target at a time): mac4's transfer starts right after
    the survey and takes its facts and the master opened while the peers were asked; mac6 waits, so
    it verifies anew with a master of its own (the one opened for it is closed at once)."""
    inv = inv_at(tmp_path)
    caches = {"local": "local facts", "mac4": "mac4 facts", "mac6": "mac6 facts"}
    calls = []

    def survey(inv, targets, forced, checksum, on_cold=None):
        on_cold(["mac4", "mac6"])
        return Sources(caches, [], {}, {}, "no peer key"), {}

    def sync_cache(inv, host, gathered=None, master=None, **args):
        calls.append((host.name, gathered, master and master.host, master and master.closed))
        raise SyncError("stop here")

    FakeMaster.made = []
    monkeypatch.setattr(peer_sync, "survey", survey)
    monkeypatch.setattr(peer_sync, "sync_cache", sync_cache)
    monkeypatch.setattr(peer_sync.mux, "Master", FakeMaster)
    with open(os.devnull, "w") as devnull:
        peer_sync.fill(inv, [inv.host("mac4"), inv.host("mac6")], out=devnull)
    assert calls == [("mac4", {"local": "local facts", "mac4": "mac4 facts"}, "mac4", False),
                     ("mac6", None, None, None)]
    assert [(m.host, m.closed) for m in FakeMaster.made] == [("mac4", True), ("mac6", True)]


def test_from_a_host_is_asked_beside_the_targets_probe_not_after_it(tmp_path, monkeypatch):
    inv = inv_at(tmp_path)
    asked = threading.Event()

    def ask_peers(inv, others, targets, checksum, peer_facts=True):
        assert not targets and peer_facts   # the targets' peer facts come with their probe
        asked.set()
        return {h.name: f"{h.name} facts" for h in others}, {h.name: "peer facts" for h in others}

    def gather(inv, targets, checksum, with_peers):
        assert asked.wait(5), "--from's host was asked only after the targets' probe"
        assert with_peers
        return ({"local": "local facts", **{t.name: f"{t.name} facts" for t in targets}},
                {t.name: "its own peer facts" for t in targets})

    monkeypatch.setattr(peer_sync, "peers_blocked", lambda inv: None)
    monkeypatch.setattr(peer_sync, "_ask_peers", ask_peers)
    monkeypatch.setattr(peer_sync, "gather_targets", gather)
    monkeypatch.setattr(peer_sync, "_verdicts", lambda caches, checksum: {
        n: SimpleNamespace(ok=n != "mac4") for n in caches if n != "local"})
    monkeypatch.setattr(peer_sync, "link_problems", lambda inv, sources, cold, got: {("mac6", "mac4"): None})
    sources, verdicts = peer_sync.survey(inv, [inv.host("mac4")], forced="mac6")
    assert sources.complete == ["mac6"] and sources.caches["mac6"] == "mac6 facts" and not verdicts["mac4"].ok
    assert sources.peer_facts == {"mac6": "peer facts", "mac4": "its own peer facts"}


def test_from_a_host_the_targets_masters_open_before_the_survey(tmp_path, monkeypatch):
    inv = inv_at(tmp_path)
    seen = []

    def survey(inv, targets, forced, checksum, on_cold=None):
        seen.append([m.host for m in FakeMaster.made])
        return Sources({}, ["mac4", "mac6"], {}, {}), {}

    FakeMaster.made = []
    monkeypatch.setattr(peer_sync, "survey", survey)
    monkeypatch.setattr(peer_sync, "sync_cache", lambda inv, host, **args: None)
    monkeypatch.setattr(peer_sync, "_pull_options", lambda inv, sources, step: ())
    monkeypatch.setattr(peer_sync.mux, "Master", FakeMaster)
    with open(os.devnull, "w") as devnull:
        peer_sync.fill(inv, [inv.host("mac4")], "mac6", out=devnull)
        assert seen == [["mac4"]] and all(m.closed for m in FakeMaster.made)
        peer_sync.fill(inv, [inv.host("mac4")], "local", out=devnull)
    assert seen[-1] == ["mac4"]  # --from local: none more (each sync opens its own beside its verify)


def test_close_ends_a_launcher_let_through_whose_follower_never_came(tmp_path):
    """go() written, then a failure before transfer.stream read the launcher: close() ends its group
    (it would run on unread, its next ssh failing on a removed gate) and removes the gate."""
    inv = inv_at(tmp_path)
    early = early_launch.EarlyLauncher(inv, inv.host("mac4"), ("/a", "/b"),
                                       lambda ssh: ["sh", "-c", "sleep 60 & wait"])
    early.go()
    early.close()
    assert early.proc.poll() is not None and early.proc.stdout.closed
    assert not os.path.exists(early.gate.folder)


def test_a_gate_that_cannot_be_written_leaves_no_folder(tmp_path, monkeypatch):
    inv = inv_at(tmp_path)
    made = []
    real = early_launch.tempfile.mkdtemp
    monkeypatch.setattr(early_launch.tempfile, "mkdtemp", lambda **kw: made.append(real(dir=str(tmp_path))) or made[-1])
    monkeypatch.setattr(early_launch.os, "chmod", lambda *a: (_ for _ in ()).throw(OSError(28, "No space left")))
    with pytest.raises(OSError):
        early_launch.Gate(inv, inv.host("mac4"))
    assert made and not os.path.exists(made[0])


def test_a_lock_taker_that_fails_oddly_is_said_naming_the_lock(tmp_path, monkeypatch):
    inv = inv_at(tmp_path)
    monkeypatch.setattr(fsutil, "take_lock", lambda *a: (_ for _ in ()).throw(ValueError("bad pid file")))
    lock = HostLock(inv, inv.host("mac4"))
    with pytest.raises(SyncError, match="cannot take the sync lock .*bad pid file"):
        lock.hold()


def test_from_a_host_each_host_is_asked_in_one_session(tmp_path, monkeypatch):
    """--from mac6: mac4's cache and peer facts in one ask (one ssh session), mac6's likewise, local's
    cache alone; no host asked twice."""
    inv = inv_at(tmp_path)
    asked = []

    def ask(inv, host, *queries, timeout=None):
        asked.append((host.name, tuple(q.args[0] for q in queries)))
        return [f"{host.name} {q.args[0]}" for q in queries]

    monkeypatch.setattr(peer_sync, "peers_blocked", lambda inv: None)
    monkeypatch.setattr(peer_sync, "ask", ask)
    monkeypatch.setattr(peer_sync, "_verdicts", lambda caches, checksum: {
        n: SimpleNamespace(ok=n != "mac4") for n in caches if n != "local"})
    monkeypatch.setattr(peer_sync, "link_problems", lambda inv, sources, cold, got: {("mac6", "mac4"): None})
    sources, _ = peer_sync.survey(inv, [inv.host("mac4")], forced="mac6")
    assert sorted(asked) == [("local", ("cache",)), ("mac4", ("cache", "peer")), ("mac6", ("cache", "peer"))]
    assert sources.peer_facts == {"mac4": "mac4 peer", "mac6": "mac6 peer"}
    assert sources.caches == {"local": "local cache", "mac4": "mac4 cache", "mac6": "mac6 cache"}


def test_a_survey_that_refuses_says_so_without_waiting_for_the_from_hosts_ask(tmp_path, monkeypatch):
    """--from mac6 --checksum: mac6's deep ask runs beside the targets' probe; local failing as the
    reference is said at once, not after that ask (minutes, deep)."""
    inv = inv_at(tmp_path)
    release = threading.Event()

    def slow_ask(*args, **kwargs):
        release.wait(30)
        return {}, {}

    def refuse(inv, targets, checksum, with_peers):
        raise SyncError("local cache is incomplete")
    monkeypatch.setattr(peer_sync, "peers_blocked", lambda inv: None)
    monkeypatch.setattr(peer_sync, "_ask_peers", slow_ask)
    monkeypatch.setattr(peer_sync, "gather_targets", refuse)
    t = time.monotonic()
    try:
        with pytest.raises(SyncError, match="local cache is incomplete"):
            peer_sync.survey(inv, [inv.host("mac4")], forced="mac6", checksum=True)
        assert time.monotonic() - t < 5
    finally:
        release.set()


def test_the_early_start_is_on_unless_turned_off(tmp_path, monkeypatch):
    from thunderlane import sync
    inv = inv_at(tmp_path, mac4_cache="/hub")
    early_launch.remember_root(inv, inv.local, "/local/hub")
    monkeypatch.setenv(early_launch.ENV, "0")
    assert sync._start_early(inv, inv.host("mac4"), lambda ssh, a, b: ["true"]) is None
    monkeypatch.delenv(early_launch.ENV, raising=False)
    early = sync._start_early(inv, inv.host("mac4"), lambda ssh, a, b: ["true"])
    try:
        assert early is not None and early.roots == ("/local/hub", "/hub")
    finally:
        early.close()


def test_an_ssh_failure_says_which_ssh_failed_and_why():
    """Exit 255 alone ('ssh failed: host unreachable, ...') did not say whether the launcher's first
    ssh or the one under rsync failed, nor ssh's reason; the error now carries their last words."""
    from thunderlane.sync import EXIT_MEANINGS, explain
    first = ("sync: local tree listed\n"
             "ssh: connect to host 198.18.77.130 port 22400: Connection timed out\n"
             "sync: ssh to root@198.18.77.130 failed: unreachable, refused, or its host key is unknown or changed\n")
    said = explain(255, first)
    assert said.startswith("ssh failed: host unreachable") and said.endswith(
        "(ssh: connect to host 198.18.77.130 port 22400: Connection timed out; sync: ssh to root@198.18.77.130 "
        "failed: unreachable, refused, or its host key is unknown or changed)"), said
    mid = ("<f+++++++++ 445604a9c63555c797558819af60ecb3b012e16179db07807bbd0715fd93291f\n"
           "     65,536  12%   64.00kB/s    0:00:07\r"
           "Timeout, server 198.18.77.130 not responding.\n"
           "rsync: [sender] write error: Broken pipe (32)\n"
           "rsync error: unexplained error (code 255) at io.c(949) [sender=3.5.0]\n")
    assert explain(255, mid).endswith("(Timeout, server 198.18.77.130 not responding.; rsync error: unexplained "
                                      "error (code 255) at io.c(949) [sender=3.5.0])")
    assert explain(255, "sync: done\n") == explain(255, "")            # nothing said: the meaning alone
    assert explain(23, mid) == EXIT_MEANINGS[23]                        # other codes: their meaning only
