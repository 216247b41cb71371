"""Issue 12 item 1 on the lab: the namespaced lab (root, Linux). A lab of its own (scope 'test',
198.18.k.128/25, names tt<k>-...) with each host's sshd in its own network namespace: verify and a
short ring window over it (the ring on the data link), a pulled cable that is silence, shaped link
rates, and a lab-down that leaves nothing behind."""
import ipaddress
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.lab.conftest import HOSTS, LAYOUT, by_host, fab, fab_json, namespaced_lab
from thunderlane import inventory, lab
from thunderlane.lab import LabError, kit, netns
from thunderlane.sync import sync_cache

CONTROL_MBIT, DATA_MBIT = 100, 1000

CONNECT = """
import errno, socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])).close()
    print("connected")
except socket.timeout:
    print("timeout")
except OSError as e:
    print(errno.errorcode.get(e.errno, type(e).__name__))
"""

# serve: take one connection, read it to the end, answer "ok"; send: N bytes, then the rate
PROBE = """
import socket, sys, time
mode, ip, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
if mode == "serve":
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((ip, port))
    s.listen(1)
    print("listening", flush=True)
    c, _ = s.accept()
    while c.recv(1 << 20):
        pass
    c.sendall(b"ok")
else:
    size, chunk = int(sys.argv[4]), b"\\0" * (1 << 20)
    c = socket.create_connection((ip, port), timeout=20)
    t = time.monotonic()
    for _ in range(size >> 20):
        c.sendall(chunk)
    c.shutdown(socket.SHUT_WR)
    assert c.recv(2) == b"ok"
    print(size * 8 / (time.monotonic() - t) / 1e6)
"""


@pytest.fixture(scope="module")
def ns_lab(tmp_path_factory):
    yield from namespaced_lab(tmp_path_factory, "netns-lab", CONTROL_MBIT, DATA_MBIT)


def python_in(ns, code, *args, timeout=30):
    """Run python code in namespace ``ns`` (None: here, the root namespace); its stdout."""
    prefix = netns.exec_prefix(ns) if ns else []
    p = subprocess.run([*prefix, sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                       timeout=timeout)
    assert p.returncode == 0, p.stderr
    return p.stdout.strip()


def connect(ns, ip, port, seconds=1):
    return python_in(ns, CONNECT, ip, port, seconds)


def data_bytes(ns):
    """Bytes the host has sent into its data link."""
    out = subprocess.run(["ip", "-n", ns, "-s", "-j", "link", "show", "dev", "data"], capture_output=True,
                         text=True, check=True).stdout
    return json.loads(out)[0]["stats64"]["tx"]["bytes"]


def test_hosts_answer_on_their_namespaces_and_the_ring_runs_over_the_data_link(ns_lab, tmp_path):
    d, inv = ns_lab
    plan = netns.plan_of(d)
    block = ipaddress.ip_network(plan.block)
    assert lab.net.remembered_net(d) == "netns" and block.subnet_of(ipaddress.ip_network("198.18.0.0/15"))
    for h in inv.hosts.values():
        links = plan.host(h.name)
        assert (h.hostname, h.data_ip) == (links.control_ip, links.data_ip)
        assert {ipaddress.ip_address(h.hostname), ipaddress.ip_address(h.data_ip)} <= set(block)
    code, report = fab_json(inv, "verify-dataset")
    assert code == 0 and report["ok"] and set(by_host(report)) == {"local", *HOSTS}, report
    code, report = fab_json(inv, "verify-cache")
    assert by_host(report)["mac4"]["verdict"] == "partial" and by_host(report)["mac5"]["verdict"] == "complete"
    with open(os.devnull, "w") as devnull:   # rsync over mac4's control link
        assert sync_cache(inv, inv.hosts["mac4"], out=devnull).ok

    kit.write_profile(tmp_path, "netns", "test_netns_lab", source="synthetic_mechanics", lane={"min_free_mb": 0})
    before = {h.name: data_bytes(h.ns) for h in plan.hosts}
    code, r = fab_json(inv, "train-window", "--profile", "netns", "--target", "2", "--window", "2",
                       env={"THUNDER_PROFILES": str(tmp_path)})
    assert code == 0 and r["verdict"] == "success", r
    hostfile = json.loads((Path(r["plans"][0]) / "hostfile.json").read_text())
    assert [h["ips"] for h in hostfile] == [[plan.host(n).data_ip] for n in HOSTS]
    sent = {h.name: data_bytes(h.ns) - before[h.name] for h in plan.hosts}
    assert all(n > 10_000 for n in sent.values()), sent   # the ring's all_sum crossed the data link
    ckpt = json.loads((d / "mac4" / lab.RUNS_REL / "test_netns_lab" / "checkpoint.json").read_text())
    assert ckpt["step"] == 2 and ckpt["world_size"] == len(HOSTS)


def test_lab_up_again_keeps_the_namespaces_and_sshds(ns_lab):
    d, inv = ns_lab
    running, record = lab.status(d), netns.recorded(d)
    again = inventory.load(lab.up(HOSTS, lab=d, model_mb=1.0, layout=LAYOUT))   # net and rates remembered
    assert lab.status(d) == running and all(running.values())
    assert netns.recorded(d) == record
    assert [h.hostname for h in again.hosts.values()] == [h.hostname for h in inv.hosts.values()]


def test_a_pulled_cable_is_silence_and_plugging_it_back_restores_it(ns_lab):
    """`fab lab-link mac5 data down`: a connect from mac4 to mac5's data address times out (no
    refusal, no error), mac5's control link still answers; `up` brings the data link back. The
    control cable likewise, seen from this machine."""
    d, inv = ns_lab
    plan = netns.plan_of(d)
    mac4, mac5 = plan.host("mac4"), plan.host("mac5")
    port4, port5 = inv.hosts["mac4"].port, inv.hosts["mac5"].port
    assert connect(mac4.ns, mac5.data_ip, port5) == "connected"   # mac5's sshd listens on its data address
    p = fab(inv, "lab-link", "mac5", "data", "down")
    try:
        assert p.returncode == 0 and "mac5: data cable pulled" in p.stdout, p.stderr
        # what mac4 learnt of mac5 by ARP is forgotten: an unanswered ARP would be EHOSTUNREACH
        # after 3 s; the pinned neighbour (not flushed) keeps it silence
        subprocess.run(["ip", "-n", mac4.ns, "neigh", "flush", "dev", "data"], check=True)
        t0 = time.monotonic()
        assert connect(mac4.ns, mac5.data_ip, port5, seconds=4) == "timeout"
        assert time.monotonic() - t0 >= 3.9
        assert connect(mac5.ns, mac4.data_ip, port4) == "timeout"
        assert connect(None, mac5.control_ip, port5) == "connected"
    finally:
        p = fab(inv, "lab-link", "mac5", "data", "up")
    assert p.returncode == 0 and "mac5: data cable plugged" in p.stdout, p.stderr
    assert connect(mac4.ns, mac5.data_ip, port5) == "connected"

    netns.link(d, "mac4", "control", "down")
    try:
        assert connect(None, mac4.control_ip, port4) == "timeout"
        assert connect(mac4.ns, mac5.data_ip, port5) == "connected"
    finally:
        netns.link(d, "mac4", "control", "up")
    assert connect(None, mac4.control_ip, port4) == "connected"


def test_another_lab_folder_cannot_take_this_labs_namespaces(ns_lab, tmp_path):
    d, _ = ns_lab
    with pytest.raises(LabError, match=f"is {d}'s"):
        netns.up(tmp_path, HOSTS, CONTROL_MBIT, DATA_MBIT, scope="test")
    assert netns.recorded(tmp_path) is None and netns.plan_of(d) is not None


def _rate(server_ns, client_ns, ip, size):
    server = subprocess.Popen([*netns.exec_prefix(server_ns), sys.executable, "-c", PROBE, "serve", ip, "9301"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "listening"
        return float(python_in(client_ns, PROBE, "send", ip, 9301, size))
    finally:
        server.kill()
        server.wait()


def test_the_control_link_is_shaped_below_the_data_link(ns_lab, record_property):
    d, _ = ns_lab
    plan = netns.plan_of(d)
    mac4, mac5 = plan.host("mac4"), plan.host("mac5")
    control = _rate(mac5.ns, None, mac5.control_ip, 8 << 20)   # from here to mac5, on its control link
    data = _rate(mac5.ns, mac4.ns, mac5.data_ip, 32 << 20)      # mac4 to mac5 on the data link
    record_property("measured_mbit", {"control": round(control), "data": round(data)})
    print(f"netns lab: control {control:.0f} Mbit/s (shaped to {CONTROL_MBIT}), data {data:.0f} Mbit/s "
          f"(shaped to {DATA_MBIT})")
    assert control < CONTROL_MBIT * 1.3, control   # tbf's 1 MB burst lets the first MB through at once
    assert data > 2 * control, (control, data)


def test_lab_down_leaves_no_namespace_link_route_or_sshd(ns_lab):
    d, _ = ns_lab
    record = netns.recorded(d)
    pids = [pid for pid in lab.status(d).values() if pid]
    removed = lab.down(d)
    assert {what for kind, what in removed if kind == "netns"} >= {f"namespace {ns}" for ns in record["namespaces"]}
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout
    routes = subprocess.run(["ip", "route"], capture_output=True, text=True).stdout
    assert record["lab_id"] + "-" not in namespaces
    assert not any(dev in links for dev in record["root_links"])
    assert record["unreachable"] not in routes
    assert pids and not any(lab.sshd_pid(d, name) for name in HOSTS)
    assert netns.recorded(d) is None
