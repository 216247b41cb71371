"""What sync-cache refuses before any transfer, decided from the caches' facts alone."""
import fcntl
import os
import shutil
import subprocess
import sys

import pytest

from thunderlane.facts import CacheFacts
from thunderlane.lab.kit import REPO_FOLDER
from thunderlane.inventory import Host
from thunderlane.onhost import probe
from thunderlane.sync import SyncError, _refuse_links
from tests.unit.builders import REPO, to_shared_layout

MAC4 = Host(name="mac4", python="/opt/py/bin/python", dataset_root="/d", runs_root="/r")


def facts(repo):
    return CacheFacts.from_json(probe.cache_facts(str(repo.parent), REPO))


@pytest.mark.parametrize("shared", [(), ("local",), ("mac4",), ("local", "mac4")])
def test_the_shared_store_passes_on_either_side(cache_pair, shared):
    """huggingface_hub 2.x's shared store is a layout the sync handles on both sides."""
    local, host = cache_pair
    for side, repo in (("local", local), ("mac4", host)):
        if side in shared:
            assert to_shared_layout(repo.parent, repo)
    _refuse_links(MAC4, {"local": facts(local), "mac4": facts(host)})


def test_an_escaping_host_link_is_refused_naming_host_and_file(cache_pair, tmp_path):
    local, host = cache_pair
    (tmp_path / "elsewhere.json").write_text("{}")
    snap = next((host / "snapshots").iterdir())
    os.unlink(snap / "config.json")
    os.symlink(os.path.relpath(tmp_path / "elsewhere.json", snap), snap / "config.json")
    with pytest.raises(SyncError, match=r"^mac4: snapshot link\(s\) config.json point outside"):
        _refuse_links(MAC4, {"local": facts(local), "mac4": facts(host)})


# --- the host-side preparation (thunderlane/onhost/sync_prep.py), run as the launcher runs it ----

PREP = os.path.join(os.path.dirname(probe.__file__), "sync_prep.py")
ETAG = "ab" * 32


def prep(cache, *args):
    with open(PREP, encoding="utf-8") as source:
        return subprocess.run([sys.executable, "-", str(cache), REPO_FOLDER, *args], stdin=source,
                              capture_output=True, text=True)


def leftovers(cache):
    """mac4's cache after a killed download: a blob's `.incomplete` files, the client's lock, an rsync
    temp file, a Finder file; another repo with a leftover of its own."""
    blobs, locks = cache / REPO_FOLDER / "blobs", cache / ".locks" / REPO_FOLDER
    for d in (blobs, locks, cache / "models--lab--other" / "blobs"):
        d.mkdir(parents=True, exist_ok=True)
    for name in (f"{ETAG}.incomplete", f"{ETAG}.1a2b3c4d.incomplete", f".{ETAG}.Xy12Zq", ".DS_Store"):
        (blobs / name).write_bytes(b"x")
    (locks / f"{ETAG}.lock").touch()
    (cache / "models--lab--other" / "blobs" / f"{ETAG}.incomplete").write_bytes(b"x")
    return blobs, locks / f"{ETAG}.lock"


def test_stale_leftovers_go_and_nothing_else(tmp_path):
    blobs, lock = leftovers(tmp_path)
    p = prep(tmp_path)
    assert p.returncode == 0, p.stderr
    assert sorted(os.listdir(blobs)) == [".DS_Store"]  # Finder's file is no leftover of ours
    assert lock.exists()  # the client keeps one lock per blob: it stays
    assert (tmp_path / "models--lab--other" / "blobs" / f"{ETAG}.incomplete").exists()  # another repo's
    assert f"removed leftover {REPO_FOLDER}/blobs/{ETAG}.1a2b3c4d.incomplete" in p.stdout


def test_a_held_lock_keeps_the_download_files(tmp_path):
    blobs, lock = leftovers(tmp_path)
    with open(lock, "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as huggingface_hub's filelock holds it
        p = prep(tmp_path)
    assert p.returncode == 0, p.stderr
    assert (blobs / f"{ETAG}.incomplete").exists() and (blobs / f"{ETAG}.1a2b3c4d.incomplete").exists()
    assert f"kept {REPO_FOLDER}/blobs/{ETAG}.incomplete: a download holds its lock" in p.stdout


def test_dry_run_removes_nothing(tmp_path):
    blobs, _ = leftovers(tmp_path)
    before = sorted(os.listdir(blobs))
    p = prep(tmp_path, "--dry-run")
    assert p.returncode == 0 and "would remove leftover" in p.stdout and sorted(os.listdir(blobs)) == before


@pytest.mark.parametrize("linked,inside", [(REPO_FOLDER, f"blobs/{ETAG}.incomplete"),
                                           (f"{REPO_FOLDER}/blobs", f"{ETAG}.incomplete"),
                                           (".locks", f"{REPO_FOLDER}/{ETAG}.lock")])
def test_a_folder_that_is_a_link_is_refused(tmp_path, linked, inside):
    """rsync and the cleanup would write (or delete) through it, outside the cache."""
    cache, elsewhere = tmp_path / "hub", tmp_path / "elsewhere"
    leftovers(cache)
    shutil.move(cache / linked, elsewhere)
    os.symlink(elsewhere, cache / linked)
    p = prep(cache)
    assert p.returncode == 3 and f"{cache / linked} is not a folder of the cache" in p.stderr
    assert (elsewhere / inside).exists()  # nothing removed through the link


def test_store_links_are_listed_with_their_size(cache_pair):
    _, host = cache_pair
    stored = to_shared_layout(host.parent, host)
    p = prep(host.parent)
    listed = {line.split()[1]: int(line.split()[2]) for line in p.stdout.splitlines() if line.startswith("linked ")}
    assert listed == {etag: entry.stat().st_size for etag, entry in stored.items()}
