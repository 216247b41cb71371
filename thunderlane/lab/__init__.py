"""The stand-in world the tests and the demo run against: one real sshd per host on loopback
(``hosts``), the handoff's situation seeded from fixtures generated here (``seed``, ``fixtures/``),
each model cache made by huggingface_hub's own client against a local hub (``client``, ``hub``)."""
from .client import LAYOUTS, parse_layout
from .hosts import DEFAULT_LAYOUT, LAB, ROOT, down, paths, sshd_pid, status, up
from .net import NET_VAR, address
from .seed import CACHE_REL, DATASET_REL, RUNS_REL, LabError, build_fixtures, seed, seed_partial, seeded

__all__ = ["CACHE_REL", "DATASET_REL", "DEFAULT_LAYOUT", "LAB", "LAYOUTS", "NET_VAR", "ROOT", "RUNS_REL",
           "LabError", "address", "build_fixtures", "down", "parse_layout", "paths", "seed", "seed_partial",
           "seeded", "sshd_pid", "status", "up"]
