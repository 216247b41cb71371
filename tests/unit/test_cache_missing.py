"""Missing bytes are the bytes a sync sends: a blob the host holds at the source's size is not sent
(``--size-only``), nor is a repo blob linked into the cache's own marked store (the launcher's
keep_linked), nor, under ``--checksum``, is a classic blob vouched for without its content."""
import os

from thunderlane import cache
from thunderlane.facts import CacheFacts
from thunderlane.onhost import probe
from thunderlane.verify import judge_caches
from tests.unit.builders import REPO, to_shared_layout

SNAP = "a" * 40
SHARD1 = "model-00001-of-00002.safetensors"


def facts(repo):
    return CacheFacts.from_json(probe.cache_facts(str(repo.parent), REPO))


def _drop_link(host, name=SHARD1):
    """Remove snapshot file ``name``'s link (as an interrupted sync leaves it): (its etag, its size)."""
    link = host / "snapshots" / SNAP / name
    etag, size = os.readlink(link).split("/")[-1], link.stat().st_size
    link.unlink()
    return etag, size


def test_a_store_linked_blob_whose_snapshot_link_is_missing_needs_no_bytes(cache_pair):
    local, host = cache_pair
    to_shared_layout(host.parent, host)
    etag, size = _drop_link(host)
    got = facts(host)
    assert got.linked[etag] == size and etag not in got.blobs  # the probe says it, sized through the link
    for checksum in (False, True):  # the launcher keeps it either way
        r = cache.judge("mac4", got, facts(local), checksum=checksum)
        assert r.verdict == "partial" and SHARD1 in r.detail and r.figures["missing_bytes"] == 0, (checksum, r)


def test_a_blob_linked_into_an_unmarked_store_is_not_held(cache_pair):
    local, host = cache_pair
    to_shared_layout(host.parent, host)
    etag, size = _drop_link(host)
    marker = host.parent / "blobs" / ".huggingface-shared-blobs"
    os.chmod(marker, 0o644)
    marker.unlink()
    got = facts(host)
    assert dict(got.linked) == {}
    assert cache.judge("mac4", got, facts(local)).figures["missing_bytes"] == size


def test_with_checksum_a_held_classic_blob_is_still_counted(cache_pair):
    """rsync --checksum compares the blob's content, which no probe has hashed (no snapshot link
    names it): it may be sent, so its bytes are missing; without --checksum they are not."""
    local, host = cache_pair
    etag, size = _drop_link(host)
    assert facts(host).blobs[etag] == size
    gathered = {"local": facts(local), "mac4": facts(host)}
    assert judge_caches(gathered).results[1].figures["missing_bytes"] == 0
    assert judge_caches(gathered, deep=True).results[1].figures["missing_bytes"] == size


def test_an_older_probes_facts_have_no_linked_blobs(cache_pair):
    local, _ = cache_pair
    raw = probe.cache_facts(str(local.parent), REPO)
    del raw["linked"]
    assert dict(CacheFacts.from_json(raw).linked) == {}
