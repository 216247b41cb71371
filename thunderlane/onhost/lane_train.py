# thunderlane-lane-train (this marker identifies the ranks' processes for reaping)
"""The training entry, run on every rank by ``mlx.launch`` as ``python -c <files.py + commit.py +
this file> <spec JSON>``: one window of LoRA training with mlx-lm's tuner, plus exact resume. Each
rank keeps its state in its own run directory (replicas are identical: nothing travels between
windows). A commit: the ranks agree on their adapters' digest, then commit.py writes the step's
files and, last, checkpoint.json naming them."""
import copy
import hashlib
import itertools
import json
import os
import platform
import sys
import time
import traceback
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional

import mlx.core as mx
import mlx.optimizers as optim
import mlx_lm
import numpy as np
from huggingface_hub import snapshot_download
from mlx.utils import tree_flatten, tree_unflatten
from mlx_lm import load
from mlx_lm.tuner.datasets import CacheDataset, load_local_dataset
from mlx_lm.tuner.trainer import TrainingArgs, TrainingCallback, evaluate, iterate_batches, train
from mlx_lm.tuner.utils import build_schedule, linear_to_lora_layers

if __package__:  # imported from thunderlane.onhost; in a bundle, files.py defined these above
    from .files import CHECKPOINT, LANE_DIR, disk_full_note, iso_time, write_json
    from .commit import (EXIT_CODES, LaneError, check_fault, commit_step, record_at, verified_path)

LAB_MARKER = "THUNDER_LAB_HOST"  # set only by the lab's sshd (SetEnv): the fault hook's licence
# Between mlx-lm's CONFIG_DEFAULTS and the profile: the lane's old fallbacks, so a profile without
# them runs as before (val_batches: 2 a commit, mlx-lm's 25); the other three pin mlx-lm's own.
LANE_DEFAULTS = {"val_batches": 2, "mask_prompt": False, "optimizer": "adam", "grad_checkpoint": False}


@dataclass
class Lane:
    """One rank's window, as mlx-lm's ``TrainingArgs`` is one run's: what the steps below read."""
    spec: dict  # the window spec, the same on every rank
    rank: int  # this process's rank (MLX_RANK), its index in spec["ranks"]
    host: str  # this rank's inventory name
    run_dir: Path  # this rank's run directory
    data: str  # this rank's dataset folder (train.jsonl, valid.jsonl), as the spec wrote it
    config: dict  # the profile merged over mlx-lm's and the lane's defaults (merged_config)
    started: float  # time.time() at the window's start
    group: Any = None  # the mlx distributed group, once initialised
    start_step: int = 0  # the committed step this window resumed from
    n_train: int = 0  # training rows, for the checkpoint's data position
    last_train_loss: Optional[float] = None
    keep_steps: int = 2  # commits whose files stay on disk (the profile's lane.keep_steps)
    committed: Optional[dict] = None  # the checkpoint record this rank last committed or resumed from
    ahead: bool = False  # resumed below its own checkpoint.json (another rank was a commit behind)

    @classmethod
    def for_rank(cls, spec, rank):
        from mlx_lm.lora import CONFIG_DEFAULTS  # here: importing it changes yaml's SafeLoader
        me = spec["ranks"][rank]
        return cls(spec=spec, rank=rank, host=me["host"], run_dir=Path(me["run_dir"]), data=me["data"],
                   config=merged_config(spec["config"], CONFIG_DEFAULTS), started=time.time(),
                   keep_steps=int(spec.get("keep_steps", 2)))

    def say(self, phase, **fields):
        emit(self.rank, self.host, phase, **fields)


def emit(rank, host, phase, **fields):
    """One event, ``\\nLANE {json}\\n``: a flat object alone on its line (a reader decodes from the
    ``{`` after the line's last ``LANE ``), in one ``os.write`` so other output never splits it."""
    record = {"rank": rank, "host": host, "phase": phase}
    record.update((k, float(f"{v:.6g}") if isinstance(v, float) else v) for k, v in fields.items())
    sys.stdout.flush()
    os.write(1, ("\nLANE " + json.dumps(record, ensure_ascii=True, separators=(", ", ": ")) + "\n").encode())


def merged_config(profile, defaults):
    """``defaults`` (mlx-lm's CONFIG_DEFAULTS), LANE_DEFAULTS, then the profile; dicts such as
    ``lora_parameters`` merge key by key; a profile's null counts as unset, as in mlx-lm."""
    config = {}
    for layer in (defaults, LANE_DEFAULTS, profile):
        for key, value in layer.items():
            if value is None and key in config:
                continue
            if isinstance(value, dict) and isinstance(config.get(key), dict):
                value = {**config[key], **value}
            config[key] = copy.deepcopy(value)
    return config


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


def lane_batches(start_step, base_seed):
    """mlx-lm's ``iterate_batches`` from a data position: each epoch seeded by (seed, epoch) alone and
    ``start_step`` batches skipped, a resumed window sees the batches an unbroken run would."""
    def iterate(dataset, batch_size, max_seq_length, loop=False, seed=None, comm_group=None):
        if not loop:
            yield from iterate_batches(dataset, batch_size, max_seq_length, seed=seed, comm_group=comm_group)
            return
        epoch, skip = epoch_and_skip(start_step, len(dataset), batch_size)
        while True:
            batches = iterate_batches(dataset, batch_size, max_seq_length,
                                      seed=epoch_seed(base_seed, epoch), comm_group=comm_group)
            yield from itertools.islice(batches, skip, None)
            epoch, skip = epoch + 1, 0
    return iterate


def agreed_digest(arrays, group):
    """sha256 over names, dtypes, shapes and values (file bytes may differ between processes),
    gathered from all ranks: a divergence fails the window on every rank at once."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = arrays[name].astype(mx.float32) if arrays[name].dtype == mx.bfloat16 else arrays[name]
        h.update(f"{name}|{a.dtype}|{a.shape}|".encode())
        h.update(np.asarray(a).tobytes())
    mine = mx.array(list(h.digest()), dtype=mx.int32)
    everyone = mx.distributed.all_gather(mine, group=group, stream=mx.cpu).reshape(group.size(), -1)
    rows = [bytes(r).hex() for r in everyone.tolist()]
    if len(set(rows)) != 1:
        raise LaneError("divergence", "adapter weights differ between ranks: "
                        + ", ".join(f"rank {i} {d[:12]}" for i, d in enumerate(rows)))
    return h.hexdigest()


def prepare_run_dir(lane):
    """The run directory and its ``.lane`` folder, no torn temp files, this rank's pid file."""
    try:
        (lane.run_dir / LANE_DIR).mkdir(parents=True, exist_ok=True)
        for torn in lane.run_dir.glob(".*.tmp*"):  # a save killed half-way: never a final name
            torn.unlink()
        pidfile = lane.run_dir / LANE_DIR / f"rank{lane.rank}.pid"
        write_json(pidfile, {"pid": os.getpid(), "host": lane.host, "started": lane.started})
    except OSError as e:
        raise LaneError("write", f"cannot write in run directory {lane.run_dir}{disk_full_note(e)}: {e}") from None


def init_group(lane):
    """The spec's backend (the profile's; ring by default), strictly: no silent fallback to another
    backend. A one-rank window may be a singleton group (mlx.launch sets no hostfile then)."""
    backend, want = lane.spec.get("backend") or "ring", len(lane.spec["ranks"])
    try:
        group = mx.distributed.init(strict=want > 1, backend=backend)
    except (RuntimeError, ValueError) as e:
        raise LaneError("backend", f"mx.distributed.init(strict={want > 1}, backend={backend!r}) failed on "
                        f"{lane.host}: {e}") from None
    if group.size() != want:
        raise LaneError("world-size", f"distributed group has {group.size()} rank(s), expected {want}"
                        " (did the ring backend fall back to a single process?)")
    return group


def load_model(lane):
    """The spec's model from the HF cache, offline, at the spec's revision; float32 on a CPU."""
    repo, want = lane.spec["model"], lane.spec.get("revision")
    try:
        snapshot = snapshot_download(repo, local_files_only=True)
        model, tokenizer = load(repo)
    except Exception as e:  # noqa: BLE001 - any failure here is a cache/materialization one
        raise LaneError("cache", f"cannot load {repo} offline from the HF cache "
                        f"{os.environ.get('HF_HUB_CACHE') or '(the default: HF_HUB_CACHE unset)'}: "
                        f"{type(e).__name__}: {e}") from None
    if mx.default_device() == mx.cpu:
        model.set_dtype(mx.float32)  # bf16 is emulated on CPU (Linux lab): float32 is ~6x faster
    revision = Path(snapshot).name
    if want and revision != want:
        raise LaneError("cache", f"model revision {revision[:12]} here, expected {want[:12]}")
    return model, tokenizer


def load_data(lane, tokenizer):
    data = Path(lane.data)
    for name in ("train.jsonl", "valid.jsonl"):
        if not (data / name).is_file():
            raise LaneError("dataset", f"{data / name} is missing on {lane.host}")
    try:
        args = SimpleNamespace(mask_prompt=lane.config["mask_prompt"])
        train_set, valid, _ = load_local_dataset(data, tokenizer, args)
    except (OSError, ValueError, KeyError) as e:
        raise LaneError("dataset", f"cannot read the dataset in {data}: {e}") from None
    return CacheDataset(train_set), CacheDataset(valid) if len(valid) else None


def build_optimizer(lane, model):
    """LoRA layers and the optimizer, as mlx-lm's ``train_model`` makes them."""
    cfg = lane.config
    mx.random.seed(cfg["seed"])
    model.freeze()
    linear_to_lora_layers(model, cfg["num_layers"], cfg["lora_parameters"])
    lr = build_schedule(cfg["lr_schedule"]) if cfg["lr_schedule"] else cfg["learning_rate"]
    optimizer = {"adam": optim.Adam, "adamw": optim.AdamW}[cfg["optimizer"]](learning_rate=lr)
    optimizer.init(model.trainable_parameters())
    return optimizer


def restore(lane, model, optimizer):
    """The committed adapters, optimizer state (its step count: schedules carry on) and RNG key
    back in place, from the files checkpoint.json names, each verified against its sha256 first.
    Every rank resumes from the lowest committed step of all ranks (they may end one commit
    apart); returns it (0 without a checkpoint)."""
    ckpt = read_checkpoint(lane.run_dir)
    for key in ("run_id", "profile"):
        if ckpt is not None and ckpt.get(key) != lane.spec[key]:
            raise LaneError("checkpoint", f"{lane.run_dir / CHECKPOINT} belongs to {key} "
                            f"{ckpt.get(key)!r}, not {lane.spec[key]!r}")
    mine = int(ckpt["step"]) if ckpt else 0
    steps = mx.distributed.all_gather(mx.array([mine], dtype=mx.int32), group=lane.group, stream=mx.cpu).tolist()
    planned = lane.spec.get("from_step")  # the writer's step the window was planned from (window/plan.py)
    if planned is not None and steps[0] != planned:
        raise LaneError("resume", f"this window was planned from the writer's step {planned}, its checkpoint.json "
                        f"is at step {steps[0]}: another window of the run ran since; nothing was trained")
    step = min(steps)
    lane.ahead = step < mine
    if step == 0 and mine and ckpt.get("previous"):
        raise LaneError("resume", f"the ranks' committed steps are {steps}: a rank has no checkpoint.json while "
                        f"{lane.run_dir / CHECKPOINT} holds commits up to step {mine}; restarting from 0 would "
                        "drop them: restore that rank's run directory, or start a new run_name")
    if step == 0:
        return 0
    record = record_at(ckpt, step)
    if record is None:
        raise LaneError("resume", f"the ranks' committed steps are {steps}: {lane.run_dir / CHECKPOINT} is "
                        f"at step {mine} and no longer keeps step {step}'s files (lane.keep_steps)")
    adapters = mx.load(str(verified_path(lane.run_dir, record, "step_file")))
    expected = set(dict(tree_flatten(model.trainable_parameters())))
    if set(adapters) != expected:
        raise LaneError("checkpoint", f"{record['step_file']} holds {len(adapters)} tensors, the model "
                        f"expects {len(expected)}: the profile's LoRA layout changed")
    model.load_weights(list(adapters.items()), strict=False)
    state = mx.load(str(verified_path(lane.run_dir, record, "state_file")))
    optimizer.state = tree_unflatten([(k[4:], v) for k, v in state.items() if k.startswith("opt.")])
    hi, lo = state["rng.key"].tolist()  # mx.random.seed(s) sets the key to (s >> 32, s & 0xffffffff)
    mx.random.seed((hi << 32) | lo)
    mx.eval(model.parameters(), optimizer.state)
    lane.committed = record
    return step


def commit(lane, step, model, optimizer, val_set):
    """Validate, agree on the adapters' digest across ranks, then commit (commit.py's protocol)."""
    val_loss = validate(lane, model, val_set)
    adapters = dict(tree_flatten(model.trainable_parameters()))
    digest = agreed_digest(adapters, lane.group)
    state = {**{f"opt.{k}": v for k, v in tree_flatten(optimizer.state)}, "rng.key": mx.random.state[0]}
    record = commit_step(lane, step, adapters, state, checkpoint_record(lane, step, digest, val_loss), lane.group)
    lane.say("commit", step=step, adapter_sha256=record["step_file_sha256"][:12], val_loss=val_loss)
    mx.eval(model.parameters())


def validate(lane, model, val_set):
    """mlx-lm's ``evaluate`` on the same batches at every commit of any window (a fixed seed)."""
    if val_set is None:
        return None
    cfg = lane.config
    loss = evaluate(model, val_set, batch_size=cfg["batch_size"], num_batches=cfg["val_batches"],
                    max_seq_length=cfg["max_seq_length"],
                    iterate_batches=partial(iterate_batches, seed=cfg["seed"]))
    model.train()
    return float(loss)


def refuse_fault_outside_lab(spec):
    """The fault hook kills ranks: only a lab host (whose sshd sets THUNDER_LAB_HOST) honours it."""
    if spec.get("fault") and not os.environ.get(LAB_MARKER):
        raise LaneError("spec", f"fault injection {spec['fault']!r} (THUNDER_FAULT) is for the lab's hosts only, "
                        f"and this host has no {LAB_MARKER}: unset THUNDER_FAULT where fab runs")
    check_fault(spec.get("fault"))


def checkpoint_record(lane, step, digest, val_loss):
    """checkpoint.json's record of step ``step`` but its files (commit_step adds them)."""
    epoch, batch = epoch_and_skip(step, lane.n_train, lane.config["batch_size"])
    spec, now = lane.spec, time.time()
    return {
        "step": step, "target": spec["target"], "window": {"from": lane.start_step, "to": spec["to_step"]},
        "profile": spec["profile"], "run_id": spec["run_id"], "dataset_digest": spec["dataset_digest"],
        "model": {"repo": spec["model"], "revision": spec.get("revision")}, "world_size": len(spec["ranks"]),
        "hosts": [r["host"] for r in spec["ranks"]], "rank": lane.rank, "host": lane.host,
        "run_dir": str(lane.run_dir), "weights_digest": digest, "train_loss": lane.last_train_loss,
        "val_loss": val_loss, "data_position": {"epoch": epoch, "batch": batch, "seed": lane.config["seed"]},
        "times": {"window_started": iso_time(lane.started), "committed": iso_time(now),
                  "window_seconds": round(now - lane.started, 3)},
        "versions": {"python": platform.python_version(), "mlx": mx.__version__, "mlx_lm": mlx_lm.__version__},
        "command": spec.get("command"),
    }


class LaneCallback(TrainingCallback):
    """mlx-lm's training callback: an event at each absolute step, a commit at save points."""

    def __init__(self, lane, model, optimizer, val_set):
        self.lane, self.model, self.optimizer, self.val_set = lane, model, optimizer, val_set

    def on_train_loss_report(self, info):
        lane = self.lane
        step = lane.start_step + info["iteration"]
        lane.last_train_loss = float(info["train_loss"])
        lane.say("step", step=step, loss=lane.last_train_loss, lr=float(info["learning_rate"]),
                 tok_s=float(info["tokens_per_second"]))
        if step % lane.config["save_every"] == 0 or step == lane.spec["to_step"]:
            commit(lane, step, self.model, self.optimizer, self.val_set)


def run_window(lane):
    """Set up, restore, train with mlx-lm up to the spec's ``to_step``, committing on the way."""
    refuse_fault_outside_lab(lane.spec)
    prepare_run_dir(lane)
    lane.say("start", pid=os.getpid(), **globals().get("RANK_PROLOGUE", {}))  # rank_env.py's, in a bundle
    lane.group = init_group(lane)
    model, tokenizer = load_model(lane)
    lane.say("model-loaded", world=lane.group.size())
    train_set, val_set = load_data(lane, tokenizer)
    lane.n_train = len(train_set)
    lane.say("data-loaded", train=len(train_set), valid=len(val_set) if val_set else 0)
    optimizer = build_optimizer(lane, model)
    lane.start_step = restore(lane, model, optimizer)
    to_step = lane.spec["to_step"]
    if lane.start_step >= to_step:
        lane.say("done", step=lane.start_step, note="already-committed")
        return
    lane.say("resume", step=lane.start_step, to=to_step)
    cfg = lane.config  # mlx-lm's own evaluations and saves never happen: the callback commits
    args = TrainingArgs(batch_size=cfg["batch_size"], iters=to_step - lane.start_step,
                        val_batches=cfg["val_batches"], steps_per_report=1, steps_per_eval=10**9,
                        steps_per_save=10**9, max_seq_length=cfg["max_seq_length"],
                        adapter_file=str(lane.run_dir / LANE_DIR / "unused.safetensors"),
                        grad_checkpoint=cfg["grad_checkpoint"])
    train(model, optimizer, train_set, None, args=args,
          iterate_batches=lane_batches(lane.start_step, cfg["seed"]),
          training_callback=LaneCallback(lane, model, optimizer, val_set))
    Path(args.adapter_file).unlink(missing_ok=True)  # mlx-lm's final save
    lane.say("done", step=to_step)


def main(argv):
    rank = int(os.environ.get("MLX_RANK", "0"))
    try:
        spec = json.loads(argv[-1])
        host = spec["ranks"][rank]["host"]
    except (ValueError, KeyError, IndexError, TypeError) as e:
        emit(rank, platform.node(), "error", kind="spec", msg=f"bad window spec: {e}")
        return EXIT_CODES["spec"]
    try:
        run_window(Lane.for_rank(spec, rank))
        return 0
    except LaneError as e:
        emit(rank, host, "error", kind=e.kind, msg=str(e))
        return EXIT_CODES[e.kind]
    except Exception as e:  # noqa: BLE001 - classified as a runtime crash, with its traceback
        traceback.print_exc()
        emit(rank, host, "error", kind="runtime", msg=f"{type(e).__name__}: {e}")
        return EXIT_CODES["runtime"]


if __name__ == "__main__":
    sys.exit(main(sys.argv))
