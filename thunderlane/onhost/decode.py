# thunderlane on-host evaluation: stdlib + mlx + mlx-lm (bundled into the evaluation program)
"""The one module that touches mlx-lm: load the base model with a committed step's adapters,
decode greedily (batched), and measure the loss as mlx-lm's trainer does. fab evaluate imports it
(``thunderlane.evaluate.decode``) and ``fab evaluate --on HOST`` ships it to the host: one source
for the generation settings and the token-limit rule, so local and a host cannot drift."""
import math
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

# Room over the reference's length in tokens: a correction may be longer than its reference, but a
# model that never stops is cut (its extra text counts as edits).
TOKEN_FACTOR = 2
TOKEN_MARGIN = 8
BATCH = 8  # rows decoded together (mlx-lm's BatchGenerator); 1 decodes row by row


def load_model(model_dir, adapter_dir):
    """(model, tokenizer): mlx-lm's own ``load(model_dir, adapter_path=adapter_dir)``; float32 on a
    CPU, as the lane trains there (bf16 is emulated on CPU)."""
    import mlx.core as mx
    from mlx_lm import load as mlx_load
    model, tokenizer = mlx_load(str(model_dir), adapter_path=str(adapter_dir) if adapter_dir else None)
    if mx.default_device() == mx.cpu:
        model.set_dtype(mx.float32)
    model.eval()
    return model, tokenizer


def adapter_folder(config, adapters):
    """A private folder in mlx-lm's ``adapter_path`` layout whose ``adapters.safetensors`` is the
    verified step file itself (a link), not the mirror's refreshed copy. Remove it after loading."""
    folder = Path(tempfile.mkdtemp(prefix="thunder-eval."))
    os.symlink(os.path.abspath(config), folder / "adapter_config.json")
    os.symlink(os.path.abspath(adapters), folder / "adapters.safetensors")
    return folder


def prompt(tokenizer, user):
    """The user turn through the tokenizer's chat template with the generation prompt: what
    mlx-lm's ChatDataset puts before the assistant's tokens when it trains with mask_prompt."""
    return tokenizer.apply_chat_template([{"role": "user", "content": user}], add_generation_prompt=True,
                                         return_dict=False)


def max_tokens(tokenizer, reference):
    return TOKEN_FACTOR * len(tokenizer.encode(reference, add_special_tokens=False)) + TOKEN_MARGIN


def greedy(model, tokenizer, prompts, limits, batch=BATCH, progress=None):
    """The greedy continuation of each prompt (token lists), at most ``limits[i]`` tokens, stopped
    at the tokenizer's end-of-sequence tokens; ``progress(done)`` after each row finishes."""
    from mlx_lm.generate import BatchGenerator
    from mlx_lm.sample_utils import make_sampler
    gen = BatchGenerator(model, stop_tokens=[[t] for t in tokenizer.eos_token_ids], sampler=make_sampler(temp=0.0),
                         completion_batch_size=batch, prefill_batch_size=batch)
    try:
        uids = gen.insert(prompts, list(limits))
        tokens, done = {uid: [] for uid in uids}, 0
        while responses := gen.next_generated():
            for r in responses:
                if r.finish_reason != "stop":
                    tokens[r.uid].append(r.token)
                if r.finish_reason is not None:
                    done += 1
                    if progress:
                        progress(done)
    finally:
        gen.close()
    return [tokenizer.decode(tokens[uid]).strip() for uid in uids]


def correct(model, tokenizer, rows, batch=BATCH, progress=None):
    """The adapter's correction of each row's user turn (rows with ``.user`` and ``.reference``):
    greedy, at most :func:`max_tokens` of the reference. Local's and a host's evaluation both."""
    prompts = [prompt(tokenizer, r.user) for r in rows]
    limits = [max_tokens(tokenizer, r.reference) for r in rows]
    return greedy(model, tokenizer, prompts, limits, batch, progress)


def test_loss(model, tokenizer, chats, batch_size, max_seq_length, mask_prompt):
    """mlx-lm's ``evaluate`` over ``chats`` (each a row's messages; whole batches of ``batch_size``,
    at most the row count), as the trainer measures validation loss."""
    from mlx_lm.tuner.datasets import CacheDataset, ChatDataset
    from mlx_lm.tuner.trainer import evaluate
    data = CacheDataset(ChatDataset([{"messages": list(m)} for m in chats], tokenizer, mask_prompt=mask_prompt))
    size = max(1, min(batch_size, len(chats)))
    return evaluate(model, data, batch_size=size, num_batches=-1, max_seq_length=max_seq_length)


class Progress:
    """Rows done, rows per second and ETA on ``out``, at most one line a second (and the last)."""

    def __init__(self, total, out=sys.stderr, label="evaluate", every=1.0):
        self.total, self.out, self.label, self.every = total, out, label, every
        self.t0 = self.last = time.monotonic()

    def __call__(self, done):
        now = time.monotonic()
        if done < self.total and now - self.last < self.every:
            return
        self.last = now
        rate = done / max(now - self.t0, 1e-9)
        eta = (self.total - done) / rate if rate else math.inf
        self.out.write(f"{self.label}: {done}/{self.total} rows, {rate:.2f} rows/s, ETA {eta:.0f}s\n")
        self.out.flush()


def peak_rss_mb():
    """This process's peak resident set (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2 ** 20 if sys.platform == "darwin" else 2 ** 10), 1)
