"""The stand-in world the tests and the demo run against: one real sshd per host on loopback
(``hosts``), the handoff's situation seeded from fixtures generated here (``seed``, ``fixtures/``)."""
from .hosts import LAB, NET_VAR, ROOT, address, down, paths, sshd_pid, status, up
from .seed import CACHE_REL, DATASET_REL, RUNS_REL, LabError, build_fixtures, seed, seed_partial

__all__ = ["CACHE_REL", "DATASET_REL", "LAB", "NET_VAR", "ROOT", "RUNS_REL", "LabError", "address",
           "build_fixtures", "down", "paths", "seed", "seed_partial", "sshd_pid", "status", "up"]
