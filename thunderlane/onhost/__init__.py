"""Code that runs on the hosts, sent as source to each host's own interpreter.

A host has only the stdlib (the probe) or the stdlib, mlx, mlx-lm and numpy (the training entry,
the evaluation): nothing here imports ``thunderlane``. A program is a *bundle*: the sources of its modules joined
in order, so the shared helpers in ``files.py`` are written once. Imported here on the control
side, each module takes those helpers by a relative import guarded by ``if __package__``; run as
a bundle (``python -c SOURCE``), ``__package__`` is None and the earlier modules defined them.
"""
import hashlib
import json
from pathlib import Path

from .probe_loader import NO_COPY, NO_COPY_EXIT

HERE = Path(__file__).resolve().parent
PROBE = ("files", "runs", "store", "hubroot", "links", "macos", "peer", "probe")  # macos: preflight's firewall, caffeinate, F_FULLFSYNC
# The probe for the commands that need neither links nor macos (PROBE_LEAN_COMMANDS: verify-cache's,
# verify-dataset's and the peer key's facts, which sync-cache's survey asks with a cache): less
# source, and no socket, threading, subprocess or struct to import. Run with python -S (see
# runs.site_packages); the whole probe (a site start, its source compiled anew) cost the survey's
# peer facts ~50 ms per host.
PROBE_LEAN = ("files", "runs", "store", "hubroot", "peer", "probe")
PROBE_LEAN_COMMANDS = frozenset({"cache", "dataset", "versions", "peer"})
ENTRY = ("rank_env", "files", "commit", "lane_train")  # rank_env first: before any import of huggingface_hub


def source(modules):
    """The bundle of ``modules`` (names in this folder), in order, as one program's source."""
    return "\n\n".join((HERE / f"{name}.py").read_text(encoding="utf-8") for name in modules)


PEER_INSTALL = ("peer", "peer_install")  # fab setup-peers: the peer key and pinned host keys
EVAL = ("files", "rows", "decode", "eval_host")  # fab evaluate --on HOST: the host decodes its own split


def probe_source(lean=False):
    return source(PROBE_LEAN if lean else PROBE)


def entry_source():
    return source(ENTRY)


def peer_install_source():
    return source(PEER_INSTALL)


def eval_source():
    return source(EVAL)


def probe_copy_name(source):
    return "thunderlane_probe_" + hashlib.sha256(source.encode()).hexdigest()[:16]


def probe_copy(source):
    """The text of the copy of ``source`` a host keeps: ``source``, then its completion marker."""
    return f"{source.rstrip()}\n\n\n_PROBE_COMPLETE = {probe_copy_name(source)!r}\n"


def probe_loader(source, carry=True):
    """The lean probe's -c program: ``probe_loader.py`` carrying ``source`` and the name of the copy
    a host keeps of it (by the source's digest, so that a changed probe is a new copy). The source
    ends with the copy's completion marker: a copy cut short has none and is written anew.
    ``carry=False``: the stub, which runs the kept copy or asks for the source (NO_COPY)."""
    name = probe_copy_name(source)
    text = (HERE / "probe_loader.py").read_text(encoding="utf-8")
    filled = text.replace('NAME = "thunderlane_probe"\n', f'NAME = "{name}"\n', 1)
    if carry:
        filled = filled.replace('SOURCE = ""\n', f"SOURCE = {probe_copy(source)!r}\n", 1)
    assert filled.count(name) == 1 + carry and len(filled) > carry * len(source), \
        "probe_loader.py lost its NAME or SOURCE line"
    return filled


PROBE_SOURCE = probe_source()
PROBE_LEAN_LOADER = probe_loader(probe_source(lean=True))
PROBE_LEAN_STUB = probe_loader(probe_source(lean=True), carry=False)


def probe_command(python, args, stub=False):
    """The command line that runs probe command ``args`` with ``python``. Commands the lean bundle
    answers (verify-cache's, verify-dataset's) run it through its loader (a compiled copy kept on
    the host) under ``-S``: no site, whose .pth files can cost more than the scan; the probe adds
    site-packages itself where an answer depends on them (``runs.site_packages``). ``stub``: the
    loader without the source where the lean bundle answers (see :func:`asks_for_source`)."""
    try:
        asked = [a[0] for a in json.loads(args[1])] if args[0] == "multi" else [args[0]]
    except (ValueError, TypeError, IndexError, KeyError):
        asked = ["multi"]
    if set(asked) <= PROBE_LEAN_COMMANDS:
        return [python, "-S", "-c", PROBE_LEAN_STUB if stub else PROBE_LEAN_LOADER, *args]
    return [python, "-c", PROBE_SOURCE, *args]


def asks_for_source(code, stderr):
    """Whether a stub's run (exit ``code``, ``stderr`` text) found no usable copy on its host."""
    return code == NO_COPY_EXIT and stderr.rstrip().endswith(NO_COPY)
