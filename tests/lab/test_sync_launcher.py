"""The sync launcher by itself: usage, refusals, and that a refusal writes nothing."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from thunderlane.lab import kit
from thunderlane.sync import LAUNCHER, launcher_argv


def run(argv):
    return subprocess.run(argv, capture_output=True, text=True)


def test_usage_line():
    p = run(["bash", str(LAUNCHER)])
    assert p.returncode == 64 and p.stderr.startswith("usage: sync_gemma4_e2b_cache_to_thunder.sh")
    p = run(["bash", str(LAUNCHER), "--bogus", "x"])
    assert p.returncode == 64 and "unknown option --bogus" in p.stderr


@pytest.mark.parametrize("dest,why", [("/", "not a cache root"), ("relative/hub", "not an absolute path"),
                                      ("/x/../etc", "climbs"), ("/x/y\n/z", "control character"),
                                      ("/x/%h/hub", "a % (ssh expands it)"),
                                      ("/x/T7 Shield/it's/hub", "has a quote, a backslash"),
                                      ("/x/T7 Shield/*/hub", "or a wildcard (* ? [)")])
def test_bad_destination_is_refused(lab_inv, dest, why):
    argv = launcher_argv(lab_inv, lab_inv.hosts["mac4"], lab_inv.local.hf_cache, dest)
    p = run(argv)
    assert p.returncode == 65 and why in p.stderr


@pytest.mark.parametrize("host", ["-oProxyCommand=touch /tmp/x", "a;b", "$(id)"])
def test_bad_host_is_refused(lab_inv, host):
    argv = launcher_argv(lab_inv, lab_inv.hosts["mac4"], lab_inv.local.hf_cache, "/tmp/hub")[:-1] + [host]
    p = run(argv)
    assert p.returncode in (64, 65) and not os.path.exists("/tmp/x")


def snapshot_link(inv, name):
    repo = os.path.join(inv.local.hf_cache, kit.REPO_FOLDER)
    with open(os.path.join(repo, "refs", "main")) as f:
        rev = f.read().strip()
    return os.path.join(repo, "snapshots", rev, name)


@pytest.mark.parametrize("target", ["/etc/hostname", "../../../../outside.json", "../../../escape/x"])
def test_unsafe_source_link_is_refused_before_any_transfer(lab_inv, lab_dir, target):
    link = snapshot_link(lab_inv, "config.json")
    os.unlink(link)
    os.symlink(target, link)
    dest = str(lab_dir / "mac4" / ".cache" / "huggingface" / "hub")
    blobs = os.path.join(dest, kit.REPO_FOLDER, "blobs")
    before = sorted(os.listdir(blobs))
    p = run(launcher_argv(lab_inv, lab_inv.hosts["mac4"], lab_inv.local.hf_cache, dest))
    assert p.returncode == 65 and "config.json" in p.stderr and "refusing" in p.stderr
    assert sorted(os.listdir(blobs)) == before  # not even the leftover cleanup ran


@pytest.mark.parametrize("links", [
    {"a": "..", "b": "a/../../.."},                 # by its string, b stays inside the repo folder
    {"a": "../../blobs", "c": "a/../../outside"},   # through a link to a folder, then up
])
def test_a_link_chain_that_climbs_out_is_refused(lab_inv, lab_dir, links):
    """Links are judged by their real path, resolved link after link, not by splitting strings."""
    snap = os.path.dirname(snapshot_link(lab_inv, "config.json"))
    for name, target in links.items():
        os.symlink(target, os.path.join(snap, name))
    dest = str(lab_dir / "mac4" / ".cache" / "huggingface" / "hub")
    before = sorted(os.listdir(os.path.join(dest, kit.REPO_FOLDER, "blobs")))
    p = run(launcher_argv(lab_inv, lab_inv.hosts["mac4"], lab_inv.local.hf_cache, dest))
    last = list(links)[-1]
    assert p.returncode == 65 and "snapshots/" in p.stderr and f"/{last} links outside the repo folder" in p.stderr
    assert sorted(os.listdir(os.path.join(dest, kit.REPO_FOLDER, "blobs"))) == before


def test_a_store_link_through_another_link_is_refused(lab_inv, lab_dir, tmp_path):
    """A repo blob may link into the marked shared store of its own cache, by the hub's own path and
    with no link on the way: a store prefix folder that is a link elsewhere is refused."""
    from tests.unit.builders import to_shared_layout
    cache = kit.host_cache(lab_dir, "local")
    to_shared_layout(cache, cache / kit.REPO_FOLDER)  # if the lab's local is not shared already
    entry = Path(snapshot_link(lab_inv, "model-00001-of-00002.safetensors")).resolve()
    assert entry.parent.parent == cache / "blobs"
    prefix = entry.parent
    shutil.move(prefix, tmp_path / "moved")
    os.symlink(tmp_path / "moved", prefix)
    dest = str(lab_dir / "mac4" / ".cache" / "huggingface" / "hub")
    p = run(launcher_argv(lab_inv, lab_inv.hosts["mac4"], lab_inv.local.hf_cache, dest))
    assert p.returncode == 65 and "links outside the repo folder" in p.stderr and str(tmp_path) in p.stderr


SKIPPED = "sync: snapshots and refs already match"
NO_SNAPSHOTS = "sync: snapshots already match"
NO_REFS = "sync: refs already match"


@pytest.mark.parametrize("change,said", [("none", SKIPPED), ("snapshot link gone", NO_REFS),
                                         ("refs/main differs", NO_SNAPSHOTS), ("new file in refs", NO_SNAPSHOTS)])
def test_snapshots_and_refs_passes_run_only_when_they_have_something_to_send(lab_inv, lab_dir, change, said):
    """With mac4's snapshots and refs like local's, the launcher skips those two passes (one rsync
    session less each); a difference in snapshots (a missing link) runs the snapshots pass only, one
    elsewhere (another commit in refs/main, a file local has and mac4 lacks) the last pass only, and
    mac4 ends with local's."""
    mac4 = lab_inv.hosts["mac4"]
    dest = str(kit.host_cache(lab_dir, "mac4"))
    argv = launcher_argv(lab_inv, mac4, lab_inv.local.hf_cache, dest)
    assert run(argv).returncode == 0
    repo, local_repo = kit.host_repo(lab_dir, "mac4"), kit.host_repo(lab_dir, "local")
    rev = (local_repo / "refs" / "main").read_text()
    link = next(p for p in sorted((repo / "snapshots" / rev).iterdir()) if p.is_symlink())
    if change == "snapshot link gone":
        link.unlink()
    elif change == "refs/main differs":
        (repo / "refs" / "main").write_text("0" * 40)
    elif change == "new file in refs":
        (local_repo / "refs" / "pr").write_text(rev)
    p = run(argv)
    assert p.returncode == 0, p.stderr[-2000:]
    assert [m for m in (SKIPPED, NO_SNAPSHOTS, NO_REFS) if m in p.stdout] == [said], p.stdout[-3000:]
    assert os.readlink(link) == os.readlink(local_repo / "snapshots" / rev / link.name)
    assert (repo / "refs" / "main").read_text() == rev
    assert change != "new file in refs" or (repo / "refs" / "pr").read_text() == rev
