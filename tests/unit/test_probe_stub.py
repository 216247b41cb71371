"""The probe's stub (onhost.PROBE_LEAN_STUB): verify-cache's and verify-dataset's probe is sent as
the loader alone (a tenth of the bytes), which runs the compiled copy a host keeps; only a host
with no usable copy is sent the source, by the same session. Asked of the local host, whose probe
is a real subprocess with HOME in a test folder."""
import dataclasses
import sys

from thunderlane import facts, onhost, remote

from .test_remote import make_inv


def sent(monkeypatch):
    """The -c programs of every probe process started from now on, in order."""
    programs, capture = [], remote.capture

    def spy(argv, *args, **kwargs):
        programs.append(argv[argv.index("-c") + 1])
        return capture(argv, *args, **kwargs)
    monkeypatch.setattr(remote, "capture", spy)
    return programs


def test_the_source_goes_only_to_a_host_without_a_usable_copy(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    inv = make_inv(tmp_path)
    host = dataclasses.replace(inv.local, python=sys.executable)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text('{"text": "a"}\n')
    query = facts.dataset(str(tmp_path / "data"), rows=False)
    programs = sent(monkeypatch)
    stub, whole = onhost.PROBE_LEAN_STUB, onhost.PROBE_LEAN_LOADER
    assert remote.ask(inv, host, query)[0].files["train.jsonl"].lines == 1
    assert programs == [stub, whole]  # the first run: no copy yet, the source follows
    assert remote.ask(inv, host, query)[0].files["train.jsonl"].lines == 1
    assert programs == [stub, whole, stub]  # the kept copy answered
    copy = next((tmp_path / "home" / ".cache" / "thunderlane").glob("thunderlane_probe_*.py"))
    copy.write_text("def broken(:\n")
    assert remote.ask(inv, host, query)[0].files["train.jsonl"].lines == 1
    assert programs == [stub, whole, stub, stub, whole] and "_PROBE_COMPLETE" in copy.read_text()


def test_the_stub_is_small_and_carries_no_source():
    assert len(onhost.PROBE_LEAN_STUB) < 0.15 * len(onhost.PROBE_LEAN_LOADER)
    assert "def cache_facts" not in onhost.PROBE_LEAN_STUB
    assert onhost.probe_command("py", ["cache", "org/name", "-"], stub=True)[3] == onhost.PROBE_LEAN_STUB
    assert onhost.probe_command("py", ["lane", "/r", "run"], stub=True)[2] == remote.PROBE_SOURCE  # no stub


def test_only_the_stubs_own_words_and_code_ask_for_the_source():
    assert onhost.asks_for_source(onhost.NO_COPY_EXIT, f"warning\n{onhost.NO_COPY}\n")
    assert not onhost.asks_for_source(onhost.NO_COPY_EXIT, "some other failure\n")
    assert not onhost.asks_for_source(1, onhost.NO_COPY)


def test_the_kept_copy_loads_without_the_importlib_package(tmp_path):
    """The stub loads the copy through the import system's own classes: importing the importlib
    package would cost a third of the interpreter's start on every probe."""
    import json
    import os
    import subprocess
    env = {"HOME": str(tmp_path), "PATH": os.environ["PATH"]}
    args = ["dataset", str(tmp_path / "none"), "--sums"]
    subprocess.run(onhost.probe_command(sys.executable, args), env=env, check=True, capture_output=True)
    argv = onhost.probe_command(sys.executable, args, stub=True)
    p = subprocess.run([argv[0], "-X", "importtime", *argv[1:]], env=env, capture_output=True, text=True)
    assert p.returncode == 0 and json.loads(p.stdout)["exists"] is False, p.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in p.stderr.splitlines()}
    assert "importlib" not in imported and "importlib.machinery" not in imported, sorted(imported)


def test_the_kept_copy_ends_without_teardown_yet_says_all(tmp_path):
    """The stub's run of the kept copy exits at once (os._exit, no interpreter teardown) after
    flushing: the whole answer arrives (a short one sits in the stream's buffer until then), and
    main's exit code is the process's."""
    import json
    import os
    import subprocess
    env = {"HOME": str(tmp_path), "PATH": os.environ["PATH"]}
    subprocess.run(onhost.probe_command(sys.executable, ["versions"]), env=env, check=True, capture_output=True)  # keeps the copy
    for names in (["no-such-distribution"], [f"no-such-distribution-{i:05d}" for i in range(2000)]):  # 40 B, 70 KB
        p = subprocess.run(onhost.probe_command(sys.executable, ["versions", *names], stub=True), env=env,
                           capture_output=True, text=True)
        assert p.returncode == 0 and all(json.loads(p.stdout)[n] is None for n in names), p.stderr[-2000:]
    bad = subprocess.run(onhost.probe_command(sys.executable, ["versions"], stub=True)[:4] + ["nonsense"],
                         env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("usage: probe.py") and bad.stdout == "", bad.stderr
