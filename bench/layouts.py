"""The bench lab's caches in huggingface_hub 2.x's shared layout, for the figures' "(shared)" rows.

Copies of local's model repo under ``<lab>/shared/<host>/hub``, each blob a file of its own, then
every LFS blob published into that hub root's store by huggingface_hub's own
``publish_blob_to_shared_store`` with its real Xet hash (the lab client's PUBLISH_SCRIPT), and an
inventory whose ``hf_cache`` points each host there. The lab's own caches are not touched.
"""
import os
import shutil
import sys

import common as c
from thunderlane.lab import client

STORE_MARKER = ".huggingface-shared-blobs"


def classic_copy(src_repo, dst_repo):
    """``src_repo`` copied to ``dst_repo`` with snapshot links kept and every blob a regular file
    (a blob that links into a store is copied as the file it names)."""
    shutil.rmtree(dst_repo, ignore_errors=True)
    shutil.copytree(src_repo, dst_repo, symlinks=True)
    for blob in (dst_repo / "blobs").iterdir():
        if blob.is_symlink():
            target = (src_repo / "blobs" / blob.name).resolve()
            blob.unlink()
            shutil.copy2(target, blob)
    return dst_repo


def publish(cache_root):
    """Every LFS blob of the repo under ``cache_root`` moved into its shared store (linked back)."""
    c.run([sys.executable, "-c", client.PUBLISH_SCRIPT, str(cache_root), c.REPO], check=True,
          env={k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))})


def shared_cache(src_repo, root, host):
    """``root/host/hub``: a shared-layout copy of ``src_repo`` (made once; kept between runs)."""
    hub = root / host / "hub"
    if not (hub / "blobs" / STORE_MARKER).is_file() or not (hub / c.REPO / "refs" / "main").is_file():
        shutil.rmtree(hub, ignore_errors=True)
        hub.mkdir(parents=True)
        classic_copy(src_repo, hub / c.REPO)
        publish(hub)
    return hub


def shared_inventory(lab, hosts, name="hosts-shared.yaml", root=None, src_repo=None):
    """An inventory with local and every host of ``hosts`` in the shared layout (their own copies
    under ``root``, default ``<lab>/shared``); the other hosts keep the lab's caches."""
    root = root or lab.dir / "shared"
    src = src_repo or lab.repo("local")
    caches = {h: shared_cache(src, root, h) for h in ["local", *hosts]}

    def change(data):
        data["local"]["hf_cache"] = str(caches["local"])
        for h in hosts:
            data["hosts"][h]["hf_cache"] = str(caches[h])
    return c.write_inventory(lab, name, change), caches


def store_files(hub):
    """The files the repo's blobs hold, store entries resolved (what --deep re-hashes)."""
    return sorted(str((hub / c.REPO / "blobs" / b).resolve()) for b in os.listdir(hub / c.REPO / "blobs"))
