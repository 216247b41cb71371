"""The inventory's known_hosts file as paramiko will read it: the lines it cannot honour, found
once per version of the file (a run over many hosts reads it once, not once per host)."""
import hashlib
import threading

import paramiko
from paramiko.hostkeys import HostKeyEntry

_checked = {}  # {sha256 of the file's bytes: problem or None}
_lock = threading.Lock()


def problem(path, text=None):
    """The first line of the known_hosts file ``path`` that paramiko cannot honour, as
    ``(line number, why)``, or None. paramiko 5.1 has no ``@revoked``/``@cert-authority``: it reads
    the marker as a host name and the host pattern as the key type, and ``load_host_keys`` fails
    with InvalidHostKey (or, were the base64 to decode, skips the line: a revoked key accepted).
    ``text``: the file's content, when already read."""
    if text is None:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if line.startswith("@"):
            return number, (f"{line.split()[0][:40]!r} marker: the lane's Fabric connections (paramiko) "
                            f"cannot honour @revoked or @cert-authority lines")
        if not line or line.startswith("#"):
            continue
        try:
            HostKeyEntry.from_line(line, number)
        except paramiko.SSHException:
            continue  # paramiko skips these lines, as OpenSSH does
        except Exception as e:  # noqa: BLE001 - InvalidHostKey, or a key paramiko chokes on
            return number, f"not a host key line paramiko can read ({type(e).__name__})"
    return None


def problem_once(path):
    """:func:`problem`, remembered for as long as the file's bytes are the same: keyed by their
    sha256 (reading the file is cheap, parsing every key is the cost; an edit can keep the size
    and, on a coarse clock, the mtime)."""
    with open(path, "rb") as f:
        data = f.read()
    version = hashlib.sha256(data).digest()
    with _lock:
        if version in _checked:
            return _checked[version]
    found = problem(path, data.decode("utf-8"))
    with _lock:
        _checked[version] = found
    return found


_parsed = {}  # {sha256 of the file's bytes: paramiko HostKeys read from them}


def _digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).digest()


def pin(host_keys, path, hostname, port):
    """Add to ``host_keys`` (a connection's ``client.get_host_keys()``) the keys the known_hosts
    file ``path`` pins for ``hostname:port``: what ``SSHClient.load_host_keys`` would give its
    check of that host, with the file parsed once per version of its bytes. Parsed for each
    connection, a run over N hosts decoded N x N keys."""
    version = _digest(path)
    with _lock:
        parsed = _parsed.get(version)
    if parsed is None:
        parsed = paramiko.HostKeys(path)
        if _digest(path) == version:  # what was parsed is that version (no edit in between)
            with _lock:
                _parsed[version] = parsed
    name = hostname if port == 22 else f"[{hostname}]:{port}"  # as SSHClient.connect looks it up
    for keytype, key in (parsed.lookup(name) or {}).items():
        host_keys.add(name, keytype, key)
