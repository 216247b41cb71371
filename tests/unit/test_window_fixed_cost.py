"""The window's fixed cost (issue 12 item 4): preflight asks each host everything in one ssh session
(the data path first, so every host listens at once), and the runner's last commit check is fab's
gate, which gives the exit the runner would have given."""
import importlib
import threading
from types import SimpleNamespace

from thunderlane import inventory
from thunderlane.remote import HostError
from thunderlane.window.runner import NOCOMMIT, runner_exit

pre = importlib.import_module("thunderlane.window.preflight")  # the package exports a function of that name


def two_hosts(tmp_path):
    host = {"hostname": "127.0.0.4", "user": "me", "port": 2204, "python": "/opt/venv/bin/python",
            "dataset_root": "/Users/me/data", "runs_root": "/Users/me/runs"}
    data = {"local": {"dataset_root": str(tmp_path / "data"), "runs_root": str(tmp_path / "runs")},
            "hosts": {"mac4": dict(host, ssh_name="mac4", data_ip="198.18.0.4"),
                      "mac5": dict(host, ssh_name="mac5", data_ip="198.18.0.5", port=2205)}}
    return inventory.parse(data, "inv.yaml")


def test_preflight_asks_each_host_once_with_the_data_path_first(tmp_path, monkeypatch):
    inv = two_hosts(tmp_path)
    profile = SimpleNamespace(name="p", run_name="p", hosts=("mac4", "mac5"), writer="mac4", backend="ring",
                              min_free_mb=1)
    asked, lock = [], threading.Lock()

    def ask(inv, host, *queries, timeout=None):
        with lock:
            asked.append((host.name, [q.args[0] for q in queries]))
        raise HostError(host.name, "unreachable", "not in this test")
    monkeypatch.setattr(pre, "ask", ask)
    report, runs, local = pre.preflight(inv, profile)
    sessions = dict(asked)
    assert len(asked) == 3 and set(sessions) == {"local", "mac4", "mac5"}, asked
    for name in ("mac4", "mac5"):
        assert sessions[name] == ["links", "macos", "dataset", "cache", "lane"], sessions[name]
    assert sessions["local"] == ["dataset", "cache"]
    assert not report.ok and runs == {} and local is None


def test_the_gate_gives_the_exit_the_runner_would_have_given():
    assert runner_exit(0, 10, 10) == 0
    assert runner_exit(1, 10, 10) == 0          # committed: a noisy teardown, as the runner said
    assert runner_exit(0, 5, 10) == NOCOMMIT    # a clean launch that did not commit
    assert runner_exit(137, 5, 10) == 137       # the launch's own failure
    assert runner_exit(0, None, 10) == NOCOMMIT
