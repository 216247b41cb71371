"""sync-cache between every mix of cache layouts: huggingface_hub's classic one (blobs in the repo
folder) and 2.x's shared blob store (the repo's blobs link into ``<hub>/blobs/<2 hex>/<xet hash>``),
on a fresh host and on a partial one. The shared layouts are made by huggingface_hub's own
``publish_blob_to_shared_store`` as the lab's client-made caches are (``lab.up(layout=...)``).

Each ends with ``verify-cache --deep`` complete, and, on the host (its interpreter, its home),
``scan_cache_dir`` reporting the repo with local's size and no warnings and ``mlx_lm.load`` working
offline. Another repo in the host's cache, sharing a store entry, is left exactly as it was."""
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from thunderlane import lab
from thunderlane.lab import hub, kit
from tests.lab.conftest import HOSTS, by_host, fab, fab_json
from tests.unit.builders import to_shared_layout

OTHER = "models--lab--other"
ON_HOST = """\
import json, sys
from huggingface_hub import scan_cache_dir
info = scan_cache_dir()
repos = [r for r in info.repos if r.repo_id == sys.argv[1]]
out = {"warnings": [str(w) for w in info.warnings], "size": repos[0].size_on_disk if repos else None}
from mlx_lm import load
model, tokenizer = load(sys.argv[1])
out["loaded"] = type(model).__name__
print(json.dumps(out))
"""


def shard_blobs(repo):
    """{file name: blob path} of the snapshot's weight shards."""
    snap = next((repo / "snapshots").iterdir())
    return {f.name: repo / "blobs" / os.readlink(f).split("/")[-1]
            for f in sorted(snap.iterdir()) if f.name.endswith(".safetensors")}


def other_repo(cache, content):
    """Another model in the host's cache, one LFS file of ``content`` (the same bytes as one of our
    shards, so that in the shared layout both repos' blobs would name one store entry)."""
    repo, rev = cache / OTHER, "b" * 40
    etag = hashlib.sha256(content).hexdigest()
    (repo / "blobs").mkdir(parents=True)
    (repo / "blobs" / etag).write_bytes(content)
    (repo / "snapshots" / rev).mkdir(parents=True)
    (repo / "snapshots" / rev / "model.safetensors").symlink_to(f"../../blobs/{etag}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(rev)
    return repo


def tree(root, skip):
    """Everything under ``root`` except the ``skip`` paths: {relative path: link target or sha256}."""
    seen = {}
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if os.path.join(dirpath, d) not in skip]
        for name in files + [d for d in dirs if os.path.islink(os.path.join(dirpath, d))]:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            if os.path.islink(path):
                seen[rel] = "-> " + os.readlink(path)
            else:
                seen[rel] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return seen


def arrange(lab_dir, local_layout, host_layout, state):
    """The lab seeded by the hub's client in the layouts asked (mac4 partial: a killed download; in
    the shared layout its second shard already in the store), mac4 emptied if ``fresh``; another
    repo beside ours in mac4's cache. Returns mac4's cache root."""
    lab.up(HOSTS, lab=lab_dir, model_mb=1.0, reseed=True,
           layout=f"local={local_layout},mac4={host_layout},mac5=classic")
    local, host = kit.host_repo(lab_dir, "local"), kit.host_repo(lab_dir, "mac4")
    cache = host.parent
    shard1, shard2 = shard_blobs(local).values()
    assert shard2.is_symlink() == (local_layout == "shared")
    if state == "fresh":
        shutil.rmtree(host)
        shutil.rmtree(cache / ".locks" / kit.REPO_FOLDER)
    elif host_layout == "shared":  # the sync must keep this one as it is
        assert os.readlink(host / "blobs" / shard2.name).startswith("../../blobs/")
    other = other_repo(cache, shard1.read_bytes())
    if host_layout == "shared":
        assert to_shared_layout(cache, other)
    return cache


def on_host(inv, host, script, *args):
    h = inv.hosts[host]
    command = shlex.join([h.python, "-c", script, *args])
    command = "HF_HUB_OFFLINE=1 " + command
    p = subprocess.run(["ssh", "-F", inv.ssh.config, h.ssh_name, command], capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("state", ["fresh", "partial"])
@pytest.mark.parametrize("local_layout,host_layout",
                         [("classic", "classic"), ("shared", "classic"), ("classic", "shared"), ("shared", "shared")])
def test_sync_between_layouts(lab_inv, lab_dir, local_layout, host_layout, state):
    cache = arrange(lab_dir, local_layout, host_layout, state)
    repo = cache / kit.REPO_FOLDER
    kept_link = shard_blobs(kit.host_repo(lab_dir, "local"))["model-00002-of-00002.safetensors"].name
    others = tree(cache, {str(repo), str(cache / ".locks" / kit.REPO_FOLDER)})
    code, before = fab_json(lab_inv, "verify-cache")
    assert by_host(before)["local"]["verdict"] == "complete", before
    assert by_host(before)["mac4"]["verdict"] == ("absent" if state == "fresh" else "partial"), before

    code, out = fab_json(lab_inv, "sync-cache", "--host", "mac4")
    assert code == 0, out
    row = out["results"][0]
    assert row["after"] == "complete" and row["missing_bytes"] > 0
    assert 1.0 <= row["literal_bytes"] / row["missing_bytes"] <= 1.02, row  # only the missing bytes

    code, report = fab_json(lab_inv, "verify-cache", "--deep")
    assert code == 0 and by_host(report)["mac4"]["verdict"] == "complete", report
    seen = on_host(lab_inv, "mac4", ON_HOST, lab_inv.repo_id)
    assert seen["warnings"] == [] and seen["loaded"]
    assert seen["size"] == by_host(report)["local"]["figures"]["bytes_exact"]
    assert tree(cache, {str(repo), str(cache / ".locks" / kit.REPO_FOLDER)}) == others  # nothing else touched
    assert not [n for n in os.listdir(repo / "blobs") if n.endswith(".incomplete") or n.startswith(".")]
    if state == "partial":  # the client's own per-blob lock files stay: removing them gains nothing
        assert os.listdir(cache / ".locks" / kit.REPO_FOLDER)
    if host_layout == "shared" and state == "partial":  # the host's own store link was kept, not re-sent
        assert os.readlink(repo / "blobs" / kept_link).startswith("../../blobs/")


def test_a_live_download_in_the_host_cache_keeps_its_files(lab_inv, lab_dir):
    """A real `snapshot_download` into mac4's cache, its first shard throttled, runs while sync-cache
    runs: the sync keeps the download's `<etag>.<id>.incomplete`, and the older one an interrupted
    download left for the same blob, as the download holds the blob's lock; it still sends what is
    missing. The download, unthrottled, then finishes; only then is the older leftover stale, and
    the next sync removes it."""
    local, cache = kit.host_repo(lab_dir, "local"), kit.host_cache(lab_dir, "mac4")
    rev = (local / "refs" / "main").read_text().strip()
    shard = "model-00001-of-00002.safetensors"
    etag = shard_blobs(local)[shard].name
    blobs = cache / kit.REPO_FOLDER / "blobs"
    old = set(blobs.glob(f"{etag}*.incomplete"))
    assert old, "the lab's mac4 should hold what a killed download of the shard left"
    server = hub.HubServer(local / "snapshots" / rev, lab_inv.repo_id, rev, throttle={shard: 4000}).start()
    port, done = int(server.endpoint.rsplit(":", 1)[1]), {}
    python = lab_inv.hosts["mac4"].python
    job = threading.Thread(target=lambda: done.update(d=hub.download(
        python, cache, server.endpoint, lab_inv.repo_id, rev, env={"HOME": str(lab_dir / "mac4")}, timeout=240)))
    job.start()
    try:
        reached = hub.sent_over(server.endpoint, shard, 1)
        deadline = time.monotonic() + 60
        while not reached() and time.monotonic() < deadline:
            time.sleep(0.05)
        live = set(blobs.glob(f"{etag}*.incomplete")) - old
        p = fab(lab_inv, "sync-cache", "--host", "mac4")
        assert job.is_alive(), "the download ended before the sync: nothing was live"
        assert live, "the download has no file of its own yet"
        for f in old | live:
            assert f"kept {kit.REPO_FOLDER}/blobs/{f.name}: a download holds its lock" in p.stdout, p.stdout
            assert f.is_file()  # the live download's files are still there
        assert (blobs / etag).is_file()  # and the sync sent the shard anyway
    finally:
        server.stop()  # the throttled reply ends short; the client resumes from a fast hub on the same port
        fast = hub.HubServer(local / "snapshots" / rev, lab_inv.repo_id, rev, port=port).start()
        job.join(240)
        fast.stop()
    assert done["d"].ok, done["d"].stderr[-2000:]
    code, out = fab_json(lab_inv, "sync-cache", "--host", "mac4")
    assert code == 0 and out["results"][0]["after"] == "complete" and out["results"][0]["literal_bytes"] == 0
    assert not list(blobs.glob("*.incomplete"))  # stale now: removed
    code, report = fab_json(lab_inv, "verify-cache", "--deep")
    assert code == 0 and by_host(report)["mac4"]["verdict"] == "complete", report
    seen = on_host(lab_inv, "mac4", ON_HOST, lab_inv.repo_id)
    assert seen["warnings"] == [] and seen["loaded"]


def spoil(cache, how, elsewhere):
    """mac4's store spoiled: its shard-2 entry truncated, the marker gone, or the prefix folder a link."""
    snap = next((cache / kit.REPO_FOLDER / "snapshots").iterdir())
    entry = (snap / "model-00002-of-00002.safetensors").resolve()
    assert entry.parent.parent == cache / "blobs"
    if how == "truncated":
        os.chmod(entry, 0o644)
        with open(entry, "r+b") as f:
            f.truncate(entry.stat().st_size // 2)
    elif how == "unmarked":
        os.unlink(cache / "blobs" / ".huggingface-shared-blobs")
    else:
        shutil.move(entry.parent, elsewhere)
        os.symlink(elsewhere, entry.parent)
    return entry


@pytest.mark.parametrize("how,verdict,synced", [
    ("truncated", "is not a whole safetensors file", True),
    ("unmarked", "marker of blobs/ at the hub root is missing", False),
    ("escape", "goes through a link to", False),
])
def test_a_spoiled_host_store_is_named_and_never_fixed_by_deleting(lab_inv, lab_dir, tmp_path, how, verdict, synced):
    """verify-cache names the store path; sync-cache either refuses (a link leaving the repo folder)
    or makes the repo whole with a classic blob of its own; the store entry, which another repo
    may list, is never deleted or rewritten."""
    cache = arrange(lab_dir, "classic", "shared", "partial")
    entry = spoil(cache, how, tmp_path / "elsewhere")
    repo = cache / kit.REPO_FOLDER
    store = tree(cache / "blobs", set()) if how != "escape" else tree(tmp_path / "elsewhere", set())
    code, before = fab_json(lab_inv, "verify-cache")
    mac4 = by_host(before)["mac4"]
    assert mac4["verdict"] == "corrupt" and verdict in mac4["detail"], mac4
    assert (str(tmp_path) if how == "escape" else str(entry.relative_to(cache))) in mac4["detail"], mac4
    untouched = tree(repo, set())
    code, out = fab_json(lab_inv, "sync-cache", "--host", "mac4")
    if synced:
        assert code == 0 and out["results"][0]["after"] == "complete", out
        assert fab_json(lab_inv, "verify-cache", "--deep")[0] == 0
    else:
        assert code == 1 and "model-00002-of-00002.safetensors" in out["errors"][0], out
        assert "refusing" in out["errors"][0] and tree(repo, set()) == untouched
    assert store == (tree(cache / "blobs", set()) if how != "escape" else tree(tmp_path / "elsewhere", set()))


def test_a_store_manifest_naming_another_repo_is_named_and_left_alone(lab_inv, lab_dir):
    """mac4's store entry for shard 2 lists only another repo's blob in its .refs: after the sync,
    verify-cache calls mac4 complete with a note naming the entry; the manifest is not rewritten."""
    cache = arrange(lab_dir, "classic", "shared", "partial")
    snap = next((cache / kit.REPO_FOLDER / "snapshots").iterdir())
    entry = (snap / "model-00002-of-00002.safetensors").resolve()
    refs = entry.with_name(entry.name + ".refs")
    os.chmod(refs, 0o644)
    refs.write_text(f"{OTHER}/blobs/{'e' * 64}\n")
    code, out = fab_json(lab_inv, "sync-cache", "--host", "mac4")
    assert code == 0 and out["results"][0]["after"] == "complete", out
    code, report = fab_json(lab_inv, "verify-cache")
    mac4 = by_host(report)["mac4"]
    assert mac4["verdict"] == "complete" and f"{entry.relative_to(cache)} does not list this repo's blob" in mac4["detail"]
    assert refs.read_text() == f"{OTHER}/blobs/{'e' * 64}\n"


def test_a_local_store_without_its_marker_is_no_source(lab_inv, lab_dir):
    """local's blobs link into a hub-root blobs/ folder that is not marked as the hub's store: the
    sync refuses before any transfer, naming the marker and the link; mac4 is left as it was."""
    cache = arrange(lab_dir, "shared", "classic", "partial")
    os.unlink(kit.host_cache(lab_dir, "local") / "blobs" / ".huggingface-shared-blobs")
    before = tree(cache, set())
    code, out = fab_json(lab_inv, "sync-cache", "--host", "mac4")
    assert code == 1 and out["results"] == [], out
    error = out["errors"][0]
    assert error.startswith("local cache is corrupt, so it cannot be the source: snapshots/"), error
    assert ".huggingface-shared-blobs marker of blobs/ at the hub root is missing" in error
    assert tree(cache, set()) == before
