"""launchers/peer_rsyncd.sh with a source check beside the daemon's start (as the sync launcher's
rsyncd session runs it on SRC): the check's lines come first, then "src-end", and the daemon's port
only when the check named a revision and found nothing unsafe; otherwise the daemon it started is
stopped and its folder removed before anyone is told where it listens."""
import glob
import shlex
import subprocess

import pytest

from tests.lab.test_sync_launcher_rsyncd import WRAPPER, daemons

SECRET = "0123456789abcdef0123456789abcdef\n"


def serve(tmp_path, check_output):
    """Run the wrapper on 127.0.0.1 with a check that prints ``check_output``; stdin closed at once."""
    check = f"printf '%s\\n' {shlex.quote(check_output)}; sleep 0.3"
    p = subprocess.run(["sh", str(WRAPPER), str(tmp_path), "rsync", "127.0.0.1", "127.0.0.1", check, "x"],
                       input=SECRET, capture_output=True, text=True, timeout=30)
    return p.returncode, p.stdout.splitlines()


def test_a_check_that_names_a_revision_comes_first_then_the_port(tmp_path):
    code, lines = serve(tmp_path, "src-rev abc")
    assert code == 0 and lines[:2] == ["src-rev abc", "src-end"], lines
    assert len(lines) == 3 and lines[2].startswith("port "), lines
    assert not daemons() and not glob.glob("/tmp/thunder-rsyncd.*")


@pytest.mark.parametrize("said", ["src-rev abc\nsrc-unsafe blobs/x (/etc)", "src-missing", ""])
def test_no_port_unless_the_check_passed(tmp_path, said):
    code, lines = serve(tmp_path, said)
    assert code == 0 and lines[-1] == "src-end", lines
    assert not [line for line in lines if line.startswith("port ")], lines
    assert not daemons() and not glob.glob("/tmp/thunder-rsyncd.*")
