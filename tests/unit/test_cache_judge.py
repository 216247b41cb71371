import os
import shutil
import time

import pytest
from filelock import FileLock
from huggingface_hub import scan_cache_dir

from thunderlane import cache
from thunderlane.facts import CacheFacts
from thunderlane.onhost import probe
from tests.unit.builders import REPO, build_repo, model_files, to_shared_layout


def facts(repo, deep=False):
    return CacheFacts.from_json(probe.cache_facts(str(repo.parent), REPO, deep=deep))


def test_complete_copy_is_complete(cache_pair):
    local, host = cache_pair
    ref = facts(local)
    assert cache.judge_reference(ref).verdict == "complete"
    r = cache.judge("mac5", facts(host), ref)
    assert r.ok and r.verdict == "complete"
    assert r.figures["files"] == 5 and r.figures["missing_bytes"] == 0


def test_missing_shards_make_partial_with_bytes(cache_pair):
    local, host = cache_pair
    snap = host / "snapshots" / ("a" * 40)
    shard = snap / "model-00002-of-00002.safetensors"
    blob = host / "blobs" / os.readlink(shard).split("/")[-1]
    size = blob.stat().st_size
    shard.unlink()
    blob.rename(blob.with_name(blob.name + ".incomplete"))
    r = cache.judge("mac4", facts(host), facts(local))
    assert r.verdict == "partial" and not r.ok
    assert "model-00002-of-00002.safetensors" in r.detail and ".incomplete" in r.detail
    assert r.figures["missing_bytes"] == size


def test_missing_bytes_are_per_blob_a_blob_that_arrived_without_its_link_is_not_missing(cache_pair):
    """An interrupted sync leaves the blobs that arrived, but not the snapshot links made after
    them: their files are missing, their bytes are not (the rerun sends only the other blob)."""
    local, host = cache_pair
    snap = host / "snapshots" / ("a" * 40)
    kept, gone = (snap / f"model-0000{i}-of-00002.safetensors" for i in (1, 2))
    gone_blob = host / "blobs" / os.readlink(gone).split("/")[-1]
    size = gone_blob.stat().st_size
    kept.unlink()   # its blob stays: it arrived before the cable was pulled
    gone.unlink()
    gone_blob.unlink()
    r = cache.judge("mac4", facts(host), facts(local))
    assert r.verdict == "partial" and "missing 2 file(s)" in r.detail
    assert r.figures["missing_bytes"] == size


def test_a_blob_held_at_another_size_is_still_missing_whole(cache_pair):
    local, host = cache_pair
    link = host / "snapshots" / ("a" * 40) / "model-00001-of-00002.safetensors"
    blob = host / "blobs" / os.readlink(link).split("/")[-1]
    size = blob.stat().st_size
    link.unlink()
    blob.write_bytes(blob.read_bytes()[:-4])
    assert cache.judge("mac4", facts(host), facts(local)).figures["missing_bytes"] == size


def test_dangling_link_counts_as_missing(cache_pair):
    local, host = cache_pair
    shard = host / "snapshots" / ("a" * 40) / "model-00001-of-00002.safetensors"
    (host / "blobs" / os.readlink(shard).split("/")[-1]).unlink()
    r = cache.judge("mac4", facts(host), facts(local))
    assert r.verdict == "partial" and "dangling" in r.detail


def test_truncated_shard_is_corrupt(cache_pair):
    local, host = cache_pair
    shard = host / "snapshots" / ("a" * 40) / "model-00001-of-00002.safetensors"
    blob = host / "blobs" / os.readlink(shard).split("/")[-1]
    blob.write_bytes(blob.read_bytes()[:-4])
    r = cache.judge("mac4", facts(host), facts(local))
    assert r.verdict == "corrupt" and "model-00001-of-00002.safetensors" in r.detail


def test_flipped_byte_only_seen_by_deep(cache_pair):
    local, host = cache_pair
    name = os.readlink(host / "snapshots" / ("a" * 40) / "model-00002-of-00002.safetensors").split("/")[-1]
    blob = host / "blobs" / name
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    st = blob.stat()
    blob.write_bytes(bytes(data))
    os.utime(blob, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert cache.judge("mac4", facts(host), facts(local)).ok  # same size, same structure
    r = cache.judge("mac4", facts(host, deep=True), facts(local))
    assert r.verdict == "corrupt" and name in r.detail


def test_other_revision(cache_pair, tmp_path):
    local, host = cache_pair
    (host / "refs" / "main").write_text("b" * 40)
    os.rename(host / "snapshots" / ("a" * 40), host / "snapshots" / ("b" * 40))
    r = cache.judge("mac4", facts(host), facts(local))
    assert r.verdict == "other-revision" and "bbbbbbbbbbbb" in r.detail


def test_ref_without_snapshot_is_corrupt_and_local_says_reference(cache_pair):
    local, _ = cache_pair
    (local / "refs" / "main").write_text("c" * 40)
    r = cache.judge_reference(facts(local))
    assert r.verdict == "corrupt" and "snapshots/" + "c" * 40 in r.detail and "reference" in r.detail


def test_escaping_link_is_corrupt(cache_pair, tmp_path):
    local, host = cache_pair
    link = host / "snapshots" / ("a" * 40) / "config.json"
    outside = tmp_path / "outside.json"
    outside.write_text("{}")
    link.unlink()
    link.symlink_to(outside)
    r = cache.judge("mac4", facts(host), facts(local))
    assert r.verdict == "corrupt" and "outside" in r.detail


def test_absent_cache(cache_pair, tmp_path):
    local, _ = cache_pair
    r = cache.judge("mac4", CacheFacts.from_json(probe.cache_facts(str(tmp_path / "empty"), REPO)), facts(local))
    assert r.verdict == "absent" and r.figures["missing_bytes"] > 0


def _locks(repo, age=None):
    """A lock per blob, as huggingface_hub keeps them after every download (old ones if `age`)."""
    lock_dir = repo.parent / ".locks" / repo.name
    lock_dir.mkdir(parents=True, exist_ok=True)
    for blob in (repo / "blobs").iterdir():
        lock = lock_dir / f"{blob.name}.lock"
        lock.touch()
        if age:
            os.utime(lock, (time.time() - age, time.time() - age))
    return lock_dir


def test_the_clients_permanent_locks_are_no_problem(cache_pair):
    local, host = cache_pair
    lock_dir = _locks(host, age=30 * 86400)
    r = cache.judge("mac4", facts(host), facts(local))
    assert r.verdict == "complete" and r.detail == "same revision, files, sizes and blobs as local"
    assert r.figures["locks_held"] == 0 and "stale" not in str(r.figures)
    lock = sorted(lock_dir.iterdir())[0]
    with FileLock(lock):  # what huggingface_hub holds while it downloads that blob
        r = cache.judge("mac4", facts(host), facts(local))
    assert r.verdict == "complete" and r.figures["locks_held"] == 1
    assert f"a download is running in this cache now (1 lock(s) held: {lock.name})" in r.detail
    assert cache.judge("mac4", facts(host), facts(local)).figures["locks_held"] == 0, "released: not held"


def test_an_orphaned_incomplete_beside_its_finished_blob_is_a_note(cache_pair):
    """A download killed then re-run leaves ``<etag>.<8 hex>.incomplete`` beside the finished blob:
    the client never reuses it (its name is unique to the killed process). Without the blob it is
    still a gap."""
    local, host = cache_pair
    blob = host / "blobs" / os.readlink(host / "snapshots" / SNAP / SHARD1).split("/")[-1]
    orphan = blob.with_name(f"{blob.name}.6d66cb76.incomplete")
    orphan.write_bytes(b"")
    r = cache.judge("mac4", facts(host), facts(local))
    assert r.verdict == "complete" and r.ok, r.detail
    assert "note: 1 orphaned *.incomplete file(s) beside finished blobs" in r.detail and orphan.name in r.detail
    assert (r.figures["incomplete"], r.figures["orphans"]) == (0, 1)
    shared(host)  # the finished blob behind a store link counts as finished too
    assert cache.judge("mac4", facts(host), facts(local)).verdict == "complete"
    (host / "snapshots" / SNAP / SHARD1).unlink()
    blob.unlink()
    r = cache.judge("mac4", facts(host), facts(local))
    assert r.verdict == "partial" and "1 *.incomplete blob(s) left over" in r.detail
    assert (r.figures["incomplete"], r.figures["orphans"]) == (1, 0)


# --- huggingface_hub 2.x's shared blob store -----------------------------------------------------

SNAP = "a" * 40
SHARD1, SHARD2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"


def shared(repo, every=False):
    """Convert ``repo`` (built by build_repo in its own cache root) to the shared layout."""
    return to_shared_layout(repo.parent, repo, every=every)


def behind(repo, name):
    """The file holding snapshot file ``name``'s bytes: a store entry once shared."""
    return (repo / "snapshots" / SNAP / name).resolve()


def rewrite(path, data, keep_mtime=False):
    """Write a store entry the hub made read-only, optionally keeping its mtime (rsync's quick check)."""
    st = path.stat()
    os.chmod(path, 0o644)
    path.write_bytes(data)
    if keep_mtime:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def repo_blob(repo, name):
    return repo / "blobs" / os.readlink(repo / "snapshots" / SNAP / name).split("/")[-1]


@pytest.mark.parametrize("sides", [("local",), ("host",), ("local", "host")])
def test_shared_and_classic_layouts_are_judged_alike(cache_pair, sides):
    local, host = cache_pair
    classic = cache.snapshot_bytes(facts(local))
    for side in sides:
        shared({"local": local, "host": host}[side])
    ref = facts(local)
    assert cache.judge_reference(ref).verdict == "complete"
    r = cache.judge("mac5", facts(host), ref)
    assert r.ok and r.verdict == "complete" and "note" not in r.detail, r.detail
    assert r.figures["files"] == 5 and r.figures["missing_bytes"] == 0 and r.figures["bytes_exact"] == classic
    assert r.figures["store_entries"] == (2 if "host" in sides else 0)


def test_the_builders_shared_layout_is_the_hubs_own(cache_pair):
    local, _ = cache_pair
    stored = shared(local)
    info = scan_cache_dir(local.parent)
    assert info.warnings == [] and [len(r.files) for repo in info.repos for r in repo.revisions] == [5]
    f = facts(local)
    assert f.shared_store.marked and f.shared_store.version == "1"
    shard = f.files[SHARD1]
    entry = stored[shard.blob]
    assert entry.parent.parent == (local.parent / "blobs").resolve()
    assert shard.store == f"blobs/{entry.parent.name}/{entry.name}"
    assert entry.name != shard.blob  # the xet hash is not the sha256 the etag is
    assert shard.store_listed is True and not shard.escapes and shard.size == entry.stat().st_size
    assert f.files["config.json"].store is None  # a git blob: not Xet, stays in the repo folder
    assert shard.blob not in f.blobs and f.incomplete == ()


def test_deep_hashes_the_store_entry_against_the_etag(cache_pair):
    local, host = cache_pair
    shared(local)
    shared(host)
    ref = facts(local, deep=True)
    assert cache.judge_reference(ref).verdict == "complete"
    assert cache.judge("mac4", facts(host, deep=True), ref).verdict == "complete"
    entry, etag = behind(host, SHARD2), repo_blob(host, SHARD2).name
    data = bytearray(entry.read_bytes())
    data[-1] ^= 0xFF
    rewrite(entry, bytes(data), keep_mtime=True)
    assert cache.judge("mac4", facts(host), ref).ok  # same size, same structure
    r = cache.judge("mac4", facts(host, deep=True), ref)
    assert r.verdict == "corrupt" and etag in r.detail and SHARD2 in r.detail and entry.name in r.detail


@pytest.mark.parametrize("gone", ["entry", "store"])
def test_missing_store_entry_is_partial(cache_pair, gone):
    """A store entry deleted, or the whole store missing (a repo folder copied without it)."""
    local, host = cache_pair
    shared(host)
    if gone == "entry":
        behind(host, SHARD1).unlink()
    else:
        shutil.rmtree(host.parent / "blobs")
    r = cache.judge("mac4", facts(host), facts(local))
    assert r.verdict == "partial" and "dangling" in r.detail and SHARD1 in r.detail, r.detail
    assert (gone == "entry") == (SHARD2 not in r.detail)


@pytest.mark.parametrize("name", [SHARD1, "tokenizer.json"])
def test_truncated_store_entry_is_corrupt(cache_pair, name):
    local, host = cache_pair
    shared(host, every=True)
    entry = behind(host, name)
    rewrite(entry, entry.read_bytes()[:-2])
    r = cache.judge("mac4", facts(host), facts(local))
    assert r.verdict == "corrupt" and name in r.detail, r.detail


@pytest.mark.parametrize("marker", ["removed", "a link", "version 2"])
def test_store_without_the_hubs_marker_is_corrupt(cache_pair, tmp_path, marker):
    local, host = cache_pair
    shared(host)
    path = host.parent / "blobs" / ".huggingface-shared-blobs"
    os.chmod(path, 0o644)
    if marker == "a link":
        os.replace(path, tmp_path / "marker")
        path.symlink_to(tmp_path / "marker")
    else:
        path.unlink() if marker == "removed" else path.write_text("2\n")
    r = cache.judge("mac4", facts(host), facts(local))
    assert r.verdict == "corrupt" and "marker" in r.detail and SHARD1 in r.detail, r.detail
    assert facts(host).shared_store.marked is False


def test_store_reached_through_a_link_is_corrupt(cache_pair, tmp_path):
    local, host = cache_pair
    shared(host)
    prefix = behind(host, SHARD1).parent
    (tmp_path / "elsewhere").mkdir()
    shutil.move(prefix, tmp_path / "elsewhere" / prefix.name)
    prefix.symlink_to(tmp_path / "elsewhere" / prefix.name)
    r = cache.judge("mac4", facts(host), facts(local))
    assert r.verdict == "corrupt" and "through a link" in r.detail and "elsewhere" in r.detail, r.detail


@pytest.mark.parametrize("how", ["other cache", "absolute"])
def test_repo_blob_linking_elsewhere_is_corrupt(cache_pair, how):
    """Into another cache's marked store by a ../ chain, or to the right entry by an absolute link."""
    local, host = cache_pair
    shared(local)
    shared(host)
    blob = repo_blob(host, SHARD1)
    source = behind(local if how == "other cache" else host, SHARD1)
    target = os.path.relpath(source, blob.parent) if how == "other cache" else str(source)
    blob.unlink()
    blob.symlink_to(target)
    assert blob.resolve().read_bytes() == behind(local, SHARD1).read_bytes()  # the right bytes, the wrong place
    r = cache.judge("mac4", facts(host), facts(local))
    assert r.verdict == "corrupt" and SHARD1 in r.detail and target in r.detail, r.detail


FINDER = {".DS_Store": b"\0\0\0\1Bud1", "._config.json": b"\0\5\26\7\0\2\0\0Mac OS X"}


def test_finder_files_are_ignored_everywhere(cache_pair):
    local, host = cache_pair
    for repo in (local, host):
        shared(repo)
        folders = [repo / "snapshots" / SNAP, repo / "snapshots", repo / "blobs", repo.parent / "blobs",
                   behind(repo, SHARD1).parent, repo.parent / ".locks" / repo.name]
        for folder in folders:
            folder.mkdir(parents=True, exist_ok=True)
            for name, data in FINDER.items():
                (folder / name).write_bytes(data)
    f = facts(host)
    assert sorted(f.files) == sorted(model_files()) and f.revisions == (SNAP,)
    assert f.incomplete == () and f.locks == ()
    ref = facts(local)
    assert cache.judge_reference(ref).verdict == "complete"
    r = cache.judge("mac4", f, ref)
    assert r.verdict == "complete" and r.figures["incomplete"] == 0, r.detail
    (host / "blobs" / ".0123abcd.Xy12Zw").write_bytes(b"half")  # rsync's temp file is still a leftover
    r = cache.judge("mac4", facts(host), ref)
    assert r.verdict == "partial" and "interrupted-transfer" in r.detail


def test_one_store_entry_under_two_etags_counts_once(tmp_path):
    files = dict(model_files(), **{"consolidated.bin": model_files()[SHARD2]})  # a git-blob (sha1) etag
    local, host = build_repo(tmp_path / "local", files), build_repo(tmp_path / "host", files)
    shared(local, every=True)
    ref = facts(local)
    copy, shard = ref.files["consolidated.bin"], ref.files[SHARD2]
    assert copy.store == shard.store and copy.blob != shard.blob
    assert cache.snapshot_bytes(ref) == cache.snapshot_bytes(facts(host)) - len(files[SHARD2])
    assert cache.judge_reference(ref).figures["store_entries"] == len(files) - 1
    assert cache.judge("mac4", facts(host), ref).verdict == "complete"


def test_store_entry_whose_refs_miss_the_repo_gets_a_note(cache_pair):
    """Unlisted, the hub deletes the entry with the last repo it does list; an unreadable or missing
    .refs makes the hub keep the entry, so that is no note."""
    local, host = cache_pair
    shared(host)
    refs = behind(host, SHARD1).with_name(behind(host, SHARD1).name + ".refs")
    other = "models--other--repo/blobs/" + "0" * 64 + "\n"
    refs.write_text(refs.read_text() + other)  # stores are shared across repos: other names are fine
    assert cache.judge("mac4", facts(host), facts(local)).detail == "same revision, files, sizes and blobs as local"
    refs.write_text(other)
    r = cache.judge("mac4", facts(host), facts(local))
    assert r.verdict == "complete" and "note" in r.detail and ".refs" in r.detail, r.detail
    refs.unlink()
    r = cache.judge("mac4", facts(host), facts(local))
    assert r.verdict == "complete" and "note" not in r.detail
