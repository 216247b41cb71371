"""fab evaluate: does the adapter correct ASR output? Character error rates before and after,
and the promotion verdict they give.

``metrics`` and ``policy`` are pure (no mlx, no I/O); ``rows`` reads a split; ``decode`` is the one
module that touches mlx-lm; ``run`` puts them together beside the local mirror; ``section`` renders
the report's "Promotion decision". Importing this package imports no mlx."""
