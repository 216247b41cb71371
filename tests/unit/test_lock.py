"""The window lock (fsutil.take_lock): atomic, never ownerless, a dead or reused PID is not its owner."""
import multiprocessing
import os

import pytest

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


def _runner_with_lock_line(tmp_path, line, start="10", **extra):
    """The real chunk runner, told on THUNDER_LOCK_FD what fab's take of the lock gave (no take-lock
    interpreter: THUNDER_PYTHON points nowhere, so starting one fails loudly)."""
    import os
    import subprocess
    from thunderlane import layout
    r, w = os.pipe()
    env = dict(os.environ, THUNDER_LOCK_FD=str(r), THUNDER_PYTHON=str(tmp_path / "no-python"),
               THUNDER_START_STEP=start, THUNDER_CALLER_GATES="1", **extra)
    p = subprocess.Popen(["bash", str(layout.CHUNKS), "run_a", "10", "10"], env=env, pass_fds=(r,),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    os.close(r)
    os.write(w, line.encode())
    os.close(w)
    out, err = p.communicate(timeout=30)
    return p.returncode, out, err


def test_the_chunk_runner_takes_the_lock_fab_handed_it(tmp_path):
    lock = tmp_path / "locks" / "run a"  # a space: the rest of the line is the path
    lock.mkdir(parents=True)
    code, out, err = _runner_with_lock_line(tmp_path, f"taken - {lock}\n")
    assert code == 0 and "nothing to train" in out, err
    assert not lock.exists()  # released on exit, as a lock it took itself


def test_the_chunk_runner_handed_a_held_lock_or_none_starts_nothing(tmp_path):
    code, _, err = _runner_with_lock_line(tmp_path, f"held 4242 {tmp_path / 'lock'}\n")
    assert code == 75 and "pid 4242 holds" in err
    code, out, err = _runner_with_lock_line(tmp_path, "error - \n")
    assert code == 64 and "nothing to train" not in out
    code, out, _ = _runner_with_lock_line(tmp_path, "")  # fab gone before it wrote
    assert code == 64 and "nothing to train" not in out


# stand-in for macOS caffeinate: records its environment's THUNDER_LOCK_FD and what its fds are
FAKE_CAFFEINATE = """#!/bin/bash
log="$(dirname "$0")/caffeinate.log"
{ echo "env=${THUNDER_LOCK_FD:-}"; for fd in /proc/$$/fd/*; do readlink "$fd"; done; } >"$log.tmp"
mv "$log.tmp" "$log"
"""


def test_the_lock_pipe_and_its_variable_reach_neither_caffeinate_nor_the_launch(tmp_path):
    """The runner reads and closes the lock's pipe and unsets THUNDER_LOCK_FD before it starts
    caffeinate (which would hold the pipe open as long as the runner lives) or anything else."""
    import time
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc")
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "caffeinate").write_text(FAKE_CAFFEINATE)
    (tools / "caffeinate").chmod(0o755)
    lock = tmp_path / "lock"
    lock.mkdir()
    code, out, err = _runner_with_lock_line(tmp_path, f"taken - {lock}\n", THUNDER_FORCE_DARWIN=str(tools),
                                            THUNDER_LAB_HOST="mac1")
    assert code == 0 and "caffeinate" in out, err
    log = tools / "caffeinate.log"
    for _ in range(100):  # caffeinate runs in the background: its log may come just after the runner's end
        if log.exists():
            break
        time.sleep(0.1)
    lines = log.read_text().splitlines()
    assert lines[0] == "env=", lines
    assert not [target for target in lines[1:] if target.startswith("pipe:")], lines
