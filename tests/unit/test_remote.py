"""remote.py without SSH: the ssh options every call carries, what Fabric's connection reads, the
known_hosts lines it cannot honour, and hostile probe answers (asked of the local host, whose probe
is a real subprocess: here a little script that prints what a broken or hostile host would)."""
import base64
import dataclasses
import json
import shutil
import struct
import subprocess
import sys
import threading

import paramiko
import pytest

from thunderlane import facts, inventory, remote
from thunderlane.remote import HostError

NEW_OPTIONS = {"GlobalKnownHostsFile": "/dev/null", "ForwardAgent": "no",
               "ClearAllForwardings": "yes", "PermitLocalCommand": "no"}


def ed25519_line(host):
    """A real known_hosts line: ``host ssh-ed25519 <base64 of a well-formed public key blob>``."""
    blob = struct.pack(">I", 11) + b"ssh-ed25519" + struct.pack(">I", 32) + bytes(range(32))
    return f"{host} ssh-ed25519 {base64.b64encode(blob).decode()}"


def make_inv(tmp_path, known_lines=()):
    if not (tmp_path / "id_ed25519").exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "id_ed25519")], check=True)
    known = tmp_path / "known_hosts"
    known.write_text("".join(f"{line}\n" for line in known_lines))
    data = {"ssh": {"known_hosts": str(known), "identity": str(tmp_path / "id_ed25519")},
            "local": {"dataset_root": str(tmp_path / "data"), "runs_root": str(tmp_path / "runs")},
            "hosts": {"mac4": {"ssh_name": "mac4", "hostname": "127.0.0.4", "user": "me", "port": 2204,
                               "data_ip": "169.254.10.4", "python": "/opt/venv/bin/python",
                               "dataset_root": "/Users/me/data", "runs_root": "/Users/me/runs"}}}
    return inventory.parse(data, "inv.yaml")


# --- the one home of ssh options -------------------------------------------------------------------

def test_ssh_options_carry_the_hardening_options(tmp_path):
    inv = make_inv(tmp_path)
    opts = remote.ssh_options(inv, inv.hosts["mac4"])
    given = {opts[i + 1].split("=", 1)[0]: opts[i + 1].split("=", 1)[1] for i, o in enumerate(opts) if o == "-o"}
    assert NEW_OPTIONS.items() <= given.items()
    assert "-o GlobalKnownHostsFile=/dev/null" in remote.ssh_command(inv, inv.hosts["mac4"])


def test_ssh_config_blocks_carry_the_hardening_options(tmp_path):
    inv = make_inv(tmp_path)
    text = remote.ssh_config(inv, inv.hosts.values())
    for key, value in NEW_OPTIONS.items():
        assert f'  {key} "{value}"' in text or f"  {key} {value}" in text, key


@pytest.mark.skipif(not shutil.which("ssh"), reason="no ssh client")
def test_ssh_itself_reads_the_options_from_the_generated_config(tmp_path):
    inv = make_inv(tmp_path)
    (tmp_path / "config").write_text(remote.ssh_config(inv, inv.hosts.values()))
    out = subprocess.run(["ssh", "-G", "-F", str(tmp_path / "config"), "mac4"],
                         capture_output=True, text=True, check=True).stdout.lower().splitlines()
    for key, value in NEW_OPTIONS.items():
        assert f"{key.lower()} {value}" in out, key
    assert f"userknownhostsfile {tmp_path / 'known_hosts'}".lower() in out


# --- Fabric's connection ---------------------------------------------------------------------------

def test_connection_forwards_no_agent_and_reads_only_the_inventorys_known_hosts(tmp_path):
    inv = make_inv(tmp_path, [ed25519_line("[127.0.0.4]:2204")])
    conn = remote.connect(inv, inv.hosts["mac4"])
    assert conn.forward_agent is False and conn.config.forward_agent is False
    assert len(conn.client._system_host_keys) == 0  # no ~/.ssh/known_hosts, no /etc/ssh/ssh_known_hosts
    assert conn.client.get_host_keys().lookup("[127.0.0.4]:2204") is not None
    assert isinstance(conn.client._policy, paramiko.RejectPolicy)
    assert conn.config.runners.remote is remote.CappedRemote


@pytest.mark.parametrize("marker", ["@revoked", "@cert-authority"])
def test_paramiko_itself_cannot_read_a_marker_line(tmp_path, marker):
    """What the lane guards against: the installed paramiko fails on the whole file (or would skip)."""
    path = tmp_path / "known_hosts"
    path.write_text(ed25519_line("plain.example") + "\n" + f"{marker} {ed25519_line('*.example')}\n")
    with pytest.raises(paramiko.hostkeys.InvalidHostKey):
        paramiko.SSHClient().load_host_keys(str(path))


@pytest.mark.parametrize("marker", ["@revoked", "@cert-authority"])
def test_marker_lines_are_refused_naming_file_and_line(tmp_path, marker):
    inv = make_inv(tmp_path, ["# pinned by hand", ed25519_line("[127.0.0.4]:2204"),
                              f"{marker} {ed25519_line('*')}"])
    with pytest.raises(HostError) as e:
        remote.connect(inv, inv.hosts["mac4"])
    assert e.value.host == "mac4" and e.value.kind == "host-key"
    assert f"{tmp_path / 'known_hosts'}, line 3" in str(e.value) and marker in str(e.value)


def test_a_line_paramiko_chokes_on_is_refused_naming_the_line(tmp_path):
    inv = make_inv(tmp_path, [ed25519_line("[127.0.0.4]:2204"), "other ssh-ed25519 not-base64!"])
    with pytest.raises(HostError, match=r"known_hosts, line 2: not a host key line"):
        remote.connect(inv, inv.hosts["mac4"])


def test_unsupported_key_types_are_skipped_as_paramiko_and_openssh_do(tmp_path):
    inv = make_inv(tmp_path, [ed25519_line("[127.0.0.4]:2204"), "other ssh-future AAAA"])
    assert remote.connect(inv, inv.hosts["mac4"]).client.get_host_keys().lookup("[127.0.0.4]:2204")


# --- hostile probe answers -------------------------------------------------------------------------

def hostile(tmp_path, body):
    """The local host with its interpreter replaced by a script running ``body`` (Python)."""
    script = tmp_path / "hostile"
    script.write_text(f"#!{sys.executable}\nimport sys, json\n{body}\n")
    script.chmod(0o755)
    inv = make_inv(tmp_path)
    return inv, dataclasses.replace(inv.local, python=str(script))


def printing(tmp_path, text):
    return hostile(tmp_path, f"sys.stdout.write({text!r})")


def ask_error(inv, host, *queries):
    with pytest.raises(HostError) as e:
        remote.ask(inv, host, *queries, timeout=60)  # a regression fails, not hangs
    assert e.value.host == "local" and e.value.kind == "error"
    return e.value.message


DATASET = facts.dataset("/data")
CACHE = facts.cache("org/name", "/cache")


def test_an_honest_answer_parses(tmp_path):
    inv, host = printing(tmp_path, json.dumps({"root": "/data", "exists": False, "files": {}}))
    assert remote.ask(inv, host, DATASET)[0].exists is False


def test_non_json_is_the_hosts_error(tmp_path):
    assert "no JSON" in ask_error(*printing(tmp_path, "Last login: yesterday\n{"), DATASET)


def test_nesting_past_the_json_decoder_is_the_hosts_error(tmp_path):
    assert "nested too deeply" in ask_error(*printing(tmp_path, "[" * 200_000 + "]" * 200_000), DATASET)


def test_nesting_that_breaks_the_parser_is_the_hosts_error(tmp_path):
    """JSON the decoder still reads but the recursive freezing of a document's data cannot."""
    depth = int(sys.getrecursionlimit() * 0.7)
    answer = '{"root": "/data", "exists": true, "manifest": {"present": true, "data": ' + \
        "[" * depth + "]" * depth + "}}"
    assert "RecursionError" in ask_error(*printing(tmp_path, answer), DATASET)


@pytest.mark.parametrize("answer", [[], 5, {"files": 5}, {"files": {"train.jsonl": []}},
                                    {"files": {"train.jsonl": {"bad": "x"}}}])
def test_wrong_types_are_the_hosts_error(tmp_path, answer):
    assert "malformed" in ask_error(*printing(tmp_path, json.dumps(answer)), DATASET)


@pytest.mark.parametrize("answer", [[], {"results": 5}, {"results": [{}]}, {"other": []}])
def test_a_multi_answer_of_the_wrong_shape_is_the_hosts_error(tmp_path, answer):
    assert "2 answers" in ask_error(*printing(tmp_path, json.dumps(answer)), DATASET, CACHE)


def test_wrong_types_inside_a_multi_answer(tmp_path):
    answer = {"results": [{"root": "/data"}, {"cache_root": "/c", "locks": [{"bogus": 1}]}]}
    assert "malformed" in ask_error(*printing(tmp_path, json.dumps(answer)), DATASET, CACHE)


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_endless_output_is_stopped_at_the_cap(tmp_path, monkeypatch, stream):
    monkeypatch.setattr(remote, "MAX_OUTPUT", 2**20)
    inv, host = hostile(tmp_path, f"while True:\n    sys.{stream}.write('x' * 65536)")
    assert "more than 1 MiB" in ask_error(inv, host, DATASET)


def test_output_just_under_the_cap_is_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(remote, "MAX_OUTPUT", 2**20)
    inv, host = printing(tmp_path, '"' + "x" * (2**20 - 2) + '"')
    assert len(remote.run_probe(inv, host, [])) == 2**20 - 2


def test_hostile_answers_in_parallel_stay_per_host(tmp_path):
    inv, host = printing(tmp_path, "[" * 200_000)
    result = remote.ask_each(inv, [host], lambda h: DATASET)
    assert isinstance(result["local"], HostError)


def test_a_failing_probe_keeps_only_a_short_tail(tmp_path):
    inv, host = hostile(tmp_path, "sys.stderr.write('e' * 100000); sys.exit(3)")
    message = ask_error(inv, host, DATASET)
    assert "exit 3" in message and len(message) < 400


# --- the command timeout's kill ---------------------------------------------------------------------

class _ClosingChannel:
    """A channel whose close() is slow and then finds the transport gone, as paramiko's does when
    the main thread closed the connection while the timeout's thread was still sending."""

    def __init__(self):
        self.entered, self.release = threading.Event(), threading.Event()

    def close(self):
        self.entered.set()
        self.release.wait(5)
        raise EOFError()


def test_a_kill_in_flight_already_counts_as_timed_out_and_a_dead_transport_is_no_traceback(tmp_path, monkeypatch):
    """Invoke only counts a timeout once its Timer thread has ended; Fabric's kill marks the channel
    closed before sending, so without this the main thread saw an ordinary result and the Timer
    thread died with EOFError (CI, fault 30)."""
    died = []
    monkeypatch.setattr(threading, "excepthook", died.append)
    inv = make_inv(tmp_path)
    runner = remote.CappedRemote(remote.connect(inv, inv.hosts["mac4"]))
    runner.channel = _ClosingChannel()
    runner.start_timer(0.01)
    assert runner.channel.entered.wait(5)
    assert runner._timer.is_alive() and runner.timed_out  # mid-kill: already a timeout
    runner.channel.release.set()
    runner._timer.join(5)
    assert not runner._timer.is_alive() and runner.timed_out
    assert died == []
