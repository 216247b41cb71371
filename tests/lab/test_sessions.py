"""Fabric sessions on the real lab: keepalives on every opened session (issue 11, item 4)."""
from thunderlane import remote


def test_an_opened_session_sends_keepalives(lab_inv):
    """paramiko sends a keepalive after KEEPALIVE idle seconds (it never waits for the answer: the
    command timeout is what catches a silent host; see test_faults_hang.py)."""
    conn = remote.open_session(lab_inv, lab_inv.hosts["mac4"])
    try:
        assert conn.is_connected
        assert conn.transport.packetizer._Packetizer__keepalive_interval == remote.KEEPALIVE > 0
    finally:
        conn.close()
    assert not conn.is_connected
