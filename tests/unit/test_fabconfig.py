"""The lane's Fabric Connections share one Config per connect timeout (fabconfig.py): built once
per run, not once per host, and never written by a Connection (a write re-merges the whole Config,
emptying it for a moment under the other threads reading it)."""
import dataclasses

import invoke.config
import pytest

from thunderlane import fabconfig, remote

from .test_remote import ed25519_line, make_inv


def _values(config):
    """Every leaf of ``config`` as {path: repr}."""
    out = {}

    def walk(path, node):
        for key in node:
            value = node[key]
            if hasattr(value, "keys"):
                walk(path + (key,), value)
            else:
                out[path + (key,)] = repr(value)
    walk((), config)
    return out


def config_writes(monkeypatch):
    """Every write to any Invoke Config from now on: (keypath, key)."""
    seen, modify = [], invoke.config.Config._modify
    monkeypatch.setattr(invoke.config.Config, "_modify",
                        lambda self, keypath, key, value: seen.append((keypath, key)) or modify(self, keypath, key, value))
    return seen


@pytest.fixture
def writes(monkeypatch):
    return config_writes(monkeypatch)


def test_connections_share_one_config_per_connect_timeout_and_never_write_it(tmp_path, writes):
    inv = make_inv(tmp_path, [ed25519_line("[127.0.0.4]:2204"), ed25519_line("[127.0.0.5]:2205")])
    mac4 = inv.hosts["mac4"]
    mac5 = dataclasses.replace(mac4, name="mac5", hostname="127.0.0.5", port=2205, user="other")
    first = remote.connect(inv, mac4)
    before = _values(first.config)
    second = remote.connect(inv, mac5)
    assert second.config is first.config and _values(first.config) == before
    assert (first.user, first.port, second.user, second.port) == ("me", 2204, "other", 2205)
    assert first.config.runners.remote is remote.CappedRemote and first.config.timeouts.connect == inv.ssh.connect_timeout
    assert first.config.load_ssh_configs is False and first.config.forward_agent is False
    slower = dataclasses.replace(inv, ssh=dataclasses.replace(inv.ssh, connect_timeout=inv.ssh.connect_timeout + 7))
    other = remote.connect(slower, mac4)
    assert other.config is not first.config and other.config.timeouts.connect == inv.ssh.connect_timeout + 7
    assert fabconfig.lane_config(inv.ssh.connect_timeout) is first.config
    assert writes == [] and first.inline_ssh_env is True  # Fabric's default, the Connection's own
