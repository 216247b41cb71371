"""The success gate: ``checkpoint.json`` on the writer host names the target step, and the adapter
files it names exist, are whole safetensors and match their recorded sha256. Logs prove nothing."""
from .report import HostResult

NAMED = (("adapter_file", "adapter_sha256"), ("step_file", "step_file_sha256"),
         ("state_file", "state_sha256"))


def committed_step(facts):
    """The committed step of a run directory's facts: 0 with no checkpoint; None if unreadable."""
    ckpt = facts.get("checkpoint")
    if not ckpt or not ckpt.get("present"):
        return 0
    data = ckpt.get("data")
    if ckpt.get("error") or not isinstance(data, dict) or not isinstance(data.get("step"), int):
        return None
    return data["step"]


def gate(host, facts, target):
    """A :class:`HostResult`: 'reached' only when every check passes; otherwise the reason."""
    figures = {"step": committed_step(facts), "target": target, "run_dir": facts.get("run_dir")}
    ckpt = facts.get("checkpoint")
    if not facts.get("exists"):
        return HostResult(host, "no-run-dir", False, f"{facts.get('run_dir')} does not exist", figures)
    if not ckpt or not ckpt.get("present"):
        return HostResult(host, "no-checkpoint", False, f"no checkpoint.json in {facts['run_dir']}", figures)
    if ckpt.get("error"):
        return HostResult(host, "torn", False, f"checkpoint.json is torn or not JSON: {ckpt['error']}", figures)
    data = ckpt["data"]
    step = committed_step(facts)
    if step is None:
        return HostResult(host, "torn", False, "checkpoint.json has no whole-number step", figures)
    if step != target:
        where = "below" if step < target else "past"
        return HostResult(host, "wrong-step", False, f"checkpoint.json is at step {step}, {where} "
                          f"the target {target}", figures)
    problem = _file_problem(data, facts["files"])
    if problem:
        return HostResult(host, "bad-adapter", False, problem, figures)
    figures.update(adapter_sha256=data["adapter_sha256"][:12], train_loss=data.get("train_loss"),
                   val_loss=data.get("val_loss"))
    return HostResult(host, "reached", True, f"step {step} with {data['adapter_file']} and "
                      f"{data['step_file']} whole and matching their sha256", figures)


def _file_problem(data, files):
    for name_key, hash_key in NAMED:
        name, want = data.get(name_key), data.get(hash_key)
        if not name or not want:
            return f"checkpoint.json does not name {name_key} and {hash_key}"
        have = files.get(name)
        if have is None:
            return f"{name} named by checkpoint.json is missing"
        if not have.get("whole", True):
            return f"{name} is not a whole safetensors file: {have.get('reason')}"
        if have["sha256"] != want:
            return f"{name} sha256 {have['sha256'][:12]} does not match checkpoint.json's {want[:12]}"
    return None
