# thunderlane on-host peer key: stdlib only (bundled into the probe, and into the installer)
"""The peer key on this host: what the probe reports (``peer_facts``, read only) and what
``fab setup-peers`` writes (``install_peer``, run by ``peer_install.py``).

Paths start at the home as the session sees it (``$HOME``, else the passwd entry): sshd reads
``~/.ssh/authorized_keys`` there, and the peer ssh is given absolute paths under it.
"""
import binascii  # not base64 (struct, re): the lean probe carries this module (onhost.PROBE_LEAN)
import os

TAG = "thunderlane-peer"  # the comment that marks the lane's one line in authorized_keys
PEER_DIR = os.path.join(".thunderlane", "peer")
KEY_NAME = "id_ed25519"
KNOWN_NAME = "known_hosts"
AUTHORIZED = os.path.join(".ssh", "authorized_keys")
MAX_READ = 1 << 20


def peer_home():
    home = os.environ.get("HOME")
    if not home:
        import pwd
        home = pwd.getpwuid(os.getuid()).pw_dir
    return os.path.normpath(home)


def _read_text(path):
    """A small text file's content, or None when it is absent or unreadable."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read(MAX_READ)
    except (OSError, UnicodeDecodeError):
        return None


def _u32(data, pos):
    """The big-endian uint32 at ``pos`` (ValueError past the end)."""
    if len(data) < pos + 4:
        raise ValueError("cut short")
    return int.from_bytes(data[pos:pos + 4], "big")


def public_blob_b64(text):
    """The public key (base64 of ssh's wire format) an OpenSSH private key file carries in clear
    text (PROTOCOL.key), or None if ``text`` is no such file."""
    lines = (text or "").strip().splitlines()
    if len(lines) < 3 or lines[0] != "-----BEGIN OPENSSH PRIVATE KEY-----":
        return None
    try:
        data = binascii.a2b_base64("".join(lines[1:-1]))
        pos = len(b"openssh-key-v1\0")
        if not data.startswith(b"openssh-key-v1\0"):
            return None
        for _ in range(3):  # cipher, kdf, kdf options
            pos += 4 + _u32(data, pos)
        size = _u32(data, pos + 4)
        blob = data[pos + 8:pos + 8 + size]
        return binascii.b2a_base64(blob, newline=False).decode() if size and len(blob) == size else None
    except ValueError:   # binascii.Error is one
        return None


def tagged(text):
    """The lines of an authorized_keys text that end with the lane's tag."""
    return [line for line in (text or "").splitlines() if line.split()[-1:] == [TAG]]


def peer_facts():
    """Where the home is and what of the peer key is installed under it."""
    home = peer_home()
    key = os.path.join(home, PEER_DIR, KEY_NAME)
    try:
        mode = os.lstat(key).st_mode & 0o777
    except OSError:
        mode = None
    text = _read_text(key) if mode is not None else None
    return {"home": home, "key_mode": mode, "key_public": public_blob_b64(text),
            "known_hosts": _read_text(os.path.join(home, PEER_DIR, KNOWN_NAME)),
            "authorized": tagged(_read_text(os.path.join(home, AUTHORIZED)))}


def _write_private(path, text, mode):
    """``text`` to ``path`` through a new file created with ``mode`` (never wider) beside it, then
    renamed: the old file or the new one, never a torn one or one readable by others."""
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _folder(path):
    os.makedirs(path, mode=0o700, exist_ok=True)
    if os.path.islink(path) or not os.path.isdir(path):
        raise OSError(f"{path} is not a folder")
    return path


def authorized_text(old, line):
    """authorized_keys' text with the lane's tagged line replaced by ``line`` (removed if None):
    every other line kept as it was, in its place."""
    lines = (old or "").splitlines()
    kept = [x for x in lines if x.split()[-1:] != [TAG]]
    if line is None and len(kept) == len(lines):
        return old
    return "\n".join(kept + ([line] if line else [])) + "\n"


def install_peer(doc):
    """Write the private key (0600), the peers' pinned host keys and this host's tagged
    authorized_keys line; each file whole or not at all. ``doc``: {key, known_hosts, authorized}."""
    home = peer_home()
    folder = _folder(os.path.join(home, PEER_DIR))
    changed = []
    for name, text in ((KEY_NAME, doc["key"]), (KNOWN_NAME, doc["known_hosts"])):
        path = os.path.join(folder, name)
        if _read_text(path) != text or (os.stat(path).st_mode & 0o777) != 0o600:
            _write_private(path, text, 0o600)
            changed.append(path)
    path = os.path.join(home, AUTHORIZED)
    old = _read_text(path)
    new = authorized_text(old, doc.get("authorized"))
    if new != old:
        _folder(os.path.dirname(path))
        _write_private(path, new, 0o600)
        changed.append(path)
    return {"home": home, "changed": changed}
