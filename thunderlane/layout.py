"""Where things live: the launchers, and the one place that knows the layout under a runs root.

On every host, a run's directory is ``<runs_root>/<run_name>``. On the control machine, the local
runs root also holds the verified mirror of each run and the lane's own bookkeeping, in dot-folders
that mirror-back never treats as runs.
"""
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAUNCHERS = ROOT / "launchers"
CHUNKS = LAUNCHERS / "run_gemma4_e2b_nko_correction_chunks.sh"
LAUNCH = LAUNCHERS / "launch_gemma4_e2b_nko_correction_thunder.sh"
SYNC = LAUNCHERS / "sync_gemma4_e2b_cache_to_thunder.sh"


def run_dir(host, run_name):
    """The run's directory on ``host`` (a path on that host)."""
    return os.path.join(host.runs_root, run_name)


class Local:
    """The control machine's runs root and what lives under it."""

    def __init__(self, runs_root):
        self.root = Path(runs_root)

    def mirror(self, run_name):
        """The verified local copy of the writer's run directory."""
        return self.root / run_name

    def staging(self, run_name):
        """Where mirror-back receives a copy before it is verified."""
        return self.root / ".incoming" / run_name

    def lock(self, run_name):
        """The window lock: a directory the chunk runner makes with mkdir (atomic) and removes on
        exit; it holds the runner's pid."""
        return self.root / ".locks" / f"{run_name}.lock"

    def plans(self, run_name):
        """The kept plan folders of each window (hostfile, spec, ssh config)."""
        return self.root / ".plans" / run_name

    def log(self, run_name, stamp):
        return self.root / ".logs" / f"{run_name}-{stamp}.log"

    def reports(self, run_name):
        """Where the handoff report goes when there is no mirror to put it in."""
        return self.root / ".reports" / run_name

    def row_memo(self):
        """Local's row verdicts, one file per dataset file's sha256 (``rowmemo.py``)."""
        return self.root / ".row-memo"


def local(inv):
    return Local(inv.local.runs_root)
