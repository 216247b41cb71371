"""The window lock on the control machine: one window of a run at a time.

The chunk runner takes it through ``launcher_helpers take-lock`` (``fsutil.take_lock``: atomic, its
owner's PID and start time inside from the first instant) and removes it on exit.
"""
from .. import layout
from ..fsutil import lock_holder


def lock_dir(inv, profile):
    return layout.local(inv).lock(profile.run_name)


def lock_state(inv, profile):
    """(None | 'held' | 'stale', pid) of the window lock."""
    return lock_holder(lock_dir(inv, profile))
