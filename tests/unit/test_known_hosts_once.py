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
