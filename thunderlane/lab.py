"""The lab: one real OpenSSH ``sshd`` per compute host on its own loopback address, each with its
own host key, key-only login and home at ``.lab/<host>/``; the control side under ``.lab/local/``.

``up()`` writes ``.lab/hosts.yaml`` (an inventory), ``.lab/ssh_config`` and ``.lab/known_hosts``
with every host key pinned, and seeds the handoff's situation: the corpus everywhere, the complete
model cache on local and on every host but the first, which gets a partial one.
"""
import getpass
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

from . import inventory

ROOT = Path(__file__).resolve().parent.parent
LAB = ROOT / ".lab"
DATASET_REL = "thunder-train/data/gemma4_e2b_nko_correction_partial_real"
RUNS_REL = "thunder-train/runs"
CACHE_REL = ".cache/huggingface/hub"
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
BASE_PORT = 22400


class LabError(RuntimeError):
    pass


def paths(lab=LAB):
    return {"lab": lab, "inventory": lab / "hosts.yaml", "ssh_config": lab / "ssh_config",
            "known_hosts": lab / "known_hosts", "identity": lab / "local" / "id_ed25519",
            "fixtures": lab / "fixtures"}


NET_VAR = "THUNDER_LAB_NET"  # another loopback /24 for a second lab (benchmarks beside tests)


def address(index):
    """Loopback address of the index-th lab host: 127.77.0.10, .11, ... (or $THUNDER_LAB_NET.10)."""
    net = os.environ.get(NET_VAR, "127.77.0")
    if not re.match(r"^127\.\d{1,3}\.\d{1,3}$", net):
        raise LabError(f"{NET_VAR}={net!r}: give the first three parts of a loopback address, e.g. 127.78.0")
    return f"{net}.{10 + index}"


def _run(argv):
    p = subprocess.run(argv, capture_output=True, text=True)
    if p.returncode:
        raise LabError(f"{argv[0]} failed ({p.returncode}): {p.stderr.strip()}")
    return p.stdout


def _keygen(path, comment):
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])
    return path.with_suffix(".pub").read_text().split()[:2]


def _state_dir(lab, name):
    return lab / "sshd" / name


def _pid(lab, name):
    """PID of the lab sshd for ``name`` if it is alive and really ours, else None."""
    pidfile = _state_dir(lab, name) / "sshd.pid"
    try:
        pid = int(pidfile.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    # sshd rewrites its title ("sshd: /usr/sbin/sshd -f CONFIG ... [listener]"): match the path
    config = str(_state_dir(lab, name) / "sshd_config").encode()
    return pid if config in cmdline else None


def _free_port(ip, start):
    for port in range(start, start + 200):
        with socket.socket() as s:
            try:
                s.bind((ip, port))
                return port
            except OSError:
                continue
    raise LabError(f"no free port on {ip} from {start}")


def _sshd_config(lab, name, ip, port, user):
    state, home = _state_dir(lab, name), lab / name
    return "\n".join([
        f"ListenAddress {ip}:{port}",
        f"HostKey {state / 'ssh_host_ed25519_key'}",
        f"PidFile {state / 'sshd.pid'}",
        f"AuthorizedKeysFile {state / 'authorized_keys'}",
        "PubkeyAuthentication yes", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
        "UsePAM no", "StrictModes no", "PermitRootLogin prohibit-password", f"AllowUsers {user}",
        f"SetEnv HOME={home} THUNDER_LAB_HOST={name}",
        "MaxStartups 64:30:128", "MaxSessions 64", "LogLevel ERROR", "",
    ])


def _start_sshd(lab, name, ip, port, user, client_pub):
    state = _state_dir(lab, name)
    state.mkdir(parents=True, exist_ok=True)
    (lab / name).mkdir(parents=True, exist_ok=True)
    host_pub = _keygen(state / "ssh_host_ed25519_key", f"lab-{name}")
    (state / "authorized_keys").write_text(" ".join(client_pub) + "\n")
    (state / "sshd_config").write_text(_sshd_config(lab, name, ip, port, user))
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    if _pid(lab, name) is None:
        _run([SSHD, "-f", str(state / "sshd_config"), "-E", str(state / "sshd.log")])
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


def _previous_ports(lab):
    """Ports already given to hosts by an earlier lab-up, so that re-running keeps them."""
    try:
        data = yaml.safe_load((lab / "hosts.yaml").read_text())
        return {n: h["port"] for n, h in data["hosts"].items()}
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return {}


def up(names=("mac4", "mac5"), lab=LAB, model_mb=2.0, reseed=False):
    """Start (or keep) one sshd per host, write the inventory and ssh files, seed fixtures."""
    names = list(names)
    for n in names:
        if not inventory.NAME_RE.match(n) or n == inventory.LOCAL:
            raise LabError(f"lab host name {n!r} must match [a-z0-9_-] and not be 'local'")
    p = paths(lab)
    user = getpass.getuser()
    client_pub = _keygen(p["identity"], "thunder-lab-control")
    ports = _previous_ports(lab)
    hosts = {}
    for i, name in enumerate(names):
        ip = address(i)
        port = ports.get(name) if _pid(lab, name) else None
        port = port or _free_port(ip, BASE_PORT + i)
        host_pub = _start_sshd(lab, name, ip, port, user, client_pub)
        hosts[name] = {"ip": ip, "port": port, "key": host_pub}
    _write_ssh_files(p, hosts, user)
    _write_inventory(p, hosts, user)
    seed(p, names, model_mb, reseed)
    return p["inventory"]


def _write_ssh_files(p, hosts, user):
    known = [f"[{h['ip']}]:{h['port']} {' '.join(h['key'])}" for h in hosts.values()]
    _atomic_write(p["known_hosts"], "\n".join(known) + "\n")
    blocks = []
    for name, h in hosts.items():
        blocks.append("\n".join([
            f"Host {name}", f"  HostName {h['ip']}", f"  Port {h['port']}", f"  User {user}",
            f"  IdentityFile {p['identity']}", "  IdentitiesOnly yes", "  BatchMode yes",
            "  StrictHostKeyChecking yes", f"  UserKnownHostsFile {p['known_hosts']}",
            "  CheckHostIP no", "  ConnectTimeout 10", "  LogLevel ERROR", ""]))
    _atomic_write(p["ssh_config"], "\n".join(blocks))


def _write_inventory(p, hosts, user):
    lab = p["lab"]
    python = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv").is_dir() else sys.executable
    local_home = lab / "local"
    data = {
        "model": {"repo": "mlx-community/gemma-4-e2b-4bit"},
        "ssh": {"config": str(p["ssh_config"]), "known_hosts": str(p["known_hosts"]),
                "identity": str(p["identity"]), "connect_timeout": 5},
        "local": {"python": python, "dataset_root": str(local_home / DATASET_REL),
                  "hf_cache": str(local_home / CACHE_REL), "runs_root": str(local_home / RUNS_REL)},
        "hosts": {name: {"ssh_name": name, "hostname": h["ip"], "user": user, "port": h["port"],
                         "data_ip": h["ip"], "python": python,
                         "dataset_root": str(lab / name / DATASET_REL),
                         "runs_root": str(lab / name / RUNS_REL)}
                  for name, h in hosts.items()},
    }
    text = "# Written by `fab lab-up`: the lab's inventory. Use it with\n" \
           f"#   export THUNDER_INVENTORY={p['inventory']}\n" + yaml.safe_dump(data, sort_keys=False)
    _atomic_write(p["inventory"], text)


def _atomic_write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def down(lab=LAB):
    """Stop exactly the sshd processes the lab started (checked by their config path)."""
    stopped = []
    state_root = lab / "sshd"
    for state in sorted(state_root.iterdir()) if state_root.is_dir() else []:
        pid = _pid(lab, state.name)
        if pid is None:
            continue
        os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            if _pid(lab, state.name) is None or not Path(f"/proc/{pid}").exists():
                break
            time.sleep(0.05)
        stopped.append((state.name, pid))
    return stopped


def status(lab=LAB):
    """{host: pid or None} for every lab host ever started."""
    state_root = lab / "sshd"
    return {s.name: _pid(lab, s.name) for s in sorted(state_root.iterdir())} if state_root.is_dir() else {}


# --- fixtures ------------------------------------------------------------------------------------

def fixtures(p, model_mb):
    """Build the corpus and the model cache once under .lab/fixtures (deterministic, offline).
    The model is built in a child process, so that `fab` itself never loads mlx."""
    from .fixtures.corpus import build_corpus, corpus_texts
    corpus = p["fixtures"] / "corpus"
    if not (corpus / "manifest.json").exists():
        build_corpus(corpus)
    texts = p["fixtures"] / "texts.txt"
    _atomic_write(texts, "\n".join(corpus_texts(corpus)) + "\n")
    hub = p["fixtures"] / f"hub-{model_mb:g}mb"
    out = _run([sys.executable, "-m", "thunderlane.fixtures.model", "--cache-root", str(hub),
                "--texts-file", str(texts), "--size-mb", str(model_mb)])
    return corpus, Path(json.loads(out)["repo_dir"])


def seed(p, names, model_mb, reseed=False):
    """The handoff's situation: corpus everywhere, full cache on local and all hosts but the
    first, a partial cache on the first (configs and tokenizer, no shards, an .incomplete blob)."""
    lab = p["lab"]
    marker = lab / ".seeded"
    wanted = f"{','.join(names)} {model_mb:g}"
    if not reseed and marker.exists() and marker.read_text() == wanted:
        return
    corpus, repo = fixtures(p, model_mb)
    for i, home in enumerate([lab / "local", *(lab / n for n in names)]):
        _copy_tree(corpus, home / DATASET_REL)
        cache = home / CACHE_REL
        shutil.rmtree(cache, ignore_errors=True)
        shutil.rmtree(home / RUNS_REL, ignore_errors=True)
        if i == 1:
            seed_partial(repo, cache)
        else:
            _copy_tree(repo, cache / repo.name)
    marker.write_text(wanted)


def _copy_tree(src, dst):
    shutil.rmtree(dst, ignore_errors=True)
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src, dst, symlinks=True)
    shutil.copystat(src, dst)


def seed_partial(repo, cache, fraction=0.1):
    """A cache as an interrupted download leaves it: every file but the weight shards, one shard's
    bytes cut short as ``<sha256>.incomplete`` (about ``fraction`` of the total), and a lock."""
    dst = cache / repo.name
    _copy_tree(repo, dst)
    rev = (dst / "refs" / "main").read_text().strip()
    snap = dst / "snapshots" / rev
    shards = sorted(f for f in snap.iterdir() if f.name.endswith(".safetensors"))
    total = sum(os.path.getsize(f) for f in snap.iterdir())
    first_blob = None
    for link in shards:
        blob = dst / "blobs" / os.readlink(link).split("/")[-1]
        first_blob = first_blob or blob
        link.unlink()
        if blob != first_blob:
            blob.unlink()
    present = sum(os.path.getsize(f) for f in snap.iterdir())
    keep = max(1, int(total * fraction) - present)
    partial = first_blob.parent / (first_blob.name + ".incomplete")
    with open(first_blob, "rb") as src, open(partial, "wb") as dst_file:
        while keep > 0:  # in chunks: a 1 GB model must not be read into memory
            block = src.read(min(keep, 1 << 20))
            dst_file.write(block)
            keep -= len(block)
    first_blob.unlink()
    locks = cache / ".locks" / repo.name
    locks.mkdir(parents=True, exist_ok=True)
    lock = locks / (first_blob.name + ".lock")
    lock.touch()
    old = time.time() - 3600
    os.utime(lock, (old, old))
