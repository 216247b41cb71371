"""One command on an open ssh connection, read on a bare paramiko channel.

Invoke's Runner (under Fabric's ``Connection.run``) costs, per command, three threads (stdout,
stderr, stdin), a 10 ms polling loop, a Timer thread for the timeout and the decoding of every
chunk; on a run over many hosts that is a sizeable part of the control machine's CPU. A probe needs
none of it: it sends nothing on stdin and reads two streams to their end. Here one thread waits on
the channel (``select`` on paramiko's event pipe) and keeps what :class:`Run` keeps, with the same
guarantees ``remote.run`` gave on Fabric: a stream past ``limit`` bytes ends the command
(:class:`OutputTooLarge`); past ``timeout`` seconds the channel is closed and :class:`TimedOut`
raised, in the caller's own thread (no timer thread racing the caller for the transport).
"""
import codecs
import select
import time


class OutputTooLarge(Exception):
    """A host printed more than the limit on one stream (the stream's name)."""


class TimedOut(Exception):
    """The command gave no end within its timeout; its channel was closed."""


CHUNK = 64 * 1024
WAKE = 1.0  # at most this long between looks at the channel, whatever its event pipe says


class Run:
    """What one command left: ``exited`` (-1 when the channel closed without an exit status),
    ``stdout`` and ``stderr`` as text. ``relay``, if given, gets stderr's text as it comes."""

    def __init__(self, limit, relay=None):
        self.limit, self.relay = limit, relay
        self.out, self.err = bytearray(), bytearray()
        self._relay_decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self.exited = None

    def take(self, channel):
        """Everything the channel holds now, on both streams."""
        while channel.recv_ready():
            self._add(self.out, channel.recv(CHUNK), "stdout")
        while channel.recv_stderr_ready():
            data = channel.recv_stderr(CHUNK)
            self._add(self.err, data, "stderr")
            if self.relay is not None:
                self.relay.write(self._relay_decoder.decode(data))

    def _add(self, buffer, data, stream):
        buffer += data
        if len(buffer) > self.limit:
            raise OutputTooLarge(stream)

    @property
    def stdout(self):
        return self.out.decode("utf-8", "replace")

    @property
    def stderr(self):
        return self.err.decode("utf-8", "replace")


def execute(transport, command, timeout, limit, relay=None):
    """Run ``command`` on a new session channel of ``transport`` (no pty, stdin closed at once) and
    read it to its end: a :class:`Run`. The channel is closed in every case."""
    deadline = time.monotonic() + timeout
    channel = transport.open_session(timeout=timeout)
    try:
        channel.exec_command(command)
        channel.shutdown_write()
        run = Run(limit, relay)
        _read(channel, run, deadline)
        remaining = deadline - time.monotonic()
        if not channel.status_event.wait(max(0.0, remaining)):
            raise TimedOut(command)
        run.exited = channel.recv_exit_status()
        return run
    finally:
        channel.close()


def _read(channel, run, deadline):
    """Both streams to their end (EOF or a closed channel), or :class:`TimedOut` past ``deadline``."""
    event = channel.fileno()  # readable while a stream holds data, and for good once the channel ends
    while True:
        run.take(channel)
        if (channel.eof_received or channel.closed) and not (channel.recv_ready() or channel.recv_stderr_ready()):
            return
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimedOut()
        select.select([event], [], [], min(remaining, WAKE))
