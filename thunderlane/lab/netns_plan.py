"""The namespaced lab as pure data: names, addresses and the ``ip``/``tc`` commands that make it
(``plan``), nothing run here (``netns.py`` runs them).

One lab is ``tl<k>`` (``fab lab-up``; the tests' is ``tt<k>``), k being $THUNDER_LAB_NET's second
octet, so labs of different nets never share a name or an address. Hosts are numbered i = 0, 1, ...:
- a namespace per host (``tl77-mac4``) and one holding the wires (``tl77-sw``);
- control link of host i: the root namespace's ``tl77c<i>`` (``x.4i+1/30``), a bridge ``c<i>`` in
  the wires, the host's ``ctl`` (``x.4i+2/30``): the operator's LAN;
- data link: the host's ``data``, a port ``d<i>`` of the bridge ``data`` in the wires, every host's
  data address in one subnet: the Thunderbolt.
Addresses come from 198.18.0.0/15 only: ``tl<k>`` owns 198.19.k.0/24, ``tt<k>`` 198.18.k.128/25.
The root namespace routes that block ``unreachable`` (the hosts' /30s, more specific, still win):
nothing of the lab leaves by the default route. The namespaces have no default route at all.
Every end with an address has a fixed MAC and every neighbour is pinned (``nud permanent``): no
ARP, so a pulled cable (the wires' port towards the host taken down) is silence, never an error.
"""
import ipaddress
from dataclasses import dataclass

SCOPES = {"lab": ("tl", "198.19.{k}.0/24"), "test": ("tt", "198.18.{k}.128/25")}
DELAY_MS = 1           # the control link's delay each way, where the kernel has sch_netem
BURST, LATENCY = "1mb", "50ms"
IFNAMSIZ = 15          # Linux interface names: at most 15 characters


class PlanError(ValueError):
    pass


@dataclass(frozen=True)
class HostLinks:
    """One host's place in the lab: its namespace, addresses and the wires' ports of its cables."""
    name: str
    index: int
    ns: str
    control_ip: str        # the host's end of the control link (its inventory hostname)
    local_ip: str          # the root namespace's end of it
    data_ip: str
    root_if: str           # the control link's interface in the root namespace
    ports: tuple           # (("control", port), ("data", port)): wires' ports towards the host

    def port(self, which):
        return dict(self.ports)[which]


@dataclass(frozen=True)
class Plan:
    lab_id: str
    scope: str
    k: int
    block: str             # every lab address is in it; the root namespace routes it unreachable
    wires: str             # the namespace holding the bridges
    hosts: tuple           # HostLinks, in order
    control_mbit: int
    data_mbit: int

    def host(self, name):
        for h in self.hosts:
            if h.name == name:
                return h
        raise PlanError(f"no host {name!r} in lab {self.lab_id} (hosts: {', '.join(h.name for h in self.hosts)})")

    @property
    def namespaces(self):
        return (self.wires, *(h.ns for h in self.hosts))

    @property
    def root_links(self):
        return tuple(h.root_if for h in self.hosts)

    def addresses(self):
        return [ip for h in self.hosts for ip in (h.control_ip, h.local_ip, h.data_ip)]


def lab_k(net):
    """k of a lab from $THUNDER_LAB_NET ('127.71.0' -> 71; unset -> 77, the lab's default net)."""
    parts = (net or "127.77.0").split(".")
    if len(parts) < 2 or not parts[1].isdigit() or int(parts[1]) > 255:
        raise PlanError(f"THUNDER_LAB_NET={net!r}: its second part must be a number 0-255")
    return int(parts[1])


def plan(names, k, control_mbit=1000, data_mbit=10000, scope="lab"):
    """The lab for hosts ``names`` (in order), id k (0-255), links shaped to these rates."""
    if scope not in SCOPES or not 0 <= k <= 255:
        raise PlanError(f"no lab scope {scope!r} / k {k!r} (scopes: {', '.join(SCOPES)}; k 0-255)")
    if min(control_mbit, data_mbit) < 1:
        raise PlanError(f"link rates must be at least 1 Mbit/s (control {control_mbit}, data {data_mbit})")
    prefix, block = SCOPES[scope][0] + str(k), ipaddress.ip_network(SCOPES[scope][1].format(k=k))
    control, data = block.subnets(prefixlen_diff=1)
    if not names or len(names) > control.num_addresses // 4 or len(set(names)) != len(names):
        raise PlanError(f"lab {prefix}: give 1 to {control.num_addresses // 4} distinct hosts, not {list(names)}")
    hosts = tuple(_host(prefix, i, n, control, data) for i, n in enumerate(names))
    return Plan(prefix, scope, k, str(block), f"{prefix}-sw", hosts, int(control_mbit), int(data_mbit))


def _host(prefix, i, name, control, data):
    pair = control.network_address + 4 * i
    return HostLinks(name=name, index=i, ns=f"{prefix}-{name}", control_ip=str(pair + 2), local_ip=str(pair + 1),
                     data_ip=str(data.network_address + 1 + i), root_if=f"{prefix}c{i}",
                     ports=(("control", f"c{i}h"), ("data", f"d{i}")))


def mac(p, h, end):
    """The fixed MAC of an end with an address: locally administered, unique per lab, host and end."""
    kind = {"root": 1, "ctl": 2, "data": 3}[end]
    return f"02:{0x19 if p.scope == 'lab' else 0x18:02x}:{p.k:02x}:{kind:02x}:{h.index >> 8:02x}:{h.index & 255:02x}"


def _ip(ns, *args):
    return ["ip", *(["-n", ns] if ns else []), *args]


def build(p):
    """(creates, argv) steps that make the lab, in order. ``creates`` names what a step adds,
    ("netns", name) or ("link", namespace or None, interface), so it is skipped when that is there;
    every other step is idempotent (replace, set). Running all of them again changes nothing."""
    steps = [(("netns", ns), ["ip", "netns", "add", ns]) for ns in p.namespaces]
    steps += [(None, _ip(ns, "link", "set", "dev", "lo", "up")) for ns in p.namespaces]
    steps += [(("link", p.wires, "data"), _ip(p.wires, "link", "add", "name", "data", "type", "bridge")),
              (None, _ip(p.wires, "link", "set", "dev", "data", "up"))]
    for h in p.hosts:
        steps += _cables(p, h)
    steps += [(None, n) for h in p.hosts for n in _neighbours(p, h)]
    steps.append((None, ["ip", "route", "replace", "unreachable", p.block]))  # after the /30s
    return steps


def _cables(p, h):
    sw, bridge, (_, ctl_port), (_, data_port) = p.wires, f"c{h.index}", *h.ports
    root_port = f"c{h.index}r"
    return [
        (("link", sw, bridge), _ip(sw, "link", "add", "name", bridge, "type", "bridge")),
        (("link", None, h.root_if), ["ip", "link", "add", "name", h.root_if, "address", mac(p, h, "root"),
                                     "type", "veth", "peer", "name", root_port, "netns", sw]),
        (("link", sw, ctl_port), _ip(sw, "link", "add", "name", ctl_port, "type", "veth", "peer", "name", "ctl",
                                     "address", mac(p, h, "ctl"), "netns", h.ns)),
        (("link", sw, data_port), _ip(sw, "link", "add", "name", data_port, "type", "veth", "peer", "name", "data",
                                      "address", mac(p, h, "data"), "netns", h.ns)),
        *[(None, _ip(sw, "link", "set", "dev", port, "master", master, "up"))
          for port, master in ((root_port, bridge), (ctl_port, bridge), (data_port, "data"))],
        (None, _ip(sw, "link", "set", "dev", bridge, "up")),
        (None, ["ip", "addr", "replace", f"{h.local_ip}/30", "dev", h.root_if]),
        (None, ["ip", "link", "set", "dev", h.root_if, "up"]),
        (None, _ip(h.ns, "addr", "replace", f"{h.control_ip}/30", "dev", "ctl")),
        (None, _ip(h.ns, "addr", "replace", f"{h.data_ip}/{ipaddress.ip_network(p.block).prefixlen + 1}",
                   "dev", "data")),
        (None, _ip(h.ns, "link", "set", "dev", "ctl", "up")),
        (None, _ip(h.ns, "link", "set", "dev", "data", "up")),
    ]


def _neighbours(p, h):
    """Pinned neighbours of host h's ends and of the root's end towards it."""
    pin = [["ip", "neigh", "replace", h.control_ip, "lladdr", mac(p, h, "ctl"), "nud", "permanent", "dev", h.root_if],
           _ip(h.ns, "neigh", "replace", h.local_ip, "lladdr", mac(p, h, "root"), "nud", "permanent", "dev", "ctl")]
    return pin + [_ip(h.ns, "neigh", "replace", o.data_ip, "lladdr", mac(p, o, "data"), "nud", "permanent",
                      "dev", "data") for o in p.hosts if o is not h]


def shaping(p):
    """(namespace or None, interface, Mbit/s, delayed) for each end that sends into a link: both
    ends of the control link (delayed) and both of the data link (the host's, the bridge's port)."""
    out = []
    for h in p.hosts:
        out += [(None, h.root_if, p.control_mbit, True), (h.ns, "ctl", p.control_mbit, True),
                (h.ns, "data", p.data_mbit, False), (p.wires, h.port("data"), p.data_mbit, False)]
    return out


def tbf(ns, dev, mbit):
    return ["tc", *(["-n", ns] if ns else []), "qdisc", "replace", "dev", dev, "root", "handle", "1:",
            "tbf", "rate", f"{mbit}mbit", "burst", BURST, "latency", LATENCY]


def netem(ns, dev):
    """The delay, as the tbf's child (tbf shapes, netem delays what it lets through)."""
    return ["tc", *(["-n", ns] if ns else []), "qdisc", "replace", "dev", dev, "parent", "1:1", "handle", "10:",
            "netem", "delay", f"{DELAY_MS}ms"]


def cable(p, host, which, state):
    """The command that pulls (state 'down') or plugs ('up') host's control or data cable: the
    wires' port towards the host goes down. The host's end loses carrier and drops what it sends;
    the bridge has nowhere to deliver what others send it. Neither end is taken down, so both keep
    their addresses, routes and pinned neighbours: no reset, no ICMP, no ENETUNREACH, only silence,
    and TCP sessions across the cable hang until their own timeouts, as with a real pulled cable."""
    if which not in ("control", "data") or state not in ("down", "up"):
        raise PlanError(f"lab-link: give control|data and down|up, not {which!r} {state!r}")
    return _ip(p.wires, "link", "set", "dev", p.host(host).port(which), state)


def to_dict(p):
    """What a record keeps: the plan's inputs, and by name what it makes (what lab-down removes)."""
    return {"lab_id": p.lab_id, "scope": p.scope, "k": p.k, "names": [h.name for h in p.hosts],
            "control_mbit": p.control_mbit, "data_mbit": p.data_mbit, "namespaces": list(p.namespaces),
            "root_links": list(p.root_links), "unreachable": p.block,
            "hosts": {h.name: {"ns": h.ns, "control_ip": h.control_ip, "local_ip": h.local_ip,
                               "data_ip": h.data_ip} for h in p.hosts}}


def from_dict(d):
    return plan(d["names"], d["k"], d["control_mbit"], d["data_mbit"], d["scope"])
