"""fab evaluate's job: the committed step in the local mirror, gated; the base model plus that
step's adapters; the split decoded greedily; CER before/after, test loss and the promotion verdict,
saved beside the checkpoint as ``eval_step<N>_<split>.json`` (atomically)."""
import json
import os
import shlex
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from .. import checkpoint, layout
from ..mirror import MirrorBusy, locked
from ..facts import RunFacts, thaw
from ..fsutil import atomic_write
from ..onhost.runs import lane_facts
from ..window.lock import note
from . import decode, metrics, policy, rows as rows_mod

EVAL_FILE = "eval_step{step}_{split}{part}.json"   # part: "" for the whole split, "_first<N>" with --limit N


def eval_file(step, split, limit):
    """The result file's name: a run on part of a split (``--limit``) never replaces the whole one's."""
    return EVAL_FILE.format(step=step, split=split, part=f"_first{limit}" if limit else "")
TOP = 5  # rows shown helped most / hurt most


class EvaluateError(RuntimeError):
    """The evaluation cannot run; the message names the file, step or split and why."""


@dataclass(frozen=True)
class Target:
    """A committed step whose files passed the gate: in the local mirror, or (``on_host.py``) in a
    host's run directory (``mirror`` then is that directory's path on the host)."""
    mirror: Path
    step: int
    record: dict
    adapters: Path
    config: Path


def target(inv, profile, step=None):
    """The mirror's committed step (``step``: must be that one), its files checked as the gate
    checks the writer's: named by checkpoint.json, whole, with the recorded size and sha256."""
    mirror = layout.local(inv).mirror(profile.run_name)
    facts = RunFacts.from_json(lane_facts(str(mirror.parent), mirror.name))
    have, record = judge(facts, step, "local", str(mirror), empty=f"the local mirror {mirror}: run fab "
                         f"mirror-back --profile {profile.name} first",
                         kept="its files are not in the local mirror (mirror-back brings home the last commit only)")
    return Target(mirror, have, record, mirror / record["step_file"], mirror / "adapter_config.json")


def judge(facts, step, host, where, empty, kept):
    """(committed step, checkpoint.json's record) of the run directory ``facts`` describes (``where``,
    on ``host``), when ``step`` (None: any) is that step and its files pass the gate; else an
    :class:`EvaluateError` saying why. ``empty``: what to say of a directory without a commit;
    ``kept``: why an earlier commit still listed in ``previous`` is not evaluated."""
    have = checkpoint.committed_step(facts)
    if not facts.exists or have == 0:
        raise EvaluateError(f"no committed step in {empty}")
    if have is None:
        raise EvaluateError(f"{where}/checkpoint.json is unreadable: {facts.checkpoint.error}")
    record = thaw(facts.record)
    if step is not None and step != have:
        was = any(isinstance(r, dict) and r.get("step") == step for r in record.get("previous") or [])
        raise EvaluateError(f"step {step}: {kept if was else 'it is not committed'}; {where}/checkpoint.json "
                            f"commits step {have}")
    g = checkpoint.gate(host, facts, have)
    if not g.ok:
        raise EvaluateError(f"step {have} in {where} fails the gate ({g.verdict}): {g.detail}")
    if "adapter_config.json" not in record.get("files", {}):
        raise EvaluateError(f"{where}/checkpoint.json does not name adapter_config.json: mlx-lm cannot "
                            "load the adapters")
    return have, record


def split_path(inv, profile, split, host=None):
    """The split's file on ``host`` (default: local), as the window gives a host its data."""
    if split not in policy.SPLITS:
        raise EvaluateError(f"split {split!r}: choose one of {', '.join(policy.SPLITS)}")
    root = profile.config.get("data") or (host or inv.local).dataset_root
    return Path(root) / f"{split}.jsonl"


def model_dir(inv, profile, record):
    """The base model's snapshot in local's HF cache, at the revision the step was trained on, offline."""
    from huggingface_hub import snapshot_download
    repo = profile.config["model"]
    revision = (record.get("model") or {}).get("revision")
    try:
        return snapshot_download(repo, revision=revision, cache_dir=inv.local.hf_cache, local_files_only=True)
    except Exception as e:  # noqa: BLE001 - any failure here is a cache one: say which
        raise EvaluateError(f"cannot find {repo} at revision {str(revision)[:12]} in local's HF cache "
                            f"{inv.local.hf_cache or '(the default)'}: {type(e).__name__}: {e}") from None


def reproduce(inv, profile, step, split, limit, on=None):
    """The command that evaluates ``step`` again (None: the mirror's step), on host ``on`` if named."""
    cmd = [f"THUNDER_INVENTORY={shlex.quote(inv.path)}", "fab", "evaluate", "--profile", profile.name]
    cmd += ["--on", shlex.quote(on)] if on else []
    cmd += ["--step", str(step)] if step is not None else []
    return " ".join(cmd + ["--split", split] + (["--limit", str(limit)] if limit else []))


def evaluate(inv, profile, step=None, split="test", limit=0, batch=decode.BATCH, out=sys.stderr):
    """Run the evaluation; return its data (also saved beside the checkpoint). mirror-back's lock
    on the run is held throughout, with a note naming this task: the mirror is not replaced under
    the evaluation, and a mirror-back refused meanwhile says that an evaluate holds it."""
    lock = layout.local(inv).root / ".locks" / f"mirror-back.run-{profile.run_name}.lock"  # mirror.lock_paths'
    try:
        with locked([lock], note("evaluate", os.getpid())):
            return _evaluate(inv, profile, step, split, limit, batch, out)
    except MirrorBusy as e:
        who = f"{e.holder.words()} holds it" if e.holder else f"a mirror-back of {profile.run_name} is running"
        raise EvaluateError(f"{who} ({lock}); evaluate when it has ended") from None


def _evaluate(inv, profile, step, split, limit, batch, out):
    t = target(inv, profile, step)
    data = rows_mod.load_split(split_path(inv, profile, split), limit)
    folder = decode.adapter_folder(t.config, t.adapters)
    try:
        model, tokenizer = decode.load_model(model_dir(inv, profile, t.record), folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    t0 = time.monotonic()
    corrections = decode.correct(model, tokenizer, data.rows, batch, decode.Progress(len(data.rows), out))
    seconds = time.monotonic() - t0
    cfg = profile.config
    loss = decode.test_loss(model, tokenizer, [r.messages for r in data.rows], cfg["batch_size"],
                            cfg["max_seq_length"], cfg.get("mask_prompt", False))
    result = report(profile, t, data, scores_of(data, corrections), loss,
                    {"seconds": seconds, "batch": batch, "peak_rss_mb": decode.peak_rss_mb()})
    result["command"] = reproduce(inv, profile, t.step, split, limit)
    path = t.mirror / eval_file(t.step, split, limit)
    result["saved"] = str(path)
    atomic_write(path, json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    return result


def scores_of(data, corrections):
    """Each row's :class:`metrics.RowScore` from the adapter's ``corrections`` (local's or a host's)."""
    return [metrics.score(r.where, data.hypothesis(r), c, r.reference) for r, c in zip(data.rows, corrections)]


def report(profile, t, data, scores, loss, run, on="local"):
    """The evaluation's data: figures, verdict, bad rows, the rows helped and hurt most, every row.
    ``run``: how the decoding went where it ran (``on``): seconds, batch, peak_rss_mb."""
    seconds, batch = run["seconds"], run["batch"]
    summary = metrics.summarise(scores)
    v = policy.verdict(summary, profile.promotion)
    helped, hurt = metrics.extremes(scores, TOP)
    now = datetime.now(timezone.utc).isoformat(timespec="microseconds")
    return {"profile": profile.name, "on": on, "evaluated_at": now, "run_name": profile.run_name,
            "run_id": t.record.get("run_id"),
            "step": t.step, "adapters": {"file": t.adapters.name, "sha256": t.record["files"][t.adapters.name]["sha256"]},
            "model": t.record.get("model"), "split": data.path, "instruction": data.instruction,
            "bad_rows": [{"where": w, "reason": r} for w, r in data.bad], "bad_count": len(data.bad),
            "metrics": summary.to_dict(), "test_loss": None if loss is None else round(float(loss), 6),
            "verdict": v.to_dict(), "promotion": asdict(profile.promotion),
            "helped": [s.to_dict() for s in helped], "hurt": [s.to_dict() for s in hurt],
            "decode": {"rows": len(scores), "seconds": round(seconds, 3), "batch": batch, "greedy": True,
                       "rows_per_s": round(len(scores) / max(seconds, 1e-9), 3),
                       "max_tokens": f"{decode.TOKEN_FACTOR} x reference tokens + {decode.TOKEN_MARGIN}"},
            "peak_rss_mb": run["peak_rss_mb"], "rows": [s.to_dict() for s in scores]}


def for_handoff(inv, profile, out=sys.stderr):
    """fab handoff's evaluation of the step it mirrored, as the profile's ``promotion:`` asks: the
    data without the per-row list (that stays in the saved file), or ``{error, command}``."""
    p = profile.promotion
    try:
        data = evaluate(inv, profile, split=p.split, limit=p.limit, out=out)
    except (EvaluateError, rows_mod.SplitError) as e:
        return {"error": str(e), "command": reproduce(inv, profile, None, p.split, p.limit)}
    except Exception as e:  # noqa: BLE001 - mlx or a disk failing here must not cost the handoff its report
        return {"error": f"{type(e).__name__}: {e}", "command": reproduce(inv, profile, None, p.split, p.limit)}
    return {k: v for k, v in data.items() if k != "rows"}
