"""Figure 2c's CPU seconds count a run's ssh sessions in that run: bench/verify_cache.py waits for
the sshd listeners' children (the sessions, ending after fab has exited) before reading."""
import importlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"


def test_the_cpu_reading_waits_for_the_sessions_to_end(monkeypatch):
    for name in ("THUNDER_LAB_NET", "THUNDER_RING_PORT"):  # bench/common.py sets them on import
        monkeypatch.setenv(name, os.environ.get(name, ""))
    monkeypatch.syspath_prepend(str(BENCH))
    monkeypatch.delitem(sys.modules, "verify_cache", raising=False)
    verify_cache = importlib.import_module("verify_cache")
    session = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.5)"])  # a child of ours, as
    threading.Thread(target=session.wait, daemon=True).start()                         # a session is the listener's
    t0 = time.monotonic()
    verify_cache.sessions_ended([os.getpid()])
    waited = time.monotonic() - t0
    assert session.returncode == 0 and 0.3 < waited < 3, waited
    t0 = time.monotonic()
    verify_cache.sessions_ended([os.getpid()])  # no child left: at once
    assert time.monotonic() - t0 < 0.2
