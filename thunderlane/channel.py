"""One command on an open ssh connection, read on a bare paramiko channel.

Invoke's Runner (under Fabric's ``Connection.run``) costs, per command, three threads (stdout,
stderr, stdin), a 10 ms polling loop, a Timer thread for the timeout and the decoding of every
chunk; on a run over many hosts that is a sizeable part of the control machine's CPU. A probe needs
none of it: it sends nothing on stdin and reads two streams to their end. Here one thread waits on
the channel (``select`` on paramiko's event pipe) and keeps what :class:`Run` keeps, with the same
guarantees ``remote.run`` gave on Fabric: a stream past ``limit`` bytes ends the command
(:class:`OutputTooLarge`); past ``timeout`` seconds the channel is closed and :class:`TimedOut`
raised, in the caller's own thread (no timer thread racing the caller for the transport). The
exec request itself is bounded by the same deadline, and a connection that ends under the command
(paramiko's bare EOFError, or a channel closed with no exit status by a dead transport) is
:class:`ConnectionLost`, an ssh error: the host's 'unreachable', as a failed connect is.
"""
import codecs
import select
import time

import paramiko
from paramiko.common import cMSG_CHANNEL_REQUEST
from paramiko.message import Message


class OutputTooLarge(Exception):
    """A host printed more than the limit on one stream (the stream's name)."""


class TimedOut(Exception):
    """The command gave no end within its timeout; its channel was closed."""


class ConnectionLost(paramiko.SSHException):
    """The ssh connection ended before the command did (an SSHException: callers map it as one)."""


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
        """One chunk of each stream the channel holds data on (one, not all: a stream that never
        runs dry must not keep the caller from its deadline)."""
        if channel.recv_ready():
            self._add(self.out, channel.recv(CHUNK), "stdout")
        if channel.recv_stderr_ready():
            data = channel.recv_stderr(CHUNK)
            self._add(self.err, data, "stderr")
            if self.relay is not None:
                self.relay.write(self._relay_decoder.decode(data))

    def finish(self):
        """The relay's last bytes: a character the stream cut short is written as U+FFFD."""
        if self.relay is not None:
            tail = self._relay_decoder.decode(b"", final=True)
            if tail:
                self.relay.write(tail)

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
    try:
        channel = transport.open_session(timeout=timeout)
    except EOFError:  # the transport thread saw the connection end: paramiko raises its EOFError bare
        raise ConnectionLost("the connection closed") from None
    try:
        _exec(channel, command, deadline)
        channel.shutdown_write()
        run = Run(limit, relay)
        _read(channel, run, deadline)
        if not channel.status_event.wait(max(0.0, deadline - time.monotonic())):
            raise TimedOut(command)
        run.exited = channel.recv_exit_status()
        run.finish()
        if (run.exited == -1 or not channel.eof_received) and _dead(transport):
            raise ConnectionLost("connection lost mid-command")  # not a result: exit -1, output cut short
        return run
    except EOFError:
        raise ConnectionLost("the connection closed") from None
    finally:
        _close(channel)


def _exec(channel, command, deadline):
    """``channel.exec_command(command)`` with its wait for the host's answer bounded by ``deadline``:
    paramiko waits on ``channel.event`` forever, and an sshd that answers keepalives but never the
    request would hang the run. The request is built and sent as paramiko 5's exec_command does."""
    if channel.closed:
        raise paramiko.SSHException("Channel is not open")
    m = Message()
    m.add_byte(cMSG_CHANNEL_REQUEST)
    m.add_int(channel.remote_chanid)
    m.add_string("exec")
    m.add_boolean(True)  # want a reply: event is set (event_ready True) on success, else on failure/close
    m.add_string(command)
    channel.event.clear()
    channel.event_ready = False
    channel.transport._send_user_message(m)
    if not channel.event.wait(max(0.0, deadline - time.monotonic())):
        raise TimedOut(command)  # the caller closes the channel
    if not channel.event_ready:  # refused, or the transport died (its saved exception: EOFError, ...)
        raise channel.transport.get_exception() or paramiko.SSHException("Channel closed.")


def _dead(transport):
    """Whether the transport has ended (its thread closes the channels before it clears ``active``:
    the saved exception says so first)."""
    return not transport.is_active() or getattr(transport, "saved_exception", None) is not None


def _close(channel):
    try:
        channel.close()
    except (EOFError, OSError, paramiko.SSHException):
        pass  # the connection under it is gone: nothing left to close


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
