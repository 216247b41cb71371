"""Issue 11 items 3 and 5 without a Mac: the rank's prologue (HF_HUB_CACHE before the imports,
caffeinate on Darwin), F_FULLFSYNC's decision, and the application firewall's answers parsed from
socketfilterfw's own lines."""
import errno
import os
import subprocess
import sys
import time

import pytest

from thunderlane.onhost import files, rank_env
from thunderlane.window import macos

SPEC = {"ranks": [{"host": "mac4", "hf_cache": None}, {"host": "mac5", "hf_cache": "/Volumes/ext/hf"}]}


# --- item 3: the inventory's hf_cache reaches the rank -----------------------------------------

def test_a_rank_gets_its_own_hosts_hf_cache_and_none_when_the_inventory_names_none():
    assert rank_env.rank_environment(SPEC, 1) == {"HF_HUB_CACHE": "/Volumes/ext/hf"}
    assert rank_env.rank_environment(SPEC, 0) == {}


def test_the_bundle_sets_hf_hub_cache_before_huggingface_hub_is_imported(tmp_path):
    """The entry's first module runs before lane_train's imports: huggingface_hub, imported after
    it in the same program, resolves its cache from the spec's hf_cache."""
    probe = "import huggingface_hub.constants as c; print('CACHE', c.HF_HUB_CACHE)"
    program = (onhost_source("rank_env") + "\n" + probe)
    spec = '{"ranks": [{"host": "h", "hf_cache": "%s"}]}' % (tmp_path / "ext" / "hf")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "MLX_"))}
    out = subprocess.run([sys.executable, "-c", program, spec], env=dict(env, MLX_RANK="0"),
                         capture_output=True, text=True, timeout=60)
    assert f"CACHE {tmp_path / 'ext' / 'hf'}" in out.stdout, out.stderr


def onhost_source(name):
    from thunderlane import onhost
    return onhost.source((name,))


def test_the_entry_bundle_starts_with_the_prologue():
    from thunderlane import onhost
    assert onhost.ENTRY[0] == "rank_env"


# --- item 5: caffeinate ---------------------------------------------------------------------------

@pytest.mark.parametrize("platform,spec,environ,want", [
    ("darwin", {}, {}, "/usr/bin"),
    ("linux", {}, {}, None),
    ("linux", {"force_darwin": "/lab/tools"}, {"THUNDER_LAB_HOST": "mac4"}, "/lab/tools"),
    ("linux", {"force_darwin": "/lab/tools"}, {}, None),  # forcing is for lab hosts only
])
def test_macos_behaviours_are_on_for_darwin_and_for_the_lab_when_forced(platform, spec, environ, want):
    assert rank_env.darwin_tools(spec, environ, platform) == want


def test_caffeinate_watches_the_given_pid():
    assert rank_env.caffeinate_argv("/usr/bin", 4242) == ["/usr/bin/caffeinate", "-i", "-s", "-w", "4242"]


def test_the_prologue_starts_caffeinate_for_this_process(tmp_path):
    log = tmp_path / "caffeinate.log"
    tool = tmp_path / "caffeinate"
    tool.write_text(f'#!/bin/sh\necho "$*" > {log}\n')
    tool.chmod(0o755)
    environ = {"MLX_RANK": "1", "THUNDER_LAB_HOST": "mac5"}
    spec = '{"force_darwin": "%s", "ranks": [{"host": "a"}, {"host": "b", "hf_cache": "/x/hf"}]}' % tmp_path
    done = rank_env.prologue(["-c", spec], environ, platform="linux")
    assert environ["HF_HUB_CACHE"] == "/x/hf" and done["hf_hub_cache"] == "/x/hf"
    assert isinstance(done["caffeinate"], int)
    for _ in range(100):
        if log.exists() and log.read_text():
            break
        time.sleep(0.05)
    assert log.read_text().split() == ["-i", "-s", "-w", str(os.getpid())]


def test_a_missing_caffeinate_is_reported_not_fatal(tmp_path):
    assert rank_env.start_caffeinate(str(tmp_path), os.getpid()).startswith("not started: ")


# --- item 5: F_FULLFSYNC ---------------------------------------------------------------------------

class FakeFcntl:
    F_FULLFSYNC = 51

    def __init__(self, error=None):
        self.calls, self.error = [], error

    def fcntl(self, fd, op):
        self.calls.append(op)
        if self.error:
            raise OSError(self.error, os.strerror(self.error))


class NoFullFsync:
    def fcntl(self, fd, op):
        raise AssertionError("no F_FULLFSYNC here: must not be called")


@pytest.fixture
def fd(tmp_path):
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT)
    yield fd
    os.close(fd)


def test_darwin_uses_f_fullfsync(fd):
    f = FakeFcntl()
    assert files.full_fsync(fd, f, "darwin") == "F_FULLFSYNC" and f.calls == [51]


@pytest.mark.parametrize("errno_", [errno.ENOTSUP, errno.EINVAL])
def test_a_filesystem_that_refuses_f_fullfsync_falls_back_to_fsync(fd, errno_):
    f = FakeFcntl(errno_)
    assert files.full_fsync(fd, f, "darwin") == "fsync" and f.calls == [51]


def test_linux_and_a_darwin_without_f_fullfsync_use_fsync(fd):
    assert files.full_fsync(fd, FakeFcntl(), "linux") == "fsync"
    assert files.full_fsync(fd, NoFullFsync(), "darwin") == "fsync"


# --- item 5: the application firewall ---------------------------------------------------------------
# socketfilterfw's lines as macOS prints them (quoted in public tools that parse them, e.g. Kolide's
# check page and firewall checkers): --getglobalstate, --getblockall (new and old), --getappblocked.
ON, OFF, ALL = "Firewall is enabled. (State = 1)\n", "Firewall is disabled. (State = 0)\n", \
    "Firewall is enabled. (State = 2)\n"
BLOCKALL_OFF, BLOCKALL_ON = "Firewall has block all state set to disabled.\n", \
    "Firewall has block all state set to enabled.\n"
OLD_BLOCKALL_OFF, OLD_BLOCKALL_ON = "Block all DISABLED! \n", "Block all ENABLED! \n"
PY = "/opt/homebrew/Cellar/python@3.12/3.12.8/Frameworks/Python.framework/Versions/3.12/bin/python3.12"
PERMITTED = "Incoming connection to the application is permitted\n"
BLOCKED = "Incoming connection to the application is blocked\n"
NOT_LISTED = f"The application {PY} is not part of the firewall \n"


@pytest.mark.parametrize("text,want", [(ON, (True, False)), (OFF, (False, False)), (ALL, (True, True)),
                                       ("", (None, None)), ("socketfilterfw: command not found", (None, None))])
def test_global_state(text, want):
    assert macos.parse_global_state(text) == want


@pytest.mark.parametrize("text,want", [(BLOCKALL_OFF, False), (BLOCKALL_ON, True), (OLD_BLOCKALL_OFF, False),
                                       (OLD_BLOCKALL_ON, True), ("", None)])
def test_block_all(text, want):
    assert macos.parse_block_all(text) == want


@pytest.mark.parametrize("text,want", [(PERMITTED, "allowed"), (BLOCKED, "blocked"), (NOT_LISTED, "not-listed"),
                                       ("", None)])
def test_app_rule(text, want):
    assert macos.parse_app(text, PY) == want


def host(app, global_=ON, blockall=BLOCKALL_OFF, **extra):
    return {"darwin": True, "platform": "darwin", "python": PY, "caffeinate": True, "fullfsync": True,
            "firewall": {"global": global_, "blockall": blockall, "app": app}, **extra}


def test_a_blocked_python_is_refused_with_the_exact_fix():
    problems, figure = macos.judge(host(BLOCKED))
    fw = "/usr/libexec/ApplicationFirewall/socketfilterfw"
    assert problems == [f"the application firewall is on and the lane's python cannot accept the ring's "
                        f"connections: {PY} is blocked: sudo {fw} --add {PY} && sudo {fw} --unblockapp {PY}"]
    assert figure == "macOS: caffeinate, F_FULLFSYNC, firewall on, python blocked"


def test_an_unlisted_python_is_refused_too_since_nobody_can_answer_the_prompt():
    problems, _ = macos.judge(host(NOT_LISTED))
    assert len(problems) == 1 and "not in the firewall's list" in problems[0] and "--add" in problems[0]


def test_block_all_is_refused_whatever_the_app_rule():
    for facts in (host(PERMITTED, blockall=BLOCKALL_ON), host(PERMITTED, global_=ALL, blockall="")):
        problems, figure = macos.judge(facts)
        assert "blocks all incoming" in problems[0] and "--setblockall off" in problems[0], facts
        assert figure.endswith("firewall blocks all")


def test_an_allowed_python_or_a_firewall_off_passes():
    assert macos.judge(host(PERMITTED)) == ([], "macOS: caffeinate, F_FULLFSYNC, firewall on, python allowed")
    assert macos.judge(host(BLOCKED, global_=OFF)) == ([], "macOS: caffeinate, F_FULLFSYNC, firewall off")


def test_an_unreadable_firewall_is_a_problem_not_a_pass():
    problems, figure = macos.judge(host(PERMITTED, global_=""))
    assert "cannot read the application firewall's state" in problems[0] and figure.endswith("firewall unknown")


def test_linux_skips_the_check_and_says_so():
    assert macos.judge({"darwin": False, "platform": "linux", "python": "/usr/bin/python3.12"}) == \
        ([], "not darwin (linux): macOS checks skipped")


def test_a_path_with_a_space_is_quoted_in_the_fix():
    assert macos.fix_commands("/Volumes/T7 Shield/py/bin/python3")[0].endswith("--add '/Volumes/T7 Shield/py/bin/python3'")


APP = "/opt/homebrew/Cellar/python@3.12/3.12.8/Frameworks/Python.framework/Versions/3.12/Resources/Python.app"


def test_a_framework_builds_python_app_is_judged_too():
    """Homebrew's bin/python3.12 re-executes Python.app, the program the firewall sees listening."""
    problems, figure = macos.judge(host(PERMITTED, apps=[PY, APP], firewall={
        "global": ON, "blockall": BLOCKALL_OFF, "app": PERMITTED, "apps": {APP: f"The application {APP} is not "
                                                                          "part of the firewall \n"}}))
    assert len(problems) == 1 and f"{APP} is not in the firewall's list" in problems[0]
    assert f"--add '{APP}'" not in problems[0] and f"--add {APP}" in problems[0] and f"--add {PY}" not in problems[0]
    assert figure.endswith("python not-listed")
    ok = host(PERMITTED, apps=[PY, APP], firewall={"global": ON, "blockall": BLOCKALL_OFF, "app": PERMITTED,
                                                   "apps": {APP: PERMITTED}})
    assert macos.judge(ok) == ([], "macOS: caffeinate, F_FULLFSYNC, firewall on, python allowed")


def test_the_host_names_python_app_only_for_a_framework_build(tmp_path):
    from thunderlane.onhost import macos as onhost_macos
    framework = tmp_path / "Python.framework" / "Versions" / "3.12"
    (framework / "Resources" / "Python.app").mkdir(parents=True)
    assert onhost_macos.firewall_apps("/x/python3.12", str(framework)) == \
        ["/x/python3.12", str(framework / "Resources" / "Python.app")]
    assert onhost_macos.firewall_apps("/x/python3.12", str(tmp_path)) == ["/x/python3.12"]
