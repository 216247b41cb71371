"""The lane's paramiko client against the lab's OpenSSH: the key exchange it asks for first
(handshake.py), and the Fabric Config its Connections share (fabconfig.py)."""
import io
import logging

from thunderlane import remote

from tests.unit.test_fabconfig import _values, config_writes


def test_the_lab_sshd_settles_on_p256(lab_inv, caplog):
    caplog.set_level(logging.DEBUG, logger="paramiko.transport")
    host = lab_inv.hosts["mac5"]
    assert remote.run(lab_inv, host, ["true"])[0] == 0
    kex = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Kex: ")]
    assert kex == ["Kex: ecdh-sha2-nistp256"], kex


def test_a_command_fed_on_stdin_leaves_the_shared_config_as_it_was(lab_inv, monkeypatch):
    """The stdin path runs through Fabric's runner (CappedRemote), which reads the shared Config."""
    host, writes = lab_inv.hosts["mac4"], config_writes(monkeypatch)
    config = remote.connect(lab_inv, host).config
    before = _values(config)
    assert remote.run(lab_inv, host, ["cat"], stdin=io.StringIO("fed\n")) == (0, "fed\n", "")
    assert remote.connect(lab_inv, lab_inv.hosts["mac5"]).config is config and _values(config) == before
    assert remote.run(lab_inv, host, ["true"]) == (0, "", "") and writes == []
