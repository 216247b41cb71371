"""The hub-root memo (onhost/hubroot.py): a host whose inventory entry names no hf_cache asks
huggingface_hub for its cache root once, then reads the answer back, and asks again whenever the
environment or the package changes. Run as fab runs it: the lean probe through its loader, under
python -S, in a real interpreter whose HOME is a temporary folder; the package is a stand-in on
PYTHONPATH whose constants.py says where the cache is."""
import json
import os
import subprocess
import sys

from thunderlane import onhost


def stand_in(tmp_path, root):
    """A huggingface_hub package whose HF_HUB_CACHE is ``root``; its constants.py's path."""
    package = tmp_path / "pkgs" / "huggingface_hub"
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text("")
    (package / "constants.py").write_text(f"HF_HUB_CACHE = {root!r}\n")
    return package / "constants.py"


def probe_root(tmp_path, **env):
    """(cache root the probe reports, whether the package was imported) for ``cache org/name -``."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {"HOME": str(home), "PATH": os.environ["PATH"], "PYTHONPATH": str(tmp_path / "pkgs"),
           "PYTHONPROFILEIMPORTTIME": "1", "PYTHONDONTWRITEBYTECODE": "1", **env}  # no stale .pyc
    p = subprocess.run(onhost.probe_command(sys.executable, ["cache", "org/name", "-"]), env=env,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr[-2000:]
    answer = json.loads(p.stdout)
    assert answer["resolved_by"] == "huggingface_hub"
    return answer["cache_root"], "| huggingface_hub" in p.stderr


def test_the_root_is_asked_once_then_read_back(tmp_path):
    stand_in(tmp_path, "/hub/one")
    assert probe_root(tmp_path) == ("/hub/one", True)
    assert probe_root(tmp_path) == ("/hub/one", False)
    memo = (tmp_path / "home" / ".cache" / "thunderlane" / "hub_root.json").read_text()
    assert "PYTHONPATH" not in memo and str(tmp_path) not in memo  # the environment only as a digest


def test_a_changed_environment_or_package_asks_again(tmp_path):
    constants = stand_in(tmp_path, "/hub/one")
    assert probe_root(tmp_path) == ("/hub/one", True)
    assert probe_root(tmp_path, HF_HOME="/elsewhere") == ("/hub/one", True)  # a new key: asked
    assert probe_root(tmp_path) == ("/hub/one", True)  # one memo: it holds the latest key
    assert probe_root(tmp_path) == ("/hub/one", False)
    stat = constants.stat()
    constants.write_text("HF_HUB_CACHE = '/hub/upgraded'\n")  # an upgrade: its size alone differs
    os.utime(constants, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert probe_root(tmp_path) == ("/hub/upgraded", True)
    assert probe_root(tmp_path) == ("/hub/upgraded", False)


def test_a_site_start_that_changes_the_environment_still_reads_the_memo(tmp_path):
    """The key is taken before the site start the first probe needs: a sitecustomize (or .pth)
    setting a variable there must not make the next probe, which starts no site, miss."""
    stand_in(tmp_path, "/hub/one")
    (tmp_path / "pkgs" / "sitecustomize.py").write_text("import os\nos.environ['SET_BY_SITE'] = '1'\n")
    assert probe_root(tmp_path) == ("/hub/one", True)
    assert probe_root(tmp_path) == ("/hub/one", False)


def test_an_install_beside_the_package_asks_again(tmp_path):
    """The folder holding the package is in the key: a new package or .pth file there changes its mtime."""
    stand_in(tmp_path, "/hub/one")
    assert probe_root(tmp_path) == ("/hub/one", True)
    assert probe_root(tmp_path) == ("/hub/one", False)
    folder = tmp_path / "pkgs"
    mtime = folder.stat().st_mtime_ns
    (folder / "other.pth").write_text("")
    os.utime(folder, ns=(mtime + 10**9, mtime + 10**9))  # a coarse clock must not hide the change
    assert probe_root(tmp_path) == ("/hub/one", True)


def test_a_memo_others_can_write_is_not_read(tmp_path):
    constants = stand_in(tmp_path, "/hub/one")
    probe_root(tmp_path)
    stat = constants.stat()
    constants.write_text("HF_HUB_CACHE = '/hub/two'\n")  # same size and mtime: the memo cannot tell
    os.utime(constants, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert probe_root(tmp_path) == ("/hub/one", False)
    folder = tmp_path / "home" / ".cache" / "thunderlane"
    folder.chmod(0o777)
    assert probe_root(tmp_path) == ("/hub/two", True)
    folder.chmod(0o700)
    (folder / "hub_root.json").chmod(0o666)
    assert probe_root(tmp_path) == ("/hub/two", True)
