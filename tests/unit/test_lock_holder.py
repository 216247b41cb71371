"""Who holds the window lock: the note its taker leaves in it, and the refusals of train-window,
mirror-back, status and evaluate worded by it; a lock without a note is a window's, as before."""
import os
import re
from types import SimpleNamespace

import pytest

from thunderlane import fsutil, mirror, status
from thunderlane.evaluate import on_host, run
from thunderlane.evaluate.run import EvaluateError
from thunderlane.mirror import MirrorBusy, MirrorError
from thunderlane.window import lock as window_lock, runner
from thunderlane.window.preflight import lock_problem
from thunderlane.window.task import _locked_why

from .test_evaluate_on_host_run import PROFILE, inventory

SINCE = r"since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC"


def test_the_note_is_written_inside_the_lock_and_read_back(tmp_path):
    lock = tmp_path / "run.lock"
    note = window_lock.note("evaluate", os.getpid(), "mac4", now=0)
    assert note == {"task": "evaluate", "host": "mac4", "pid": os.getpid(), "since": "1970-01-01 00:00:00 UTC"}
    assert fsutil.take_lock(lock, os.getpid(), note) == ("taken", None)
    assert fsutil.lock_note(lock) == note
    assert sorted(p.name for p in lock.iterdir()) == ["holder", "pid", "started"]
    assert fsutil.take_lock(lock, os.getppid(), {"task": "other"}) == ("held", os.getpid())
    assert fsutil.lock_note(lock) == note  # a refused taker leaves the holder's note alone


def test_a_lock_without_a_note_or_with_a_bad_one_has_none(tmp_path):
    lock = tmp_path / "run.lock"
    fsutil.take_lock(lock, os.getpid())  # an older tree's take: no note
    assert fsutil.lock_note(lock) is None
    (lock / "holder").write_text("{not json")
    assert fsutil.lock_note(lock) is None
    (lock / "holder").write_text("[1, 2]")
    assert fsutil.lock_note(lock) is None


def test_the_holder_is_worded_by_its_note():
    h = window_lock.parse_holder(window_lock.note("evaluate", 4242, "mac4", now=1_796_011_245), 4242)
    assert h.words() == "fab evaluate --on mac4 (pid 4242, since 2026-11-30 04:00:45 UTC)" and not h.is_window
    w = window_lock.parse_holder(window_lock.note("train-window", 7, now=0, fab=5), 7)
    assert w.words() == "fab train-window (pid 5; chunk runner pid 7, since 1970-01-01 00:00:00 UTC)" and w.is_window
    h = window_lock.parse_holder(window_lock.note("handoff", 7, now=0, fab=5), 7)
    assert h.words() == "fab handoff (pid 5; chunk runner pid 7, since 1970-01-01 00:00:00 UTC)" and h.is_window


@pytest.mark.parametrize("task", ["train-window", "handoff"])
def test_the_runners_lock_names_fabs_task_and_pid_beside_the_runners(tmp_path, task):
    """The chunk runner owns the lock fab hands it: the note names both pids, and the fab task."""
    inv = inventory(tmp_path)
    r, w = os.pipe()
    try:
        runner._hand_lock(inv, PROFILE, os.getppid(), w, task)  # it closes w
        assert os.read(r, 4096).decode().startswith("taken - ")
    finally:
        os.close(r)
    holder = window_lock.lock_holder_of(inv, PROFILE)[2]
    assert (holder.task, holder.pid, holder.fab) == (task, os.getppid(), os.getpid()), holder
    assert holder.words().startswith(f"fab {task} (pid {os.getpid()}; chunk runner pid {os.getppid()}, since ")


@pytest.mark.parametrize("raw", [
    None, [], {"task": "evaluate", "host": "mac4", "pid": 1, "since": "t"},  # another pid than the lock's owner
    {"host": "mac4", "pid": 4242, "since": "t"}, {"task": "", "pid": 4242, "since": "t"},
    {"task": "evaluate", "host": 4, "pid": 4242, "since": "t"}, {"task": "evaluate\x1b[2J", "pid": 4242, "since": "t"},
    {"task": "evaluate", "pid": "4242", "since": "t"}, {"task": "train-window", "pid": 4242, "since": "t", "fab": "1"},
    {"task": "train-window", "pid": 4242, "since": "t", "fab": True}])
def test_a_note_that_is_not_about_the_lock_owner_or_is_malformed_names_no_one(raw):
    assert window_lock.parse_holder(raw, 4242) is None


def _refusals(inv):
    """What train-window's preflight, its runner's lock refusal, mirror-back and status say now."""
    with pytest.raises(MirrorError) as e:
        mirror._refuse_while_writing(inv, PROFILE, SimpleNamespace(name="mac4"), SimpleNamespace(running=[]))
    return {"preflight": lock_problem(inv, PROFILE), "locked": _locked_why(inv, PROFILE),
            "mirror": str(e.value), "status": status.lock_words(*window_lock.lock_holder_of(inv, PROFILE))}


def test_while_evaluate_on_holds_the_window_lock_every_refusal_names_it(tmp_path, monkeypatch):
    inv = inventory(tmp_path)
    lock = tmp_path / ".locks" / "test_eval_run.lock"
    seen = []

    def evaluate(*_):  # while the host decodes
        seen.append(_refusals(inv))
        with pytest.raises(EvaluateError) as again:
            on_host.evaluate_on(inv, PROFILE, "mac4")
        seen.append(str(again.value))
        return {}
    monkeypatch.setattr(on_host, "_evaluate_on", evaluate)
    on_host.evaluate_on(inv, PROFILE, "mac4")
    who = re.escape(f"fab evaluate --on mac4 (pid {os.getpid()}, ") + SINCE + r"\)"
    said, second = seen
    assert re.fullmatch(f"{who} holds the window lock {re.escape(str(lock))}", said["preflight"]), said
    assert re.fullmatch(f"{who} holds the window lock; this one started nothing and ended nothing", said["locked"])
    assert re.fullmatch(f"{who} holds the window lock; run mirror-back after it ends", said["mirror"]), said
    assert re.fullmatch(f"window lock held by {who}", said["status"]), said
    assert re.fullmatch(f"{who} holds the window lock \\({re.escape(str(lock))}\\); evaluate on mac4 when it has "
                        "ended", second), second


def test_a_lock_without_a_note_is_still_a_windows(tmp_path):
    inv = inventory(tmp_path)
    lock = tmp_path / ".locks" / "test_eval_run.lock"
    fsutil.take_lock(lock, os.getppid())  # an older tree's chunk runner: no note
    pid = os.getppid()
    assert _refusals(inv) == {
        "preflight": f"another window holds the lock {lock} (pid {pid})",
        "locked": "another window of this run holds the lock; this one started nothing and ended nothing",
        "mirror": f"a window is still writing (the chunk runner (pid {pid})); run mirror-back after it ends",
        "status": f"window lock held (pid {pid})"}


def test_while_a_local_evaluate_holds_the_runs_mirror_lock_mirror_back_and_evaluate_name_it(tmp_path, monkeypatch):
    """Local `fab evaluate` holds mirror-back's lock on the run with a note: a mirror-back refused
    meanwhile says an evaluate holds it, not "another mirror-back"; so does a second evaluate."""
    inv = inventory(tmp_path)
    host_lock, run_lock = mirror.lock_paths(inv, SimpleNamespace(name="mac4"), PROFILE)
    seen = []

    def evaluate(*_):
        with pytest.raises(MirrorBusy) as busy:
            with mirror.locked([host_lock, run_lock]):
                pass
        seen.append(str(busy.value))
        with pytest.raises(EvaluateError) as again:
            run.evaluate(inv, PROFILE)
        seen.append(str(again.value))
        return {}
    monkeypatch.setattr(run, "_evaluate", evaluate)
    run.evaluate(inv, PROFILE)
    who = re.escape(f"fab evaluate (pid {os.getpid()}, ") + SINCE + r"\)"
    assert re.fullmatch(f"{who} holds {run_lock.name}; nothing was touched: run it again when that one has ended",
                        seen[0]), seen
    assert re.fullmatch(f"{who} holds it \\({re.escape(str(run_lock))}\\); evaluate when it has ended", seen[1]), seen
    assert not host_lock.exists() and not run_lock.exists()  # the refused mirror-back let its first lock go


def test_a_mirror_lock_without_a_note_is_another_mirror_backs(tmp_path):
    inv = inventory(tmp_path)
    run_lock = mirror.lock_paths(inv, SimpleNamespace(name="mac4"), PROFILE)[1]
    fsutil.take_lock(run_lock, os.getppid())
    with pytest.raises(EvaluateError) as e:
        run.evaluate(inv, PROFILE)
    assert str(e.value) == f"a mirror-back of {PROFILE.run_name} is running ({run_lock}); evaluate when it has ended"
    with pytest.raises(MirrorBusy) as busy:
        with mirror.locked([run_lock]):
            pass
    assert str(busy.value).startswith(f"another mirror-back (pid {os.getppid()}) holds {run_lock.name}; ")
