"""Ending what is left of a process group whose leader has already exited and been reaped.

A process group's id is its leader's pid. Once the leader is reaped, that pid is free, but POSIX
does not hand it out again while any process of the group lives ("a process group ID shall not be
reused by the system until the process group lifetime ends"; Linux and XNU both skip such ids).
So the group may be signalled as long as it is seen alive, and never again once it was seen gone:
a later process given the same id may lead a group of its own (pid reuse).
"""
import os
import signal
import time

END_GRACE = 1.0  # seconds what is left of a group gets after SIGTERM (rsync removes its temp file)
LOOK = 0.05      # seconds between looks at the group during the grace


def signal_group(pgid, sig):
    """Send ``sig`` (0: only look) to group ``pgid``. False when no process of it is left (or none
    is ours to signal): the id may then belong to someone else, so the caller stops there."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def end_leftovers(pgid, grace=END_GRACE, clock=time.monotonic, sleep=time.sleep):
    """SIGTERM what is left of group ``pgid``, then SIGKILL it if it still lives ``grace`` seconds
    later (a leftover that ignores or outlasts TERM). Returns the signals sent, in order.

    The KILL goes right after a look that found the group alive, never after one that found it
    gone; the id could only belong to another group if, within the microseconds between the two,
    the last process of the group ended and the id was handed out again (the pid counter wrapping
    round) to a process that made itself a group leader. A zombie of the group (init has not
    reaped it yet) counts as alive: it may get the KILL, which does it no harm."""
    if not signal_group(pgid, signal.SIGTERM):
        return []
    deadline = clock() + grace
    while signal_group(pgid, 0):
        if clock() >= deadline:
            return [signal.SIGTERM, signal.SIGKILL] if signal_group(pgid, signal.SIGKILL) else [signal.SIGTERM]
        sleep(LOOK)
    return [signal.SIGTERM]
