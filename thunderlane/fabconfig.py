"""Fabric's side of the lane's connections: the runner of the commands fed on stdin (it caps what
they print), and the one Config every Connection of a run shares.

Building an Invoke Config merges every level of its defaults: a third of a millisecond, which a run
over many hosts paid once per host. A Connection only reads its Config (``user``, ``port`` and the
rest are its own attributes; ``inline_ssh_env``, the one Fabric would write into the Config, is
``remote.LaneConnection``'s own too), so one per connect timeout serves them all. A write would
re-merge the shared Config, emptying it for a moment under the threads reading it: the tests spy
on every write (tests/unit/test_fabconfig.py, tests/lab/test_handshake.py).
"""
import threading

import paramiko
from fabric import Config
from fabric.runners import Remote

from .channel import OutputTooLarge

# What is kept of one stream a host prints: the probe's largest honest answer (a deep scan of a
# model cache) is a few MiB; past this a host is broken or hostile, and the run is stopped.
MAX_OUTPUT = 64 * 2**20


class CappedRemote(Remote):
    """Fabric's remote runner, stopping the command once a stream passes :data:`MAX_OUTPUT` bytes
    (Fabric keeps all of it in memory), and reading in 64 KiB chunks."""
    read_chunk_size = 64 * 1024

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.bytes_read = {"stdout": 0, "stderr": 0}

    def _count(self, stream, data):
        self.bytes_read[stream] += len(data or b"")
        if self.bytes_read[stream] > MAX_OUTPUT:
            raise OutputTooLarge(stream)  # ends the reader; Invoke then closes the channel
        return data

    def read_proc_stdout(self, num_bytes):
        return self._count("stdout", super().read_proc_stdout(num_bytes))

    def read_proc_stderr(self, num_bytes):
        return self._count("stderr", super().read_proc_stderr(num_bytes))

    def respond(self, buffer_):
        if self.watchers:  # Invoke joins the whole buffer after every chunk, watchers or not: quadratic
            super().respond(buffer_)

    # Invoke's timeout: a Timer thread calls kill(), and the command counts as timed out only once
    # that thread has ended. Fabric's kill closes the channel, which marks it closed *before*
    # sending the close message; the main thread can see the channel closed, return an ordinary
    # result (timed_out still False) and close the transport while the Timer thread is still
    # sending, which then dies with a traceback (EOFError). So: kill says so first, and a
    # transport already gone is no error for a kill.
    _killed = False

    def kill(self):
        self._killed = True
        try:
            super().kill()
        except (EOFError, OSError, paramiko.SSHException):
            pass

    @property
    def timed_out(self):
        return self._killed or super().timed_out


_configs = {}  # {connect timeout: Config}
_lock = threading.Lock()


def lane_config(connect_timeout):
    """The Config of the lane's Connections: no ssh config files read (the inventory's options are
    the lane's), no agent forwarding, ``connect_timeout`` seconds to connect, :class:`CappedRemote`
    as the runner."""
    with _lock:
        if connect_timeout not in _configs:
            _configs[connect_timeout] = Config(overrides={
                "load_ssh_configs": False, "forward_agent": False, "timeouts": {"connect": connect_timeout},
                "runners": {"remote": CappedRemote}})
        return _configs[connect_timeout]
