"""What keeps sync-cache's fixed cost small: the local fast cache scan runs in fab's own process when
local's interpreter is fab's (and answers exactly what the probe process would), a host proven complete gets no launcher, and fab
loads only the modules of the task it runs."""
import json
import subprocess
import sys
from pathlib import Path

from tests.unit.builders import REPO, build_repo, model_files
from thunderlane import inventory, mux, remote
from thunderlane.report import HostResult
from thunderlane.sync import nothing_missing
from thunderlane.facts import CacheFacts

ROOT = Path(__file__).resolve().parents[2]


def local_host(tmp_path, python=sys.executable):
    host = {"ssh_name": "mac4", "hostname": "127.0.0.4", "user": "me", "port": 22, "data_ip": "10.0.0.4",
            "python": sys.executable, "dataset_root": "/d", "runs_root": "/r"}
    return inventory.parse({"ssh": {"known_hosts": "/k"}, "hosts": {"mac4": host},
                            "local": {"dataset_root": "/d", "runs_root": "/r", "hf_cache": str(tmp_path / "hub"),
                                      "python": python}}, "inv.yaml")


def test_only_a_local_fast_scan_of_a_named_cache_root_runs_in_process(tmp_path):
    inv = local_host(tmp_path)
    local, mac4 = inv.local, inv.host("mac4")
    assert remote.in_process(local, ("cache", REPO, "/c"))
    assert not remote.in_process(mac4, ("cache", REPO, "/c"))                 # a host's own interpreter
    assert not remote.in_process(local, ("cache", REPO, "-"))                 # the interpreter's lookup
    assert not remote.in_process(local, ("cache", REPO, "/c", "--deep"))      # reads every byte: timed
    assert not remote.in_process(local, ("versions", "mlx"))
    other = local_host(tmp_path, python="/opt/other-venv/bin/python").local   # not fab's own interpreter
    assert not remote.in_process(other, ("cache", REPO, "/c"))


def test_the_in_process_scan_answers_what_the_probe_process_answers(tmp_path):
    inv = local_host(tmp_path)
    build_repo(tmp_path / "hub", model_files())
    (tmp_path / "hub" / "models--mlx-community--gemma-4-e2b-4bit" / "blobs" / ("b" * 64 + ".incomplete")).write_bytes(b"x")
    args = ["cache", REPO, str(tmp_path / "hub")]
    here = remote.run_probe(inv, inv.local, args)
    code, out, _ = remote.capture([sys.executable, "-c", remote.PROBE_SOURCE, *args])
    there = json.loads(out)
    there.pop("python")
    assert code == 0 and here == there and here["files"] and here["incomplete"]


def test_an_in_process_scan_that_fails_is_locals_error(tmp_path):
    inv = local_host(tmp_path)
    try:
        remote.run_probe(inv, inv.local, ["cache", REPO, f"{tmp_path}/a\0b"])  # os.* raise ValueError
    except remote.HostError as e:
        assert e.host == "local" and e.kind == "error" and "probe failed" in e.message
    else:
        raise AssertionError("a scan that raised was taken as an answer")


def facts(incomplete=()):
    return CacheFacts.from_json({"cache_root": "/c", "repo_dir": "/c/r", "exists": True, "ref": "a" * 40,
                                 "snapshot_exists": True, "revisions": ["a" * 40], "files": {}, "blobs": {},
                                 "incomplete": list(incomplete), "locks": [], "shards": {}, "index_error": None})


def test_nothing_missing_needs_a_complete_host_without_leftovers():
    complete = HostResult("mac4", "complete", True, "")
    orphan = {"name": "c" * 64 + ".incomplete", "size": 1, "blob": "c" * 64, "finished": True}
    assert nothing_missing(complete, facts())
    assert not nothing_missing(complete, facts([orphan]))  # the launcher removes it
    assert not nothing_missing(HostResult("mac4", "partial", False, ""), facts())


def test_fab_loads_only_what_a_task_runs():
    """`fab --list` (fab's start: the fabfile loaded, Invoke's scan of it for tasks) leaves the
    training, mirror and lab code unloaded; the lab's default layout its --help names is the lab's."""
    code = ("import atexit, sys\n"
            "def report():\n"
            "    heavy = [m for m in ('thunderlane.window.preflight', 'thunderlane.mirrorfs', 'thunderlane.lab.hub',"
            " 'thunderlane.handoff') if m in sys.modules]\n"
            "    import fabfile\n"
            "    from thunderlane import lab\n"
            "    print(heavy, fabfile.LAB_DEFAULT_LAYOUT == lab.DEFAULT_LAYOUT)\n"
            "atexit.register(report)\n"
            "sys.argv = ['fab', '--list']\n"
            "from fabric.main import program\n"
            "program.run()\n")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 0 and "sync-cache" in p.stdout, p.stderr
    assert p.stdout.strip().splitlines()[-1] == "[] True", p.stdout


def mux_inventory(runs_root, path="inv.yaml", port=22):
    host = {"ssh_name": "mac4", "hostname": "127.0.0.4", "user": "me", "port": port, "data_ip": "10.0.0.4",
            "python": "/v/bin/python", "dataset_root": "/d", "runs_root": "/r"}
    return inventory.parse({"ssh": {"known_hosts": "/k"}, "hosts": {"mac4": host},
                            "local": {"dataset_root": "/d", "runs_root": runs_root, "python": "/v/bin/python"}}, path)


def test_the_shared_ssh_connection_has_a_socket_of_its_own_per_inventory_host_and_run():
    inv = mux_inventory("/r")
    path = mux.control_path(inv, inv.host("mac4"), pid=123)
    assert path.startswith("/r/.ssh-mux/") and path.endswith(".123"), path
    assert path != mux.control_path(mux_inventory("/r", path="other.yaml"), inv.host("mac4"), pid=123)
    other_port = mux_inventory("/r", port=2222)
    assert path != mux.control_path(other_port, other_port.host("mac4"), pid=123)
    assert path != mux.control_path(inv, inv.host("mac4"), pid=124)
    # no socket where macOS could not make one (104 bytes), nor where the launcher's --ssh would split
    long = mux_inventory("/" + "r" * 80)
    assert mux.control_path(long, long.host("mac4")) is None
    spaced = mux_inventory("/runs root")
    assert mux.control_path(spaced, spaced.host("mac4")) is None


def test_the_launcher_sessions_options_go_first_and_name_the_master():
    opts = mux.client_options("/r/.ssh-mux/abc.1")
    assert opts == ["-o", "ControlPath=/r/.ssh-mux/abc.1", "-o", "ControlMaster=auto"]
    argv = mux.master_argv(mux_inventory("/r"), mux_inventory("/r").host("mac4"), "/r/.ssh-mux/abc.1")
    assert argv[0] == "ssh" and "StrictHostKeyChecking=yes" in argv and "ControlMaster=yes" in argv, argv
    assert f"ControlPersist={mux.PERSIST}" in argv and argv[-2:] == ["-N", "me@127.0.0.4"], argv


def test_fab_exits_without_collecting_the_objects_its_imports_made():
    code = "import atexit, gc, fabfile; atexit._run_exitfuncs(); print(gc.get_freeze_count())"
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert int(p.stdout) > 10000, p.stdout  # Fabric, Invoke, paramiko and the lane's own: frozen, not collected
