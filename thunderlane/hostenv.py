"""The lane's interpreter on a host, judged: pure decisions for ``fab setup-hosts`` (refuse, create,
install, nothing to do) and the version parity preflight and verify-cache apply to every package of
``launchers/host-requirements.txt``. No I/O here: ``setup_hosts.py`` asks the hosts.
"""
import re
from dataclasses import dataclass
from pathlib import PurePosixPath

from . import requirements

MIN_PYTHON = (3, 11)  # mlx-lm 0.32 needs it; a stock Mac's python3 (Command Line Tools) is 3.9
VERSION_RE = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?")
VENV_PYTHON_RE = re.compile(r"python(3(\.\d+)?)?")
# prefixes whose bin/python is a system's or a package manager's, never the lane's venv
SYSTEM = {"/", "/usr", "/usr/local", "/opt/homebrew", "/opt/local", "/Library", "/System"}


@dataclass(frozen=True)
class Step:
    """What setup-hosts does on one host: 'refuse', 'create' (venv, then install), 'install' or
    'nothing'; ``reason`` says why, in words for the operator."""
    action: str
    reason: str


def venv_dir(python):
    """The venv folder of an inventory ``python`` such as ``/x/.venv/bin/python``, else None."""
    p = PurePosixPath(python)
    if p.parent.name != "bin" or not VENV_PYTHON_RE.fullmatch(p.name) or str(p.parent.parent) in SYSTEM:
        return None
    return str(p.parent.parent)


def parse_version(text):
    """(major, minor, micro) from what an interpreter printed ('3.12.7', 'Python 3.9.6'), or None."""
    m = VERSION_RE.search(text or "")
    return tuple(int(g or 0) for g in m.groups()) if m else None


def dotted(version):
    return ".".join(map(str, version))


def check_base(host, base_python, version):
    """A refusal (str) when ``base_python`` (as printed ``version``) cannot build the lane's venv."""
    if not base_python:
        return (f"{host}: base_python is not set in the inventory: name the interpreter to build the "
                f"lane's venv from, e.g. /opt/homebrew/bin/python3.12")
    if version is None:
        return f"{host}: base_python {base_python} printed no Python version"
    if version[:2] < MIN_PYTHON:
        return (f"{host}: base_python {base_python} is Python {dotted(version)}; the lane needs "
                f">= {dotted(MIN_PYTHON)} (mlx-lm): install one, e.g. brew install python@3.12")
    return None


def off_pin(versions, pins):
    """[(dist, installed or None, pinned)] for every pin applying on the interpreter's platform
    that the interpreter's ``versions`` (facts.Versions) do not match."""
    wanted = requirements.for_platform(pins, versions.platform)
    return [(name, versions.packages.get(name), pin) for name, pin in wanted.items()
            if versions.packages.get(name) != pin]


def decide(host, python, base_version, venv, pins):
    """The step for ``host`` whose lane interpreter ``python`` answered ``venv`` (facts.Versions,
    None: no interpreter there yet), given the base interpreter's version."""
    if venv_dir(python) is None:
        return Step("refuse", f"{host}: python {python} does not look like a venv's bin/python; "
                              f"setup-hosts builds the venv there, so name e.g. /Users/me/thunder-train/.venv/bin/python")
    if venv is None:
        return Step("create", f"no interpreter at {python}: creating the venv {venv_dir(python)}")
    if venv.venv is False:
        return Step("refuse", f"{host}: python {python} is not a venv's interpreter (sys.prefix is its "
                              f"base's): setup-hosts installs into a venv only")
    have = parse_version(venv.python)
    if have is None or have[:2] != base_version[:2]:
        return Step("refuse", f"{host}: the venv {venv_dir(python)} runs Python {venv.python}, base_python is "
                              f"{dotted(base_version)}; remove that venv (or point python elsewhere) and run again")
    off = off_pin(venv, pins)
    if not off:
        return Step("nothing", "every pin installed")
    return Step("install", "; ".join(f"{d} {have or 'missing'} -> {want}" for d, have, want in off))


def parity(versions, pins):
    """Version problems of hosts that must run the same interpreter: {host: [problem]} for python or
    any pinned package that is missing, differs from the first host's, or is not the pinned version.
    ``versions``: {host: facts.Versions}, the reference first."""
    problems = {name: [] for name in versions}
    if not versions:
        return problems
    ref, first = next(iter(versions.items()))
    names = ("python", *requirements.names(pins))
    for name, v in versions.items():
        said = set()
        for dist in names if name != ref else ():
            a, b = _version(first, dist), _version(v, dist)
            if a != b:
                said.add(dist)
                problems[name].append(_missing(dist) if b is None else f"{dist} {b} here but {a} on {ref}")
        for dist, have, want in off_pin(v, pins):
            if dist not in said:
                problems[name].append(_missing(dist) if have is None
                                      else f"{dist} {have} here but {requirements.PATH.name} pins {want}")
    return problems


def _missing(dist):
    return f"{dist} is not installed for this host's lane python"


def _version(v, dist):
    return v.python if dist == "python" else v.packages.get(dist)
