"""How rsync reaches a host's paths when they have spaces (``/Volumes/T7 Shield``): the remote
path quoted for the host's shell, the local rsync told not to escape it again, and an ssh command
that survives rsync's ``-e`` splitting. For rsync 3.x, 2.6.9 and openrsync alike."""
import os
import shlex
import shutil
import tempfile
from contextlib import contextmanager

from .remote import ssh_command


def has_spaced_ssh_file(inv):
    """Does one of the lane's ssh files (config, known_hosts, key) have a path ``shlex`` must quote
    (white space, or punctuation such as ``(`` or ``&`` that the inventory accepts)? openrsync and the
    launcher split ``-e`` on spaces without removing quotes, so such a command needs the wrapper."""
    return any(shlex.quote(p) != p for p in (inv.ssh.config, inv.ssh.known_hosts, inv.ssh.identity) if p)


@contextmanager
def rsync_shell(inv, host):
    """The ssh command for ``rsync -e`` and the sync launcher's ``--ssh``: :func:`ssh_command`, or,
    when an ssh file's path needs quoting (:func:`has_spaced_ssh_file`), a wrapper script that runs it, at a path without
    (``/tmp/thunder-rsh.*/ssh``, removed afterwards): openrsync splits ``-e`` on every space, quotes
    or not, and so does the launcher's ``--ssh``."""
    command = ssh_command(inv, host)
    if not has_spaced_ssh_file(inv):
        yield command
        return
    folder = tempfile.mkdtemp(prefix="thunder-rsh.", dir="/tmp")
    try:
        wrapper = os.path.join(folder, "ssh")
        with open(wrapper, "w", encoding="utf-8") as f:
            f.write(f'#!/bin/sh\nexec {command} "$@"\n')
        os.chmod(wrapper, 0o700)
        yield wrapper
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def rsync_remote(host, path):
    """``user@host:PATH`` as rsync takes it, PATH quoted for the host's shell: rsync 2.6.9 and
    openrsync hand it to that shell as it is. Run rsync with :func:`rsync_env`."""
    return f"{host.destination}:{shlex.quote(path)}"


def rsync_env():
    """The environment for a local rsync given :func:`rsync_remote` paths: rsync 3.2.4+ would
    backslash-escape the quoted path once more (its quotes would then arrive as part of the name);
    RSYNC_OLD_ARGS=1 stops that, and older rsyncs ignore it. RSYNC_PROTECT_ARGS (rsync 3.0-3.2.3's
    -s by default) would do the same harm: it is dropped."""
    env = dict(os.environ, RSYNC_OLD_ARGS="1")
    env.pop("RSYNC_PROTECT_ARGS", None)
    return env
