"""thunderlane.presession: sessions opened ahead are taken once, and only when they are usable."""
import threading
import time
from types import SimpleNamespace

import pytest

from thunderlane import presession


class Transport:
    def __init__(self, active=True):
        self.active = active

    def is_active(self):
        return self.active


class Conn:
    def __init__(self, active=True):
        self.transport, self.closed = Transport(active), False

    def close(self):
        self.closed = True


INV = SimpleNamespace(path="/lab/hosts.yaml", ssh=SimpleNamespace(connect_timeout=2))
MAC4, MAC5 = (SimpleNamespace(name=n, is_local=False) for n in ("mac4", "mac5"))
LOCAL = SimpleNamespace(name="local", is_local=True)


@pytest.fixture(autouse=True)
def clean():
    presession.discard()
    yield
    presession.discard()


def test_a_prepared_session_is_taken_once_then_the_caller_opens_its_own():
    opened = []

    def opener(inv, host):
        opened.append(host.name)
        return Conn()
    presession.prepare(INV, [LOCAL, MAC4, MAC5], opener)
    conn = presession.take(INV, MAC4)
    assert isinstance(conn, Conn) and not conn.closed
    assert presession.take(INV, MAC4) is None  # taken once
    assert presession.take(INV, LOCAL) is None  # local runs no ssh
    assert presession.pending() == 1 and presession.take(INV, MAC5) is not None
    assert sorted(opened) == ["mac4", "mac5"]


def test_a_failed_or_dead_session_is_never_used():
    dead = Conn(active=False)

    def opener(inv, host):
        if host.name == "mac4":
            raise OSError("connection refused")
        return dead
    presession.prepare(INV, [MAC4, MAC5], opener)
    assert presession.take(INV, MAC4) is None
    assert presession.take(INV, MAC5) is None and dead.closed


def test_discard_closes_what_nobody_took_even_while_it_opens():
    gate, conns = threading.Event(), []

    def opener(inv, host):
        gate.wait(5)
        conns.append(Conn())
        return conns[-1]
    presession.prepare(INV, [MAC4, MAC5], opener)
    presession.prepare(INV, [MAC4], opener)  # already under way: not opened twice
    gate.set()
    presession.discard()
    assert len(conns) == 2 and all(c.closed for c in conns) and presession.pending() == 0


def test_another_inventory_does_not_take_this_one_s_session():
    presession.prepare(INV, [MAC4], lambda inv, host: Conn())
    other = SimpleNamespace(path="/elsewhere/hosts.yaml", ssh=INV.ssh)
    assert presession.take(other, MAC4) is None and presession.take(INV, MAC4) is not None


def test_a_session_that_opens_after_take_gave_up_on_it_is_closed():
    gate, conns = threading.Event(), []

    def opener(inv, host):
        gate.wait(5)
        conns.append(Conn())
        return conns[-1]
    impatient = SimpleNamespace(path=INV.path, ssh=SimpleNamespace(connect_timeout=0.05))
    presession.prepare(impatient, [MAC4], opener)
    assert presession.take(impatient, MAC4) is None  # timed out: the caller opens its own
    gate.set()
    for _ in range(100):
        if conns and conns[0].closed:
            break
        time.sleep(0.05)
    assert len(conns) == 1 and conns[0].closed


class SlowHosts:
    """Hosts whose listing takes a while: two prepare() calls at once overlap in it."""
    def __iter__(self):
        time.sleep(0.3)
        return iter([MAC4])


def test_two_concurrent_prepares_open_one_session_per_host():
    opened = []

    def opener(inv, host):
        opened.append(Conn())
        return opened[-1]
    threads = [threading.Thread(target=presession.prepare, args=(INV, SlowHosts(), opener)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    time.sleep(0.3)  # time for a second opener, started in the background, to run
    presession.discard()
    assert len(opened) == 1 and opened[0].closed
