"""fab evaluate: does the adapter correct ASR output? Character error rates before and after,
and the promotion verdict they give.

``metrics`` and ``policy`` are pure (no mlx, no I/O); ``rows`` reads a split; ``decode`` is the one
module that touches mlx-lm; ``run`` puts them together beside the local mirror; ``section`` renders
the report's "Promotion decision"; ``on_host`` runs the decoding on a host instead
(``rows`` and ``decode`` live in ``onhost/``, shipped as source) and ``carry`` keeps its results
across a mirror-back. Importing this package imports no mlx."""
