# thunderlane-lane-train (this marker identifies the ranks' processes for reaping)
"""The training entry, run on every rank by ``mlx.launch``: one window of LoRA training with
mlx-lm's tuner (its datasets, LoRA layers and ``train()``), plus what mlx-lm lacks: exact resume.

Sent as source (``python -c <this file> <spec JSON>``), so it needs only mlx, mlx-lm, numpy and the
stdlib. Each rank keeps its own state in its own run directory on its own host; data-parallel
replicas are identical, so nothing travels between windows. A commit (every ``save_every`` steps
and at the window's end) is: the ranks agree on a digest of their adapter weights, every file is
written under a temporary name and renamed, and ``checkpoint.json`` is written last, the same way.

Progress and failures are printed as ``LANE key=value ...`` lines for the orchestrator.
"""
import hashlib
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

MARK = "LANE"
STATE_FILE = "lane_state.safetensors"
ADAPTERS = "adapters.safetensors"
CHECKPOINT = "checkpoint.json"
EXIT_CODES = {"runtime": 1, "cache": 10, "dataset": 11, "write": 12, "world-size": 13,
              "divergence": 14, "checkpoint": 15, "spec": 16}


class LaneError(Exception):
    """A classified failure: ``kind`` is one of EXIT_CODES."""

    def __init__(self, kind, message):
        super().__init__(message)
        self.kind = kind


def say(**fields):
    """One machine-readable progress line: ``LANE rank=0 host=mac4 phase=step step=3 ...``."""
    parts = [MARK] + [f"{k}={_fmt(v)}" for k, v in fields.items()]
    sys.stdout.flush()
    os.write(1, ("\n" + " ".join(parts) + "\n").encode())  # one write: never split by other output


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v).replace(" ", "_").replace("\n", " ")


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fsync_path(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path, write):
    """``write(tmp)`` then fsync and rename onto ``path``: a kill leaves the old file or the new one,
    never a torn one under the final name."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        write(tmp)
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(path.parent)
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        raise
    return path


def write_json(path, obj):
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n"))


# --- the pure parts: spec, resume point, data position -------------------------------------------

def read_checkpoint(run_dir):
    """The committed checkpoint of this rank's run directory, or None."""
    path = Path(run_dir) / CHECKPOINT
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise LaneError("checkpoint", f"{path} is not valid JSON ({e}); refusing to guess a step")


def epoch_and_skip(step, n_examples, batch_size):
    """Where absolute step ``step`` falls in the data: (epoch, batches to skip in that epoch)."""
    per_epoch = n_examples // batch_size
    if per_epoch < 1:
        raise LaneError("dataset", f"{n_examples} training rows are fewer than batch_size={batch_size}")
    return divmod(step, per_epoch)


def epoch_seed(seed, epoch):
    return (seed * 1_000_003 + epoch) % (2**32)


# --- mlx parts -----------------------------------------------------------------------------------

def lane_batches(start_step, seed):
    """mlx-lm's ``iterate_batches`` with a data position: the permutation of each epoch comes from
    (seed, epoch) alone, and the first ``start_step`` batches are skipped, so a resumed window sees
    exactly the batches an unbroken run would. Evaluation (loop=False) is mlx-lm's own."""
    import numpy as np
    from mlx_lm.tuner.trainer import iterate_batches
    base_seed = seed

    def iterate(dataset, batch_size, max_seq_length, loop=False, seed=None, comm_group=None):
        if not loop:
            yield from iterate_batches(dataset, batch_size, max_seq_length, comm_group=comm_group)
            return
        epoch, skip = epoch_and_skip(start_step, len(dataset), batch_size)
        while True:
            np.random.seed(epoch_seed(base_seed, epoch))
            batches = iterate_batches(dataset, batch_size, max_seq_length, comm_group=comm_group)
            for i, batch in enumerate(batches):
                if i >= skip:
                    yield batch
            epoch, skip = epoch + 1, 0

    return iterate


def weights_digest(arrays):
    """sha256 over names, dtypes, shapes and values (file bytes may differ between processes)."""
    import mlx.core as mx
    import numpy as np
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = arrays[name]
        if a.dtype == mx.bfloat16:
            a = a.astype(mx.float32)
        h.update(f"{name}|{a.dtype}|{a.shape}|".encode())
        h.update(np.asarray(a).tobytes())
    return h.hexdigest()


def ranks_agree(digest, group):
    """All ranks' digests, gathered; a divergence fails the window on every rank at once."""
    import mlx.core as mx
    mine = mx.array(list(bytes.fromhex(digest)), dtype=mx.int32)
    everyone = mx.distributed.all_gather(mine, group=group, stream=mx.cpu).reshape(group.size(), -1)
    rows = [bytes(r).hex() for r in everyone.tolist()]
    if len(set(rows)) != 1:
        raise LaneError("divergence", "adapter weights differ between ranks: "
                        + ", ".join(f"rank {i} {d[:12]}" for i, d in enumerate(rows)))


def restore_rng(key):
    """Put mlx's global RNG key back: ``seed(s)`` sets the key to (s >> 32, s & 0xffffffff)."""
    import mlx.core as mx
    hi, lo = key
    mx.random.seed((hi << 32) | lo)


def barrier(group):
    import mlx.core as mx
    mx.eval(mx.distributed.all_sum(mx.array(1), group=group, stream=mx.cpu))


class Window:
    """One rank's window: set up, restore, train with mlx-lm, commit."""

    def __init__(self, spec, rank):
        self.spec, self.rank = spec, rank
        self.me = spec["ranks"][rank]
        self.run_dir = Path(self.me["run_dir"])
        self.cfg = spec["config"]
        self.started = time.time()
        self.last_train_loss = None

    def say(self, **fields):
        say(rank=self.rank, host=self.me["host"], **fields)

    # set-up ------------------------------------------------------------------------------------
    def prepare_run_dir(self):
        try:
            (self.run_dir / ".lane").mkdir(parents=True, exist_ok=True)
            for torn in self.run_dir.glob(".*.tmp*"):  # a save killed half-way: never a final name
                torn.unlink()
            pidfile = self.run_dir / ".lane" / f"rank{self.rank}.pid"
            write_json(pidfile, {"pid": os.getpid(), "host": self.me["host"], "started": self.started})
        except OSError as e:
            raise LaneError("write", f"cannot write in run directory {self.run_dir}{_full(e)}: {e}") from None

    def init_group(self):
        import mlx.core as mx
        group = mx.distributed.init()
        want = len(self.spec["ranks"])
        if group.size() != want:
            raise LaneError("world-size", f"distributed group has {group.size()} rank(s), expected {want}"
                            " (did the ring backend fall back to a single process?)")
        return group

    def load_model(self):
        import mlx.core as mx
        from huggingface_hub import snapshot_download
        from mlx_lm import load
        repo = self.spec["model"]
        try:
            snapshot = snapshot_download(repo, local_files_only=True)
            model, tokenizer = load(repo)
        except Exception as e:  # noqa: BLE001 - any failure here is a cache/materialization one
            raise LaneError("cache", f"cannot load {repo} offline from the HF cache: "
                            f"{type(e).__name__}: {e}") from None
        if mx.default_device() == mx.cpu:
            model.set_dtype(mx.float32)  # bf16 is emulated on CPU (Linux lab): float32 is ~6x faster
        revision = Path(snapshot).name
        if self.spec.get("revision") and revision != self.spec["revision"]:
            raise LaneError("cache", f"model revision {revision[:12]} here, expected "
                            f"{self.spec['revision'][:12]}")
        return model, tokenizer

    def load_data(self, tokenizer):
        from types import SimpleNamespace
        from mlx_lm.tuner.datasets import CacheDataset, load_local_dataset
        data = Path(self.me["data"])
        for name in ("train.jsonl", "valid.jsonl"):
            if not (data / name).is_file():
                raise LaneError("dataset", f"{data / name} is missing on {self.me['host']}")
        args = SimpleNamespace(mask_prompt=self.cfg.get("mask_prompt", False))
        try:
            train, valid, _ = load_local_dataset(data, tokenizer, args)
        except (OSError, ValueError, KeyError) as e:
            raise LaneError("dataset", f"cannot read the dataset in {data}: {e}") from None
        return CacheDataset(train), CacheDataset(valid) if len(valid) else None

    def build(self, model):
        import mlx.core as mx
        import mlx.optimizers as optim
        from mlx_lm.tuner.utils import build_schedule, linear_to_lora_layers
        mx.random.seed(self.cfg["seed"])
        model.freeze()
        linear_to_lora_layers(model, self.cfg["num_layers"], self.cfg["lora_parameters"])
        lr = build_schedule(self.cfg["lr_schedule"]) if self.cfg.get("lr_schedule") \
            else self.cfg["learning_rate"]
        opt_class = {"adam": optim.Adam, "adamw": optim.AdamW}[self.cfg.get("optimizer", "adam")]
        optimizer = opt_class(learning_rate=lr)
        optimizer.init(model.trainable_parameters())
        return optimizer

    # resume ------------------------------------------------------------------------------------
    def restore(self, model, optimizer):
        """Restore adapters, optimizer state (step count included, so schedules carry on) and RNG
        from the committed checkpoint; return its step (0 when there is none)."""
        import mlx.core as mx
        from mlx.utils import tree_flatten, tree_unflatten
        ckpt = read_checkpoint(self.run_dir)
        if ckpt is None:
            return 0
        for key in ("run_id", "profile"):
            if ckpt.get(key) != self.spec[key]:
                raise LaneError("checkpoint", f"{self.run_dir / CHECKPOINT} belongs to {key} "
                                f"{ckpt.get(key)!r}, not {self.spec[key]!r}")
        for name, want in ((ADAPTERS, ckpt["adapter_sha256"]), (STATE_FILE, ckpt["state_sha256"])):
            path = self.run_dir / name
            if not path.is_file() or sha256_file(path) != want:
                raise LaneError("checkpoint", f"{path} does not match the sha256 in {CHECKPOINT}")
        adapters = mx.load(str(self.run_dir / ADAPTERS))
        expected = set(dict(tree_flatten(model.trainable_parameters())))
        if set(adapters) != expected:
            raise LaneError("checkpoint", f"{ADAPTERS} holds {len(adapters)} tensors, the model "
                            f"expects {len(expected)}: the profile's LoRA layout changed")
        model.load_weights(list(adapters.items()), strict=False)
        state = mx.load(str(self.run_dir / STATE_FILE))
        optimizer.state = tree_unflatten([(k[4:], v) for k, v in state.items() if k.startswith("opt.")])
        restore_rng(state["rng.key"].tolist())
        mx.eval(model.parameters(), optimizer.state)
        return int(ckpt["step"])

    # commit ------------------------------------------------------------------------------------
    def commit(self, step, model, optimizer, group, val_dataset):
        import mlx.core as mx
        from mlx.utils import tree_flatten
        val_loss = self.validate(model, val_dataset)
        adapters = dict(tree_flatten(model.trainable_parameters()))
        digest = weights_digest(adapters)
        ranks_agree(digest, group)
        try:
            files = self.save_files(step, adapters, optimizer)
        except OSError as e:
            raise LaneError("write", f"saving step {step} in {self.run_dir} failed{_full(e)}: {e}") from None
        barrier(group)  # every rank holds its files before any checkpoint.json names them
        ckpt = self.checkpoint_record(step, digest, files, val_loss)
        try:
            write_json(self.run_dir / CHECKPOINT, ckpt)
        except OSError as e:
            raise LaneError("write", f"writing {CHECKPOINT} in {self.run_dir} failed{_full(e)}: {e}") from None
        self.say(phase="commit", step=step, adapter_sha256=files[ADAPTERS][:12],
                 val_loss=val_loss if val_loss is not None else "-")
        mx.eval(model.parameters())

    def validate(self, model, val_dataset):
        if val_dataset is None:
            return None
        import numpy as np
        from mlx_lm.tuner.trainer import evaluate
        np.random.seed(self.cfg["seed"])  # the same validation batches at every commit, any window
        loss = evaluate(model, val_dataset, batch_size=self.cfg["batch_size"],
                        num_batches=self.cfg.get("val_batches", 2),
                        max_seq_length=self.cfg["max_seq_length"])
        model.train()
        return float(loss)

    def save_files(self, step, adapters, optimizer):
        import mlx.core as mx
        from mlx.utils import tree_flatten
        meta = {"format": "mlx"}
        step_file = f"{step:07d}_adapters.safetensors"
        state = {f"opt.{k}": v for k, v in tree_flatten(optimizer.state)}
        state["rng.key"] = mx.random.state[0]
        for name, arrays in ((step_file, adapters), (ADAPTERS, adapters), (STATE_FILE, state)):
            atomic_write(self.run_dir / name, lambda tmp, a=arrays: self.save(tmp, a, meta, step))
        write_json(self.run_dir / "adapter_config.json", self.adapter_config())
        return {name: sha256_file(self.run_dir / name) for name in (step_file, ADAPTERS, STATE_FILE)}

    def save(self, tmp, arrays, meta, step):
        """mx.save_safetensors, and the reliability suite's injected fault: with the spec's fault
        ``kill-during-save@STEP`` the rank dies half-way through writing that step's first file."""
        import mlx.core as mx
        mx.save_safetensors(str(tmp), arrays, meta)
        if self.spec.get("fault") == f"kill-during-save@{step}":
            with open(tmp, "r+b") as f:
                f.truncate(os.path.getsize(tmp) // 2)
            os.kill(os.getpid(), 9)

    def adapter_config(self):
        """mlx-lm's adapter_config.json, so ``mlx_lm.load(model, adapter_path=run_dir)`` works."""
        keys = ("num_layers", "lora_parameters", "batch_size", "learning_rate", "lr_schedule",
                "max_seq_length", "seed", "mask_prompt", "save_every")
        return {"fine_tune_type": "lora", "model": self.spec["model"], "data": self.me["data"],
                "adapter_path": str(self.run_dir), **{k: self.cfg.get(k) for k in keys}}

    def checkpoint_record(self, step, digest, files, val_loss):
        import mlx.core as mx
        import mlx_lm
        from importlib.metadata import version
        epoch, batch = epoch_and_skip(step, self.n_train, self.cfg["batch_size"])
        spec = self.spec
        return {
            "step": step, "target": spec["target"], "window": {"from": self.start_step, "to": spec["to_step"]},
            "profile": spec["profile"], "run_id": spec["run_id"], "dataset_digest": spec["dataset_digest"],
            "model": {"repo": spec["model"], "revision": spec.get("revision")},
            "world_size": len(spec["ranks"]), "hosts": [r["host"] for r in spec["ranks"]],
            "rank": self.rank, "host": self.me["host"], "run_dir": str(self.run_dir),
            "adapter_file": ADAPTERS, "adapter_sha256": files[ADAPTERS],
            "step_file": f"{step:07d}_adapters.safetensors",
            "step_file_sha256": files[f"{step:07d}_adapters.safetensors"],
            "state_file": STATE_FILE, "state_sha256": files[STATE_FILE], "weights_digest": digest,
            "train_loss": self.last_train_loss, "val_loss": val_loss,
            "data_position": {"epoch": epoch, "batch": batch, "seed": self.cfg["seed"]},
            "times": {"window_started": _iso(self.started), "committed": _iso(time.time()),
                      "window_seconds": round(time.time() - self.started, 3)},
            "versions": {"python": platform.python_version(), "mlx": mx.__version__,
                         "mlx_lm": getattr(mlx_lm, "__version__", None) or version("mlx-lm")},
            "command": spec.get("command"),
        }

    # the window ----------------------------------------------------------------------------------
    def run(self):
        from mlx_lm.tuner.trainer import TrainingArgs, train
        self.prepare_run_dir()
        self.say(phase="start", pid=os.getpid())
        group = self.init_group()
        model, tokenizer = self.load_model()
        self.say(phase="model-loaded", world=group.size())
        train_set, val_set = self.load_data(tokenizer)
        self.n_train = len(train_set)
        self.say(phase="data-loaded", train=len(train_set), valid=len(val_set) if val_set else 0)
        optimizer = self.build(model)
        self.start_step = self.restore(model, optimizer)
        to_step = self.spec["to_step"]
        if self.start_step >= to_step:
            self.say(phase="done", step=self.start_step, note="already-committed")
            return
        self.say(phase="resume", step=self.start_step, to=to_step)
        args = TrainingArgs(batch_size=self.cfg["batch_size"], iters=to_step - self.start_step,
                            val_batches=self.cfg.get("val_batches", 2), steps_per_report=1,
                            steps_per_eval=10**9, steps_per_save=10**9,
                            adapter_file=str(self.run_dir / ".lane" / "unused.safetensors"),
                            max_seq_length=self.cfg["max_seq_length"],
                            grad_checkpoint=self.cfg.get("grad_checkpoint", False))
        callback = _Callback(self, model, optimizer, group, val_set)
        train(model, optimizer, train_set, None, args=args,
              iterate_batches=lane_batches(self.start_step, self.cfg["seed"]), training_callback=callback)
        (self.run_dir / ".lane" / "unused.safetensors").unlink(missing_ok=True)  # mlx-lm's final save
        self.say(phase="done", step=to_step)


class _Callback:
    """mlx-lm's training callback: progress lines at absolute steps, commits at save points."""

    def __init__(self, window, model, optimizer, group, val_set):
        self.w, self.model, self.optimizer, self.group, self.val_set = window, model, optimizer, group, val_set

    def on_train_loss_report(self, info):
        step = self.w.start_step + info["iteration"]
        self.w.last_train_loss = float(info["train_loss"])
        self.w.say(phase="step", step=step, loss=info["train_loss"], lr=info["learning_rate"],
                   tok_s=info["tokens_per_second"])
        if step % self.w.cfg["save_every"] == 0 or step == self.w.spec["to_step"]:
            self.w.commit(step, self.model, self.optimizer, self.group, self.val_set)

    def on_val_loss_report(self, info):
        pass


def _full(error):
    return " (the disk is full)" if getattr(error, "errno", None) == 28 else ""


def _iso(t):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def main(argv):
    rank = int(os.environ.get("MLX_RANK", "0"))
    try:
        spec = json.loads(argv[-1])
        host = spec["ranks"][rank]["host"]
    except (ValueError, KeyError, IndexError) as e:
        say(rank=rank, phase="error", kind="spec", msg=f"bad window spec: {e}")
        return EXIT_CODES["spec"]
    try:
        Window(spec, rank).run()
        return 0
    except LaneError as e:
        say(rank=rank, host=host, phase="error", kind=e.kind, msg=str(e))
        return EXIT_CODES[e.kind]
    except Exception as e:  # noqa: BLE001 - classified as a runtime crash, with its traceback
        traceback.print_exc()
        say(rank=rank, host=host, phase="error", kind="runtime", msg=f"{type(e).__name__}: {e}")
        return EXIT_CODES["runtime"]


if __name__ == "__main__":
    sys.exit(main(sys.argv))
