"""The inventory's known_hosts file as paramiko will read it: the lines it cannot honour, found
once per version of the file (a run over many hosts reads it once, not once per host)."""
import os
import threading

import paramiko
from paramiko.hostkeys import HostKeyEntry

_checked = {}  # {(path, size, mtime_ns): problem or None}
_lock = threading.Lock()


def problem(path):
    """The first line of the known_hosts file ``path`` that paramiko cannot honour, as
    ``(line number, why)``, or None. paramiko 5.1 has no ``@revoked``/``@cert-authority``: it reads
    the marker as a host name and the host pattern as the key type, and ``load_host_keys`` fails
    with InvalidHostKey (or, were the base64 to decode, skips the line: a revoked key accepted)."""
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
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
    """:func:`problem`, remembered for as long as the file keeps its size and mtime."""
    st = os.stat(path)
    version = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    with _lock:
        if version in _checked:
            return _checked[version]
    found = problem(path)
    with _lock:
        _checked[version] = found
    return found
