"""lab-up's caches are huggingface_hub's own: made by snapshot_download against the lab hub, the
shared layout by the hub's own publishing code, mac4 by a real interrupted download; verify-cache
judges each layout, and the hub's own scan_cache_dir and mlx_lm.load agree."""
import os
import re
import subprocess
import sys
import threading
import time

import pytest
from huggingface_hub import scan_cache_dir, snapshot_download
from huggingface_hub.errors import IncompleteSnapshotError
from huggingface_hub.utils._shared_blobs import is_shared_blobs_dir

from tests.lab.conftest import HOSTS, LAYOUT, by_host, fab_json
from thunderlane import inventory, lab
from thunderlane.inventory import DEFAULT_REPO
from thunderlane.lab import kit
from thunderlane.lab.hub import HubServer, download, sent_over

SHARD1, SHARD2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
LOAD = "import mlx_lm; model, _ = mlx_lm.load(%r); print(model.model_type)" % DEFAULT_REPO


@pytest.fixture
def lab_in(lab_dir):
    """lab_in(layout): the lab reseeded in that layout; put back to the tests' layout afterwards."""
    def up(layout):
        return inventory.load(lab.up(HOSTS, lab=lab_dir, model_mb=1.0, reseed=True, layout=layout))
    yield up
    up(LAYOUT)


def snapshot(lab_dir, host):
    repo = kit.host_repo(lab_dir, host)
    return repo / "snapshots" / (repo / "refs" / "main").read_text().strip()


def incompletes(lab_dir, host):
    return sorted(p.name for p in (kit.host_repo(lab_dir, host) / "blobs").glob("*.incomplete"))


def etag(lab_dir, name):
    """The blob name (etag) of a file of local's snapshot."""
    return os.path.basename(os.readlink(snapshot(lab_dir, "local") / name))


def verify(inv, *flags):
    code, report = fab_json(inv, "verify-cache", *flags)
    return code, by_host(report)


def offline_load(cache):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache), HF_ENDPOINT="http://127.0.0.1:9")
    return subprocess.run([sys.executable, "-c", LOAD], env=env, capture_output=True, text=True, timeout=180)


def assert_real_interrupted_download(lab_dir, shards):
    """mac4 as the killed client left it: one `<etag>.<8 hex>.incomplete` per shard in flight (empty:
    the client writes 10 MiB blocks), its lock beside the others, no snapshot link for it."""
    names = incompletes(lab_dir, "mac4")
    assert [n.split(".")[0] for n in names] == sorted(etag(lab_dir, s) for s in shards)
    assert all(re.fullmatch(r"[0-9a-f]{64}\.[0-9a-f]{8}\.incomplete", n) for n in names), names
    repo = kit.host_repo(lab_dir, "mac4")
    locks = repo.parent / ".locks" / repo.name
    assert {f"{etag(lab_dir, s)}.lock" for s in shards} <= {p.name for p in locks.iterdir()}
    assert not any(os.path.lexists(snapshot(lab_dir, "mac4") / s) for s in shards)
    with pytest.raises(IncompleteSnapshotError):
        snapshot_download(DEFAULT_REPO, cache_dir=kit.host_cache(lab_dir, "mac4"), local_files_only=True)


def test_shared_layout_everywhere(lab_dir, lab_in):
    inv = lab_in("shared")
    assert lab.seeded(lab_dir)["layouts"] == {"local": "shared", "mac4": "shared", "mac5": "shared"}
    local = kit.host_cache(lab_dir, "local")
    assert is_shared_blobs_dir(local / "blobs")
    for shard in (SHARD1, SHARD2):  # the repo blob links into the store, by the hub's own relative path
        blob = kit.host_repo(lab_dir, "local") / "blobs" / etag(lab_dir, shard)
        assert re.fullmatch(r"\.\./\.\./blobs/([0-9a-f]{2})/\1[0-9a-f]{62}", os.readlink(blob))
    info = scan_cache_dir(local)
    assert info.warnings == [] and not info.incomplete_files
    (repo,) = info.repos
    assert repo.size_on_disk == sum(f.stat().st_size for f in snapshot(lab_dir, "local").iterdir())
    for flags in ((), ("--deep",)):
        code, hosts = verify(inv, *flags)
        assert code == 1 and hosts["local"]["verdict"] == "complete", hosts["local"]
        assert hosts["local"]["figures"]["store_entries"] == 2
        assert hosts["mac5"]["verdict"] == "complete", hosts["mac5"]
        assert hosts["mac4"]["verdict"] == "partial", hosts["mac4"]
        assert SHARD1 in hosts["mac4"]["detail"] and SHARD2 not in hosts["mac4"]["detail"]
        assert "1 *.incomplete blob(s) left over" in hosts["mac4"]["detail"]
    assert_real_interrupted_download(lab_dir, [SHARD1])
    assert os.readlink(kit.host_repo(lab_dir, "mac4") / "blobs" / etag(lab_dir, SHARD2)).startswith("../../blobs/")
    loaded = offline_load(local)
    assert loaded.returncode == 0 and loaded.stdout.split()[-1] == "gemma4", loaded.stderr[-2000:]


@pytest.mark.parametrize("spec", ["local=shared,mac4=classic,mac5=classic",
                                  "local=classic,mac4=shared,mac5=shared"])
def test_mixed_layouts_are_judged_alike(lab_dir, lab_in, spec):
    """A shared local beside classic hosts (a new control machine, older hosts) and the reverse:
    parity is by files, sizes and etags, not by how each host stores them."""
    inv = lab_in(spec)
    layouts = lab.seeded(lab_dir)["layouts"]
    assert layouts == lab.parse_layout(spec, HOSTS) and len(set(layouts.values())) == 2
    for host, layout in layouts.items():
        assert kit.host_layout(lab_dir, host) == layout
        assert is_shared_blobs_dir(kit.host_cache(lab_dir, host) / "blobs") == (layout == "shared"), host
    code, hosts = verify(inv, "--deep")
    assert hosts["local"]["verdict"] == "complete" and hosts["mac5"]["verdict"] == "complete", hosts
    in_flight = [SHARD1, SHARD2] if layouts["mac4"] == "classic" else [SHARD1]
    assert code == 1 and hosts["mac4"]["verdict"] == "partial"
    assert all(s in hosts["mac4"]["detail"] for s in in_flight), hosts["mac4"]["detail"]
    assert hosts["mac4"]["figures"]["missing_bytes"] == sum(
        (snapshot(lab_dir, "local") / s).stat().st_size for s in in_flight)
    assert_real_interrupted_download(lab_dir, in_flight)
    info = scan_cache_dir(kit.host_cache(lab_dir, "mac5"))
    assert info.warnings == [] and not info.incomplete_files


def test_a_killed_then_rerun_download_is_complete_with_a_note(lab_inv, lab_dir):
    """The real client run again over mac4's interrupted download finishes it and leaves the killed
    run's `*.incomplete` files orphaned beside the finished blobs: complete, with a note."""
    orphans = incompletes(lab_dir, "mac4")
    assert len(orphans) == 2
    rev = snapshot(lab_dir, "local").name
    with HubServer(snapshot(lab_dir, "local"), DEFAULT_REPO, rev) as hub:
        again = download(lab_inv.hosts["mac4"].python, kit.host_cache(lab_dir, "mac4"), hub.endpoint, DEFAULT_REPO,
                         env={"HOME": str(lab_dir / "mac4")})
    assert again.ok, again.stderr[-2000:]
    assert incompletes(lab_dir, "mac4") == orphans
    code, hosts = verify(lab_inv, "--deep")
    assert code == 0 and hosts["mac4"]["verdict"] == "complete", hosts["mac4"]
    assert "note: 2 orphaned *.incomplete file(s) beside finished blobs" in hosts["mac4"]["detail"]
    assert hosts["mac4"]["figures"]["locks_held"] == 0 and hosts["mac4"]["figures"]["orphans"] == 2
    assert hosts["mac4"]["figures"]["incomplete"] == 0


def test_a_download_running_now_is_seen_by_its_lock(lab_inv, lab_dir):
    """While the real client downloads into mac4 (a shard throttled), its lock is held: verify-cache
    says a download is running; once it is gone, the same lock file is no fault."""
    rev, stop = snapshot(lab_dir, "local").name, threading.Event()
    with HubServer(snapshot(lab_dir, "local"), DEFAULT_REPO, rev, throttle={SHARD1: 20_000}) as hub:
        runner = threading.Thread(target=download, args=(
            lab_inv.hosts["mac4"].python, kit.host_cache(lab_dir, "mac4"), hub.endpoint, DEFAULT_REPO),
            kwargs={"env": {"HOME": str(lab_dir / "mac4")}, "kill_when": stop.is_set})
        runner.start()
        try:
            in_flight = sent_over(hub.endpoint, SHARD1, 4096)
            deadline = time.monotonic() + 60
            while not in_flight() and time.monotonic() < deadline:
                time.sleep(0.05)
            _, hosts = verify(lab_inv)
        finally:
            stop.set()
            runner.join()
    assert hosts["mac4"]["verdict"] == "partial" and hosts["mac4"]["figures"]["locks_held"] == 1, hosts["mac4"]
    assert f"a download is running in this cache now (1 lock(s) held: {etag(lab_dir, SHARD1)}.lock)" \
        in hosts["mac4"]["detail"]
    _, hosts = verify(lab_inv)
    assert hosts["mac4"]["figures"]["locks_held"] == 0 and "running" not in hosts["mac4"]["detail"]
