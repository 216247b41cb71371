"""The ssh options every ssh the lane starts carries (rsync's, the launchers', mlx.launch's and a
person's through the generated ssh_config). Fabric's own sessions get the same guarantees in
:func:`thunderlane.remote.connect`."""
import shlex
import socket

import paramiko

ALIVE_COUNT = 3      # keepalives ssh leaves unanswered: it gives up at the next one, after COUNT + 1 intervals
ALIVE_INTERVAL = 10  # seconds between keepalives of a long session: a silent host ends it after 40 s
# AES-GCM first: both ends of the lane have AES instructions (Apple silicon, x86 with AES-NI), where
# it carries about 1.4x what ChaCha20-Poly1305 (OpenSSH's first choice, for CPUs without them) does
# per core; ChaCha20 stays as the fallback for an sshd that offers no GCM. All three are AEAD
# ciphers with OpenSSH's full support since 6.5. The inventory's ``ssh.ciphers`` replaces the list.
CIPHERS = "aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com"


def nodelay_transport(sock, **kwargs):
    """paramiko's Transport over ``sock`` with TCP_NODELAY set first (Fabric's sessions: paramiko's
    ``transport_factory``). Without it the client's handshake, which sends two small packets before
    it waits for an answer, waits for the host's delayed ACK once (40 ms on Linux, up to 200 ms on
    macOS): about a third of a probe's time on the lab. A socket that takes no such option (not TCP)
    is used as it is."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        pass
    return paramiko.Transport(sock, **kwargs)


def server_alive(ssh):
    """(ServerAliveInterval, ServerAliveCountMax) for the ssh under rsync and the launchers: ssh gives
    up once the host has sent nothing, not even a keepalive's answer, for about ``connect_timeout +
    rsync_timeout`` seconds (a pulled cable ends the sync within that), never more than a long
    session's 40 s nor less than 4 s. Not too eager: the host's sshd answers keepalives however busy
    its rsync is (hashing with --checksum, a slow disk), so only a dead link or a hung sshd falls
    this silent; a live sshd answers one as it answers a handshake (``connect_timeout``), and
    ``rsync_timeout`` is the silence the operator already takes as the end of a transfer. rsync's
    own ``--timeout`` cannot be relied on there: its keepalives count as data while ssh takes them,
    and the launcher's ssh master, which holds rsync's pipes, lives until ssh gives up."""
    budget = min(ssh.connect_timeout + ssh.rsync_timeout, (ALIVE_COUNT + 1) * ALIVE_INTERVAL)
    return max(1, budget // (ALIVE_COUNT + 1)), ALIVE_COUNT


def _ssh_settings(inv, alive=(ALIVE_INTERVAL, ALIVE_COUNT)):
    """The options every ssh the lane starts must carry (Fabric's own are set in :func:`connect`):
    the pinned host keys and only those (no system-wide file), no prompts, fast failure, keepalives
    (``alive``: interval and count), the ciphers (:data:`CIPHERS` unless the inventory names its
    own), and nothing a config could add: no agent or port forwarding, no LocalCommand."""
    s = inv.ssh
    settings = [("BatchMode", "yes"), ("StrictHostKeyChecking", "yes"), ("UserKnownHostsFile", s.known_hosts),
                ("GlobalKnownHostsFile", "/dev/null"), ("ConnectTimeout", s.connect_timeout),
                ("ServerAliveInterval", alive[0]), ("ServerAliveCountMax", alive[1]), ("CheckHostIP", "no"),
                ("Ciphers", s.ciphers), ("ForwardAgent", "no"), ("ClearAllForwardings", "yes"), ("PermitLocalCommand", "no")]
    if s.identity:
        settings += [("IdentityFile", s.identity), ("IdentitiesOnly", "yes")]
    return settings


def ssh_options(inv, host):
    """``ssh`` command-line options for ``host``; shared by rsync and the launchers, whose keepalives
    follow the inventory's timeouts (:func:`server_alive`); on the command line they win over the ``-F`` file's."""
    opts = ["-F", inv.ssh.config] if inv.ssh.config else []
    for key, value in _ssh_settings(inv, server_alive(inv.ssh)):
        opts += ["-o", f"{key}={_ssh_quoted(value)}"]
    return opts + ["-p", str(host.port), "-l", host.user]


def ssh_config(inv, hosts, extra=()):
    """The same settings as an ssh config: one ``Host <ssh_name>`` block per host, so a plain
    ``ssh mac4`` (mlx.launch's, or a person's) uses the lane's endpoint, key and pinned host keys.
    Their keepalives are a long session's (40 s of silence): a window has its own watchdog, and
    rsync_timeout says nothing of how long a rank may stay silent."""
    blocks = []
    for h in hosts:
        lines = [f"Host {h.ssh_name}", f"  HostName {h.hostname}", f"  Port {h.port}", f"  User {h.user}"]
        for key, value in [*_ssh_settings(inv), *extra]:
            lines.append(f"  {key} {_ssh_quoted(value, always='/' in str(value))}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def _ssh_quoted(value, always=False):
    """A value as ssh reads it from a config line or ``-o``: in double quotes when it holds white
    space (``UserKnownHostsFile`` would take ``/a b`` as two files). The inventory refuses ``"``,
    ``\\`` and ``%`` in paths, which these quotes could not carry."""
    value = str(value)
    return f'"{value}"' if always or any(c.isspace() for c in value) else value


def ssh_command(inv, host):
    """The ssh program and options as one string, as ``rsync -e`` takes it."""
    return shlex.join(["ssh", *ssh_options(inv, host)])
