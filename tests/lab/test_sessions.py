"""Fabric sessions on the real lab: keepalives on every opened session (issue 11, item 4)."""
import socket

from thunderlane import remote


def test_an_opened_session_sends_keepalives_and_its_socket_has_tcp_nodelay(lab_inv):
    """paramiko sends a keepalive after KEEPALIVE idle seconds (it never waits for the answer: the
    command timeout is what catches a silent host; see test_faults_hang.py)."""
    conn = remote.open_session(lab_inv, lab_inv.hosts["mac4"])
    try:
        assert conn.is_connected
        assert conn.transport.packetizer._Packetizer__keepalive_interval == remote.KEEPALIVE > 0
        # set before the handshake (sshopts.nodelay_transport): no wait for the host's delayed ACK
        assert conn.transport.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        conn.close()
    assert not conn.is_connected


def test_the_gate_runs_over_the_sessions_the_last_commit_opened(lab_inv, profile_dir, monkeypatch):
    """train-window's gate round (reap, the writer's run directory) takes the sessions its runner
    started opening at the last commit (their handshake overlaps the ranks' teardown): each is used
    once and closed, and the round's answers are the hosts' own."""
    from thunderlane import presession, profiles
    from thunderlane.window import runner
    monkeypatch.setenv("THUNDER_PROFILES", str(profile_dir))
    prof = profiles.load("run_a")
    runner._gate_ahead(lab_inv, prof, 10)({"phase": "step", "step": 10})
    assert presession.pending() == 0  # a step is not the last commit
    runner._gate_ahead(lab_inv, prof, 10)({"phase": "commit", "step": 10, "host": "mac4"})
    assert presession.pending() == 2
    opened = [f.result(timeout=30) for f in presession._ready.values()]
    assert all(c.is_connected for c in opened)
    reaped, writer = runner.finish(lab_inv, prof)
    assert set(reaped) == {"mac4", "mac5"} and not any(isinstance(r, remote.HostError) for r in reaped.values())
    assert writer.run_dir.endswith("test_run_a")
    assert presession.pending() == 0 and not any(c.is_connected for c in opened)  # taken, used, closed


def test_the_lanes_ssh_agrees_on_aes_gcm_with_a_stock_sshd(lab_inv):
    """rsync's and the launchers' ssh (sshopts.CIPHERS) against the lab's Debian sshd, whose own
    first choice is ChaCha20: the client's order decides, so both directions run AES-128-GCM."""
    import shlex
    import subprocess
    host = lab_inv.hosts["mac4"]
    argv = [*shlex.split(remote.ssh_command(lab_inv, host)), "-v", host.hostname, "true"]
    log = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True).stderr
    chosen = [line.split("cipher: ", 1)[1].split()[0] for line in log.splitlines() if "kex: " in line and "cipher: " in line]
    assert chosen == ["aes128-gcm@openssh.com"] * 2, log


def test_a_host_without_the_kept_copy_is_sent_the_source_in_the_same_session(lab_inv, lab_dir, monkeypatch):
    """The probe goes first as the loader alone (the stub); mac4, its kept copy removed, says it has
    none and is sent the source over the session already open (no second handshake), then keeps
    it: the next probe is answered by the copy."""
    import shutil
    from thunderlane import facts, onhost
    shutil.rmtree(lab_dir / "mac4" / ".cache" / "thunderlane", ignore_errors=True)
    opened, programs, open_session, execute = [], [], remote.open_session, remote.channel.execute
    monkeypatch.setattr(remote, "open_session", lambda inv, host: opened.append(host.name) or open_session(inv, host))
    monkeypatch.setattr(remote.channel, "execute",
                        lambda t, command, *a: programs.append(len(command)) or execute(t, command, *a))
    host = lab_inv.hosts["mac4"]
    for _ in range(2):
        cache = remote.ask(lab_inv, host, facts.cache(lab_inv.repo_id, str(lab_dir / "mac4" / "x")))[0]
        assert cache.exists is False
    stub, whole = len(onhost.PROBE_LEAN_STUB), len(onhost.PROBE_LEAN_LOADER)
    assert opened == ["mac4", "mac4"] and len(programs) == 3
    assert programs[0] < stub * 1.2 < whole < programs[1] and programs[2] == programs[0]
    assert list((lab_dir / "mac4" / ".cache" / "thunderlane").glob("thunderlane_probe_*.py"))
