"""Sessions opened ahead of the command that needs them, so that the ssh handshake overlaps a wait.

train-window opens its gate's sessions (reap, then the writer's checkpoint.json) while the ranks
tear down after their last commit, instead of after: ``prepare`` starts opening them in the
background, and the next :func:`thunderlane.remote.run` on each host takes its session (once).
A session that failed to open or is no longer active is never used: that run opens its own, and
so says whatever is wrong with the host as it always did. Sessions nobody took are closed by
``discard``.
"""
import threading
from concurrent.futures import ThreadPoolExecutor

_ready = {}  # {(inventory path, host name): Future of an open Fabric connection}
_lock = threading.Lock()


def prepare(inv, hosts, opener):
    """Start ``opener(inv, host)`` (``remote.open_session``) for each remote host of ``hosts`` not
    already prepared; return at once. Chosen and started under the lock: two concurrent calls
    never open two sessions for one host."""
    with _lock:
        todo = [h for h in hosts if not h.is_local and (inv.path, h.name) not in _ready]
        if not todo:
            return
        pool = ThreadPoolExecutor(max_workers=len(todo), thread_name_prefix="lane-presession")
        for h in todo:
            _ready[(inv.path, h.name)] = pool.submit(opener, inv, h)
    pool.shutdown(wait=False)


def take(inv, host):
    """The session prepared for ``host`` (now the caller's, to close), or None: none prepared, or it
    failed to open (the caller's own attempt says why), or its transport is gone."""
    with _lock:
        future = _ready.pop((inv.path, host.name), None)
    if future is None:
        return None
    try:
        conn = future.result(timeout=inv.ssh.connect_timeout * 3)
    except Exception:  # noqa: BLE001 - any failure: the caller opens a session of its own
        future.add_done_callback(_close)  # still opening (timed out): closed when it opens, nobody's
        return None
    if conn.transport is None or not conn.transport.is_active():
        conn.close()
        return None
    return conn


def discard():
    """Close every prepared session nobody took (waiting for those still opening)."""
    with _lock:
        futures = list(_ready.values())
        _ready.clear()
    for future in futures:
        _close(future)


def _close(future):
    """Close the session ``future`` opened (waiting for it), if it opened one."""
    try:
        future.result().close()
    except Exception:  # noqa: BLE001 - a session that never opened has nothing to close
        pass


def pending():
    """How many prepared sessions wait to be taken (tests)."""
    with _lock:
        return len(_ready)
