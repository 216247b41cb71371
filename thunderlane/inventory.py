"""The inventory: the control side and the compute hosts, read from ``hosts.yaml``.

Every value here ends up in an ssh command line, an rsync argument or a remote shell, so each one
is validated by shape before anything runs, and a bad one is refused naming the host and field.
"""
import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .sshopts import CIPHERS

ENV_VAR = "THUNDER_INVENTORY"
DEFAULT_PATH = Path(__file__).resolve().parent.parent / "hosts.yaml"
LOCAL = "local"
DEFAULT_REPO = "mlx-community/gemma-4-e2b-4bit"  # the users' model; the lab's fixture stands in for it

# Every value is checked with ``fullmatch``: ``re.match(r"...$")`` also accepts a trailing newline.
# (The anchors stay so that a caller elsewhere still using ``.match`` gets no prefix match.)
NAME_RE = re.compile(r"^[a-z0-9_-]{1,32}$")
SSH_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}$")
HOSTNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,252}$")
USER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}$")
REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
PATH_BAD_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")  # C0, DEL, C1 (NEL), Unicode line breaks
# Paths may hold white space and most punctuation (``/Volumes/T7 Shield``, ``Application Support``,
# ``(old)``, ``&``, ``#``): every one is passed as an argv element or shlex-quoted for a remote shell.
# Refused are only the characters that cannot be carried through every layer, named in the error:
# ``%`` (ssh expands ``%h``-style tokens in IdentityFile, UserKnownHostsFile and -o values), the
# quote characters and backslash (ssh_config and rsync's ``-e`` have their own, narrower quoting, and
# the launchers' remote commands are built from them), ``$`` and backtick (expansions, should a
# layer ever lose its quotes) and rsync's wildcards ``* ? [`` (an rsync server that receives
# protected arguments expands them itself).
PATH_REFUSED = {"%": "a % (ssh expands %-tokens)", "'": "a quote", '"': "a quote", "\\": "a backslash",
                "$": "a $", "`": "a backtick", "*": "a wildcard", "?": "a wildcard", "[": "a wildcard"}
RSYNC_PATH_RE = re.compile(r"^[A-Za-z0-9_./+-]+$")
IPV4_ONLY = ("only IPv4 addresses are supported (the Thunderbolt bridge and LAN addresses are IPv4; "
             "an IPv6 literal would need brackets in ssh, rsync and the mlx hostfile)")

HOST_FIELDS = {"ssh_name", "hostname", "user", "port", "data_ip", "python",
               "dataset_root", "hf_cache", "runs_root", "rsync_path", "base_python", "rdma", "data_ssh_port"}
HOST_REQUIRED = HOST_FIELDS - {"hf_cache", "rsync_path", "base_python", "rdma", "data_ssh_port"}
CIPHERS_RE = re.compile(r"^[a-z0-9][a-z0-9@.-]{0,63}(,[a-z0-9][a-z0-9@.-]{0,63}){0,15}$")
RDMA_RE = re.compile(r"^rdma_[A-Za-z0-9]{1,32}$")  # ibv_devices' names on macOS: rdma_en2, rdma_en3...
LOCAL_FIELDS = {"python", "dataset_root", "hf_cache", "runs_root"}
LOCAL_REQUIRED = {"dataset_root", "runs_root"}
SSH_FIELDS = {"config", "known_hosts", "identity", "connect_timeout", "probe_timeout", "deep_probe_timeout",
              "rsync_timeout", "peer_transport", "ciphers"}
PEER_TRANSPORTS = ("ssh", "rsyncd")
MODEL_FIELDS = {"repo"}
TOP_FIELDS = {"model", "local", "ssh", "hosts"}


class InventoryError(ValueError):
    """A bad inventory; the message names the file, the host and the field."""


@dataclass(frozen=True)
class Host:
    """One machine of the lane. ``name`` is the inventory key; ``local`` has no SSH fields."""
    name: str
    python: str
    dataset_root: str
    runs_root: str
    hf_cache: str | None = None
    ssh_name: str | None = None
    hostname: str | None = None
    user: str | None = None
    port: int = 22
    data_ip: str | None = None
    rsync_path: str = "rsync"
    base_python: str | None = None  # the interpreter setup-hosts builds the venv at ``python`` from
    rdma: tuple = ()  # ((peer host, RDMA device toward it), ...): the jaccl backend's hostfile
    data_ssh_port: int | None = None  # the sshd port at data_ip, for peer sync (default: port)

    @property
    def is_local(self):
        return self.name == LOCAL

    @property
    def data_port(self):
        """The port the host's sshd answers on at its data address (peer sync)."""
        return self.data_ssh_port or self.port

    @property
    def destination(self):
        """``user@hostname`` as ssh and rsync take it."""
        return f"{self.user}@{self.hostname}"


@dataclass(frozen=True)
class SshSettings:
    """What Fabric, rsync and ssh all use: one config, one pinned known_hosts, one key."""
    known_hosts: str
    config: str | None = None
    identity: str | None = None
    connect_timeout: int = 10
    probe_timeout: int = 120       # seconds a probe of a host may take (Fabric's command timeout)
    deep_probe_timeout: int = 1800  # the same for a probe that re-hashes a model cache (--deep)
    rsync_timeout: int = 300       # rsync --timeout: seconds without any data before rsync gives up
    peer_transport: str = "ssh"    # host-to-host sync: rsync over the peer ssh, or a one-shot rsync daemon
    ciphers: str = CIPHERS         # OpenSSH's Ciphers for every ssh the lane starts (sshopts.CIPHERS)


@dataclass(frozen=True)
class Inventory:
    path: str
    repo_id: str
    local: Host
    hosts: dict = field(default_factory=dict)
    ssh: SshSettings = None

    def host(self, name):
        """The host called ``name`` (``local`` included); refuse names not in the inventory."""
        if name == LOCAL:
            return self.local
        if name not in self.hosts:
            known = ", ".join(sorted(self.hosts)) or "none"
            raise InventoryError(f"{self.path}: no host named {name!r} (hosts: {known})")
        return self.hosts[name]

    def select(self, names=None):
        """Compute hosts by name (a comma list or iterable); all of them when ``names`` is empty."""
        if not names:
            return list(self.hosts.values())
        if isinstance(names, str):
            names = [n.strip() for n in names.split(",") if n.strip()]
        return [self.host(n) for n in names if n != LOCAL]


def resolve_path():
    """The inventory file: ``$THUNDER_INVENTORY`` if set, else the repo's ``hosts.yaml``."""
    return Path(os.environ.get(ENV_VAR) or DEFAULT_PATH)


def load(path=None):
    """Read and validate an inventory file."""
    path = Path(path) if path else resolve_path()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise InventoryError(f"{path}: cannot read inventory: {e.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise InventoryError(f"{path}: not valid YAML: {e}") from None
    return parse(data, str(path))


def parse(data, where="<inventory>"):
    """Validate an inventory mapping and build the :class:`Inventory`."""
    check_mapping(data, where, "inventory", TOP_FIELDS, {"local", "hosts"})
    model = data.get("model") or {}
    check_mapping(model, where, "model", MODEL_FIELDS, set())
    repo = model.get("repo", DEFAULT_REPO)
    if not isinstance(repo, str) or not REPO_RE.fullmatch(repo):
        raise InventoryError(f"{where}: model.repo: {repo!r} is not an org/name repo id")
    ssh = _ssh(data.get("ssh") or {}, where)
    local = _local(data["local"], where)
    hosts_data = data["hosts"]
    if not isinstance(hosts_data, dict) or not hosts_data:
        raise InventoryError(f"{where}: hosts: must map host names to their settings")
    hosts = {}
    for name, spec in hosts_data.items():
        hosts[name] = _host(name, spec, where)
    _unique(hosts, where, "hostname and port", lambda h: (h.hostname.lower(), h.port))
    _unique(hosts, where, "ssh_name", lambda h: h.ssh_name.lower())  # ssh matches Host names caselessly
    # hosts sharing this machine's loopback are one machine (the lab's single-address mode, each
    # host with its own ports; mlx.launch gives every rank its own ring port): any other is a mistake
    _unique({n: h for n, h in hosts.items() if not _loopback(h.data_ip)}, where, "data_ip", lambda h: h.data_ip)
    for h in hosts.values():
        unknown = sorted({peer for peer, _ in h.rdma} - set(hosts))
        if unknown:
            raise InventoryError(f"{where}: host {h.name}: rdma: {unknown[0]!r} is not an inventory host")
    return Inventory(path=where, repo_id=repo, local=local, hosts=hosts, ssh=ssh)


def check_mapping(value, where, what, allowed, required, error=None):
    """A config section is a mapping with only known keys and every required one; else ``error``
    (InventoryError by default) naming the file, the section and the first offending field."""
    error = error or InventoryError
    if not isinstance(value, dict):
        raise error(f"{where}: {what}: expected a mapping, got {type(value).__name__}")
    unknown = sorted(set(map(str, value)) - allowed)
    if unknown:
        raise error(f"{where}: {what}: unknown field {unknown[0]!r} (known: {', '.join(sorted(allowed))})")
    missing = sorted(required - set(value))
    if missing:
        raise error(f"{where}: {what}: missing field {missing[0]!r}")




def _local(spec, where):
    check_mapping(spec, where, "host local", LOCAL_FIELDS, LOCAL_REQUIRED)
    values = {k: abs_path(spec[k], where, LOCAL, k) for k in LOCAL_FIELDS if spec.get(k) is not None}
    return Host(name=LOCAL, python=values.pop("python", None) or _own_python(), **values)


def _own_python():
    import sys
    return sys.executable


def _host(name, spec, where):
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or name == LOCAL:
        raise InventoryError(f"{where}: host {name!r}: a host name must match [a-z0-9_-] "
                             f"(1-32 characters) and not be 'local'")
    check_mapping(spec, where, f"host {name}", HOST_FIELDS, HOST_REQUIRED)
    values = {}
    for key in ("python", "dataset_root", "runs_root", "hf_cache", "rsync_path", "base_python"):
        if spec.get(key) is not None:
            values[key] = abs_path(spec[key], where, name, key) if key != "rsync_path" \
                else _rsync_path(spec[key], where, name)
    values["ssh_name"] = _match(spec["ssh_name"], SSH_NAME_RE, where, name, "ssh_name")
    values["hostname"] = _hostname(spec["hostname"], where, name)
    values["user"] = _match(spec["user"], USER_RE, where, name, "user")
    values["port"] = _port(spec["port"], where, name)
    if spec.get("data_ssh_port") is not None:
        values["data_ssh_port"] = _port(spec["data_ssh_port"], where, name, "data_ssh_port")
    values["data_ip"] = _ip(spec["data_ip"], where, name)
    values["rdma"] = _rdma(spec.get("rdma") or {}, where, name)
    return Host(name=name, **values)


def _rdma(spec, where, host):
    """``rdma: {peer: rdma_enN}``: the device this host reaches each peer through (jaccl only)."""
    if not isinstance(spec, dict) or not all(isinstance(k, str) and NAME_RE.fullmatch(k) and k != host
                                             for k in spec):
        raise InventoryError(f"{where}: host {host}: rdma: a mapping of other hosts' names to RDMA devices")
    for peer, device in spec.items():
        if not isinstance(device, str) or not RDMA_RE.fullmatch(device):
            raise InventoryError(f"{where}: host {host}: rdma.{peer}: {device!r} is not an RDMA device name "
                                 f"(as ibv_devices lists them, e.g. rdma_en3)")
    return tuple(sorted(spec.items()))


def _ssh(spec, where):
    check_mapping(spec, where, "ssh", SSH_FIELDS, set())
    timeouts = {key: _seconds(spec, where, key, default, most) for key, default, most in
                (("connect_timeout", 10, 120), ("probe_timeout", 120, 3600),
                 ("deep_probe_timeout", 1800, 86400), ("rsync_timeout", 300, 3600))}
    known = spec.get("known_hosts", "~/.ssh/known_hosts")
    transport = spec.get("peer_transport", "ssh")
    if transport not in PEER_TRANSPORTS:
        raise InventoryError(f"{where}: ssh.peer_transport: {transport!r} is not one of {', '.join(PEER_TRANSPORTS)}")
    ciphers = spec.get("ciphers", CIPHERS)
    if not isinstance(ciphers, str) or not CIPHERS_RE.fullmatch(ciphers):
        raise InventoryError(f"{where}: ssh.ciphers: {ciphers!r} is not a comma-separated list of OpenSSH cipher "
                             f"names (as `ssh -Q cipher` prints them, e.g. {CIPHERS})")
    return SshSettings(
        known_hosts=_local_file(known, where, "ssh.known_hosts"), ciphers=ciphers,
        config=_local_file(spec["config"], where, "ssh.config") if spec.get("config") else None,
        identity=_local_file(spec["identity"], where, "ssh.identity") if spec.get("identity") else None,
        peer_transport=transport, **timeouts,
    )


def _seconds(spec, where, key, default, most):
    value = spec.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= most:
        raise InventoryError(f"{where}: ssh.{key}: {value!r} is not 1-{most} seconds")
    return value


def _local_file(value, where, key):
    """A control-side file: absolute, or ``~/...`` expanded here."""
    if isinstance(value, str) and value.startswith("~/"):
        value = os.path.expanduser(value)
    return abs_path(value, where, LOCAL, key)


def abs_path(value, where, host, key):
    """An absolute, normalised path with no ``..``, not ``/`` and no control characters."""
    if not isinstance(value, str) or not value:
        raise InventoryError(f"{where}: host {host}: {key}: expected an absolute path, got {value!r}")
    if PATH_BAD_CHARS.search(value):
        raise InventoryError(f"{where}: host {host}: {key}: control character in path {value!r}")
    refused = path_refusal(value)
    if refused:
        raise InventoryError(f"{where}: host {host}: {key}: {value!r} has {refused}, which the lane cannot "
                             f"carry safely through ssh, rsync and the remote shells; rename the folder "
                             f"or point to it through a symlink (refused: {' '.join(PATH_REFUSED)})")
    if not value.startswith("/"):
        raise InventoryError(f"{where}: host {host}: {key}: {value!r} is a relative path; "
                             f"give an absolute one")
    parts = value.split("/")
    if ".." in parts:
        raise InventoryError(f"{where}: host {host}: {key}: {value!r} climbs with '..'")
    norm = os.path.normpath(value)
    if norm == "/":
        raise InventoryError(f"{where}: host {host}: {key}: '/' is not an acceptable root")
    return norm


def path_refusal(value):
    """What makes ``value`` a path the lane refuses (``'a quote'``...), or None. Control
    characters are :data:`PATH_BAD_CHARS`' job."""
    for ch in value:
        if ch in PATH_REFUSED:
            return f"{PATH_REFUSED[ch]} ({ch!r})"
    return None


def _rsync_path(value, where, host):
    if isinstance(value, str) and RSYNC_PATH_RE.fullmatch(value) and not value.startswith("-"):
        return value
    raise InventoryError(f"{where}: host {host}: rsync_path: {value!r} must be a program name or path")


def _match(value, regex, where, host, key):
    if isinstance(value, str) and regex.fullmatch(value):
        return value
    raise InventoryError(f"{where}: host {host}: {key}: {value!r} is not a valid {key}")


def _port(value, where, host, key="port"):
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535:
        return value
    raise InventoryError(f"{where}: host {host}: {key}: {value!r} is not a port number")


def _hostname(value, where, host):
    if isinstance(value, str) and ":" in value:
        raise InventoryError(f"{where}: host {host}: hostname: {value!r} looks like an IPv6 literal; "
                             f"{IPV4_ONLY}")
    return _match(value, HOSTNAME_RE, where, host, "hostname")


def _ip(value, where, host):
    try:
        ip = ipaddress.ip_address(value if isinstance(value, str) else "")
    except ValueError:
        raise InventoryError(f"{where}: host {host}: data_ip: {value!r} is not an IP address") from None
    if ip.version != 4:
        raise InventoryError(f"{where}: host {host}: data_ip: {value!r} is IPv6; {IPV4_ONLY}")
    return str(ip)


def _loopback(ip):
    return ip is not None and ipaddress.ip_address(ip).is_loopback


def _unique(hosts, where, what, key):
    """Refuse two hosts with the same ``key``: mlx.launch would send a rank to the wrong machine."""
    seen = {}
    for host in hosts.values():
        value = key(host)
        if value in seen:
            raise InventoryError(f"{where}: hosts {seen[value]} and {host.name} share the same {what} "
                                 f"({value!r}); each host needs its own")
        seen[value] = host.name
