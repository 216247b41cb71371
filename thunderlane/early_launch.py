"""The sync launcher started while sync-cache's verify before still runs, held at a gate until the
verify's verdict is in.

The launcher's first part is local: bash, its argument and source checks, the link walk of the
local repo folder, the local tree listing (on the lab a third of its fixed cost). Every contact it
makes with the host is an ssh through its ``--ssh`` command, rsync's ``-e`` included. Here that
command is a wrapper (:class:`Gate`) that waits until fab decides: ``go`` (the verify passed and
the cache roots the launcher was given are the verified ones) runs the lane's ssh, ``stop`` makes
every ssh fail with 255, so the launcher ends having sent nothing and changed nothing on the host.
The ``go`` file carries the ssh options fab decided at that moment (those that put the sessions on
its master connection, once ``mux.Master.ready`` has answered yes; none otherwise), which the wrapper
puts where the late launcher's ``--ssh`` has them: the early launcher's ssh is the late one's.

The launcher needs both cache roots on its command line before the verify has said them: the
inventory's ``hf_cache``, else the root the host's last verify resolved, kept per host in
``<local runs root>/.cache-roots.json`` (:func:`predicted_root`). A root not known yet, or not the
verified one, only means no early start: the sync starts its launcher after the verify, as before.
"""
import json
import os
import shlex
import shutil
import signal
import subprocess
import tempfile

from . import fsutil, layout
from .sshopts import ssh_command
from .transfer import _stop_group

MEMO = ".cache-roots.json"
ENV = "THUNDER_EARLY_LAUNCH"  # "0" turns it off


def enabled():
    """Is the early start on? On unless $THUNDER_EARLY_LAUNCH is "0". It was off for one stop: in
    one fresh-clone CI run, fault 34's rerun (the cable plugged back) failed once with the
    launcher's ssh exiting 255, never reproduced since (53 runs of fault 34 under load); its ssh
    options, the one suspect, are now decided at ``go`` (the late launcher's exactly), and an exit
    255 says which ssh failed and why (``sync.ssh_said``)."""
    return os.environ.get(ENV) != "0"


STOP_WAIT = 10.0   # seconds a stopped launcher gets to end before its group is killed

# fab gone (killed), the folder gone or a stop: no ssh, ever. ``go`` holds the options fab decided,
# words that need no quoting (Gate.open checks), split on white space with globbing off
WRAPPER = """#!/bin/sh
# thunder lane: the sync launcher's ssh, held until sync-cache's verify before has passed
g={folder}
n=0
while [ ! -e "$g/go" ]; do
  [ -d "$g" ] && [ ! -e "$g/stop" ] && kill -0 {pid} 2>/dev/null || exit 255
  n=$((n + 1))   # a look every 10 ms for the first second (a verify's usual length), then every 100 ms
  if [ "$n" -le 100 ]; then sleep 0.01 2>/dev/null || sleep 1; else sleep 0.1 2>/dev/null || sleep 1; fi
done
o=$(cat "$g/go") || exit 255
set -f
exec {command} $o "$@"
"""


class Gate:
    """A private folder holding the ssh wrapper (:attr:`ssh`, a path without spaces) and, once fab
    has decided, a ``go`` or a ``stop`` file."""

    def __init__(self, inv, host):
        self.folder = tempfile.mkdtemp(prefix="thunder-gate.", dir="/tmp")
        self.ssh = os.path.join(self.folder, "ssh")
        try:
            with open(self.ssh, "w", encoding="utf-8") as f:
                f.write(WRAPPER.format(folder=shlex.quote(self.folder), pid=os.getpid(),
                                       command=ssh_command(inv, host)))
            os.chmod(self.ssh, 0o700)
        except BaseException:   # /tmp full: no gate folder is left behind
            self.remove()
            raise

    def open(self, options=()):
        """Let every ssh through, ``options`` (words that need no quoting) before the launcher's own.
        Written aside, then renamed: a wrapper never reads a ``go`` half written."""
        bad = [w for w in options if not w or shlex.quote(w) != w]
        if bad:
            raise ValueError(f"ssh options for the gate must need no quoting: {bad}")
        part = os.path.join(self.folder, "go.part")
        with open(part, "w", encoding="utf-8") as f:
            f.write(" ".join(options) + "\n")
        os.rename(part, os.path.join(self.folder, "go"))

    def shut(self):
        open(os.path.join(self.folder, "stop"), "w").close()

    def remove(self):
        shutil.rmtree(self.folder, ignore_errors=True)


class EarlyLauncher:
    """The launcher ``argv_for(ssh)`` (its ``--ssh`` the gate's wrapper), started at creation with
    its cache roots ``roots`` (local's, the host's). :meth:`go` lets it reach the host, with the ssh
    options decided then; :meth:`stop` ends it without; :meth:`close` (always) removes the gate."""

    def __init__(self, inv, host, roots, argv_for):
        self.roots, self.argv_for, self.ssh = roots, argv_for, ssh_command(inv, host)
        self.gate = Gate(inv, host)
        try:
            self.argv = argv_for(self.gate.ssh)
            # a session of its own, as transfer.stream starts it: the watchdog stops its whole group
            self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        except BaseException:
            self.gate.remove()
            raise

    def fits(self, roots):
        """Were the launcher's cache roots the verified ones?"""
        return tuple(roots) == tuple(self.roots)

    def shown(self, shared=()):
        """What the report and the printed ``$`` line show: the same launcher with the lane's own ssh
        and ``shared`` (what the gate's wrapper runs once :meth:`go` has passed them), a command a
        person can run again."""
        return self.argv_for(" ".join([self.ssh, *map(shlex.quote, shared)]))

    def go(self, shared=()):
        """Let its ssh sessions through, ``shared`` (ssh options that need no quoting, e.g. those that
        put them on fab's master) before the launcher's own; the process, for :func:`transfer.stream`."""
        self.gate.open(shared)
        return self.proc

    def stop(self):
        """End it before it reaches the host, its output dropped: the gate shut (any ssh of it fails),
        then its group ended at once (its trap removes its temporary folders; a nothing-missing
        sync does not wait for its local checks)."""
        self.gate.shut()
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.communicate(timeout=STOP_WAIT)
        except subprocess.TimeoutExpired:
            _stop_group(self.proc)
            self.proc.communicate()

    def close(self):
        """Stop the launcher if it still runs (never let through: :meth:`stop`; let through, its
        follower gone without it, e.g. a failure before :func:`transfer.stream` read it: its group
        ended), close its output and remove the gate."""
        if self.proc.poll() is None:
            if not os.path.exists(os.path.join(self.gate.folder, "go")):
                self.stop()
            else:
                _stop_group(self.proc, grace=STOP_WAIT)
                self.proc.wait()
        if self.proc.stdout and not self.proc.stdout.closed:
            self.proc.stdout.close()
        self.gate.remove()


# ---- the cache roots the launcher is started with ----------------------------------------------

def _memo(inv):
    return layout.local(inv).root / MEMO


def _key(host):
    return f"{host.name} {host.destination} {host.port}"


def predicted_root(inv, host):
    """``host``'s cache root (``local`` for the control machine) as the inventory names it, else as
    its last verify resolved it, else None."""
    if host.hf_cache:
        return host.hf_cache
    try:
        known = json.loads(_memo(inv).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    root = known.get(_key(host)) if isinstance(known, dict) else None
    return root if isinstance(root, str) else None


def remember_root(inv, host, root):
    """Keep the cache root ``host``'s verify resolved (when the inventory names none), for the next
    sync's early start. Best effort: a memo that cannot be written only costs that early start."""
    if host.hf_cache or not root or predicted_root(inv, host) == root:
        return
    path = _memo(inv)
    try:
        known = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    known = known if isinstance(known, dict) else {}
    known[_key(host)] = root
    try:
        fsutil.atomic_write(path, json.dumps(known, indent=1, sort_keys=True) + "\n", mode=0o600)
    except OSError:
        pass
