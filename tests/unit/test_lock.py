"""The window lock (fsutil.take_lock): atomic, never ownerless, a dead or reused PID is not its owner."""
import multiprocessing
import os

from thunderlane import fsutil


def test_taken_then_held_by_its_live_owner(tmp_path):
    lock = tmp_path / "locks" / "run.lock"
    assert fsutil.take_lock(lock, os.getpid()) == ("taken", None)
    assert (lock / "pid").read_text().strip() == str(os.getpid())
    assert (lock / "started").read_text().strip() == fsutil.process_started(os.getpid())
    assert fsutil.take_lock(lock, os.getppid()) == ("held", os.getpid())
    assert fsutil.lock_holder(lock) == ("held", os.getpid())
    assert not [p for p in lock.parent.iterdir() if p != lock]  # no temporary folder left behind


def test_a_dead_owner_s_lock_is_taken_over_naming_it(tmp_path):
    lock = tmp_path / "run.lock"
    lock.mkdir()
    (lock / "pid").write_text("999999\n")  # a runner that died without cleaning up
    assert fsutil.lock_holder(lock) == ("stale", 999999)
    assert fsutil.take_lock(lock, os.getpid()) == ("taken-over", 999999)
    assert fsutil.lock_holder(lock) == ("held", os.getpid())


def test_a_reused_pid_is_not_the_owner(tmp_path):
    """The recorded PID is alive, but it started at another time: another process got the PID."""
    lock = tmp_path / "run.lock"
    lock.mkdir()
    (lock / "pid").write_text(f"{os.getpid()}\n")
    (lock / "started").write_text("Thu Jan  1 00:00:00 1970\n")
    assert fsutil.lock_holder(lock) == ("stale", os.getpid())
    assert fsutil.take_lock(lock, os.getpid())[0] == "taken-over"


def _contend(lock, ready, done, results):
    ready.wait()
    results.put(fsutil.take_lock(lock, os.getpid())[0])
    done.wait()  # stay alive, so the winner's lock stays held while the others try


def test_racing_takers_get_exactly_one_lock(tmp_path):
    lock = tmp_path / "run.lock"
    n = 8
    ready, done, results = multiprocessing.Barrier(n), multiprocessing.Event(), multiprocessing.Queue()
    procs = [multiprocessing.Process(target=_contend, args=(lock, ready, done, results)) for _ in range(n)]
    for p in procs:
        p.start()
    try:
        states = sorted(results.get(timeout=60) for _ in range(n))
    finally:
        done.set()
        for p in procs:
            p.join(timeout=30)
    assert states == ["held"] * (n - 1) + ["taken"]
