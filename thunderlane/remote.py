"""Running things on hosts: the one home of the ssh options (for Fabric, rsync, the launchers and
mlx.launch), Fabric connections that refuse unknown host keys, and the probe asked on every host in
parallel, its answers turned into typed facts (``facts.py``) as they arrive.
"""
import json
import shlex
import socket
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import paramiko
from fabric import Config, Connection

from . import onhost

PROBE_SOURCE = onhost.probe_source()


class HostError(RuntimeError):
    """A host could not be asked: unreachable, refused host key, no interpreter, bad answer.
    ``kind`` is a short verdict ('unreachable', 'host-key', 'error')."""

    def __init__(self, host, kind, message):
        super().__init__(f"{host}: {message}")
        self.host, self.kind, self.message = host, kind, message


def _ssh_settings(inv):
    """The options every ssh the lane starts must carry (Fabric's own are set in :func:`connect`):
    the pinned host keys, no prompts, fast failure, keepalives."""
    s = inv.ssh
    settings = [("BatchMode", "yes"), ("StrictHostKeyChecking", "yes"), ("UserKnownHostsFile", s.known_hosts),
                ("ConnectTimeout", s.connect_timeout), ("ServerAliveInterval", 10), ("ServerAliveCountMax", 3),
                ("CheckHostIP", "no")]
    if s.identity:
        settings += [("IdentityFile", s.identity), ("IdentitiesOnly", "yes")]
    return settings


def ssh_options(inv, host):
    """``ssh`` command-line options for ``host``; shared by rsync and the launchers."""
    opts = ["-F", inv.ssh.config] if inv.ssh.config else []
    for key, value in _ssh_settings(inv):
        opts += ["-o", f"{key}={value}"]
    return opts + ["-p", str(host.port), "-l", host.user]


def ssh_config(inv, hosts, extra=()):
    """The same settings as an ssh config: one ``Host <ssh_name>`` block per host, so a plain
    ``ssh mac4`` (mlx.launch's, or a person's) uses the lane's endpoint, key and pinned host keys."""
    blocks = []
    for h in hosts:
        lines = [f"Host {h.ssh_name}", f"  HostName {h.hostname}", f"  Port {h.port}", f"  User {h.user}"]
        for key, value in [*_ssh_settings(inv), *extra]:
            lines.append(f'  {key} "{value}"' if "/" in str(value) else f"  {key} {value}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


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
    """Run the probe with the host's own lane interpreter; return its JSON (see :func:`ask`)."""
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


def ask(inv, host, *queries, timeout=None):
    """The facts of ``queries`` (see ``facts.py``) on ``host``, in one ssh session: a list of typed
    facts in the order asked. A malformed answer is the host's error, not a traceback."""
    if len(queries) == 1:
        answers = [run_probe(inv, host, list(queries[0].args), timeout)]
    else:
        multi = json.dumps([list(q.args) for q in queries])
        answers = run_probe(inv, host, ["multi", multi], timeout)["results"]
    try:
        return [q.parse(a) for q, a in zip(queries, answers)]
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise HostError(host.name, "error", f"probe answer malformed: {type(e).__name__}: {e}") from None


def ask_each(inv, hosts, query_for):
    """One query per host, every host at once: {name: facts or HostError}."""
    return on_hosts(hosts, lambda h: ask(inv, h, query_for(h))[0])


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
