"""The lean probe: verify-cache's and verify-dataset's commands run a smaller bundle under
``python -S`` (no site), and answer exactly as the whole probe at a normal start does."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from thunderlane import onhost, remote
from thunderlane.onhost import files
from tests.unit.builders import REPO, build_repo, model_files
from tests.unit.test_peers import new_key


def _run(argv, python=sys.executable, home=None):
    """``argv`` with ``python``; HOME (where the lean probe keeps its copy) a test folder."""
    env = {k: v for k, v in os.environ.items() if k != "HOME"}
    env["HOME"] = str(home or os.environ["THUNDER_TEST_HOME"])
    return subprocess.run([python, *argv[1:]], capture_output=True, text=True, env=env)


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("THUNDER_TEST_HOME", str(tmp_path / "home"))


def test_lean_commands_run_the_lean_bundle_without_site():
    lean = ["py", "-S", "-c", onhost.PROBE_LEAN_LOADER]
    assert remote.probe_argv("py", ["cache", REPO, "/h"])[:4] == lean
    assert remote.probe_argv("py", ["dataset", "/d", "--sums"])[:4] == lean
    multi = ["multi", json.dumps([["cache", REPO, "-"], ["versions", "mlx"]])]
    assert remote.probe_argv("py", multi) == [*lean, *multi]
    whole = ["py", "-c", remote.PROBE_SOURCE]
    assert remote.probe_argv("py", ["lane", "/r", "run"])[:3] == whole
    assert remote.probe_argv("py", ["multi", json.dumps([["cache", REPO, "-"], ["macos", "-"]])])[:3] == whole
    assert remote.probe_argv("py", ["multi", "not json"])[:3] == whole
    assert remote.probe_argv("py", ["multi", json.dumps([["cache", REPO, "-"], ["peer"]])])[:4] == lean
    lean_source = onhost.probe_source(lean=True)
    assert "def links_facts" not in lean_source and "def macos_command" not in lean_source
    assert len(lean_source) < 0.9 * len(remote.PROBE_SOURCE)


def test_lean_probe_answers_as_the_whole_one(tmp_path):
    build_repo(tmp_path / "hub", model_files())
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text('{"text": "a"}\n')
    private, pub = new_key()   # the peer key installed in the test home: its public half is read
    key = Path(os.environ["THUNDER_TEST_HOME"]) / ".thunderlane" / "peer" / "id_ed25519"
    key.parent.mkdir(parents=True)
    key.write_text(private)
    key.chmod(0o600)
    queries = [["cache", REPO, str(tmp_path / "hub")], ["versions", "mlx", "paramiko", "no-such-dist"],
               ["dataset", str(tmp_path / "data"), "--sums"], ["peer"]]
    args = ["multi", json.dumps(queries)]
    lean, whole = _run(remote.probe_argv("py", args)), _run(["py", "-c", remote.PROBE_SOURCE, *args])
    assert lean.returncode == whole.returncode == 0, lean.stderr + whole.stderr
    got, want = json.loads(lean.stdout), json.loads(whole.stdout)
    for answer in (got, want):
        for lock in answer["results"][0]["locks"]:
            lock.pop("age_s")  # seconds apart
    assert got == want and got["results"][3]["key_public"] == pub and got["results"][3]["key_mode"] == 0o600
    assert got["results"][1]["paramiko"] and got["results"][1]["venv"] == want["results"][1]["venv"]


def test_the_lean_bundle_refuses_what_it_does_not_carry():
    for args in (["rdma"], ["macos", "-"], ["links", "{}"]):
        r = _run(["py", "-S", "-c", onhost.probe_loader(onhost.probe_source(lean=True)), *args])
        assert r.returncode == 2 and "usage" in r.stderr, (args, r.stderr)


def _venv(tmp_path):
    """A venv (no pip) with dists ``foo``, mlx and mlx-lm in its site-packages and ``bar`` in a folder a .pth adds;
    the .pth says on stderr when it runs."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python*/site-packages"))
    dists = ((site, "foo", "1.0"), (site, "mlx", "0.1"), (site, "mlx_lm", "0.2"), (tmp_path / "extra", "bar", "2.0"))
    for folder, name, version in dists:  # versions always asks for mlx and mlx-lm
        meta = folder / f"{name}-{version}.dist-info"
        meta.mkdir(parents=True)
        (meta / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (site / "extra.pth").write_text(f"{tmp_path / 'extra'}\nimport sys; sys.stderr.write('pth ran')\n")
    return str(venv / "bin" / "python")


def test_versions_without_site_read_the_venv_and_fall_back_to_site_for_the_rest(tmp_path):
    """Under -S the venv's own site-packages settles ``foo`` without running the .pth files (the
    point of -S); ``bar``, in a folder only a .pth adds, is still found (site.main() then runs),
    and every answer equals a normal start's."""
    python = _venv(tmp_path)
    for dists, pth_runs in ((["foo"], False), (["foo", "bar"], True)):
        lean = _run(remote.probe_argv("py", ["versions", *dists]), python)
        whole = _run(["py", "-c", onhost.probe_source(), "versions", *dists], python)
        assert lean.returncode == 0, lean.stderr
        assert json.loads(lean.stdout) == json.loads(whole.stdout)
        assert ("pth ran" in lean.stderr) is pth_runs
        assert json.loads(lean.stdout)["venv"] is True
    assert json.loads(lean.stdout)["bar"] == "2.0" and json.loads(lean.stdout)["foo"] == "1.0"


VALUES = [{"b": 1, "a": [1.5, -0.0, 1e300, True, False, None], "é": "ü\n\"\\\u2028", "n": {"2": {}, "1": []}},
          {"nan": float("nan"), "inf": float("-inf"), "big": 2**70}, {3: "int keys", 1: 2}, {}, []]


def test_the_probes_json_is_jsons_own():
    """json_dumps/json_loads (the C codec, json never imported) give json.dumps(sort_keys=True)'s
    text and json.loads's values, and json's own errors for what is not JSON."""
    for value in VALUES:
        text = json.dumps(value, sort_keys=True)
        assert files.json_dumps(value) == text
        assert repr(files.json_loads(f" \n{text}\t\r ")) == repr(json.loads(text))
    for bad in ("", "{", '{"a": 1} x', "[1,]", '"\\x"', "\ufeff{}", "NaNx"):
        with pytest.raises(ValueError) as want:
            json.loads(bad)
        with pytest.raises(ValueError) as got:
            files.json_loads(bad)
        assert str(got.value) == str(want.value)
    with pytest.raises(TypeError, match="not JSON serializable"):
        files.json_dumps({"a": object()})


def test_the_lean_probe_imports_neither_re_nor_json(tmp_path):
    build_repo(tmp_path / "hub", model_files())
    args = ["multi", json.dumps([["cache", REPO, str(tmp_path / "hub")], ["versions", "paramiko"], ["peer"]])]
    argv = remote.probe_argv(sys.executable, args)
    r = subprocess.run([argv[0], "-X", "importtime", *argv[1:]], capture_output=True, text=True)
    assert r.returncode == 0 and json.loads(r.stdout)["results"][0]["shards"]
    imported = {line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines()}
    assert imported.isdisjoint({"re", "json", "hashlib", "struct", "socket", "subprocess", "threading"}), imported


def _copy(home):
    return home / ".cache" / "thunderlane" / f"thunderlane_probe_{onhost.PROBE_LEAN_LOADER.split('thunderlane_probe_')[1][:16]}.py"


def test_the_lean_probe_keeps_a_compiled_copy_of_itself(tmp_path):
    """The first run keeps the source whole on the host, the next ones load it compiled; a damaged
    copy is replaced; a home where nothing can be written still gets its answer."""
    build_repo(tmp_path / "hub", model_files())
    args = ["cache", REPO, str(tmp_path / "hub")]
    want = json.loads(_run(["py", "-c", remote.PROBE_SOURCE, *args]).stdout)["files"]
    home = tmp_path / "home"
    for _ in range(3):
        r = _run(remote.probe_argv("py", args))
        assert r.returncode == 0 and json.loads(r.stdout)["files"] == want, r.stderr
    copy = _copy(home)
    assert copy.read_text() == onhost.probe_copy(onhost.probe_source(lean=True))
    assert list(copy.parent.glob("__pycache__/thunderlane_probe_*.pyc"))
    assert sorted(p.name for p in copy.parent.iterdir()) == ["__pycache__", copy.name]  # no temp left
    copy.write_text("def broken(:\n")
    r = _run(remote.probe_argv("py", args))
    assert r.returncode == 0 and json.loads(r.stdout)["files"] == want, r.stderr
    assert copy.read_text() == onhost.probe_copy(onhost.probe_source(lean=True))
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro" / ".cache").write_text("a file where the cache folder would go")
    r = _run(remote.probe_argv("py", args), home=tmp_path / "ro")
    assert r.returncode == 0 and json.loads(r.stdout)["files"] == want, r.stderr


def _lean(args, home):
    """The lean probe's run with ``-v`` (the interpreter says where it loads code from)."""
    argv = remote.probe_argv("py", args)
    return _run(["py", "-v", *argv[1:]], home=home)


def _loaded_compiled(r):
    return any("code object from" in line and "__pycache__" in line and "thunderlane_probe_" in line
               for line in r.stderr.splitlines())


def test_a_copy_that_imports_but_was_cut_short_is_written_anew(tmp_path):
    """An empty copy, or one cut between two statements (a rename before the data reached the
    disk), imports without error but has no marker: it is rewritten, and the next run loads it
    compiled from __pycache__ (the run after the one that compiles it)."""
    build_repo(tmp_path / "hub", model_files())
    args = ["cache", REPO, str(tmp_path / "hub")]
    home = tmp_path / "home"
    assert _run(remote.probe_argv("py", args), home=home).returncode == 0
    copy, whole = _copy(home), onhost.probe_copy(onhost.probe_source(lean=True))
    for damaged in ("", whole[:whole.index("\ndef main(")], whole[:whole.index("\n_PROBE_COMPLETE")]):
        copy.write_text(damaged)
        r = _lean(args, home)
        assert r.returncode == 0 and json.loads(r.stdout)["files"], r.stderr[-2000:]
        assert copy.read_text() == whole
        for _ in range(2):  # the first loads the copy and compiles it, the second its .pyc
            r = _lean(args, home)
        assert r.returncode == 0 and _loaded_compiled(r), r.stderr[-2000:]


POISON = 'import sys\n\ndef main(argv):\n    sys.stdout.write("poisoned")\n    return 0\n\n_PROBE_COMPLETE = {name!r}\n'


def _plant(tmp_path, how):
    """A home whose kept copy answers "poisoned" if loaded, made unsafe by ``how``; the copy's path."""
    home = tmp_path / how
    folder = home / ".cache" / "thunderlane"
    elsewhere = tmp_path / f"{how}-elsewhere"
    elsewhere.mkdir(mode=0o700)
    folder.parent.mkdir(parents=True)
    if how == "folder-symlink":
        folder.symlink_to(elsewhere)
    else:
        folder.mkdir(mode=0o700)
    copy = _copy(home)
    poison = POISON.format(name=copy.stem)
    if how == "file-symlink":
        (elsewhere / copy.name).write_text(poison)
        copy.symlink_to(elsewhere / copy.name)
    else:
        copy.write_text(poison)
    os.chmod(copy, 0o600)
    if how == "file-group-writable":
        os.chmod(copy, 0o620)
    if how == "folder-world-writable":
        os.chmod(folder, 0o703)
    if how == "file-not-ours":
        os.chown(copy, os.getuid() + 1, -1)
    return home, copy


@pytest.mark.parametrize("how,rewritten", [
    ("file-group-writable", True), ("file-symlink", True), ("file-not-ours", True),
    ("folder-world-writable", False), ("folder-symlink", False)])
def test_a_copy_not_safely_ours_is_never_loaded(tmp_path, how, rewritten):
    """A copy someone else could have written (a symlink, another owner, group- or world-writable
    file or folder) is not loaded: SOURCE answers; the copy is rewritten only in a safe folder."""
    if how == "file-not-ours" and os.getuid() != 0:
        pytest.skip("chown to another user needs root")
    build_repo(tmp_path / "hub", model_files())
    args = ["cache", REPO, str(tmp_path / "hub")]
    home, copy = _plant(tmp_path, how)
    r = _run(remote.probe_argv("py", args), home=home)
    assert r.returncode == 0 and "poisoned" not in r.stdout and json.loads(r.stdout)["files"], r.stdout + r.stderr
    st = os.lstat(copy)
    if rewritten:
        assert copy.read_text() == onhost.probe_copy(onhost.probe_source(lean=True))
        assert not copy.is_symlink() and st.st_uid == os.getuid() and not st.st_mode & 0o022
    else:
        assert "poisoned" in copy.read_text()


def test_the_copys_folder_never_shadows_a_stdlib_module(tmp_path):
    """The copy is loaded by its path: an fcntl.py beside it is not imported in the stdlib's place."""
    build_repo(tmp_path / "hub", model_files())
    args = ["cache", REPO, str(tmp_path / "hub")]
    home = tmp_path / "home"
    for _ in range(2):  # kept, then compiled
        assert _run(remote.probe_argv("py", args), home=home).returncode == 0
    (_copy(home).parent / "fcntl.py").write_text('raise SystemExit("shadowed")\n')
    r = _lean(args, home)
    assert r.returncode == 0 and "shadowed" not in r.stderr and _loaded_compiled(r), r.stderr[-2000:]
    assert json.loads(r.stdout)["files"]
