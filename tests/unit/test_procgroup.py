"""Ending what is left of the sync launcher's process group: TERM, then KILL, never a group seen gone."""
import io
import os
import signal
import time

from thunderlane import procgroup, transfer

from .test_transfer import _alive


class Group:
    """A stand-in for os.killpg over one group that is alive for ``looks`` calls, then gone;
    ``calls`` records every signal asked for."""

    def __init__(self, looks):
        self.looks, self.calls = looks, []

    def killpg(self, pgid, sig):
        self.calls.append(sig)
        if len(self.calls) > self.looks:
            raise ProcessLookupError(pgid)


def _run(monkeypatch, looks, grace=1.0):
    group, now = Group(looks), [0.0]
    monkeypatch.setattr(procgroup.os, "killpg", group.killpg)
    sent = procgroup.end_leftovers(4242, grace=grace, clock=lambda: now[0],
                                   sleep=lambda s: now.__setitem__(0, now[0] + s))
    return sent, group.calls


def test_a_group_that_ends_on_term_gets_no_kill_nor_any_signal_after_it_was_seen_gone(monkeypatch):
    sent, calls = _run(monkeypatch, looks=3)
    assert sent == [signal.SIGTERM]
    assert calls == [signal.SIGTERM, 0, 0, 0]  # the last look failed: nothing after it


def test_a_group_gone_before_term_gets_nothing_more(monkeypatch):
    assert _run(monkeypatch, looks=0) == ([], [signal.SIGTERM])


def test_a_group_that_outlives_the_grace_is_killed_right_after_a_look_found_it_alive(monkeypatch):
    sent, calls = _run(monkeypatch, looks=10_000, grace=1.0)
    assert sent == [signal.SIGTERM, signal.SIGKILL]
    assert calls[-2:] == [0, signal.SIGKILL] and 15 <= calls.count(0) <= 25  # 1 s of 0.05 s looks


def test_stream_kills_a_leftover_of_the_launchers_group_that_ignores_term(tmp_path):
    """The launcher exits, leaving in its group a process that ignores SIGTERM and holds the
    pipe: stream ends it with SIGKILL a moment after the TERM, and returns soon."""
    pid_file = tmp_path / "leftover"
    script = f"(trap '' TERM; exec sleep 30) & echo $! > {pid_file}; echo one; exit 0"
    pid = None
    t0 = time.monotonic()
    try:
        code, text = transfer.stream(["sh", "-c", script], "mac4", 0, out=io.StringIO(), verbose=True)
        seconds = time.monotonic() - t0
        pid = int(pid_file.read_text())
        for _ in range(50):  # init reaps the killed leftover in its own time
            if not _alive(pid):
                break
            time.sleep(0.1)
        assert code == 0 and text.split() == ["one"], (code, text)
        assert not _alive(pid), "the leftover that ignores TERM still runs"
        assert seconds < transfer.AFTER_EXIT + procgroup.END_GRACE + 3, seconds
    finally:
        if pid and _alive(pid):
            os.kill(pid, signal.SIGKILL)



class Launcher:
    """A stand-in for the launcher's Popen: unreaped for ``polls`` calls of poll(), then reaped."""

    def __init__(self, polls):
        self.pid, self.polls = 4242, polls

    def poll(self):
        self.polls -= 1
        return None if self.polls >= 0 else 0


def _stop(monkeypatch, looks, polls):
    group = Group(looks)
    monkeypatch.setattr(procgroup.os, "killpg", group.killpg)
    transfer._stop_group(Launcher(polls), grace=0.3)
    return group.calls


def test_stop_group_sends_nothing_after_the_reap_to_a_group_seen_gone(monkeypatch):
    """The launcher exits on TERM and is reaped with the rest of its group: its pid is free, so
    the group gets one look and no further signal (once it got a KILL at once)."""
    assert _stop(monkeypatch, looks=1, polls=1) == [signal.SIGTERM, 0]


def test_stop_group_ends_a_leftover_that_outlives_the_reaped_launcher(monkeypatch):
    calls = _stop(monkeypatch, looks=10_000, polls=1)
    assert calls[:3] == [signal.SIGTERM, 0, signal.SIGTERM] and calls[-2:] == [0, signal.SIGKILL], calls


def test_stop_group_kills_the_group_of_a_launcher_that_outlives_the_grace(monkeypatch):
    """Unreaped, the launcher's pid is still the group's id: KILL at once, no look needed."""
    assert _stop(monkeypatch, looks=10_000, polls=10_000) == [signal.SIGTERM, signal.SIGKILL]
