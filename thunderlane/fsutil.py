"""Control-side file and process helpers: the one atomic write and the one "is this PID alive".

(The on-host code has its own in ``onhost/files.py``: it is sent to hosts as source and cannot
import this package.)
"""
import os
from pathlib import Path


def atomic_write(path, text, mode=0o644):
    """Write ``text`` under a temporary name beside ``path``, then rename it onto ``path``: a crash
    leaves the old file or the new one, never a torn one under the final name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def pid_alive(pid):
    """Is there a process ``pid`` on this machine (one we may not signal counts)?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
