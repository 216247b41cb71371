"""Running things on hosts: Fabric connections that refuse unknown host keys, the ssh command line
rsync and the launchers use, and the probe run on every host in parallel.
"""
import json
import shlex
import socket
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import paramiko
from fabric import Config, Connection

from . import probe

PROBE_SOURCE = Path(probe.__file__).read_text(encoding="utf-8")


class HostError(RuntimeError):
    """A host could not be asked: unreachable, refused host key, no interpreter, bad answer.
    ``kind`` is a short verdict ('unreachable', 'host-key', 'error')."""

    def __init__(self, host, kind, message):
        super().__init__(f"{host}: {message}")
        self.host, self.kind, self.message = host, kind, message


def ssh_options(inv, host):
    """``ssh`` options that pin the host key and fail fast; shared by rsync, the launchers and
    (through the lab's ssh config) mlx.launch."""
    s = inv.ssh
    opts = []
    if s.config:
        opts += ["-F", s.config]
    opts += ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
             "-o", f"UserKnownHostsFile={s.known_hosts}", "-o", f"ConnectTimeout={s.connect_timeout}",
             "-o", "ServerAliveInterval=10", "-o", "ServerAliveCountMax=3"]
    if s.identity:
        opts += ["-i", s.identity, "-o", "IdentitiesOnly=yes"]
    opts += ["-p", str(host.port), "-l", host.user]
    return opts


def ssh_command(inv, host):
    """The ssh program and options as one string, as ``rsync -e`` takes it."""
    return shlex.join(["ssh", *ssh_options(inv, host)])


def connect(inv, host):
    """A Fabric Connection to ``host`` that refuses any key not pinned in known_hosts
    (Fabric's own default accepts any key) and gives up after the connect timeout."""
    t = inv.ssh.connect_timeout
    kwargs = {"banner_timeout": t, "auth_timeout": t, "allow_agent": False}
    if inv.ssh.identity:
        kwargs.update(key_filename=[inv.ssh.identity], look_for_keys=False)
    config = Config(overrides={"load_ssh_configs": False, "timeouts": {"connect": t}})
    conn = Connection(host.hostname, user=host.user, port=host.port, config=config,
                      connect_timeout=t, connect_kwargs=kwargs)
    conn.client.set_missing_host_key_policy(paramiko.RejectPolicy())
    known = Path(inv.ssh.known_hosts)
    if known.is_file():
        conn.client.load_host_keys(str(known))
    return conn


def run(inv, host, argv, timeout=None):
    """Run ``argv`` (quoted here) on ``host`` (or locally for ``local``): (exit code, stdout, stderr)."""
    if host.is_local:
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        except FileNotFoundError:
            return 127, "", f"{argv[0]}: not found"
        return p.returncode, p.stdout, p.stderr
    command = shlex.join(argv)
    try:
        with connect(inv, host) as conn:
            r = conn.run(command, hide=True, warn=True, in_stream=False, timeout=timeout)
            return r.exited, r.stdout, r.stderr
    except paramiko.BadHostKeyException as e:
        raise HostError(host.name, "host-key",
                        f"host key for {host.hostname}:{host.port} CHANGED ({e.key.get_name()}); "
                        f"refusing to connect. If the change is expected, fix {inv.ssh.known_hosts}") from None
    except paramiko.SSHException as e:
        if "not found in known_hosts" in str(e):
            raise HostError(host.name, "host-key",
                            f"{host.hostname}:{host.port} is not in {inv.ssh.known_hosts}; "
                            f"refusing an unknown host key") from None
        raise HostError(host.name, "unreachable", f"ssh to {host.destination}:{host.port}: {e}") from None
    except (socket.timeout, TimeoutError):
        raise HostError(host.name, "unreachable", f"no answer from {host.hostname}:{host.port} "
                        f"within {inv.ssh.connect_timeout}s") from None
    except OSError as e:
        raise HostError(host.name, "unreachable",
                        f"cannot connect to {host.hostname}:{host.port}: {e.strerror or e}") from None


def run_probe(inv, host, args, timeout=None):
    """Run the probe with the host's own lane interpreter; return its JSON facts."""
    code, out, err = run(inv, host, [host.python, "-c", PROBE_SOURCE, *args], timeout=timeout)
    if code == 127:
        raise HostError(host.name, "error", f"no interpreter at {host.python} (exit 127)")
    if code != 0:
        tail = (err.strip().splitlines() or ["no output"])[-1]
        raise HostError(host.name, "error", f"probe failed with exit {code}: {tail}")
    try:
        return json.loads(out)
    except ValueError:
        raise HostError(host.name, "error", f"probe printed no JSON: {out[:200]!r}") from None


def on_hosts(hosts, fn):
    """``fn(host)`` on every host at once; {name: value or HostError}, in the order given."""
    with ThreadPoolExecutor(max_workers=max(1, len(hosts))) as pool:
        futures = {h.name: pool.submit(_guarded, fn, h) for h in hosts}
        return {name: f.result() for name, f in futures.items()}


def _guarded(fn, host):
    try:
        return fn(host)
    except HostError as e:
        return e
