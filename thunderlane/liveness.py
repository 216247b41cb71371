"""Is the host still there while a command runs on it?

A pulled cable (or a Mac whose Wi-Fi went away) sends nothing: no reset, no error, the session
just goes quiet, and a probe would wait for its whole command timeout (minutes for a deep scan).
:class:`Watch` asks the host's sshd for a reply every second (``keepalive@openssh.com`` with
want-reply: OpenSSH answers it with a failure, and any answer will do; paramiko's own keepalives
never ask for one). When no answer comes within half the connect timeout, it tries a fresh TCP
connection to the host's ssh port for the other half:

- it connects: the host's network is up and its sshd listens, only this session is stuck (a
  stopped process, a hung disk): the command's own timeout judges it (kind ``timeout``);
- it does not: the link is down. The session is closed so the command ends now, and the caller
  reports the host ``unreachable`` within about the connect timeout.
"""
import socket
import threading

PING = "keepalive@openssh.com"
EVERY = 1.0   # seconds between pings


def answered(transport, within):
    """True if the host's sshd answers one want-reply request within ``within`` seconds. The
    asking thread waits until an answer comes or the transport closes (paramiko's own loop)."""
    done = threading.Event()

    def ask():
        try:
            transport.global_request(PING, wait=True)
        except Exception:  # noqa: BLE001 - a transport closing under the request: no answer
            return
        done.set()

    threading.Thread(target=ask, name="lane-ping", daemon=True).start()
    return done.wait(within)


def port_open(address, port, within):
    """True if a TCP connection to ``address:port`` opens within ``within`` seconds."""
    try:
        with socket.create_connection((address, port), timeout=within):
            return True
    except OSError:
        return False


class Watch:
    """Context manager watching ``transport`` while the body runs; afterwards ``down`` says whether
    the link was judged down (and the transport closed by the watch), ``seconds`` how long the
    silence lasted before that judgement."""

    def __init__(self, transport, address, port, connect_timeout, every=EVERY):
        self.transport, self.address, self.port = transport, address, port
        self.half = max(0.5, connect_timeout / 2)
        self.every = every
        self.down = False
        self.stuck = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="lane-watch", daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(self.every + 2 * self.half + 1)
        return False

    def _loop(self):
        while not self._stop.wait(self.every):
            if not self.transport.is_active():
                return
            if answered(self.transport, self.half) or self._stop.is_set():
                continue
            if port_open(self.address, self.port, self.half):
                self.stuck = True   # the command timeout judges it; pinging on would pile up threads
                return
            if not self._stop.is_set():
                self.down = True
                self.transport.close()
            return
