"""Which key Fabric signs with (keys.py), against real key files and a real ssh-agent (started in
tmp_path by the lab's own helper and stopped by its PID); no host is contacted."""
import shutil
import subprocess

import paramiko
import pytest

from thunderlane import inventory, keys, remote
from thunderlane.lab import agent
from thunderlane.remote import HostError

pytestmark = pytest.mark.skipif(not (shutil.which("ssh-agent") and shutil.which("ssh-add")), reason="no ssh-agent")


def keygen(path, passphrase=""):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", passphrase, "-f", str(path)], check=True)
    return path


def inv_with(tmp_path, identity):
    data = {"ssh": {"known_hosts": str(tmp_path / "known_hosts"), "identity": str(identity)},
            "local": {"dataset_root": str(tmp_path / "data"), "runs_root": str(tmp_path / "runs")},
            "hosts": {"mac4": {"ssh_name": "mac4", "hostname": "127.0.0.4", "user": "me", "port": 2204,
                               "data_ip": "169.254.10.4", "python": "/opt/venv/bin/python",
                               "dataset_root": "/Users/me/data", "runs_root": "/Users/me/runs"}}}
    return inventory.parse(data, "inv.yaml")


@pytest.fixture
def ssh_agent(tmp_path, monkeypatch):
    """A real ssh-agent holding nothing yet: {SSH_AUTH_SOCK, SSH_AGENT_PID}, in the environment."""
    spare = keygen(tmp_path / "spare")
    env = agent.start(tmp_path, spare)  # starts the agent, holding an unrelated key
    monkeypatch.setenv("SSH_AUTH_SOCK", env["SSH_AUTH_SOCK"])
    yield env
    assert agent.stop(tmp_path) == int(env["SSH_AGENT_PID"])


def test_a_key_without_passphrase_is_that_key_and_nothing_else(tmp_path):
    key = keygen(tmp_path / "id")
    kwargs, held = keys.auth_kwargs(str(key))
    assert held is None and kwargs["allow_agent"] is False and kwargs["look_for_keys"] is False
    assert kwargs["pkey"].asbytes() == keys.public_blob(str(key))


def test_the_public_half_is_read_from_the_encrypted_file_itself(tmp_path):
    key = keygen(tmp_path / "id", "secret")
    from_pub = keys._blob_in_pub(tmp_path / "id.pub")
    (tmp_path / "id.pub").unlink()
    assert keys.needs_passphrase(str(key)) and keys.public_blob(str(key)) == from_pub


def test_passphrase_and_no_agent_is_a_key_error_naming_the_file(tmp_path, monkeypatch):
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    key = keygen(tmp_path / "id", "secret")
    with pytest.raises(HostError) as e:
        remote.connect(inv_with(tmp_path, key), inv_with(tmp_path, key).hosts["mac4"])
    assert e.value.kind == "key" and e.value.host == "mac4"
    assert f"key {key} is passphrase-protected" in e.value.message and f"ssh-add {key}" in e.value.message


def test_a_dead_agent_socket_is_a_key_error_too(tmp_path, monkeypatch):
    monkeypatch.setenv("SSH_AUTH_SOCK", str(tmp_path / "gone.sock"))
    key = keygen(tmp_path / "id", "secret")
    with pytest.raises(keys.KeyProblem, match=r"no ssh-agent answers at \$SSH_AUTH_SOCK=.*gone.sock"):
        keys.auth_kwargs(str(key))


def test_an_agent_without_that_key_is_a_key_error(tmp_path, ssh_agent):
    key = keygen(tmp_path / "id", "secret")
    with pytest.raises(keys.KeyProblem, match=r"the ssh-agent at \$SSH_AUTH_SOCK does not hold it: ssh-add "):
        keys.auth_kwargs(str(key))


def test_the_agents_copy_of_the_identity_is_used_and_only_it(tmp_path, ssh_agent):
    key = keygen(tmp_path / "id", agent.PASSPHRASE)
    agent.add_key(ssh_agent["SSH_AUTH_SOCK"], key, tmp_path / "askpass.sh")  # beside the spare key
    kwargs, held = keys.auth_kwargs(str(key))
    try:
        assert isinstance(kwargs["pkey"], paramiko.AgentKey) and kwargs["allow_agent"] is False
        assert kwargs["pkey"].asbytes() == keys.public_blob(str(key))  # not the spare key the agent holds
        assert keys.public_blob(str(key)) != keys.public_blob(str(tmp_path / "spare"))
    finally:
        held.close()


def test_no_identity_lets_paramiko_use_the_agent_and_default_keys():
    kwargs, held = keys.auth_kwargs(None)
    assert kwargs == {"allow_agent": True, "look_for_keys": True} and held is None


def test_a_connection_closes_the_agent_session_with_itself(tmp_path, ssh_agent):
    key = keygen(tmp_path / "id", agent.PASSPHRASE)
    agent.add_key(ssh_agent["SSH_AUTH_SOCK"], key, tmp_path / "askpass.sh")
    inv = inv_with(tmp_path, key)
    conn = remote.connect(inv, inv.hosts["mac4"])
    assert conn.forward_agent is False and conn.lane_agent._conn is not None
    conn.close()
    assert conn.lane_agent._conn is None
