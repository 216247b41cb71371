"""Little real HF caches built in tmp_path, for the pure judges: real files, no mocks."""
import hashlib
import json
import os
import re
import struct

from huggingface_hub.utils._shared_blobs import publish_blob_to_shared_store

from thunderlane.lab.kit import REPO_FOLDER
from thunderlane.onhost.probe import git_blob_sha1_file, sha256_file

REPO = "mlx-community/gemma-4-e2b-4bit"
REV = "a" * 40


def safetensors_bytes(tensors):
    """A real safetensors file: {name: (dtype, shape, payload bytes)}."""
    header, offset, data = {"__metadata__": {"format": "mlx"}}, 0, b""
    for name, (dtype, shape, payload) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(payload)]}
        offset += len(payload)
        data += payload
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def build_repo(cache_root, files, rev=REV):
    """Write ``files`` ({name: bytes}) as blobs named like the hub's, link them from the snapshot."""
    repo = cache_root / REPO_FOLDER
    blobs, snap = repo / "blobs", repo / "snapshots" / rev
    blobs.mkdir(parents=True, exist_ok=True)
    snap.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        tmp = blobs / "tmp"
        tmp.write_bytes(data)
        blob = sha256_file(tmp) if name.endswith(".safetensors") else git_blob_sha1_file(tmp)
        os.replace(tmp, blobs / blob)
        (snap / name).symlink_to(f"../../blobs/{blob}")
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(rev)
    return repo


def model_files():
    shard1 = safetensors_bytes({"a": ("F32", [2, 2], bytes(16)), "b": ("U32", [3], bytes(range(12)))})
    shard2 = safetensors_bytes({"c": ("BF16", [4], bytes(8))})
    index = {"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors",
                                            "b": "model-00001-of-00002.safetensors",
                                            "c": "model-00002-of-00002.safetensors"}}
    return {"config.json": b'{"model_type": "gemma4"}', "tokenizer.json": b'{"model": {}}',
            "model.safetensors.index.json": json.dumps(index).encode(),
            "model-00001-of-00002.safetensors": shard1, "model-00002-of-00002.safetensors": shard2}


def xet_hash(data):
    """A stand-in Xet file hash: 64 hex like the real one, and like it not the content's sha256
    (the real one is a merkle hash of Xet chunks; any deterministic 64 hex serves the layout)."""
    return hashlib.sha256(b"xet" + data).hexdigest()


def to_shared_layout(cache_root, repo_dir, every=False):
    """Convert a repo built by ``build_repo`` to huggingface_hub 2.x's shared layout with the hub's own
    publishing code: each blob moves to ``<cache_root>/blobs/<2 hex>/<xet hash>`` (the store, marked,
    with its .refs and .lock) and its repo blob becomes a relative link there. Like the hub, only LFS
    blobs (64-hex etags: what Xet serves) are shared, unless ``every``. Returns {etag: store path}."""
    stored = {}
    for blob in sorted((repo_dir / "blobs").iterdir()):
        if blob.is_symlink() or not (every or re.fullmatch(r"[0-9a-f]{64}", blob.name)):
            continue
        data = blob.read_bytes()
        assert publish_blob_to_shared_store(blob_path=str(blob), xet_hash=xet_hash(data), cache_dir=cache_root,
                                            expected_size=len(data)), f"the hub refused to publish {blob}"
        stored[blob.name] = blob.resolve()
    return stored
