"""The namespaced lab's I/O, as root with iproute2: make (``up``), pull and plug the cables of
(``link``) and remove (``down``) what ``netns_plan.plan`` describes. ``.lab/netns.json`` records
the lab before anything is made, so ``down`` removes exactly that, even after a crash; ``up`` of a
lab that is there changes only what differs (the links' rates)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from ..fsutil import atomic_write, pid_alive
from . import netns_plan as np_
from .net import NET_VAR
from .seed import LabError

RECORD = "netns.json"
NETEM_MISSING = "none (kernel lacks sch_netem)"


def unsupported(platform=None, euid=None):
    """Why this machine cannot have a namespaced lab (not Linux, not root, no iproute2, namespaces
    refused), or None when it can: a namespace is made and removed to be sure."""
    if not (platform or sys.platform).startswith("linux"):
        return "network namespaces need Linux"
    uid = os.geteuid() if euid is None else euid
    if uid != 0:
        return f"network namespaces need root (running as uid {uid})"
    missing = [t for t in ("ip", "tc") if shutil.which(t) is None and not os.access(f"/usr/sbin/{t}", os.X_OK)]
    if missing:
        return f"no {' or '.join(missing)} command (install iproute2)"
    probe = f"tlprobe-{os.getpid()}"
    made = _run(["ip", "netns", "add", probe], check=False)
    if made.returncode:
        return f"ip netns add refused: {made.stderr.strip()}"
    _run(["ip", "netns", "del", probe], check=False)
    return None


def _run(argv, check=True):
    p = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if check and p.returncode:
        raise LabError(f"netns lab: `{' '.join(argv)}` failed ({p.returncode}): {p.stderr.strip()}")
    return p


def _namespaces():
    return {line.split()[0] for line in _run(["ip", "netns", "list"]).stdout.splitlines() if line.strip()}


def _exists(what, namespaces):
    if what[0] == "netns":
        return what[1] in namespaces
    _, ns, dev = what
    if ns and ns not in namespaces:
        return False
    return _run(["ip", *(["-n", ns] if ns else []), "link", "show", "dev", dev], check=False).returncode == 0


def recorded(lab):
    """The record of the lab's namespaced net (``netns_plan.to_dict`` plus what up found), or None."""
    try:
        return json.loads((Path(lab) / RECORD).read_text())
    except (OSError, ValueError):
        return None


def _record(lab, data):
    atomic_write(Path(lab) / RECORD, json.dumps(data, indent=1, sort_keys=True) + "\n")


def up(lab, names, control_mbit=1000, data_mbit=10000, scope="lab", env=None):
    """Make (or keep) the namespaced net of hosts ``names``; returns its ``Plan``. An earlier one of
    other hosts or id goes first. The delay the kernel could give is in ``recorded(lab)['delay']``."""
    net = (os.environ if env is None else env).get(NET_VAR)
    try:
        p = np_.plan(list(names), np_.lab_k(net), control_mbit, data_mbit, scope)
    except np_.PlanError as e:
        raise LabError(str(e)) from None
    old = recorded(lab)
    data = np_.to_dict(p)
    if old and (old.get("lab_id"), old.get("names")) != (p.lab_id, [h.name for h in p.hosts]):
        down(lab)
    elif not old and set(p.namespaces) & _namespaces():
        _refuse_if_owned(p, lab)
        _record(lab, data)   # leftovers of a lab whose folder or record is gone: never adopt them
        down(lab)
    _record(lab, dict(data, made=False))   # first: a crash from here on is still removable
    try:
        namespaces = _namespaces()
        for creates, argv in np_.build(p):
            if creates is None or not _exists(creates, namespaces):
                _run(argv)
                if creates and creates[0] == "netns":
                    namespaces.add(creates[1])
        delay = _shape(p)
        _run(["ip", "-n", p.wires, "link", "set", "dev", "data", "alias", str(Path(lab).resolve())], check=False)
    except (LabError, subprocess.TimeoutExpired) as e:
        down(lab)
        raise LabError(f"{e}; the partly made namespaced lab was removed") from None
    _record(lab, dict(data, made=True, delay=delay))
    return p


def _owner(p):
    """The lab folder that made the namespaces of ``p``'s id (the wires' bridge's alias), or None."""
    out = _run(["ip", "-n", p.wires, "-j", "link", "show", "dev", "data"], check=False).stdout
    try:
        return json.loads(out)[0].get("ifalias")
    except (ValueError, IndexError, AttributeError):
        return None


def _refuse_if_owned(p, lab):
    """Namespaces of this id made by another lab folder whose record still names them are that
    lab's: refused, not taken over."""
    owner = _owner(p)
    if owner and Path(owner) != Path(lab).resolve() and (recorded(owner) or {}).get("lab_id") == p.lab_id:
        raise LabError(f"netns lab {p.lab_id} is {owner}'s (its lab-down removes it); give this lab "
                       f"another {NET_VAR}")


def _shape(p):
    """Rate on every sending end; the control link's delay where the kernel has netem (never fatal)."""
    refused = []
    for ns, dev, mbit, delayed in np_.shaping(p):
        _run(np_.tbf(ns, dev, mbit))
        if delayed:
            r = _run(np_.netem(ns, dev), check=False)
            if r.returncode:
                refused.append(r.stderr.strip())
    if not refused:
        return f"{np_.DELAY_MS} ms each way on the control link"
    if any("unknown" in e for e in refused):
        return NETEM_MISSING
    return f"none (tc netem: {refused[0]})"


def down(lab):
    """Remove exactly what the record says was made: the processes still in its namespaces (``ip
    netns del`` would leave them running), its root-side links, namespaces and unreachable route.
    Returns what was removed, as lines; [] when there is no record."""
    rec = recorded(lab)
    if not rec:
        return []
    done = []
    namespaces = _namespaces()
    for ns in rec.get("namespaces", []):
        if ns in namespaces:
            done += [f"{ns}: killed pid {pid}" for pid in _kill_all(ns)]
    for dev in rec.get("root_links", []):
        if _exists(("link", None, dev), namespaces) and not _run(["ip", "link", "del", "dev", dev], check=False).returncode:
            done.append(f"link {dev}")
    for ns in rec.get("namespaces", []):
        if ns in namespaces and not _run(["ip", "netns", "del", ns], check=False).returncode:
            done.append(f"namespace {ns}")
    block = rec.get("unreachable")
    if block and _run(["ip", "route", "del", "unreachable", block], check=False).returncode == 0:
        done.append(f"route unreachable {block}")
    (Path(lab) / RECORD).unlink()
    return done


def _kill_all(ns, seconds=3):
    """End every process in namespace ``ns`` (TERM, then KILL); their PIDs."""
    pids = [int(x) for x in _run(["ip", "netns", "pids", ns], check=False).stdout.split() if x.isdigit()]
    left = pids
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in left:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and any(pid_alive(pid) for pid in left):
            time.sleep(0.05)
        left = [pid for pid in left if pid_alive(pid)]
    return pids


def link(lab, host, which, state):
    """Pull (``state`` 'down') or plug ('up') ``host``'s control or data cable (``netns_plan.cable``
    says what that does). Returns the command run."""
    rec = recorded(lab)
    if not rec or not rec.get("made"):
        raise LabError(f"lab-link: {Path(lab)} has no namespaced lab (fab lab-up --net netns)")
    try:
        argv = np_.cable(np_.from_dict(rec), host, which, state)
    except np_.PlanError as e:
        raise LabError(str(e)) from None
    _run(argv)
    return " ".join(argv)


def plan_of(lab):
    """The ``Plan`` of the lab's recorded namespaced net, or None."""
    rec = recorded(lab)
    return np_.from_dict(rec) if rec and rec.get("made") else None


def exec_prefix(ns):
    """argv prefix that runs a command inside namespace ``ns``."""
    return ["ip", "netns", "exec", ns]
