"""Paths as Macs name them (issue 11, item 9), without SSH: which characters the inventory takes
and which it refuses (naming the field), the launcher refusing the same set, and how paths with a
space are written for ssh (``-o``, ssh_config) and for rsync's remote side."""
import copy
import os
import re
import shlex
import subprocess

import pytest

from tests.unit.test_inventory import GOOD, bad
from thunderlane import inventory, remote, rsync_ssh
from thunderlane.sync import LAUNCHER

MAC_PATHS = ["/Volumes/T7 Shield/hf", "/Users/me/Library/Application Support/thunder",
             "/Volumes/Samsung T5 & co #2 (old)/data", "/Volumes/Données/x", "/a]b/c!d/e~f/g;h|i<j>k{l}m=n,o@p"]
HOST_PATHS = ["python", "dataset_root", "runs_root", "hf_cache"]


def parse(mutate):
    data = copy.deepcopy(GOOD)
    mutate(data)
    return inventory.parse(data, "inv.yaml")


@pytest.mark.parametrize("value", MAC_PATHS)
@pytest.mark.parametrize("field", HOST_PATHS)
def test_mac_paths_are_accepted_in_every_host_path(field, value):
    inv = parse(lambda d: d["hosts"]["mac5"].update({field: value}))
    assert getattr(inv.hosts["mac5"], field) == value


@pytest.mark.parametrize("value", MAC_PATHS)
def test_mac_paths_are_accepted_locally_and_for_ssh_files(value):
    inv = parse(lambda d: (d["local"].update(dataset_root=value, runs_root=value, hf_cache=value),
                           d["ssh"].update(known_hosts=value, identity=value, config=value)))
    assert inv.local.dataset_root == inv.local.hf_cache == inv.ssh.known_hosts == inv.ssh.identity == value


@pytest.mark.parametrize("ch,what", [("%", "a %"), ("'", "a quote"), ('"', "a quote"), ("\\", "a backslash"),
                                     ("$", "a $"), ("`", "a backtick"), ("*", "a wildcard"),
                                     ("?", "a wildcard"), ("[", "a wildcard")])
@pytest.mark.parametrize("field", HOST_PATHS)
def test_each_refused_character_is_named_with_host_and_field(field, ch, what):
    msg = bad(lambda d: d["hosts"]["mac5"].update({field: f"/Volumes/T7 Shield/a{ch}b"}))
    assert msg.startswith(f"inv.yaml: host mac5: {field}: ") and f"has {what}" in msg and f"({ch!r})" in msg


@pytest.mark.parametrize("ch", ["\t", "\n", "\r", "\x1b", "\x7f", "\x85", "\u2028"])
def test_control_characters_stay_refused(ch):
    assert "control character" in bad(lambda d: d["local"].update(runs_root=f"/Volumes/T7 Shield{ch}x"))


@pytest.mark.parametrize("key", ["known_hosts", "identity", "config"])
def test_refused_character_in_an_ssh_file_names_the_field(key):
    msg = bad(lambda d: d["ssh"].update({key: "/Users/me/Library/Application Support/a'b"}))
    assert f"host local: ssh.{key}: " in msg and "a quote" in msg


def test_the_launcher_refuses_the_inventorys_set():
    """The sync launcher's own check (``refused_chars`` plus its % case) is the same set."""
    text = LAUNCHER.read_text()
    line = re.search(r"^refused_chars=(.*)$", text, re.M).group(1)
    chars = subprocess.run(["bash", "-c", f"refused_chars={line}; printf %s \"$refused_chars\""],
                           capture_output=True, text=True, check=True).stdout
    assert set(chars) | {"%"} == set(inventory.PATH_REFUSED)
    assert "*%*) die" in text


def spaced_inv(tmp_path):
    folder = tmp_path / "Application Support"
    return parse(lambda d: d["ssh"].update(known_hosts=str(folder / "known_hosts"),
                                           identity=str(folder / "id key"), config=str(folder / "ssh config")))


def test_ssh_options_quote_files_with_a_space(tmp_path):
    inv = spaced_inv(tmp_path)
    opts = remote.ssh_options(inv, inv.hosts["mac4"])
    assert opts[:2] == ["-F", inv.ssh.config]  # an argv element of its own: no quoting needed
    assert f'UserKnownHostsFile="{inv.ssh.known_hosts}"' in opts and f'IdentityFile="{inv.ssh.identity}"' in opts
    assert "BatchMode=yes" in opts  # values without a space stay bare
    # rsync 3 splits -e on spaces outside quotes: the quoted option survives as one element
    assert shlex.split(remote.ssh_command(inv, inv.hosts["mac4"]))[1:] == opts


def test_ssh_config_quotes_files_with_a_space(tmp_path):
    inv = spaced_inv(tmp_path)
    text = remote.ssh_config(inv, [inv.hosts["mac4"]])
    assert f'  UserKnownHostsFile "{inv.ssh.known_hosts}"\n' in text
    assert f'  IdentityFile "{inv.ssh.identity}"\n' in text and "  BatchMode yes\n" in text


def test_rsync_shell_is_the_ssh_command_unless_an_ssh_file_has_a_space(tmp_path):
    inv = parse(lambda d: None)
    with rsync_ssh.rsync_shell(inv, inv.hosts["mac4"]) as ssh:
        assert ssh == remote.ssh_command(inv, inv.hosts["mac4"])


def test_rsync_shell_wraps_spaced_ssh_files_in_a_script_without_spaces(tmp_path):
    """openrsync splits -e on every space and the sync launcher splits --ssh: a wrapper script at a
    path without white space carries the quoted options instead, and is gone afterwards."""
    inv = spaced_inv(tmp_path)
    host = inv.hosts["mac4"]
    with rsync_ssh.rsync_shell(inv, host) as ssh:
        assert not re.search(r"\s", ssh) and ssh.startswith("/tmp/thunder-rsh.")
        p = subprocess.run(["sh", "-c", 'sed -n 2p "$1"', "-", ssh], capture_output=True, text=True)
        assert p.stdout == f'exec {remote.ssh_command(inv, host)} "$@"\n'
        # the script, run by sh, hands ssh each option whole: shown here by a stand-in "ssh" (echo)
        echo = tmp_path / "bin"
        echo.mkdir()
        (echo / "ssh").write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done\n')
        (echo / "ssh").chmod(0o755)
        p = subprocess.run([ssh, "me@mac4", "true"], capture_output=True, text=True,
                           env={"PATH": f"{echo}:/usr/bin:/bin"})
        assert p.stdout.splitlines() == [*remote.ssh_options(inv, host), "me@mac4", "true"]
    assert not os.path.exists(ssh)


@pytest.mark.parametrize("known_hosts", ["/Users/me/lane(1)/kh", "/Users/me/a&b/kh", "/Users/me/x;y/kh"])
def test_rsync_shell_wraps_ssh_files_whose_paths_shlex_must_quote(known_hosts):
    """No space, but shlex.join quotes it: openrsync and the launcher split -e on spaces and keep the
    quotes, so ssh would read 'UserKnownHostsFile=... with the quote: the wrapper carries it instead."""
    inv = parse(lambda d: d["ssh"].update(known_hosts=known_hosts))
    assert "'" in remote.ssh_command(inv, inv.hosts["mac4"])
    with rsync_ssh.rsync_shell(inv, inv.hosts["mac4"]) as ssh:
        assert ssh.startswith("/tmp/thunder-rsh.") and "'" not in ssh


def test_rsync_remote_quotes_the_path_for_the_hosts_shell():
    host = parse(lambda d: None).hosts["mac4"]
    arg = rsync_ssh.rsync_remote(host, "/Volumes/T7 Shield/run's (1)/")
    assert arg.startswith("me@mac4.local:")
    assert shlex.split(arg.split(":", 1)[1]) == ["/Volumes/T7 Shield/run's (1)/"]  # as the host's sh reads it


def test_rsync_env_turns_rsyncs_own_escaping_off(monkeypatch):
    monkeypatch.setenv("RSYNC_PROTECT_ARGS", "1")
    env = rsync_ssh.rsync_env()
    assert env["RSYNC_OLD_ARGS"] == "1" and "RSYNC_PROTECT_ARGS" not in env
