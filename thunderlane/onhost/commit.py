# thunderlane on-host commit protocol (bundled into the training entry after files.py)
"""A commit of step N, on every rank in its own run directory, in an order no kill can tear:

1. the step's files under step names (``0000010_adapters.safetensors``,
   ``0000010_lane_state.safetensors``) and ``adapter_config.json``, each written atomically and
   hashed as it is written;
2. a barrier: every rank has its files before any rank names them;
3. ``checkpoint.json`` (format 2), atomically: the step, ``files`` (name -> sha256 and size) and
   ``previous``, the last ``keep_steps - 1`` commits before it, whose files stay on disk;
4. the fixed-name ``adapters.safetensors`` (mlx-lm's ``adapter_path`` layout): a copy of the step's
   adapters refreshed for people, never trusted by resume or the gate;
5. step files that neither ``files`` nor ``previous`` names are pruned.

A kill anywhere leaves ``checkpoint.json`` naming whole files: step N's, or the commit before. Ranks
may end one commit apart (a rank killed between the barrier and its own ``checkpoint.json``): the
next window resumes every rank from the lowest committed step, which a rank ahead keeps in
``previous``."""
import os
import re
import shutil
import time
from pathlib import Path

import mlx.core as mx

if __package__:  # imported from thunderlane.onhost; in a bundle, files.py defined these above
    from .files import CHECKPOINT, LANE_DIR, atomic_write, checked_write, disk_full_note, sha256_file, write_json

FORMAT = 2
ADAPTERS = "adapters.safetensors"  # mlx-lm's fixed name: refreshed after a commit, never trusted
CONFIG_FILE = "adapter_config.json"
STEP_FILE = re.compile(r"\d{7}_(adapters|lane_state)\.safetensors")
EXIT_CODES = {"runtime": 1, "cache": 10, "dataset": 11, "write": 12, "world-size": 13,
              "divergence": 14, "checkpoint": 15, "spec": 16, "resume": 17, "backend": 18}
# Where the fault hook can kill a rank during a commit, in commit order. ``during-*`` kills half-way
# through the temporary file; ``before-state`` is the moment of ``after-adapters``, and so on.
POINTS = tuple(f"{when}-{what}" for what in ("adapters", "state", "config") for when in ("before", "during", "after")) \
    + ("before-checkpoint", "during-checkpoint", "after-checkpoint", "during-refresh", "after-refresh",
       "after-prune")
# A kill aimed at one rank past the barrier waits this long first, so that the other ranks finish
# their own commit (milliseconds) before mlx.launch, seeing this rank gone, ends them (fault 18).
AFTER_BARRIER = ("before-checkpoint", "during-checkpoint", "after-checkpoint", "during-refresh",
                 "after-refresh", "after-prune")
PEERS_FIRST = 2.0
FAULT = re.compile(r"kill-during-save@(\d+)|kill-at@(\d+):([a-z-]+)(?::(\d+))?")


class LaneError(Exception):
    """A classified failure: ``kind`` is one of EXIT_CODES."""

    def __init__(self, kind, message):
        super().__init__(message)
        self.kind = kind


def step_names(step):
    """(adapters, state) file names of step ``step``: mlx-lm's own step naming."""
    return f"{step:07d}_adapters.safetensors", f"{step:07d}_lane_state.safetensors"


# --- the fault hook (the reliability suite's; lab hosts only: lane_train.refuse_fault_outside_lab)

def check_fault(fault):
    """A fault spec this hook understands, or a ``spec`` LaneError naming the points it knows."""
    m = FAULT.fullmatch(fault or "")
    if fault and (not m or (m.group(3) and m.group(3) not in POINTS)):
        raise LaneError("spec", f"unknown fault {fault!r}: kill-during-save@STEP or "
                        f"kill-at@STEP:POINT[:RANK] with POINT one of {', '.join(POINTS)}")


def fault_at(lane, step, point, tmp=None):
    """Die here when the spec's fault is ``kill-at@STEP:POINT`` (``:RANK``: that rank only), first
    cutting ``tmp`` in half for a ``during-*`` point. ``kill-during-save@STEP`` (fault case 5) is
    ``kill-at@STEP:during-adapters``."""
    fault = lane.spec.get("fault")
    if not fault:
        return
    if fault == f"kill-during-save@{step}":
        fault = f"kill-at@{step}:during-adapters"
    want = f"kill-at@{step}:{point}"
    if fault not in (want, f"{want}:{lane.rank}"):
        return
    if fault != want and point in AFTER_BARRIER:  # one rank torn, the others' commit whole: not raced
        time.sleep(PEERS_FIRST)                   # by mlx.launch's teardown of the ranks left
    if tmp is not None:
        with open(tmp, "r+b") as f:
            f.truncate(os.path.getsize(tmp) // 2)
    os.kill(os.getpid(), 9)


# --- writing a commit ----------------------------------------------------------------------------

def commit_step(lane, step, adapters, state, record, group):
    """Commit step ``step``: files, barrier, checkpoint.json, refresh, prune (see the module's
    docstring). ``record`` is checkpoint.json without its files; returns the record written."""
    run_dir = Path(lane.run_dir)
    try:
        settle_rollback(lane)
        files = save_step(lane, step, adapters, state)
    except OSError as e:
        raise LaneError("write", f"saving step {step} in {run_dir} failed{disk_full_note(e)}: {e}") from None
    mx.eval(mx.distributed.all_sum(mx.array(1), group=group, stream=mx.cpu))  # barrier: all files first
    fault_at(lane, step, "before-checkpoint")
    adapters_name, state_name = step_names(step)
    record = dict(record, format=FORMAT, step_file=adapters_name, step_file_sha256=files[adapters_name]["sha256"],
                  state_file=state_name, state_sha256=files[state_name]["sha256"], files=files,
                  previous=previous_commits(lane.committed, step, lane.keep_steps))
    try:
        _write(lane, step, "checkpoint", CHECKPOINT, lambda tmp: _json(tmp, record))
        lane.committed = record
        _write(lane, step, "refresh", ADAPTERS, lambda tmp: shutil.copyfile(run_dir / adapters_name, tmp))
    except OSError as e:
        raise LaneError("write", f"committing step {step} in {run_dir} failed{disk_full_note(e)}: {e}") from None
    prune(run_dir, record)
    fault_at(lane, step, "after-prune")
    return record


def save_step(lane, step, adapters, state):
    """The step's adapters, optimizer and RNG state, and mlx-lm's adapter config: name -> sha256, size."""
    adapters_name, state_name = step_names(step)
    files = {}
    for what, name, arrays in (("adapters", adapters_name, adapters), ("state", state_name, state)):
        files[name] = _write(lane, step, what, name,
                             lambda tmp, a=arrays: checked_write(str(tmp), lambda path: mx.save_safetensors(
                                 path, a, {"format": "mlx"})))
    files[CONFIG_FILE] = _write(lane, step, "config", CONFIG_FILE, lambda tmp: _json(tmp, adapter_config(lane)))
    return files


def _write(lane, step, what, name, write):
    """``write(tmp)`` atomically onto ``name``, hashed from the temporary file as written (no second
    read of the final file); the fault hook's points around and inside it."""
    fault_at(lane, step, f"before-{what}")
    entry = {}

    def written(tmp):
        write(tmp)
        fault_at(lane, step, f"during-{what}", tmp)
        entry.update(sha256=sha256_file(tmp), size=os.path.getsize(tmp))
    atomic_write(Path(lane.run_dir) / name, written)
    fault_at(lane, step, f"after-{what}")
    return entry


def _json(tmp, obj):
    import json
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def adapter_config(lane):
    """mlx-lm's adapter_config.json, so ``mlx_lm.load(model, adapter_path=run_dir)`` works."""
    keys = ("num_layers", "lora_parameters", "batch_size", "learning_rate", "lr_schedule",
            "max_seq_length", "seed", "mask_prompt", "save_every")
    return {"fine_tune_type": "lora", "model": lane.spec["model"], "data": lane.data,
            "adapter_path": str(lane.run_dir), **{k: lane.config.get(k) for k in keys}}


def previous_commits(committed, step, keep):
    """The commits before ``step`` whose files a new checkpoint.json keeps: the last ``keep - 1``,
    newest first, each a whole record without its own ``previous``."""
    if not committed:
        return []
    older = [{k: v for k, v in committed.items() if k != "previous"}, *committed.get("previous", [])]
    return [r for r in older if r.get("step", step) < step][:max(keep - 1, 0)]


def prune(run_dir, record):
    """Delete step files that neither the record's ``files`` nor its ``previous`` commits name (a
format-1 commit names its files by ``step_file`` and ``state_file`` only)."""
    keep = set(record["files"])
    for r in record.get("previous", []):
        keep |= set(r.get("files", {})) | {r.get("step_file"), r.get("state_file")}
    for name in sorted(os.listdir(run_dir)):
        if STEP_FILE.fullmatch(name) and name not in keep:
            try:
                os.unlink(run_dir / name)
            except FileNotFoundError:
                pass


def settle_rollback(lane):
    """A rank that resumed below its own checkpoint.json (another rank was a commit behind) points
    checkpoint.json back at the commit it resumed from before it rewrites step files that the newer
    record names; with nothing to point at, the newer record is moved into ``.lane``."""
    if not lane.ahead:
        return
    run_dir = Path(lane.run_dir)
    if lane.committed:
        write_json(run_dir / CHECKPOINT, lane.committed)
    else:
        os.replace(run_dir / CHECKPOINT, run_dir / LANE_DIR / "checkpoint.rolled-back.json")
    lane.ahead = False


# --- reading a commit back (resume) --------------------------------------------------------------

def record_at(ckpt, step):
    """The record of commit ``step``: checkpoint.json itself or one of its ``previous`` commits, with
    the commits before it as its ``previous``; None when this rank no longer keeps it."""
    chain = [ckpt, *ckpt.get("previous", [])]
    for i, r in enumerate(chain):
        if isinstance(r, dict) and r.get("step") == step:
            return dict(r, previous=chain[i + 1:])
    return None


def verified_path(run_dir, record, key):
    """The path of the file ``record[key]`` names (``step_file``, ``state_file``), after checking its
    size and sha256 against the record's ``files`` (format 1: ``<key's>_sha256``)."""
    name = record.get(key)
    where = Path(run_dir) / CHECKPOINT
    if not isinstance(name, str) or os.path.basename(name) != name or name.startswith("."):
        raise LaneError("resume", f"{where}: {key} {name!r} is not a plain file name")
    if record.get("format") == FORMAT:
        entry = record.get("files", {}).get(name) or {}
        want, size = entry.get("sha256"), entry.get("size")
    else:  # format 1 (an older lane): step_file and state_file with their sha256, no sizes
        want, size = record.get({"step_file": "step_file_sha256"}.get(key, "state_sha256")), None
    path = Path(run_dir) / name
    if not path.is_file():
        raise LaneError("resume", f"{path} named by {where} (step {record.get('step')}) is missing; "
                        "refusing to restart the run from scratch")
    if (size is not None and path.stat().st_size != size) or sha256_file(path) != want:
        raise LaneError("resume", f"{path} does not match the size and sha256 that {where} records for "
                        f"step {record.get('step')}; refusing to resume from a changed file")
    return path
