"""Little real HF caches built in tmp_path, for the pure judges: real files, no mocks."""
import json
import os
import struct

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
