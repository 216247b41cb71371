"""sync-cache: make a cold host's model cache complete with the sync launcher, then prove it.

Plan (verify local and the host, work out what is missing), act (the launcher's rsync over the
inventory's ssh settings), check (verify the host again; bytes sent against bytes missing).
"""
import functools
import os
import re
import shlex
import shutil
import sys
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field

from . import early_launch, facts as queries, fsutil, layout, mux
from .inventory import InventoryError, abs_path
from .remote import HostError, ask, ask_each, ssh_command
from .rsync_ssh import rsync_shell
from .report import human_bytes
from .rsync_lines import parse_summary
from .standby import StandbyProbe
from .transfer import stream
from .verify import cache_query, gather_caches, judge_caches

LAUNCHER = layout.SYNC

EXIT_MEANINGS = {
    11: "rsync: file I/O error on the receiving side (is the host's disk full or read-only?)",
    23: "rsync: partial transfer (some files could not be sent: permissions, or the disk is full?)",
    24: "rsync: some source files vanished while sending (is something writing the local cache?)",
    30: "rsync: timeout while sending or receiving data (the link dropped?)",
    255: "ssh failed: host unreachable, refused, or its host key unknown/changed",
    64: "launcher: bad arguments",
    65: "launcher refused a path (outside the cache root, or an unsafe link)",
    66: "launcher: the local cache is not usable as the source",
    67: "launcher: could not clean up or prepare the host's cache folder",
    69: "no usable rsync on the host: install one or set rsync_path in the inventory",
}
DISK_FULL = re.compile(r"No space left on device|Disk quota exceeded")


class SyncError(RuntimeError):
    pass


@dataclass
class SyncOutcome:
    host: str
    before: object          # HostResult before
    after: object           # HostResult after (None on dry run)
    missing_bytes: int
    literal_bytes: int | None
    total_sent: int | None
    command: str
    seconds: float
    literal_from: str | None = None   # "stats" (rsync's own), "itemized" (derived), "progress"; "none": nothing ran
    derivation: str = ""              # how a figure not rsync's own was made, e.g. " (derived from 3 files itemized)"
    phases: dict = field(default_factory=dict)  # seconds: verify_before, launcher, verify_after (standby_unused)

    @property
    def sent_nothing(self):
        """The verify before proved the host complete: no launcher ran (no command)."""
        return not self.command

    @property
    def ok(self):
        return self.after is not None and self.after.ok

    @property
    def ratio(self):
        if not self.missing_bytes or self.literal_bytes is None:
            return None
        return self.literal_bytes / self.missing_bytes


def io_timeout(inv, checksum):
    """Seconds the sync may stay silent: ``ssh.rsync_timeout``, or with ``--checksum`` (rsync hashes
    the whole cache on both sides and prints nothing until a file differs) ``ssh.deep_probe_timeout``,
    as a deep verify is given."""
    return max(inv.ssh.rsync_timeout, inv.ssh.deep_probe_timeout) if checksum else inv.ssh.rsync_timeout


def launcher_argv(inv, host, src_cache, dest_cache, dry_run=False, checksum=False, bwlimit=None, ssh=None,
                  source=()):
    """The exact launcher command line for ``host``; ``ssh``: the ``--ssh`` value (default: the
    inventory's ssh command; :func:`rsync_ssh.rsync_shell` when an ssh file's path has a space);
    ``source``: the options that make the host pull from a peer (``peers.launcher_options``)."""
    ssh = ssh or ssh_command(inv, host)
    argv = ["bash", str(LAUNCHER), "--src-cache", src_cache, "--dest-cache", dest_cache,
            "--repo", inv.repo_id, "--ssh", ssh, "--rsync-path", host.rsync_path, "--host-python", host.python,
            "--timeout", str(io_timeout(inv, checksum))]
    argv += ["--dry-run"] if dry_run else []
    argv += ["--checksum"] if checksum else []
    argv += ["--bwlimit", str(int(bwlimit))] if bwlimit else []
    return argv + list(source) + [host.destination]


def dest_cache_of(host, facts):
    """The host's cache root: the inventory's, else as the host's lane interpreter resolved it."""
    root = host.hf_cache or facts.cache_root
    try:
        return abs_path(root, "cache root", host.name, "hf_cache")
    except InventoryError as e:
        raise SyncError(str(e)) from None


def explain(code, output, free=None, needed=None):
    """What an exit code of the launcher (or rsync, or ssh) means, the disk-full case first: rsync
    does not always relay the receiver's ENOSPC message, so the host's free space is asked too. An
    ssh failure (255) adds what the launcher and ssh said of it (:func:`ssh_said`)."""
    if DISK_FULL.search(output) or (free is not None and needed and free < needed):
        room = f"; {human_bytes(free)} free, {human_bytes(needed)} needed" if free is not None else ""
        return f"the host's disk is full (No space left on device{room}); free space and run again"
    said = ssh_said(output) if code == 255 else ""
    return EXIT_MEANINGS.get(code, "see the output above") + (f" ({said})" if said else "")


SSH_WORDS = re.compile(r"\bssh\b|rsync error|[Cc]onnection|banner|[Mm]aster|not responding")


def ssh_said(output, limit=2):
    """The last ``limit`` lines of the launcher's output that speak of ssh (which ssh failed, and ssh's
    own reason: a refused or timed-out connection, a closed master), joined; '' if none. With the
    summary alone (``--json``), an exit 255 did not say which connection failed, nor why."""
    said = [line.strip() for line in output.splitlines() if SSH_WORDS.search(line)]
    return "; ".join(said[-limit:])[-400:]


def free_bytes(inv, host, path):
    """Free bytes under ``path`` on ``host`` (None if it cannot be asked)."""
    try:
        return ask(inv, host, queries.run(path, "-"))[0].free_bytes
    except HostError:
        return None


def _refuse_links(host, facts):
    """Snapshot links on the host that leave its repo folder other than into its own marked shared
    store: the sync would write beside them, so the operator looks first. huggingface_hub 2.x's
    shared store is fine on either side: local's store entries are sent as the files they are and
    the host's are kept as they are (see the launcher)."""
    escaping = [n for n, e in facts[host.name].files.items() if e.escapes]
    if escaping:
        raise SyncError(f"{host.name}: snapshot link(s) {', '.join(sorted(escaping))} point outside the "
                        f"repo folder on the host; refusing to sync into it: inspect and remove them first")


def lock_path(inv, host):
    """The per-host sync lock on the control machine: two sync-caches to one host never interleave."""
    return layout.local(inv).root / ".locks" / f"sync-cache.{host.name}.lock"


class HostLock:
    """``host``'s sync lock (:func:`lock_path`): two sync-caches to one host never interleave. It is
    taken in the background from creation on, so that the ``ps`` recording its owner's start time
    overlaps the verify before (which only reads); :meth:`hold` waits for it and refuses rather
    than waits for another sync (a sync runs for minutes, and the second one's plan would be stale)."""

    def __init__(self, inv, host):
        self.host, self.path = host, lock_path(inv, host)
        self._state = self._error = None
        self._thread = threading.Thread(target=self._take, daemon=True)
        self._thread.start()

    def _take(self):
        try:
            self._state = fsutil.take_lock(self.path, os.getpid())
        except Exception as e:  # the runs root cannot be written, or worse: said by hold(), naming the lock
            self._error = e

    def hold(self):
        """Return once the lock is ours; else :class:`SyncError` naming who holds it."""
        self._thread.join()
        if self._error is not None:
            raise SyncError(f"{self.host.name}: cannot take the sync lock {self.path}: {self._error}")
        state, owner = self._state
        if state == "held":
            raise SyncError(f"{self.host.name}: another sync-cache (pid {owner or '?'}) is syncing this host now; "
                            f"run again when it has finished (lock {self.path})")

    def release(self):
        """Remove the lock if it is ours. The owner's pid in it is enough: a lock is taken over only
        when its owner is gone (or its start time differs), and then the pid in it is the taker's."""
        self._thread.join()
        try:
            ours = int((self.path / "pid").read_text()) == os.getpid()
        except (OSError, ValueError):
            return
        if ours:
            shutil.rmtree(self.path, ignore_errors=True)


def sync_cache(inv, host, dry_run=False, checksum=False, bwlimit=None, verbose=False, out=sys.stdout, source=(),
               gathered=None, master=None):
    """Verify, push what is missing, verify again, under the host's sync lock. Raises
    :class:`SyncError` on any failure. ``checksum`` compares contents (and verifies deeply before
    and after): it repairs a blob whose bytes changed without its size or mtime changing.
    ``source``: launcher options that make the host pull from a peer (default: push from local).
    ``gathered``: local's and the host's cache facts, just asked (with ``checksum``'s depth), which
    are then not asked again. ``master``: a :class:`mux.Master` to the host the caller opened (and
    closes) for the launcher's sessions; without one, one is opened beside the verify before."""
    lock = HostLock(inv, host)
    try:
        return _sync(inv, host, dry_run, checksum, bwlimit, verbose, out, source, gathered, lock, master)
    finally:
        lock.release()


def nothing_missing(result, facts):
    """Whether the verify before proves there is nothing to do: the host is complete against local
    (same revision, files, sizes and blob names; with ``--checksum`` every blob re-hashed against
    its name) and keeps no ``*.incomplete`` file the launcher would clean up."""
    return result.ok and not facts.incomplete


def _sync(inv, host, dry_run, checksum, bwlimit, verbose, out, source, gathered, lock, given=None):
    # the launcher's ssh connection, opened while the verify before runs (``mux.py``)
    master = given or (mux.Master(inv, host) if gathered is None else None)
    try:
        return _sync_shared(inv, host, dry_run, checksum, bwlimit, verbose, out, source, gathered, master, lock)
    finally:
        if master and not given:
            master.close()


def _sync_shared(inv, host, dry_run, checksum, bwlimit, verbose, out, source, gathered, master, lock):
    t0 = time.monotonic()
    argv_for = functools.partial(_argv_for, inv, host, dry_run, checksum, bwlimit, source)
    # with the verify before still to run, the launcher starts now and waits at its gate (``early_launch.py``)
    early = _start_early(inv, host, argv_for) if gathered is None else None
    try:
        return _verified_sync(inv, host, dry_run, checksum, verbose, out, gathered, master, lock, argv_for, early, t0)
    finally:
        if early:
            early.close()


def _verified_sync(inv, host, dry_run, checksum, verbose, out, gathered, master, lock, argv_for, early, t0):
    try:
        facts, host_before = _plan(inv, host, checksum, gathered)
    except (SyncError, HostError):
        lock.hold()  # another sync holding the host is said first, whatever the verify found
        raise
    lock.hold()
    phases = {"verify_before": time.monotonic() - t0}
    missing = host_before.figures.get("missing_bytes") or 0
    if not dry_run and nothing_missing(host_before, facts[host.name]):
        out.write(f"{host.name}: {host_before.verdict} before sync ({host_before.detail}); nothing missing: "
                  f"nothing to send\n")
        return SyncOutcome(host.name, host_before, host_before, 0, 0, 0, "", time.monotonic() - t0,
                           "none", phases=phases)
    roots = (facts["local"].cache_root, dest_cache_of(host, facts[host.name]))
    _remember(inv, host, roots)
    if early and not early.fits(roots):  # predicted wrong: that launcher never reached the host
        early.stop()
        early = None
    # the verify after, started on the host now (handshake, interpreter, imports) and told to go
    # once the launcher has exited: what it reads is the host after the transfer
    after_probe = None if dry_run else StandbyProbe(inv, host, cache_query(inv, host, deep=checksum))
    try:
        shared = _shared_ssh(inv, master, phases)
        with rsync_shell(inv, host) if early is None else nullcontext(None) as ssh:
            argv = early.shown(shared) if early else argv_for(" ".join([ssh, *map(shlex.quote, shared)]), *roots)
            out.write(f"{host.name}: {host_before.verdict} before sync ({host_before.detail}); "
                      f"missing {human_bytes(missing)}\n$ {shlex.join(argv)}\n")
            t1 = time.monotonic()
            code, output = stream(argv, host.name, missing, out=out, verbose=verbose, silence=io_timeout(inv, checksum),
                                  proc=early.go(shared) if early else None)
            phases["launcher"] = time.monotonic() - t1
        if code:
            free = free_bytes(inv, host, roots[1]) if code in (11, 12, 23) else None
            raise SyncError(f"{host.name}: sync failed with exit {code}: {explain(code, output, free, missing)}")
        after = None if dry_run else _verify_after(inv, host, facts, checksum, after_probe, phases)
    finally:
        if after_probe:
            after_probe.close()
    summary = parse_summary(output)  # with openrsync, file data is derived from the files itemized as sent
    return SyncOutcome(host.name, host_before, after, missing, summary.literal_bytes, summary.total_sent,
                       shlex.join(argv), time.monotonic() - t0, summary.file_data_from, summary.derivation, phases)


def _argv_for(inv, host, dry_run, checksum, bwlimit, source, ssh, src_cache, dest_cache):
    return launcher_argv(inv, host, src_cache, dest_cache, dry_run, checksum, bwlimit, ssh, source)


def _start_early(inv, host, argv_for):
    """The launcher, started with the predicted cache roots and held at its gate, or None when a
    root is not known yet (or the launcher cannot be started: the sync starts it after the verify)."""
    if not early_launch.enabled():
        return None
    roots = (early_launch.predicted_root(inv, inv.local), early_launch.predicted_root(inv, host))
    if None in roots:
        return None
    try:  # its ssh options are decided at its gate's go (``_shared_ssh``), as the late launcher's are
        return early_launch.EarlyLauncher(inv, host, roots, lambda ssh: argv_for(ssh, *roots))
    except OSError:
        return None


def _remember(inv, host, roots):
    early_launch.remember_root(inv, inv.local, roots[0])
    early_launch.remember_root(inv, host, roots[1])


def _shared_ssh(inv, master, phases):
    """The ssh options that put the launcher's sessions on ``master`` (waited for, up to the
    connect timeout: the launcher would otherwise spend that handshake itself), or () without one."""
    if master is None:
        return ()
    t = time.monotonic()
    up = master.ready(inv.ssh.connect_timeout)
    phases["ssh_master_wait"] = time.monotonic() - t
    return mux.client_options(master.path) if up else ()


def _verify_after(inv, host, facts, checksum, after_probe, phases):
    """The host's verdict after the transfer, against local's facts from before (only the host
    changed): from the standby probe, or asked anew if it could not be used."""
    t = time.monotonic()
    got = after_probe.answer()
    if got is None:  # asked the usual way, which names the host's trouble if there is any
        phases["standby_unused"] = time.monotonic() - t
        got = ask_each(inv, [host], lambda h: cache_query(inv, h, deep=checksum))[host.name]
    phases["verify_after"] = time.monotonic() - t
    return judge_caches({"local": facts["local"], host.name: got}, deep=checksum).results[1]


def _plan(inv, host, checksum, gathered=None):
    """Verify local and the host (deeply with ``checksum``): (their facts, the host's verdict), or
    :class:`SyncError` when the host cannot be asked, local cannot be the source, or the host's
    snapshot links leave its repo folder."""
    facts = gathered or gather_caches(inv, [host], deep=checksum)
    before = judge_caches(facts, deep=checksum)  # missing bytes as a --checksum sync sends them
    for name, f in facts.items():
        if isinstance(f, HostError):
            raise SyncError(f"{name}: {f.message}")
    ref = before.results[0]
    if not ref.ok:
        raise SyncError(f"local cache is {ref.verdict}, so it cannot be the source: {ref.detail}")
    _refuse_links(host, facts)
    return facts, before.results[1]
