"""The key exchange the lane's paramiko client asks for first.

OpenSSH computes curve25519 with its own portable reference code, and ecdh-sha2-nistp256 with
libcrypto's optimised P-256 (OpenSSL on Debian, LibreSSL on macOS): on the lab's OpenSSH 9.2 an
ssh session running ``true`` costs the host's sshd about 2 ms less CPU with P-256 (22.3 -> 20.3 ms
a session, ``perf stat`` on the sshd), the control side the same 7 ms either way. Where hosts share
a machine's cores (the lab), that is a twentieth of what each extra host adds to a verify-cache.
Both give 128-bit security and both are in OpenSSH's own default list; a host that refuses
P-256 still gets curve25519, and a post-quantum hybrid paramiko offers (mlkem768x25519, which
OpenSSH 10 warns about the absence of) stays ahead of both.
"""
from .sshopts import nodelay_transport

CURVE25519 = ("curve25519-sha256", "curve25519-sha256@libssh.org")
FIRST = "ecdh-sha2-nistp256"


def kex_order(offered):
    """``offered`` (paramiko's key exchanges, most wanted first) with :data:`FIRST` moved just ahead
    of the first curve25519; unchanged if either is not offered."""
    offered = tuple(offered)
    curves = [i for i, name in enumerate(offered) if name in CURVE25519]
    if FIRST not in offered or not curves or offered.index(FIRST) < curves[0]:
        return offered
    rest = tuple(name for name in offered if name != FIRST)
    at = curves[0]
    return rest[:at] + (FIRST,) + rest[at:]


def transport(sock, **kwargs):
    """A paramiko Transport with TCP_NODELAY (:func:`sshopts.nodelay_transport`) offering
    :func:`kex_order`'s order (``SSHClient.connect``'s ``transport_factory``)."""
    t = nodelay_transport(sock, **kwargs)
    options = t.get_security_options()
    options.kex = kex_order(options.kex)
    return t
