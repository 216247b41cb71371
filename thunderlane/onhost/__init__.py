"""Code that runs on the hosts, sent as source to each host's own interpreter.

A host has only the stdlib (the probe) or the stdlib, mlx, mlx-lm and numpy (the training entry):
nothing here imports ``thunderlane``. A program is a *bundle*: the sources of its modules joined
in order, so the shared helpers in ``files.py`` are written once. Imported here on the control
side, each module takes those helpers by a relative import guarded by ``if __package__``; run as
a bundle (``python -c SOURCE``), ``__package__`` is None and the earlier modules defined them.
"""
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROBE = ("files", "runs", "store", "links", "macos", "peer", "probe")  # macos: preflight's firewall, caffeinate, F_FULLFSYNC
# The probe for the commands that need no links, macos or peer (PROBE_LEAN_COMMANDS: verify-cache's and
# verify-dataset's): a third less source to compile on every host, and no socket, threading,
# subprocess or base64 to import. Run with python -S (see runs.site_packages).
PROBE_LEAN = ("files", "runs", "store", "probe")
PROBE_LEAN_COMMANDS = frozenset({"cache", "dataset", "versions"})
ENTRY = ("rank_env", "files", "commit", "lane_train")  # rank_env first: before any import of huggingface_hub


def source(modules):
    """The bundle of ``modules`` (names in this folder), in order, as one program's source."""
    return "\n\n".join((HERE / f"{name}.py").read_text(encoding="utf-8") for name in modules)


PEER_INSTALL = ("peer", "peer_install")  # fab setup-peers: the peer key and pinned host keys


def probe_source(lean=False):
    return source(PROBE_LEAN if lean else PROBE)


def entry_source():
    return source(ENTRY)


def peer_install_source():
    return source(PEER_INSTALL)
