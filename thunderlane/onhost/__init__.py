"""Code that runs on the hosts, sent as source to each host's own interpreter.

A host has only the stdlib (the probe) or the stdlib, mlx, mlx-lm and numpy (the training entry,
the evaluation): nothing here imports ``thunderlane``. A program is a *bundle*: the sources of its modules joined
in order, so the shared helpers in ``files.py`` are written once. Imported here on the control
side, each module takes those helpers by a relative import guarded by ``if __package__``; run as
a bundle (``python -c SOURCE``), ``__package__`` is None and the earlier modules defined them.
"""
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROBE = ("files", "runs", "store", "links", "macos", "peer", "probe")  # macos: preflight's firewall, caffeinate, F_FULLFSYNC
ENTRY = ("rank_env", "files", "commit", "lane_train")  # rank_env first: before any import of huggingface_hub


def source(modules):
    """The bundle of ``modules`` (names in this folder), in order, as one program's source."""
    return "\n\n".join((HERE / f"{name}.py").read_text(encoding="utf-8") for name in modules)


PEER_INSTALL = ("peer", "peer_install")  # fab setup-peers: the peer key and pinned host keys
EVAL = ("files", "rows", "decode", "eval_host")  # fab evaluate --on HOST: the host decodes its own split


def probe_source():
    return source(PROBE)


def entry_source():
    return source(ENTRY)


def peer_install_source():
    return source(PEER_INSTALL)


def eval_source():
    return source(EVAL)
