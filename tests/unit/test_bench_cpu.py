"""Figure 2c's CPU seconds count a run's ssh sessions in that run: bench/verify_cache.py waits for
the sshd listeners' children (the sessions, ending after fab has exited) before reading."""
import importlib
import os
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"


def test_the_cpu_reading_waits_for_the_sessions_to_end(monkeypatch):
    for name in ("THUNDER_LAB_NET", "THUNDER_RING_PORT"):  # bench/common.py sets them on import
        monkeypatch.setenv(name, os.environ.get(name, ""))
    monkeypatch.syspath_prepend(str(BENCH))
    monkeypatch.delitem(sys.modules, "verify_cache", raising=False)
    verify_cache = importlib.import_module("verify_cache")
    # a listener of its own (pytest's process may hold children of other tests): a child of it, as
    # a session is the sshd listener's, lives 0.5 s; the listener reaps it and lives on
    listener = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time\n"
                                 "subprocess.run([sys.executable, '-c', 'import time; time.sleep(0.5)'])\n"
                                 "print(flush=True); time.sleep(30)"], stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 5
        while not open(f"/proc/{listener.pid}/task/{listener.pid}/children").read().split():
            assert time.monotonic() < deadline, "the session never started"
            time.sleep(0.005)
        t0 = time.monotonic()
        verify_cache.sessions_ended([listener.pid])
        waited = time.monotonic() - t0
        assert listener.stdout.readline() == "\n"   # the session has ended
        assert 0.2 < waited < 3, waited
        t0 = time.monotonic()
        verify_cache.sessions_ended([listener.pid])  # no child left: at once
        assert time.monotonic() - t0 < 0.2
    finally:
        listener.kill()
        listener.wait()
