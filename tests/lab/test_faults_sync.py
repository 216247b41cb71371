"""Fault cases of sync-cache (case 23 in docs/RELIABILITY.md)."""
import json
import os
import subprocess
import time

import pytest

from thunderlane.sync import lock_path
from tests.lab.conftest import FAB, ROOT, by_host, fab_json


@pytest.mark.fault_case("23", "two sync-caches to one host at once",
                        "a second `fab sync-cache --host mac4` started while the first (rate-limited) holds the host")
def test_23_two_syncs_to_one_host_never_interleave(lab_inv):
    """The second sync refuses at once, naming the first one's pid, and changes nothing; the first
    ends complete, having sent exactly the missing bytes."""
    env = dict(os.environ, THUNDER_INVENTORY=lab_inv.path)
    lock = lock_path(lab_inv, lab_inv.hosts["mac4"])
    first = subprocess.Popen([FAB, "sync-cache", "--host", "mac4", "--bwlimit", "100", "--json"], cwd=ROOT, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not lock.is_dir() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lock.is_dir(), "the first sync never took the host's lock"
        code, second = fab_json(lab_inv, "sync-cache", "--host", "mac4")
        assert first.poll() is None, "the first sync ended before the second one started: no race was tested"
        assert code == 1 and second["results"] == [], second
        assert second["errors"] == [f"mac4: another sync-cache (pid {first.pid}) is syncing this host now; "
                                    f"run again when it has finished (lock {lock})"], second
        out, err = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate()
    row = json.loads(out)["results"][0]
    assert first.returncode == 0 and (row["before"], row["after"]) == ("partial", "complete"), err
    assert row["literal_bytes"] == row["missing_bytes"]
    assert not lock.exists()  # released: the next sync may run
    code, report = fab_json(lab_inv, "verify-cache", "--deep")
    assert code == 0 and by_host(report)["mac4"]["verdict"] == "complete"
