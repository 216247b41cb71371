"""``fab evaluate --on HOST``: the step committed in the host's own run directory, gated with the
lane's gate on the host's facts; the host decodes its own copy of the split with its own model
cache (``onhost/eval_host.py``, shipped over the Fabric session, its progress relayed as it comes);
the scoring, the verdict and the report are local's own (``run.py``), from the host's corrections.
The result is written beside the host's checkpoint.json, atomically, by the same bundle (kept in
the local reports folder when that fails). The window lock is held throughout: no window starts
under the evaluation."""
import io
import json
import os
import sys
from pathlib import PurePosixPath

from .. import layout, onhost
from ..fsutil import atomic_write, real_folder
from ..inventory import InventoryError
from ..mirror import MirrorBusy, locked
from ..remote import HostError, ask, run as remote_run
from ..window.lock import lock_dir, lock_holder_of, note
from ..window.writer import profile_hosts, run_query
from . import decode, host_answer, run
from .run import EvaluateError

SOURCE = onhost.eval_source()


class Chunks(io.StringIO):
    """Text for a command's stdin: Invoke reads an in_stream that is not a terminal one character
    per call, 10 ms apart (100 characters a second); this stream gives 64 KiB a call."""

    def read(self, size=-1):
        return super().read(64 * 1024)


class Relay:
    """A file-like taking the host's stderr: each whole line goes to ``out`` as ``host: line``, as
    it arrives (Invoke writes the remote stderr here while the command runs)."""

    def __init__(self, host, out):
        self.host, self.out, self.pending = host, out, ""

    def write(self, text):
        self.pending += text
        *whole, self.pending = self.pending.split("\n")
        for line in whole:
            if line.strip():
                self.out.write(f"{self.host}: {line}\n")
        self.out.flush()

    def flush(self):
        pass

    def close(self):
        if self.pending.strip():
            self.out.write(f"{self.host}: {self.pending}\n")
        self.pending = ""


def target_host(inv, profile, name):
    """The inventory's host ``name``: a remote one (local evaluates its mirror without --on), the
    profile's writer (rank 0: the only host with a checkpoint.json)."""
    try:
        host = inv.host(name)
    except InventoryError as e:
        raise EvaluateError(f"--on {name}: {e}") from None
    if host.is_local:
        raise EvaluateError(f"--on {name}: that is the control machine; fab evaluate without --on evaluates "
                            "the local mirror")
    writer = profile_hosts(inv, profile)[0]
    if writer.name != host.name:
        raise EvaluateError(f"--on {name}: {profile.name}'s writer is {writer.name} (only rank 0 writes the "
                            f"run's checkpoint.json): evaluate --on {writer.name}")
    return host


def host_target(host, profile, facts, step):
    """The host's committed step as a :class:`run.Target` (host paths), gated as local's is."""
    if facts.running:
        raise EvaluateError(f"{host.name}: a window is training in {facts.run_dir} (ranks "
                            f"{', '.join(map(str, facts.running))} alive); evaluate when it has ended")
    where = f"{host.name}:{facts.run_dir}"
    have, record = run.judge(facts, step, host.name, where,
                             empty=f"{where}: train a window first (fab train-window --profile {profile.name})",
                             kept="it is an earlier commit: --on evaluates the host's committed step only")
    folder = PurePosixPath(facts.run_dir)
    return run.Target(folder, have, record, folder / record["step_file"], folder / "adapter_config.json")


def spec(host, profile, t, split_file, limit, batch):
    """What the host's half needs: its run directory and the step's files with their sha256, its
    split, the model at the step's revision in its cache, and the generation and loss settings."""
    files, cfg = t.record["files"], profile.config
    return {"run_dir": str(t.mirror), "step_file": t.adapters.name, "step_sha256": files[t.adapters.name]["sha256"],
            "config_sha256": files["adapter_config.json"]["sha256"], "split": str(split_file), "limit": limit,
            "batch": batch, "model": cfg["model"], "revision": (t.record.get("model") or {}).get("revision"),
            "hf_cache": host.hf_cache, "batch_size": cfg["batch_size"], "max_seq_length": cfg["max_seq_length"],
            "mask_prompt": cfg.get("mask_prompt", False)}


def _on(inv, host, argv, timeout, **streams):
    """The bundle run on ``host``: (exit code, stdout, stderr); a host that cannot be asked is an
    :class:`EvaluateError` naming it (a :class:`HostError` from ``save``, to keep the result)."""
    try:
        return remote_run(inv, host, [host.python, "-c", SOURCE, *argv], timeout=timeout, **streams)
    except HostError as e:
        if argv[0] == "save":
            raise
        raise decode_failure(e, timeout) from None


def decode_failure(e, timeout):
    """The :class:`EvaluateError` of a decode the host could not finish (:class:`HostError` ``e``):
    past its timeout, progress lines may well have flowed: the host was busy, not gone."""
    if e.kind == "timeout":
        return EvaluateError(f"{e.host}: decoding did not finish within ssh.deep_probe_timeout ({timeout}s): "
                             "use --limit, or raise ssh.deep_probe_timeout in the inventory")
    return EvaluateError(f"{e.host} {e.kind}: {e.message}")


def keep_locally(inv, profile, host, dest, result, why):
    """The host could not save ``result`` at ``dest``: write it (atomically) in the local reports
    folder of the run; set its ``saved`` and ``warning`` (naming the host, ``dest``, why, and the
    local path)."""
    folder = layout.local(inv).reports(profile.run_name)
    path = folder / PurePosixPath(dest).name
    result["saved"] = str(path)
    try:
        real_folder(folder, layout.local(inv).root)
        atomic_write(path, json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    except OSError as e:
        result["saved"] = None
        result["warning"] = f"{host.name}: could not write {dest} ({why}); nor {path} here: {e}"
        return result
    result["warning"] = f"{host.name}: could not write {dest} ({why}); the result is kept at {path}"
    return result


def evaluate_on(inv, profile, name, step=None, split="test", limit=0, batch=decode.BATCH, out=sys.stderr):
    """Evaluate the committed step of ``profile``'s run on host ``name``; return the data (as
    :func:`run.evaluate` does), also saved beside the host's checkpoint.json. Decoding may take
    as long as the inventory's ``ssh.deep_probe_timeout``."""
    host = target_host(inv, profile, name)
    try:  # the window lock, as fab train-window takes it: no window commits and prunes under this
        with locked([lock_dir(inv, profile)], note("evaluate", os.getpid(), host.name)):
            return _evaluate_on(inv, profile, host, step, split, limit, batch, out)
    except MirrorBusy:
        holder = lock_holder_of(inv, profile)[2]
        who = f"{holder.words()} holds the window lock" if holder else f"a window of {profile.run_name} is running"
        raise EvaluateError(f"{who} ({lock_dir(inv, profile)}); evaluate on {name} when it has ended") from None


def _evaluate_on(inv, profile, host, step, split, limit, batch, out):
    try:
        facts = ask(inv, host, run_query(host, profile))[0]
    except HostError as e:
        raise EvaluateError(f"{e.host} {e.kind}: {e.message}") from None
    t = host_target(host, profile, facts, step)
    job = spec(host, profile, t, run.split_path(inv, profile, split, host), limit, batch)
    relay = Relay(host.name, out)
    try:
        code, stdout, stderr = _on(inv, host, ["decode", json.dumps(job)], inv.ssh.deep_probe_timeout, relay=relay)
    finally:
        relay.close()
    answer = host_answer.parse(host.name, code, stdout, stderr)
    scores = run.scores_of(answer.split, answer.corrections)
    result = run.report(profile, t, answer.split, scores, answer.test_loss,
                        {"seconds": answer.seconds, "batch": batch, "peak_rss_mb": answer.peak_rss_mb}, on=host.name)
    result["command"] = run.reproduce(inv, profile, t.step, split, limit, on=host.name)
    dest = str(t.mirror / run.eval_file(t.step, split, limit))
    result["saved"] = f"{host.name}:{dest}"
    try:
        code, stdout, stderr = _on(inv, host, ["save", dest], None, stdin=Chunks(json.dumps(result) + "\n"))
        host_answer.saved(host.name, code, stdout, stderr)
    except HostError as e:
        return keep_locally(inv, profile, host, dest, result, f"{e.kind}: {e.message}")
    except EvaluateError as e:
        return keep_locally(inv, profile, host, dest, result, str(e).removeprefix(f"{host.name}: "))
    return result
