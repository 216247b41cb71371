"""Where the lab's sshds listen. Per-host mode: each host on its own loopback address
(127.77.0.10, .11, ...; Linux routes all of 127/8 to ``lo``). Single-address mode: every host on
one address (127.0.0.1) with its own port, as on macOS, which has no 127.x aliases unless someone
adds them by hand. The mode a lab-up chose is remembered in ``.lab/addresses``.

Which net: ``loopback`` (the above; the default) or ``netns`` (a network namespace per host with
real, shaped links: ``netns.py``), remembered in ``.lab/net``."""
import os
import re
import sys
from pathlib import Path

from ..fsutil import atomic_write
from .seed import LabError

NET_VAR = "THUNDER_LAB_NET"   # 127.78.0: per-host addresses 127.78.0.10, ...; 127.0.0.1: one address
SINGLE, PER_HOST = "single", "per-host"
MODES = (SINGLE, PER_HOST)
MODE_FILE = "addresses"
LOOPBACK, NETNS = "loopback", "netns"
NETS = (LOOPBACK, NETNS)
NET_FILE = "net"
NET = re.compile(r"127\.\d{1,3}\.\d{1,3}")
ONE = re.compile(r"127\.\d{1,3}\.\d{1,3}\.\d{1,3}")


def default_mode(platform=None, env=None):
    """The mode when neither the operator nor an earlier lab-up chose one: what $THUNDER_LAB_NET
    spells (three parts: per-host, four: single), else single on macOS and per-host elsewhere."""
    net = (os.environ if env is None else env).get(NET_VAR)
    if net:
        return SINGLE if ONE.fullmatch(net) else PER_HOST
    return SINGLE if (platform or sys.platform) == "darwin" else PER_HOST


def remembered(lab):
    """The mode the last lab-up of ``lab`` chose, or None."""
    try:
        mode = (Path(lab) / MODE_FILE).read_text().strip()
    except OSError:
        return None
    return mode if mode in MODES else None


def choose(requested, lab, platform=None, env=None):
    """``requested`` ('single', 'per-host'), else the lab's remembered mode, else the default."""
    if requested and requested not in MODES:
        raise LabError(f"addresses {requested!r}: choose one of {', '.join(MODES)}")
    return requested or remembered(lab) or default_mode(platform, env)


def remember(lab, mode):
    atomic_write(Path(lab) / MODE_FILE, mode + "\n")


def address(index, mode=PER_HOST, env=None):
    """Loopback address of the index-th lab host: per-host $THUNDER_LAB_NET.10, .11, ...
    (127.77.0 by default); single-address $THUNDER_LAB_NET if it is a whole address, else 127.0.0.1."""
    net = (os.environ if env is None else env).get(NET_VAR, "")
    if mode == SINGLE:
        return net if ONE.fullmatch(net) else "127.0.0.1"
    net = net or "127.77.0"
    if not NET.fullmatch(net):
        raise LabError(f"{NET_VAR}={net!r}: give the first three parts of a loopback address, e.g. "
                       f"127.78.0 (a whole address such as 127.0.0.1 is for single-address mode)")
    return f"{net}.{10 + index}"


def remembered_net(lab):
    """The net the last lab-up of ``lab`` made ('loopback' or 'netns'), or None."""
    try:
        kind = (Path(lab) / NET_FILE).read_text().strip()
    except OSError:
        return None
    return kind if kind in NETS else None


def choose_net(requested, lab):
    """``requested`` ('loopback', 'netns'), else the lab's remembered net, else loopback."""
    if requested and requested not in NETS:
        raise LabError(f"net {requested!r}: choose one of {', '.join(NETS)}")
    return requested or remembered_net(lab) or LOOPBACK


def remember_net(lab, kind):
    atomic_write(Path(lab) / NET_FILE, kind + "\n")
