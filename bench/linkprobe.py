"""Measured link rates on the namespaced lab (bench/links.py): a raw TCP probe per link, ssh over
the same link, and ssh's cipher with no link in the way. Every probe runs inside the namespace of
the lab host that sends or receives (found from its sshd's PID: `ip netns identify`), between the
lab's own addresses only; nothing goes anywhere else.
"""
import shlex
import subprocess
import sys
import time

import common as c
from thunderlane import lab as labmod, remote

# The receiver: binds, says "ready", reads one connection to EOF, prints bytes and seconds (from the
# first byte to EOF, so neither the connect nor the sender's start is counted).
RECEIVER = """
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(1); print("ready", flush=True)
s.settimeout(60); conn, _ = s.accept(); conn.settimeout(60)
n, t0 = 0, None
while True:
    b = conn.recv(1 << 20)
    if t0 is None: t0 = time.perf_counter()
    if not b: break
    n += len(b)
print(n, time.perf_counter() - t0, flush=True)
"""
SENDER = """
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=60)
block, left = b"\\0" * (1 << 20), int(sys.argv[3])
while left > 0:
    s.sendall(block[:left]); left -= len(block)
s.close()
"""
PROBE_PORT = 39900


def netns_of(lab, host):
    """The namespace ``host``'s sshd runs in, or None (the root namespace: a loopback lab)."""
    pid = labmod.sshd_pid(lab.dir, host)
    if pid is None:
        raise RuntimeError(f"{host}: its lab sshd is not running")
    p = subprocess.run(["ip", "netns", "identify", str(pid)], capture_output=True, text=True)
    return p.stdout.strip() or None


def inside(ns, argv):
    return ["ip", "netns", "exec", ns, *argv] if ns else list(argv)


def tcp_mbit(dst_ns, dst_ip, src_ns, nbytes, port=PROBE_PORT):
    """Raw TCP throughput in Mbit/s from namespace ``src_ns`` to ``dst_ip`` in ``dst_ns``."""
    recv = subprocess.Popen(inside(dst_ns, [sys.executable, "-c", RECEIVER, dst_ip, str(port)]),
                            stdout=subprocess.PIPE, text=True)
    try:
        if recv.stdout.readline().strip() != "ready":
            raise RuntimeError(f"TCP probe receiver on {dst_ip} did not start")
        c.run(inside(src_ns, [sys.executable, "-c", SENDER, dst_ip, str(port), str(nbytes)]), check=True)
        got, seconds = recv.stdout.readline().split()
        recv.wait(timeout=30)
    finally:
        if recv.poll() is None:
            recv.kill()
            recv.wait()
    if int(got) != nbytes:
        raise RuntimeError(f"TCP probe to {dst_ip}: {got} of {nbytes} bytes arrived")
    return nbytes * 8 / float(seconds) / 1e6


def ssh_argv(inv, host, address):
    """The lane's ssh command for ``host`` aimed at ``address`` (its control or data address), its
    pinned host key still checked: the key is looked up as known_hosts names the inventory's
    endpoint (HostKeyAlias replaces the whole name, port included)."""
    alias = host.hostname if int(host.port) == 22 else f"[{host.hostname}]:{host.port}"
    return ["ssh", *remote.ssh_options(inv, host), "-o", f"HostKeyAlias={alias}", address]


def ssh_mbit(inv, host, address, src_ns, nbytes, runs=3):
    """Throughput of ``nbytes`` through the lane's ssh to ``host`` at ``address``, from namespace
    ``src_ns``, in Mbit/s: (time of `cat > /dev/null` fed nbytes) - (time of `true`), so the
    handshake is not counted. The best of ``runs``."""
    ssh = ssh_argv(inv, host, address)
    rates = []
    for _ in range(runs):
        handshake = c.run(inside(src_ns, [*ssh, "true"]), check=True).seconds
        pipe = f"head -c {int(nbytes)} /dev/zero | {shlex.join(inside(src_ns, [*ssh, 'cat > /dev/null']))}"
        t0 = time.perf_counter()
        subprocess.run(["bash", "-c", pipe], check=True)
        rates.append(nbytes * 8 / max(time.perf_counter() - t0 - handshake, 1e-3) / 1e6)
    return max(rates)


def measure(lab, inv, mb=256, shaped=None):
    """{"links": {"control": {...}, "data": {...}}, "ssh_ceiling_mbit": ...}, ``shaped`` {link: the
    Mbit/s tc was given} added to each link's entry: the control link
    (local -> mac4's control address), the data link (mac5 -> mac4's data address), ssh on each, and
    ssh inside mac4's namespace to its own address (loopback: the cipher alone)."""
    nbytes = int(mb * 2**20)
    mac4 = inv.host("mac4")
    ns4, ns5 = netns_of(lab, "mac4"), netns_of(lab, "mac5")
    facts = {"links": {
        "control": {"tcp_mbit": round(tcp_mbit(ns4, mac4.hostname, None, nbytes)),
                    "ssh_mbit": round(ssh_mbit(inv, mac4, mac4.hostname, None, nbytes))},
        "data": {"tcp_mbit": round(tcp_mbit(ns4, mac4.data_ip, ns5, nbytes)),
                 "ssh_mbit": round(ssh_mbit(inv, mac4, mac4.data_ip, ns5, nbytes))}},
        "ssh_ceiling_mbit": round(ssh_mbit(inv, mac4, mac4.hostname, ns4, nbytes)),
        "probe_mb": mb}
    for name, mbit in (shaped or {}).items():  # the rate tc was told, beside the rates measured
        facts["links"][name] = {"shaped_mbit": mbit, **facts["links"][name]}
    c.log(f"link rates: {facts}")
    return facts
