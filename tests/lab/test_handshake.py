"""The lab's OpenSSH agrees to the key exchange the lane asks for first (handshake.py)."""
import logging

from thunderlane import remote


def test_the_lab_sshd_settles_on_p256(lab_inv, caplog):
    caplog.set_level(logging.DEBUG, logger="paramiko.transport")
    host = lab_inv.hosts["mac5"]
    assert remote.run(lab_inv, host, ["true"])[0] == 0
    kex = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Kex: ")]
    assert kex == ["Kex: ecdh-sha2-nistp256"], kex
