"""The peer key: a key pair of its own (never the control key) that lets one compute host pull the
model cache from another over the data link (Thunderbolt), and what proves it installed.

On each host (``fab setup-peers``, over the control ssh): the private key at
``~/.thunderlane/peer/id_ed25519`` (0600), the other hosts' host keys pinned at their data address
in ``~/.thunderlane/peer/known_hosts`` (copied from the control machine's pinned known_hosts:
the same sshd answers on both links; never trust on first use), and one line in
``~/.ssh/authorized_keys``, tagged ``thunderlane-peer`` and replaced, never duplicated:
``from="<the other hosts' data_ips>",restrict <key>``.

Everything here is pure: facts in, lines, commands and verdicts out. The I/O is in
``peer_setup.py`` (installing) and ``peer_sync.py`` (using).
"""
import re
from dataclasses import dataclass

from . import facts
from .onhost.peer import KEY_NAME, KNOWN_NAME, PEER_DIR, TAG
from .sshopts import server_alive

KEY_TYPE = "ssh-ed25519"
FROM_RE = re.compile(r'(?:^|,)from="([^"]*)"')
SAFE_HOME = re.compile(r"^/[A-Za-z0-9_./+@-]+$")  # goes into rsync -e, which splits on spaces


@dataclass(frozen=True)
class PeerFacts:
    """A host's home and what of the peer key is installed under it (``onhost/peer.py``)."""
    home: str
    key_mode: int | None
    key_public: str | None       # base64 of the installed private key's public half
    known_hosts: str | None
    authorized: tuple            # the tagged lines of ~/.ssh/authorized_keys

    @classmethod
    def from_json(cls, d):
        return cls(d["home"], d.get("key_mode"), d.get("key_public"), d.get("known_hosts"),
                   tuple(d.get("authorized") or ()))

    def path(self, name):
        return f"{self.home}/{PEER_DIR}/{name}"


def query():
    return facts.Query(("peer",), PeerFacts.from_json)


def known_name(ip, port):
    """The name ssh looks a host key up by: ``ip`` on port 22, ``[ip]:port`` otherwise."""
    return ip if port == 22 else f"[{ip}]:{port}"


def known_lines(host, keys):
    """``host``'s pinned host keys (``[(type, base64), ...]``) as known_hosts lines at its data address."""
    return [f"{known_name(host.data_ip, host.data_port)} {kind} {b64}" for kind, b64 in keys]


def other_ips(inv, host):
    """The data addresses ``host`` accepts the peer key from: every other host's, once each."""
    return sorted({h.data_ip for h in inv.hosts.values() if h.name != host.name and h.data_ip})


def authorized_line(inv, host, pub_b64):
    """``host``'s tagged authorized_keys line, or None when it has no peer to accept."""
    ips = other_ips(inv, host)
    return f'from="{",".join(ips)}",restrict {KEY_TYPE} {pub_b64} {TAG}' if ips else None


def install_doc(inv, host, private_text, pub_b64, pinned):
    """What ``onhost/peer_install.py`` writes on ``host``. ``pinned``: {host name: [(type, b64)]}."""
    known = [line for h in inv.hosts.values() if h.name != host.name and h.data_ip
             for line in known_lines(h, pinned[h.name])]
    return {"key": private_text, "known_hosts": "".join(f"{line}\n" for line in known),
            "authorized": authorized_line(inv, host, pub_b64)}


def accepts(line, pub_b64, ip):
    """Does a tagged authorized_keys ``line`` let the peer key in from ``ip``?"""
    parts = line.split()
    if len(parts) < 4 or parts[-2] != pub_b64 or parts[-3] != KEY_TYPE:
        return False
    found = FROM_RE.search(" ".join(parts[:-3]))
    return bool(found) and ip in found.group(1).split(",")


def key_problem(host, got, pub_b64):
    """Why ``host`` (its PeerFacts ``got``) cannot use the peer key, or None."""
    if got.key_public is None:
        return f"the peer key is not installed on {host.name} (fab setup-peers installs it)"
    if got.key_public != pub_b64:
        return f"{host.name} holds another peer key than local's (fab setup-peers replaces it)"
    if got.key_mode != 0o600:
        return f"{host.name}'s peer key is mode {got.key_mode:o}, not 600 (fab setup-peers fixes it)"
    if not SAFE_HOME.fullmatch(got.home):
        return (f"{host.name}'s home {got.home!r} has a character rsync -e cannot carry (a space?): "
                f"peer sync cannot name the key under it")
    return None


def link_problem(src, tgt, got, pub_b64, pinned):
    """Why ``tgt`` cannot pull from ``src`` over the data link with the peer key, or None.
    ``got``: {host name: PeerFacts or an error}; ``pinned``: {host name: [(type, b64)]}."""
    for h in (src, tgt):
        if not h.data_ip:
            return f"{h.name} has no data_ip in the inventory"
        if not isinstance(got.get(h.name), PeerFacts):
            return f"{h.name}'s peer key could not be asked: {getattr(got.get(h.name), 'message', 'not asked')}"
    problem = key_problem(tgt, got[tgt.name], pub_b64)
    if problem:
        return problem
    have = set((got[tgt.name].known_hosts or "").splitlines())
    if not pinned.get(src.name) or not set(known_lines(src, pinned[src.name])) <= have:
        return (f"{tgt.name} has not pinned {src.name}'s host key at {known_name(src.data_ip, src.data_port)} "
                f"(fab setup-peers pins it)")
    if not any(accepts(line, pub_b64, tgt.data_ip) for line in got[src.name].authorized):
        return (f"{src.name} does not accept the peer key from {tgt.name}'s data address {tgt.data_ip} "
                f"(fab setup-peers authorizes it)")
    return None


# the key exchange the peer ssh prefers with the rsyncd transport: that session only starts the
# daemon and carries its one-shot secret, the model's bytes cross the data link in clear anyway, so
# OpenSSH's post-quantum default (sntrup761x25519 / mlkem768x25519) buys nothing there and costs
# about 0.13 s per sync on the lab (0.31 -> 0.18 s for `ssh true` between two hosts); the rest of the
# default list stays behind it (the '^' form: OpenSSH 8.2 and later; the macOS releases MLX runs on ship 9.x)
RSYNCD_KEX = "^curve25519-sha256,curve25519-sha256@libssh.org"


def peer_ssh(tgt, got, ssh, src, transport="ssh"):
    """The ssh command ``tgt`` runs to reach ``src`` (the launcher's ``--peer-ssh``): the peer key
    only, ``src``'s pinned key only, no agent, no forwarding, nothing from a config file (so no
    LocalCommand either), and bound to ``tgt``'s own data address (the one ``src``'s ``from=`` accepts).
    ``ssh``: the inventory's ssh settings; the keepalives are those of the ssh under rsync
    (:func:`sshopts.server_alive`): a data cable pulled mid-sync ends it after about
    ``connect_timeout + rsync_timeout`` of silence, not a long session's 40 s."""
    interval, count = server_alive(ssh)
    opts = [("IdentitiesOnly", "yes"), ("BatchMode", "yes"), ("StrictHostKeyChecking", "yes"),
            ("UserKnownHostsFile", got.path(KNOWN_NAME)), ("GlobalKnownHostsFile", "/dev/null"),
            ("ForwardAgent", "no"), ("ClearAllForwardings", "yes"),
            ("ConnectTimeout", ssh.connect_timeout), ("ServerAliveInterval", interval),
            ("ServerAliveCountMax", count), ("BindAddress", tgt.data_ip)]
    argv = ["ssh", "-F", "none", "-i", got.path(KEY_NAME)]
    for key, value in opts:
        argv += ["-o", f"{key}={value}"]
    if transport == "rsyncd":
        argv += ["-o", f"KexAlgorithms={RSYNCD_KEX}"]
    return " ".join(argv + ["-p", str(src.data_port), "-c", ssh.ciphers])


def launcher_options(src, tgt, got, src_cache, ssh, transport="ssh"):
    """The sync launcher's options that make ``tgt`` pull from ``src`` (see the launcher's usage).
    ``transport`` 'rsyncd': the peer ssh only starts a one-shot rsync daemon on ``src``'s data
    address, which lets in ``tgt``'s alone; the bytes then cross the data link in clear."""
    command = peer_ssh(tgt, got[tgt.name], ssh, src, transport)
    options = ["--from-host", f"{src.user}@{src.data_ip}", "--from-cache", src_cache,
               "--peer-ssh", command, "--peer-rsync-path", src.rsync_path]
    if transport == "rsyncd":
        options += ["--peer-transport", "rsyncd", "--from-addr", src.data_ip, "--host-addr", tgt.data_ip]
    return options
