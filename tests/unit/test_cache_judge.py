import os

from thunderlane import cache
from thunderlane.facts import CacheFacts
from thunderlane.onhost import probe
from tests.unit.builders import REPO


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


def test_stale_lock_is_reported(cache_pair):
    local, host = cache_pair
    lock_dir = host.parent / ".locks" / host.name
    lock_dir.mkdir(parents=True)
    lock = lock_dir / "x.lock"
    lock.touch()
    os.utime(lock, (0, 0))
    assert cache.judge("mac4", facts(host), facts(local)).figures["stale_locks"] == 1
