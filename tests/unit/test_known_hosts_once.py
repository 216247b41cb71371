"""What a run reads once (known_hosts.problem_once, remote._auth) is keyed by the file's bytes:
an edit that keeps the file's size and mtime is still seen."""
import os
import subprocess

import paramiko

from thunderlane import known_hosts, remote

from .test_remote import ed25519_line


def same_size_and_mtime(path, text):
    """Write ``text`` (as long as the old content) to ``path`` and put its old mtime back."""
    st = path.stat()
    assert len(text) == st.st_size
    path.write_bytes(text)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_a_known_hosts_edit_keeping_size_and_mtime_is_checked_again(tmp_path):
    path = tmp_path / "known_hosts"
    good = f"{ed25519_line('h1')}\n".encode()
    path.write_bytes(good)
    assert known_hosts.problem_once(path) is None
    same_size_and_mtime(path, b"@revoked" + good[len(b"@revoked"):])
    number, why = known_hosts.problem_once(path)
    assert number == 1 and "@revoked" in why
    same_size_and_mtime(path, good)
    assert known_hosts.problem_once(path) is None  # the good version: remembered, still good


def test_a_key_file_replaced_keeping_size_and_mtime_is_read_again(tmp_path):
    paths = [tmp_path / name for name in ("a", "b")]
    for p in paths:
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(p)], check=True)
    fingerprint = [paramiko.PKey.from_path(str(p)).fingerprint for p in paths]
    assert remote._auth(str(paths[0]))[0]["pkey"].fingerprint == fingerprint[0]
    same_size_and_mtime(paths[0], paths[1].read_bytes())
    assert remote._auth(str(paths[0]))[0]["pkey"].fingerprint == fingerprint[1]


def _key_line(host, seed):
    import base64
    import struct
    blob = struct.pack(">I", 11) + b"ssh-ed25519" + struct.pack(">I", 32) + bytes([seed] * 32)
    return f"{host} ssh-ed25519 {base64.b64encode(blob).decode()}"


def test_each_connection_gets_its_hosts_keys_from_one_parse_per_file_version(tmp_path, monkeypatch):
    """known_hosts.pin gives a connection what SSHClient.load_host_keys would for its host (hashed
    names, port 22 bare, a host's several key types), decoding the file once per version of its
    bytes, not once per connection."""
    hashed = paramiko.HostKeys.hash_host("[10.0.0.6]:2206")
    lines = [_key_line("[10.0.0.4]:2204", 4), _key_line("10.0.0.5", 5), _key_line(hashed, 6),
             "[10.0.0.4]:2204 ecdsa-sha2-nistp256 " + paramiko.ECDSAKey.generate().get_base64()]
    path = tmp_path / "known_hosts"
    path.write_text("\n".join(lines) + "\n")
    loads, load = [], paramiko.HostKeys.load
    monkeypatch.setattr(paramiko.HostKeys, "load", lambda self, f: loads.append(f) or load(self, f))
    for host, port in [("10.0.0.4", 2204), ("10.0.0.5", 22), ("10.0.0.6", 2206), ("10.0.0.7", 22)]:
        name = host if port == 22 else f"[{host}]:{port}"
        client, whole = paramiko.SSHClient(), paramiko.SSHClient()
        known_hosts.pin(client.get_host_keys(), path, host, port)
        load(whole.get_host_keys(), str(path))  # what the connection read before, whole
        want = whole.get_host_keys().lookup(name)
        got = client.get_host_keys().lookup(name)
        assert (got and dict(got)) == (want and dict(want)) and client.get_host_keys().keys() == ([name] if want else []), name
    assert len(loads) == 1
    same_size_and_mtime(path, path.read_bytes().replace(b"10.0.0.5 ", b"10.0.0.9 "))
    client = paramiko.SSHClient()
    known_hosts.pin(client.get_host_keys(), path, "10.0.0.9", 22)
    assert len(loads) == 2 and client.get_host_keys().lookup("10.0.0.9")
