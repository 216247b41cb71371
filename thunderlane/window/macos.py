"""Preflight's macOS check: on a Darwin host, the application firewall must let the lane's Python
accept the ring's connections (a prompt cannot be answered over ssh: the ring would hang), and the
host's macOS behaviours are shown (caffeinate, F_FULLFSYNC). Elsewhere the check is skipped and
says so. Command (``onhost/macos.py``, in the host's one preflight probe) and parse (here, pure) are
apart: the parsers read socketfilterfw's own lines.

The lab acts as macOS with ``THUNDER_FORCE_DARWIN=<folder of stand-in tools>`` (a fake
``socketfilterfw`` and ``caffeinate``), which a host honours only when it is a lab host."""
import os
import re
import shlex
from dataclasses import dataclass
from typing import Optional

from ..facts import Query

FORCE = "THUNDER_FORCE_DARWIN"
FIREWALL = "/usr/libexec/ApplicationFirewall/socketfilterfw"


@dataclass(frozen=True)
class Firewall:
    """What socketfilterfw said: ``on`` (None: unreadable), ``block_all`` (every incoming connection
    refused, whatever the app rules say) and ``app`` ('allowed', 'blocked', 'not-listed' or None)."""
    on: Optional[bool]
    block_all: Optional[bool]
    app: Optional[str]


def parse_global_state(text):
    """``Firewall is enabled. (State = 1)`` -> (on, block_all): state 0 off, 1 on, 2 on and
    blocking all; without a state number the words decide. (None, None) when unreadable."""
    m = re.search(r"State\s*=\s*(\d)", text or "")
    if m:
        return {"0": (False, False), "1": (True, False), "2": (True, True)}.get(m.group(1), (None, None))
    low = (text or "").lower()
    if "disabled" in low:
        return False, False
    if "blocking all" in low:
        return True, True
    return (True, False) if "enabled" in low else (None, None)


def parse_block_all(text):
    """``Firewall has block all state set to enabled.`` (older: ``Block all ENABLED!``) -> bool."""
    low = (text or "").lower()
    if "block" not in low:
        return None
    if "disabled" in low:
        return False
    return True if "enabled" in low else None


def parse_app(text, path):
    """``--getappblocked PATH``: 'allowed' (``Incoming connection to the application is permitted``),
    'blocked', 'not-listed' (``The application PATH is not part of the firewall``) or None."""
    low = (text or "").replace(path, " ").lower()
    if "not part of the firewall" in low or "not in the firewall" in low:
        return "not-listed"
    allowed = any(w in low for w in ("permitted", "allowed", "unblocked"))
    blocked = re.search(r"\bblocked\b", low) is not None and "unblocked" not in low
    return "allowed" if allowed and not blocked else "blocked" if blocked and not allowed else None


def firewall(answers, python):
    on, state_all = parse_global_state(answers.get("global"))
    block_all = parse_block_all(answers.get("blockall"))
    return Firewall(on, bool(block_all or state_all) if on else block_all, parse_app(answers.get("app"), python))


def fix_commands(python, tool=FIREWALL):
    """The exact commands that let ``python`` accept connections through the application firewall."""
    return [f"sudo {tool} --add {shlex.quote(python)}", f"sudo {tool} --unblockapp {shlex.quote(python)}"]


def judge(facts):
    """(problems, figure) of one host's macOS facts (``onhost/macos.py``'s JSON)."""
    if not facts.get("darwin"):
        return [], f"not darwin ({facts.get('platform')}): macOS checks skipped"
    python, answers = facts["python"], facts.get("firewall") or {}
    fw = firewall(answers, python)
    tool = facts.get("firewall_tool") or FIREWALL
    shown = ", ".join(["caffeinate" if facts.get("caffeinate") else "no caffeinate",
                       "F_FULLFSYNC" if facts.get("fullfsync") else "fsync (no F_FULLFSYNC)"])
    if fw.on is None:
        return [f"cannot read the application firewall's state ({tool} --getglobalstate said "
                f"{(answers.get('global') or 'nothing').strip()[:120]!r})"], f"macOS: {shown}, firewall unknown"
    if not fw.on:
        return [], f"macOS: {shown}, firewall off"
    apps = facts.get("apps") or [python]  # + a framework build's Python.app (onhost/macos.py)
    states = {app: fw.app if app == python else parse_app((answers.get("apps") or {}).get(app), app)
              for app in apps}
    bad = [app for app in apps if states[app] != "allowed"]
    fixes = " && ".join(c for app in (bad or apps) for c in fix_commands(app, tool))
    if fw.block_all:
        return [f"the application firewall blocks all incoming connections, so the ring cannot connect: "
                f"sudo {tool} --setblockall off, then {fixes}"], f"macOS: {shown}, firewall blocks all"
    if bad:
        words = {"blocked": "is blocked", "not-listed": "is not in the firewall's list (macOS would prompt, "
                 "and nobody can answer over ssh)"}
        said = "; ".join(f"{app} {words.get(states[app], 'has an unreadable rule')}" for app in bad)
        return [f"the application firewall is on and the lane's python cannot accept the ring's connections: "
                f"{said}: {fixes}"], f"macOS: {shown}, firewall on, python {states[bad[0]] or 'unknown'}"
    return [], f"macOS: {shown}, firewall on, python allowed"


def _document(d):
    if not isinstance(d, dict):
        raise ValueError("macOS facts are not a JSON object")
    return d


def query():
    """The macOS facts, asked in preflight's one probe session per host (``probe.py macos``)."""
    return Query(("macos", os.environ.get(FORCE) or "-"), _document)


def check(answers, problems, figures):
    """Add each host's macOS problems to ``problems`` and its one-line figure to ``figures``, from
    ``answers`` ({host: the facts :func:`query` read})."""
    for name, facts in answers.items():
        found, figures[name] = judge(facts)
        problems.setdefault(name, []).extend(found)
