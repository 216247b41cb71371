"""The rsyncd transport's two retries, each of which a pull needs in the field: peer_rsyncd.sh moves
on to the next port when one is taken on SRC's data address (32400-32463), and the sync launcher
runs a pass again (every second, 5 times) when the one-shot daemon answers "max connections (3)
reached": the last passes' daemon children (two blob streams, a pass) may still hold its slots.
Without either, these pulls fail (exit 66: no daemon started; exit 5: rsync's "max connections")."""
import glob
import socket
import subprocess
import threading
import time

from tests.lab.test_sync_launcher_peer import DONE, complete
from tests.lab.test_sync_launcher_rsyncd import daemons, rsyncd_argv

FIRST_PORT = 32400   # peer_rsyncd.sh's first try
SLOTS = 3   # peer_rsyncd.sh's max connections: two blob streams, and the next pass beside their end


class SlotHolder:
    """Takes the one-shot daemon's every connection (max connections = SLOTS) as soon as it listens
    on SRC's first port: from HOST's address (the only one the daemon lets in), the module asked,
    the secret never given (the daemon claims a slot before it asks for it). Lets go once
    ``release`` is set, or after ``longest`` seconds."""

    def __init__(self, src_addr, host_addr, longest=30):
        self.src, self.host, self.longest = src_addr, host_addr, longest
        self.held, self.release, self.answer = threading.Event(), threading.Event(), b""
        self.thread = threading.Thread(target=self.hold, daemon=True)
        self.thread.start()

    def hold(self):
        deadline = time.monotonic() + self.longest
        held = []
        try:
            while len(held) < SLOTS and time.monotonic() < deadline:
                s = socket.socket()
                s.bind((self.host, 0))
                try:
                    s.connect((self.src, FIRST_PORT))
                except OSError:
                    s.close()
                    time.sleep(0.01)
                    continue
                held.append(s)
                s.settimeout(10)
                s.recv(4096)                              # the daemon's greeting
                s.sendall(b"@RSYNCD: 31.0\nlane\n")
                self.answer = s.recv(4096)                # the auth challenge: the slot is ours
            self.held.set()
            self.release.wait(max(0.0, deadline - time.monotonic()))
        finally:
            for s in held:
                s.shutdown(socket.SHUT_RDWR)
                s.close()


def test_a_busy_daemon_is_asked_again_until_its_slot_is_free(lab_inv, lab_dir):
    mac4, mac5 = lab_inv.hosts["mac4"], lab_inv.hosts["mac5"]
    holder = SlotHolder(mac5.data_ip, mac4.data_ip)
    p = subprocess.Popen(rsyncd_argv(lab_inv, lab_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    err = []

    def watch():   # the launcher shows each try's rsync errors: let go after the first refusal
        for line in p.stderr:
            err.append(line)
            if "max connections" in line:
                holder.release.set()
    reader = threading.Thread(target=watch, daemon=True)
    reader.start()
    try:
        out = p.stdout.read()
        p.wait(timeout=120)
    finally:
        holder.release.set()
        if p.poll() is None:
            p.kill()
    reader.join(10)
    holder.thread.join(10)
    stderr = "".join(err)
    assert holder.held.is_set() and holder.answer.startswith(b"@RSYNCD: AUTHREQD"), holder.answer
    assert f"max connections ({SLOTS}) reached" in stderr, stderr[-2000:]   # the first try was refused
    assert p.returncode == 0, out[-2000:] + stderr[-2000:]
    assert f"port {FIRST_PORT} for" in out and DONE.search(out), out[-2000:]
    assert complete(lab_inv, "mac4")
    assert not daemons() and not glob.glob("/tmp/thunder-rsyncd.*") and not glob.glob("/tmp/thunder-peer.*")


def test_a_taken_port_moves_the_daemon_to_the_next(lab_inv, lab_dir):
    mac5 = lab_inv.hosts["mac5"]
    taken = socket.socket()
    taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # past an earlier test's TIME_WAIT
    taken.bind((mac5.data_ip, FIRST_PORT))
    taken.listen(1)
    try:
        p = subprocess.run(rsyncd_argv(lab_inv, lab_dir), capture_output=True, text=True, timeout=120)
    finally:
        taken.close()
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert f"port {FIRST_PORT + 1} for" in p.stdout and DONE.search(p.stdout), p.stdout[-2000:]
    assert complete(lab_inv, "mac4")
    assert not daemons() and not glob.glob("/tmp/thunder-rsyncd.*") and not glob.glob("/tmp/thunder-peer.*")
