# thunderlane on-host link check: stdlib only (bundled before probe.py; see onhost/__init__.py)
"""The ring's data path as one host sees it, and its RDMA devices (for jaccl).

``links_facts``: listen on this host's own ring endpoints, connect to every peer's, report each.
Every host runs it at the same moment (one ssh session each), so a peer's listener may come up a
little later: a refused connect is retried until the deadline; a timeout or any other error is the
answer. Listeners stay up until every peer has come through or the deadline passes. Sockets close
with a reset (SO_LINGER 0), so no TIME_WAIT is left on a port the ring binds next.

``rdma_facts``: the devices ``ibv_devices`` lists (what ``mlx.distributed_config`` checks).
"""
import errno
import os
import socket
import struct
import threading
import time

# Seconds between polls: a refused dial retried, the acceptor's look at its stop flag, the wait for
# peers' dials. Each ends the check that much after the last peer came up (preflight waits on it);
# a poll costs a few microseconds, so the grain is fine.
RETRY_PAUSE = POLL = 0.02
TOOL_PATH = "/usr/bin:/usr/sbin:/usr/local/bin:/opt/homebrew/bin"  # a non-interactive ssh PATH is short


def _reset_on_close(sock):
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def _listen(endpoints):
    """Bind every (ip, port): (sockets, results); a port already taken is ``in_use``, not a fault."""
    socks, results = [], []
    for ip, port in endpoints:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((ip, port))
            s.listen(16)
        except OSError as e:
            s.close()
            results.append({"ip": ip, "port": port, "ok": False, "in_use": e.errno == errno.EADDRINUSE,
                            "error": e.strerror or str(e)})
            continue
        s.settimeout(POLL)
        socks.append(s)
        results.append({"ip": ip, "port": port, "ok": True, "in_use": False, "error": None})
    return socks, results


def _accept(socks, stop, count):
    """Accept connections on ``socks`` until ``stop`` is set; count them. Each is greeted with one
    byte and closed once the peer has closed it (the peer resets, so neither side keeps TIME_WAIT)."""
    while not stop.is_set():
        for s in socks:
            try:
                conn, _ = s.accept()
            except (socket.timeout, BlockingIOError, ConnectionAbortedError):
                continue
            count[0] += 1
            with conn:
                try:
                    conn.settimeout(1.0)
                    conn.sendall(b"k")
                    conn.recv(1)
                except OSError:
                    pass


def _reach(peer, ip, port, timeout, deadline):
    """One peer endpoint: connect (a refusal retried until ``deadline``), wait for the peer's close."""
    start, tries = time.monotonic(), 0
    while True:
        tries += 1
        try:
            s = socket.create_connection((ip, port), timeout=timeout)
        except socket.timeout:
            error = f"timed out after {timeout:g}s"
        except OSError as e:
            error = e.strerror or str(e)
            if e.errno == errno.ECONNREFUSED and time.monotonic() + RETRY_PAUSE < deadline:
                time.sleep(RETRY_PAUSE)
                continue
        else:  # connected: the link works; what follows only closes it cleanly
            _drain(s)
            error = None
        return {"peer": peer, "ip": ip, "port": port, "ok": error is None, "error": error, "tries": tries,
                "seconds": round(time.monotonic() - start, 3)}


def _drain(s):
    """Wait for the listener's greeting (it accepted us), then close with a reset."""
    try:
        _reset_on_close(s)
        s.recv(1)  # a non-lane listener on the port sends none: this times out
    except OSError:
        pass
    finally:
        s.close()


def links_facts(req):
    """``req``: {"listen": [[ip, port]], "connect": [[peer, ip, port]], "expect": connections peers
    make to this host, "wait": seconds, "timeout": seconds per connect}."""
    wait, timeout = float(req.get("wait", 5)), float(req.get("timeout", 2))
    deadline = time.monotonic() + wait
    socks, listened = _listen([(ip, int(port)) for ip, port in req.get("listen", [])])
    stop, count = threading.Event(), [0]
    acceptor = threading.Thread(target=_accept, args=(socks, stop, count), daemon=True)
    acceptor.start()
    reached = [None] * len(req.get("connect", []))

    def one(i, peer, ip, port):
        reached[i] = _reach(peer, ip, int(port), timeout, deadline)
    workers = [threading.Thread(target=one, args=(i, *c), daemon=True) for i, c in enumerate(req.get("connect", []))]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    expect = int(req.get("expect", 0)) if socks else 0
    while count[0] < expect and time.monotonic() < deadline:
        time.sleep(POLL)
    stop.set()
    acceptor.join()
    for s in socks:
        s.close()
    return {"listen": listened, "connect": reached, "accepted": count[0]}


def rdma_facts():
    """The RDMA devices ``ibv_devices`` lists: {"tool": path or None, "devices": [...], "error": ...}."""
    import shutil  # here, not above: every probe (verify-cache's too) would pay for importing them
    import subprocess
    tool = shutil.which("ibv_devices", path=os.environ.get("PATH", "") + os.pathsep + TOOL_PATH)
    if tool is None:
        return {"tool": None, "devices": [], "error": "ibv_devices not found"}
    try:
        p = subprocess.run([tool], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"tool": tool, "devices": [], "error": f"ibv_devices failed: {e}"}
    devices = parse_ibv_devices(p.stdout)
    error = None if p.returncode == 0 else f"ibv_devices exited {p.returncode}: {p.stderr.strip()[-200:]}"
    return {"tool": tool, "devices": devices, "error": error}


def parse_ibv_devices(text):
    """Device names from ``ibv_devices``'s table (``device  node GUID``, dashes, one row each)."""
    names = []
    for line in text.splitlines():
        first = (line.split() or [""])[0]
        if first and first not in ("device", "------") and not set(first) <= {"-"}:
            names.append(first)
    return names
