import hashlib
import json
import struct
import subprocess
import sys

import pytest

from thunderlane import onhost
from thunderlane.onhost import probe, runs
from tests.unit.builders import REPO, build_repo, model_files, safetensors_bytes, to_shared_layout


def test_git_blob_sha1_matches_git(tmp_path):
    f = tmp_path / "f"
    f.write_bytes(b"hello\n")
    # `git hash-object` of "hello\n" is a well-known value
    assert probe.git_blob_sha1_file(f) == "ce013625030ba8dba906f756967f9e9ca394464a"
    assert probe.sha256_file(f) == hashlib.sha256(b"hello\n").hexdigest()


def test_blob_hash_matches_by_name_length(tmp_path):
    f = tmp_path / "f"
    f.write_bytes(b"x" * 10)
    assert probe.blob_hash_matches(f, hashlib.sha256(b"x" * 10).hexdigest()) == \
        (True, hashlib.sha256(b"x" * 10).hexdigest())
    assert probe.blob_hash_matches(f, "0" * 40)[0] is False
    assert probe.blob_hash_matches(f, "not-a-hash") == (False, None)


def test_safetensors_whole_file_passes(tmp_path):
    f = tmp_path / "m.safetensors"
    f.write_bytes(safetensors_bytes({"w": ("F16", [2, 3], bytes(12)), "v": ("U8", [5], bytes(5))}))
    ok, reason = probe.safetensors_check(f)
    assert ok, reason
    assert "2 tensors" in reason


@pytest.mark.parametrize("cut", [1, 7, 20, -1])
def test_safetensors_truncated_file_fails(tmp_path, cut):
    data = safetensors_bytes({"w": ("F32", [4], bytes(16))})
    f = tmp_path / "m.safetensors"
    f.write_bytes(data[:cut] if cut > 0 else data[:cut])
    assert probe.safetensors_check(f)[0] is False


def test_safetensors_extra_bytes_and_gaps_fail(tmp_path):
    f = tmp_path / "m.safetensors"
    f.write_bytes(safetensors_bytes({"w": ("F32", [4], bytes(16))}) + b"\0")
    assert "cover" in probe.safetensors_check(f)[1]
    header = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}).encode()
    f.write_bytes(struct.pack("<Q", len(header)) + header + bytes(8))
    assert "starts at 4" in probe.safetensors_check(f)[1]
    header = json.dumps({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}).encode()
    f.write_bytes(struct.pack("<Q", len(header)) + header + bytes(8))
    assert probe.safetensors_check(f)[0] is False


def test_safetensors_absurd_header_length(tmp_path):
    f = tmp_path / "m.safetensors"
    f.write_bytes(struct.pack("<Q", 10**12) + b"{}")
    assert "does not fit" in probe.safetensors_check(f)[1]


CHAT = {"messages": [{"role": "user", "content": "ߊ"}, {"role": "assistant", "content": "ߋ"}]}


@pytest.mark.parametrize("row,fmt", [(CHAT, "chat"), ({"prompt": "a", "completion": "b"}, "completions"),
                                     ({"text": "abc"}, "text")])
def test_row_formats(row, fmt):
    assert probe.row_format(row) == fmt


@pytest.mark.parametrize("row,why", [
    ([1, 2], "not a JSON object"), ({"foo": 1}, "no 'messages'"),
    ({"messages": []}, "non-empty"), ({"messages": [{"role": "bot", "content": "x"}]}, "role"),
    ({"messages": [{"role": "user", "content": 3}]}, "content"),
    ({"messages": [{"role": "user", "content": "x"}]}, "assistant"), ({"text": ""}, "text")])
def test_rows_mlx_lm_would_reject(row, why):
    with pytest.raises(ValueError, match=why):
        probe.row_format(row)


def write_lines(path, lines, end="\n"):
    path.write_bytes(end.join(lines).encode() + end.encode() if lines else b"")


def test_jsonl_facts_counts_and_hashes(tmp_path):
    f = tmp_path / "train.jsonl"
    lines = [json.dumps(CHAT, ensure_ascii=False)] * 3
    write_lines(f, lines)
    facts = probe.jsonl_facts(f)
    assert facts["lines"] == 3 and facts["bytes"] == f.stat().st_size
    assert facts["sha256"] == hashlib.sha256(f.read_bytes()).hexdigest()
    assert facts["format"] == "chat" and facts["bad"] is None


@pytest.mark.parametrize("content,line,why", [
    (b'{"text": "a"}\n{"text": "b"\n', 2, "not JSON"),
    (b'{"text": "a"}\n\n', 2, "not JSON"),
    (b'{"text": "a"}\n{"text": "\xff"}\n', 2, "not UTF-8"),
    (b'{"text": "a"}\n{"prompt": "a", "completion": "b"}\n', 2, "completions row in a text file"),
    (b'{"text": "a"}\n{"text": "b"}', 2, "no newline"),
    (b'', 0, "empty"),
])
def test_jsonl_first_bad_row(tmp_path, content, line, why):
    f = tmp_path / "valid.jsonl"
    f.write_bytes(content)
    bad = probe.jsonl_facts(f)["bad"]
    assert bad["line"] == line and why in bad["reason"]


def test_probe_runs_as_a_standalone_script(tmp_path):
    """The probe is sent as source to hosts: it must run with nothing but the stdlib."""
    (tmp_path / "train.jsonl").write_text('{"text": "a"}\n')
    src = onhost.probe_source()
    out = subprocess.run([sys.executable, "-I", "-S", "-c", src, "dataset", str(tmp_path)],
                         capture_output=True, text=True, check=True).stdout
    facts = json.loads(out)
    assert facts["files"]["train.jsonl"]["lines"] == 1
    assert facts["files"]["valid.jsonl"] == {"present": False}
    usage = subprocess.run([sys.executable, "-c", src, "bogus"], capture_output=True, text=True)
    assert usage.returncode == 2 and "usage" in usage.stderr


def test_cache_root_resolution(monkeypatch):
    assert probe.resolve_cache_root("/x/hub") == ("/x/hub", "inventory")
    root, how = probe.resolve_cache_root(None)
    assert how in ("huggingface_hub", "HF_HUB_CACHE", "HF_HOME", "default") and root.startswith("/")


def safe_open_accepts(path):
    """Whether safetensors' own reader opens ``path`` and reads every tensor."""
    safetensors = pytest.importorskip("safetensors")
    try:
        with safetensors.safe_open(str(path), framework="numpy") as f:
            for key in f.keys():
                f.get_tensor(key)
    except Exception:  # SafetensorError for the file, numpy's errors for dtypes it lacks
        return False
    return True


def written_by_safetensors(path):
    """A file as safetensors writes it (its header padded with spaces to 8 bytes)."""
    np = pytest.importorskip("numpy")
    save_file = pytest.importorskip("safetensors.numpy").save_file
    save_file({"w": np.arange(6, dtype=np.float16).reshape(2, 3), "b": np.ones(5, dtype=np.uint8)}, str(path))
    return path.read_bytes()


@pytest.mark.parametrize("writer", ["builders", "safetensors"])
def test_safetensors_check_rejects_whatever_safe_open_rejects(tmp_path, writer):
    """Every truncation and a few paddings of a whole file. Whole files pass both. Padded files fail
    ours whatever safe_open says (safetensors 0.8 rejects them, "file not fully covered"; a reader may
    accept trailing bytes): a hub blob with extra bytes is not the blob its etag names, so the check
    requires the size to be exactly 8 + header length + the last tensor's end."""
    f = tmp_path / "m.safetensors"
    whole = written_by_safetensors(f) if writer == "safetensors" else \
        safetensors_bytes({"w": ("F16", [2, 3], bytes(12)), "b": ("U8", [5], bytes(5))})
    f.write_bytes(whole)
    assert probe.safetensors_check(f)[0] and safe_open_accepts(f)
    variants = {f"cut to {n}": whole[:n] for n in range(len(whole))}
    variants.update({f"padded by {len(pad)}": whole + pad for pad in (b"\0", b" ", bytes(8), b"x" * 100)})
    for label, data in variants.items():
        f.write_bytes(data)
        ours, theirs = probe.safetensors_check(f)[0], safe_open_accepts(f)
        assert not (theirs is False and ours), f"{label}: safe_open rejects it, ours accepts it"
        assert not ours, f"{label}: ours accepts a file that is not whole"


@pytest.mark.parametrize("tensor", [{"dtype": "U8", "shape": [-1, -1], "data_offsets": [0, 1]},
                                    {"dtype": "U8", "shape": [1.0], "data_offsets": [0, 1]}])
def test_safetensors_check_header_types(tmp_path, tensor):
    header = json.dumps({"t": tensor}).encode()
    f = tmp_path / "m.safetensors"
    f.write_bytes(struct.pack("<Q", len(header)) + header + bytes(1))
    assert not safe_open_accepts(f)
    assert probe.safetensors_check(f)[0] is False


def test_probe_reports_the_shared_store_standalone(tmp_path):
    """The bundled probe, run alone, on a huggingface_hub 2.x shared-layout cache: new fields."""
    repo = build_repo(tmp_path / "hub", model_files())
    stored = to_shared_layout(tmp_path / "hub", repo)
    argv = [sys.executable, "-I", "-S", "-c", onhost.probe_source(), "cache", REPO, str(tmp_path / "hub")]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    facts = json.loads(out)
    assert facts["shared_store"] == {"marked": True, "version": "1"}
    shard = facts["files"]["model-00001-of-00002.safetensors"]
    entry = stored[shard["blob"]]
    assert shard["store"] == f"blobs/{entry.parent.name}/{entry.name}" and shard["store_listed"] is True
    assert shard["escapes"] is False and shard["refusal"] is None and shard["size"] == entry.stat().st_size
    assert facts["files"]["config.json"]["store"] is None


@pytest.mark.parametrize("name, blob", [
    ("a" * 64 + ".6d66cb76.incomplete", "a" * 64),  # huggingface_hub 2.x: unique per process
    ("b" * 40 + ".incomplete", "b" * 40),  # older releases
    ("a" * 64 + ".6D66CB76.incomplete", None), ("a" * 63 + ".incomplete", None),
    (".model.safetensors.Xy12Zw", None),  # rsync's temp file: a leftover, never an orphan
])
def test_a_leftover_knows_the_blob_it_was_becoming(tmp_path, name, blob):
    (tmp_path / name).write_bytes(b"")
    assert probe._leftover(str(tmp_path), name, 0) == {"name": name, "size": 0, "blob": blob, "finished": False}
    if blob:
        (tmp_path / blob).write_bytes(b"done")
        assert probe._leftover(str(tmp_path), name, 0)["finished"] is True
        (tmp_path / blob).unlink()
        (tmp_path / blob).symlink_to("nowhere")  # a dangling store link is no finished blob
        assert probe._leftover(str(tmp_path), name, 0)["finished"] is False


@pytest.mark.parametrize("content", [
    b'{"text": "a"}\n{"text": "b"}\n', b'{"text": "a"}\n{"text": "b"', b'', b'\n', b'{"text": "\xff"}\n' * 3,
])
def test_file_sums_agree_with_the_row_by_row_pass(tmp_path, content):
    """A host that only sums its files reports the lines, bytes and sha256 the full pass would."""
    f = tmp_path / "train.jsonl"
    f.write_bytes(content)
    full, sums = probe.jsonl_facts(f), probe.file_sums(f)
    assert {k: sums[k] for k in ("lines", "bytes", "sha256")} == {k: full[k] for k in ("lines", "bytes", "sha256")}
    assert full["checked"] and not sums["checked"] and sums["bad"] is None


def test_dataset_sums_command(tmp_path):
    (tmp_path / "train.jsonl").write_text('{"text": "a"}\nnot json\n')
    facts = probe.command(["dataset", str(tmp_path), "--sums"])
    assert facts["files"]["train.jsonl"]["lines"] == 2 and facts["files"]["train.jsonl"]["checked"] is False
    assert probe.command(["dataset", str(tmp_path)])["files"]["train.jsonl"]["bad"]["line"] == 2
    assert probe.command(["dataset", str(tmp_path), "--rows"]) is None


def dist_info(where, folder, name, version):
    (where / folder).mkdir(parents=True)
    (where / folder / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n\nbody\n")


def test_versions_from_dist_info_folders_first_path_first(tmp_path, monkeypatch):
    """The probe reads versions from .dist-info folders (importlib.metadata's import costs more than
    the rest of a probe); the first sys.path entry wins, as importlib.metadata has it."""
    a, b = tmp_path / "a", tmp_path / "b"
    dist_info(a, "mlx_lm-9.9.dist-info", "mlx-lm", "9.9")
    dist_info(a, "numpy-1.0.dist-info", "numpy", "1.0")
    dist_info(b, "numpy-2.0.dist-info", "numpy", "2.0")
    dist_info(a, "mlx-metal-0.2.dist-info", "mlx-metal", "0.2")  # not escaped: its stem reads "mlx"
    (b / "Old_Pkg-3.0-py3.11.egg-info").mkdir()
    monkeypatch.setattr(sys, "path", [str(a), str(tmp_path / "gone"), str(b)])
    found, unsure = runs.dist_info_versions(["MLX_LM", "numpy", "mlx", "old-pkg", "absent"])
    assert found == {"MLX_LM": "9.9", "numpy": "1.0"}
    assert unsure == ["mlx", "old-pkg"]  # Name says mlx-metal; an egg-info: importlib.metadata decides


def test_versions_agree_with_importlib_metadata():
    from importlib.metadata import PackageNotFoundError, version
    names = ["mlx", "mlx-lm", "huggingface_hub", "PyYAML", "numpy", "no-such-dist"]

    def reference(name):
        try:
            return version(name)
        except PackageNotFoundError:
            return None
    got = runs.versions(names[2:])
    assert {n: got[n] for n in names} == {n: reference(n) for n in names}
