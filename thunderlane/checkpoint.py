"""The success gate: ``checkpoint.json`` on the writer host names the target step, and every file
it names (format 2: ``files``, name -> sha256 and size) exists, has that size and sha256, and is a
whole safetensors file where it is one. The fixed-name ``adapters.safetensors`` (refreshed after a
commit, for mlx-lm users) is never what the gate trusts. Logs prove nothing. Everything here reads a
host's ``facts.RunFacts``."""
import re
from collections.abc import Mapping

from .report import HostResult

FORMAT = 2
HEX64 = re.compile(r"[0-9a-f]{64}")
# A plain file name: no folder, not hidden (temporary names start with '.'), no control characters.
PLAIN_NAME = re.compile(r"[^./\\\x00-\x1f\x7f][^/\\\x00-\x1f\x7f]{0,254}")


class CheckpointError(ValueError):
    """checkpoint.json does not name its files as format 2 requires; the message says how."""


def named_files(record):
    """Every file a format-2 ``checkpoint.json`` record names: ``{name: (sha256, size)}``. Names are
    plain file names (no ``/``, no leading ``.``); ``step_file`` and ``state_file`` must be among
    them. Raises :class:`CheckpointError` otherwise."""
    if not isinstance(record, Mapping) or record.get("format") != FORMAT:
        got = record.get("format", 1) if isinstance(record, Mapping) else None
        raise CheckpointError(f"checkpoint.json is format {got!r}, not {FORMAT} (an older lane wrote it; "
                              "the next window's commit rewrites it)")
    files = record.get("files")
    if not isinstance(files, Mapping) or not files:
        raise CheckpointError("checkpoint.json names no files")
    out = {}
    for name, entry in files.items():
        if not isinstance(name, str) or not PLAIN_NAME.fullmatch(name):
            raise CheckpointError(f"checkpoint.json names {name!r}, which is not a plain file name")
        sha = entry.get("sha256") if isinstance(entry, Mapping) else None
        size = entry.get("size") if isinstance(entry, Mapping) else None
        if not isinstance(sha, str) or not HEX64.fullmatch(sha) or type(size) is not int or size < 0:
            raise CheckpointError(f"checkpoint.json: {name}: needs a sha256 and a size")
        out[name] = (sha, size)
    for key in ("step_file", "state_file"):
        if not isinstance(record.get(key), str) or record.get(key) not in out:
            raise CheckpointError(f"checkpoint.json: {key} {record.get(key)!r} is not among its files")
    return out


def keeps(record, step):
    """Whether a rank whose checkpoint.json is ``record`` can still resume from commit ``step``: it is
    that commit or one of its ``previous`` ones; step 0 (nothing committed) only from a first commit,
    so that no rank ever drops steps it had committed before."""
    previous = record.get("previous") or []
    if step == 0:
        return not previous
    return any(isinstance(r, Mapping) and r.get("step") == step for r in [record, *previous])


def committed_step(facts):
    """The committed step of a run directory's facts: 0 with no checkpoint; None if unreadable."""
    ckpt = facts.checkpoint
    if not ckpt.present:
        return 0
    step = facts.record.get("step")
    if ckpt.error or not isinstance(step, int) or isinstance(step, bool):
        return None
    return step


def gate(host, facts, target):
    """A :class:`HostResult`: 'reached' only when every check passes; otherwise the reason."""
    figures = {"step": committed_step(facts), "target": target, "run_dir": facts.run_dir}
    ckpt = facts.checkpoint
    if not facts.exists:
        return HostResult(host, "no-run-dir", False, f"{facts.run_dir} does not exist", figures)
    if not ckpt.present:
        return HostResult(host, "no-checkpoint", False, f"no checkpoint.json in {facts.run_dir}", figures)
    if ckpt.error:
        return HostResult(host, "torn", False, f"checkpoint.json is torn or not JSON: {ckpt.error}", figures)
    step = committed_step(facts)
    if step is None:
        return HostResult(host, "torn", False, "checkpoint.json has no whole-number step", figures)
    if step != target:
        where = "below" if step < target else "past"
        return HostResult(host, "wrong-step", False, f"checkpoint.json is at step {step}, {where} "
                          f"the target {target}", figures)
    data = facts.record
    try:
        named = named_files(data)
    except CheckpointError as e:
        return HostResult(host, "bad-checkpoint", False, str(e), figures)
    problem = _file_problem(named, facts.files)
    if problem:
        return HostResult(host, "bad-adapter", False, problem, figures)
    figures.update(adapter_sha256=named[data["step_file"]][0][:12], train_loss=data.get("train_loss"),
                   val_loss=data.get("val_loss"))
    return HostResult(host, "reached", True, f"step {step} with {', '.join(sorted(named))} whole and "
                      "matching their size and sha256", figures)


def _file_problem(named, files):
    for name, (want, size) in sorted(named.items()):
        have = files.get(name)
        if have is None:
            return f"{name} named by checkpoint.json is missing"
        if not have.whole:
            return f"{name} is not a whole safetensors file: {have.reason}"
        if have.size != size:
            return f"{name} is {have.size} bytes, checkpoint.json says {size}"
        if have.sha256 != want:
            return f"{name} sha256 {have.sha256[:12]} does not match checkpoint.json's {want[:12]}"
    return None
