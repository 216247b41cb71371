"""The window lock on the control machine: one window of a run at a time.

The chunk runner takes it through ``launcher_helpers take-lock`` (``fsutil.take_lock``: atomic, its
owner's PID and start time inside from the first instant) and removes it on exit. ``fab
train-window`` (and ``fab handoff``'s window) takes it for its runner and ``fab evaluate --on HOST``
for itself; both leave a note in it saying who they are (:class:`Holder`), so that a refusal can
name them. A lock without
a note (a bare chunk runner's, or an older tree's) is described as a window's, as it always was.
"""
import time
from dataclasses import dataclass

from .. import layout
from ..fsutil import lock_holder, lock_note


@dataclass(frozen=True)
class Holder:
    """Who holds the window lock, as its note says: the fab task, the host it runs on (``evaluate
    --on``), the lock owner's pid, when it took the lock (UTC), and ``fab``'s own pid when the
    owner is the chunk runner fab started (a window: train-window's, or handoff's)."""
    task: str
    pid: int
    since: str
    host: str = ""
    fab: int | None = None

    def words(self):
        """'fab evaluate --on mac4 (pid 4242, since 2026-11-30 04:00:45 UTC)';
        'fab handoff (pid 4240; chunk runner pid 4242, since ...)'"""
        on = f" --on {self.host}" if self.host else ""
        pids = f"pid {self.fab}; chunk runner pid {self.pid}" if self.fab else f"pid {self.pid}"
        return f"fab {self.task}{on} ({pids}, since {self.since})"

    @property
    def is_window(self):
        return self.fab is not None


def note(task, pid, host="", now=None, fab=None):
    """The note a taker of the window lock leaves in it (see :func:`fsutil.take_lock`): ``pid`` the
    lock's owner, ``fab`` fab's own pid when that owner is the chunk runner it started."""
    since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(now))
    found = {"task": task, "host": host, "pid": int(pid), "since": since}
    return found if fab is None else {**found, "fab": int(fab)}


def parse_holder(raw, pid):
    """The :class:`Holder` a lock's note names, or None: no note, a malformed one, or one about
    another process than the lock's owner ``pid`` (the lock changed hands between the reads)."""
    if not isinstance(raw, dict) or raw.get("pid") != pid or pid is None:
        return None
    task, host, since, fab = raw.get("task"), raw.get("host", ""), raw.get("since"), raw.get("fab")
    if not all(isinstance(v, str) and v.isprintable() and len(v) <= 200 for v in (task, host, since)) or not task:
        return None
    if fab is not None and (type(fab) is not int or fab <= 0):
        return None
    return Holder(task, pid, since, host, fab)


def lock_dir(inv, profile):
    return layout.local(inv).lock(profile.run_name)


def lock_state(inv, profile):
    """(None | 'held' | 'stale', pid) of the window lock."""
    return lock_holder(lock_dir(inv, profile))


def lock_holder_of(inv, profile):
    """(None | 'held' | 'stale', pid, :class:`Holder` or None) of the window lock: the holder only
    while it is held and its note says who holds it."""
    path = lock_dir(inv, profile)
    state, pid = lock_holder(path)
    return state, pid, parse_holder(lock_note(path), pid) if state == "held" else None
