"""Issue 11 items 3 and 5 on the lab: mac5's inventory names a cache away from the default path
(``Volumes/ext/hf`` under its home, as an external SSD on a Mac; its default cache is empty), and
the lab acts as macOS (THUNDER_FORCE_DARWIN, honoured by lab hosts only) with stand-in
``caffeinate`` and ``socketfilterfw`` that record what they were asked."""
import json
import os
import time
from pathlib import Path

from thunderlane.fsutil import pid_alive
from thunderlane.lab import CACHE_REL
from tests.lab.conftest import no_rank_left, train

FAKE_CAFFEINATE = """#!/bin/sh
# stand-in for macOS caffeinate -i -s -w PID: records its start and its end (PID gone, or the
# rank's ssh session hung up on it), as "start <own pid> ARGS" and "end <own pid> <PID> <how>"
log="$(dirname "$0")/caffeinate.log"
echo "start $$ $*" >> "$log"
trap 'echo "end $$ $4 hangup" >> "$log"; exit 0' HUP TERM
while kill -0 "$4" 2>/dev/null; do sleep 0.2; done
echo "end $$ $4 exited" >> "$log"
"""
FAKE_FIREWALL = """#!/bin/sh
# stand-in for /usr/libexec/ApplicationFirewall/socketfilterfw, answering in macOS's words
case "$1" in
  --getglobalstate) echo "Firewall is enabled. (State = 1)" ;;
  --getblockall) echo "Firewall has block all state set to disabled." ;;
  --getappblocked) cat "$(dirname "$0")/app_answer" ;;
esac
"""


def mac_tools(folder, app_answer="Incoming connection to the application is permitted"):
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in (("caffeinate", FAKE_CAFFEINATE), ("socketfilterfw", FAKE_FIREWALL)):
        (folder / name).write_text(text)
        (folder / name).chmod(0o755)
    (folder / "app_answer").write_text(app_answer + "\n")
    return {"THUNDER_FORCE_DARWIN": str(folder), "THUNDER_LAB_HOST": "local"}


def events(log_path, phase):
    out = []
    for line in Path(log_path).read_text().splitlines():
        at = line.rfind("LANE ")
        if at >= 0 and line[at + 5:].startswith("{"):
            e = json.loads(line[at + 5:])
            out += [e] if e.get("phase") == phase else []
    return out


def caffeinate_log(folder, ends, seconds=20):
    """The stand-in's records once ``ends`` watched processes have ended."""
    log = folder / "caffeinate.log"
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        lines = log.read_text().splitlines() if log.exists() else []
        if sum(line.startswith("end ") for line in lines) >= ends:
            return lines
        time.sleep(0.2)
    raise AssertionError(f"caffeinate.log: {log.read_text() if log.exists() else 'missing'}")


def test_ranks_train_from_the_inventorys_hf_cache_under_caffeinate(warm_lab, profile_dir, tmp_path):
    mac5 = warm_lab.hosts["mac5"]
    assert mac5.hf_cache.endswith("/mac5/Volumes/ext/hf")
    assert not (Path(mac5.hf_cache).parents[2] / CACHE_REL).exists()  # the default cache is empty
    tools = tmp_path / "mactools"
    code, r = train(warm_lab, profile_dir, "run_a", "--target", "2", "--window", "2", env=mac_tools(tools))
    assert code == 0 and r["verdict"] == "success", r
    starts = {e["host"]: e for e in events(r["log"], "start")}
    assert starts["mac5"]["hf_hub_cache"] == mac5.hf_cache and starts["mac4"]["hf_hub_cache"] is None
    # each rank and the chunk runner started caffeinate -i -s -w <its own pid>, which ended with it
    runner = [line for line in Path(r["log"]).read_text().splitlines() if line.startswith("chunks: macOS: ")]
    runner_pid = int(runner[0].split(" -w ")[1].split()[0])
    watched = {starts["mac4"]["pid"], starts["mac5"]["pid"], runner_pid}
    assert all(isinstance(starts[h]["caffeinate"], int) for h in ("mac4", "mac5"))
    lines = [line.split() for line in caffeinate_log(tools, ends=3)]
    assert sorted(line[2:] for line in lines if line[0] == "start") == \
        sorted(["-i", "-s", "-w", str(pid)] for pid in watched)
    assert {int(line[2]) for line in lines if line[0] == "end"} == watched
    deadline = time.monotonic() + 5  # a stand-in exits just after writing its end line
    while any(pid_alive(int(line[1])) for line in lines) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(pid_alive(int(line[1])) for line in lines)  # no stand-in outlives its process
    figures = {p["host"]: p["figures"]["macos"] for p in r["preflight"]}
    assert figures == {h: "macOS: caffeinate, fsync (no F_FULLFSYNC), firewall on, python allowed"
                       for h in ("mac4", "mac5")}
    assert no_rank_left()


def test_preflight_refuses_a_python_the_firewall_blocks_with_the_fix(warm_lab, profile_dir, tmp_path):
    tools = tmp_path / "mactools"
    env = mac_tools(tools, "Incoming connection to the application is blocked")
    code, r = train(warm_lab, profile_dir, "run_a", "--target", "2", "--window", "2", env=env)
    assert code == 1 and r["verdict"] == "refused" and not r["launches"], r
    python = os.path.realpath(warm_lab.hosts["mac4"].python)
    fix = f"sudo {tools}/socketfilterfw --add {python} && sudo {tools}/socketfilterfw --unblockapp {python}"
    refused = {p["host"]: p["detail"] for p in r["preflight"] if not p["ok"]}
    assert set(refused) == {"mac4", "mac5"}
    assert all(fix in detail and "is blocked" in detail for detail in refused.values()), refused


def test_without_the_lab_licence_linux_hosts_skip_the_macos_checks(warm_lab, profile_dir, tmp_path):
    """No THUNDER_FORCE_DARWIN: the Linux stand-ins say 'not darwin' and the check is skipped."""
    code, r = train(warm_lab, profile_dir, "run_a", "--target", "1", "--window", "1")
    assert code == 0, r
    assert {p["figures"]["macos"] for p in r["preflight"]} == {"not darwin (linux): macOS checks skipped"}
