"""The success gate: ``checkpoint.json`` on the writer host names the target step, and the adapter
files it names exist, are whole safetensors and match their recorded sha256. Logs prove nothing.
Everything here reads a host's ``facts.RunFacts``."""
from .report import HostResult

NAMED = (("adapter_file", "adapter_sha256"), ("step_file", "step_file_sha256"),
         ("state_file", "state_sha256"))


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
    problem = _file_problem(data, facts.files)
    if problem:
        return HostResult(host, "bad-adapter", False, problem, figures)
    figures.update(adapter_sha256=data["adapter_sha256"][:12], train_loss=data.get("train_loss"),
                   val_loss=data.get("val_loss"))
    return HostResult(host, "reached", True, f"step {step} with {data['adapter_file']} and "
                      f"{data['step_file']} whole and matching their sha256", figures)


def _file_problem(data, files):
    for name_key, hash_key in NAMED:
        name, want = data.get(name_key), data.get(hash_key)
        if not isinstance(name, str) or not isinstance(want, str) or not name or not want:
            return f"checkpoint.json does not name {name_key} and {hash_key}"
        have = files.get(name)
        if have is None:
            return f"{name} named by checkpoint.json is missing"
        if not have.whole:
            return f"{name} is not a whole safetensors file: {have.reason}"
        if have.sha256 != want:
            return f"{name} sha256 {have.sha256[:12]} does not match checkpoint.json's {want[:12]}"
    return None
