"""A split's rows as the evaluation reads them: the code lives in ``thunderlane/onhost/rows.py``,
shipped as it is to a host for ``fab evaluate --on HOST``, so a host and local read a split alike."""
from ..onhost.rows import Row, Split, SplitError, instruction, load_split, parse, problem

load = load_split
__all__ = ["Row", "Split", "SplitError", "instruction", "load", "load_split", "parse", "problem"]
