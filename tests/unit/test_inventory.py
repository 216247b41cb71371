import copy

import pytest
import yaml

from thunderlane import inventory
from thunderlane.inventory import InventoryError

GOOD = {
    "model": {"repo": "mlx-community/gemma-4-e2b-4bit"},
    "ssh": {"known_hosts": "/home/me/.ssh/known_hosts", "connect_timeout": 7},
    "local": {"dataset_root": "/data/nko", "runs_root": "/runs"},
    "hosts": {
        "mac4": {"ssh_name": "mac4", "hostname": "mac4.local", "user": "me", "port": 22,
                 "data_ip": "169.254.10.4", "python": "/opt/venv/bin/python",
                 "dataset_root": "/Users/me/data/nko", "runs_root": "/Users/me/runs"},
        "mac5": {"ssh_name": "mac5", "hostname": "mac5.local", "user": "me", "port": 22,
                 "data_ip": "169.254.10.5", "python": "/opt/venv/bin/python",
                 "dataset_root": "/Users/me/data/nko", "runs_root": "/Users/me/runs",
                 "hf_cache": "/Users/me/hf/hub", "rsync_path": "/opt/homebrew/bin/rsync"},
    },
}


def bad(mutate):
    data = copy.deepcopy(GOOD)
    mutate(data)
    with pytest.raises(InventoryError) as e:
        inventory.parse(data, "inv.yaml")
    return str(e.value)


def test_good_inventory_parses():
    inv = inventory.parse(copy.deepcopy(GOOD), "inv.yaml")
    assert list(inv.hosts) == ["mac4", "mac5"]
    assert inv.hosts["mac4"].destination == "me@mac4.local"
    assert inv.hosts["mac4"].hf_cache is None and inv.hosts["mac5"].hf_cache == "/Users/me/hf/hub"
    assert inv.hosts["mac4"].rsync_path == "rsync"
    assert inv.ssh.connect_timeout == 7
    assert inv.local.is_local and inv.local.python  # defaults to this interpreter


def test_missing_field_names_host_and_field():
    msg = bad(lambda d: d["hosts"]["mac4"].pop("python"))
    assert "host mac4" in msg and "'python'" in msg and "missing" in msg


def test_unknown_key_is_refused():
    msg = bad(lambda d: d["hosts"]["mac5"].update(pyhton="/x"))
    assert "host mac5" in msg and "'pyhton'" in msg and "unknown" in msg


@pytest.mark.parametrize("name", ["Mac4", "mac 4", "mac4;rm", "$(id)", "local", "m" * 40, ""])
def test_host_names_outside_charset_are_refused(name):
    msg = bad(lambda d: d["hosts"].update({name: d["hosts"].pop("mac4")}))
    assert "[a-z0-9_-]" in msg


@pytest.mark.parametrize("path", ["relative/path", "~", "~/data", "/", "/data/../etc", "", "/a\nb", 5])
def test_bad_paths_are_refused(path):
    msg = bad(lambda d: d["hosts"]["mac4"].update(dataset_root=path))
    assert "host mac4" in msg and "dataset_root" in msg


def test_relative_path_message_says_relative():
    assert "relative" in bad(lambda d: d["local"].update(runs_root="runs"))


@pytest.mark.parametrize("field,value", [("port", 0), ("port", "22"), ("data_ip", "10.0.0.300"),
                                         ("user", "me; rm -rf /"), ("hostname", "-oProxyCommand=x"),
                                         ("ssh_name", "a b"), ("rsync_path", "--rsync-path=x")])
def test_bad_values_are_refused(field, value):
    msg = bad(lambda d: d["hosts"]["mac5"].update({field: value}))
    assert "host mac5" in msg and field in msg


def test_duplicate_endpoint_is_refused():
    msg = bad(lambda d: d["hosts"]["mac5"].update(hostname="mac4.local"))
    assert "share" in msg


def test_tilde_is_expanded_for_control_side_ssh_files(monkeypatch):
    monkeypatch.setenv("HOME", "/home/tester")
    data = copy.deepcopy(GOOD)
    data["ssh"]["known_hosts"] = "~/.ssh/known_hosts"
    assert inventory.parse(data).ssh.known_hosts == "/home/tester/.ssh/known_hosts"


def test_select_refuses_unknown_host_and_lists_known():
    inv = inventory.parse(copy.deepcopy(GOOD))
    assert [h.name for h in inv.select("mac5")] == ["mac5"]
    assert [h.name for h in inv.select("")] == ["mac4", "mac5"]
    with pytest.raises(InventoryError, match="mac4, mac5"):
        inv.select("mac6")


def test_env_var_selects_inventory(tmp_path, monkeypatch):
    path = tmp_path / "other.yaml"
    path.write_text(yaml.safe_dump(GOOD))
    monkeypatch.setenv(inventory.ENV_VAR, str(path))
    assert inventory.load().path == str(path)


def test_unreadable_or_invalid_yaml(tmp_path):
    with pytest.raises(InventoryError, match="cannot read"):
        inventory.load(tmp_path / "nope.yaml")
    (tmp_path / "x.yaml").write_text("hosts: [unclosed")
    with pytest.raises(InventoryError, match="not valid YAML"):
        inventory.load(tmp_path / "x.yaml")


def test_committed_inventory_is_valid():
    inv = inventory.load(inventory.DEFAULT_PATH)
    assert {"mac4", "mac5"} <= set(inv.hosts)


# --- full matches: a trailing newline is not part of a valid value ----------------------------------

@pytest.mark.parametrize("field,value", [("ssh_name", "mac5\n"), ("hostname", "mac5.local\n"), ("user", "me\n"),
                                         ("rsync_path", "/opt/homebrew/bin/rsync\n"), ("data_ip", "169.254.10.5\n"),
                                         ("python", "/opt/venv/bin/python\n"), ("hf_cache", "/Users/me/hf\n"),
                                         ("dataset_root", "/Users/me/data\n"), ("runs_root", "/Users/me/runs\n")])
def test_trailing_newline_is_refused_in_every_host_field(field, value):
    msg = bad(lambda d: d["hosts"]["mac5"].update({field: value}))
    assert "host mac5" in msg and field in msg


def test_trailing_newline_is_refused_in_a_host_name():
    assert "[a-z0-9_-]" in bad(lambda d: d["hosts"].update({"mac6\n": d["hosts"].pop("mac5")}))


def test_trailing_newline_is_refused_in_the_repo_id():
    assert "model.repo" in bad(lambda d: d["model"].update(repo="mlx-community/gemma-4-e2b-4bit\n"))


@pytest.mark.parametrize("key", ["known_hosts", "identity", "config"])
def test_trailing_newline_is_refused_in_control_side_ssh_files(key):
    assert f"ssh.{key}" in bad(lambda d: d["ssh"].update({key: "/home/me/.ssh/file\n"}))


@pytest.mark.parametrize("regex", [inventory.NAME_RE, inventory.SSH_NAME_RE, inventory.HOSTNAME_RE,
                                   inventory.USER_RE, inventory.RSYNC_PATH_RE])
def test_validators_do_not_accept_a_prefix_even_through_match(regex):
    """Callers outside this module may still use ``.match``: the anchors keep them to the whole value."""
    assert not regex.match("ok;") and not regex.fullmatch("ok\n")


# --- two hosts never share an ssh name or a data address ------------------------------------------

@pytest.mark.parametrize("field,value", [("ssh_name", "mac4"), ("ssh_name", "MAC4"), ("data_ip", "169.254.10.4")])
def test_duplicate_ssh_name_or_data_ip_names_both_hosts_and_the_field(field, value):
    msg = bad(lambda d: d["hosts"]["mac5"].update({field: value}))
    assert "mac4 and mac5" in msg and field in msg and "share" in msg


def test_hosts_may_share_the_loopback_data_ip_of_a_single_address_lab():
    """The lab's single-address mode: every host on 127.0.0.1 with its own ssh port."""
    data = copy.deepcopy(GOOD)
    for port, h in enumerate(data["hosts"].values(), 22400):
        h.update(hostname="127.0.0.1", port=port, data_ip="127.0.0.1")
    assert {h.data_ip for h in inventory.parse(data).hosts.values()} == {"127.0.0.1"}


def test_duplicate_endpoint_names_both_hosts():
    msg = bad(lambda d: d["hosts"]["mac5"].update(hostname="MAC4.local"))
    assert "mac4 and mac5" in msg and "hostname and port" in msg


# --- % reaches ssh as a token ----------------------------------------------------------------------

@pytest.mark.parametrize("field", ["python", "dataset_root", "runs_root", "hf_cache"])
def test_percent_is_refused_in_host_paths(field):
    msg = bad(lambda d: d["hosts"]["mac5"].update({field: "/Users/me/%h/x"}))
    assert "host mac5" in msg and field in msg and "%" in msg


@pytest.mark.parametrize("key", ["known_hosts", "identity", "config"])
def test_percent_is_refused_in_control_side_ssh_files(key):
    msg = bad(lambda d: d["ssh"].update({key: "/home/me/.ssh/%d_key"}))
    assert "host local" in msg and f"ssh.{key}" in msg and "%" in msg


def test_percent_is_refused_in_local_paths():
    assert "runs_root" in bad(lambda d: d["local"].update(runs_root="/runs/%u"))


# --- IPv6 literals are refused, saying why ------------------------------------------------------------

@pytest.mark.parametrize("field,value", [("data_ip", "fe80::1"), ("data_ip", "::ffff:169.254.10.5"),
                                         ("hostname", "fe80::1"), ("hostname", "[fe80::1]"),
                                         ("hostname", "2001:db8::5")])
def test_ipv6_literals_are_refused_naming_host_and_field(field, value):
    msg = bad(lambda d: d["hosts"]["mac5"].update({field: value}))
    assert "host mac5" in msg and field in msg and "IPv4" in msg


def test_ipv4_data_ip_is_normalised():
    data = copy.deepcopy(GOOD)
    data["hosts"]["mac5"]["data_ip"] = "169.254.10.5"
    assert inventory.parse(data).hosts["mac5"].data_ip == "169.254.10.5"


# --- base_python: the interpreter setup-hosts builds the lane's venv from ----------------------------

def test_base_python_is_optional_and_read_as_an_absolute_path():
    data = copy.deepcopy(GOOD)
    data["hosts"]["mac5"]["base_python"] = "/opt/homebrew/bin/python3.12"
    inv = inventory.parse(data)
    assert inv.hosts["mac5"].base_python == "/opt/homebrew/bin/python3.12" and inv.hosts["mac4"].base_python is None


@pytest.mark.parametrize("value,words", [("python3.12", "relative path"), ("/opt/x/../python3", "climbs"),
                                         ("/opt/homebrew/bin/python3.12$(rm -rf ~)", "cannot carry safely"),
                                         (312, "expected an absolute path")])
def test_a_bad_base_python_is_refused_naming_host_and_field(value, words):
    msg = bad(lambda d: d["hosts"]["mac5"].update(base_python=value))
    assert "inv.yaml: host mac5: base_python" in msg and words in msg


# --- ssh.ciphers ---------------------------------------------------------------------------------------

def test_ciphers_default_to_the_lanes_and_take_an_openssh_list():
    from thunderlane import sshopts
    assert inventory.parse(copy.deepcopy(GOOD), "inv.yaml").ssh.ciphers == sshopts.CIPHERS
    data = copy.deepcopy(GOOD)
    data["ssh"]["ciphers"] = "aes256-gcm@openssh.com,aes256-ctr"
    assert inventory.parse(data, "inv.yaml").ssh.ciphers == "aes256-gcm@openssh.com,aes256-ctr"


@pytest.mark.parametrize("value", ["aes128-gcm@openssh.com chacha20", "+aes128-ctr", "aes128-ctr,", "", 7,
                                   "aes128-ctr;touch /tmp/y"])
def test_a_ciphers_value_that_is_not_a_plain_list_is_refused_naming_the_field(value):
    msg = bad(lambda d: d["ssh"].update(ciphers=value))
    assert "ssh.ciphers" in msg and "ssh -Q cipher" in msg
