"""fab evaluate --on HOST's control side around the host's answer: the window lock held for the
whole run, only the writer evaluated, a decode timeout said as one, and a result the host could not
save kept in the local reports folder (never lost)."""
import json
import os
from types import SimpleNamespace

import pytest

from thunderlane.evaluate import on_host
from thunderlane.evaluate.run import EvaluateError
from thunderlane.fsutil import lock_holder, take_lock
from thunderlane.remote import HostError

PROFILE = SimpleNamespace(name="eval_run", run_name="test_eval_run", hosts=["mac4", "mac5"])


def inventory(root):
    hosts = {n: SimpleNamespace(name=n, is_local=False) for n in PROFILE.hosts}
    hosts["local"] = SimpleNamespace(name="local", is_local=True)
    return SimpleNamespace(host=lambda n: hosts[n], local=SimpleNamespace(runs_root=str(root)))


def test_evaluate_on_holds_the_window_lock_for_the_whole_run(tmp_path, monkeypatch):
    inv = inventory(tmp_path)
    lock = tmp_path / ".locks" / "test_eval_run.lock"
    seen = []

    def evaluate(*_):  # while the host decodes: a train-window taking the lock is refused
        seen.append((lock_holder(lock), take_lock(lock, os.getppid())))
        raise EvaluateError("mac4: the host failed")
    monkeypatch.setattr(on_host, "_evaluate_on", evaluate)
    with pytest.raises(EvaluateError, match="the host failed"):
        on_host.evaluate_on(inv, PROFILE, "mac4")
    assert seen == [(("held", os.getpid()), ("held", os.getpid()))]
    assert lock_holder(lock) == (None, None)  # released on the way out
    assert take_lock(lock, os.getppid())[0] == "taken"  # a window holds it: --on is refused
    with pytest.raises(EvaluateError, match=f"a window of test_eval_run is running .*{lock}.*evaluate on mac4"):
        on_host.evaluate_on(inv, PROFILE, "mac4")
    assert len(seen) == 1 and lock_holder(lock) == ("held", os.getppid())  # the window's lock untouched


def test_evaluate_on_a_host_that_is_not_the_writer_names_the_writer(tmp_path):
    with pytest.raises(EvaluateError, match="^--on mac5: eval_run's writer is mac4 .*only rank 0.*--on mac4"):
        on_host.target_host(inventory(tmp_path), PROFILE, "mac5")
    with pytest.raises(EvaluateError, match="^--on local: that is the control machine"):
        on_host.target_host(inventory(tmp_path), PROFILE, "local")
    assert on_host.target_host(inventory(tmp_path), PROFILE, "mac4").name == "mac4"


def test_a_decode_past_its_timeout_says_so_not_that_the_host_stopped_answering():
    e = on_host.decode_failure(HostError("mac4", "timeout", "python gave no answer within 900s (the host stopped "
                                                           "answering: asleep, or a disk hung?)"), 900)
    assert str(e) == ("mac4: decoding did not finish within ssh.deep_probe_timeout (900s): use --limit, or raise "
                      "ssh.deep_probe_timeout in the inventory")
    assert str(on_host.decode_failure(HostError("mac4", "unreachable", "no answer"), 900)) == "mac4 unreachable: no answer"


def test_a_result_the_host_could_not_save_is_kept_locally_and_said(tmp_path):
    inv, host = inventory(tmp_path), SimpleNamespace(name="mac4")
    dest = "/h/runs/test_eval_run/eval_step5_test.json"
    result = {"step": 5, "saved": f"mac4:{dest}"}
    on_host.keep_locally(inv, PROFILE, host, dest, result, "Permission denied")
    kept = tmp_path / ".reports" / "test_eval_run" / "eval_step5_test.json"
    assert result["saved"] == str(kept) and json.loads(kept.read_text())["step"] == 5
    assert result["warning"] == f"mac4: could not write {dest} (Permission denied); the result is kept at {kept}"
    assert [p.name for p in kept.parent.iterdir()] == [kept.name]  # no temporary file left
    other = tmp_path / "other"
    other.mkdir()
    os.symlink(other, tmp_path / ".reports" / "test_eval_run2")  # never written through a link
    result = {"step": 5}
    on_host.keep_locally(inv, SimpleNamespace(run_name="test_eval_run2"), host, dest, result, "link down")
    assert result["saved"] is None and "nor " in result["warning"] and "link down" in result["warning"]
    assert not list(other.iterdir())
