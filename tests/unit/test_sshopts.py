"""The keepalives of the ssh under rsync and the launchers follow the inventory's timeouts (fault 34:
a pulled cable held the sync 40 s, ssh's long-session keepalives); mlx.launch's and a person's ssh
(the generated ssh_config) keep a long session's."""
import dataclasses
import shutil
import subprocess

import pytest

from thunderlane import remote, sshopts

from .test_remote import make_inv


def given(opts):
    return {opts[i + 1].split("=", 1)[0]: opts[i + 1].split("=", 1)[1] for i, o in enumerate(opts) if o == "-o"}


def with_timeouts(inv, connect, rsync):
    return dataclasses.replace(inv, ssh=dataclasses.replace(inv.ssh, connect_timeout=connect, rsync_timeout=rsync))


@pytest.mark.parametrize("connect,rsync,alive", [
    (5, 3, (2, 3)),       # the lab's connect timeout, fault 34's rsync_timeout: silent 8 s
    (10, 300, (10, 3)),   # the defaults: a long session's 40 s, as before
    (120, 3600, (10, 3)),  # never slower than that
    (10, 20, (7, 3)),     # 28 s: within connect + rsync
    (1, 1, (1, 3)),       # never under 4 s: a busy sshd gets a few seconds
])
def test_ssh_gives_up_after_about_connect_plus_rsync_timeout(tmp_path, connect, rsync, alive):
    inv = with_timeouts(make_inv(tmp_path), connect, rsync)
    assert sshopts.server_alive(inv.ssh) == alive
    interval, count = alive
    silent = interval * (count + 1)   # ssh gives up at the keepalive after COUNT unanswered ones
    assert 4 <= silent <= min(40, max(4, connect + rsync))
    opts = given(remote.ssh_options(inv, inv.hosts["mac4"]))
    assert (opts["ServerAliveInterval"], opts["ServerAliveCountMax"]) == (str(interval), str(count))


def test_the_generated_ssh_config_keeps_a_long_sessions_keepalives(tmp_path):
    """mlx.launch's ssh: a window has its own watchdog; rsync_timeout says nothing of a rank."""
    text = remote.ssh_config(with_timeouts(make_inv(tmp_path), 5, 3), [make_inv(tmp_path).hosts["mac4"]])
    assert "  ServerAliveInterval 10\n" in text and "  ServerAliveCountMax 3\n" in text


@pytest.mark.skipif(not shutil.which("ssh"), reason="no ssh client")
def test_ssh_takes_the_command_lines_keepalives_over_the_config_files(tmp_path):
    """The launcher's ssh reads the lane's ssh_config (-F, 10 s) and gets -o values: ssh keeps the
    first value it obtains, the command line's."""
    inv = with_timeouts(make_inv(tmp_path), 5, 3)
    config = tmp_path / "config"
    config.write_text(remote.ssh_config(inv, inv.hosts.values()))
    inv = dataclasses.replace(inv, ssh=dataclasses.replace(inv.ssh, config=str(config)))
    out = subprocess.run(["ssh", "-G", *remote.ssh_options(inv, inv.hosts["mac4"]), "mac4"],
                         capture_output=True, text=True, check=True).stdout.lower().splitlines()
    assert "serveraliveinterval 2" in out and "serveralivecountmax 3" in out


def test_every_lane_ssh_asks_for_aes_gcm_first_with_chacha20_left_as_the_fallback(tmp_path):
    inv = make_inv(tmp_path)
    assert given(remote.ssh_options(inv, inv.hosts["mac4"]))["Ciphers"] == sshopts.CIPHERS
    assert f"  Ciphers {sshopts.CIPHERS}\n" in remote.ssh_config(inv, [inv.hosts["mac4"]])
    names = sshopts.CIPHERS.split(",")
    assert names[0].startswith("aes128-gcm") and "chacha20-poly1305@openssh.com" in names[1:]


def test_the_inventorys_ciphers_replace_the_lanes(tmp_path):
    inv = make_inv(tmp_path)
    inv = dataclasses.replace(inv, ssh=dataclasses.replace(inv.ssh, ciphers="aes256-ctr"))
    assert given(remote.ssh_options(inv, inv.hosts["mac4"]))["Ciphers"] == "aes256-ctr"


@pytest.mark.skipif(not shutil.which("ssh"), reason="no ssh client")
def test_this_machines_ssh_knows_every_cipher_the_lane_asks_for(tmp_path):
    """A name ssh does not know ends every connection ("Bad SSH2 cipher spec"): `ssh -G` parses the
    options as a connection would and prints the list it would offer."""
    inv = make_inv(tmp_path)
    out = subprocess.run(["ssh", "-G", *remote.ssh_options(inv, inv.hosts["mac4"]), "mac4"],
                         capture_output=True, text=True, check=True).stdout.lower().splitlines()
    assert f"ciphers {sshopts.CIPHERS}" in out
