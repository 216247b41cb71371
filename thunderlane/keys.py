"""Which key Fabric (paramiko) signs with, chosen as ``ssh -o IdentitiesOnly=yes -i KEY`` would:

- an identity in the inventory that has no passphrase: that file, and nothing else;
- an identity with a passphrase: the ssh-agent's copy of that very key (matched by its public
  half), and nothing else; no agent, or an agent without it, is a :class:`KeyProblem` naming the
  file and the ``ssh-add`` that fixes it;
- no identity: the agent's keys, then ``~/.ssh/id_*``, as plain ``ssh`` does.

Only *our* key is chosen here: host keys stay pinned (``remote.connect``), and the agent is
never forwarded to a host.
"""
import base64
import os
import struct
from pathlib import Path

import paramiko


class KeyProblem(Exception):
    """No usable key: the message names the key file and what to do."""


def auth_kwargs(identity):
    """``(connect_kwargs for paramiko, agent to close after the session or None)``."""
    if not identity:
        return {"allow_agent": True, "look_for_keys": True}, None
    try:
        if needs_passphrase(identity):
            return _from_agent(identity)
        key = paramiko.PKey.from_path(identity)
    except FileNotFoundError:
        raise KeyProblem(f"key {identity} does not exist (ssh.identity in the inventory)") from None
    except (OSError, UnicodeDecodeError, paramiko.SSHException, ValueError, TypeError) as e:
        raise KeyProblem(f"key {identity} cannot be read: {getattr(e, 'strerror', None) or e}") from None
    return {"pkey": key, "allow_agent": False, "look_for_keys": False}, None


def needs_passphrase(identity):
    """Whether the private key file ``identity`` is encrypted (OpenSSH's format: a cipher other than
    'none'; PEM: an ENCRYPTED header)."""
    text = Path(identity).read_text()
    fields = _openssh_fields(text)
    if fields is not None:
        return fields[0] != b"none"
    return "ENCRYPTED" in text.split("\n\n", 1)[0]


def _from_agent(identity):
    blob = public_blob(identity)
    if blob is None:
        raise KeyProblem(f"key {identity} is passphrase-protected and its public half cannot be read "
                         f"(no {identity}.pub): write it with ssh-keygen -y -f {identity} > {identity}.pub")
    agent = _agent(identity)
    for key in agent.get_keys():
        if key.asbytes() == blob:
            return {"pkey": key, "allow_agent": False, "look_for_keys": False}, agent
    agent.close()
    raise KeyProblem(f"key {identity} is passphrase-protected and the ssh-agent at $SSH_AUTH_SOCK does "
                     f"not hold it: ssh-add {identity}")


def _agent(identity):
    sock = os.environ.get("SSH_AUTH_SOCK")
    why = "no ssh-agent holds it ($SSH_AUTH_SOCK is not set)" if not sock else None
    agent = None
    if sock:
        try:
            agent = paramiko.Agent()
        except paramiko.SSHException as e:
            why = f"the ssh-agent at $SSH_AUTH_SOCK={sock} does not answer ({e})"
        if agent is not None and agent._conn is None:  # paramiko swallows a dead socket
            why = f"no ssh-agent answers at $SSH_AUTH_SOCK={sock}"
    if why:
        raise KeyProblem(f"key {identity} is passphrase-protected and {why}: start ssh-agent, "
                         f"then ssh-add {identity}")
    return agent


def public_blob(identity):
    """The public key (ssh wire format) of the private key file ``identity``: from the file itself
    (OpenSSH's format keeps it in clear text), else from ``identity.pub``; None if neither says."""
    try:
        fields = _openssh_fields(Path(identity).read_text())
        return fields[1] if fields else _blob_in_pub(Path(f"{identity}.pub"))
    except (OSError, UnicodeDecodeError):
        return None


def _openssh_fields(text):
    """(cipher name, first public key blob) of an OpenSSH-format private key, else None.
    PROTOCOL.key: "openssh-key-v1\\0", cipher, kdf, kdf options, key count, public keys, ..."""
    lines = text.strip().splitlines()
    if len(lines) < 3 or lines[0] != "-----BEGIN OPENSSH PRIVATE KEY-----":
        return None
    try:
        data = base64.b64decode("".join(lines[1:-1]))
        magic = b"openssh-key-v1\0"
        if not data.startswith(magic):
            return None
        strings, pos = [], len(magic)
        for _ in range(3):  # cipher name, kdf name, kdf options
            size = struct.unpack(">I", data[pos:pos + 4])[0]
            strings.append(data[pos + 4:pos + 4 + size])
            pos += 4 + size
        pos += 4  # number of keys
        size = struct.unpack(">I", data[pos:pos + 4])[0]
        blob = data[pos + 4:pos + 4 + size]
        return (strings[0], blob) if len(blob) == size and size else None
    except (ValueError, struct.error):
        return None


def _blob_in_pub(path):
    if not path.is_file():
        return None
    parts = path.read_text().split()
    try:
        return base64.b64decode(parts[1], validate=True) if len(parts) >= 2 else None
    except ValueError:
        return None
