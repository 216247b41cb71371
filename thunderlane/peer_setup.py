"""setup-peers: the peer key made once on the control machine and installed on every host, over
the control ssh only (the private key travels on the session's stdin, never on a command line;
the control key is never sent, the agent never forwarded). See ``peers.py`` for what goes where.

The whole inventory is one peer group: each host's ``from=`` names every other host's data address,
so the task always covers every host (a subset would leave the others' lines stale).
"""
import io
import json
import shlex
import time

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from invoke.exceptions import CommandTimedOut

from . import fsutil, layout, onhost, peers
from .onhost.peer import public_blob_b64
from .remote import HostError, _ssh_error, _timed_out, ask, decode, on_hosts, open_session
from .report import HostResult, Report

INSTALL_SOURCE = onhost.peer_install_source()
INSTALL_TIMEOUT = 60
FIGURES = ("home", "peers")


def key_path(inv):
    """The peer key on the control machine, beside the lane's other state (never ``ssh.identity``)."""
    return layout.local(inv).root / ".peer" / "id_ed25519"


def local_key(inv, create=False):
    """(private key text, public key base64) of the peer key; made (ed25519, no passphrase: hosts
    use it unattended) when ``create`` and there is none. (None, None) if absent."""
    path = key_path(inv)
    if not path.is_file():
        if not create:
            return None, None
        key = Ed25519PrivateKey.generate()
        private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                    serialization.NoEncryption()).decode()
        public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                               serialization.PublicFormat.OpenSSH).decode()
        fsutil.atomic_write(path.with_name(path.name + ".pub"), f"{public} {peers.TAG}\n")
        fsutil.atomic_write(path, private, mode=0o600)  # last: its presence means both are whole
    private = path.read_text()
    pub = public_blob_b64(private)
    if pub is None:
        raise HostError("local", "key", f"{path} is not an OpenSSH private key; remove it and run setup-peers again")
    return private, pub


def pinned_keys(inv):
    """{host: [(type, base64), ...]}: each host's key as the control machine pinned it
    (``ssh.known_hosts``, hashed entries too); a host with none is missing."""
    try:
        known = paramiko.HostKeys(inv.ssh.known_hosts)
    except (OSError, paramiko.SSHException, ValueError) as e:
        raise HostError("local", "host-key", f"{inv.ssh.known_hosts}: cannot read it: {e}") from None
    out = {}
    for h in inv.hosts.values():
        found = known.lookup(peers.known_name(h.hostname, h.port)) or {}
        if found:
            out[h.name] = sorted((kind, key.get_base64()) for kind, key in found.items())
    return out


def run_with_input(inv, host, argv, data, timeout):
    """Run ``argv`` on ``host`` with ``data`` on its stdin: (exit code, stdout, stderr)."""
    try:
        with open_session(inv, host) as conn:
            r = conn.run(shlex.join(argv), hide=True, warn=True, in_stream=io.StringIO(data), timeout=timeout)
            return r.exited, r.stdout, r.stderr
    except CommandTimedOut:
        raise _timed_out(host, argv, timeout) from None
    except (paramiko.SSHException, OSError) as e:
        raise _ssh_error(inv, host, e) from None


def installed(got, doc, pub):
    """Is ``doc`` what ``got`` (the host's PeerFacts) already holds?"""
    return (got.key_public == pub and got.key_mode == 0o600 and (got.known_hosts or "") == doc["known_hosts"]
            and list(got.authorized) == ([doc["authorized"]] if doc["authorized"] else []))


def setup_host(inv, host, private, pub, pinned):
    """Install the peer key on ``host`` unless it is there already; its HostResult."""
    started = time.monotonic()
    missing = [h.name for h in inv.hosts.values() if h.name != host.name and h.name not in pinned]
    if missing:
        raise HostError(host.name, "refused", f"no pinned host key for {', '.join(missing)} in "
                        f"{inv.ssh.known_hosts}: pin it (ssh once and check the fingerprint) first")
    doc = peers.install_doc(inv, host, private, pub, pinned)
    got = ask(inv, host, peers.query())[0]
    verdict = "nothing to do"
    if not installed(got, doc, pub):
        code, out, err = run_with_input(inv, host, [host.python, "-c", INSTALL_SOURCE], json.dumps(doc), INSTALL_TIMEOUT)
        if code != 0:
            tail = ((err or "").strip().splitlines() or ["no output"])[-1][:300]
            raise HostError(host.name, "failed", f"peer key install exited {code}: {tail}")
        decode(host.name, out)
        got, verdict = ask(inv, host, peers.query())[0], "installed"
        if not installed(got, doc, pub):
            raise HostError(host.name, "failed", f"after the install {host.name} still does not hold the peer key")
    others = peers.other_ips(inv, host)
    return HostResult(host.name, verdict, True,
                      f"key {got.path('id_ed25519')}; accepts it from {', '.join(others) or 'no other host'} "
                      f"({time.monotonic() - started:.1f}s)", {"home": got.home, "peers": len(others)})


def setup_peers(inv):
    """A Report with one row per inventory host: 'installed', 'nothing to do', or why not."""
    try:
        private, pub = local_key(inv, create=True)
        pinned = pinned_keys(inv)
    except HostError as e:
        return Report("setup-peers", (HostResult("local", e.kind, False, e.message),))
    hosts = list(inv.hosts.values())
    got = on_hosts(hosts, lambda h: setup_host(inv, h, private, pub, pinned))
    results = [HostResult(name, r.kind, False, r.message) if isinstance(r, HostError) else r
               for name, r in got.items()]
    return Report("setup-peers", tuple(results), (f"peer key {key_path(inv)} (public half beside it)",))
