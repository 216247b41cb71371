"""Loading, greedy decoding and the test loss: the code lives in ``thunderlane/onhost/decode.py``,
shipped as it is to a host for ``fab evaluate --on HOST`` (one source for the generation settings
and the token-limit rule, local and host alike)."""
from ..onhost.decode import (BATCH, TOKEN_FACTOR, TOKEN_MARGIN, Progress, adapter_folder, correct, greedy,
                             load_model, max_tokens, peak_rss_mb, prompt, test_loss)

load = load_model
__all__ = ["BATCH", "TOKEN_FACTOR", "TOKEN_MARGIN", "Progress", "adapter_folder", "correct", "greedy", "load",
           "load_model", "max_tokens", "peak_rss_mb", "prompt", "test_loss"]
