"""The window lock on the control machine: one window of a run at a time.

The chunk runner takes it (``mkdir``, atomic) and removes it on exit; it holds the runner's pid.
"""
from .. import layout
from ..fsutil import pid_alive


def lock_dir(inv, profile):
    return layout.local(inv).lock(profile.run_name)


def lock_state(inv, profile):
    """(None | 'held' | 'stale', pid) of the window lock."""
    path = lock_dir(inv, profile)
    if not path.is_dir():
        return None, None
    try:
        pid = int((path / "pid").read_text().strip())
    except (OSError, ValueError):
        return "stale", None
    return ("held" if pid_alive(pid) else "stale"), pid
