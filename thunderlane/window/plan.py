"""The plan of one window, written for the bash launcher: the JSON hostfile (ssh names and data
IPs), the spec every rank reads, the ssh config mlx.launch's ssh uses, the entry's source, the
interpreter."""
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

from .. import checkpoint, dataset, facts, layout, onhost
from ..fsutil import atomic_write
from ..remote import HostError, ask, on_hosts, ssh_config
from .hostfile import HostfileError, hostfile
from .writer import WindowError, profile_hosts, writer_facts

# mlx.launch runs `ssh -o LogLevel=QUIET host ...`, which would hide "Host key verification failed":
# the wrapper keeps errors visible and adds the window's config (endpoints, key, pinned host keys).
SSH_WRAPPER = """#!/bin/sh
for a in "$@"; do
  shift
  [ "$a" = "LogLevel=QUIET" ] && a="LogLevel=ERROR"
  set -- "$@" "$a"
done
exec {ssh} -F {config} "$@"
"""


def new_run_id(profile):
    return f"{profile.run_name}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"


def window_spec(inv, profile, to_step, target, from_step=None, known=None):
    """What every rank reads: the run's identity, the window's end, the config, each rank's paths.
    ``from_step``: the writer's step the caller planned from; it must still be there (no window of
    this run ran in between), here (:class:`WindowError`) and again on the ranks, under the lock.
    ``known``: (writer's RunFacts, local's DatasetFacts, local's CacheFacts) already read (fab's
    preflight), else read here, the writer and local at once."""
    hosts = profile_hosts(inv, profile)
    wfacts, data, cache = known or _read(inv, profile, hosts[0])
    _check_from(hosts[0], wfacts, from_step)
    record = wfacts.record if checkpoint.committed_step(wfacts) else {}
    return {
        "fault": os.environ.get("THUNDER_FAULT") or None,  # fault injection, for the reliability suite
        # lab only (a lab host's rank honours it): act as macOS with stand-in tools from this folder
        "force_darwin": os.environ.get("THUNDER_FORCE_DARWIN") or None,
        "profile": profile.name, "run_id": record.get("run_id") or new_run_id(profile),
        "target": target, "to_step": to_step, "from_step": from_step, "model": inv.repo_id, "revision": cache.ref,
        "dataset_digest": dataset.digest(data) if data.exists else None,
        "config": profile.config, "keep_steps": profile.keep_steps, "backend": profile.backend,
        "ranks": [{"host": h.name, "run_dir": layout.run_dir(h, profile.run_name), "hf_cache": h.hf_cache,
                   "data": profile.config.get("data") or h.dataset_root} for h in hosts],
        "command": shlex.join([str(layout.LAUNCH), profile.name, str(to_step), str(target)]),
    }


def _read(inv, profile, writer):
    def read(h):  # the writer's run directory and local's dataset and cache, at once
        if h is writer:
            return writer_facts(inv, profile)[1]  # an unreachable writer raises WindowError
        return ask(inv, h, facts.dataset(h.dataset_root), facts.cache(inv.repo_id, h.hf_cache))
    got = on_hosts([writer, inv.local], read)
    local = got[inv.local.name]
    if isinstance(local, HostError):
        raise local
    return (got[writer.name], *local)


def _check_from(writer, wfacts, from_step):
    step = checkpoint.committed_step(wfacts)
    if from_step is not None and step != from_step:
        raise WindowError(f"{writer.name}: {wfacts.run_dir}/checkpoint.json is at step {step}, not at step "
                          f"{from_step} where this window was to start: another window of the run ran since")


def plan_window(inv, profile, to_step, target, out_dir, from_step=None, known=None):
    """Write everything one window needs into ``out_dir``; return the spec (see :func:`window_spec`)."""
    hosts = profile_hosts(inv, profile)
    spec = window_spec(inv, profile, to_step, target, from_step, known)
    out = Path(out_dir)
    try:
        hosts_doc = hostfile(hosts, profile.backend)
    except HostfileError as e:
        raise WindowError(f"profile {profile.name}: {e}") from None
    _write(out / "hostfile.json", json.dumps(hosts_doc, indent=2) + "\n")
    _write(out / "backend", profile.backend + "\n")
    _write(out / "ssh_config", ssh_config(inv, hosts))
    ssh = shutil.which("ssh") or "/usr/bin/ssh"
    _write(out / "bin" / "ssh", SSH_WRAPPER.format(ssh=shlex.quote(ssh),
                                                         config=shlex.quote(str(out / "ssh_config"))), 0o755)
    _write(out / "entry.py", onhost.entry_source())
    _write(out / "python", hosts[0].python + "\n")
    _write(out / "mlx_launch", str(Path(sys.executable).parent / "mlx.launch") + "\n")
    _write(out / "spec.json", json.dumps(spec, sort_keys=True) + "\n")
    atomic_write(out / "to_step", f"{to_step}\n")  # last, fsynced: the launcher takes a plan made ahead
    # only with it, and only for this end
    return spec


def _write(path, text, mode=0o644):
    """Whole under its final name (written aside, renamed), not fsynced: a plan is made again for
    every window, so it must never be read torn but need not outlive a power cut; ten fsyncs cost
    0.1-0.2 s of every window. ``to_step``, the marker, is written last with :func:`atomic_write`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def plan_first(inv, profile, start, target, window, known):
    """fab's plan of the chunk runner's first window, from preflight's facts (``known``: see
    :func:`window_spec`): no probe, no interpreter start. Its folder, or None (the runner plans it)."""
    to = min(start + window, target)
    root = layout.local(inv).plans(profile.run_name)
    root.mkdir(parents=True, exist_ok=True)
    out = tempfile.mkdtemp(dir=root, prefix=f"window-{to}.")
    try:
        plan_window(inv, profile, to, target, out, from_step=start, known=known)
    except WindowError:  # the runner's own plan says it, as it always did
        shutil.rmtree(out, ignore_errors=True)
        return None
    return out
