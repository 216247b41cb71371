"""Peer sync's pure parts: the peer key's lines and their judges, the peer ssh command, the on-host
installer (in a tmp home), and the scheduler that fills several cold hosts."""
import copy
import dataclasses
import os
import shlex

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from thunderlane import inventory, peers
from thunderlane.inventory import InventoryError
from thunderlane.onhost import peer as onpeer
from thunderlane.peer_plan import LOCAL, Fill, choose
from thunderlane.sync import launcher_argv
from tests.unit.test_inventory import GOOD


def inv_of(n=3, **extra):
    data = copy.deepcopy(GOOD)
    base = data["hosts"]["mac4"]
    data["hosts"] = {f"mac{i}": {**base, "ssh_name": f"mac{i}", "hostname": f"mac{i}.local",
                                 "data_ip": f"198.19.0.{i}", **extra} for i in range(4, 4 + n)}
    return inventory.parse(data, "inv.yaml")


def new_key():
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption()).decode()
    pub = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return private, pub.decode().split()[1]


PINNED = {f"mac{i}": [("ssh-ed25519", f"HOSTKEY{i}")] for i in range(4, 12)}


# --- lines ----------------------------------------------------------------------------------------

def test_authorized_line_accepts_only_the_other_hosts_data_addresses():
    inv = inv_of(3)
    line = peers.authorized_line(inv, inv.hosts["mac5"], "PUB")
    assert line == 'from="198.19.0.4,198.19.0.6",restrict ssh-ed25519 PUB thunderlane-peer'
    assert peers.accepts(line, "PUB", "198.19.0.4") and peers.accepts(line, "PUB", "198.19.0.6")
    assert not peers.accepts(line, "PUB", "198.19.0.5")      # its own address
    assert not peers.accepts(line, "PUB", "198.19.0.44")     # no prefix match
    assert not peers.accepts(line, "OTHER", "198.19.0.4")    # another key
    assert not peers.accepts(line.replace('from="198.19.0.4,198.19.0.6",', ""), "PUB", "198.19.0.4")


def test_a_lone_host_accepts_nobody():
    assert peers.authorized_line(inv_of(1), inv_of(1).hosts["mac4"], "PUB") is None


def test_known_hosts_lines_are_at_the_data_address_and_port():
    inv = inv_of(2, data_ssh_port=2222)
    doc = peers.install_doc(inv, inv.hosts["mac4"], "PRIVATE", "PUB", PINNED)
    assert doc["known_hosts"] == "[198.19.0.5]:2222 ssh-ed25519 HOSTKEY5\n"
    assert peers.known_name("198.19.0.5", 22) == "198.19.0.5"


def test_data_ssh_port_defaults_to_port_and_is_validated():
    assert inv_of(2).hosts["mac4"].data_port == 22
    with pytest.raises(InventoryError, match="host mac4: data_ssh_port: 0 is not a port number"):
        inv_of(2, data_ssh_port=0)


def test_authorized_text_replaces_the_tagged_line_and_keeps_the_others():
    old = "ssh-ed25519 AAAA me@laptop\nfrom=\"1.2.3.4\",restrict ssh-ed25519 OLD thunderlane-peer\n"
    new = onpeer.authorized_text(old, "NEWLINE thunderlane-peer")
    assert new == "ssh-ed25519 AAAA me@laptop\nNEWLINE thunderlane-peer\n"
    assert onpeer.authorized_text(new, "NEWLINE thunderlane-peer") == new  # idempotent
    assert onpeer.authorized_text(new, None) == "ssh-ed25519 AAAA me@laptop\n"
    assert onpeer.authorized_text("ssh-ed25519 AAAA me\n", None) == "ssh-ed25519 AAAA me\n"


# --- the on-host installer and facts, in a tmp home ----------------------------------------------

def test_install_then_facts_in_a_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "authorized_keys").write_text("ssh-ed25519 CONTROL me@laptop\n")
    private, pub = new_key()
    inv = inv_of(2)
    doc = peers.install_doc(inv, inv.hosts["mac4"], private, pub, PINNED)
    first = onpeer.install_peer(doc)
    assert len(first["changed"]) == 3
    assert onpeer.install_peer(doc)["changed"] == []  # nothing rewritten the second time
    key = tmp_path / ".thunderlane" / "peer" / "id_ed25519"
    assert key.stat().st_mode & 0o777 == 0o600 and key.read_text() == private
    got = peers.PeerFacts.from_json(onpeer.peer_facts())
    assert got.home == str(tmp_path) and got.key_public == pub and got.key_mode == 0o600
    assert got.authorized == (doc["authorized"],)
    assert (tmp_path / ".ssh" / "authorized_keys").read_text().startswith("ssh-ed25519 CONTROL me@laptop\n")
    assert not [p for p in os.listdir(key.parent) if ".tmp" in p]


# --- judges: can mac4 pull from mac5? -------------------------------------------------------------

def facts_for(inv, pub, home="/Users/me"):
    got = {}
    for h in inv.hosts.values():
        doc = peers.install_doc(inv, h, "x", pub, PINNED)
        got[h.name] = peers.PeerFacts(home, 0o600, pub, doc["known_hosts"], (doc["authorized"],))
    return got


def test_link_problem_names_what_is_missing():
    inv = inv_of(2)
    mac4, mac5 = inv.hosts["mac4"], inv.hosts["mac5"]
    got = facts_for(inv, "PUB")
    assert peers.link_problem(mac5, mac4, got, "PUB", PINNED) is None
    cases = {
        "the peer key is not installed on mac4 (fab setup-peers": {"mac4": {"key_public": None}},
        "mac4 holds another peer key": {"mac4": {"key_public": "OTHER"}},
        "mac4's peer key is mode 644": {"mac4": {"key_mode": 0o644}},
        "mac4 has not pinned mac5's host key at 198.19.0.5": {"mac4": {"known_hosts": ""}},
        "mac5 does not accept the peer key from mac4's data address 198.19.0.4": {"mac5": {"authorized": ()}},
        "mac4's home '/Users/my name' has a character": {"mac4": {"home": "/Users/my name"}},
    }
    for why, change in cases.items():
        broken = dict(got)
        for name, fields in change.items():
            broken[name] = peers.PeerFacts(**{**vars(got[name]), **fields})
        assert why in (peers.link_problem(mac5, mac4, broken, "PUB", PINNED) or ""), why


def test_peer_ssh_is_pinned_bound_and_splits_on_spaces():
    inv = inv_of(2, data_ssh_port=2222)
    got = facts_for(inv, "PUB")
    ssh = dataclasses.replace(inv.ssh, connect_timeout=7, rsync_timeout=5)
    opts = peers.launcher_options(inv.hosts["mac5"], inv.hosts["mac4"], got, "/hub", ssh)
    assert opts[:4] == ["--from-host", "me@198.19.0.5", "--from-cache", "/hub"]
    command = opts[opts.index("--peer-ssh") + 1]
    assert shlex.split(command) == command.split()
    for part in ("ssh -F none -i /Users/me/.thunderlane/peer/id_ed25519", "-o IdentitiesOnly=yes",
                 "-o StrictHostKeyChecking=yes", "-o UserKnownHostsFile=/Users/me/.thunderlane/peer/known_hosts",
                 "-o GlobalKnownHostsFile=/dev/null", "-o ForwardAgent=no", "-o BindAddress=198.19.0.4",
                 "-o ConnectTimeout=7", "-p 2222", "-c aes128-gcm@openssh.com"):
        assert part in command
    # the keepalives of the ssh under rsync (sshopts.server_alive): silent (7 + 5) s ends it, not 40 s
    assert "-o ServerAliveInterval=3 -o ServerAliveCountMax=3" in command
    slow = dataclasses.replace(ssh, rsync_timeout=300)
    assert "-o ServerAliveInterval=10 " in peers.launcher_options(inv.hosts["mac5"], inv.hosts["mac4"], got, "/hub",
                                                                  slow)[5]
    assert " -c aes256-ctr" in peers.launcher_options(inv.hosts["mac5"], inv.hosts["mac4"], got, "/hub",
                                                      dataclasses.replace(ssh, ciphers="aes256-ctr"))[5]
    argv = launcher_argv(inv, inv.hosts["mac4"], "/local/hub", "/dest", ssh="ssh", source=opts)
    assert argv[-1] == "me@mac4.local" and argv[-1 - len(opts):-1] == opts


def test_rsyncd_transport_adds_both_data_addresses_and_is_validated():
    """ssh.peer_transport rsyncd: the launcher is told to start a daemon on the source's data address
    letting in the target's alone; anything but ssh|rsyncd in the inventory is refused."""
    inv = inv_of(2)
    got = facts_for(inv, "PUB")
    plain = peers.launcher_options(inv.hosts["mac5"], inv.hosts["mac4"], got, "/hub", inv.ssh)
    assert "--peer-transport" not in plain
    opts = peers.launcher_options(inv.hosts["mac5"], inv.hosts["mac4"], got, "/hub", inv.ssh, "rsyncd")
    # the same options but the peer ssh, which asks for curve25519 first (it only starts the daemon)
    at = plain.index("--peer-ssh") + 1
    assert opts[:at] == plain[:at] and opts[at + 1:len(plain)] == plain[at + 1:]
    assert opts[at] == plain[at].replace(" -p ", f" -o KexAlgorithms={peers.RSYNCD_KEX} -p ")
    assert "KexAlgorithms" not in plain[at]
    assert opts[len(plain):] == ["--peer-transport", "rsyncd", "--from-addr", "198.19.0.5", "--host-addr", "198.19.0.4"]
    data = copy.deepcopy(GOOD)
    assert inventory.parse(data, "inv.yaml").ssh.peer_transport == "ssh"
    data["ssh"] = {**data.get("ssh", {}), "peer_transport": "rsyncd"}
    assert inventory.parse(data, "inv.yaml").ssh.peer_transport == "rsyncd"
    data["ssh"]["peer_transport"] = "ftp"
    with pytest.raises(InventoryError, match="ssh.peer_transport: 'ftp'"):
        inventory.parse(data, "inv.yaml")


# --- the scheduler --------------------------------------------------------------------------------

def ok_links(hosts):
    return {(s, t): None for s in hosts for t in hosts if s != t}


def run(fill, fail=()):
    """Drive ``fill`` to its end, transfers finishing in the order they began; every wave's steps.
    Checks that no source ever serves two targets at once."""
    fail, waves, queue = set(fail), [], list(fill.start())
    waves.append(list(queue))
    while queue:
        step = queue.pop(0)
        busy = [s.source for s in fill.busy.values()]
        assert len(busy) == len(set(busy)), busy
        nxt = fill.finished(step.target, (step.target, step.source) not in fail)
        if nxt:
            waves.append(nxt)
        queue += nxt
    assert fill.over
    return waves


def test_two_hosts_the_cold_one_pulls_from_the_complete_one():
    fill = Fill(["mac4"], ["mac5"], ok_links(["mac4", "mac5"]))
    (step,), = run(fill)
    assert (step.target, step.source) == ("mac4", "mac5") and "mac5 is complete" in step.why
    assert fill.done == ["mac4"]


def test_three_hosts_peer_and_local_serve_at_once():
    fill = Fill(["mac4", "mac6"], ["mac5"], ok_links(["mac4", "mac5", "mac6"]))
    waves = run(fill)
    assert [(s.target, s.source) for s in waves[0]] == [("mac4", "mac5"), ("mac6", LOCAL)]
    assert "busy" in waves[0][1].why
    assert sorted(fill.done) == ["mac4", "mac6"]


def test_eight_hosts_every_finished_target_serves_the_next():
    names = [f"mac{i}" for i in range(4, 12)]
    fill = Fill(names[1:], ["mac4"], ok_links(names))
    waves = run(fill)
    assert [(s.target, s.source) for s in waves[0]] == [("mac5", "mac4"), ("mac6", LOCAL)]
    assert sorted(fill.done) == sorted(names[1:]) and not fill.failed
    later = [s for wave in waves[1:] for s in wave]
    assert {s.source for s in later} - {"mac4", LOCAL}  # filled hosts became sources
    assert len(waves) < len(names) - 1  # fewer rounds than one target at a time


def test_no_complete_peer_fills_from_local_one_at_a_time():
    fill = Fill(["mac4", "mac5"], [], ok_links(["mac4", "mac5"]))
    fill.chain = False
    waves = run(fill)
    assert [[(s.target, s.source) for s in w] for w in waves] == [[("mac4", LOCAL)], [("mac5", LOCAL)]]
    assert "no other host has a complete cache" in waves[0][0].why


def test_a_peer_that_fails_midway_falls_back_to_local_and_is_not_used_again():
    fill = Fill(["mac4", "mac6"], ["mac5"], ok_links(["mac4", "mac5", "mac6"]), chain=False)
    waves = run(fill, fail={("mac4", "mac5")})
    steps = [s for w in waves for s in w]
    retry = [s for s in steps if s.target == "mac4"][-1]
    assert (retry.source, retry.fallback) == (LOCAL, "mac5") and "mac5 failed; falling back to local" in retry.why
    assert fill.broken == {"mac5"} and sorted(fill.done) == ["mac4", "mac6"]
    assert [s.source for s in steps].count("mac5") == 1


def test_forced_source_serves_every_target_and_never_falls_back():
    fill = Fill(["mac4", "mac6"], ["mac5"], ok_links(["mac4", "mac5", "mac6"]), forced="mac5")
    waves = run(fill, fail={("mac4", "mac5")})
    assert [[(s.target, s.source) for s in w] for w in waves] == [[("mac4", "mac5")], [("mac6", "mac5")]]
    assert fill.failed == ["mac4"] and fill.done == ["mac6"]


def test_choose_says_why_each_peer_cannot_serve():
    src, why = choose("mac4", ["mac5", "mac6"], {("mac5", "mac4"): "the peer key is not installed on mac4",
                                                 ("mac6", "mac4"): None}, busy={"mac6"})
    assert src == LOCAL and "mac5: the peer key is not installed on mac4" in why and "mac6: busy" in why
    assert choose("mac4", ["mac5"], {}, busy={LOCAL})[0] is None


# --- the programs as a host runs them (python -c BUNDLE) --------------------------------------------

def test_the_installer_takes_the_key_on_stdin_and_the_probe_reports_it(tmp_path):
    import json
    import subprocess
    import sys
    from thunderlane import onhost
    env = dict(os.environ, HOME=str(tmp_path))
    private, pub = new_key()
    inv = inv_of(2)
    doc = peers.install_doc(inv, inv.hosts["mac5"], private, pub, PINNED)
    p = subprocess.run([sys.executable, "-I", "-c", onhost.peer_install_source()], input=json.dumps(doc),
                       capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["home"] == str(tmp_path)
    probe = subprocess.run([sys.executable, "-I", "-c", onhost.probe_source(), "peer"], capture_output=True,
                           text=True, env=env)
    got = peers.PeerFacts.from_json(json.loads(probe.stdout))
    assert got.key_public == pub and got.authorized == (doc["authorized"],)
    assert got.known_hosts == "198.19.0.4 ssh-ed25519 HOSTKEY4\n"
    assert peers.key_problem(inv.hosts["mac5"], got, pub) is None
    bad = subprocess.run([sys.executable, "-I", "-c", onhost.peer_install_source()], input="{not json",
                         capture_output=True, text=True, env=env)
    assert bad.returncode == 1 and "peer install: JSONDecodeError" in bad.stderr


def test_from_is_refused_before_anything_moves_naming_why():
    from thunderlane.peer_sync import Sources, refuse_forced
    from thunderlane.report import HostResult
    from thunderlane.sync import SyncError
    inv = inv_of(3)
    targets = [inv.hosts["mac4"], inv.hosts["mac6"]]
    verdicts = {"mac5": HostResult("mac5", "other-revision", False, "refs/main is bbbb, local has aaaa")}
    cases = [("mac4", Sources({}, [], {}, {}), "--from mac4: a host cannot be its own source"),
             ("mac5", Sources({}, [], {}, {}), "--from mac5: its cache is other-revision (refs/main is bbbb"),
             ("mac5", Sources({}, ["mac5"], {}, {}, "there is no peer key on local"),
              "--from mac5: there is no peer key on local"),
             ("mac5", Sources({}, ["mac5"], {}, {("mac5", "mac4"): None, ("mac5", "mac6"): "no key on mac6"}),
              "--from mac5: mac6 cannot pull from mac5: no key on mac6")]
    for forced, sources, why in cases:
        with pytest.raises(SyncError) as e:
            refuse_forced(forced, targets, sources, verdicts)
        assert why in str(e.value)
    refuse_forced("mac5", targets, Sources({}, ["mac5"], {}, {("mac5", "mac4"): None}), verdicts)  # fine
    refuse_forced("local", targets, Sources({}, [], {}, {}), verdicts)
