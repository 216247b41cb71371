"""The ssh options every ssh the lane starts carries (rsync's, the launchers', mlx.launch's and a
person's through the generated ssh_config). Fabric's own sessions get the same guarantees in
:func:`thunderlane.remote.connect`."""
import shlex


def _ssh_settings(inv):
    """The options every ssh the lane starts must carry (Fabric's own are set in :func:`connect`):
    the pinned host keys and only those (no system-wide file), no prompts, fast failure, keepalives,
    and nothing a config could add: no agent or port forwarding, no LocalCommand."""
    s = inv.ssh
    settings = [("BatchMode", "yes"), ("StrictHostKeyChecking", "yes"), ("UserKnownHostsFile", s.known_hosts),
                ("GlobalKnownHostsFile", "/dev/null"), ("ConnectTimeout", s.connect_timeout),
                ("ServerAliveInterval", 10), ("ServerAliveCountMax", 3), ("CheckHostIP", "no"),
                ("ForwardAgent", "no"), ("ClearAllForwardings", "yes"), ("PermitLocalCommand", "no")]
    if s.identity:
        settings += [("IdentityFile", s.identity), ("IdentitiesOnly", "yes")]
    return settings


def ssh_options(inv, host):
    """``ssh`` command-line options for ``host``; shared by rsync and the launchers."""
    opts = ["-F", inv.ssh.config] if inv.ssh.config else []
    for key, value in _ssh_settings(inv):
        opts += ["-o", f"{key}={_ssh_quoted(value)}"]
    return opts + ["-p", str(host.port), "-l", host.user]


def ssh_config(inv, hosts, extra=()):
    """The same settings as an ssh config: one ``Host <ssh_name>`` block per host, so a plain
    ``ssh mac4`` (mlx.launch's, or a person's) uses the lane's endpoint, key and pinned host keys."""
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
