"""The lab: one real OpenSSH ``sshd`` per compute host on its own loopback address (or all on
127.0.0.1 with their own ports: ``net.py``; or, ``net='netns'``, in its own network namespace with a
control and a data link: ``netns.py``), each with its own host key, key-only login and home at
``.lab/<host>/``; the control side under ``.lab/local/``.

``up()`` writes ``.lab/hosts.yaml`` (an inventory), ``.lab/ssh_config`` and ``.lab/known_hosts``
with every host key pinned, and seeds the handoff's situation (``seed.py``).
"""
import getpass
import os
import shutil
import signal
import socket
import sys
import time
from pathlib import Path

import yaml

from .. import inventory, remote
from ..fsutil import atomic_write, command_line, pid_alive
from . import agent, net as netmod, netns
from .client import parse_layout
from .net import address
from .seed import CACHE_REL, DATASET_REL, HOST_CACHE_REL, RUNS_REL, LabError, run_tool, seed, seeded

ROOT = Path(__file__).resolve().parents[2]
LAB = ROOT / ".lab"
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
BASE_PORT = 22400
# The caches' layouts (a --layout spec) when neither --layout nor an earlier lab-up says: a new
# control machine (huggingface_hub 2.x, shared blob store) beside older hosts (classic blobs).
DEFAULT_LAYOUT = "local=shared"


def paths(lab=LAB):
    return {"lab": lab, "inventory": lab / "hosts.yaml", "ssh_config": lab / "ssh_config",
            "known_hosts": lab / "known_hosts", "identity": lab / "local" / "id_ed25519",
            "fixtures": lab / "fixtures"}


def _keygen(path, comment):
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        run_tool(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])
    return path.with_suffix(".pub").read_text().split()[:2]


def _state_dir(lab, name):
    return lab / "sshd" / name


def sshd_pid(lab, name):
    """PID of the lab sshd for ``name`` if it is alive and really ours, else None."""
    pidfile = _state_dir(lab, name) / "sshd.pid"
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    # sshd rewrites its title ("sshd: /usr/sbin/sshd -f CONFIG ... [listener]"): match the path
    config = str(_state_dir(lab, name) / "sshd_config")
    return pid if pid_alive(pid) and config in command_line(pid) else None


def _free_port(ip, start):
    for port in range(start, start + 200):
        with socket.socket() as s:
            try:
                s.bind((ip, port))
                return port
            except OSError:
                continue
    raise LabError(f"no free port on {ip} from {start}")


def _sshd_config(lab, name, listen, port, user):
    state, home = _state_dir(lab, name), lab / name
    return "\n".join([
        *(f"ListenAddress {ip}:{port}" for ip in dict.fromkeys(listen)),
        f"HostKey {state / 'ssh_host_ed25519_key'}",
        f"PidFile {state / 'sshd.pid'}",
        # the control key's file, and the home's (where setup-peers puts the peer key's line)
        f"AuthorizedKeysFile {state / 'authorized_keys'} {home / '.ssh' / 'authorized_keys'}",
        "PubkeyAuthentication yes", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
        "UsePAM no", "StrictModes no", "PermitRootLogin prohibit-password", f"AllowUsers {user}",
        f"SetEnv HOME={home} THUNDER_LAB_HOST={name}",
        "MaxStartups 64:30:128", "MaxSessions 64", "LogLevel ERROR", "",
    ])


def _start_sshd(lab, name, listen, port, user, client_pub, prefix=()):
    """Start ``name``'s sshd (unless it runs) listening on each address of ``listen`` (the first is
    the one the control side uses), under ``prefix`` (``ip netns exec NS`` for a namespaced host)."""
    state, ip = _state_dir(lab, name), listen[0]
    state.mkdir(parents=True, exist_ok=True)
    (lab / name).mkdir(parents=True, exist_ok=True)
    host_pub = _keygen(state / "ssh_host_ed25519_key", f"lab-{name}")
    (state / "authorized_keys").write_text(" ".join(client_pub) + "\n")
    (state / "sshd_config").write_text(_sshd_config(lab, name, listen, port, user))
    if os.geteuid() == 0 and sys.platform.startswith("linux"):  # Debian's sshd wants it as root
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    if sshd_pid(lab, name) is None:
        # an absolute -f: sshd re-executes itself per connection from its own cwd
        run_tool([*prefix, SSHD, "-f", str((state / "sshd_config").resolve()), "-E", str(state / "sshd.log")])
        _wait_listening(ip, port, name)
    return host_pub


def _wait_listening(ip, port, name, seconds=10):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex((ip, port)) == 0:
                return
        time.sleep(0.05)
    raise LabError(f"lab sshd for {name} did not listen on {ip}:{port}")


def _previous_hosts(lab):
    """{host: (address, port)} an earlier lab-up gave, so that re-running keeps them."""
    try:
        data = yaml.safe_load((lab / "hosts.yaml").read_text())
        return {n: (h["hostname"], h["port"]) for n, h in data["hosts"].items()}
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return {}


def _kept_port(lab, name, ip, previous):
    """The port ``name``'s running sshd listens on if it stays at ``ip``; a running sshd at another
    address (the lab switched modes) is stopped, and None returned."""
    if sshd_pid(lab, name) is None:
        return None
    if previous.get(name, (None,))[0] == ip:
        return previous[name][1]
    _stop(lab, name)
    return None


def up(names=("mac4", "mac5"), lab=LAB, model_mb=2.0, reseed=False, layout=None, addresses=None,
       key_in_agent=False, net=None, control_mbit=None, data_mbit=None, scope=None, say=None):
    """Start (or keep) one sshd per host, write the inventory and ssh files, seed fixtures.
    layout: the caches' layouts (``client.parse_layout``: 'classic', 'shared' or 'host=layout,...');
    None keeps what the lab had (``seeded()``), else ``DEFAULT_LAYOUT``. addresses: 'single' (every
    host on 127.0.0.1, own ports) or 'per-host'; None keeps the lab's, else ``net.default_mode()``.
    key_in_agent: the control key gets a passphrase and the lab's ssh-agent holds it (``agent.py``);
    False takes the passphrase off and stops that agent.
    net: 'loopback' (the above) or 'netns' (a namespace per host with a control and a data link,
    ``netns.py``); None keeps the lab's, else loopback. Where namespaces cannot be made (not root,
    not Linux) the loopback lab is kept and ``say`` (a print-like callable) is told why.
    control_mbit, data_mbit: the netns links' rates (None: as the lab had, else 1000 and 10000).
    scope: the netns lab's address block and names, 'lab' or 'test' (``netns_plan.SCOPES``); None:
    as the lab had, else 'lab'."""
    names = list(names)
    for n in names:
        if not inventory.NAME_RE.fullmatch(n) or n == inventory.LOCAL:
            raise LabError(f"lab host name {n!r} must match [a-z0-9_-] and not be 'local'")
    mode = netmod.choose(addresses, lab)   # a bad mode refused before anything is touched
    kind = _net_kind(net, lab, say)
    p = paths(lab)
    layouts = parse_layout(layout, names, (seeded(lab) or {}).get("layouts") or DEFAULT_LAYOUT)
    user = getpass.getuser()
    client_pub = _keygen(p["identity"], "thunder-lab-control")
    if key_in_agent:
        agent.start(lab, p["identity"])
    else:
        agent.stop(lab, p["identity"])
    wires = _wires(lab, kind, names, control_mbit, data_mbit, scope)
    previous = _previous_hosts(lab)
    hosts = {name: _host_up(lab, i, name, mode, wires, previous, user, client_pub) for i, name in enumerate(names)}
    known = [f"[{h['ip']}]:{h['port']} {' '.join(h['key'])}" for h in hosts.values()]
    atomic_write(p["known_hosts"], "\n".join(known) + "\n")
    netmod.remember(lab, mode)
    netmod.remember_net(lab, kind)
    _write_inventory(p, hosts, user)
    _write_ssh_files(p)
    seed(p, names, model_mb, reseed, layouts, python=lab_python())
    return p["inventory"]


def _net_kind(requested, lab, say):
    """The net to make: the requested or remembered one, loopback where netns cannot be (said)."""
    kind = netmod.choose_net(requested, lab)
    why = netns.unsupported() if kind == netmod.NETNS else None
    if why:
        (say or (lambda _: None))(f"net: loopback lab kept, not netns: {why}")
        return netmod.LOOPBACK
    return kind


def _wires(lab, kind, names, control_mbit, data_mbit, scope):
    """The namespaced net's ``Plan``, made or kept, for 'netns'; None for loopback, after removing
    a namespaced net the lab had. Its sshds are stopped first whenever its namespaces go."""
    rec = netns.recorded(lab)
    if kind == netmod.LOOPBACK:
        if rec:
            _stop_sshds(lab)
            netns.down(lab)
        return None
    rec = rec or {}
    scope = scope or rec.get("scope") or "lab"
    if rec and (rec.get("names"), rec.get("scope")) != (names, scope):
        _stop_sshds(lab)
    return netns.up(lab, names, control_mbit or rec.get("control_mbit") or 1000,
                    data_mbit or rec.get("data_mbit") or 10000, scope)


def _host_up(lab, i, name, mode, wires, previous, user, client_pub):
    """Start (or keep) host ``name``'s sshd: on its loopback address, or in its namespace listening
    on its control and its data address (hosts reach each other's sshd over the data link)."""
    if wires:
        h = wires.host(name)
        ip, data_ip, prefix = h.control_ip, h.data_ip, netns.exec_prefix(h.ns)
        port = _kept_port(lab, name, ip, previous) or BASE_PORT + i   # the namespace's own addresses
    else:
        ip = data_ip = address(i, mode)
        prefix = ()
        port = _kept_port(lab, name, ip, previous) or _free_port(ip, BASE_PORT + i)
    host_pub = _start_sshd(lab, name, (ip, data_ip), port, user, client_pub, prefix)
    return {"ip": ip, "data_ip": data_ip, "port": port, "key": host_pub}


def _write_ssh_files(p):
    """``.lab/ssh_config`` for people (``ssh -F .lab/ssh_config mac4``): the lane's own settings."""
    inv = inventory.load(p["inventory"])
    atomic_write(p["ssh_config"], remote.ssh_config(inv, inv.hosts.values(), extra=[("LogLevel", "ERROR")]))


def lab_python():
    """The interpreter every lab host's inventory entry names (the project's .venv, else this one)."""
    return str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv").is_dir() else sys.executable


def base_python(python):
    """The interpreter the venv of ``python`` was made from (pyvenv.cfg), as setup-hosts' base_python."""
    cfg = Path(python).parent.parent / "pyvenv.cfg"
    keys = dict(line.split("=", 1) for line in cfg.read_text().splitlines() if "=" in line) if cfg.is_file() else {}
    keys = {k.strip(): v.strip() for k, v in keys.items()}
    if keys.get("executable"):
        return os.path.realpath(keys["executable"])
    return os.path.realpath(os.path.join(keys["home"], "python3")) if keys.get("home") else python


def _write_inventory(p, hosts, user):
    lab = p["lab"]
    python = lab_python()
    local_home = lab / "local"
    data = {
        "model": {"repo": "mlx-community/gemma-4-e2b-4bit"},
        "ssh": {"config": str(p["ssh_config"]), "known_hosts": str(p["known_hosts"]),
                "identity": str(p["identity"]), "connect_timeout": 5},
        "local": {"python": python, "dataset_root": str(local_home / DATASET_REL),
                  "hf_cache": str(local_home / CACHE_REL), "runs_root": str(local_home / RUNS_REL)},
        "hosts": {name: {"ssh_name": name, "hostname": h["ip"], "user": user, "port": h["port"],
                         "data_ip": h["data_ip"], "python": python, "base_python": base_python(python),
                         "dataset_root": str(lab / name / DATASET_REL),
                         "runs_root": str(lab / name / RUNS_REL),
                         **({"hf_cache": str(lab / name / HOST_CACHE_REL[name])} if name in HOST_CACHE_REL else {})}
                  for name, h in hosts.items()},
    }
    text = "# Written by `fab lab-up`: the lab's inventory. Use it with\n" \
           f"#   export THUNDER_INVENTORY={p['inventory']}\n" + yaml.safe_dump(data, sort_keys=False)
    atomic_write(p["inventory"], text)


def down(lab=LAB):
    """Stop exactly the sshd processes the lab started (checked by their config path), its agent,
    and remove its namespaced net, if it has one (``netns.down``): a list of (what, pid or detail)."""
    stopped = _stop_sshds(lab)
    agent_pid = agent.stop(lab)  # exactly the lab's own agent, if --key-in-agent started one
    removed = netns.down(lab)
    return stopped + ([("ssh-agent", agent_pid)] if agent_pid else []) + [("netns", r) for r in removed]


def _stop_sshds(lab):
    stopped = []
    state_root = lab / "sshd"
    for state in sorted(state_root.iterdir()) if state_root.is_dir() else []:
        pid = _stop(lab, state.name)
        if pid is not None:
            stopped.append((state.name, pid))
    return stopped


def _stop(lab, name):
    """Stop ``name``'s lab sshd if it runs (checked by its config path); its PID, else None."""
    pid = sshd_pid(lab, name)
    if pid is None:
        return None
    os.kill(pid, signal.SIGTERM)
    for _ in range(100):
        if sshd_pid(lab, name) is None or not pid_alive(pid):
            break
        time.sleep(0.05)
    return pid


def status(lab=LAB):
    """{host: pid or None} for every lab host ever started."""
    state_root = lab / "sshd"
    return {s.name: sshd_pid(lab, s.name) for s in sorted(state_root.iterdir())} if state_root.is_dir() else {}
