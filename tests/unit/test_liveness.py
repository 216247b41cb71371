"""liveness.Watch on a stand-in transport (its decisions), with real sockets for the port check.
The real link cases (a pulled cable in the netns lab) are in tests/lab/test_faults_links.py."""
import socket
import threading
import time

from thunderlane import liveness


class Transport:
    """Answers want-reply requests when ``answers`` is set; otherwise waits until closed, as
    paramiko's Transport.global_request does."""

    def __init__(self, answers):
        self.answers, self.closed, self.asked = answers, threading.Event(), 0

    def is_active(self):
        return not self.closed.is_set()

    def global_request(self, kind, wait=True):
        assert kind == "keepalive@openssh.com" and wait
        self.asked += 1
        if not self.answers:
            self.closed.wait()
        return None

    def close(self):
        self.closed.set()


def listening():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


def refused_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))   # bound, never listening: a connect is refused at once
    return s


def watch_for(transport, port, seconds):
    with liveness.Watch(transport, "127.0.0.1", port, connect_timeout=1, every=0.1) as w:
        time.sleep(seconds)
    return w


def test_answering_host_is_neither_down_nor_stuck():
    t = Transport(answers=True)
    with listening() as s:
        w = watch_for(t, s.getsockname()[1], 1.0)
    assert (w.down, w.stuck) == (False, False) and t.asked >= 3 and t.is_active()


def test_silent_session_with_a_reachable_sshd_is_stuck_not_down():
    t = Transport(answers=False)
    with listening() as s:
        w = watch_for(t, s.getsockname()[1], 1.5)
    assert (w.down, w.stuck) == (False, True) and t.is_active()
    t.close()


def test_silent_session_and_no_new_connection_is_down_and_closed():
    t = Transport(answers=False)
    with refused_port() as s:
        started = time.monotonic()
        with liveness.Watch(t, "127.0.0.1", s.getsockname()[1], connect_timeout=1, every=0.1) as w:
            assert t.closed.wait(5), "the watch never closed the silent transport"
        took = time.monotonic() - started
    assert w.down and not w.stuck and took < 0.1 + 0.5 + 0.5 + 0.5
