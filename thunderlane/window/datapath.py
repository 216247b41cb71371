"""The ring's data path, proven before launch: every host listens on the endpoints its rank will
bind and connects to every other host's (``onhost/links.py``), all at once, in preflight's one ssh
session per host.

Which endpoints (mlx 0.32.4, ``mlx/_distributed_utils/launch.py``): with the ring backend, rank i
listens on its ``data_ip`` at ``starting_port + i`` (one IP per host, one connection per IP); with
jaccl, rank 0's ``data_ip`` at ``starting_port`` is the coordinator every rank dials
(``MLX_JACCL_COORDINATOR``), the data itself goes over RDMA. The ring itself (``ring.cpp``) has rank
i accept its left neighbour and dial rank i+1; the check dials every pair both ways, which is the
same for two and three hosts and stricter beyond (one data_ip per host means one network). For jaccl every host must also list
its RDMA devices with ``ibv_devices``, and those the inventory names for it.

A broken pair is a ``data-link`` refusal naming both ends (``mac4 -> mac5 10.0.0.5:32324: timed
out``); a port another program (or a running window) holds is ``port in use``, not a broken link.
"""
import json
import os
from dataclasses import dataclass

from ..facts import Query
from ..remote import HostError
from .triage import DATA_LINK

PORT_VAR = "THUNDER_RING_PORT"  # the launcher reads the same variable (--starting-port)
DEFAULT_PORT = 32323            # mlx.launch's default --starting-port
WAIT, TIMEOUT = 5.0, 2.0        # seconds a host keeps retrying refused connects; per connect


class PortError(ValueError):
    """THUNDER_RING_PORT is not a usable port."""


def starting_port(env=os.environ):
    raw = env.get(PORT_VAR) or str(DEFAULT_PORT)
    if not raw.isdigit() or not 1 <= int(raw) <= 65535:
        raise PortError(f"{PORT_VAR}={raw!r} is not a port (1-65535)")
    return int(raw)


@dataclass(frozen=True)
class Endpoint:
    host: str
    ip: str
    port: int

    def __str__(self):
        return f"{self.ip}:{self.port}"


def endpoints(hosts, backend, port):
    """The TCP endpoints the ranks will listen on, in rank order (see the module's docstring)."""
    if backend == "jaccl":
        return [Endpoint(hosts[0].name, hosts[0].data_ip, port)]
    return [Endpoint(h.name, h.data_ip, port + i) for i, h in enumerate(hosts)]


def requests(hosts, backend, port, wait=WAIT, timeout=TIMEOUT):
    """What each host is asked: its own endpoints to listen on, every other host's to reach."""
    ends = endpoints(hosts, backend, port)
    peers = len(hosts) - 1
    out = {}
    for h in hosts:
        own = [e for e in ends if e.host == h.name]
        out[h.name] = {"listen": [[e.ip, e.port] for e in own],
                       "connect": [[e.host, e.ip, e.port] for e in ends if e.host != h.name],
                       "expect": peers * len(own), "wait": wait, "timeout": timeout}
    return out


@dataclass(frozen=True)
class LinkFacts:
    """One host's answer: its listeners ({ip, port, ok, in_use, error}) and connects ({peer, ip,
    port, ok, error, tries, seconds}), as the probe printed them."""
    listen: tuple
    connect: tuple

    @classmethod
    def from_json(cls, d):
        return cls(tuple(dict(x) for x in d["listen"]), tuple(dict(x) for x in d["connect"]))


@dataclass(frozen=True)
class RdmaFacts:
    tool: str | None
    devices: tuple
    error: str | None

    @classmethod
    def from_json(cls, d):
        return cls(d.get("tool"), tuple(d.get("devices") or ()), d.get("error"))


def links_query(request):
    return Query(("links", json.dumps(request, sort_keys=True)), LinkFacts.from_json)


RDMA_QUERY = Query(("rdma",), RdmaFacts.from_json)


def judge_links(answers):
    """{host: [problem]} from every host's LinkFacts (a HostError: that host could not be asked, which
    is its problem, and the pairs to it are not judged)."""
    problems = {name: [] for name in answers}
    in_use = set()
    for name, facts in answers.items():
        if isinstance(facts, HostError):
            problems[name].append(f"data path not checked: {facts.kind}: {facts.message}")
            continue
        for lst in facts.listen:
            where = f"{lst['ip']}:{lst['port']}"
            if lst["in_use"]:
                in_use.add(where)
                problems[name].append(f"port in use: ring port {where} is taken here (a window running, or "
                                      f"another program); not a broken link, but the ring cannot bind it")
            elif not lst["ok"]:
                problems[name].append(f"{DATA_LINK}: cannot listen on {where} here: {lst['error']} "
                                      f"(is data_ip an address of this host?)")
    for name, facts in answers.items():
        if isinstance(facts, HostError):
            continue
        for c in facts.connect:
            where = f"{c['ip']}:{c['port']}"
            if c["ok"] or where in in_use or isinstance(answers.get(c["peer"]), HostError):
                continue
            problems[name].append(f"{DATA_LINK}: {name} -> {c['peer']} {where}: {c['error']}")
    return problems


def judge_rdma(hosts, answers):
    """{host: [problem]} for jaccl: ``ibv_devices`` present, devices listed, the inventory's among them."""
    problems = {h.name: [] for h in hosts}
    for h in hosts:
        unlisted = [p.name for p in hosts if p.name != h.name and p.name not in dict(h.rdma)]
        if unlisted:
            problems[h.name].append(f"jaccl: the inventory's rdma names no device toward {', '.join(unlisted)} "
                                    f"(rdma: {{{unlisted[0]}: rdma_enN}}, as ibv_devices names it)")
        facts = answers.get(h.name)
        if isinstance(facts, HostError) or facts is None:
            continue
        if facts.tool is None:
            problems[h.name].append("jaccl: ibv_devices not found on this host (RDMA over Thunderbolt "
                                    "needs macOS 26.2+ with RDMA enabled)")
        elif facts.error or not facts.devices:
            problems[h.name].append(f"jaccl: ibv_devices lists no RDMA device{': ' + facts.error if facts.error else ''}")
        else:
            missing = sorted({d for _, d in h.rdma} - set(facts.devices))
            if missing:
                problems[h.name].append(f"jaccl: the inventory's rdma device(s) {', '.join(missing)} are not "
                                        f"among ibv_devices' {', '.join(facts.devices)}")
    return problems


def verdict(problems):
    """A preflight host's verdict: ``data-link`` when a link of its own is broken, else as before."""
    if any(p.startswith(DATA_LINK + ":") for p in problems):
        return DATA_LINK
    return "refused" if problems else "ready"


def queries(hosts, backend, port=None):
    """{host: the queries of its data path}, asked first in preflight's one probe session per host:
    every host's session starts at the same moment, so every host listens at once (a peer that comes
    up later is retried until :data:`WAIT`). Raises :class:`PortError` on a bad THUNDER_RING_PORT."""
    port = starting_port() if port is None else port
    reqs = requests(hosts, backend, port)
    return {h.name: [links_query(reqs[h.name])] + ([RDMA_QUERY] if backend == "jaccl" else []) for h in hosts}


def judge(hosts, backend, answers):
    """{host: [problem]} from {host: the answers to its :func:`queries`, in order, or a HostError}."""
    problems = judge_links({n: r if isinstance(r, HostError) else r[0] for n, r in answers.items()})
    if backend == "jaccl":
        rdma = {n: r if isinstance(r, HostError) else r[1] for n, r in answers.items()}
        for name, items in judge_rdma(hosts, rdma).items():
            problems[name] = items + problems[name]
    return problems
