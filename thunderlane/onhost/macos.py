# thunderlane on-host macOS facts: stdlib only (bundled before probe.py: ``probe.py macos FORCED``)
"""What preflight needs to know of a host's macOS behaviours, as one JSON document: the platform,
the lane Python's real path (a venv's python is a link to the base interpreter, and the firewall's
rules name the real file), the application firewall's answers as socketfilterfw prints them (parsed
on the control side), and whether caffeinate and F_FULLFSYNC are there.

Argument: a folder of stand-in macOS tools, or ``-``. Honoured only on a lab host (its sshd sets
THUNDER_LAB_HOST): the lab acts as macOS with it. Elsewhere only Darwin is macOS. Part of the probe
bundle (one ssh session answers preflight's every question), so its names must not clash there."""
import os
import subprocess
import sys

FIREWALL = "/usr/libexec/ApplicationFirewall/socketfilterfw"
QUESTIONS = (("global", "--getglobalstate"), ("blockall", "--getblockall"))


def firewall_answer(tool, *args):
    """socketfilterfw's answer (stdout then stderr), or None when it cannot be run."""
    try:
        p = subprocess.run([tool, *args], capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (p.stdout + p.stderr)[:4000]


def firewall_apps(python, base_prefix):
    """The executables the firewall may judge for the lane's python: its real file and, for a
    framework build (Homebrew's, python.org's), the ``Python.app`` its ``bin/python3.x`` re-executes,
    which is the program that really listens."""
    apps = [python]
    bundle = os.path.join(base_prefix, "Resources", "Python.app")
    if "Python.framework" in base_prefix and os.path.isdir(bundle):
        apps.append(bundle)
    return apps


def macos_facts(forced):
    python = os.path.realpath(sys.executable)
    darwin = sys.platform == "darwin" or bool(forced)
    out = {"platform": sys.platform, "darwin": darwin, "forced": bool(forced), "python": python}
    if not darwin:
        return out
    tool = os.path.join(forced, "socketfilterfw") if forced else FIREWALL
    caffeinate = os.path.join(forced or "/usr/bin", "caffeinate")
    import fcntl
    out.update(firewall_tool=tool, caffeinate=os.access(caffeinate, os.X_OK),
               fullfsync=hasattr(fcntl, "F_FULLFSYNC"))
    answers = {key: firewall_answer(tool, flag) for key, flag in QUESTIONS}
    out["apps"] = firewall_apps(python, os.path.realpath(sys.base_prefix))
    answers["app"] = firewall_answer(tool, "--getappblocked", python)
    answers["apps"] = {app: firewall_answer(tool, "--getappblocked", app) for app in out["apps"][1:]}
    out["firewall"] = answers
    return out


def macos_command(arg):
    """The facts, with the stand-in folder ``arg`` honoured only on a lab host."""
    forced = arg if arg != "-" and os.environ.get("THUNDER_LAB_HOST") else None
    return macos_facts(forced)
