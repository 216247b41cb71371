"""Control-side file and process helpers: the one atomic write, the one "is this PID alive", and
the lock directory (atomic, owner inside from the first instant).

(The on-host code has its own in ``onhost/files.py``: it is sent to hosts as source and cannot
import this package.)
"""
import json
import os
import shutil
import stat
import subprocess
import tempfile
import time
from pathlib import Path

from .onhost.files import full_fsync  # the one durable-write helper, control side and hosts alike

HOLDER = "holder"  # a lock folder's note of who holds it (take_lock's ``note``)


def atomic_write(path, text, mode=0o644):
    """Write ``text`` to ``path`` through a temporary file, then rename it onto ``path``: a crash
    leaves the old file or the new one, never a torn one under the final name. No link is ever
    followed: the temporary file is created new (O_EXCL, O_NOFOLLOW) inside a private folder
    (mkdtemp, 0700) beside ``path``, and the rename replaces a link at ``path`` rather than
    writing where it points."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    private = tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp")
    tmp = os.path.join(private, "new")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            full_fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(private, ignore_errors=True)
    return path


def real_folder(path, root):
    """Make sure ``path`` is a folder below ``root`` reached through no link (each part from
    ``root`` down is checked with lstat); create missing parts. A link is an OSError naming it."""
    path, root = Path(path), Path(root)
    root.mkdir(parents=True, exist_ok=True)
    here = root
    for part in path.relative_to(root).parts:
        here = here / part
        try:
            st = os.lstat(here)
        except FileNotFoundError:
            os.mkdir(here)
            continue
        if not stat.S_ISDIR(st.st_mode):
            raise OSError(f"{here} is {'a link' if stat.S_ISLNK(st.st_mode) else 'not a folder'}: "
                          "nothing is written through it")
    return path


def fsync_dir(path):
    """Make a rename in ``path`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        full_fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def pid_alive(pid):
    """Is there a process ``pid`` on this machine (one we may not signal counts)?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def command_line(pid):
    """``pid``'s command line as ps shows it (procps and BSD ps alike; no /proc on macOS; ``-ww``:
    never cut at a terminal's width), or ''."""
    p = subprocess.run(["ps", "-ww", "-o", "command=", "-p", str(pid)], capture_output=True, text=True)
    return p.stdout.strip() if p.returncode == 0 else ""


def process_started(pid):
    """When process ``pid`` started, as ``ps -o lstart=`` prints it (BSD and procps alike), or None
    when there is no such process. With the PID it names a process: a reused PID has another start."""
    p = subprocess.run(["ps", "-o", "lstart=", "-p", str(pid)], capture_output=True, text=True,
                       env={"LC_ALL": "C", "PATH": os.environ.get("PATH", "/usr/bin:/bin")})
    return p.stdout.strip() or None


def lock_holder(path):
    """(None | 'held' | 'stale', pid) of the lock directory ``path``: held while the process that
    took it (same PID and start time) still runs."""
    path = Path(path)
    if not path.is_dir():
        return None, None
    try:
        pid = int((path / "pid").read_text().strip())
    except (OSError, ValueError):
        return "stale", None
    try:
        started = (path / "started").read_text().strip()
    except OSError:
        started = None
    alive = pid_alive(pid) and (started is None or started == process_started(pid))
    return ("held" if alive else "stale"), pid


def take_lock(path, pid, note=None):
    """Take the lock directory ``path`` for process ``pid``: ('taken', None), ('taken-over', the
    stale owner's pid) or ('held', the owner's pid). Atomic, and with its owner inside from the
    first instant: the directory is built under a private name with ``pid``, ``started`` and
    ``note`` (a dict saying who holds it, see :func:`lock_note`) and renamed into place, which
    fails while another lock (never empty) is there."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stale = None
    for _ in range(5):
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.new."))
        (tmp / "pid").write_text(f"{pid}\n")
        (tmp / "started").write_text(f"{process_started(pid) or ''}\n")
        if note is not None:
            (tmp / HOLDER).write_text(json.dumps(note, sort_keys=True) + "\n")
        try:
            os.rename(tmp, path)
            return ("taken-over", stale) if stale else ("taken", None)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
        state, owner = lock_holder(path)
        if state == "held":
            return "held", owner
        stale = owner if state == "stale" else stale
        _move_aside(path)
    return "held", lock_holder(path)[1]


def lock_note(path):
    """The note in lock ``path`` saying who holds it (a dict), or None: a lock taken without one
    (by an older tree, or by a bare chunk runner), or one gone or unreadable meanwhile."""
    try:
        note = json.loads((Path(path) / HOLDER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return note if isinstance(note, dict) else None


def _move_aside(path):
    """Rename a stale lock out of the way (another taker may have done it first: fine)."""
    try:
        os.rename(path, path.with_name(f".{path.name}.stale.{os.getpid()}.{time.monotonic_ns()}"))
    except OSError:
        return
    for old in path.parent.glob(f".{path.name}.stale.*"):
        shutil.rmtree(old, ignore_errors=True)
