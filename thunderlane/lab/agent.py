"""The lab's stand-in for a Mac's Keychain-held key (``fab lab-up --key-in-agent``): the control key
gets a passphrase, an ``ssh-agent`` started by the lab holds it, and ``.lab/agent.env`` says where
(``. .lab/agent.env`` before a task). Without the flag the key has no passphrase and no agent runs.

The agent is found again by its recorded PID *and* its socket path on its command line, so
``fab lab-down`` stops exactly the agent this lab started.
"""
import os
import re
import signal
import subprocess
import time
from pathlib import Path

from ..fsutil import atomic_write, command_line, pid_alive
from ..keys import needs_passphrase
from .seed import LabError, run_tool

# The lab key's passphrase: a lab secret by design (it guards a key that only opens the lab's sshd).
PASSPHRASE = "thunder-lab-passphrase"
ASKPASS = '#!/bin/sh\n# ssh-add asks here (SSH_ASKPASS_REQUIRE=force): the lab key\'s passphrase\n' \
          'printf \'%s\\n\' "$THUNDER_LAB_PASSPHRASE"\n'


def files(lab):
    return {"pid": lab / "agent.pid", "sock": lab / "agent.sock", "env": lab / "agent.env",
            "askpass": lab / "askpass.sh"}


def set_passphrase(key, on):
    """Give ``key`` the lab passphrase (``on``) or take it away; nothing to do if it is so already."""
    if needs_passphrase(key) != on:
        old, new = ("", PASSPHRASE) if on else (PASSPHRASE, "")
        run_tool(["ssh-keygen", "-q", "-p", "-f", str(key), "-P", old, "-N", new])


def agent_pid(lab):
    """PID of the lab's ssh-agent if alive and really ours (its -a socket is this lab's), else None."""
    f = files(lab)
    try:
        pid = int(f["pid"].read_text().strip())
    except (OSError, ValueError):
        return None
    if not pid_alive(pid):
        return None
    return pid if str(f["sock"]) in command_line(pid) else None


def start(lab, key):
    """The key with a passphrase, held by the lab's agent (started if need be); writes agent.env.
    Returns the agent's environment {SSH_AUTH_SOCK, SSH_AGENT_PID}."""
    f = files(lab)
    set_passphrase(key, True)
    if agent_pid(lab) is None:
        f["sock"].unlink(missing_ok=True)
        out = run_tool(["ssh-agent", "-s", "-a", str(f["sock"])])
        pid = re.search(r"SSH_AGENT_PID=(\d+);", out)
        if not pid:
            raise LabError(f"ssh-agent printed no SSH_AGENT_PID: {out[:200]!r}")
        atomic_write(f["pid"], pid.group(1) + "\n")
    env = {"SSH_AUTH_SOCK": str(f["sock"]), "SSH_AGENT_PID": str(agent_pid(lab))}
    add_key(env["SSH_AUTH_SOCK"], key, f["askpass"])
    atomic_write(f["env"], "".join(f"{k}={v}; export {k};\n" for k, v in env.items()))
    return env


def add_key(sock, key, askpass):
    """``ssh-add key`` into the agent at ``sock``, the passphrase given by an askpass script
    (ssh-add reads no passphrase from a pipe)."""
    atomic_write(askpass, ASKPASS, mode=0o700)
    env = dict(os.environ, SSH_AUTH_SOCK=str(sock), SSH_ASKPASS=str(askpass), SSH_ASKPASS_REQUIRE="force",
               DISPLAY=os.environ.get("DISPLAY", ":0"), THUNDER_LAB_PASSPHRASE=PASSPHRASE)
    p = subprocess.run(["ssh-add", str(key)], env=env, stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, timeout=30)
    if p.returncode != 0:
        raise LabError(f"ssh-add {key} failed (exit {p.returncode}): {p.stderr.strip()[-300:]}")


def stop(lab, key=None):
    """Stop the lab's agent (exactly it), remove agent.env; take the passphrase off ``key`` if given.
    Returns the PID stopped, or None."""
    f = files(lab)
    pid = agent_pid(lab)
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            if not pid_alive(pid):
                break
            time.sleep(0.05)
    for name in ("pid", "env", "sock"):
        Path(f[name]).unlink(missing_ok=True)
    if key is not None and Path(key).exists():
        set_passphrase(key, False)
    return pid
