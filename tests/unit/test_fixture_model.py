"""The tiny gemma4 fixture: hub cache layout, determinism, loading, chat template, LoRA, size."""
import json
import os
import random
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from thunderlane.lab.fixtures import model as fixture
from thunderlane.onhost.probe import git_blob_sha1_file, sha256_file

ROOT = Path(__file__).resolve().parents[2]
NKO_LETTERS = [chr(c) for c in range(0x07CA, 0x07EA + 1)]


def nko_texts(count=200, seed=0):
    """Deterministic short N'Ko 'sentences': 2-8 words of 1-6 letters."""
    rng = random.Random(seed)
    return [
        " ".join(
            "".join(rng.choice(NKO_LETTERS) for _ in range(rng.randint(1, 6)))
            for _ in range(rng.randint(2, 8))
        )
        for _ in range(count)
    ]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One 2 MB build shared by the read-only tests."""
    return fixture.build_model_cache(tmp_path_factory.mktemp("hub"), nko_texts())


def hub_env(cache_root):
    """Environment for a child process that must find the fixture offline."""
    env = dict(os.environ, HF_HUB_CACHE=str(cache_root), HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def run_python(args, cache_root, cwd):
    """Run this interpreter with the offline hub env; fail with its output if it fails."""
    proc = subprocess.run(
        [sys.executable, *args], env=hub_env(cache_root), cwd=cwd,
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def safetensors_header(path):
    """The JSON header of a safetensors file."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(length))


def test_blobs_are_named_by_their_hashes(built):
    blobs = Path(built["repo_dir"]) / "blobs"
    names = sorted(f["blob"] for f in built["files"].values())
    assert sorted(p.name for p in blobs.iterdir()) == names
    for name, entry in built["files"].items():
        blob = blobs / entry["blob"]
        lfs = name.endswith(".safetensors")
        assert re.fullmatch("[0-9a-f]{64}" if lfs else "[0-9a-f]{40}", entry["blob"])
        assert (sha256_file if lfs else git_blob_sha1_file)(blob) == entry["blob"]
        assert blob.stat().st_size == entry["size"]


def test_snapshot_links_are_relative_and_refs_main_has_no_newline(built):
    repo = Path(built["repo_dir"])
    assert repo.name == "models--mlx-community--gemma-4-e2b-4bit"
    assert (repo / "refs" / "main").read_bytes() == built["revision"].encode()
    assert re.fullmatch("[0-9a-f]{40}", built["revision"])
    snapshot = Path(built["snapshot_dir"])
    assert snapshot == repo / "snapshots" / built["revision"]
    assert sorted(p.name for p in snapshot.iterdir()) == sorted(built["files"])
    for name, entry in built["files"].items():
        assert os.readlink(snapshot / name) == f"../../blobs/{entry['blob']}"
    assert [p.name for p in repo.parent.iterdir()] == [repo.name], "temp dirs left behind"


def test_weights_are_sharded_with_an_index(built):
    snapshot = Path(built["snapshot_dir"])
    index = json.loads((snapshot / "model.safetensors.index.json").read_text())
    shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    assert sorted(set(index["weight_map"].values())) == shards
    total = 0
    for shard in shards:
        header = safetensors_header(snapshot / shard)
        assert header.pop("__metadata__") == {"format": "mlx"}
        assert sorted(header) == sorted(k for k, f in index["weight_map"].items() if f == shard)
        total += sum(end - start for start, end in (t["data_offsets"] for t in header.values()))
    assert index["metadata"]["total_size"] == total
    assert built["weight_bytes"] == sum(built["files"][s]["size"] for s in shards)
    assert all(k.startswith("language_model.model.") for k in index["weight_map"])


def test_config_carries_quantization_and_turn_ids(built):
    config = json.loads((Path(built["snapshot_dir"]) / "config.json").read_text())
    tokenizer = json.loads((Path(built["snapshot_dir"]) / "tokenizer.json").read_text())
    ids = {t["content"]: t["id"] for t in tokenizer["added_tokens"]}
    assert config["model_type"] == "gemma4"
    assert config["quantization"] == {"group_size": 64, "bits": 4, "mode": "affine"}
    assert config["eos_token_id"] == [ids["<eos>"], ids["<end_of_turn>"]]
    assert config["vocab_size"] == config["text_config"]["vocab_size"]
    assert config["vocab_size"] >= len(tokenizer["model"]["vocab"])


def test_same_arguments_give_identical_files_and_another_seed_does_not(built, tmp_path):
    again = fixture.build_model_cache(tmp_path / "a", nko_texts())
    assert again["revision"] == built["revision"]
    assert again["files"] == built["files"]
    other = fixture.build_model_cache(tmp_path / "b", nko_texts(), seed=1)
    shards = [name for name in built["files"] if name.endswith(".safetensors")]
    assert all(other["files"][s]["blob"] != built["files"][s]["blob"] for s in shards)
    assert other["files"]["tokenizer.json"] == built["files"]["tokenizer.json"]


def test_rebuild_leaves_repo_alone_and_new_arguments_replace_it(tmp_path, monkeypatch):
    first = fixture.build_model_cache(tmp_path, nko_texts())
    blobs = Path(first["repo_dir"]) / "blobs"

    def stamps():
        return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in blobs.iterdir()}

    before = stamps()
    with monkeypatch.context() as patch:
        patch.setattr(fixture, "_build_repo", lambda *args: pytest.fail("rebuilt a built recipe"))
        assert fixture.build_model_cache(tmp_path, nko_texts()) == first
    with monkeypatch.context() as patch:
        patch.setattr(fixture, "_built_recipe", lambda repo_dir: None)
        assert fixture.build_model_cache(tmp_path, nko_texts()) == first
    assert stamps() == before, "a build of the same revision must not replace the installed repo"
    second = fixture.build_model_cache(tmp_path, nko_texts(), size_mb=3)
    assert second["revision"] != first["revision"]
    assert os.listdir(Path(second["repo_dir"]) / "snapshots") == [second["revision"]]
    assert sorted(os.listdir(blobs)) == sorted(f["blob"] for f in second["files"].values())
    assert [p.name for p in tmp_path.iterdir()] == [Path(first["repo_dir"]).name]


@pytest.mark.parametrize("size_mb", [2, 8])
def test_weight_bytes_land_near_the_requested_size(tmp_path, size_mb):
    result = fixture.build_model_cache(tmp_path, nko_texts(), size_mb=size_mb)
    assert 0.75 * size_mb * 10**6 <= result["weight_bytes"] <= 1.25 * size_mb * 10**6
    index = json.loads((Path(result["snapshot_dir"]) / "model.safetensors.index.json").read_text())
    tc = fixture.choose_text_config(size_mb)
    assert fixture.estimated_weight_bytes(tc) == index["metadata"]["total_size"]


def test_shard_bounds_are_non_empty_and_ordered():
    rng = random.Random(0)
    for _ in range(2000):
        sizes = [rng.choice([0, 1, 7, 10**6]) for _ in range(rng.randint(1, 12))]
        count = rng.randint(1, len(sizes))
        starts = fixture.shard_bounds(sizes, count)
        assert starts[0] == 0 and len(starts) == count and starts[-1] < len(sizes)
        assert all(a < b for a, b in zip(starts, starts[1:]))
    assert fixture.shard_bounds([1] * 10, 2) == [0, 5]
    with pytest.raises(ValueError):
        fixture.shard_bounds([1, 1], 3)


LOAD_SCRIPT = """
import json, mlx.nn as nn, mlx_lm
from mlx_lm.utils import _download
model, tok = mlx_lm.load("mlx-community/gemma-4-e2b-4bit")
text = mlx_lm.generate(model, tok, prompt="x", max_tokens=3)
layers = [m for _, m in model.named_modules() if isinstance(m, (nn.Linear, nn.QuantizedLinear))]
print(json.dumps({
    "path": str(_download("mlx-community/gemma-4-e2b-4bit")),
    "model_type": model.model_type,
    "generated": len(tok.encode(text, add_special_tokens=False)),
    "bits": sorted({getattr(m, "bits", 16) for m in layers}),
    "layers": len(model.layers),
    "eos": sorted(tok.eos_token_ids),
}))
"""


def test_mlx_lm_loads_and_generates_offline(built, tmp_path):
    out = run_python(["-c", LOAD_SCRIPT], Path(built["repo_dir"]).parent, tmp_path)
    report = json.loads(out.strip().splitlines()[-1])
    config = json.loads((Path(built["snapshot_dir"]) / "config.json").read_text())
    assert report["path"] == built["snapshot_dir"]
    assert report["model_type"] == "gemma4"
    assert 1 <= report["generated"] <= 3
    assert report["bits"] == [4]
    assert report["layers"] == config["text_config"]["num_hidden_layers"]
    assert report["eos"] == [1, 5]


def test_chat_template_and_prompt_mask(built):
    from mlx_lm.tokenizer_utils import load as load_tokenizer
    from mlx_lm.tuner.datasets import ChatDataset

    tok = load_tokenizer(Path(built["snapshot_dir"]))
    user, answer = nko_texts(2, seed=7)
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    prompt = f"<bos><start_of_turn>user\n{user}<end_of_turn>\n<start_of_turn>model\n"
    assert tok.apply_chat_template(messages, tokenize=False) == f"{prompt}{answer}<end_of_turn>\n"
    opened = tok.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    assert opened == prompt
    row = {"messages": messages}
    tokens, offset = ChatDataset([row], tok, mask_prompt=True).process(row)
    assert tokens[0] == tok.bos_token_id
    assert tokens.count(tok.convert_tokens_to_ids("<end_of_turn>")) == 2
    assert tok.decode(tokens[offset:]) == f"{answer}<end_of_turn>\n"


def test_any_text_round_trips_through_the_tokenizer(built):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(built["snapshot_dir"])
    for text in ["ߊߓߞ ߟߡ", "ߒ߬ߓߍ߫ ߞߏ߲߬", "Latin and 😀 too"]:
        ids = tok.encode(text)
        assert ids[0] == tok.bos_token_id
        assert tok.decode(ids, skip_special_tokens=True) == text
    seen = nko_texts()[0]
    assert len(tok.encode(seen, add_special_tokens=False)) < len(seen.encode()) / 2, "no merges"


def test_lora_trains_two_steps_with_the_mlx_lm_cli(built, tmp_path):
    import mlx.core as mx

    data = tmp_path / "data"
    data.mkdir()
    texts = nko_texts(24, seed=3)
    rows = [
        {"messages": [{"role": "user", "content": u}, {"role": "assistant", "content": a}]}
        for u, a in zip(texts[::2], texts[1::2])
    ]
    for name, part in (("train", rows[:8]), ("valid", rows[8:])):
        lines = [json.dumps(row, ensure_ascii=False) + "\n" for row in part]
        (data / f"{name}.jsonl").write_text("".join(lines), encoding="utf-8")
    adapters = tmp_path / "adapters"
    run_python(
        ["-m", "mlx_lm", "lora", "--model", fixture.REPO_ID, "--train", "--data", str(data),
         "--iters", "2", "--batch-size", "1", "--num-layers", "2", "--val-batches", "1",
         "--steps-per-report", "1", "--mask-prompt", "--adapter-path", str(adapters)],
        Path(built["repo_dir"]).parent, tmp_path,
    )
    weights = mx.load(str(adapters / "adapters.safetensors"))
    moved = [k for k, v in weights.items() if k.endswith("lora_b") and mx.abs(v).max().item() > 0]
    assert moved, "LoRA B matrices start at zero; training must have changed them"
    assert all(mx.isfinite(v).all().item() for v in weights.values())


def test_cli_prints_the_same_result_as_the_api(built, tmp_path):
    texts_file = tmp_path / "texts.txt"
    texts_file.write_text("\n".join(nko_texts()) + "\n", encoding="utf-8")
    cache = tmp_path / "hub"
    args = ["--cache-root", str(cache), "--texts-file", str(texts_file)]
    result = json.loads(run_python(["-m", "thunderlane.lab.fixtures.model", *args], cache, tmp_path))
    assert result["revision"] == built["revision"]
    repo = cache / "models--mlx-community--gemma-4-e2b-4bit"
    assert result["snapshot_dir"] == str(repo / "snapshots" / built["revision"])
