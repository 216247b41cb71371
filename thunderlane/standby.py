"""A probe started on a host ahead of time, answering when told to: the verify after a sync.

The sync's second verify costs an ssh handshake and an interpreter start (its imports included)
after the transfer. Here both happen while the launcher sends: the probe's interpreter starts on
the host, loads its code, and waits on stdin; once the launcher has exited, one line (``go``)
makes it gather its facts, so they are read after the transfer, never before it. Closing the
channel instead (the launcher failed) ends the waiting interpreter without any scan.

Any trouble with the standby (the session could not open, the host went away) is not a verdict:
the caller asks again the usual way (:func:`remote.ask`), which reports the host's error itself.
"""
import shlex
import socket
import threading
import time

import paramiko

from .remote import MAX_OUTPUT, PROBE_SOURCE, HostError, decode, open_session, parse_answers

GO = b"go\n"
# The bundle run under a name other than __main__ (so its own entry does not fire), the cache
# root's lookup module loaded ahead (the probe imports it at its first scan when no root is given),
# then the wait; stdin closed without "go" ends it quietly.
WRAPPER = """import sys
ns = {"__name__": "thunderlane_probe", "__package__": None}
exec(compile(%r, "<thunderlane probe>", "exec"), ns)
if "-" in sys.argv[1:]:
    try:
        import huggingface_hub.constants
    except ImportError:
        pass
if sys.stdin.readline() != "go\\n":
    sys.exit(0)
sys.exit(ns["main"](sys.argv[1:]))
"""


class StandbyProbe:
    """``query`` (one of ``facts.py``'s) on ``host``, its interpreter started in the background at
    creation; :meth:`answer` tells it to go and returns the parsed facts, or None when the standby
    is not usable (then ask the usual way)."""

    def __init__(self, inv, host, query):
        self.inv, self.host, self.query = inv, host, query
        self.conn = self.channel = None
        self.failed = self.closed = False
        self._lock = threading.Lock()
        self._ready = threading.Thread(target=self._start, daemon=True)
        self._ready.start()

    def _start(self):
        try:
            conn = open_session(self.inv, self.host)
            with self._lock:
                if self.closed:  # closed while the handshake ran: nothing may stay open behind it
                    conn.close()
                    return
                self.conn = conn
            self.channel = self.conn.transport.open_session()
            argv = [self.host.python, "-c", WRAPPER % PROBE_SOURCE, *self.query.args]
            self.channel.exec_command(shlex.join(argv))
        except (HostError, paramiko.SSHException, OSError):
            self.failed = True

    def answer(self, timeout=None):
        """Tell the probe to go; its facts, or None if the standby could not be used."""
        self._ready.join(self.inv.ssh.connect_timeout * 3)
        if self._ready.is_alive() or self.failed or self.channel is None:
            self.close()
            return None
        timeout = timeout or (self.inv.ssh.deep_probe_timeout if self.query.slow else self.inv.ssh.probe_timeout)
        try:
            self.channel.sendall(GO)
            self.channel.shutdown_write()
            code, out = _collect(self.channel, time.monotonic() + timeout)
        except (paramiko.SSHException, OSError, socket.timeout, TimeoutError):
            return None
        finally:
            self.close()
        if code != 0 or out is None:
            return None  # the usual ask reports why, with the host's own words
        try:
            return parse_answers(self.host.name, [self.query], [decode(self.host.name, out)])[0]
        except HostError:
            return None  # likewise

    def close(self):
        """End the standby (a waiting interpreter sees its stdin close and exits), now or, when the
        session is still being opened, as soon as it is."""
        with self._lock:
            self.closed = True
            conn = self.conn
        if conn is not None:
            conn.close()


def _collect(channel, deadline):
    """(exit code, stdout as text) of ``channel`` read to its end; stdout None past
    :data:`MAX_OUTPUT` bytes; TimeoutError past ``deadline`` (time.monotonic). What the probe
    prints on stderr is read and dropped (unread, it would stall the channel's window)."""
    out = bytearray()
    channel.settimeout(0.2)
    while True:
        _past(deadline)
        while channel.recv_stderr_ready():
            channel.recv_stderr(65536)
        try:
            chunk = channel.recv(65536)
        except socket.timeout:
            continue
        if not chunk:
            break
        out += chunk
        if len(out) > MAX_OUTPUT:
            return None, None
    while not channel.exit_status_ready():
        _past(deadline)
        time.sleep(0.005)
    return channel.recv_exit_status(), out.decode("utf-8", "replace")


def _past(deadline):
    if time.monotonic() > deadline:
        raise TimeoutError("the standby probe gave no answer in time")
