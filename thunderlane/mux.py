"""One OpenSSH connection to a host, opened while sync-cache's verify before runs, that the sync
launcher's ssh sessions then share (OpenSSH's ControlMaster): the launcher starts without an ssh
handshake of its own (about half of its fixed cost on the lab: a no-op launcher 0.39 s, an ssh
session 0.22 s).

The master carries the lane's ssh options (``sshopts.py``: pinned host keys only, no prompts, no
forwarding), so the sessions it carries have had the same checks. Its socket is in a 0700 folder
under local's runs root, one per run (the inventory, the host and fab's pid in its name): never
shared across inventories or runs. ``ControlPersist`` ends a master left behind by a killed fab
once it has been idle that long; :meth:`Master.close` ends it at once otherwise.

Any trouble (the socket path too long or not plain, the master not up in time) only means no
sharing: the launcher then opens its own connection, as it always did.
"""
import hashlib
import os
import shlex
import socket
import struct
import subprocess
import time

from . import layout
from .sshopts import ssh_options

SOCKET_MAX = 100     # bytes of a socket path: macOS's sun_path holds 104
PERSIST = 30         # seconds an idle master stays once its fab is gone (the launcher's own value)
FOLDER = ".ssh-mux"


def control_path(inv, host, pid=None):
    """The master's socket path for ``host`` in this run, or None when it cannot be one: too long
    for a socket, or a path that needs quoting (the launcher splits ``--ssh`` on spaces)."""
    key = f"{os.path.realpath(str(inv.path))}\0{host.name}\0{host.destination}\0{host.port}"
    name = f"{hashlib.sha256(key.encode()).hexdigest()[:12]}.{pid or os.getpid()}"
    path = str(layout.local(inv).root / FOLDER / name)
    if len(path.encode()) > SOCKET_MAX or shlex.quote(path) != path:
        return None
    return path


def client_options(path):
    """ssh options that send a session through the master at ``path``. They go before any the
    launcher adds (ssh keeps an option's first value), so its own ControlPath is not used; with
    ``auto``, a master that is gone is replaced by a connection of the launcher's own."""
    return ["-o", f"ControlPath={path}", "-o", "ControlMaster=auto"]


def master_argv(inv, host, path):
    """The master: authenticated, then in the background (ControlPersist), no command, no stdin."""
    return ["ssh", *ssh_options(inv, host), "-o", "ControlMaster=yes", "-o", f"ControlPath={path}",
            "-o", f"ControlPersist={PERSIST}", "-n", "-N", host.destination]


class Master:
    """A master connection to ``host``, being opened from creation on. :meth:`ready` waits for it;
    :meth:`close` ends it (or the attempt), whatever state it is in."""

    def __init__(self, inv, host):
        self.inv, self.host = inv, host
        self.path = control_path(inv, host)
        self.proc = None
        if self.path is None or not _private_folder(os.path.dirname(self.path)):
            self.path = None
            return
        try:  # left by a master of an earlier fab with this pid, killed: ssh would not listen beside it
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        except OSError:
            self.path = None
            return
        try:  # a session of its own: a Ctrl-C meant for fab's launcher does not reach it
            self.proc = subprocess.Popen(master_argv(inv, host, self.path), stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        except OSError:
            self.path = None

    def ready(self, timeout):
        """Whether the master is up (it went to the background, its socket is there), waiting up to
        ``timeout`` seconds; a master not up by then is ended and never used."""
        if self.proc is None:
            return False
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.close()
            return False
        if code != 0 or not os.path.exists(self.path):
            self.close()
            return False
        return True

    def close(self):
        """End the master: the attempt still running (our own process, by its pid), or the master
        in the background (asked to exit through its socket; the launcher may have done so)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if os.path.exists(self.path):
            terminate(self.path)  # as ``ssh -O exit`` asks it, without starting an ssh
            if not _gone(self.path, 2.0):
                argv = ["ssh", *ssh_options(self.inv, self.host), "-o", f"ControlPath={self.path}", "-O", "exit",
                        self.host.destination]
                subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               timeout=10)
                _gone(self.path, 2.0)
        self.proc = None


MUX_MSG_HELLO, MUX_C_TERMINATE = 0x00000001, 0x10000005  # OpenSSH's PROTOCOL.mux, version 4


def terminate(path, timeout=2.0):
    """Ask the master at ``path`` to exit, over its own protocol (hello, then MUX_C_TERMINATE). Its
    answer may never come (it exits first: ``ssh -O exit`` takes the closed socket as done), so
    whether it went is told by its socket's removal (:func:`_gone`)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(path)
            s.sendall(_packet(MUX_MSG_HELLO, 4))
            if struct.unpack(">I", _read_packet(s)[:4])[0] == MUX_MSG_HELLO:
                s.sendall(_packet(MUX_C_TERMINATE, 1))
                _read_packet(s)
    except (OSError, struct.error):
        pass


def _packet(*words):
    body = struct.pack(f">{len(words)}I", *words)
    return struct.pack(">I", len(body)) + body


def _read_packet(s):
    size = struct.unpack(">I", _read_exactly(s, 4))[0]
    if size > 65536:
        raise OSError("mux packet too large")
    return _read_exactly(s, size)


def _read_exactly(s, n):
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            raise OSError("mux socket closed")
        data += chunk
    return data


def _private_folder(folder):
    """``folder`` made if need be, 0700 and ours (sockets in it let whoever reaches them run commands
    on the host); False if it cannot be."""
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
        st = os.stat(folder)
        if st.st_uid != os.getuid():
            return False
        if st.st_mode & 0o077:
            os.chmod(folder, 0o700)
        return True
    except OSError:
        return False


def _gone(path, seconds):
    """Wait until the master has removed its socket (it does as it exits): whether it has."""
    deadline = time.monotonic() + seconds
    while os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.005)
    return not os.path.exists(path)
