"""setup-hosts: the lane's interpreter on every host, identical everywhere.

Per host, in parallel: ask ``base_python`` its version, ask the venv at ``python`` (if any) for the
pinned distributions' versions, let ``hostenv.decide`` choose, then create the venv and
``pip install -r`` the shipped requirements (their text travels as an argument of the ssh command:
the host writes it to a temp file of its own). Nothing is installed when every pin already matches.
"""
import time

from . import facts, hostenv, requirements
from .remote import PROBE_SOURCE, HostError, decode, on_hosts, parse_answers, run
from .report import HostResult, Report

ASK_TIMEOUT = 60
VENV_TIMEOUT = 300
INSTALL_TIMEOUT = 3600
BASE_VERSION = "import sys; print(sys.version.split()[0])"
# Run by the venv's own python on the host (stdlib only): the requirements text arrives as argv[1].
PIP_INSTALL = """import os, subprocess, sys, tempfile
fd, path = tempfile.mkstemp(prefix="thunderlane-requirements-", suffix=".txt")
try:
    with os.fdopen(fd, "w") as f:
        f.write(sys.argv[1])
    sys.exit(subprocess.call([sys.executable, "-m", "pip", "install", "--disable-pip-version-check",
                              "--no-input", "-r", path]))
finally:
    os.unlink(path)
"""


def columns(pins=None):
    """The table's figures: python, then every pinned distribution."""
    return ["python", *requirements.names(pins or requirements.shipped())]


def setup_hosts(inv, hosts, pins=None, req_text=None, out=None):
    """A Report with one row per host: 'nothing to do', 'installed', or why not."""
    pins = pins or requirements.shipped()
    req_text = req_text if req_text is not None else requirements.text()
    got = on_hosts(hosts, lambda h: setup_host(inv, h, pins, req_text, out))
    results = [HostResult(name, r.kind, False, r.message) if isinstance(r, HostError) else r
               for name, r in got.items()]
    return Report("setup-hosts", tuple(results))


def setup_host(inv, host, pins, req_text, out=None):
    """Bring one host's venv to the pins; a HostResult, or a HostError when refused or failed."""
    started = time.monotonic()
    base = base_version(inv, host)
    venv = venv_versions(inv, host, pins)
    step = hostenv.decide(host.name, host.python, base, venv, pins)
    if step.action == "refuse":
        raise HostError(host.name, "refused", step.reason)
    if step.action == "nothing":
        return _result(host, "nothing to do", venv, pins, started, step.reason)
    _say(out, f"{host.name}: {step.reason}")
    if step.action == "create":
        _must(inv, host, [host.base_python, "-m", "venv", hostenv.venv_dir(host.python)], VENV_TIMEOUT,
              f"{host.base_python} -m venv {hostenv.venv_dir(host.python)}")
    _say(out, f"{host.name}: pip install -r {requirements.PATH.name} into {hostenv.venv_dir(host.python)}")
    _must(inv, host, [host.python, "-c", PIP_INSTALL, req_text], INSTALL_TIMEOUT, "pip install")
    venv = venv_versions(inv, host, pins)
    off = hostenv.off_pin(venv, pins) if venv else [("python", None, host.python)]
    if off:
        raise HostError(host.name, "failed", "after pip install still off the pins: "
                        + ", ".join(f"{d} {have} (pinned {want})" for d, have, want in off))
    return _result(host, "installed", venv, pins, started, step.reason)


def base_version(inv, host):
    """The (major, minor, micro) of the host's ``base_python``; refused (HostError) below 3.11."""
    version = None
    if host.base_python:
        code, out, err = run(inv, host, [host.base_python, "-c", BASE_VERSION], timeout=ASK_TIMEOUT)
        if code == 127:
            raise HostError(host.name, "refused", f"{host.name}: base_python: no interpreter at {host.base_python}")
        if code != 0:
            raise HostError(host.name, "refused", f"{host.name}: base_python {host.base_python} exited {code}: "
                                                  f"{_tail(err)}")
        version = hostenv.parse_version(out)
    refusal = hostenv.check_base(host.name, host.base_python, version)
    if refusal:
        raise HostError(host.name, "refused", refusal)
    return version


def venv_versions(inv, host, pins):
    """facts.Versions of the interpreter at the host's ``python``; None when there is none."""
    query = facts.versions(requirements.names(pins))
    code, out, err = run(inv, host, [host.python, "-c", PROBE_SOURCE, *query.args], timeout=ASK_TIMEOUT)
    if code == 127:
        return None
    if code != 0:
        raise HostError(host.name, "error", f"{host.python} exited {code}: {_tail(err)}")
    return parse_answers(host.name, [query], [decode(host.name, out)])[0]


def _must(inv, host, argv, timeout, what):
    code, _, err = run(inv, host, argv, timeout=timeout)
    if code != 0:
        raise HostError(host.name, "failed", f"{what} exited {code}: {_tail(err)}")


def _result(host, verdict, venv, pins, started, detail):
    figures = {"python": venv.python, **{n: venv.packages.get(n) for n in requirements.names(pins)}}
    return HostResult(host.name, verdict, True, f"{detail} ({time.monotonic() - started:.1f}s)", figures)


def _tail(err):
    return ((err or "").strip().splitlines() or ["no output"])[-1][:300]


def _say(out, line):
    if out is not None:
        print(line, file=out, flush=True)
