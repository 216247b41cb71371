"""channel.py (one command on a bare paramiko channel) against a stand-in transport and channel
that behave as paramiko 5's do at the edges the runner relies on: no ssh. Each run is bounded by a
thread join, so that a runner which hangs fails the test instead of hanging the suite."""
import io
import os
import threading
import time

import paramiko
import pytest

from thunderlane import channel, remote

from .test_remote import make_inv


class FakeChannel:
    """``out``/``err``: chunks the host sends (``endless``: stdout never runs dry); ``eof`` and
    ``status`` (None: never sent) what ends it."""

    def __init__(self, transport, out=(), err=(), eof=True, status=0, endless=False):
        self.transport, self.out, self.err, self.endless = transport, list(out), list(err), endless
        self.eof_received, self.closed, self.remote_chanid = False, False, 7
        self.event, self.event_ready, self.status_event = threading.Event(), False, threading.Event()
        self.exit_status, self._eof, self._status = -1, eof, status
        self._pipe_r, self._pipe_w = os.pipe()
        self.started = time.monotonic()

    def fileno(self):
        return self._pipe_r  # never readable: the runner's select sleeps its full wake

    def answer(self):
        """The host's reply to the exec request, then the whole command at once."""
        self.event_ready = True
        self.event.set()
        self.eof_received = self._eof
        if self._status is not None:
            self.exit_status = self._status
            self.status_event.set()
        elif self._eof:  # EOF, then a close with no exit status (a signal killed it): closed
            self.closed = True
            self.status_event.set()

    def recv_ready(self):
        return self.endless or bool(self.out)

    def recv(self, n):
        assert time.monotonic() - self.started < 5, "still reading long past the deadline"
        return b"x" * 100 if self.endless else self.out.pop(0)

    def recv_stderr_ready(self):
        return bool(self.err)

    def recv_stderr(self, n):
        return self.err.pop(0)

    def exec_command(self, command):  # as paramiko's: the reply waited for with no bound
        self.transport._send_user_message(command)
        self.event.wait()

    def shutdown_write(self):
        pass

    def recv_exit_status(self):
        self.status_event.wait()
        return self.exit_status

    def close(self):
        self.closed = True
        self.status_event.set()
        for fd in (self._pipe_r, self._pipe_w):
            try:
                os.close(fd)
            except OSError:
                pass


class FakeTransport:
    """``answers``: whether the host replies to an exec request; ``dies``: the connection ends as
    the command runs (the transport thread closes the channel, then clears ``active``)."""

    def __init__(self, answers=True, dies=False, open_error=None, **chan):
        self.answers, self.dies, self.open_error, self.chan_kwargs = answers, dies, open_error, chan
        self.active, self.saved_exception, self.sent, self.channel = True, None, [], None

    def open_session(self, timeout=None):
        if self.open_error:
            raise self.open_error
        self.channel = FakeChannel(self, **self.chan_kwargs)
        return self.channel

    def _send_user_message(self, m):
        self.sent.append(m)
        if self.answers:
            self.channel.answer()
        if self.dies:
            self.saved_exception, self.active = EOFError(), False
            self.channel.closed = True
            self.channel.status_event.set()

    def is_active(self):
        return self.active

    def get_exception(self):
        e, self.saved_exception = self.saved_exception, None
        return e


def execute(transport, timeout=5.0, limit=1000, relay=None):
    """channel.execute in a thread: its Run, or the exception it raised; a hang fails the test."""
    box = []

    def body():
        try:
            box.append(channel.execute(transport, "probe", timeout, limit, relay))
        except BaseException as e:  # noqa: BLE001 - handed to the test
            box.append(e)
    t = threading.Thread(target=body, daemon=True)
    t.start()
    t.join(timeout + 3)
    assert box, "execute did not return within its timeout"
    return box[0]


def test_a_command_read_to_its_end():
    t = FakeTransport(out=[b'{"ok": ', b"1}"], err=[b"warn\n"], status=3)
    run = execute(t)
    assert (run.exited, run.stdout, run.stderr) == (3, '{"ok": 1}', "warn\n") and t.channel.closed
    assert b"exec" in t.sent[0].asbytes() and t.sent[0].asbytes().endswith(b"probe")  # as paramiko builds it


def test_output_that_never_ends_times_out():
    t = FakeTransport(endless=True, eof=False, status=None)
    start = time.monotonic()
    e = execute(t, timeout=0.5, limit=10**9)
    assert isinstance(e, channel.TimedOut) and time.monotonic() - start < 2 and t.channel.closed


def test_a_stream_past_the_limit_stops_the_command():
    e = execute(FakeTransport(out=[b"y" * 600, b"y" * 600], eof=False, status=None), limit=1000)
    assert isinstance(e, channel.OutputTooLarge) and str(e) == "stdout"


def test_an_exec_request_never_answered_times_out():
    t = FakeTransport(answers=False)
    start = time.monotonic()
    e = execute(t, timeout=0.5)
    assert isinstance(e, channel.TimedOut) and time.monotonic() - start < 2 and t.channel.closed


def test_eof_on_open_is_a_lost_connection():
    e = execute(FakeTransport(open_error=EOFError()))
    assert isinstance(e, channel.ConnectionLost) and isinstance(e, paramiko.SSHException)


def test_a_transport_dying_under_the_command_is_no_result():
    """No EOF, no exit status (-1) and the transport gone: not exit -1 with the output cut short."""
    t = FakeTransport(dies=True, out=[b'{"half'], eof=False, status=None)
    e = execute(t)
    assert isinstance(e, channel.ConnectionLost) and "mid-command" in str(e)


def test_a_signalled_command_on_a_live_connection_is_a_result():
    run = execute(FakeTransport(status=None))  # EOF, then close with no exit status: killed by a signal
    assert run.exited == -1


def test_the_stderr_relay_keeps_a_character_split_across_chunks():
    relay = io.StringIO()
    run = execute(FakeTransport(err=[b"caf\xc3", b"\xa9 ok \xe2\x82"]), relay=relay)
    assert relay.getvalue() == run.stderr == "café ok \ufffd"  # the cut-short tail flushed at the end


def test_a_lost_connection_names_the_host(tmp_path, monkeypatch):
    """remote.run maps both (EOFError on open, a transport dying mid-command) to the host's 'unreachable'."""
    inv = make_inv(tmp_path)
    host = inv.hosts["mac4"]
    for transport in (FakeTransport(open_error=EOFError()), FakeTransport(dies=True, eof=False, status=None)):
        conn = type("Conn", (), {"transport": transport, "__enter__": lambda s: s, "__exit__": lambda s, *a: None})()
        monkeypatch.setattr(remote, "open_session", lambda inv, host: conn)
        with pytest.raises(remote.HostError) as e:
            remote.run(inv, host, ["python", "-c", "x"])
        assert e.value.host == "mac4" and e.value.kind == "unreachable" and "127.0.0.4" in str(e.value)
    def dropped(inv, host):
        raise EOFError()  # paramiko's, bare, from a handshake whose connection closed
    monkeypatch.setattr(remote, "open_session", dropped)
    with pytest.raises(remote.HostError) as e:
        remote.run(inv, host, ["python", "-c", "x"])
    assert e.value.host == "mac4" and e.value.kind == "unreachable" and "connection closed" in str(e.value)
