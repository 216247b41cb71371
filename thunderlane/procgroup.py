"""Ending what is left of a process group whose leader has already exited and been reaped.

A process group's id is its leader's pid. Once the leader is reaped, that pid is free, but POSIX
does not hand it out again while any process of the group lives ("a process group ID shall not be
reused by the system until the process group lifetime ends"; Linux and XNU both skip such ids).
So the group may be signalled while it is seen alive, and never again once it was seen gone: a
later process given the same id may lead a group of its own (pid reuse). A look is no proof: the
group may end right after it (see :func:`end_leftovers` for what that exposes).
"""
import os
import signal
import time

END_GRACE = 1.0  # seconds what is left of a group gets after SIGTERM (rsync removes its temp file)
LOOK = 0.05      # seconds between looks at the group during the grace


def signal_group(pgid, sig):
    """Send ``sig`` (0: only look) to group ``pgid``. False when no process of it is left (ESRCH),
    or none is ours to signal (EPERM; macOS also says EPERM to a group left with only zombies): the
    id may then belong to someone else, so the caller stops there."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def end_leftovers(pgid, grace=END_GRACE, clock=time.monotonic, sleep=time.sleep):
    """SIGTERM what is left of group ``pgid``, then SIGKILL it if it still lives ``grace`` seconds
    later (a leftover that ignores or outlasts TERM). Returns the signals sent, in order.

    The KILL goes only right after a look that found the group alive, never after one that found
    it gone. That narrows pid reuse, it does not rule it out: the exposure is the whole grace. The
    group may end at any moment of it, and each look follows a ``LOOK`` (50 ms) sleep; were the id
    handed out again within those 50 ms (the pid counter wrapping round to it) to a process that
    made itself a group leader, that look and every later one would find the newcomer's group
    alive, and it would get the KILL at the end of the grace. On Linux a group left with only
    zombies (init has not reaped them yet) is seen alive and may get the KILL, which does them no
    harm; on macOS killpg says EPERM to such a group, which :func:`signal_group` takes as gone."""
    if not signal_group(pgid, signal.SIGTERM):
        return []
    deadline = clock() + grace
    while signal_group(pgid, 0):
        if clock() >= deadline:
            return [signal.SIGTERM, signal.SIGKILL] if signal_group(pgid, signal.SIGKILL) else [signal.SIGTERM]
        sleep(LOOK)
    return [signal.SIGTERM]
