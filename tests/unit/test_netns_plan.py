"""The namespaced lab's plan (issue 12 item 1), pure: addresses only from 198.18.0.0/15, unique and
disjoint between labs, every one behind the root namespace's unreachable route; interface names
that Linux accepts; steps that can run twice; cables pulled at the wires, never at an end."""
import ipaddress
import itertools

import pytest

from thunderlane.lab import hosts, net, netns
from thunderlane.lab.netns_plan import (IFNAMSIZ, PlanError, build, cable, from_dict, lab_k, mac, plan, shaping,
                                        to_dict)

BENCH = ipaddress.ip_network("198.18.0.0/15")
NAMES = ["mac4", "mac5", "mac6"]


def interface_names(p):
    """Every interface name the plan's commands give (``name X``, ``peer name X``, ``dev X``)."""
    found = set()
    for _, argv in build(p):
        found |= {argv[i + 1] for i, word in enumerate(argv[:-1]) if word in ("name", "dev", "master")}
    return found


@pytest.mark.parametrize("scope", ["lab", "test"])
@pytest.mark.parametrize("k", [0, 71, 77, 255])
def test_addresses_are_benchmarking_addresses_unique_and_behind_the_unreachable_route(scope, k):
    p = plan(NAMES, k, scope=scope)
    addresses = [ipaddress.ip_address(a) for a in p.addresses()]
    block = ipaddress.ip_network(p.block)
    assert len(set(addresses)) == len(addresses) == 3 * len(NAMES)
    assert block.subnet_of(BENCH) and all(a in block for a in addresses)
    assert ipaddress.ip_address(f"198.18.{k}.11") not in addresses   # test_datapath's dead address
    route = ["ip", "route", "replace", "unreachable", p.block]
    argvs = [argv for _, argv in build(p)]
    assert argvs[-1] == route   # after every connected /30, which stays more specific
    assert not any("default" in argv for argv in argvs)   # no way out of a namespace


def test_the_control_pair_and_data_address_of_each_host():
    p = plan(["mac4", "mac5"], 71)
    assert [(h.local_ip, h.control_ip, h.data_ip) for h in p.hosts] == [
        ("198.19.71.1", "198.19.71.2", "198.19.71.129"), ("198.19.71.5", "198.19.71.6", "198.19.71.130")]
    assert p.host("mac5").ns == "tl71-mac5" and p.wires == "tl71-sw" and p.root_links == ("tl71c0", "tl71c1")
    with pytest.raises(PlanError, match="no host 'mac9'"):
        p.host("mac9")


def test_distinct_labs_never_share_an_address_or_a_name():
    blocks = [(scope, k, ipaddress.ip_network(plan(["a"], k, scope=scope).block))
              for scope in ("lab", "test") for k in range(256)]
    for (s1, k1, b1), (s2, k2, b2) in itertools.combinations(blocks, 2):
        assert not b1.overlaps(b2), (s1, k1, s2, k2)
    a, b = plan(NAMES, 71), plan(NAMES, 72)
    assert not set(a.namespaces) & set(b.namespaces) and not set(a.root_links) & set(b.root_links)
    assert not set(plan(NAMES, 71, scope="test").namespaces) & set(a.namespaces)


@pytest.mark.parametrize("scope,most", [("lab", 32), ("test", 16)])
def test_interface_names_fit_linux_at_the_most_hosts(scope, most):
    p = plan([f"host-with-a-long-name-{i:02d}" for i in range(most)], 255, scope=scope)
    names = interface_names(p)
    assert names and max(map(len, names)) <= IFNAMSIZ, sorted(names, key=len)[-3:]
    with pytest.raises(PlanError, match=f"1 to {most} distinct hosts"):
        plan([f"h{i}" for i in range(most + 1)], 255, scope=scope)


def test_macs_are_fixed_unique_and_every_neighbour_pinned():
    p = plan(NAMES, 71)
    macs = [mac(p, h, end) for h in p.hosts for end in ("root", "ctl", "data")]
    assert len(set(macs)) == len(macs) and all(m.startswith("02:") for m in macs)   # locally administered
    pins = [argv for _, argv in build(p) if "neigh" in argv]
    assert all("permanent" in argv for argv in pins)
    for h in p.hosts:
        pinned = {argv[argv.index("replace") + 1] for argv in pins if h.ns in argv and "data" in argv}
        assert pinned == {o.data_ip for o in p.hosts if o is not h}
    assert {argv[3] for argv in pins if argv[:2] == ["ip", "neigh"]} == {h.control_ip for h in p.hosts}


def test_every_step_can_run_again():
    """A step that adds something names it (and is skipped when it is there); the rest replace or set."""
    for creates, argv in build(plan(NAMES, 71)):
        verb = argv[argv.index("ip") + (3 if argv[1] == "-n" else 1) + 1]
        assert (creates is not None) == (verb == "add"), argv


def test_both_ends_of_each_link_are_shaped_and_only_the_control_link_delayed():
    p = plan(["mac4"], 71, control_mbit=1000, data_mbit=10000)
    assert shaping(p) == [(None, "tl71c0", 1000, True), ("tl71-mac4", "ctl", 1000, True),
                          ("tl71-mac4", "data", 10000, False), ("tl71-sw", "d0", 10000, False)]
    with pytest.raises(PlanError, match="at least 1 Mbit"):
        plan(["mac4"], 71, control_mbit=0)


def test_a_cable_is_pulled_at_the_wires_never_at_an_end():
    p = plan(NAMES, 71)
    assert cable(p, "mac5", "data", "down") == ["ip", "-n", "tl71-sw", "link", "set", "dev", "d1", "down"]
    assert cable(p, "mac4", "control", "up") == ["ip", "-n", "tl71-sw", "link", "set", "dev", "c0h", "up"]
    with pytest.raises(PlanError, match="control|data and down|up"):
        cable(p, "mac4", "wifi", "down")


def test_the_record_rebuilds_the_same_plan():
    p = plan(NAMES, 71, 100, 1000, scope="test")
    d = to_dict(p)
    assert from_dict(d) == p
    assert d["namespaces"] == ["tt71-sw", "tt71-mac4", "tt71-mac5", "tt71-mac6"]
    assert d["unreachable"] == "198.18.71.128/25" and d["root_links"] == ["tt71c0", "tt71c1", "tt71c2"]


@pytest.mark.parametrize("value,k", [(None, 77), ("127.71.0", 71), ("127.0.0.1", 0)])
def test_k_comes_from_the_lab_net(value, k):
    assert lab_k(value) == k


def test_lab_k_refuses_a_net_without_a_number():
    with pytest.raises(PlanError, match="second part"):
        lab_k("127.x.0")


def test_without_linux_or_root_namespaces_are_refused_with_the_reason():
    assert netns.unsupported(platform="darwin") == "network namespaces need Linux"
    assert netns.unsupported(platform="linux", euid=501) == "network namespaces need root (running as uid 501)"


def test_netns_where_it_cannot_be_keeps_the_loopback_lab_and_says_why(tmp_path, monkeypatch):
    said = []
    monkeypatch.setattr(netns, "unsupported", lambda: "network namespaces need root (running as uid 501)")
    assert hosts._net_kind("netns", tmp_path, said.append) == "loopback"
    assert said == ["net: loopback lab kept, not netns: network namespaces need root (running as uid 501)"]
    net.remember_net(tmp_path, "netns")
    assert hosts._net_kind(None, tmp_path, said.append) == "loopback" and len(said) == 2


def test_the_net_is_remembered_and_loopback_by_default(tmp_path):
    assert net.choose_net(None, tmp_path) == "loopback"
    net.remember_net(tmp_path, "netns")
    assert net.choose_net(None, tmp_path) == "netns" and net.choose_net("loopback", tmp_path) == "loopback"
    with pytest.raises(Exception, match="loopback, netns"):
        net.choose_net("wifi", tmp_path)
