"""Paths as Macs name them (issue 11, item 9): data, runs, caches and the lane's interpreter on
``/Volumes/T7 Shield``-like folders and under ``Application Support``, on the hosts and on the
control side, the inventory and the lane's ssh files too, end to end through the real fab CLI:
verify, sync to a cold host, a training window, mirror-back. Also the ssh options and generated
ssh_config with such files, read by a real ssh."""
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.lab.conftest import fab_json, no_rank_left
from thunderlane import inventory, remote
from thunderlane.lab.seed import CACHE_REL, DATASET_REL

# one folder per lab host, each named the way macOS names such places
SPACED = {"local": "Library/Application Support/Thunder Lane",
          "mac4": "Volumes/T7 Shield/thunder (main)",
          "mac5": "Volumes/Samsung T5 & co #2/thunder"}


def spaced_inventory(inv, folder):
    """A copy of the lab's inventory (itself written under a folder with a space) whose dataset_root,
    runs_root and hf_cache, on every host and locally, lie in a :data:`SPACED` folder: the seeded
    corpus copied there, the local cache copied there, the hosts' caches cold (absent)."""
    lab = Path(inv.path).parent
    data = yaml.safe_load(Path(inv.path).read_text())
    for name, rel in SPACED.items():
        home = lab / name / rel
        shutil.rmtree(home, ignore_errors=True)
        shutil.copytree(lab / name / DATASET_REL, home / "data", symlinks=True)
        if name == "local":
            shutil.copytree(lab / name / CACHE_REL, home / "hf", symlinks=True)
        entry = data["local"] if name == "local" else data["hosts"][name]
        entry.update(dataset_root=str(home / "data"), runs_root=str(home / "runs"), hf_cache=str(home / "hf"))
    path = Path(folder) / "Application Support" / "hosts.yaml"
    path.parent.mkdir(parents=True)
    # the lane's interpreter too: one path for every host (mlx.launch's --python), a link to the
    # lab's venv folder (so that the venv's pyvenv.cfg is found beside it)
    venv = path.parent / "lane venv"
    venv.symlink_to(Path(data["hosts"]["mac4"]["python"]).parent.parent)
    for entry in (data["local"], *data["hosts"].values()):
        entry["python"] = str(venv / "bin" / "python")
    keys = path.parent / "ssh files"  # and the lane's own ssh files (a private key keeps its mode)
    keys.mkdir()
    for key in ("config", "known_hosts", "identity"):
        data["ssh"][key] = shutil.copy2(data["ssh"][key], keys)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return inventory.load(path)


@pytest.fixture
def spaced(warm_lab, tmp_path):
    inv = spaced_inventory(warm_lab, tmp_path)
    yield inv
    lab = Path(warm_lab.path).parent
    for name, rel in SPACED.items():
        shutil.rmtree(lab / name / rel.split("/")[0], ignore_errors=True)


def verdicts(report):
    return {r["host"]: r["verdict"] for r in report["results"]}


def test_paths_with_spaces_work_end_to_end(spaced, profile_dir):
    assert " " in spaced.ssh.known_hosts and " " in spaced.ssh.identity and " " in spaced.ssh.config
    for name in ("local", "mac4", "mac5"):
        h = spaced.host(name)
        assert all(" " in p for p in (h.python, h.dataset_root, h.runs_root, h.hf_cache))
    code, report = fab_json(spaced, "verify-dataset")
    assert code == 0 and set(verdicts(report).values()) == {"ok"}, report
    code, report = fab_json(spaced, "verify-cache")
    assert verdicts(report)["local"] == "complete" and verdicts(report)["mac5"] != "complete", report
    for host in ("mac4", "mac5"):  # cold hosts: the whole repo folder goes to the spaced cache
        code, out = fab_json(spaced, "sync-cache", "--host", host)
        assert code == 0 and out["results"][0]["after"] == "complete", out
    assert (Path(spaced.hosts["mac5"].hf_cache) / "models--mlx-community--gemma-4-e2b-4bit" / "refs" / "main").is_file()
    code, report = fab_json(spaced, "verify-cache")
    assert code == 0 and set(verdicts(report).values()) == {"complete"}, report
    code, out = fab_json(spaced, "sync-cache", "--host", "mac4", "--dry-run")  # rsync -n into the spaced cache
    assert code == 0 and out["results"][0]["after"] == "dry-run" and "T7 Shield" in out["results"][0]["command"], out

    env = {"THUNDER_PROFILES": str(profile_dir)}
    code, out = fab_json(spaced, "train-window", "--profile", "run_a", "--target", "4", "--window", "4", env=env)
    assert code == 0 and out["verdict"] == "success", out
    assert f"--python {spaced.hosts['mac4'].python}" in out["launches"][0]
    for host in ("mac4", "mac5"):  # every rank wrote into its spaced run directory
        assert (Path(spaced.hosts[host].runs_root) / "test_run_a" / "0000004_adapters.safetensors").is_file()
    code, out = fab_json(spaced, "mirror-back", "--profile", "run_a", env=env)
    assert code == 0 and out["step"] == 4 and out["remote_dir"].startswith(spaced.hosts["mac4"].runs_root), out
    mirror = Path(out["local_dir"])
    assert mirror.parent == Path(spaced.local.runs_root)
    assert (mirror / "0000004_adapters.safetensors").stat().st_size > 0
    # the handoff on top (at target already): its report is pushed into the writer's spaced run dir
    code, out = fab_json(spaced, "handoff", "--profile", "run_a", "--target", "4", "--window", "4", env=env)
    assert code == 0 and out["report_remote"], out
    assert (Path(spaced.hosts["mac4"].runs_root) / "test_run_a" / "handoff_report.md").is_file()
    assert no_rank_left()


def test_ssh_files_on_a_path_with_a_space(lab_inv, tmp_path):
    """known_hosts and the key under a folder with a space: the lane's ssh options and generated
    ssh_config quote them for ssh, which then reads each as one file (BatchMode, pinned host keys:
    a wrongly split path is a refused login)."""
    folder = tmp_path / "Application Support" / "ssh keys"
    folder.mkdir(parents=True)
    ssh = {}
    for key in ("known_hosts", "identity"):
        ssh[key] = str(folder / Path(getattr(lab_inv.ssh, key)).name)
        shutil.copy2(getattr(lab_inv.ssh, key), ssh[key])
    inv = inventory.Inventory(path=lab_inv.path, repo_id=lab_inv.repo_id, local=lab_inv.local,
                              hosts=lab_inv.hosts, ssh=inventory.SshSettings(connect_timeout=5, **ssh))
    host = inv.hosts["mac5"]
    p = subprocess.run(["ssh", *remote.ssh_options(inv, host), host.hostname, "echo", "in"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout == "in\n", p.stderr
    config = tmp_path / "ssh_config"
    config.write_text(remote.ssh_config(inv, [host]))
    p = subprocess.run(["ssh", "-F", str(config), host.ssh_name, "echo", "in"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout == "in\n", p.stderr
