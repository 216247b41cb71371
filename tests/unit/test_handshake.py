"""The key exchange order the lane's paramiko client offers (handshake.py)."""
import socket

import paramiko

from thunderlane import handshake

from .test_remote import make_inv


def test_p256_goes_just_ahead_of_curve25519_and_a_post_quantum_hybrid_stays_first():
    offered = ("mlkem768x25519-sha256", "curve25519-sha256@libssh.org", "ecdh-sha2-nistp256",
               "ecdh-sha2-nistp384", "diffie-hellman-group14-sha256")
    assert handshake.kex_order(offered) == ("mlkem768x25519-sha256", "ecdh-sha2-nistp256",
                                            "curve25519-sha256@libssh.org", "ecdh-sha2-nistp384",
                                            "diffie-hellman-group14-sha256")
    assert handshake.kex_order(offered[2:]) == offered[2:]  # no curve25519 offered: unchanged
    assert handshake.kex_order(offered[:2] + offered[3:]) == offered[:2] + offered[3:]  # no P-256: unchanged
    assert handshake.kex_order(handshake.kex_order(offered)) == handshake.kex_order(offered)


def test_the_lanes_connections_offer_that_order_and_nothing_less():
    with socket.socket() as a, socket.socket() as b:
        t, default = handshake.transport(a), paramiko.Transport(b)
    assert t.preferred_kex == handshake.kex_order(default.preferred_kex) != default.preferred_kex
    assert sorted(t.preferred_kex) == sorted(default.preferred_kex)
    assert t.preferred_ciphers == default.preferred_ciphers and t.preferred_keys == default.preferred_keys


def test_the_connection_uses_that_transport(tmp_path):
    from thunderlane import remote
    inv = make_inv(tmp_path)
    assert remote.connect(inv, inv.hosts["mac4"]).connect_kwargs["transport_factory"] is handshake.transport
